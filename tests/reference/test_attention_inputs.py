"""Attention arguments: the masks they define, and the errors bad ones raise."""

from __future__ import annotations

import numpy as np
import pytest

from flashref.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
    blocked_attention_forward,
)

# Masks written out by hand: rows are queries, columns keys, 1 = visible.
MASKS = {
    "top_left_3x5": (3, 5, "top_left", ["10000", "11000", "11100"]),
    "bottom_right_3x5": (3, 5, "bottom_right", ["11100", "11110", "11111"]),
    "top_left_5x3": (5, 3, "top_left", ["100", "110", "111", "111", "111"]),
    "bottom_right_5x3": (5, 3, "bottom_right", ["000", "000", "100", "110", "111"]),
    "square_same_either_way": (3, 3, "bottom_right", ["100", "110", "111"]),
}


@pytest.mark.parametrize("case", MASKS, ids=list(MASKS))
def test_causal_masks_by_hand(case):
    lq, lk, alignment, rows = MASKS[case]
    expected = np.array([[c == "1" for c in row] for row in rows])
    mask = attention_mask(lq, lk, causal=True, causal_alignment=alignment)
    assert mask.shape == (1, 1, lq, lk) and mask.dtype == bool
    assert np.array_equal(mask[0, 0], expected)


def test_kv_lens_hide_padding_per_batch_and_combine_with_causal():
    # bottom_right aligns each row to its own length: row 1 (2 keys) has shift 2 - 3 = -1.
    mask = attention_mask(3, 4, causal=True, causal_alignment="bottom_right", kv_lens=[4, 2, 0])
    assert mask.shape == (3, 1, 3, 4)
    assert np.array_equal(mask[0, 0], [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert np.array_equal(mask[1, 0], [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    assert not mask[2].any()
    # top_left ignores the lengths for alignment: only the padding is hidden.
    mask = attention_mask(3, 4, causal=True, kv_lens=[4, 2, 0])
    assert np.array_equal(mask[1, 0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_issue_14_bottom_right_aligns_to_each_sequence_length():
    # The issue's example: 3 speculative tokens against a cache of 5 in a padding of 10.
    mask = attention_mask(3, 10, causal=True, causal_alignment="bottom_right", kv_lens=np.array([5]))
    expected = ["1110000000", "1111000000", "1111100000"]
    assert np.array_equal(mask[0, 0], [[c == "1" for c in row] for row in expected])


# kv_lens[b] -> rows of the bottom_right causal mask for Lq = 4, Lk = 7, written by hand.
# Rows with i + kv_lens[b] - Lq < 0 see no key.
BOTTOM_RIGHT_BY_LENGTH = {
    0: ["0000000", "0000000", "0000000", "0000000"],
    1: ["0000000", "0000000", "0000000", "1000000"],
    3: ["0000000", "1000000", "1100000", "1110000"],  # Lq - 1
    4: ["1000000", "1100000", "1110000", "1111000"],  # Lq
    7: ["1111000", "1111100", "1111110", "1111111"],  # Lk: the padded-length rule
}


def test_bottom_right_kv_lens_0_1_lq_minus_1_lq_lk_by_hand():
    lens = list(BOTTOM_RIGHT_BY_LENGTH)
    mask = attention_mask(4, 7, causal=True, causal_alignment="bottom_right", kv_lens=lens)
    for b, n in enumerate(lens):
        expected = [[c == "1" for c in row] for row in BOTTOM_RIGHT_BY_LENGTH[n]]
        assert np.array_equal(mask[b, 0], expected), n
    # Without kv_lens the shift is the padded one, Lk - Lq: the kv_lens = Lk row.
    assert np.array_equal(
        attention_mask(4, 7, causal=True, causal_alignment="bottom_right")[0, 0], mask[-1, 0]
    )


def test_bottom_right_kv_lens_empty_rows_are_zero_with_minus_inf_lse():
    rng = np.random.default_rng()
    q, k = rng.standard_normal((5, 2, 4, 3)), rng.standard_normal((5, 1, 7, 3))
    v, dout = rng.standard_normal((5, 1, 7, 2)), rng.standard_normal((5, 2, 4, 2))
    lens = list(BOTTOM_RIGHT_BY_LENGTH)
    kw = {"causal": True, "causal_alignment": "bottom_right", "kv_lens": lens}
    with np.errstate(all="raise"):
        out, lse = attention_forward(q, k, v, **kw)
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, **kw)
    for b, n in enumerate(lens):
        empty = [row.count("1") == 0 for row in BOTTOM_RIGHT_BY_LENGTH[n]]
        assert np.all(lse[b][:, empty] == -np.inf) and np.all(np.isfinite(lse[b][:, ~np.array(empty)]))
        assert not out[b][:, empty].any() and not dq[b][:, empty].any()
    assert not dk[0].any() and not dv[0].any()  # kv_lens = 0: nothing is read


def test_non_causal_mask_is_all_visible():
    assert attention_mask(2, 3, batch=2).all()


SHAPE_ERRORS = {
    # name: (q shape, k shape, v shape, error type, text the message must contain)
    "q_rank_3": ((2, 5, 4), (2, 1, 5, 4), (2, 1, 5, 4), ValueError, "q: expected 4 dimensions"),
    "k_rank_5": ((2, 1, 5, 4), (2, 1, 1, 5, 4), (2, 1, 5, 4), ValueError, "k: expected 4"),
    "batch_mismatch": ((2, 2, 5, 4), (3, 2, 5, 4), (3, 2, 5, 4), ValueError, "batch sizes differ"),
    "kv_heads_mismatch": ((1, 4, 5, 4), (1, 2, 5, 4), (1, 4, 5, 4), ValueError, "head counts differ"),
    "gqa_ratio": ((1, 3, 5, 4), (1, 2, 5, 4), (1, 2, 5, 4), ValueError, "multiple of kv heads"),
    "kv_len_mismatch": ((1, 2, 5, 4), (1, 2, 6, 4), (1, 2, 5, 4), ValueError, "sequence lengths"),
    "head_dim_mismatch": ((1, 2, 5, 4), (1, 2, 5, 8), (1, 2, 5, 4), ValueError, "head_dim"),
    "empty_dim": ((1, 2, 0, 4), (1, 2, 5, 4), (1, 2, 5, 4), ValueError, "non-empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", SHAPE_ERRORS, ids=list(SHAPE_ERRORS))
def test_bad_shapes_are_named(case):
    q_shape, k_shape, v_shape, error, text = SHAPE_ERRORS[case]
    with pytest.raises(error, match=text):
        attention_forward(np.ones(q_shape), np.ones(k_shape), np.ones(v_shape))


ARGUMENT_ERRORS = {
    # name: (kwargs, error type, text)
    "alignment_unknown": ({"causal_alignment": "diagonal"}, ValueError, "causal_alignment"),
    "causal_not_bool": ({"causal": "yes"}, TypeError, "causal"),
    "scale_not_number": ({"softmax_scale": "0.5"}, TypeError, "softmax_scale"),
    "scale_nan": ({"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
    "kv_lens_wrong_length": ({"kv_lens": [3]}, ValueError, r"kv_lens: expected shape \(2,\)"),
    "kv_lens_2d": ({"kv_lens": [[3, 3]]}, ValueError, "kv_lens"),
    "kv_lens_negative": ({"kv_lens": [3, -1]}, ValueError, r"kv_lens: every length"),
    "kv_lens_beyond_lk": ({"kv_lens": [3, 6]}, ValueError, r"\[0, Lk=5\]"),
    "kv_lens_float": ({"kv_lens": [3.0, 2.0]}, TypeError, "kv_lens: expected integers"),
    "bias_not_broadcastable": ({"attn_bias": np.ones((3, 5))}, ValueError, "attn_bias: shape"),
    "bias_bool": ({"attn_bias": np.ones((4, 5), bool)}, TypeError, "attn_bias"),
    "bias_nan": ({"attn_bias": np.full((4, 5), np.nan)}, ValueError, "attn_bias"),
    "dropout_one": ({"dropout_p": 1.0, "rng": np.random.default_rng(0)}, ValueError, "dropout_p"),
    "dropout_negative": ({"dropout_p": -0.1}, ValueError, "dropout_p"),
    "dropout_without_rng": ({"dropout_p": 0.1}, ValueError, "rng"),
    "rng_not_generator": ({"dropout_p": 0.1, "rng": 3}, TypeError, "rng"),
    "mask_and_rng": (
        {"dropout_p": 0.1, "rng": np.random.default_rng(0), "dropout_mask": np.ones((4, 5), bool)},
        ValueError, "not both"),
    "mask_without_p": ({"dropout_mask": np.ones((4, 5), bool)}, ValueError, "dropout_mask"),
    "mask_wrong_shape": (
        {"dropout_p": 0.1, "dropout_mask": np.ones((3, 5), bool)}, ValueError, "dropout_mask"),
}  # fmt: skip


@pytest.mark.parametrize("case", ARGUMENT_ERRORS, ids=list(ARGUMENT_ERRORS))
def test_bad_arguments_are_named(case):
    kwargs, error, text = ARGUMENT_ERRORS[case]
    q, k = np.ones((2, 2, 4, 3)), np.ones((2, 1, 5, 3))
    with pytest.raises(error, match=text):
        attention_forward(q, k, k, **kwargs)


def test_bad_dtypes_and_saved_tensors_are_named():
    q = np.ones((1, 1, 2, 2))
    with pytest.raises(TypeError, match="q: expected a real floating-point"):
        attention_forward(q.astype(complex), q, q)
    with pytest.raises(TypeError, match="v: expected a real"):
        attention_forward(q, q, q.astype(bool))
    out, lse = attention_forward(q, q, q)
    with pytest.raises(ValueError, match=r"lse: expected shape \(1, 1, 2\)"):
        attention_backward(q, q, q, out, lse[..., None], out)
    with pytest.raises(ValueError, match="dout: expected shape"):
        attention_backward(q, q, q, out, lse, out[..., :1])
    with pytest.raises(ValueError, match="block_n"):
        blocked_attention_forward(q, q, q, block_n=0)
    with pytest.raises(ValueError, match="batch"):
        attention_mask(2, 2, batch=0)
