"""Decoding kernels: split-KV attention of a few new query tokens against a (paged) KV cache,
and the combine of the splits.

Oracle twins: ``flashref.reference.attention_with_kvcache`` (the whole call) and
``flashref.reference.merge_attention`` (the combine, exactly its formula).

``decode_split_kernel``: one program per (query tile, batch x kv head, split). The keys of
sequence b are ``[0, L_b)`` with ``L_b`` = cache_seqlens[b] + Lnew (after the append); split s
takes ``[s * chunk, min((s + 1) * chunk, L_b))`` (``chunk`` a multiple of ``BLOCK_N`` chosen
by the host from the cache's capacity, so the grid needs no sync). It writes the split's
partial ``(out_s, lse_s)`` in float32, the forward kernel's online softmax restricted to
its keys (an empty split: ``out_s = 0``, ``lse_s = -inf``).

Pack GQA (FlashAttention-3's ``pack_gqa``): the ``group = Hq / Hkv`` query heads that read one
kv head are stacked into the M tile with the query tokens: tile row ``r`` is query token
``r // group`` of query head ``hkv * group + r % group``, so one decoded token of a GQA
model still gives a ``group``-row tile and K/V are read once for the whole group.

Keys live at logical position j of sequence b: contiguous cache ``(B, Lmax, Hkv, D)`` row
``[b, j]``; paged cache ``(num_pages, page_size, Hkv, D)`` row
``[block_table[b, j // page_size], j % page_size]`` (a gathered page index per key column:
any ``page_size``, any ``BLOCK_N``).

Value head dim (DeepSeek's MLA): V's rows may be ``Dv != D`` wide (``HEAD_DIM_V``, padded to
``BLOCK_DV``): q, K and the score in D, V, the accumulator, the partials and out in Dv.

Absorbed MLA decode (``ABSORBED``, FlashMLA's and FA3's ``qv`` form): one latent cache
``(B, Lmax, Hkv, D)`` (or paged; DeepSeek: D = 576, Hkv = 1) whose first ``Dv`` columns
(512) are also the values; no V cache exists. q = [q_lat | q_rope] and each key row
k = [c | k_rope] split at Dv, so

    s_ij = q_lat_i . c_j + q_rope_i . k_rope_j,        out_i = sum_j softmax(s)_ij c_j

two dots per key tile: the (BLOCK_N, Dv) latent tile ``c`` is loaded once and serves as
the score's first operand (transposed) and as the values, the (D - Dv)-column rope tile is
the second dot (``BLOCK_D`` pads D - Dv there, not D: 576 would pad to 1024).

Query token i sits at position ``p_i = L_b - Lq + i`` (bottom-right). Score pipeline and online
softmax: the forward's blocks (kernels/attention_blocks.py): ``softcap``, ``- slope * |p_i - j|``
(ALiBi), visible iff ``j < L_b``, ``j <= p_i + right`` (causal: right = 0), ``j >= p_i - left``
(window).

``decode_combine_kernel``: one program per (batch x query head, query token), over out's head
dim (Dv): with
``m = max_s lse_s``, ``lse = m + log(sum_s exp(lse_s - m))`` (logaddexp over the splits) and
``out = sum_s exp(lse_s - lse) out_s``; the sink, when given, is one more partial with
``out = 0`` and ``lse = sinks[h]``. Every lse ``-inf``: ``out = 0``, ``lse = -inf``.
"""

import triton
import triton.language as tl

from . import attention_blocks as blocks
from .tile_tables import padded_head_dim
from .rounding import to_output


def decode_tile(head_dim: int, dtype: str, hopper: bool, head_dim_v: int | None = None,
                absorbed: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the split kernel, the compile gate's decode rows
    (contiguous and paged, plain and with window + softcap + ALiBi, sm_90 and sm_80: all clean):

    - 16-bit: BLOCK_M 64 on Hopper (wgmma's M), 16 on Ampere (mma's M; more packed rows take
      more programs), with a key tile of 64 / 32 / 16 keys at head dims up to 64 / 128 / 256, on
      4 warps. Larger tiles spill the (BLOCK_N, D) K and V tiles with their gathered addresses.
      At head dim 256 the 4-warp tile spilled 16 B on both (contiguous cache, 255 and 168
      registers): Hopper takes 8 warps (213-234 registers), Ampere 16 x 32 on 8 warps (232).
    - float32 (exact FMA dots): 16 x 32 on 8 warps up to head dim 64; 16 x 16 on 8 warps at 128
      (16 x 32 left 8-24 B of stack with a paged cache); 16 x 16 on 4 warps at 256 (16 x 32 on 8
      spilled 72 B paged on sm_90, 16 x 16 on 8 left 24 B on sm_80).
    - A value head dim ``head_dim_v`` (Dv != D): the tile of the wider of D and Dv, but float32
      at width 256 takes 16 x 32 on 8 warps ((192, 128) spilled 8 B on sm_80 with a contiguous
      cache at 16 x 16 on 4 warps, and with the variants at 16 x 16 on 8).
    - ``absorbed`` (MLA: Dv latent columns, at most 512, + D - Dv rope columns, one cache
      tile less than a plain call's K and V): above head dim 256 the ``BLOCK_M x Dv`` float32
      accumulator dominates. Hopper's wgmma needs BLOCK_M 64: a 64 x 512 accumulator is 128
      registers a thread on 8 warps, and (576, 512) spilled 192-208 B at 64 x 16 (328 B with
      one stage, 576 B on 16 warps' 128-register cap). So 16 rows on mma.sync on every arch
      (one program for 16 heads on one kv head, DeepSeek's per-GPU share under 8-way tensor
      parallelism): 16 x 32 on 8 warps for 16-bit (108 registers on sm_90; 4 warps spilled
      56 B on sm_80), 16 x 16 on 8 warps for float32. Up to head dim 256: the tile of D as above.
    """
    width = max(head_dim, head_dim_v or head_dim)
    if absorbed and head_dim > 256:
        return (16, 16, 8) if dtype == "float32" else (16, 32, 8)
    block_d = padded_head_dim(width)
    if dtype == "float32":
        if block_d == 256 and head_dim_v not in (None, head_dim):
            return 16, 32, 8
        return (16, 32, 8) if block_d <= 64 else (16, 16, 8) if block_d == 128 else (16, 16, 4)
    if block_d == 256:
        return (64, 16, 8) if hopper else (16, 32, 8)
    block_n = 64 if block_d <= 64 else 32
    return (64 if hopper else 16), block_n, 4


@triton.jit
def decode_split_kernel(
    Q, KCache, VCache, BlockTable, SeqLens, Alibi, OutP, LseP,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_bt_b, stride_alibi_b,
    heads_q, heads_kv, seqlen_q, chunk, causal_shift, window_shift, qk_scale, softcap_in,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUP: tl.constexpr, PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr,
    RIGHT_BOUND: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, ABSORBED: tl.constexpr = False,
):
    """Partial attention of one split. Q: (B, Hq, Lq, D); caches as in the module docstring
    (``stride_kb`` is the page stride when PAGED; VCache's rows are Dv wide); BlockTable
    (B, max_pages) int32 (PAGED); SeqLens (B,) int32 = L_b; OutP (S, B, Hq, Lq, Dv) and LseP
    (S, B, Hq, Lq) float32, contiguous. ``HEAD_DIM`` = D padded to ``BLOCK_D``, ``HEAD_DIM_V``
    = Dv padded to ``BLOCK_DV``. ``causal_shift`` = right bound (0 for causal),
    ``window_shift`` = -left; ``qk_scale`` and ``softcap_in`` as in the forward kernel.
    ``ABSORBED`` (MLA's absorbed decode, module docstring): VCache is unused, the values are
    the first Dv columns of KCache, and ``BLOCK_D`` pads the D - Dv rope columns instead of D."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    b, h_kv = blocks.batch_head(pid_bh, heads_kv)
    seqlen_k = tl.load(SeqLens + b)

    # Packed rows: token i = r // GROUP of query head h_kv * GROUP + r % GROUP.
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = h_kv * GROUP + rows % GROUP
    row_ok = tok < seqlen_q
    pos = seqlen_k - seqlen_q + tok  # the token's position in its sequence (bottom-right)
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < HEAD_DIM_V
    q_rows = Q + b.to(tl.int64) * stride_qb + head[:, None].to(tl.int64) * stride_qh + tok[:, None] * stride_qm
    if ABSORBED:
        # q = [latent (Dv) | rope (D - Dv)]: two tiles, the score two dots.
        ROPE_DIM: tl.constexpr = HEAD_DIM - HEAD_DIM_V
        offs_d = HEAD_DIM_V + tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        q = tl.load(q_rows + offs_dv[None, :] * stride_qd, mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
        q_rope = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q_rope = q_rope.to(tl.float32)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        q = tl.load(q_rows + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    # One slope per packed row (a vector: blocks.load_alibi_slope's scalar is per program).
    slope = tl.zeros([BLOCK_M], dtype=tl.float32)
    if ALIBI:
        slope = tl.load(Alibi + b * stride_alibi_b + head, mask=row_ok, other=0.0) * (blocks.LOG2E_K / qk_scale)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    k_base = KCache + h_kv.to(tl.int64) * stride_kh
    v_base = VCache + h_kv.to(tl.int64) * stride_vh
    if not PAGED:
        k_base += b.to(tl.int64) * stride_kb
        v_base += b.to(tl.int64) * stride_vb
    lo = split * chunk
    hi = tl.minimum(lo + chunk, seqlen_k)
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        key_ok = keys < hi
        if PAGED:
            page = tl.load(BlockTable + b * stride_bt_b + keys // PAGE_SIZE, mask=key_ok, other=0)
            k_row = page.to(tl.int64) * stride_kb + (keys % PAGE_SIZE) * stride_kn
            v_row = page.to(tl.int64) * stride_vb + (keys % PAGE_SIZE) * stride_vn
        else:  # one sequence's rows: a 64-bit base, 32-bit offsets (fewer registers per key)
            k_row = keys * stride_kn
            v_row = keys * stride_vn
        if ABSORBED:
            # One (BLOCK_N, Dv) latent tile: the score's first dot (transposed) and the values.
            v = tl.load(k_base + k_row[:, None] + offs_dv[None, :] * stride_kd,
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            kt_latent = tl.trans(v)
            if UPCAST:
                kt_latent = kt_latent.to(tl.float32)
            qk = tl.dot(q, kt_latent, input_precision=DOT_PRECISION)
            if ROPE_DIM > 0:
                kt = tl.load(k_base + k_row[None, :] + offs_d[:, None] * stride_kd,
                             mask=key_ok[None, :] & d_ok[:, None], other=0.0)
                if UPCAST:
                    kt = kt.to(tl.float32)
                qk = tl.dot(q_rope, kt, qk, input_precision=DOT_PRECISION)
        else:
            kt = tl.load(k_base + k_row[None, :] + offs_d[:, None] * stride_kd,
                         mask=key_ok[None, :] & d_ok[:, None], other=0.0)
            v = tl.load(v_base + v_row[:, None] + offs_dv[None, :] * stride_vd,
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
            qk = tl.dot(q, kt, input_precision=DOT_PRECISION)
        # Positions: query token i at p_i = L_b - Lq + i (bottom-right); rows past Lq see nothing.
        s = blocks.forward_scores(qk, pos[:, None], keys[None, :], key_ok[None, :] & row_ok[:, None],
                                  (causal_shift, window_shift), (0, slope[:, None], softcap_in),
                                  True, RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI)
        p, m_new, l_i, acc = blocks.online_softmax_step(s, m_i, l_i, acc, qk_scale)
        acc = blocks.accumulate_pv(acc, p, v, UPCAST, DOT_PRECISION)
        m_i = m_new

    out, lse = blocks.finish_rows(acc, m_i, l_i)
    # OutP[split, b, head, tok, :] (Dv wide), LseP[split, b, head, tok]: contiguous.
    row_index = ((split * (tl.num_programs(1) // heads_kv) + b) * heads_q + head).to(tl.int64) * seqlen_q + tok
    tl.store(LseP + row_index, lse, mask=row_ok)
    tl.store(OutP + row_index[:, None] * HEAD_DIM_V + offs_dv[None, :], out, mask=row_ok[:, None] & dv_ok[None, :])


@triton.jit
def decode_combine_kernel(
    OutP, LseP, Sinks, Out, Lse,
    stride_ob, stride_oh, stride_om, stride_od,
    heads_q, seqlen_q, num_splits, rows_per_split,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, SINKS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Merge the splits of one row (b, h, token): ``merge_attention`` over S partials (and the
    sink). OutP (S, B, Hq, Lq, D), LseP (S, B, Hq, Lq) float32 contiguous (``rows_per_split`` =
    B * Hq * Lq); Out (B, Hq, Lq, D) any strides, q's dtype; Lse (B, Hq, Lq) float32."""
    row = tl.program_id(0)  # (b * Hq + h) * Lq + token
    tok = row % seqlen_q
    bh = row // seqlen_q
    b = bh // heads_q
    h = bh % heads_q
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < num_splits
    lse_s = tl.load(LseP + offs_s.to(tl.int64) * rows_per_split + row, mask=s_ok, other=float("-inf"))
    m = tl.max(lse_s, 0)
    if SINKS:
        sink = tl.load(Sinks + h)
        m = tl.maximum(m, sink)
    m_sub = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse_s - m_sub)  # exp(-inf) = 0: empty splits weigh nothing
    total = tl.sum(w, 0)
    if SINKS:
        total += tl.exp(sink - m_sub)
    seen = total > 0.0
    lse = tl.where(seen, m_sub + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    lse_sub = tl.where(seen, lse, 0.0)
    weights = tl.exp(lse_s - lse_sub)  # exp(lse_s - lse), the merge weights
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    parts = tl.load(OutP + (offs_s.to(tl.int64) * rows_per_split + row)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(weights[:, None] * parts, 0)
    tl.store(Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + tok * stride_om + offs_d * stride_od,
             to_output(out, Out.dtype.element_ty, UPCAST), mask=d_ok)
    tl.store(Lse + row, lse)
