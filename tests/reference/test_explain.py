"""explain_attention: the audit trace holds the oracle's numbers and prints them legibly.

Includes the seed article's worked example (section 4.1.1), whose printed weights and
output are wrong; docs/seed_worked_example.md explains how.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff
from flashref.reference import attention_forward, explain_attention

# Section 4.1.1 of the seed article: one head, d_k = 3, V = Q.
ARTICLE_Q = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=float)
ARTICLE_K = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1]], dtype=float)
ARTICLE_PRINTED_WEIGHTS = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]])
ARTICLE_PRINTED_OUTPUT = np.array([[0.5, 0, 0.5], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _softmax_by_hand(scores_row):
    e = [math.exp(s) for s in scores_row]
    return [x / sum(e) for x in e]


def test_seed_worked_example_numbers():
    trace = explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q)
    assert np.array_equal(trace["scores"], [[2, 1, 2], [1, 1, 0], [2, 1, 1]])
    r = 1 / math.sqrt(3)
    # Written independently of the oracle, with math.exp on each row of QK^T / sqrt(3).
    expected_weights = [_softmax_by_hand([2 * r, r, 2 * r]), _softmax_by_hand([r, r, 0.0]),
                        _softmax_by_hand([2 * r, r, r])]  # fmt: skip
    assert max_abs_diff(trace["weights"], expected_weights) <= 1e-15
    assert max_abs_diff(trace["out"], np.array(expected_weights) @ ARTICLE_Q) <= 1e-15
    # Rounded values quoted in docs/seed_worked_example.md.
    assert np.allclose(trace["weights"][0], [0.390414, 0.219172, 0.390414], atol=5e-7)
    assert np.allclose(trace["out"], [[0.780828, 0.609586, 0.390414],
                                      [0.609586, 0.609586, 0.390414],
                                      [0.735542, 0.528917, 0.471083]], atol=5e-7)  # fmt: skip


def test_seed_article_printed_numbers_are_wrong():
    """Both printed matrices fail: the weights are not the softmax of QK^T/sqrt(3), and the
    printed output is not even the printed weights times V."""
    trace = explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q)
    assert max_abs_diff(trace["weights"], ARTICLE_PRINTED_WEIGHTS) > 0.1
    assert max_abs_diff(trace["out"], ARTICLE_PRINTED_OUTPUT) > 0.1
    assert max_abs_diff(ARTICLE_PRINTED_WEIGHTS @ ARTICLE_Q, ARTICLE_PRINTED_OUTPUT) >= 0.5


def test_format_labels_every_step_at_fixed_precision():
    text = explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q, causal=True).format(precision=3)
    for label in ("Step 1. QK^T", "scaled scores", "mask", "masked scores",
                  "softmax weights", "output O = P V"):  # fmt: skip
        assert label in text
    assert "row 0: [  1.000   0.000   0.000]  sum = 1.000" in text
    assert "   -inf" in text  # hidden keys print as -inf in the masked scores
    assert str(explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q)).count("Step ") == 6


def test_multi_head_trace_matches_the_oracle_per_head_and_after_projection():
    rng = fresh_rng()
    lq, lk, d_model, heads, d_head = 4, 5, 6, 2, 3
    x_q, x_kv = rng.standard_normal((lq, d_model)), rng.standard_normal((lk, d_model))
    w_q, w_k, w_v = (rng.standard_normal((d_model, heads * d_head)) for _ in range(3))
    w_o = rng.standard_normal((heads * d_head, d_model))
    trace = explain_attention(x_q, x_kv, x_kv, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o,
                              num_heads=heads, causal=True, causal_alignment="bottom_right")
    # The same computation through the 4-D oracle: (Lq, H*Dh) -> (1, H, Lq, Dh).
    split = lambda x: x.reshape(x.shape[0], heads, d_head).transpose(1, 0, 2)[None]  # noqa: E731
    out, _ = attention_forward(split(x_q @ w_q), split(x_kv @ w_k), split(x_kv @ w_v),
                               causal=True, causal_alignment="bottom_right")
    for h in range(heads):
        assert max_abs_diff(trace[f"head{h}.out"], out[0, h]) <= 1e-12
    concat = out[0].transpose(1, 0, 2).reshape(lq, heads * d_head)
    assert max_abs_diff(trace["concat"], concat) <= 1e-12
    assert max_abs_diff(trace["output"], concat @ w_o) <= 1e-12
    assert trace.keys()[-2:] == ["concat", "output"] and "head 1: QK^T" in trace.format()


def test_empty_row_and_padding_in_the_trace():
    trace = explain_attention(np.ones((3, 2)), np.ones((2, 2)), np.ones((2, 2)),
                              causal=True, causal_alignment="bottom_right", kv_len=1)
    # bottom_right aligns to the sequence's own length (1): query i sits at i + 1 - 3.
    assert np.array_equal(trace["mask"], [[0, 0], [0, 0], [1, 0]])
    assert np.all(trace["weights"][:2] == 0) and np.all(trace["out"][:2] == 0)
    assert trace.to_dict()["masked_scores"][0] == [-math.inf, -math.inf]


VARIANT_STEPS = {
    # kwargs -> the step keys the variant adds (each a labelled step of its own)
    "softcap": ({"softcap": 0.7}, ["softcapped_scores"]),
    "alibi": ({"alibi_slopes": [0.25]}, ["alibi_bias", "alibi_scores"]),
    "sinks": ({"sinks": [0.3]}, ["sink_weights"]),
    "dropout": ({"dropout_p": 0.5, "dropout_seed": 11}, ["dropout_keep", "dropped_weights"]),
    "window": ({"window_size": (1, 0)}, []),  # shown in the mask
}


@pytest.mark.parametrize("case", VARIANT_STEPS, ids=list(VARIANT_STEPS))
def test_each_variant_is_a_labelled_step(case):
    kwargs, added = VARIANT_STEPS[case]
    plain = explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q)
    trace = explain_attention(ARTICLE_Q, ARTICLE_K, ARTICLE_Q, **kwargs)
    assert [key for key in trace.keys() if key not in plain.keys()] == added
    out, _ = attention_forward(ARTICLE_Q[None, None], ARTICLE_K[None, None], ARTICLE_Q[None, None],
                               **{name: np.asarray(x) if isinstance(x, list) else x
                                  for name, x in kwargs.items()})  # fmt: skip
    assert max_abs_diff(trace["out"], out[0, 0]) <= 1e-12
    if case == "window":
        assert "window (left, right) = (1, 0)" in trace.format()
        assert np.array_equal(trace["mask"], [[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    if case == "sinks":
        assert max_abs_diff(trace["weights"].sum(axis=1) + trace["sink_weights"][:, 0], np.ones(3)) <= 1e-15


def test_softcap_comes_before_the_bias_and_alibi_uses_the_alignment_shift():
    bias = np.arange(9.0).reshape(3, 3)
    trace = explain_attention(ARTICLE_Q, ARTICLE_K[:2], ARTICLE_Q[:2], softcap=0.5, attn_bias=bias[:, :2],
                              alibi_slopes=[1.0], causal_alignment="bottom_right")  # fmt: skip
    capped = 0.5 * np.tanh(trace["scaled_scores"] / 0.5)
    assert max_abs_diff(trace["softcapped_scores"], capped + bias[:, :2]) <= 1e-15
    # bottom_right, Lk - Lq = -1: query i sits at key position i - 1.
    assert np.array_equal(trace["alibi_bias"], [[-1, -2], [0, -1], [-1, 0]])


def test_multi_head_variant_trace_matches_the_oracle():
    rng = fresh_rng()
    lq, lk, d_model, heads, d_head = 4, 6, 6, 3, 2
    x_q, x_kv = rng.standard_normal((lq, d_model)), rng.standard_normal((lk, d_model))
    w_q, w_k, w_v = (rng.standard_normal((d_model, heads * d_head)) for _ in range(3))
    w_o = rng.standard_normal((heads * d_head, d_model))
    kwargs = dict(causal=True, causal_alignment="bottom_right", window_size=(2, -1), softcap=3.0,
                  alibi_slopes=rng.uniform(0.1, 1.0, heads), sinks=rng.standard_normal(heads),
                  dropout_p=0.3, dropout_seed=int(rng.integers(2**63)))  # fmt: skip
    trace = explain_attention(x_q, x_kv, x_kv, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o, num_heads=heads,
                              kv_len=5, **kwargs)  # fmt: skip
    split = lambda x: x.reshape(x.shape[0], heads, d_head).transpose(1, 0, 2)[None]  # noqa: E731
    out, _, keep = attention_forward(split(x_q @ w_q), split(x_kv @ w_k), split(x_kv @ w_v),
                                     kv_lens=[5], return_dropout_mask=True, **kwargs)  # fmt: skip
    for h in range(heads):
        assert max_abs_diff(trace[f"head{h}.out"], out[0, h]) <= 1e-12
        assert np.array_equal(trace[f"head{h}.dropout_keep"], keep[0, h])  # counters use head h


BAD = {
    "batched_q": ({"q": np.ones((1, 3, 2))}, "q: expected a"),
    "some_weights": ({"w_q": np.eye(2)}, "give all four"),
    "heads_without_weights": ({"num_heads": 2}, "num_heads"),
    "heads_do_not_split": (
        {"w_q": np.ones((2, 3)), "w_k": np.ones((2, 3)), "w_v": np.ones((2, 3)),
         "w_o": np.ones((3, 2)), "num_heads": 2}, "w_q: 3 columns"),
    "w_o_rows": (
        {"w_q": np.ones((2, 2)), "w_k": np.ones((2, 2)), "w_v": np.ones((2, 2)),
         "w_o": np.ones((3, 2))}, "w_o: expected shape"),
    "slopes_per_head": ({"alibi_slopes": np.ones(2)}, "alibi_slopes"),
    "sinks_per_head": ({"sinks": np.ones(3)}, "sinks"),
    "window": ({"window_size": (-3, 0)}, "window_size"),
    "dropout_without_seed": ({"dropout_p": 0.2}, "dropout_seed"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_explain_arguments_are_named(case):
    overrides, text = BAD[case]
    args = {"q": np.ones((3, 2)), "k": np.ones((3, 2)), "v": np.ones((3, 2)), **overrides}
    with pytest.raises(ValueError, match=text):
        explain_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
