"""Property tests over shapes, masks and alignments: closed form == blocked == autograd."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_cases import max_abs_diff, random_attention
from flashref.autograd import Tensor
from flashref.reference import (
    attention_backward,
    attention_forward,
    blocked_attention_backward,
    blocked_attention_forward,
    scaled_dot_product_attention,
)

TOL = 1e-12


@st.composite
def attention_problems(draw):
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 2))
    q_heads = kv_heads * draw(st.integers(1, 3))
    q_len, kv_len = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    head_dim, v_head_dim = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    kwargs = {
        "causal": draw(st.booleans()),
        "causal_alignment": draw(st.sampled_from(["top_left", "bottom_right"])),
    }
    if draw(st.booleans()):
        kwargs["kv_lens"] = draw(st.lists(st.integers(0, kv_len), min_size=batch, max_size=batch))
    if draw(st.booleans()):
        kwargs["softmax_scale"] = draw(st.floats(0.05, 2.0))
    seed = draw(st.integers(0, 2**32 - 1))  # hypothesis records it: failures replay
    shape = (batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim)
    blocks = (draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    extras = {"bias": draw(st.booleans()), "dropout_p": draw(st.sampled_from([0.0, 0.0, 0.5]))}
    return shape, kwargs, seed, blocks, extras


def _with_extras(kwargs, extras, rng, shape):
    """Add a random (Hq, Lq, Lk) bias with some -inf entries and/or a dropout keep mask."""
    batch, q_heads, _, q_len, kv_len, _, _ = shape
    kwargs = dict(kwargs)
    if extras["bias"]:
        bias = rng.standard_normal((q_heads, q_len, kv_len))
        kwargs["attn_bias"] = np.where(rng.random(bias.shape) < 0.2, -np.inf, bias)
    if extras["dropout_p"]:
        kwargs["dropout_p"] = extras["dropout_p"]
        kwargs["dropout_mask"] = rng.random((batch, q_heads, q_len, kv_len)) >= extras["dropout_p"]
    return kwargs


@settings(max_examples=60, deadline=None)
@given(attention_problems())
def test_closed_blocked_and_autograd_agree(problem):
    shape, kwargs, seed, (block_m, block_n), extras = problem
    rng = np.random.default_rng(seed)
    q, k, v, dout = random_attention(rng, *shape)
    kwargs = _with_extras(kwargs, extras, rng, shape)
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)

    out_b, lse_b = blocked_attention_forward(q, k, v, block_m=block_m, block_n=block_n, **kwargs)
    grads_b = blocked_attention_backward(
        q, k, v, out, lse, dout, block_m=block_m, block_n=block_n, **kwargs)
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(grads_b, grads))

    tensors = [Tensor(x, requires_grad=True) for x in (q, k, v)]
    out_auto = scaled_dot_product_attention(*tensors, **kwargs)
    (out_auto * Tensor(dout)).sum().backward()
    assert max_abs_diff(out_auto.data, out) <= TOL
    assert all(max_abs_diff(t.grad, g) <= TOL for t, g in zip(tensors, grads))


@settings(max_examples=40, deadline=None)
@given(attention_problems())
def test_outputs_are_convex_combinations_of_visible_values(problem):
    """Each output row is a weighted average of the values its row can see (no dropout):
    it lies inside their coordinate-wise range; an empty row is 0 with lse = -inf."""
    shape, kwargs, seed, _, extras = problem
    rng = np.random.default_rng(seed)
    q, k, v, _ = random_attention(rng, *shape)
    kwargs = _with_extras(kwargs, {**extras, "dropout_p": 0.0}, rng, shape)
    out, lse = attention_forward(q, k, v, **kwargs)
    empty = np.isneginf(lse)
    assert np.all(out[empty] == 0.0) and not np.isnan(lse).any()
    group = shape[1] // shape[2]
    v_full = np.repeat(v, group, axis=1)
    assert np.all(out[~empty] <= v_full.max(axis=2)[:, :, None].repeat(out.shape[2], 2)[~empty] + 1e-12)
    assert np.all(out[~empty] >= v_full.min(axis=2)[:, :, None].repeat(out.shape[2], 2)[~empty] - 1e-12)
