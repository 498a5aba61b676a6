"""scaled_dot_product_attention composed from autograd ops: its gradient (from the autograd
engine) equals the closed-form backward, and torch's, in float64."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff, random_attention, torch_attention
from flashref.autograd import Tensor
from flashref.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
    scaled_dot_product_attention,
)

TOL = 1e-12

CASES = {
    "plain": (2, 2, 2, 7, 7, 4, 4, {}),
    "gqa_causal_bottom_right_empty_rows": (
        2, 4, 2, 9, 5, 3, 2, {"causal": True, "causal_alignment": "bottom_right"}),
    "mqa_kv_lens": (3, 3, 1, 4, 6, 5, 5, {"kv_lens": [6, 0, 2], "softmax_scale": 0.3}),
    "causal_top_left_with_bias": (1, 2, 1, 6, 8, 4, 3, {"causal": True, "bias": True}),
    "dropout": (2, 2, 1, 5, 6, 3, 3, {"causal": True, "dropout_p": 0.4}),
}  # fmt: skip


def _grads_through_autograd(q, k, v, dout, **kwargs):
    tensors = [Tensor(x, requires_grad=True) for x in (q, k, v)]
    out = scaled_dot_product_attention(*tensors, **kwargs)
    (out * Tensor(dout)).sum().backward()
    return out.data, [t.grad for t in tensors]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_autograd_gradient_equals_closed_form(case):
    batch, hq, hkv, lq, lk, d, dv, spec = CASES[case]
    rng = fresh_rng(case)
    q, k, v, dout = random_attention(rng, batch, hq, hkv, lq, lk, d, dv)
    kwargs = dict(spec)
    if kwargs.pop("bias", False):
        kwargs["attn_bias"] = rng.standard_normal((hq, lq, lk))
    if kwargs.get("dropout_p"):
        kwargs["dropout_mask"] = rng.random((batch, hq, lq, lk)) >= kwargs["dropout_p"]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out_auto, grads_auto = _grads_through_autograd(q, k, v, dout, **kwargs)
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    assert max_abs_diff(out_auto, out) <= TOL
    for name, got, want in zip(("dq", "dk", "dv"), grads_auto, grads):
        assert max_abs_diff(got, want) <= TOL, name


def test_bias_gradient_matches_torch():
    """The composed version also differentiates a Tensor bias; torch is the second opinion."""
    import torch

    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 2, 1, 5, 6, 3)
    bias = rng.standard_normal((2, 5, 6))
    t_bias = Tensor(bias, requires_grad=True)
    out = scaled_dot_product_attention(q, k, v, attn_bias=t_bias, causal=True)
    (out * Tensor(dout)).sum().backward()
    torch_bias = torch.tensor(bias, requires_grad=True)
    mask = torch.tensor(attention_mask(5, 6, causal=True, batch=2))
    torch_out = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(x) for x in (q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1))),
        attn_mask=torch_bias.masked_fill(~mask, float("-inf")),
    )
    torch_out.backward(torch.tensor(dout))
    assert max_abs_diff(out.data, torch_out.detach().numpy()) <= TOL
    assert max_abs_diff(t_bias.grad, torch_bias.grad.numpy()) <= TOL


def test_ndarray_inputs_give_a_constant_tensor_and_rng_dropout_matches_the_closed_form():
    rng = fresh_rng()
    q, k, v, _ = random_attention(rng, 1, 2, 2, 4, 4, 3)
    seed = int(rng.integers(2**31))
    out, keep = scaled_dot_product_attention(
        q, k, v, dropout_p=0.5, rng=np.random.default_rng(seed), return_dropout_mask=True)
    assert isinstance(out, Tensor) and not out.requires_grad
    expected, _, keep_closed = attention_forward(
        q, k, v, dropout_p=0.5, rng=np.random.default_rng(seed), return_dropout_mask=True)
    assert np.array_equal(keep, keep_closed)
    assert max_abs_diff(out.data, expected) <= TOL


def test_the_autograd_comparison_can_fail():
    """Swapping the alignment changes the gradient by far more than the tolerance."""
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 1, 1, 3, 6, 4)
    _, grads_auto = _grads_through_autograd(q, k, v, dout, causal=True)
    out, lse = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right")
    grads = attention_backward(q, k, v, out, lse, dout, causal=True, causal_alignment="bottom_right")
    assert max_abs_diff(grads_auto[1], grads[1]) > 1e-3


def test_torch_agrees_with_the_autograd_version_on_gqa_and_empty_rows():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 2, 4, 2, 7, 4, 3)
    kwargs = {"causal": True, "causal_alignment": "bottom_right", "kv_lens": [4, 2]}
    out, grads = _grads_through_autograd(q, k, v, dout, **kwargs)
    visible = attention_mask(7, 4, causal=True, causal_alignment="bottom_right", kv_lens=[4, 2])
    expected = torch_attention(q, k, v, dout, visible=visible)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        assert max_abs_diff(got, want) <= TOL, name
