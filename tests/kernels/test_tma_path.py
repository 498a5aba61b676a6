"""The Hopper path (``TMA`` constexpr, kernels/tile_loads.py): tiles through tensor descriptors.

Under the interpreter the descriptor loads run too ("on"). They compute the pointer path's math
(the copy engine's zero fill is the pointer path's ``other=0.0``) but not bit for bit: the
descriptor path loads K as (BLOCK_N, D) rows and transposes the tile, the pointer path loads K^T
directly, and the interpreter hands the two layouts to NumPy's float32 matmul, whose BLAS sums
the D products of q.k in a layout-dependent order (OpenBLAS's NN and NT small-matrix kernels
differ in the last bit on AVX-512 machines; a GPU's two paths need not agree bit for bit
either). So the forward is held to what two summation orders can differ by (``path_tolerance``:
the D-term dot's worst case, carried through the softmax, plus one ulp of the output's rounding),
which a descriptor bug (wrong rows, offsets, zero fill) exceeds by orders of magnitude; and the
backward through descriptors is judged by the gate's rule against the float64 oracle. The compile
gate (tests/kernels/test_compile_gate.py, marker ``compile``) checks its sm_90 rows for
``cp.async.bulk.tensor``, ``wgmma`` and no spills. Seeds come from the fresh-seed fixture (the
``seed`` fixture) and are in the assertion messages.
"""

from __future__ import annotations

import math

import pytest
import torch

from flashref import gate
from flashref.kernels import INTERPRETED, flash_attention

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="runs the descriptor path under the interpreter")
import flashref.kernels.launch as fa  # noqa: E402 -- the launch layer: tensor_descriptors, tma_ok


def inputs(seed, b, hq, hkv, lq, lk, d, dtype):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for shape in ((b, hq, lq, d), (b, hkv, lk, d), (b, hkv, lk, d))]


def path_tolerance(q, k, v, out, lse, softmax_scale):
    """How far two float32 summation orders of the same forward can put out (elementwise) and lse.

    Each path's q.k is within gamma_D = D u32 / (1 - D u32) of the exact dot's
    ``scale sum_d |q_d k_d|``, so the scores differ by at most twice that (dS); P moves by at
    most 2 dS relative, out by 2 dS max|v| in float32 plus its own float32 roundings (4 u32
    |out|), then both round to the dtype: at most one ulp apart on top. lse moves by dS plus
    its float32 roundings."""
    u32 = 2.0**-24
    d = q.shape[-1]
    gamma = d * u32 / (1 - d * u32)
    qf, kf = q.double().abs(), k.double().abs().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    ds = 2 * gamma * softmax_scale * float((qf @ kf.transpose(-1, -2)).max())
    tiny = torch.finfo(out.dtype).tiny
    spacing = 2.0 ** torch.floor(torch.log2(out.double().abs().clamp(min=tiny))) * torch.finfo(out.dtype).eps
    tol_out = 2 * ds * float(v.double().abs().max()) + 4 * u32 * float(out.double().abs().max()) + spacing
    finite = torch.isfinite(lse)
    tol_lse = ds + 4 * u32 * float(lse[finite].abs().max()) if finite.any() else 0.0
    return tol_out, tol_lse


@pytest.mark.interp
@pytest.mark.smoke
@pytest.mark.parametrize("shape, kwargs, dtype", [
    ((1, 2, 1, 37, 45, 40), dict(causal=True), torch.bfloat16),  # padded head dim, ragged blocks, GQA
    ((1, 2, 1, 37, 45, 40), dict(causal=True), torch.float16),
    ((2, 2, 2, 33, 17, 32), dict(kv_lens=torch.tensor([17, 5]), causal=True, causal_alignment="bottom_right"),
     torch.bfloat16),
    ((1, 1, 1, 20, 50, 16), dict(window_size=(7, 3), softcap=5.0), torch.float16),
])
def test_descriptor_loads_agree_with_the_pointer_path(shape, kwargs, dtype, seed):
    q, k, v = inputs(seed, *shape, dtype)
    with fa.tensor_descriptors("off"):
        ref_out, ref_lse = flash_attention(q, k, v, return_lse=True, **kwargs)
    with fa.tensor_descriptors("on"):
        assert fa.tma_ok(q, k, v)
        out, lse = flash_attention(q, k, v, return_lse=True, **kwargs)
    tol_out, tol_lse = path_tolerance(q, k, v, torch.maximum(out.abs(), ref_out.abs()), ref_lse,
                                      1 / math.sqrt(q.shape[-1]))
    diff = (out.double() - ref_out.double()).abs()
    assert bool((diff <= tol_out).all()), f"seed {seed}: out differs by {float(diff.max()):.3g} (worst excess " \
                                          f"{float((diff - tol_out).max()):.3g} over the two-orders tolerance)"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"seed {seed}: rows that see no key differ"
    finite = torch.isfinite(ref_lse)
    lse_diff = float((lse[finite] - ref_lse[finite]).abs().max()) if finite.any() else 0.0
    assert lse_diff <= tol_lse, f"seed {seed}: lse differs by {lse_diff:.3g} > {tol_lse:.3g}"


@pytest.mark.interp
def test_the_tolerance_is_blind_to_no_descriptor_bug(seed):
    """The check above can fail: a one-row shift of the key tile (what a descriptor built on
    the wrong row would load) is far outside the tolerance."""
    q, k, v = inputs(seed, 1, 2, 1, 37, 45, 40, torch.float16)
    out = flash_attention(q, k, v, causal=True)
    shifted = flash_attention(q, torch.roll(k, 1, dims=2), v, causal=True)
    tol_out, _ = path_tolerance(q, k, v, out.abs(), torch.zeros(1), 1 / math.sqrt(40))
    assert bool(((shifted.double() - out.double()).abs() > tol_out).any())


def test_the_dispatcher_takes_descriptors_only_where_tma_can_load():
    q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16)
    with fa.tensor_descriptors("on"):
        assert fa.tma_ok(q, q, q)
        assert not fa.tma_ok(q.float(), q.float(), q.float())  # float32: the exactness path
        odd = torch.zeros(1, 2, 8, 17, dtype=torch.bfloat16)  # 34-byte rows: not 16-byte aligned
        assert not fa.tma_ok(odd, odd, odd)
        assert not fa.tma_ok(q.transpose(2, 3), q, q)  # last stride not 1
    with fa.tensor_descriptors("auto"):  # under the interpreter, auto means the pointer path
        assert not fa.tma_ok(q, q, q)
    with pytest.raises(ValueError, match="mode must be"):
        with fa.tensor_descriptors("maybe"):
            pass


@pytest.mark.interp
@pytest.mark.parametrize("name", [
    pytest.param("b1-hq2-hkv1-lq37-lk45-d40-bfloat16-causal_top_left-dense-tma", marks=pytest.mark.slow),
    "b2-hq2-hkv2-lq33-lk17-d32-bfloat16-noncausal-kvlens-win6_inf-kvl17_5-tma",
    "b1-hq2-hkv2-lq20-lk50-d16-float16-causal_bottom_right-dense-softcap5-tma",
])
def test_backward_through_descriptors_meets_the_rule(name, seed):
    """Forward and backward on the descriptor path, judged by the gate against the float64
    oracle (max-norm and RMS criteria, lse included)."""
    result = gate.check_case(gate.case_from_name(name, seed))
    assert result.path == "tma", f"{name}: ran the {result.path} path"
    assert result.passed, f"{result.failure_summary()}  replay: {result.replay}"
