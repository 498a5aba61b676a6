"""The Hopper path (``TMA`` constexpr, kernels/tile_loads.py): tiles through tensor descriptors.

Under the interpreter the descriptor loads run too ("on"): the forward through descriptors must
give bit-for-bit the pointer path's out and lse (same math; the copy engine's zero fill is the
pointer path's ``other=0.0``), with ragged lengths, kv_lens, a padded head dim and variants. The
compile gate (tests/kernels/test_compile_gate.py, marker ``compile``) checks its sm_90 rows
for ``cp.async.bulk.tensor``, ``wgmma`` and no spills. Seeds come from the fresh-seed fixture
and are in the assertion messages.
"""

from __future__ import annotations

import secrets

import pytest
import torch

from flashref.kernels import INTERPRETED, flash_attention

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="runs the descriptor path under the interpreter")
fa = __import__("flashref.kernels.flash_attention", fromlist=["tensor_descriptors"])


def inputs(seed, b, hq, hkv, lq, lk, d, dtype):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for shape in ((b, hq, lq, d), (b, hkv, lk, d), (b, hkv, lk, d))]


@pytest.mark.interp
@pytest.mark.smoke
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, kwargs", [
    ((1, 2, 1, 37, 45, 40), dict(causal=True)),  # padded head dim (40 -> 64), ragged blocks, GQA
    ((2, 2, 2, 33, 17, 32), dict(kv_lens=torch.tensor([17, 5]), causal=True, causal_alignment="bottom_right")),
    ((1, 1, 1, 20, 50, 16), dict(window_size=(7, 3), softcap=5.0)),
])
def test_descriptor_loads_match_the_pointer_path_bit_for_bit(shape, kwargs, dtype):
    seed = secrets.randbelow(2**31)  # fresh each run, printed on failure
    q, k, v = inputs(seed, *shape, dtype)
    with fa.tensor_descriptors("off"):
        ref_out, ref_lse = flash_attention(q, k, v, return_lse=True, **kwargs)
    with fa.tensor_descriptors("on"):
        assert fa._tma_ok(q, k, v)
        out, lse = flash_attention(q, k, v, return_lse=True, **kwargs)
    assert torch.equal(out, ref_out), f"seed {seed}: max diff {(out.float() - ref_out.float()).abs().max()}"
    assert torch.equal(lse, ref_lse), f"seed {seed}"


def test_the_dispatcher_takes_descriptors_only_where_tma_can_load():
    q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16)
    with fa.tensor_descriptors("on"):
        assert fa._tma_ok(q, q, q)
        assert not fa._tma_ok(q.float(), q.float(), q.float())  # float32: the exactness path
        odd = torch.zeros(1, 2, 8, 17, dtype=torch.bfloat16)  # 34-byte rows: not 16-byte aligned
        assert not fa._tma_ok(odd, odd, odd)
        assert not fa._tma_ok(q.transpose(2, 3), q, q)  # last stride not 1
    with fa.tensor_descriptors("auto"):  # under the interpreter, auto means the pointer path
        assert not fa._tma_ok(q, q, q)
    with pytest.raises(ValueError, match="mode must be"):
        with fa.tensor_descriptors("maybe"):
            pass


@pytest.mark.interp
@pytest.mark.parametrize("shape, kwargs", [
    ((1, 2, 1, 37, 45, 40), dict(causal=True)),
    ((2, 2, 2, 33, 17, 32), dict(kv_lens=torch.tensor([17, 5]), window_size=(6, -1))),
])
def test_backward_through_descriptors_matches_the_pointer_path_bit_for_bit(shape, kwargs):
    seed = secrets.randbelow(2**31)
    q, k, v = inputs(seed, *shape, torch.bfloat16)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(q.dtype)
    grads = {}
    for mode in ("off", "on"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        with fa.tensor_descriptors(mode):
            flash_attention(*leaves, **kwargs).backward(dout)
        grads[mode] = [t.grad for t in leaves]
    for name, a, b in zip("qkv", grads["off"], grads["on"]):
        assert torch.equal(a, b), f"seed {seed}: d{name} differs by {(a.float() - b.float()).abs().max()}"
