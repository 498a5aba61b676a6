"""``flash_attention_with_kvcache``: decoding against a contiguous or paged KV cache (forward only).

Layers: this API function checks the inputs (kernels/checks.py), appends the new keys/values in
place (torch index_put on the device: no sync), and calls the custom op
``torch.ops.flashref.attention_with_kvcache`` (kernels/library.py), which picks ``num_splits``
and the tiles and launches ``decode_split_kernel`` then ``decode_combine_kernel``
(``launch.launch_decode``; kernels/attention_decode.py has the math). Checks that read tensor
values (``cache_seqlens + Lnew`` within the capacity, block_table entries in range) cost one
device-to-host copy per call; ``check_values=False`` skips them. Under ``torch.compile`` the
op makes them when the graph runs, after the append.
"""

import math

import torch

from . import library  # noqa: F401 -- registers torch.ops.flashref.attention_with_kvcache
from .checks import check_kvcache_call, check_kvcache_values
from .launch import num_splits_heuristic

__all__ = ["flash_attention_with_kvcache", "num_splits_heuristic"]


def _append(caches, news, cache_seqlens, block_table):
    """Write new token t of sequence b at logical position cache_seqlens[b] + t, in place
    (each new tensor (B, Hkv, Lnew, width) into its cache)."""
    batch, _, new_len, _ = news[0].shape
    device = news[0].device
    pos = cache_seqlens.to(torch.int64)[:, None] + torch.arange(new_len, device=device)[None, :]  # (B, Lnew)
    for cache, new in zip(caches, news):
        rows = new.transpose(1, 2)  # (B, Lnew, Hkv, width)
        if block_table is None:
            cache[torch.arange(batch, device=device)[:, None], pos] = rows
        else:
            page_size = cache.shape[1]
            pages = block_table.to(torch.int64).gather(1, pos // page_size)
            cache[pages, pos % page_size] = rows


def flash_attention_with_kvcache(q, k_cache, v_cache, *, k=None, v=None, cache_seqlens, block_table=None,
                                 causal=True, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                                 alibi_slopes=None, sinks=None, num_splits=0, return_lse=False, check_values=True,
                                 v_head_dim=None):
    """Attention of a few new query tokens against a KV cache, forward only (no autograd).

    q: (B, Hq, Lq, D); contiguous caches k_cache (B, Lmax, Hkv, D), v_cache (B, Lmax, Hkv, Dv),
    or paged caches (num_pages, page_size, Hkv, D) and (..., Dv) with ``block_table``
    (B, max_pages) int32 (page_size a multiple of 16); ``cache_seqlens``: (B,) int32, the
    tokens already cached. Dv may differ from D (MLA), both at most 256. ``k, v``:
    (B, Hkv, Lnew, D) and (B, Hkv, Lnew, Dv) are first written into the caches (in place) at
    positions ``cache_seqlens[b] + t``; nothing else of the caches changes. Then sequence b has
    ``L_b = cache_seqlens[b] + Lnew`` keys and query i sits at position ``L_b - Lq + i``
    (bottom-right): ``causal`` lets it see keys ``j <= L_b - Lq + i``; ``window_size``,
    ``softcap``, ``alibi_slopes`` ((Hq,) or (B, Hq) float32), ``sinks`` ((Hq,) float32) as in
    ``flash_attention``. ``num_splits``: split the key range into that many chunks (split-KV,
    merged by the combine kernel); 0 picks it from batch, heads, capacity and the SM count.

    MLA's absorbed decode: ``v_cache=None`` with ``v_head_dim=Dv``: the values are the first Dv
    columns of k_cache (one latent cache, not duplicated: DeepSeek's D = 576 = 512 latent + 64
    rope, ``v_head_dim=512``, Hkv = 1), ``out_i = sum_j softmax(q_i . k_j * scale) k_j[:Dv]``;
    Dv at most 512 and D - Dv at most 256; ``k`` (B, Hkv, Lnew, D) alone is appended (``v``
    must be None). The default scale is 1 / sqrt(D) as always (MLA models pass their own).

    Returns out (B, Hq, Lq, Dv) in q's dtype, and with ``return_lse`` lse (B, Hq, Lq) float32.
    Oracle twin: ``flashref.reference.attention_with_kvcache`` (absorbed: with
    ``v_cache = k_cache[..., :Dv]``).
    """
    new_len, head_dim_v = check_kvcache_call(q, k_cache, v_cache, k, v, cache_seqlens, block_table, causal,
                                             softmax_scale, window_size, softcap, alibi_slopes, sinks, num_splits,
                                             v_head_dim)
    if check_values and not torch.compiler.is_compiling():
        check_kvcache_values(k_cache, cache_seqlens, block_table, new_len)
    if k is not None and new_len:
        absorbed = v_cache is None  # one latent cache: k alone is appended
        _append((k_cache,) if absorbed else (k_cache, v_cache), (k,) if absorbed else (k, v), cache_seqlens,
                block_table)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[3])
    left, right = (int(w) for w in window_size)
    alibi = None if alibi_slopes is None else alibi_slopes.detach().contiguous()
    # Forward only: detached inputs, so the op's outputs never ask for a gradient.
    out, lse = torch.ops.flashref.attention_with_kvcache(
        q.detach(), k_cache.detach(), None if v_cache is None else v_cache.detach(), cache_seqlens, new_len,
        block_table, alibi, None if sinks is None else sinks.detach().contiguous(), causal, scale, left, right,
        float(softcap), int(num_splits), bool(check_values and torch.compiler.is_compiling()), head_dim_v)
    return (out, lse) if return_lse else out
