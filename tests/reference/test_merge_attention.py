"""merge_attention: two partial attentions over disjoint key sets equal attention over the union."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff, random_attention
from flashref.reference import attention_forward, attention_mask, merge_attention

TOL = 1e-12


def _causal_bias(lq, lk, cols):
    """0/-inf bias (Lq, len(cols)) saying which of the key positions ``cols`` row i sees."""
    visible = attention_mask(lq, lk, causal=True, causal_alignment="bottom_right")[0, 0]
    return np.where(visible[:, cols], 0.0, -np.inf)


@pytest.mark.parametrize("split", ["prefix_suffix", "interleaved", "random"])
def test_merge_of_a_key_split_equals_attention_over_the_union(split):
    rng = fresh_rng(split)
    lq, lk = 7, 12
    q, k, v, _ = random_attention(rng, 2, 2, 2, lq, lk, 4, 3)
    order = {
        "prefix_suffix": np.arange(lk),
        "interleaved": np.r_[np.arange(0, lk, 2), np.arange(1, lk, 2)],
        "random": rng.permutation(lk),
    }[split]
    cols_a, cols_b = np.sort(order[: lk // 3]), np.sort(order[lk // 3 :])
    # bottom_right causal: early query rows see no key of part A (lse_a = -inf there).
    union, lse = attention_forward(q, k, v, causal=True, causal_alignment="bottom_right")
    part_a = attention_forward(q, k[:, :, cols_a], v[:, :, cols_a], attn_bias=_causal_bias(lq, lk, cols_a))
    part_b = attention_forward(q, k[:, :, cols_b], v[:, :, cols_b], attn_bias=_causal_bias(lq, lk, cols_b))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        merged, merged_lse = merge_attention(*part_a, *part_b)
    assert max_abs_diff(merged, union) <= TOL and max_abs_diff(merged_lse, lse) <= TOL


def test_merging_with_an_empty_side_returns_the_other_and_two_empties_stay_empty():
    rng = fresh_rng()
    out = rng.standard_normal((3, 4))
    lse = rng.standard_normal(3)
    empty_out, empty_lse = np.zeros((3, 4)), np.full(3, -np.inf)
    assert max_abs_diff(merge_attention(out, lse, empty_out, empty_lse)[0], out) == 0.0
    assert max_abs_diff(merge_attention(empty_out, empty_lse, out, lse)[1], lse) == 0.0
    both, both_lse = merge_attention(empty_out, empty_lse, empty_out, empty_lse)
    assert np.all(both == 0.0) and np.all(np.isneginf(both_lse))


def test_merge_rejects_mismatched_shapes_and_nan_lse():
    with pytest.raises(ValueError, match="out_a, out_b"):
        merge_attention(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match="lse_a, lse_b"):
        merge_attention(np.zeros((2, 3)), np.zeros(3), np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="lse_b"):
        merge_attention(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)), np.array([0.0, np.nan]))


def test_the_merge_check_can_fail():
    """Averaging the two halves (ignoring lse) is wrong, and the comparison says so."""
    rng = fresh_rng()
    q, k, v, _ = random_attention(rng, 1, 1, 1, 3, 8, 4)
    union, _ = attention_forward(q, k, v)
    out_a, _ = attention_forward(q, k[:, :, :2], v[:, :, :2])
    out_b, _ = attention_forward(q, k[:, :, 2:], v[:, :, 2:])
    assert max_abs_diff((out_a + out_b) / 2, union) > 1e-3


def test_sinks_merge_when_counted_once():
    """A key split with sinks: the sink goes into one partial (or is merged as (0, sinks)
    at the end); giving it to both partials counts it twice, and the check says so."""
    rng = fresh_rng()
    q, k, v, _ = random_attention(rng, 2, 3, 1, 5, 9, 4)
    sinks = rng.uniform(0.0, 2.0, 3)  # weighty enough that counting it twice shows
    union = attention_forward(q, k, v, sinks=sinks, window_size=(4, 1))
    mask = np.broadcast_to(attention_mask(5, 9, window_size=(4, 1)), (2, 3, 5, 9))
    a, b = slice(0, 4), slice(4, 9)
    part = lambda cols, **kw: attention_forward(  # noqa: E731
        q, k[:, :, cols], v[:, :, cols], attn_bias=np.where(mask[..., cols], 0.0, -np.inf), **kw)
    once = merge_attention(*part(a, sinks=sinks), *part(b))
    sink_lse = np.broadcast_to(sinks[None, :, None], union[1].shape)
    at_the_end = merge_attention(*merge_attention(*part(a), *part(b)), np.zeros_like(union[0]), sink_lse)
    for merged in (once, at_the_end):
        assert max_abs_diff(merged[0], union[0]) <= TOL and max_abs_diff(merged[1], union[1]) <= TOL
    twice = merge_attention(*part(a, sinks=sinks), *part(b, sinks=sinks))
    assert max_abs_diff(twice[1], union[1]) > 1e-3
