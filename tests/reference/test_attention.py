"""The closed-form attention oracle: its forward and backward against torch in float64,
against central differences, and its semantics for masks, GQA, dropout and empty rows."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff, random_attention, torch_attention
from flashref.reference import attention_backward, attention_forward, attention_mask

TOL = 1e-12

# (B, Hq, Hkv, Lq, Lk, D, Dv, kwargs): odd sizes, GQA/MQA, both alignments, padding,
# Lq > Lk so bottom_right empties rows, a bias, a custom scale.
CASES = {
    "plain": (2, 3, 3, 17, 17, 8, 8, {}),
    "causal_top_left_lq_lt_lk": (1, 2, 2, 5, 13, 4, 4, {"causal": True}),
    "causal_bottom_right_lq_lt_lk": (
        1, 2, 2, 5, 13, 4, 4, {"causal": True, "causal_alignment": "bottom_right"}),
    "causal_top_left_lq_gt_lk": (2, 2, 1, 13, 5, 4, 6, {"causal": True}),
    "causal_bottom_right_lq_gt_lk_empty_rows": (
        2, 2, 1, 13, 5, 4, 6, {"causal": True, "causal_alignment": "bottom_right"}),
    "gqa_kv_lens_with_zero": (3, 4, 2, 7, 9, 5, 3, {"kv_lens": [9, 0, 4]}),
    "mqa_causal_kv_lens": (2, 4, 1, 9, 9, 6, 6, {"causal": True, "kv_lens": [3, 9]}),
    "scale_and_bias": (1, 2, 1, 6, 7, 4, 4, {"softmax_scale": 0.37, "bias": (1, 2, 6, 7)}),
    "broadcast_bias_with_minus_inf": (2, 2, 2, 4, 5, 3, 3, {"bias": "row_killer"}),
    "single_query_decode": (2, 4, 2, 1, 23, 16, 16, {"causal": True, "causal_alignment": "bottom_right"}),
}  # fmt: skip


def _kwargs(spec, rng, lq, lk):
    kwargs = dict(spec)
    bias = kwargs.pop("bias", None)
    if bias == "row_killer":
        # (Lq, Lk) bias with -inf everywhere on query row 1: that row sees no key.
        bias = rng.standard_normal((lq, lk))
        bias[1] = -np.inf
    elif bias is not None:
        bias = rng.standard_normal(bias)
    return kwargs if bias is None else {**kwargs, "attn_bias": bias}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_closed_form_matches_torch_float64(case):
    batch, hq, hkv, lq, lk, d, dv, spec = CASES[case]
    rng = fresh_rng(case)
    q, k, v, dout = random_attention(rng, batch, hq, hkv, lq, lk, d, dv)
    kwargs = _kwargs(spec, rng, lq, lk)
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    visible = attention_mask(
        lq, lk, causal=kwargs.get("causal", False),
        causal_alignment=kwargs.get("causal_alignment", "top_left"),
        kv_lens=kwargs.get("kv_lens"), batch=batch,
    )  # fmt: skip
    expected = torch_attention(
        q, k, v, dout, visible=visible, softmax_scale=kwargs.get("softmax_scale"),
        attn_bias=kwargs.get("attn_bias"),
    )  # fmt: skip
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        assert max_abs_diff(got, want) <= TOL, name


def test_lse_is_log_sum_exp_of_scaled_scores():
    rng = fresh_rng()
    q, k, v, _ = random_attention(rng, 1, 2, 2, 6, 6, 4)
    out, lse = attention_forward(q, k, v, causal=True, softmax_scale=0.5)
    scores = 0.5 * q @ k.swapaxes(-1, -2)
    expected = [[np.log(np.exp(scores[0, h, i, : i + 1]).sum()) for i in range(6)] for h in range(2)]
    assert max_abs_diff(lse[0], expected) <= TOL


def test_empty_rows_are_zero_with_minus_inf_lse_and_zero_grads_without_warnings():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 2, 2, 6, 3, 4)
    kwargs = {"causal": True, "causal_alignment": "bottom_right", "kv_lens": [3, 0]}
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out, lse = attention_forward(q, k, v, **kwargs)
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, **kwargs)
    # bottom_right with Lq=6, Lk=3: rows 0..2 see nothing; batch 1 has no keys at all.
    empty = np.zeros((2, 2, 6), dtype=bool)
    empty[0, :, :3] = True
    empty[1] = True
    assert np.array_equal(np.isneginf(lse), empty)
    assert np.all(out[empty] == 0.0) and np.all(dq[empty] == 0.0)
    assert np.all(dk[1] == 0.0) and np.all(dv[1] == 0.0)
    assert np.isfinite(out).all() and np.isfinite(dq).all()


def test_gqa_equals_repeating_kv_heads_and_summing_their_grads():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 6, 2, 5, 7, 4)
    out, lse = attention_forward(q, k, v, causal=True)
    dq, dk, dv = attention_backward(q, k, v, out, lse, dout, causal=True)
    k_rep, v_rep = np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)
    out_rep, lse_rep = attention_forward(q, k_rep, v_rep, causal=True)
    dq_rep, dk_rep, dv_rep = attention_backward(q, k_rep, v_rep, out_rep, lse_rep, dout, causal=True)
    assert max_abs_diff(out, out_rep) <= TOL and max_abs_diff(dq, dq_rep) <= TOL
    assert max_abs_diff(dk, dk_rep.reshape(2, 2, 3, 7, 4).sum(2)) <= TOL
    assert max_abs_diff(dv, dv_rep.reshape(2, 2, 3, 7, 4).sum(2)) <= TOL


def test_backward_matches_central_differences():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 4, 5, 3, 2)
    kwargs = {"causal": True, "causal_alignment": "bottom_right", "softmax_scale": 0.8}

    def loss(q_, k_, v_):
        return float((attention_forward(q_, k_, v_, **kwargs)[0] * dout).sum())

    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    step = 1e-6
    for index, (x, grad) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for pos in np.ndindex(x.shape):
            plus, minus = [a.copy() for a in (q, k, v)], [a.copy() for a in (q, k, v)]
            plus[index][pos] += step
            minus[index][pos] -= step
            numeric[pos] = (loss(*plus) - loss(*minus)) / (2 * step)
        assert max_abs_diff(grad, numeric) <= 1e-8 * max(1.0, np.abs(numeric).max())


def test_dropout_mask_is_returned_reproducible_and_matches_torch():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 4, 2, 6, 9, 4)
    p = 0.25
    seed = int(rng.integers(2**31))
    kwargs = {"causal": True, "dropout_p": p}
    out, lse, keep = attention_forward(
        q, k, v, rng=np.random.default_rng(seed), return_dropout_mask=True, **kwargs)
    assert keep.shape == (2, 4, 6, 9) and keep.dtype == bool and 0 < keep.mean() < 1
    # the same generator state gives the same mask; the explicit mask gives the same result
    again, _ = attention_forward(q, k, v, rng=np.random.default_rng(seed), **kwargs)
    explicit, lse2 = attention_forward(q, k, v, dropout_mask=keep, **kwargs)
    assert np.array_equal(out, again) and np.array_equal(out, explicit)
    assert np.array_equal(lse, lse2)  # dropout acts after the softmax: lse is untouched
    grads = attention_backward(q, k, v, out, lse, dout, dropout_mask=keep, **kwargs)
    visible = attention_mask(6, 9, causal=True, batch=2)
    expected = torch_attention(q, k, v, dout, visible=visible, dropout_scale=keep / (1 - p))
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        assert max_abs_diff(got, want) <= TOL, name


def test_integer_and_float32_inputs_are_computed_in_float64():
    q = np.array([[[[1, 0], [0, 1]]]])  # int
    out, lse = attention_forward(q, q.astype(np.float32), q.astype(np.float16))
    assert out.dtype == np.float64 and lse.dtype == np.float64
    expected, _ = attention_forward(q.astype(np.float64), q * 1.0, q * 1.0)
    assert np.array_equal(out, expected)


def test_the_torch_comparison_can_fail():
    """The checker is not vacuous: a backward with the wrong D (rowsum of dO alone) fails."""
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 2, 5, 5, 4)
    out, lse = attention_forward(q, k, v)
    wrong_out = np.ones_like(out)  # D = rowsum(dout * 1) instead of rowsum(dout * out)
    dq, _, _ = attention_backward(q, k, v, wrong_out, lse, dout)
    _, dq_torch, _, _ = torch_attention(q, k, v, dout, visible=np.ones((1, 1, 5, 5), bool))
    assert max_abs_diff(dq, dq_torch) > 1e-3


def test_the_oracle_never_imports_torch_or_triton():
    import subprocess
    import sys

    code = (
        "import sys, flashref.reference\n"
        "bad = [m for m in ('torch', 'triton') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_strided_views_are_accepted():
    """(B, L, H, D) storage seen through a transpose, and a transposed bias, give the same
    answer as contiguous copies."""
    rng = fresh_rng()
    blhd = [rng.standard_normal((2, 6, 3, 4)) for _ in range(3)]
    q, k, v = (x.transpose(0, 2, 1, 3) for x in blhd)  # (B, H, L, D) views
    bias = rng.standard_normal((6, 6)).T
    out, lse = attention_forward(q, k, v, causal=True, attn_bias=bias)
    expected, expected_lse = attention_forward(
        *(np.ascontiguousarray(x) for x in (q, k, v)), causal=True, attn_bias=bias.copy())
    assert np.array_equal(out, expected) and np.array_equal(lse, expected_lse)
