"""Property tests for the variants over varying shapes: the oracles agree, and each variant
obeys an identity that relates it to plain attention."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_cases import max_abs_diff, plain_visible, random_attention
from flashref.autograd import Tensor
from flashref.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
    blocked_attention_backward,
    blocked_attention_forward,
    merge_attention,
    scaled_dot_product_attention,
)

TOL = 1e-12


@st.composite
def variant_problems(draw):
    batch = draw(st.integers(1, 2))
    kv_heads = draw(st.integers(1, 2))
    q_heads = kv_heads * draw(st.integers(1, 2))
    q_len, kv_len = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    head_dim, v_head_dim = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    kwargs = {
        "causal": draw(st.booleans()),
        "causal_alignment": draw(st.sampled_from(["top_left", "bottom_right"])),
        "window_size": (draw(st.integers(-1, 4)), draw(st.integers(-1, 4))),
    }
    if draw(st.booleans()):
        kwargs["kv_lens"] = draw(st.lists(st.integers(0, kv_len), min_size=batch, max_size=batch))
    if draw(st.booleans()):
        kwargs["softcap"] = draw(st.floats(0.1, 20.0))
    seed = draw(st.integers(0, 2**32 - 1))  # hypothesis records it: failures replay
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(q_heads,), (batch, q_heads)]))
        kwargs["alibi_slopes"] = rng.uniform(0.0, 2.0, shape)
    if draw(st.booleans()):
        kwargs["sinks"] = rng.normal(0.0, 2.0, q_heads)
    if draw(st.booleans()):
        kwargs["dropout_p"] = draw(st.sampled_from([0.2, 0.9]))
        kwargs["dropout_seed"] = draw(st.integers(0, 2**63 - 1))
    shape = (batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim)
    blocks = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return shape, kwargs, rng, blocks


@settings(max_examples=40, deadline=None)
@given(variant_problems())
def test_closed_blocked_and_autograd_agree_with_variants(problem):
    shape, kwargs, rng, (block_m, block_n) = problem
    q, k, v, dout = random_attention(rng, *shape)
    with np.errstate(all="raise"):
        out, lse = attention_forward(q, k, v, **kwargs)
        grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
        out_b, lse_b = blocked_attention_forward(q, k, v, block_m=block_m, block_n=block_n, **kwargs)
        grads_b = blocked_attention_backward(
            q, k, v, out, lse, dout, block_m=block_m, block_n=block_n, **kwargs)
    assert not np.isnan(lse).any() and not np.isnan(out).any()
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(grads_b, grads))

    tensors = [Tensor(x, requires_grad=True) for x in (q, k, v)]
    auto = dict(kwargs)
    if "sinks" in kwargs:
        auto["sinks"] = Tensor(kwargs["sinks"], requires_grad=True)
        tensors.append(auto["sinks"])
    out_auto = scaled_dot_product_attention(*tensors[:3], **auto)
    (out_auto * Tensor(dout)).sum().backward()
    assert max_abs_diff(out_auto.data, out) <= TOL
    assert all(max_abs_diff(t.grad, g) <= TOL for t, g in zip(tensors, grads))


@settings(max_examples=40, deadline=None)
@given(variant_problems())
def test_a_sink_is_a_merged_key_with_a_zero_value(problem):
    """Attention with sinks == attention without, merged with a partial (out 0, lse sinks[h]);
    the sink is counted once. dsinks = -sum exp(sinks - lse) * rowsum(dout * out)."""
    shape, kwargs, rng, _ = problem
    q, k, v, dout = random_attention(rng, *shape)
    sinks = kwargs.pop("sinks", rng.normal(0.0, 2.0, shape[1]))
    out, lse = attention_forward(q, k, v, sinks=sinks, **kwargs)
    plain_out, plain_lse = attention_forward(q, k, v, **kwargs)
    sink_lse = np.broadcast_to(sinks[None, :, None], lse.shape)
    merged_out, merged_lse = merge_attention(plain_out, plain_lse, np.zeros_like(out), sink_lse)
    assert max_abs_diff(merged_out, out) <= TOL and max_abs_diff(merged_lse, lse) <= TOL
    *_, dsinks = attention_backward(q, k, v, out, lse, dout, sinks=sinks, **kwargs)
    expected = -(np.exp(sink_lse - lse) * (dout * out).sum(-1)).sum(axis=(0, 2))
    assert max_abs_diff(dsinks, expected) <= TOL


@settings(max_examples=30, deadline=None)
@given(variant_problems())
def test_causal_is_the_windows_right_edge_zero(problem):
    shape, kwargs, rng, _ = problem
    q, k, v, _ = random_attention(rng, *shape)
    left, _ = kwargs["window_size"]
    causal = attention_forward(q, k, v, **{**kwargs, "causal": True})
    windowed = attention_forward(q, k, v, **{**kwargs, "causal": False, "window_size": (left, 0)})
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(causal, windowed))


@settings(max_examples=40, deadline=None)
@given(
    q_len=st.integers(1, 9), kv_len=st.integers(1, 9), causal=st.booleans(),
    alignment=st.sampled_from(["top_left", "bottom_right"]),
    window=st.tuples(st.integers(-1, 5), st.integers(-1, 5)), data=st.data(),
)  # fmt: skip
def test_mask_equals_the_rule_written_as_loops(q_len, kv_len, causal, alignment, window, data):
    lens = data.draw(st.none() | st.lists(st.integers(0, kv_len), min_size=1, max_size=3))
    batch = 2 if lens is None else len(lens)
    mask = attention_mask(q_len, kv_len, causal=causal, causal_alignment=alignment,
                          kv_lens=lens, batch=batch, window_size=window)  # fmt: skip
    expected = plain_visible(batch, q_len, kv_len, causal=causal, causal_alignment=alignment,
                             kv_lens=lens, window_size=window)  # fmt: skip
    assert np.array_equal(mask[:, 0], expected)
