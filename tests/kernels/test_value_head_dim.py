"""A value head dim Dv different from the query/key head dim D (issue 23, DeepSeek's MLA):
``flash_attention`` and ``flash_attention_varlen`` with v (..., Dv), forward and backward.

The numbers are judged by the gate's rule (``check_case``: float64 oracle, derived slack);
the cases are a covering design over (D, Dv) pairs (the three that models use, and odd pairs
whose padded widths differ both ways), lengths that leave every residue of the interpreter's
32-row tiles (1, 31, exact multiples), masking, kv_lens, GQA, dtypes and the descriptor path.
"""

import pytest
import torch
import torch.nn.functional as F

from flashref.gate import Case, check_case
from flashref.kernels import INTERPRETED, flash_attention, flash_attention_varlen, sdpa_routing

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")

# (D, Dv, Lq, Lk, (B, Hq, Hkv), causal, alignment, kv_lens, dtype, descriptors)
COVERING = [
    (192, 128, 33, 31, (1, 2, 1), True, "bottom_right", False, "bfloat16", True),
    (128, 64, 31, 65, (2, 2, 2), False, "top_left", True, "float32", False),
    (64, 128, 64, 33, (1, 4, 2), True, "top_left", False, "float16", False),
    (48, 24, 65, 32, (2, 3, 1), True, "bottom_right", True, "float16", True),
    (24, 40, 1, 63, (1, 2, 1), False, "top_left", False, "bfloat16", False),
    (40, 17, 17, 1, (2, 2, 1), True, "top_left", True, "float32", False),
]


@pytest.mark.interp
@pytest.mark.parametrize("d, dv, lq, lk, layout, causal, alignment, kv_lens, dtype, descriptors", COVERING,
                         ids=[f"d{c[0]}-dv{c[1]}-lq{c[2]}-lk{c[3]}-{c[8]}" for c in COVERING])
def test_value_head_dim_meets_the_rule(d, dv, lq, lk, layout, causal, alignment, kv_lens, dtype, descriptors, seed):
    case = Case(*layout, lq, lk, d, dtype, causal, alignment, kv_lens, seed, descriptors=descriptors, head_dim_v=dv)
    result = check_case(case, DEVICE)
    assert result.passed, result.summary()


@pytest.mark.interp
def test_shapes_of_out_and_every_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 2, 5, 40, generator=gen), torch.randn(1, 1, 7, 40, generator=gen)
    v = torch.randn(1, 1, 7, 24, generator=gen)
    q, k, v = (t.to(DEVICE).requires_grad_() for t in (q, k, v))
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 5, 24) and lse.shape == (1, 2, 5)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


@pytest.mark.interp
def test_the_fake_implementation_gives_dv_wide_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(2, 4, 9, 192), torch.empty(2, 2, 11, 192), torch.empty(2, 2, 11, 128)
        out, lse = torch.ops.flashref.attention_forward(q, k, v, None, None, None, False, "top_left", 0.1,
                                                        -1, -1, 0.0, 0.0, 0)
        dq, dk, dv, _ = torch.ops.flashref.attention_backward(q, k, v, out, lse, out, None, None, None, False,
                                                              "top_left", 0.1, -1, -1, 0.0, 0.0, 0)
    assert out.shape == (2, 4, 9, 128) and lse.shape == (2, 4, 9)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


@pytest.mark.interp
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_varlen_is_the_dense_kernel_per_sequence(alignment, seed):
    """Packed sequences with Dv != D give, sequence by sequence, exactly the dense call's out
    and gradients (the same kernels; an empty sequence and odd lengths included)."""
    gen = torch.Generator().manual_seed(seed)
    lens_q, lens_k, d, dv = [5, 0, 33], [7, 3, 31], 40, 24
    q = torch.randn(sum(lens_q), 4, d, generator=gen).to(DEVICE)
    k = torch.randn(sum(lens_k), 2, d, generator=gen).to(DEVICE)
    v = torch.randn(sum(lens_k), 2, dv, generator=gen).to(DEVICE)
    dout = torch.randn(sum(lens_q), 4, dv, generator=gen).to(DEVICE)
    cu_q = torch.tensor([0, 5, 5, 38], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 7, 10, 41], dtype=torch.int32, device=DEVICE)
    packed = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention_varlen(*packed, cu_q, cu_k, 33, 31, causal=True, causal_alignment=alignment)
    assert out.shape == (38, 4, dv)
    grads = torch.autograd.grad(out, packed, dout)
    for b in (0, 2):
        rows_q, rows_k = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        dense = [t[rows].transpose(0, 1)[None].clone().requires_grad_()
                 for t, rows in ((q, rows_q), (k, rows_k), (v, rows_k))]
        o = flash_attention(*dense, causal=True, causal_alignment=alignment)
        dense_grads = torch.autograd.grad(o, dense, dout[rows_q].transpose(0, 1)[None])
        torch.testing.assert_close(out[rows_q], o[0].transpose(0, 1), rtol=0, atol=0)
        for g, dg, rows in zip(grads, dense_grads, (rows_q, rows_k, rows_k)):
            torch.testing.assert_close(g[rows], dg[0].transpose(0, 1), rtol=0, atol=0)


def test_case_names_carry_dv_only_when_it_differs():
    plain = Case(1, 2, 1, 5, 7, 64, "float16", True, "top_left", False)
    assert "dv" not in plain.name and Case.from_name(plain.name) == plain
    assert Case(1, 2, 1, 5, 7, 64, "float16", True, "top_left", False, head_dim_v=64) == plain
    mla = Case(1, 2, 1, 5, 7, 192, "bfloat16", True, "top_left", False, head_dim_v=128, descriptors=True)
    assert mla.name.endswith("-tma-dv128") and Case.from_name(mla.name) == mla
    assert mla.value_head_dim == 128 and plain.value_head_dim == 64


@pytest.mark.interp
def test_sdpa_routing_takes_a_value_head_dim_of_its_own(seed):
    """torch's scaled_dot_product_attention with value (..., Dv), Dv != D, routes to the kernels
    (it used to fall back): the routed call is flash_attention's, bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 2, 9, 48, generator=gen).to(DEVICE), torch.randn(1, 2, 9, 48, generator=gen).to(DEVICE)
    v = torch.randn(1, 2, 9, 32, generator=gen).to(DEVICE)
    with sdpa_routing(fallback="error") as routing:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert routing.routed == 1 and out.shape == (1, 2, 9, 32)
    torch.testing.assert_close(out, flash_attention(q, k, v, causal=True), rtol=0, atol=0)
