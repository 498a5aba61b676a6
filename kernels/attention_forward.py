"""The fused attention forward kernel: FlashAttention-2's online softmax in Triton.

Oracle twin: ``flashref.reference.attention_forward`` (and, tile by tile,
``blocked_attention_forward``). With ``s = scale * q @ k^T`` masked to ``-inf`` where a key is
invisible, each query row ``i`` gets

    m_i = max_j s_ij,   l_i = sum_j exp(s_ij - m_i),   out_i = sum_j exp(s_ij - m_i) v_j / l_i,
    lse_i = m_i + log(l_i)                      (natural log, float32)

computed one key block at a time without ever holding the ``Lq x Lk`` score matrix: after each
block the running max ``m`` grows to ``m_new`` and the running sum and accumulator are rescaled by
``exp(m - m_new)``. The kernel works in base 2: ``exp(x) = exp2(x * log2(e))``, and
``scale * log2(e)`` is folded into one multiplier ``qk_scale`` applied to the raw ``q @ k^T``
tile, so the softmax costs one FMA and one ``exp2`` per score.

Grid: one program per (query block of ``BLOCK_M`` rows, batch x query head). The program's key
range is cut in two: blocks every one of its rows sees completely (no mask work at all), then
the blocks on the causal diagonal or straddling ``kv_len``/``Lk`` (masked). Key blocks no row
of the program can see are never visited.

Masking (the oracle's): key ``j`` is visible to query ``i`` of batch ``b`` iff
``j < kv_len[b]``, when causal (or with a right window) ``j <= i + causal_shift``, and with a
left window ``j >= i + window_shift``. The alignment shift is 0 for ``"top_left"``,
``Lk - Lq`` for ``"bottom_right"``, and ``kv_len[b] - Lq`` for ``"bottom_right"`` with
``kv_lens`` (``SHIFT_KV_LEN``: the host passes the shifts without ``kv_len[b]``, the kernel
adds the length it loads). A row that sees no key keeps ``m = -inf`` and ``l = 0`` and is
stored as ``out = 0``, ``lse = -inf`` (never NaN).

Variants (each a ``tl.constexpr``; off, the kernel compiles to the plain one):

- ``SOFTCAP``: the raw product becomes ``tanh(qk * softcap_in)`` with ``softcap_in =
  scale / softcap``, and the host passes ``qk_scale = softcap * log2(e)``, so that
  ``qk * qk_scale`` is ``softcap * tanh(scale q.k / softcap)`` in log2 units.
- ``ALIBI``: ``- slope * |i + alibi_shift - j|``, the slope loaded once per program
  (``Alibi + b * stride_alibi_b + h``; stride 0 for per-head slopes) and divided by
  ``qk_scale`` so the bias enters before the one ``qk * qk_scale`` FMA.
- ``WINDOW``: the left bound; key blocks left of every row's window are skipped and the
  range is cut in three (masked left edge, unmasked middle, masked diagonal / tail).
- ``SINKS``: the running max and sum start at ``(sinks[h] * log2 e, 1)`` instead of
  ``(-inf, 0)``: the sink is one more "key" with a zero value vector, so ``l`` and ``lse``
  include ``exp(sinks[h])`` and a row that sees no key gives ``out = 0``, ``lse = sinks[h]``.
- ``DROPOUT``: ``p`` enters ``acc`` only where ``dropout_keep`` keeps it, ``l`` sums every
  ``p`` (the lse has no dropout), and ``out`` is scaled by ``dropout_scale = 1 / (1 - p)``.
"""

import triton
import triton.language as tl
from triton.language.random import philox, uint_to_uniform_float

from .rounding import to_dot_operand, to_output
from .tile_loads import load_rows, rows_descriptor

LOG2E = 1.4426950408889634
LOG2E_K = tl.constexpr(LOG2E)  # the same, readable inside @triton.jit functions


@triton.jit
def tanh(x):
    """tanh of a float32 tile from ``exp2`` (the interpreter has no libdevice, and
    ``tl.math`` has no tanh on triton 3.6/3.9). ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)``
    never overflows (``|x| ~ 1e4`` gives ``e = 0``, ``tanh = +-1``); below ``|x| = 1/4``,
    where ``1 - e`` would cancel, the Taylor series to ``x^9`` (next term < 1e-8 relative)."""
    ax = tl.abs(x)
    e = tl.math.exp2(ax * -2.8853900817779268)  # exp(-2|x|)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    small = ax * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333
                                                          + x2 * (-0.05396825396825397 + x2 * 0.021869488536155203))))
    t = tl.where(ax < 0.25, small, big)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def dropout_keep(seed, rows, keys, seqlen_k, stream, dropout_p):
    """Keep mask of element (stream = b * Hq + h, row i, key j), bit for bit the oracle's
    (``flashref.reference``'s Philox twin): Philox-4x32-10 with key ``seed`` on the counters
    ``(i * Lk + j mod 2**32, stream, 0, 0)``, first output word, Triton's
    ``uint_to_uniform_float``, keep iff ``u >= p`` in float32. ``rows``/``keys`` broadcast
    against each other (either orientation of a tile). Never materialised: each kernel that
    needs it recomputes it for its tile."""
    c0 = rows * seqlen_k + keys  # int32 arithmetic wraps mod 2**32: the counter's definition
    zero = c0 * 0
    r0, _r1, _r2, _r3 = philox(seed, c0, zero + stream, zero, zero)
    return uint_to_uniform_float(r0) >= dropout_p


@triton.jit
def sequence_start(CuSeqQ, CuSeqK, b):
    """Where packed sequence b starts and how long it is (``VARLEN``): ``(q_start, k_start,
    seqlen_q, seqlen_k)`` from ``cu_seqlens_q/k`` ((B + 1,) int32). Its rows are ``q_start + i``
    of the packed q (``k_start + j`` of k, v); its lse (and delta) row for head h starts at
    ``h * total_q + q_start`` of the (Hq, total_q) array. Four scalar loads per program: no
    host sync, no padding."""
    q_start = tl.load(CuSeqQ + b)
    k_start = tl.load(CuSeqK + b)
    return q_start, k_start, tl.load(CuSeqQ + b + 1) - q_start, tl.load(CuSeqK + b + 1) - k_start


@triton.jit
def visible_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key any row of the query block ``[start_m, start_m + BLOCK_M)`` sees."""
    hi = seqlen_k_visible
    if CAUSAL:
        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_shift, 0))
    return hi


@triton.jit
def unmasked_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key block that every row of the query block sees whole (a multiple of
    ``BLOCK_N``): keys below it need neither a bounds mask nor a causal mask."""
    end = seqlen_k_visible
    if CAUSAL:
        # The block's first row sees keys j <= start_m + causal_shift; later rows see more.
        end = tl.minimum(end, tl.maximum(start_m + causal_shift + 1, 0))
    return (end // BLOCK_N) * BLOCK_N


@triton.jit
def window_key_ranges(start_m, mid, hi, window_shift, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """With a left window (key j visible to row i only if ``j >= i + window_shift``), the key
    blocks of a query block ``[start_m, start_m + BLOCK_M)`` are ``[lo, a)`` (masked: the
    window's left edge), ``[a, b)`` (every row sees them whole: no mask) and ``[b, hi)``
    (masked: diagonal and tail), with ``a <= b <= hi`` and ``lo <= a`` unless the window hides
    the whole query block (then ``a = hi < lo`` and every range is empty). ``lo``, ``b`` are
    multiples of ``BLOCK_N`` and so is ``a`` unless ``a = hi``, so ``b - a`` is a whole number of
    blocks whenever ``[b, hi)`` is not empty. ``mid``, ``hi``: the bounds without the window."""
    # Block-aligned first key of the first row's window; the last row's window starts latest.
    lo = (tl.maximum(start_m + window_shift, 0) // BLOCK_N) * BLOCK_N
    full_from = tl.cdiv(tl.maximum(start_m + BLOCK_M - 1 + window_shift, 0), BLOCK_N) * BLOCK_N
    a = tl.minimum(tl.maximum(full_from, lo), hi)
    b = tl.maximum(mid, a)
    return lo, a, b


@triton.jit
def _forward_key_blocks(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, lo, hi, seqlen_k_visible, causal_shift, qk_scale,
    window_shift, alibi_shift, alibi_slope, softcap_in, seed, stream, seqlen_k, dropout_p, split, gap,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    TMA: tl.constexpr = False,
):
    """Fold key blocks ``[lo, hi)`` into the running (acc, m, l) of one query block. With a
    window the masked call walks two ranges in one loop: blocks from ``split`` on are moved
    ``gap`` keys right (``[lo, split)`` then ``[split + gap, hi + gap)``): one masked loop body
    in the kernel instead of two keeps the register pressure of the plain kernel.
    With ``TMA``, ``k_base`` and ``v_base`` are tensor descriptors (kernels/tile_loads.py)."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    for block_start in range(lo, hi, BLOCK_N):
        start_n = block_start
        if WINDOW:
            if MASKED:
                start_n = tl.where(block_start < split, block_start, block_start + gap)
        keys = start_n + offs_n
        # k^T tile (BLOCK_D, BLOCK_N) and v tile (BLOCK_N, BLOCK_D).
        if TMA:  # bulk copies, zero past kv_len and HEAD_DIM (the masks below)
            kt = tl.trans(load_rows(k_base, start_n))
            v = load_rows(v_base, start_n)
        else:
            kt_ptrs = k_base + keys[None, :] * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_base + keys[:, None] * stride_vn + offs_d[None, :] * stride_vd
            if MASKED:
                key_ok = keys < seqlen_k_visible
                kt = tl.load(kt_ptrs, mask=key_ok[None, :] & d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs, mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            elif HEAD_DIM == BLOCK_D:
                kt = tl.load(kt_ptrs)
                v = tl.load(v_ptrs)
            else:
                kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) float32
        if SOFTCAP:
            qk = tanh(qk * softcap_in)  # times qk_scale = softcap * log2(e): the capped score
        if ALIBI:
            # alibi_slope is slope * log2(e) / qk_scale: the bias in the units of qk.
            qk = qk - alibi_slope * tl.abs(offs_m[:, None] + alibi_shift - keys[None, :]).to(tl.float32)
        if MASKED:
            visible = (keys < seqlen_k_visible)[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= offs_m[:, None] + causal_shift)
            if WINDOW:
                visible = visible & (keys[None, :] >= offs_m[:, None] + window_shift)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # A row that has seen no key yet has m_new = -inf; subtracting 0 instead keeps
        # exp2(-inf - (-inf)) = NaN out of it (its p and alpha are then exactly 0).
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            # l (hence lse) sums every p; only the kept ones reach the output.
            p = tl.where(dropout_keep(seed, offs_m[:, None], keys[None, :], seqlen_k, stream, dropout_p), p, 0.0)
        # p is rounded to the input dtype as on a GPU; under the interpreter it is handed over
        # in float32 (see UPCAST in the kernel docstring) so tl.dot sees true values.
        p_in = to_dot_operand(p, v.dtype, UPCAST)
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(p_in, v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attention_forward_kernel(
    Q, K, V, Out, Lse, KvLens, Alibi, Sinks, CuSeqQ, CuSeqK,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_alibi_b,
    heads_q, group_size, seqlen_q, seqlen_k, causal_shift, qk_scale,
    window_shift, alibi_shift, softcap_in, dropout_p, dropout_scale, seed,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SHIFT_KV_LEN: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, SINKS: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr = False, TMA: tl.constexpr = False,
):
    """out, lse for one (query block, batch x head).

    Q: (B, Hq, Lq, D), K and V: (B, Hkv, Lk, D), Out: (B, Hq, Lq, D), any strides.
    Lse: (B, Hq, Lq) float32, contiguous. KvLens: (B,) int32 (read only if HAS_KV_LENS).
    Alibi: float32 slopes at ``b * stride_alibi_b + h`` (read only if ALIBI); Sinks: (Hq,)
    float32 (read only if SINKS). ``qk_scale = softmax_scale * log2(e)`` (``softcap *
    log2(e)`` with SOFTCAP). ``CAUSAL``: the right bound ``j <= i + causal_shift`` exists
    (causal and/or a right window, folded into one shift by the host); ``WINDOW``: the left
    bound ``j >= i + window_shift``. ``SHIFT_KV_LEN``: add ``kv_len[b]`` to the three shifts.
    ``seed``, ``dropout_p``, ``dropout_scale``: see ``dropout_keep`` (read only if DROPOUT).
    ``VARLEN``: packed sequences (see ``sequence_start``): ``b`` is sequence b of
    ``CuSeqQ``/``CuSeqK`` ((B + 1,) int32), the batch strides are 0, ``seqlen_q`` is
    ``total_q`` (Lse is (Hq, total_q)) and ``seqlen_k`` is ``max_seqlen_k`` (the dropout
    counters' row stride). ``HEAD_DIM`` is padded to the power of two
    ``BLOCK_D`` (masked loads, zero padding adds nothing to a dot product).
    ``UPCAST``: set under Triton's interpreter, whose ``tl.dot`` treats bfloat16 as raw uint16
    bits (garbage); tiles are widened to float32 first there, which is also exactly what a GPU's
    tensor cores compute for 16-bit inputs (exact products, float32 sums).
    ``DOT_PRECISION``: ``FLOAT32_DOT_PRECISION`` ("ieee", exact float32 FMA dots) for float32
    inputs, since plain tf32 would be far worse than the float32 baseline (see
    kernels/flash_attention.py); "tf32" otherwise, which 16-bit inputs ignore.
    ``TMA``: Q, K, V tiles come through tensor descriptors (Hopper's bulk copies; the host
    checks the strides, kernels/tile_loads.py); same math, same masks.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    h_kv = h // group_size
    seqlen_k_visible = seqlen_k
    if HAS_KV_LENS:
        seqlen_k_visible = tl.load(KvLens + b)
    lse_row = pid_bh.to(tl.int64) * seqlen_q
    if VARLEN:
        q_start, k_start, seqlen_q_b, seqlen_k_visible = sequence_start(CuSeqQ, CuSeqK, b)
        lse_row = h.to(tl.int64) * seqlen_q + q_start  # Lse: (Hq, total_q), total_q passed as seqlen_q
        seqlen_q = seqlen_q_b
    if SHIFT_KV_LEN:
        # "bottom_right" with kv_lens: the queries are the last Lq tokens of this sequence
        # (with VARLEN the host's shifts are 0-based and the kernel adds Lk_b - Lq_b).
        kv_shift = seqlen_k_visible
        if VARLEN:
            kv_shift -= seqlen_q
        causal_shift += kv_shift
        window_shift += kv_shift
        alibi_shift += kv_shift
    alibi_slope = 0.0
    if ALIBI:
        alibi_slope = tl.load(Alibi + b * stride_alibi_b + h) * (LOG2E_K / qk_scale)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seqlen_q
    d_ok = offs_d < HEAD_DIM

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    if VARLEN:
        q_base += q_start.to(tl.int64) * stride_qm
        o_base += q_start.to(tl.int64) * stride_om
        k_base += k_start.to(tl.int64) * stride_kn
        v_base += k_start.to(tl.int64) * stride_vn
    if TMA:
        q = load_rows(rows_descriptor(q_base, seqlen_q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D), start_m)
        # From here on k_base, v_base are descriptors; keys past kv_len load as zeros.
        k_base = rows_descriptor(k_base, seqlen_k_visible, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D)
        v_base = rows_descriptor(v_base, seqlen_k_visible, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_D)
    else:
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    if SINKS:
        # The sink is a key with score sinks[h] and a zero value: (m, l) = (sink, 1).
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sinks + h) * LOG2E_K
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    hi = visible_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_M, CAUSAL)
    if VARLEN:
        # The grid covers max_seqlen_q: a block past this sequence's end visits no key and
        # stores nothing (its rows are masked).
        hi = tl.where(start_m < seqlen_q, hi, 0)
    mid = tl.minimum(unmasked_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_N, CAUSAL), hi)
    if WINDOW:
        lo, edge, full_end = window_key_ranges(start_m, mid, hi, window_shift, BLOCK_M, BLOCK_N)
        # Unmasked [edge, full_end), then the masked [lo, edge) and [full_end, hi) in one loop.
        acc, m_i, l_i = _forward_key_blocks(
            acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_d, edge, full_end, seqlen_k_visible, causal_shift, qk_scale,
            window_shift, alibi_shift, alibi_slope, softcap_in, seed, pid_bh, seqlen_k, dropout_p, edge, 0,
            HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, UPCAST, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, DROPOUT, TMA)
        acc, m_i, l_i = _forward_key_blocks(
            acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_d, lo, edge + (hi - full_end), seqlen_k_visible, causal_shift, qk_scale,
            window_shift, alibi_shift, alibi_slope, softcap_in, seed, pid_bh, seqlen_k, dropout_p, edge, full_end - edge,
            HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, UPCAST, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, DROPOUT, TMA)
    else:
        acc, m_i, l_i = _forward_key_blocks(
            acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_d, 0, mid, seqlen_k_visible, causal_shift, qk_scale,
            window_shift, alibi_shift, alibi_slope, softcap_in, seed, pid_bh, seqlen_k, dropout_p, 0, 0,
            HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, UPCAST, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, DROPOUT, TMA)
        acc, m_i, l_i = _forward_key_blocks(
            acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            offs_m, offs_d, mid, hi, seqlen_k_visible, causal_shift, qk_scale,
            window_shift, alibi_shift, alibi_slope, softcap_in, seed, pid_bh, seqlen_k, dropout_p, 0, 0,
            HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, UPCAST, DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, DROPOUT, TMA)

    # Fully masked rows: l = 0, so out = 0 and lse = -inf.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * dropout_scale
    LN2: tl.constexpr = 0.6931471805599453
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))

    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             to_output(out, Out.dtype.element_ty, UPCAST), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Lse + lse_row + offs_m, lse, mask=row_ok)
