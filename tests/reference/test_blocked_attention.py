"""The FlashAttention-2 oracle: equal to the closed form for any tiling, inspectable tile by
tile, and with memory that grows with the tile, not with Lq * Lk."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff, random_attention
from flashref.reference import (
    attention_backward,
    attention_forward,
    blocked_attention_backward,
    blocked_attention_forward,
)

TOL = 1e-12

# (block_m, block_n): single elements, non-dividing, larger than the lengths, lopsided.
BLOCKS = [(1, 1), (3, 4), (16, 5), (64, 64), (2, 7)]

SEMANTICS = {
    "plain": {},
    "causal_bottom_right_empty_rows": {"causal": True, "causal_alignment": "bottom_right"},
    "causal_top_left_kv_lens": {"causal": True, "kv_lens": [11, 0]},
    "bias_and_scale": {"attn_bias": "random", "softmax_scale": 1.3},
}


@pytest.mark.parametrize("block_m, block_n", BLOCKS)
@pytest.mark.parametrize("semantics", SEMANTICS, ids=list(SEMANTICS))
def test_blocked_equals_closed_form(semantics, block_m, block_n):
    rng = fresh_rng(semantics)
    q, k, v, dout = random_attention(rng, 2, 4, 2, 13, 11, 5, 3)
    kwargs = dict(SEMANTICS[semantics])
    if kwargs.get("attn_bias") == "random":
        kwargs["attn_bias"] = rng.standard_normal((4, 13, 1))  # broadcasts over keys and batch
    out, lse = attention_forward(q, k, v, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    with np.errstate(all="raise"):
        out_b, lse_b = blocked_attention_forward(q, k, v, block_m=block_m, block_n=block_n, **kwargs)
        grads_b = blocked_attention_backward(
            q, k, v, out, lse, dout, block_m=block_m, block_n=block_n, **kwargs)
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    for name, got, want in zip(("dq", "dk", "dv"), grads_b, grads):
        assert max_abs_diff(got, want) <= TOL, name


def test_blocked_dropout_uses_the_same_mask():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 2, 1, 9, 10, 4)
    keep = rng.random((1, 2, 9, 10)) >= 0.3
    kwargs = {"dropout_p": 0.3, "dropout_mask": keep, "causal": True}
    out, lse = attention_forward(q, k, v, **kwargs)
    out_b, lse_b = blocked_attention_forward(q, k, v, block_m=4, block_n=3, **kwargs)
    grads = attention_backward(q, k, v, out, lse, dout, **kwargs)
    grads_b = blocked_attention_backward(q, k, v, out, lse, dout, block_m=4, block_n=3, **kwargs)
    assert max_abs_diff(out_b, out) <= TOL and max_abs_diff(lse_b, lse) <= TOL
    assert all(max_abs_diff(a, b) <= TOL for a, b in zip(grads_b, grads))


def test_tile_hook_sees_every_unmasked_tile_and_skips_hidden_ones():
    rng = fresh_rng()
    q, k, v, dout = random_attention(rng, 1, 1, 1, 8, 8, 2)
    tiles = []
    out, lse = blocked_attention_forward(
        q, k, v, block_m=4, block_n=4, causal=True, on_tile=tiles.append)
    # causal 8x8 in 4x4 tiles: (0,0), (1,0), (1,1) -- the tile above the diagonal is skipped
    assert [(t.rows.start, t.cols.start) for t in tiles] == [(0, 0), (4, 0), (4, 4)]
    diagonal = tiles[0].values
    assert set(diagonal) == {"scores", "row_max", "rescale", "probs", "row_sum", "acc"}
    assert np.isneginf(diagonal["scores"][0, 0, 0, 1:]).all()  # query 0 sees key 0 only
    # the last tile of a query block holds the final running state: acc / l is the output
    last = tiles[-1].values
    assert max_abs_diff(last["acc"] / last["row_sum"][..., None], out[:, :, 4:8]) <= TOL
    assert max_abs_diff(last["row_max"] + np.log(last["row_sum"]), lse[:, :, 4:8]) <= TOL
    back = []
    blocked_attention_backward(
        q, k, v, out, lse, dout, block_m=4, block_n=4, causal=True, on_tile=back.append)
    assert [(t.rows.start, t.cols.start) for t in back] == [(0, 0), (4, 0), (4, 4)]
    assert back[0].phase == "backward" and set(back[0].values) >= {"probs", "dprobs", "dscores"}


def test_the_blocked_comparison_can_fail():
    """A tiling bug -- forgetting to rescale the accumulator -- is caught by the check."""
    rng = fresh_rng()
    q, k, v, _ = random_attention(rng, 1, 1, 1, 6, 9, 3)
    out, lse = attention_forward(q, k, v)
    tiles = []
    blocked_attention_forward(q, k, v, block_m=6, block_n=3, on_tile=tiles.append)
    # Without the alpha rescale, acc is the plain sum of the per-tile P~ V with mixed maxima.
    unrescaled = sum(t.values["probs"] @ v[:, :, t.cols] for t in tiles)
    wrong = unrescaled / tiles[-1].values["row_sum"][..., None]
    assert max_abs_diff(wrong, out) > 1e-6


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blocked_memory_grows_with_the_tile_not_with_lq_times_lk():
    """At L = 2048 the closed form holds several (L, L) float64 arrays (32 MiB each); the
    blocked form holds (block_m, block_n) tiles plus O(L * D) inputs and outputs."""
    rng = fresh_rng()
    length, dim = 2048, 16
    q, k, v, _ = random_attention(rng, 1, 1, 1, length, length, dim)
    full_matrix = length * length * 8
    peak_blocked = _peak_bytes(
        lambda: blocked_attention_forward(q, k, v, block_m=128, block_n=128, causal=True))
    assert peak_blocked < full_matrix / 8
    peak_closed = _peak_bytes(lambda: attention_forward(q, k, v, causal=True))
    assert peak_closed > full_matrix  # the check can tell the two apart


@pytest.mark.slow
def test_blocked_forward_at_32k_one_head(capsys):
    """The oracle check the closed form cannot hold comfortably: Lq = Lk = 32768, one head.

    A (32768, 32768) float64 score matrix is 8 GiB, and the closed form keeps several.
    The blocked forward is checked on sampled rows against a direct computation of those
    rows (each row is a (1, Lk) problem), and its peak traced memory is recorded.
    """
    rng = fresh_rng("32k")
    length, dim = 32768, 64
    q, k, v, _ = random_attention(rng, 1, 1, 1, length, length, dim)
    tracemalloc.start()
    start = time.perf_counter()
    out, lse = blocked_attention_forward(q, k, v, block_m=1024, block_n=1024, causal=True)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows = np.sort(rng.choice(length, size=64, replace=False))
    for i in rows:
        # Row i of causal attention is the non-causal attention of one query over keys 0..i.
        o_i, l_i = attention_forward(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1])
        assert max_abs_diff(out[:, :, i : i + 1], o_i) <= 1e-12
        assert max_abs_diff(lse[:, :, i : i + 1], l_i) <= 1e-12
    with capsys.disabled():
        print(f"\n32k blocked forward: {seconds:.1f} s, peak traced memory {peak / 2**20:.1f} MiB "
              f"(one (L, L) float64 matrix: {length * length * 8 / 2**30:.0f} GiB)")
    assert peak < 2**30


@pytest.mark.slow
def test_blocked_backward_at_32k_one_head(capsys):
    """The backward at Lq = Lk = 32768, one head, causal: dq is checked on sampled rows (row
    i of dq depends only on query i, so the closed form on one query and keys 0..i gives
    it), dk and dv on sampled key columns from their defining sums over the query rows,
    dv_j = sum_i P_ij dO_i and dk_j = scale * sum_i P_ij (dO_i . v_j - D_i) q_i, with P
    recomputed from the forward's lse (a column of S is only L dot products)."""
    rng = fresh_rng("32k backward")
    length, dim = 32768, 64
    q, k, v, dout = random_attention(rng, 1, 1, 1, length, length, dim)
    out, lse = blocked_attention_forward(q, k, v, block_m=1024, block_n=1024, causal=True)
    tracemalloc.start()
    start = time.perf_counter()
    dq, dk, dv = blocked_attention_backward(
        q, k, v, out, lse, dout, block_m=1024, block_n=1024, causal=True)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    scale = dim**-0.5
    for i in np.sort(rng.choice(length, size=32, replace=False)):
        sl = slice(i, i + 1)
        o_i, l_i = attention_forward(q[:, :, sl], k[:, :, : i + 1], v[:, :, : i + 1])
        dq_i, _, _ = attention_backward(
            q[:, :, sl], k[:, :, : i + 1], v[:, :, : i + 1], o_i, l_i, dout[:, :, sl])
        assert max_abs_diff(dq[:, :, sl], dq_i) <= 1e-12
    delta = (dout * out).sum(axis=-1)[0, 0]  # (L,)
    for j in np.sort(rng.choice(length, size=32, replace=False)):
        rows = slice(j, None)  # causal: only queries i >= j see key j
        probs = np.exp(scale * q[0, 0, rows] @ k[0, 0, j] - lse[0, 0, rows])  # (L - j,)
        dscores = probs * (dout[0, 0, rows] @ v[0, 0, j] - delta[rows])
        assert max_abs_diff(dv[0, 0, j], probs @ dout[0, 0, rows]) <= 1e-10
        assert max_abs_diff(dk[0, 0, j], scale * dscores @ q[0, 0, rows]) <= 1e-10
    with capsys.disabled():
        print(f"\n32k blocked backward: {seconds:.1f} s, peak traced memory {peak / 2**20:.1f} MiB")
    assert peak < 2**30
