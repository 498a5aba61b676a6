"""The varlen and KV-cache oracles against independent formulations: one packed sequence with a
block-diagonal bias (varlen), and per-sequence concatenation of cache and new tokens (kvcache)."""

from __future__ import annotations

import numpy as np
import pytest

from attention_cases import fresh_rng, max_abs_diff
from flashref.reference import (
    append_to_kvcache,
    attention_backward,
    attention_forward,
    attention_varlen_backward,
    attention_varlen_forward,
    attention_with_kvcache,
)

TOL = 1e-12


def _block_diagonal_bias(lens_q, lens_k, causal, alignment, window):
    """0/-inf (total_q, total_k): query i of sequence b sees key j of sequence b only, with the
    per-sequence alignment shift (0, or Lk_b - Lq_b for bottom_right)."""
    total_q, total_k = sum(lens_q), sum(lens_k)
    bias = np.full((total_q, total_k), -np.inf)
    oq = ok = 0
    for lq, lk in zip(lens_q, lens_k):
        shift = lk - lq if alignment == "bottom_right" else 0
        i = np.arange(lq)[:, None] + shift
        j = np.arange(lk)[None, :]
        vis = np.ones((lq, lk), bool)
        if causal:
            vis &= j <= i
        if window[0] >= 0:
            vis &= j >= i - window[0]
        if window[1] >= 0:
            vis &= j <= i + window[1]
        bias[oq:oq + lq, ok:ok + lk] = np.where(vis, 0.0, -np.inf)
        oq, ok = oq + lq, ok + lk
    return bias


@pytest.mark.parametrize("causal,alignment,window", [
    (False, "top_left", (-1, -1)), (True, "top_left", (-1, -1)), (True, "bottom_right", (-1, -1)),
    (False, "bottom_right", (2, 1)),
])
def test_varlen_oracle_is_one_block_diagonal_attention(causal, alignment, window):
    rng = fresh_rng("varlen-oracle")
    lens_q, lens_k = [3, 0, 5, 1, 4], [6, 2, 0, 1, 9]  # empty sequences on both sides
    hq, hkv, d = 4, 2, 8
    tq, tk = sum(lens_q), sum(lens_k)
    q, k, v = rng.standard_normal((tq, hq, d)), rng.standard_normal((tk, hkv, d)), rng.standard_normal((tk, hkv, d))
    dout = rng.standard_normal((tq, hq, d))
    sinks = rng.standard_normal(hq)
    cu_q, cu_k = np.r_[0, np.cumsum(lens_q)].astype(np.int32), np.r_[0, np.cumsum(lens_k)].astype(np.int32)
    kw = dict(causal=causal, causal_alignment=alignment, window_size=window, softcap=3.0, sinks=sinks)
    out, lse = attention_varlen_forward(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), **kw)
    grads = attention_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, max(lens_q), max(lens_k), **kw)

    dense = lambda x: x.transpose(1, 0, 2)[None]  # noqa: E731
    bias = _block_diagonal_bias(lens_q, lens_k, causal, alignment, window)
    ref_out, ref_lse = attention_forward(dense(q), dense(k), dense(v), attn_bias=bias, softcap=3.0, sinks=sinks)
    ref_grads = attention_backward(dense(q), dense(k), dense(v), ref_out, ref_lse, dense(dout), attn_bias=bias,
                                   softcap=3.0, sinks=sinks)
    assert max_abs_diff(out, ref_out[0].transpose(1, 0, 2)) <= TOL
    assert max_abs_diff(lse, ref_lse[0]) <= TOL
    for got, want in zip(grads[:3], ref_grads[:3]):
        assert max_abs_diff(got, want[0].transpose(1, 0, 2)) <= TOL
    assert max_abs_diff(grads[3], ref_grads[3]) <= TOL


@pytest.mark.parametrize("cu_q,message", [
    ([1, 3, 5], "must start at 0"),
    ([0, 4, 3], "non-decreasing"),
    ([0, 2, 4], "last entry"),
    ([0.0, 2.0, 5.0], "integer"),
    ([0, 5, 5], "exceeds max_seqlen"),
])
def test_varlen_oracle_rejects_bad_cu_seqlens(cu_q, message):
    q = np.zeros((5, 2, 4))
    k = np.zeros((4, 2, 4))
    with pytest.raises((ValueError, TypeError), match=message):
        attention_varlen_forward(q, k, k, np.array(cu_q), np.array([0, 2, 4]), 4, 4)


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_oracle_is_attention_over_cache_then_new_tokens(paged):
    rng = fresh_rng("kvcache-oracle")
    b, hq, hkv, d, lq, lnew, page = 3, 4, 2, 8, 2, 2, 4
    seqlens = np.array([0, 5, 9], np.int32)  # empty, odd, and filling the capacity with lnew
    cap = 11 if not paged else 12
    q = rng.standard_normal((b, hq, lq, d))
    knew, vnew = rng.standard_normal((b, hkv, lnew, d)), rng.standard_normal((b, hkv, lnew, d))
    logical_k = rng.standard_normal((b, cap, hkv, d))
    logical_v = rng.standard_normal((b, cap, hkv, d))
    if paged:
        pages = cap // page
        table = rng.permutation(b * pages + 2)[:b * pages].reshape(b, pages).astype(np.int32)
        k_cache = rng.standard_normal((b * pages + 2, page, hkv, d))
        v_cache = rng.standard_normal((b * pages + 2, page, hkv, d))
        for bi in range(b):
            for p in range(pages):
                k_cache[table[bi, p]] = logical_k[bi, p * page:(p + 1) * page]
                v_cache[table[bi, p]] = logical_v[bi, p * page:(p + 1) * page]
    else:
        table, k_cache, v_cache = None, logical_k, logical_v
    alibi = rng.uniform(0.1, 1.0, hq)
    out, lse = attention_with_kvcache(q, k_cache, v_cache, k=knew, v=vnew, cache_seqlens=seqlens,
                                      block_table=table, alibi_slopes=alibi, window_size=(3, -1),
                                      return_lse=True)
    for bi in range(b):
        s = seqlens[bi]
        keys = np.concatenate([logical_k[bi, :s], knew[bi].transpose(1, 0, 2)])[None].transpose(0, 2, 1, 3)
        vals = np.concatenate([logical_v[bi, :s], vnew[bi].transpose(1, 0, 2)])[None].transpose(0, 2, 1, 3)
        ref, ref_lse = attention_forward(q[bi:bi + 1], keys, vals, causal=True, causal_alignment="bottom_right",
                                         alibi_slopes=alibi, window_size=(3, -1))
        assert max_abs_diff(out[bi:bi + 1], ref) <= TOL and max_abs_diff(lse[bi:bi + 1], ref_lse) <= TOL
    new_k, _ = append_to_kvcache(k_cache, v_cache, knew, vnew, seqlens, table)
    changed = new_k != k_cache
    assert changed.sum() <= b * lnew * hkv * d


def test_kvcache_oracle_rejects_overflow_and_bad_pages():
    q = np.zeros((1, 2, 1, 4))
    cache = np.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="capacity"):
        attention_with_kvcache(q, cache, cache, k=np.zeros((1, 2, 2, 4)), v=np.zeros((1, 2, 2, 4)),
                               cache_seqlens=np.array([7]))
    with pytest.raises(ValueError, match="page indices"):
        attention_with_kvcache(q, cache, cache, cache_seqlens=np.array([3]), block_table=np.array([[1]]))
    with pytest.raises(TypeError, match="cache_seqlens"):
        attention_with_kvcache(q, cache, cache, cache_seqlens=np.array([3.0]))
