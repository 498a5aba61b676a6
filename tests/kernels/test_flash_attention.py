"""Specification of ``flash_attention`` beyond the sweep: API contract, masks, strides, edges.

Numbers are judged against the float64 oracle (``flashref.reference``). On a machine without
a GPU every test here runs the real kernels under Triton's interpreter (tests/conftest.py).
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashref.gate import Case, check_case
from flashref.kernels import INTERPRETED, flash_attention, poisoned_outputs
from flashref.reference import attention_backward, attention_forward

DEVICE = "cpu" if INTERPRETED else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU or TRITON_INTERPRET=1")


def randn(*shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def oracle(q, k, v, dout=None, **kw):
    """(out, lse[, dq, dk, dv]) from the float64 oracle, as numpy arrays."""
    np_ = [t.detach().cpu().double().numpy() for t in (q, k, v)]
    if "kv_lens" in kw and kw["kv_lens"] is not None:
        kw = {**kw, "kv_lens": kw["kv_lens"].cpu().numpy()}
    out, lse = attention_forward(*np_, **kw)
    if dout is None:
        return out, lse
    return (out, lse, *attention_backward(*np_, out, lse, dout.detach().cpu().double().numpy(), **kw))


def grads(q, k, v, dout, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = flash_attention(q, k, v, return_lse=True, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    return out, lse, dq, dk, dv


def assert_close(x: torch.Tensor, ref: np.ndarray, atol=2e-5):
    np.testing.assert_allclose(x.detach().cpu().double().numpy(), ref, atol=atol, rtol=0)


# ---------------------------------------------------------------------------- bad input
q4 = lambda *s, dtype=torch.float32: torch.zeros(*s, dtype=dtype, device=DEVICE)  # noqa: E731
GOOD = dict(q=q4(2, 4, 8, 32), k=q4(2, 2, 8, 32), v=q4(2, 2, 8, 32))

BAD_INPUTS = [
    # (what is wrong, overrides, exception, words the message must contain)
    ("q not a tensor", dict(q=np.zeros((2, 4, 8, 32))), TypeError, ["q", "torch.Tensor"]),
    ("q rank 3", dict(q=q4(4, 8, 32)), ValueError, ["q", "4-D"]),
    ("k rank 5", dict(k=q4(2, 2, 8, 32, 1)), ValueError, ["k", "4-D"]),
    ("integer q", dict(q=q4(2, 4, 8, 32, dtype=torch.int32)), TypeError, ["q", "float16"]),
    ("float64 v", dict(v=q4(2, 2, 8, 32, dtype=torch.float64)), TypeError, ["v"]),
    ("k dtype differs", dict(k=q4(2, 2, 8, 32, dtype=torch.float16)), TypeError, ["k", "dtype"]),
    ("batch differs", dict(k=q4(3, 2, 8, 32), v=q4(3, 2, 8, 32)), ValueError, ["batch"]),
    ("v seqlen differs", dict(v=q4(2, 2, 9, 32)), ValueError, ["v", "seqlen"]),
    ("k head_dim differs", dict(k=q4(2, 2, 8, 16)), ValueError, ["k", "head_dim"]),
    ("Dv 320", dict(v=q4(2, 2, 8, 320)), ValueError, ["v", "head_dim", "256"]),
    ("Dv 0", dict(v=q4(2, 2, 8, 0)), ValueError, ["v", "head_dim", "256"]),
    ("head_dim 320", dict(q=q4(1, 1, 4, 320), k=q4(1, 1, 4, 320), v=q4(1, 1, 4, 320)), ValueError, ["head_dim", "256"]),
    ("Hq % Hkv", dict(k=q4(2, 3, 8, 32), v=q4(2, 3, 8, 32)), ValueError, ["heads", "multiple"]),
    ("alignment", dict(causal=True, causal_alignment="bottom-right"), ValueError, ["causal_alignment"]),
    ("causal not bool", dict(causal="yes"), TypeError, ["causal"]),
    ("scale negative", dict(softmax_scale=-1.0), ValueError, ["softmax_scale"]),
    ("scale a string", dict(softmax_scale="0.1"), TypeError, ["softmax_scale"]),
    ("kv_lens a list", dict(kv_lens=[8, 8]), TypeError, ["kv_lens"]),
    ("kv_lens float", dict(kv_lens=torch.tensor([8.0, 8.0], device=DEVICE)), TypeError, ["kv_lens", "integer"]),
    ("kv_lens shape", dict(kv_lens=torch.tensor([8, 8, 8], device=DEVICE)), ValueError, ["kv_lens", "shape"]),
    ("kv_lens > Lk", dict(kv_lens=torch.tensor([8, 9], device=DEVICE)), ValueError, ["kv_lens", "[0, 8]"]),
    ("kv_lens < 0", dict(kv_lens=torch.tensor([-1, 3], device=DEVICE)), ValueError, ["kv_lens"]),
]


@pytest.mark.interp
@pytest.mark.parametrize("what, overrides, error, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named_before_any_launch(what, overrides, error, words):
    args = {**GOOD, **overrides}
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with poisoned_outputs(), pytest.raises(error) as info:
        flash_attention(q, k, v, **args)
    for word in words:
        assert word in str(info.value), f"{what}: {info.value}"


@pytest.mark.interp
def test_cpu_tensors_without_the_interpreter_say_how_to_run():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch; from flashref.kernels import flash_attention\n"
            "x = torch.randn(1, 1, 4, 16)\n"
            "try:\n    flash_attention(x, x, x)\nexcept ValueError as e:\n    print('ERR', e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR" in done.stdout and "TRITON_INTERPRET=1" in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------------------- empty tensors
EMPTY_SHAPES = [  # (B, Hq, Hkv, Lq, Lk, causal)
    (0, 2, 1, 5, 7, False),
    (2, 2, 1, 0, 7, True),
    (2, 2, 1, 5, 0, False),
    (2, 2, 1, 5, 0, True),
]


@pytest.mark.interp
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=[str(s) for s in EMPTY_SHAPES])
def test_empty_tensors_give_empty_or_masked_results(shape, seed):
    b, hq, hkv, lq, lk, causal = shape
    q, k, v = randn(b, hq, lq, 16, seed=seed + 0), randn(b, hkv, lk, 16, seed=seed + 1), randn(b, hkv, lk, 16, seed=seed + 2)
    dout = randn(b, hq, lq, 16, seed=seed + 3)
    with poisoned_outputs():
        out, lse, dq, dk, dv = grads(q, k, v, dout, causal=causal)
    assert out.shape == q.shape and lse.shape == (b, hq, lq)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    # Lk = 0: every row sees no key -> zeros, lse -inf, zero grads.
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    assert torch.all(dq == 0) and torch.all(dk == 0) and torch.all(dv == 0)


# ---------------------------------------------------------------------------- fully masked rows
@pytest.mark.interp
@pytest.mark.smoke
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_give_zeros_minus_inf_and_zero_grads(dtype, seed):
    # Batch 0: kv_len 0 (every row masked). Batch 1: bottom_right aligns the queries with the
    # last Lq of its kv_len = 30 keys (shift 30 - Lq), so its first Lq - 30 rows see no key.
    b, hq, hkv, lq, lk, d = 2, 2, 1, 45, 33, 24
    q, k, v = randn(b, hq, lq, d, seed=seed + 10, dtype=dtype), randn(b, hkv, lk, d, seed=seed + 11, dtype=dtype), randn(
        b, hkv, lk, d, seed=seed + 12, dtype=dtype)
    dout = randn(b, hq, lq, d, seed=seed + 13, dtype=dtype)
    kv_lens = torch.tensor([0, 30], device=DEVICE)
    kw = dict(causal=True, causal_alignment="bottom_right", kv_lens=kv_lens)
    with poisoned_outputs():
        out, lse, dq, dk, dv = grads(q, k, v, dout, **kw)
    for t in (out, lse, dq, dk, dv):
        assert not torch.isnan(t).any()
    masked_rows = lq - 30  # rows i < Lq - kv_lens[1] see no key in batch 1
    assert torch.all(out[0] == 0) and torch.all(lse[0] == float("-inf"))
    assert torch.all(out[1, :, :masked_rows] == 0) and torch.all(lse[1, :, :masked_rows] == float("-inf"))
    assert torch.all(lse[1, :, masked_rows:] > float("-inf"))
    assert torch.all(dq[0] == 0) and torch.all(dk[0] == 0) and torch.all(dv[0] == 0)
    assert torch.all(dq[1, :, :masked_rows] == 0)
    assert torch.all(dk[1, :, 30:] == 0) and torch.all(dv[1, :, 30:] == 0)
    ref_out, ref_lse, ref_dq, ref_dk, ref_dv = oracle(q, k, v, dout, **kw)
    atol = 2e-5 if dtype == torch.float32 else 5e-2
    assert_close(out, ref_out, atol)
    for g, r in ((dq, ref_dq), (dk, ref_dk), (dv, ref_dv)):
        assert_close(g, r, atol)


# ---------------------------------------------------------------------------- lse, scale, strides
@pytest.mark.interp
@pytest.mark.smoke
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_lse_matches_the_oracle(alignment, seed):
    q, k, v = randn(2, 3, 37, 40, seed=seed + 20), randn(2, 3, 70, 40, seed=seed + 21), randn(2, 3, 70, 40, seed=seed + 22)
    kv_lens = torch.tensor([70, 41], device=DEVICE)
    _, lse = flash_attention(q, k, v, causal=True, causal_alignment=alignment, kv_lens=kv_lens, return_lse=True)
    _, ref_lse = oracle(q, k, v, causal=True, causal_alignment=alignment, kv_lens=kv_lens)
    assert lse.dtype == torch.float32
    finite = np.isfinite(ref_lse)
    assert np.array_equal(torch.isfinite(lse).cpu().numpy(), finite)
    np.testing.assert_allclose(lse.cpu().double().numpy()[finite], ref_lse[finite], atol=1e-5, rtol=0)


@pytest.mark.interp
def test_softmax_scale_is_honoured(seed):
    q, k, v = randn(1, 2, 19, 32, seed=seed + 30), randn(1, 2, 23, 32, seed=seed + 31), randn(1, 2, 23, 32, seed=seed + 32)
    dout = randn(1, 2, 19, 32, seed=seed + 33)
    out, _, dq, dk, dv = grads(q, k, v, dout, softmax_scale=0.37)
    ref = oracle(q, k, v, dout, softmax_scale=0.37)
    for x, r in zip((out, dq, dk, dv), ref[:1] + ref[2:]):
        assert_close(x, r)


@pytest.mark.interp
@pytest.mark.smoke
def test_transposed_views_work_without_a_copy(seed):
    # (B, L, H, D) storage, viewed as (B, H, L, D): strides (L*H*D, D, H*D, 1).
    b, lq, lk, hq, hkv, d = 2, 29, 41, 4, 2, 32
    q = randn(b, lq, hq, d, seed=seed + 40).transpose(1, 2)
    k = randn(b, lk, hkv, d, seed=seed + 41).transpose(1, 2)
    v = randn(b, lk, hkv, d, seed=seed + 42).transpose(1, 2)
    dout = randn(b, lq, hq, d, seed=seed + 43).transpose(1, 2)
    assert not q.is_contiguous()
    copies = []
    original = torch.Tensor.contiguous

    def spy(self, *a, **kw):
        copies.append(tuple(self.shape))
        return original(self, *a, **kw)

    torch.Tensor.contiguous = spy
    try:
        out, _, dq, dk, dv = grads(q, k, v, dout, causal=True)
    finally:
        torch.Tensor.contiguous = original
    assert copies == [], f"hot path copied tensors of shapes {copies}"
    assert out.stride() == q.stride() and dq.stride() == q.stride() and dk.stride() == k.stride()
    ref = oracle(q, k, v, dout, causal=True)
    for x, r in zip((out, dq, dk, dv), ref[:1] + ref[2:]):
        assert_close(x, r)


@pytest.mark.interp
def test_expanded_upstream_gradient_with_zero_strides(seed):
    # out.sum().backward() hands the backward a stride-0 expanded dout.
    q, k, v = (randn(1, 2, 21, 16, seed=seed + s).requires_grad_() for s in (50, 51, 52))
    flash_attention(q, k, v, causal=True).sum().backward()
    ref = oracle(q, k, v, torch.ones(1, 2, 21, 16), causal=True)
    for x, r in zip((q.grad, k.grad, v.grad), ref[2:]):
        assert_close(x, r)


# ---------------------------------------------------------------------------- property
@pytest.mark.interp
@settings(max_examples=6, deadline=None)
@given(
    seqlen_q=st.integers(1, 70), seqlen_k=st.integers(1, 70), head_dim=st.sampled_from([16, 24, 40, 64]),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]), mask=st.sampled_from(
        [(False, "top_left"), (True, "top_left"), (True, "bottom_right")]),
    kv_lens=st.booleans(), dtype=st.sampled_from(["float32", "float16", "bfloat16"]), seed=st.integers(0, 2**16))
def test_any_small_shape_meets_the_rule(seqlen_q, seqlen_k, head_dim, heads, mask, kv_lens, dtype, seed):
    case = Case(2, heads[0], heads[1], seqlen_q, seqlen_k, head_dim, dtype, mask[0], mask[1], kv_lens, seed)
    result = check_case(case, DEVICE)
    assert result.passed, result.summary()


# ---------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_backward_is_deterministic_and_race_free(causal, seed):
    q, k, v, dout = (randn(2, 8, 1000, 128, seed=seed + s, dtype=torch.bfloat16) for s in (60, 61, 62, 63))
    k, v = k[:, :2], v[:, :2]  # GQA: dk/dv summed over 4 query heads, in registers
    first = grads(q, k, v, dout, causal=causal)
    for _ in range(3):
        again = grads(q, k, v, dout, causal=causal)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.interp
def test_large_logits_do_not_overflow(seed):
    # Scores around 1e4: exp would overflow without the running max.
    q = randn(1, 2, 300, 64, seed=seed + 70) * 30.0
    k = randn(1, 2, 300, 64, seed=seed + 71) * 30.0
    v, dout = randn(1, 2, 300, 64, seed=seed + 72), randn(1, 2, 300, 64, seed=seed + 73)
    out, lse, dq, dk, dv = grads(q.half(), k.half(), v.half(), dout.half())
    assert float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(64) > 1e3
    for t in (out, lse, dq, dk, dv):
        assert torch.isfinite(t).all()
    ref = oracle(q.half(), k.half(), v.half(), dout.half())
    assert_close(out, ref[0], atol=1e-2)
