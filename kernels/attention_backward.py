"""The fused attention backward kernels: FlashAttention-2's split into three launches.

Oracle twin: ``flashref.reference.attention_backward`` (closed form) and, tile by tile,
``blocked_attention_backward``. With ``P = softmax(S)``, ``S = scale * Q K^T`` (masked), and the
upstream gradient ``dO``:

    dV = P^T dO                     dP = dO V^T
    delta_i = rowsum(dO_i * O_i)    (= rowsum(P_i * dP_i), the softmax Jacobian's correction)
    dS = P * (dP - delta)           (elementwise)
    dQ = scale * dS K               dK = scale * dS^T Q

``P`` is never stored: each kernel recomputes its tile from the forward's ``lse`` as
``P = exp(S - lse) = exp2(qk * scale*log2(e) - lse*log2(e))``. A fully masked row has
``lse = -inf``; it is read as ``+inf`` so that its ``P`` row is exactly 0 and every gradient it
touches is 0 (never NaN). See docs/kernels.md for the derivation of ``delta``.

1. ``attention_backward_delta_kernel``: ``delta = rowsum(dO * O)``, float32 (B, Hq, Lq).
2. ``attention_backward_dkdv_kernel``: one program per (key block, batch x kv head) holds its
   ``dK``/``dV`` tiles in registers and walks the query blocks that see it, for every query
   head of its GQA group in turn: the sum over sharing heads happens in registers, so there are
   no atomics and the result is deterministic. At head dims above 128 two float32
   ``BLOCK_N x 256`` accumulators do not fit the register file, so the host launches it twice
   (``GRADS="dk"`` then ``GRADS="dv"``), each pass recomputing ``P`` (tile_tables.dkdv_passes).
3. ``attention_backward_dq_kernel``: one program per (query block, batch x query head) holds
   ``dQ`` and walks the key blocks it sees (the forward's loop bounds).

The prologue, loop bounds, tile loads and the recomputed ``P`` (score pipeline and mask:
``blocks.backward_probabilities``) are the blocks of kernels/attention_blocks.py the forward
uses too.

Variants (constexprs shared with the forward, see attention_forward.py): ``SOFTCAP`` recomputes
``t = tanh(qk * softcap_in)`` and multiplies ``dS`` by ``1 - t^2`` (the cap's derivative; the
scale stays ``softmax_scale``); ``ALIBI`` subtracts the same bias before ``exp2`` (the bias
has no gradient wrt q, k); ``LEFT_BOUND`` masks and skips exactly as the forward (the dK/dV kernel
cuts its query range in three); ``DROPOUT`` regenerates the keep mask ``Z`` for the tile and
uses ``dV = (P Z / (1-p))^T dO``, ``dP = Z / (1-p) * dO V^T`` (``delta = rowsum(dO * O)`` is
unchanged: ``O`` already carries the dropout); ``SINKS`` changes nothing here (the lse
includes the sink) but in the delta kernel, which also reduces ``dsinks``.
"""

import triton
import triton.language as tl

from . import attention_blocks as blocks
from .rounding import to_dot_operand, to_output
from .tile_loads import rows_descriptor


@triton.jit
def attention_backward_delta_kernel(
    Out, DOut, Delta, Lse, Sinks, DSinks, CuSeqQ,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    heads_q, seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, SINKS: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d] in float32.

    Out, DOut: (B, Hq, Lq, Dv), any strides (dO may be an expanded, stride-0 view); the host
    passes V's head dim Dv as this kernel's ``HEAD_DIM`` (``BLOCK_D`` its padding).
    Delta: (B, Hq, Lq) float32, contiguous.
    ``SINKS``: also the program's share of ``dsinks[h] = -sum_{b,i} exp(sinks[h] - lse) *
    delta``, stored (unnegated) at ``DSinks[b * Hq + h, pid_m]`` (float32, contiguous
    (B * Hq, cdiv(Lq, BLOCK_M))): the host sums it over b and the blocks in a fixed order, so
    dsinks is deterministic (no atomics).
    ``VARLEN``: packed (total_q, Hq, D) with ``CuSeqQ`` (B + 1,) int32, ``seqlen_q`` = total_q;
    Delta and Lse are (Hq, total_q) (see the forward kernel).
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = blocks.batch_head(pid_bh, heads_q)
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    do_base = DOut + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    row = pid_bh.to(tl.int64) * seqlen_q
    if VARLEN:
        q_start = tl.load(CuSeqQ + b)
        row = h.to(tl.int64) * seqlen_q + q_start
        seqlen_q = tl.load(CuSeqQ + b + 1) - q_start
        o_base += q_start.to(tl.int64) * stride_om
        do_base += q_start.to(tl.int64) * stride_dom
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < seqlen_q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + row + offs_m, delta, mask=offs_m < seqlen_q)
    if SINKS:
        # exp(sink - lse) is the sink's softmax weight: never above 1, and lse >= sink.
        row_ok = offs_m < seqlen_q
        lse = tl.load(Lse + row + offs_m, mask=row_ok, other=0.0)
        sink = tl.load(Sinks + h)
        p_sink = tl.where(row_ok, tl.math.exp2((sink - lse) * blocks.LOG2E_K), 0.0)
        tl.store(DSinks + pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m, tl.sum(p_sink * delta, 0))


@triton.jit
def _load_lse_log2(lse_ptrs, row_ok):
    """lse * log2(e) for the given rows; rows that see no key (lse = -inf) and rows past Lq
    come back as +inf so that exp2(s - lse) is exactly 0 for them."""
    lse = tl.load(lse_ptrs, mask=row_ok, other=float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * blocks.LOG2E_K)


@triton.jit
def _dkdv_query_blocks(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base,
    q_strides, do_strides, rows, offs_d, offs_dv, lo, hi, seqlen_q, qk_scale, tile_bounds, tile_score,
    dropout, key_counter, dropout_scale, walk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, INPUT_DTYPE: tl.constexpr,
    GRADS: tl.constexpr, RIGHT_BOUND: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr = False,
):
    """Accumulate query blocks ``[lo, hi)`` of one query head into a key block's dK and/or dV
    (``GRADS``: "dkdv", "dk" or "dv"; the other accumulator is returned untouched).

    k: (BLOCK_N, BLOCK_D), v: (BLOCK_N, BLOCK_DV) resident tiles. Works on transposed tiles (keys on rows) so that
    every product is a plain ``tl.dot``: S^T = K Q^T, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q.
    A "dv" pass needs neither V nor dP: the compiler drops the unused tile and products.
    Keys past ``kv_len`` are not masked here: each key row of dK/dV depends on that key alone,
    so the caller zeroes those rows once, before the store. ``tile_bounds`` and ``tile_score``
    carry tile-relative shifts (minus the key block's start); ``key_counter = start_n`` for the
    dropout counters. With a window the masked call walks both masked ranges in one loop
    (``walk``, as in the forward). Argument groups: kernels/attention_blocks.py.
    """
    offs_m_base = tl.arange(0, BLOCK_M)
    for block_start in range(lo, hi, BLOCK_M):
        start_m = blocks.shifted_block_start(block_start, walk, MASKED, LEFT_BOUND)
        offs_m = start_m + offs_m_base
        row_ok = offs_m < seqlen_q
        # q^T tile (BLOCK_D, BLOCK_M) and dO tile (BLOCK_M, BLOCK_DV), zero past Lq, HEAD_DIM, HEAD_DIM_V.
        qt = blocks.load_tile(q_base, start_m, offs_m, offs_d, q_strides[0], q_strides[1], seqlen_q, HEAD_DIM,
                              BLOCK_D, True, True, TMA)
        do = blocks.load_tile(do_base, start_m, offs_m, offs_dv, do_strides[0], do_strides[1], seqlen_q, HEAD_DIM_V,
                              BLOCK_DV, True, False, TMA)
        lse2 = _load_lse_log2(lse_base + offs_m, row_ok)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        if UPCAST:
            qt = qt.to(tl.float32)
        st = tl.dot(k, qt, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M), raw q.k
        # Key j = start_n + r is visible to query i iff j <= i + causal_shift (causal) and
        # j >= i + window_shift (window): r <= i + tile_shift, r >= i + tile_window_shift.
        # Keys past kv_len need no mask (see above).
        pt, dcap = blocks.backward_probabilities(
            st, offs_m[None, :], rows[:, None], None, lse2[None, :], qk_scale, tile_bounds, tile_score,
            MASKED, RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI)
        do_in = do
        if UPCAST:
            do_in = do.to(tl.float32)
        if DROPOUT:
            keep = blocks.dropout_keep(dropout, offs_m[None, :], key_counter + rows[:, None])
        if GRADS != "dk":
            pt_v = pt
            if DROPOUT:
                pt_v = tl.where(keep, pt * dropout_scale, 0.0)
            pt_in = to_dot_operand(pt_v, INPUT_DTYPE, UPCAST)
            dv = tl.dot(pt_in, do_in, dv, input_precision=DOT_PRECISION)
        if GRADS != "dv":
            dpt = tl.dot(v, tl.trans(do_in), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
            if DROPOUT:
                dpt = tl.where(keep, dpt * dropout_scale, 0.0)
            dst = pt * (dpt - delta[None, :])
            if SOFTCAP:
                dst = dst * dcap
            dst_in = to_dot_operand(dst, INPUT_DTYPE, UPCAST)
            dk = tl.dot(dst_in, tl.trans(qt), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def attention_backward_dkdv_kernel(
    Q, K, V, DOut, Lse, Delta, DK, DV, KvLens, Alibi, CuSeqQ, CuSeqK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_alibi_b,
    heads_q, heads_kv, seqlen_q, seqlen_k, causal_shift, qk_scale, softmax_scale,
    window_shift, alibi_shift, softcap_in, dropout_p, dropout_scale, seed,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    RIGHT_BOUND: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, GRADS: tl.constexpr,
    SHIFT_KV_LEN: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, DROPOUT: tl.constexpr, VARLEN: tl.constexpr = False, TMA: tl.constexpr = False,
):
    """dK, dV for one (key block, batch x kv head), summed over the group's query heads.

    Q: (B, Hq, Lq, D), DOut: (B, Hq, Lq, Dv); K, DK: (B, Hkv, Lk, D), V, DV: (B, Hkv, Lk, Dv); any
    strides (``HEAD_DIM`` = D, ``HEAD_DIM_V`` = Dv, padded to ``BLOCK_D`` / ``BLOCK_DV``).
    Lse, Delta: (B, Hq, Lq) float32, contiguous. dK = scale * dS^T Q, dV = P^T dO.
    ``GRADS`` is what this launch computes and stores: "dkdv" (both), "dk" or "dv" (the other
    output is not written); a split pass recomputes P = exp2(K Q^T * qk_scale - lse).
    Query blocks are walked in two ranges: those on the causal diagonal (masked), then those
    whose every row sees the whole key block (unmasked); blocks above the diagonal are skipped.
    With a left window (``LEFT_BOUND``) a third, masked range follows (the rows whose window starts
    inside the key block) and rows whose window starts past it are skipped.
    Variant arguments (and ``VARLEN``'s packed layout) as in the forward kernel.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h_kv = blocks.batch_head(pid_bh, heads_kv)
    group_size = heads_q // heads_kv
    total_q = seqlen_q
    q_start, k_start, seqlen_q, seqlen_k_visible = blocks.sequence_extent(
        b, total_q, seqlen_k, KvLens, CuSeqQ, CuSeqK, HAS_KV_LENS, VARLEN)
    # Rows the key block may store: k's padded length, or this sequence's keys (VARLEN: the
    # next rows of the packed k belong to the next sequence).
    seqlen_k_rows = seqlen_k
    if VARLEN:
        seqlen_k_rows = seqlen_k_visible
        # Move the query-side pointers to the sequence's first row once: nothing per-sequence
        # stays live across the loops but total_q (registers are tight at head dim 128+).
        Q += q_start.to(tl.int64) * stride_qm
        DOut += q_start.to(tl.int64) * stride_dom
        Lse += q_start
        Delta += q_start
    causal_shift, window_shift, alibi_shift = blocks.align_shifts(
        causal_shift, window_shift, alibi_shift, seqlen_q, seqlen_k_visible, SHIFT_KV_LEN, VARLEN)

    start_n = pid_n * BLOCK_N
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    # The key block's rows are addressed from per-tile base pointers and tile-relative indices:
    # what the store needs after the loops is then two pointers and the thread index, not
    # per-row offsets (at head dim 256 the loops need every register; long-lived values spill).
    rows = tl.arange(0, BLOCK_N)
    kv_mask = (rows < seqlen_k_rows - start_n)[:, None] & (offs_d < HEAD_DIM)[None, :]
    if VARLEN:
        start_n_row = start_n + k_start  # the key block's first row in the packed k
    else:
        start_n_row = start_n
    tile = b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + start_n_row.to(tl.int64) * stride_kn
    k = tl.load(K + tile + rows[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
    tile = b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + start_n_row.to(tl.int64) * stride_vn
    v_mask = (rows < seqlen_k_rows - start_n)[:, None] & (offs_dv < HEAD_DIM_V)[None, :]
    v = tl.load(V + tile + rows[:, None] * stride_vn + offs_dv[None, :] * stride_vd, mask=v_mask, other=0.0)
    dk_tile = (DK + b.to(tl.int64) * stride_dkb + h_kv.to(tl.int64) * stride_dkh
               + start_n_row.to(tl.int64) * stride_dkn)
    dv_tile = (DV + b.to(tl.int64) * stride_dvb + h_kv.to(tl.int64) * stride_dvh
               + start_n_row.to(tl.int64) * stride_dvn)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # Causal: query row i sees some key of this block iff i >= start_n - causal_shift, and all
    # of it iff i >= start_n + BLOCK_N - 1 - causal_shift. Query blocks in [lo, mid) straddle
    # the diagonal (masked); blocks in [mid, Lq) are unmasked; blocks below lo are skipped.
    lo = 0
    mid = 0
    if RIGHT_BOUND:
        lo = tl.minimum(tl.maximum(start_n - causal_shift, 0), seqlen_q)
        lo = (lo // BLOCK_M) * BLOCK_M
        full_from = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - causal_shift, 0), seqlen_q)
        mid = tl.maximum(tl.cdiv(full_from, BLOCK_M) * BLOCK_M, lo)
    # A block made only of padding keys (start_n >= kv_len) gets dK = dV = 0: no query blocks.
    hi = tl.where(start_n < seqlen_k_visible, seqlen_q, 0)
    if LEFT_BOUND:
        # Left window: row i sees some key of the block iff i < start_n + BLOCK_N - window_shift,
        # all of it (on the left) iff i <= start_n - window_shift. [mid, end) is unmasked,
        # [end, hi) masked, rows from hi on are skipped.
        hi = tl.minimum(hi, tl.maximum(start_n + BLOCK_N - window_shift, 0))
        full_to = tl.minimum(tl.maximum(start_n - window_shift + 1, 0), seqlen_q)
        end = (full_to // BLOCK_M) * BLOCK_M
    if RIGHT_BOUND:
        lo = tl.minimum(lo, hi)
        mid = tl.minimum(mid, hi)
    if LEFT_BOUND:
        end = tl.maximum(tl.minimum(end, hi), mid)
    else:
        end = hi

    for g in range(0, group_size):
        h = h_kv * group_size + g
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DOut + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        if TMA:  # this head's Q and dO through tensor descriptors (kernels/tile_loads.py)
            q_base = rows_descriptor(q_base, seqlen_q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
            do_base = rows_descriptor(do_base, seqlen_q, stride_dom, HEAD_DIM_V, BLOCK_M, BLOCK_DV)
        # Lse, Delta: (B, Hq, Lq), or (Hq, total_q) with VARLEN (then Q, dO, Lse, Delta pre-offset).
        row_base = blocks.row_start(b * heads_q + h, h, total_q, 0, VARLEN)
        alibi_slope = blocks.load_alibi_slope(Alibi, b, stride_alibi_b, h, qk_scale, ALIBI)
        stream = b * heads_q + h
        # (A switch for a call is annotated tl.constexpr: a plain local would become a tensor.)
        if LEFT_BOUND:
            # Unmasked [mid, end), then the masked [lo, mid) and [end, hi) in one loop.
            first_lo, first_hi = mid, end
            FIRST_MASKED: tl.constexpr = False
            second_lo, second_hi, split, gap = lo, mid + (hi - end), mid, end - mid
            SECOND_MASKED: tl.constexpr = True
        else:
            # The diagonal [lo, mid) (masked when causal), then the unmasked [mid, end).
            first_lo, first_hi = lo, mid
            FIRST_MASKED: tl.constexpr = RIGHT_BOUND
            second_lo, second_hi, split, gap = mid, end, 0, 0
            SECOND_MASKED: tl.constexpr = False
        # The bounds and ALiBi's shift relative to the key block's start (rows are 0..BLOCK_N).
        tile_bounds = (causal_shift - start_n, window_shift - start_n)
        tile_score = (alibi_shift - start_n, alibi_slope, softcap_in)
        dropout = (seed, stream, seqlen_k, dropout_p)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, q_base, do_base, Lse + row_base, Delta + row_base,
            (stride_qm, stride_qd), (stride_dom, stride_dod), rows, offs_d, offs_dv, first_lo, first_hi, seqlen_q,
            qk_scale, tile_bounds, tile_score, dropout, start_n, dropout_scale, (0, 0),
            HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_M, FIRST_MASKED, UPCAST, DOT_PRECISION, Q.dtype.element_ty, GRADS,
            RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, q_base, do_base, Lse + row_base, Delta + row_base,
            (stride_qm, stride_qd), (stride_dom, stride_dod), rows, offs_d, offs_dv, second_lo, second_hi, seqlen_q,
            qk_scale, tile_bounds, tile_score, dropout, start_n, dropout_scale, (split, gap),
            HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_M, SECOND_MASKED, UPCAST, DOT_PRECISION, Q.dtype.element_ty, GRADS,
            RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA)

    # Keys at or past kv_len are padding: their gradients are 0 (and whatever was computed for
    # them from an lse that never included them is discarded here, NaN or not).
    visible = (rows < seqlen_k_visible - start_n)[:, None]
    # Written as a different expression from kv_mask on purpose: CSE would otherwise keep the
    # load's mask alive across the loops (spilled at head dim 256).
    store_mask = (rows + start_n < seqlen_k_rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    if GRADS != "dv":
        dk = tl.where(visible, dk * softmax_scale, 0.0)
        tl.store(dk_tile + rows[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
                 to_output(dk, DK.dtype.element_ty, UPCAST), mask=store_mask)
    if GRADS != "dk":
        dv = tl.where(visible, dv, 0.0)
        dv_store_mask = (rows + start_n < seqlen_k_rows)[:, None] & (offs_dv < HEAD_DIM_V)[None, :]
        tl.store(dv_tile + rows[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
                 to_output(dv, DV.dtype.element_ty, UPCAST), mask=dv_store_mask)


@triton.jit
def _dq_key_blocks(
    dq, q, do, lse2, delta, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, lo, hi,
    seqlen_k_visible, qk_scale, bounds, score, dropout, dropout_scale, walk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, RIGHT_BOUND: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    INPUT_DTYPE: tl.constexpr,
    LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    TMA: tl.constexpr = False,
):
    """Accumulate key blocks ``[lo, hi)`` into a query block's (unscaled) dQ = dS K (with a
    window, the masked call walks two ranges: ``walk`` as in the forward; argument groups:
    kernels/attention_blocks.py).
    With ``TMA``, ``k_base`` and ``v_base`` are tensor descriptors (kernels/tile_loads.py)."""
    offs_n_base = tl.arange(0, BLOCK_N)
    for block_start in range(lo, hi, BLOCK_N):
        keys, kt, vt = blocks.key_block_tiles(
            k_base, v_base, block_start, walk, offs_n_base, offs_d, offs_dv, k_strides, v_strides, seqlen_k_visible,
            HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, MASKED, LEFT_BOUND, True, UPCAST, TMA)  # k^T and v^T
        if UPCAST:
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N), raw q.k
        p, dcap = blocks.backward_probabilities(
            s, offs_m[:, None], keys[None, :], (keys < seqlen_k_visible)[None, :], lse2[:, None], qk_scale,
            bounds, score, MASKED, RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = blocks.dropout_keep(dropout, offs_m[:, None], keys[None, :])
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * dcap
        ds_in = to_dot_operand(ds, INPUT_DTYPE, UPCAST)
        dq = tl.dot(ds_in, tl.trans(kt), dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def attention_backward_dq_kernel(
    Q, K, V, DOut, Lse, Delta, DQ, KvLens, Alibi, CuSeqQ, CuSeqK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_alibi_b,
    heads_q, group_size, seqlen_q, seqlen_k, causal_shift, qk_scale, softmax_scale,
    window_shift, alibi_shift, softcap_in, dropout_p, dropout_scale, seed,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    RIGHT_BOUND: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SHIFT_KV_LEN: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, DROPOUT: tl.constexpr, VARLEN: tl.constexpr = False, TMA: tl.constexpr = False,
):
    """dQ = scale * dS K for one (query block, batch x query head); shapes as the dK/dV kernel,
    DQ: (B, Hq, Lq, D) (dO and V in Dv). Key blocks are visited exactly as in the forward: unmasked ones first,
    then the diagonal / tail blocks with masks; invisible blocks are skipped (with a window,
    the window's left-edge blocks come first, masked)."""
    (pid_m, pid_bh, b, h, h_kv, q_start, k_start, seqlen_q, seqlen_k_visible, lse_row,
     causal_shift, window_shift, alibi_shift, alibi_slope) = blocks.query_prologue(
        heads_q, group_size, seqlen_q, seqlen_k, causal_shift, window_shift, alibi_shift, qk_scale,
        KvLens, CuSeqQ, CuSeqK, Alibi, stride_alibi_b, HAS_KV_LENS, SHIFT_KV_LEN, VARLEN, ALIBI)

    start_m, offs_m, offs_d, offs_dv, row_ok = blocks.query_block_offsets(pid_m, seqlen_q, BLOCK_M, BLOCK_D, BLOCK_DV)
    tile_mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]

    q_base = blocks.head_rows(Q, b, h, stride_qb, stride_qh, q_start, stride_qm, VARLEN)
    do_base = blocks.head_rows(DOut, b, h, stride_dob, stride_doh, q_start, stride_dom, VARLEN)
    dq_base = blocks.head_rows(DQ, b, h, stride_dqb, stride_dqh, q_start, stride_dqm, VARLEN)
    k_base = blocks.head_rows(K, b, h_kv, stride_kb, stride_kh, k_start, stride_kn, VARLEN)
    v_base = blocks.head_rows(V, b, h_kv, stride_vb, stride_vh, k_start, stride_vn, VARLEN)
    if TMA:  # Q and dO once, K and V per block, through tensor descriptors (zero outside)
        q_base = rows_descriptor(q_base, seqlen_q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
        do_base = rows_descriptor(do_base, seqlen_q, stride_dom, HEAD_DIM_V, BLOCK_M, BLOCK_DV)
    q = blocks.load_tile(q_base, start_m, offs_m, offs_d, stride_qm, stride_qd, seqlen_q, HEAD_DIM, BLOCK_D,
                         True, False, TMA)
    do = blocks.load_tile(do_base, start_m, offs_m, offs_dv, stride_dom, stride_dod, seqlen_q, HEAD_DIM_V,
                          BLOCK_DV, True, False, TMA)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse2 = _load_lse_log2(Lse + lse_row + offs_m, row_ok)
    delta = tl.load(Delta + lse_row + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if TMA:
        k_base = rows_descriptor(k_base, seqlen_k_visible, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D)
        v_base = rows_descriptor(v_base, seqlen_k_visible, stride_vn, HEAD_DIM_V, BLOCK_N, BLOCK_DV)
    unmasked_lo, unmasked_hi, masked_lo, masked_hi, split, gap = blocks.key_ranges(
        start_m, seqlen_q, seqlen_k_visible, causal_shift, window_shift, BLOCK_M, BLOCK_N, RIGHT_BOUND, LEFT_BOUND, VARLEN)
    k_strides, v_strides = (stride_kn, stride_kd), (stride_vn, stride_vd)
    bounds, score = (causal_shift, window_shift), (alibi_shift, alibi_slope, softcap_in)
    dropout = (seed, pid_bh, seqlen_k, dropout_p)  # the keep mask's stream: this (batch, head)
    dq = _dq_key_blocks(
        dq, q, do, lse2, delta, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, unmasked_lo,
        unmasked_hi, seqlen_k_visible, qk_scale, bounds, score, dropout, dropout_scale,
        (0, 0), HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_N, False, RIGHT_BOUND, UPCAST, DOT_PRECISION, Q.dtype.element_ty,
        LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA)
    dq = _dq_key_blocks(
        dq, q, do, lse2, delta, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, masked_lo,
        masked_hi, seqlen_k_visible, qk_scale, bounds, score, dropout, dropout_scale,
        (split, gap), HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_N, True, RIGHT_BOUND, UPCAST, DOT_PRECISION, Q.dtype.element_ty,
        LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA)

    tl.store(dq_base + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             to_output(dq * softmax_scale, DQ.dtype.element_ty, UPCAST), mask=tile_mask)
