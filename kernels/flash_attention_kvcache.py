"""``flash_attention_with_kvcache``: decoding against a contiguous or paged KV cache (forward only).

The host checks the inputs, appends the new keys/values in place (torch index_put on the
device: no sync), picks ``num_splits`` and the tiles, and launches ``decode_split_kernel`` then
``decode_combine_kernel`` (kernels/attention_decode.py has the math). Checks that read tensor values
(``cache_seqlens + Lnew`` within the capacity, block_table entries in range) cost one
device-to-host copy per call; ``check_values=False`` skips them.
"""

import math

import torch
import triton

from .configs import MAX_HEAD_DIM, interpreter_config, padded_head_dim
from .attention_decode import decode_combine_kernel, decode_split_kernel, decode_tile
from .attention_forward import LOG2E
from .checks import check_attention_tensors, check_variants, is_int
from .launch import FLOAT32_DOT_PRECISION, INTERPRETED, new_buffer

MAX_SPLITS = 64


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs one program at a time: splitting only adds work


def num_splits_heuristic(batch: int, heads_kv: int, m_blocks: int, capacity: int, block_n: int, sm_count: int) -> int:
    """Splits of the key range (FlashAttention's rule of thumb): none when the (batch, kv head,
    query tile) programs already fill 80% of the SMs; otherwise enough to fill them, at most one
    per key block of the capacity (a split needs work), and at most ``MAX_SPLITS``."""
    programs = batch * heads_kv * m_blocks
    if programs == 0 or programs >= 0.8 * sm_count:
        return 1
    key_blocks = max(1, triton.cdiv(capacity, block_n))
    return max(1, min(triton.cdiv(sm_count, programs), key_blocks, MAX_SPLITS))


def _check(q, k_cache, v_cache, k, v, cache_seqlens, block_table, num_splits):
    check_attention_tensors({"q": q, "k_cache": k_cache, "v_cache": v_cache},
                            "(q: (B, Hq, Lq, D); a cache: (B, Lmax, Hkv, D) or (pages, page_size, Hkv, D))")
    batch, heads_q, seqlen_q, head_dim = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have one shape, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    heads_kv = k_cache.shape[2]
    if not 1 <= head_dim <= MAX_HEAD_DIM or k_cache.shape[3] != head_dim:
        raise ValueError(f"head dims must agree and lie in [1, {MAX_HEAD_DIM}], got q {head_dim}, cache {k_cache.shape[3]}")
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of the cache's heads ({heads_kv})")
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must be an int32 torch.Tensor ({batch},), got "
                        f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)}")
    if tuple(cache_seqlens.shape) != (batch,) or cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens must have shape ({batch},) on {q.device}, got {tuple(cache_seqlens.shape)} "
                         f"on {cache_seqlens.device}")
    if (k is None) != (v is None):
        raise ValueError("give both k and v (the new tokens) or neither")
    new_len = 0
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dtype != q.dtype or t.device != q.device:
                raise TypeError(f"{name} must be a torch.Tensor with q's dtype and device")
            if tuple(t.shape[:2]) != (batch, heads_kv) or t.dim() != 4 or t.shape[3] != head_dim:
                raise ValueError(f"{name} must have shape ({batch}, {heads_kv}, Lnew, {head_dim}), got {tuple(t.shape)}")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        new_len = k.shape[2]
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"a contiguous k_cache must be (B={batch}, Lmax, Hkv, D), got {tuple(k_cache.shape)}")
        capacity = k_cache.shape[1]
    else:
        if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32:
            raise TypeError(f"block_table must be an int32 torch.Tensor (B, max_pages), got "
                            f"{getattr(block_table, 'dtype', type(block_table).__name__)}")
        if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.device != q.device:
            raise ValueError(f"block_table must have shape ({batch}, max_pages) on {q.device}, got "
                             f"{tuple(block_table.shape)}")
        page_size = k_cache.shape[1]
        if page_size == 0 or page_size % 16:
            raise ValueError(f"page_size (k_cache.shape[1]) must be a positive multiple of 16, got {page_size}")
        capacity = block_table.shape[1] * page_size
    if not is_int(num_splits) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0 = heuristic), got {num_splits!r}")
    return capacity, new_len


def _check_values(k_cache, cache_seqlens, block_table, capacity, new_len):
    """The value checks: one transfer of a few reductions."""
    if cache_seqlens.numel() == 0:
        return
    vals = [cache_seqlens.min().to(torch.int64), cache_seqlens.max().to(torch.int64)]
    if block_table is not None:
        page_size = k_cache.shape[1]
        used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] * page_size < (
            cache_seqlens[:, None] + new_len)
        bad = used & ((block_table < 0) | (block_table >= k_cache.shape[0]))
        vals.append(bad.any().to(torch.int64))
    got = torch.stack(vals).tolist()
    if got[0] < 0 or got[1] + new_len > capacity:
        raise ValueError(f"cache_seqlens + Lnew ({new_len}) must lie in [0, {capacity}] (the cache's capacity), "
                         f"got cache_seqlens {cache_seqlens.tolist()}")
    if block_table is not None and got[2]:
        raise ValueError(f"block_table must hold page indices in [0, {k_cache.shape[0]}) for every page in use")


def _append(k_cache, v_cache, k, v, cache_seqlens, block_table):
    """Write new token t of sequence b at logical position cache_seqlens[b] + t, in place."""
    batch, _, new_len, _ = k.shape
    pos = cache_seqlens.to(torch.int64)[:, None] + torch.arange(new_len, device=k.device)[None, :]  # (B, Lnew)
    for cache, new in ((k_cache, k), (v_cache, v)):
        rows = new.transpose(1, 2)  # (B, Lnew, Hkv, D)
        if block_table is None:
            cache[torch.arange(batch, device=k.device)[:, None], pos] = rows
        else:
            page_size = cache.shape[1]
            pages = block_table.to(torch.int64).gather(1, pos // page_size)
            cache[pages, pos % page_size] = rows


def flash_attention_with_kvcache(q, k_cache, v_cache, *, k=None, v=None, cache_seqlens, block_table=None,
                                 causal=True, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                                 alibi_slopes=None, sinks=None, num_splits=0, return_lse=False, check_values=True):
    """Attention of a few new query tokens against a KV cache, forward only (no autograd).

    q: (B, Hq, Lq, D); contiguous caches k_cache, v_cache (B, Lmax, Hkv, D), or paged caches
    (num_pages, page_size, Hkv, D) with ``block_table`` (B, max_pages) int32 (page_size a
    multiple of 16); ``cache_seqlens``: (B,) int32, the tokens already cached. ``k, v``:
    (B, Hkv, Lnew, D) are first written into the caches (in place) at positions
    ``cache_seqlens[b] + t``; nothing else of the caches changes. Then sequence b has
    ``L_b = cache_seqlens[b] + Lnew`` keys and query i sits at position ``L_b - Lq + i``
    (bottom-right): ``causal`` lets it see keys ``j <= L_b - Lq + i``; ``window_size``,
    ``softcap``, ``alibi_slopes`` ((Hq,) or (B, Hq) float32), ``sinks`` ((Hq,) float32) as in
    ``flash_attention``. ``num_splits``: split the key range into that many chunks (split-KV,
    merged by the combine kernel); 0 picks it from batch, heads, capacity and the SM count.

    Returns out (B, Hq, Lq, D) in q's dtype, and with ``return_lse`` lse (B, Hq, Lq) float32.
    Oracle twin: ``flashref.reference.attention_with_kvcache``.
    """
    capacity, new_len = _check(q, k_cache, v_cache, k, v, cache_seqlens, block_table, num_splits)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
                                      or not (math.isfinite(softmax_scale) and softmax_scale > 0)):
        raise ValueError(f"softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    check_variants(q, window_size, softcap, alibi_slopes, sinks, 0.0, None)
    if check_values:
        _check_values(k_cache, cache_seqlens, block_table, capacity, new_len)
    if k is not None and new_len:
        _append(k_cache, v_cache, k, v, cache_seqlens, block_table)

    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv = k_cache.shape[2]
    group = heads_q // heads_kv
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    out = new_buffer(q)
    lse = new_buffer(q, shape=(batch, heads_q, seqlen_q), dtype=torch.float32)
    if out.numel() == 0:
        return (out, lse) if return_lse else out
    seqlens = (cache_seqlens.to(torch.int32) + new_len).contiguous()

    left, right = (int(w) for w in window_size)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    softcap = float(softcap)
    qk_scale = (softcap if softcap > 0 else scale) * LOG2E
    softcap_in = scale / softcap if softcap > 0 else 0.0

    block_d = padded_head_dim(head_dim)
    rows = seqlen_q * group
    if INTERPRETED:
        tile = interpreter_config("decode")
        block_m, block_n, warps = tile.block_m, tile.block_n, 1
    else:  # the compile gate's rows (compile_gate.decode_specs)
        hopper = torch.cuda.get_device_capability(q.device)[0] >= 9
        block_m, block_n, warps = decode_tile(head_dim, str(q.dtype).removeprefix("torch."), hopper)
    m_blocks = triton.cdiv(rows, block_m)
    splits = num_splits or num_splits_heuristic(batch, heads_kv, m_blocks, capacity, block_n, _sm_count(q.device))
    splits = max(1, min(splits, triton.cdiv(max(capacity, 1), block_n)))
    chunk = triton.cdiv(triton.cdiv(max(capacity, 1), splits), block_n) * block_n
    out_p = torch.empty((splits, batch, heads_q, seqlen_q, head_dim), dtype=torch.float32, device=q.device)
    lse_p = torch.empty((splits, batch, heads_q, seqlen_q), dtype=torch.float32, device=q.device)

    paged = block_table is not None
    alibi = None if alibi_slopes is None else alibi_slopes.detach().contiguous()
    decode_split_kernel[(m_blocks, batch * heads_kv, splits)](
        q, k_cache, v_cache, block_table, seqlens, alibi, out_p, lse_p,
        *q.stride(), *k_cache.stride(), *v_cache.stride(),
        block_table.stride(0) if paged else 0, 0 if alibi is None or alibi.dim() == 1 else alibi.stride(0),
        heads_q, heads_kv, seqlen_q, chunk, right if right >= 0 else 0, -left if left >= 0 else 0,
        qk_scale, softcap_in,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, GROUP=group,
        PAGE_SIZE=k_cache.shape[1] if paged else 1, PAGED=paged,
        CAUSAL=right >= 0, WINDOW=left >= 0, SOFTCAP=softcap > 0, ALIBI=alibi is not None,
        UPCAST=INTERPRETED, DOT_PRECISION=FLOAT32_DOT_PRECISION if q.dtype == torch.float32 else "tf32",
        num_warps=warps)
    decode_combine_kernel[(batch * heads_q * seqlen_q,)](
        out_p, lse_p, None if sinks is None else sinks.detach().contiguous(), out, lse,
        *out.stride(), heads_q, seqlen_q, splits, batch * heads_q * seqlen_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(splits), SINKS=sinks is not None,
        UPCAST=INTERPRETED, num_warps=1 if INTERPRETED else 4)
    return (out, lse) if return_lse else out
