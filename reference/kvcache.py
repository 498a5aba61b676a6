r"""Attention against a KV cache (decoding): the oracle twin of ``flash_attention_with_kvcache``.

Layouts (the kernels' and FlashAttention's ``flash_attn_with_kvcache``):

    q:              (B, Hq, Lq, D)          Lq: the new tokens (1 when decoding, a few when
                                            speculating)
    contiguous:     k_cache (B, Lmax, Hkv, D), v_cache (B, Lmax, Hkv, Dv)  (Dv may differ: MLA)
    paged:          k_cache, v_cache (num_pages, page_size, Hkv, D or Dv) and
                    block_table (B, max_pages) ints: logical position t of sequence b lives
                    in page ``block_table[b, t // page_size]`` at row ``t % page_size``
    cache_seqlens:  (B,) ints, the tokens already in the cache
    k, v (optional):(B, Hkv, Lnew, D / Dv) new keys/values, appended at positions
                    ``cache_seqlens[b] .. cache_seqlens[b] + Lnew - 1`` before attending

After the append, sequence b has ``L_b = cache_seqlens[b] + Lnew`` keys (``Lnew = 0``
without k, v) and the queries are its last Lq tokens: dense attention over the gathered
keys with ``kv_lens = L`` and ``causal_alignment="bottom_right"`` (query i sits at
position ``L_b - Lq + i``), so ``causal=True`` lets query i see keys ``j <= L_b - Lq + i``.
Every other keyword (window, softcap, ALiBi, sinks) means what it means in
`flashref.reference.attention_forward`.
"""

from __future__ import annotations

import numpy as np

from .attention import attention_forward
from .attention_inputs import as_float64


def _ints(name, x, shape_text):
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array {shape_text}, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_kvcache_inputs(q, k_cache, v_cache, k, v, cache_seqlens, block_table):
    """Check the layouts; return ``(batch, capacity, new_len, cache_seqlens int64,
    block_table int64 or None)``. capacity: the most tokens one sequence's cache holds."""
    if q.ndim != 4:
        raise ValueError(f"q must be (B, Hq, Lq, D), got shape {q.shape}")
    batch, heads_q, _, head_dim = q.shape
    if k_cache.ndim != 4 or v_cache.ndim != 4 or k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache and v_cache must be 4-d and agree but for the head dim, got {k_cache.shape} "
                         f"and {v_cache.shape}")
    heads_kv = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache's head dim must be q's {head_dim}, got {k_cache.shape[3]}")
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of the cache's heads ({heads_kv})")
    seqlens = _ints("cache_seqlens", cache_seqlens, f"({batch},)")
    if seqlens.shape != (batch,):
        raise ValueError(f"cache_seqlens must have shape ({batch},), got {seqlens.shape}")
    if (k is None) != (v is None):
        raise ValueError("give both k and v (the new tokens) or neither")
    new_len = 0
    if k is not None:
        if (k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3] or k.shape[:2] != (batch, heads_kv)
                or k.shape[3] != head_dim or v.shape[3] != v_cache.shape[3]):
            raise ValueError(f"k and v must have shapes ({batch}, {heads_kv}, Lnew, {head_dim}) and ({batch}, "
                             f"{heads_kv}, Lnew, {v_cache.shape[3]}), got {k.shape} and {v.shape}")
        new_len = k.shape[2]
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"a contiguous k_cache must be (B={batch}, Lmax, Hkv, D), got {k_cache.shape}")
        capacity, table = k_cache.shape[1], None
    else:
        table = _ints("block_table", block_table, f"({batch}, max_pages)")
        if table.ndim != 2 or table.shape[0] != batch:
            raise ValueError(f"block_table must have shape ({batch}, max_pages), got {table.shape}")
        page_size = k_cache.shape[1]
        capacity = table.shape[1] * page_size
        used = -(-(seqlens + new_len) // page_size) if page_size else np.zeros(batch, np.int64)
        for b in range(batch):
            pages = table[b, :used[b]]
            if ((pages < 0) | (pages >= k_cache.shape[0])).any():
                raise ValueError(f"block_table[{b}] must hold page indices in [0, {k_cache.shape[0]}), "
                                 f"got {pages.tolist()}")
    if (seqlens < 0).any() or (seqlens + new_len > capacity).any():
        raise ValueError(f"cache_seqlens + Lnew ({new_len}) must lie in [0, {capacity}] (the cache's "
                         f"capacity), got cache_seqlens {seqlens.tolist()}")
    return batch, capacity, new_len, seqlens, table


def gather_kvcache(cache, lengths, block_table):
    """One cache's first ``lengths[b]`` tokens per sequence, dense ``(B, Hkv, capacity, D)``
    (zeros past ``lengths[b]``). cache: contiguous (B, Lmax, Hkv, D) or paged
    (num_pages, page_size, Hkv, D) with block_table (B, max_pages)."""
    if block_table is None:
        dense = cache.copy()
    else:
        page_size = cache.shape[1]
        batch, max_pages = block_table.shape
        dense = np.zeros((batch, max_pages * page_size) + cache.shape[2:], dtype=cache.dtype)
        for b in range(batch):
            for p in range(-(-int(lengths[b]) // page_size)):
                dense[b, p * page_size:(p + 1) * page_size] = cache[block_table[b, p]]
    for b in range(dense.shape[0]):
        dense[b, int(lengths[b]):] = 0.0
    return dense.transpose(0, 2, 1, 3)


def append_to_kvcache(k_cache, v_cache, k, v, cache_seqlens, block_table=None):
    """The caches after the append, as new arrays (the inputs are not modified): new token t
    of sequence b goes to logical position ``cache_seqlens[b] + t`` (its page given by
    ``block_table``). k, v: (B, Hkv, Lnew, D) and (B, Hkv, Lnew, Dv)."""
    k_cache, v_cache = np.array(k_cache, copy=True), np.array(v_cache, copy=True)
    seqlens = np.asarray(cache_seqlens, dtype=np.int64)
    for cache, new in ((k_cache, np.asarray(k)), (v_cache, np.asarray(v))):
        for b in range(new.shape[0]):
            for t in range(new.shape[2]):
                pos = int(seqlens[b]) + t
                if block_table is None:
                    cache[b, pos] = new[b, :, t]
                else:
                    page_size = cache.shape[1]
                    cache[int(block_table[b][pos // page_size]), pos % page_size] = new[b, :, t]
    return k_cache, v_cache


def attention_with_kvcache(q, k_cache, v_cache, *, k=None, v=None, cache_seqlens, block_table=None,
                           causal=True, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                           alibi_slopes=None, sinks=None, return_lse=False):
    """Attention of q against the cache after appending k, v; float64, nothing modified.

    Returns out (B, Hq, Lq, Dv), and with ``return_lse`` also lse (B, Hq, Lq). The appended
    caches themselves: `append_to_kvcache`. See the module docstring for the layouts.
    """
    q = as_float64("q", q)
    k_cache, v_cache = as_float64("k_cache", k_cache), as_float64("v_cache", v_cache)
    if k is not None:
        k = as_float64("k", k)
    if v is not None:
        v = as_float64("v", v)
    batch, _, new_len, seqlens, table = check_kvcache_inputs(q, k_cache, v_cache, k, v, cache_seqlens,
                                                             block_table)
    if k is not None:
        k_cache, v_cache = append_to_kvcache(k_cache, v_cache, k, v, seqlens, table)
    lengths = seqlens + new_len
    k_dense = gather_kvcache(k_cache, lengths, table)
    v_dense = gather_kvcache(v_cache, lengths, table)
    out, lse = attention_forward(q, k_dense, v_dense, causal=causal, causal_alignment="bottom_right",
                                 softmax_scale=softmax_scale, kv_lens=lengths, window_size=window_size,
                                 softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks)
    return (out, lse) if return_lse else out
