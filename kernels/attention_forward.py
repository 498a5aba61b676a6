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

The steps every kernel shares (the prologue, the loop bounds, the score pipeline, the online
softmax step, the finish) are blocks of kernels/attention_blocks.py, called as ``blocks.name``.

Variants (each a ``tl.constexpr``; off, the kernel compiles to the plain one):

- ``SOFTCAP``: the raw product becomes ``tanh(qk * softcap_in)`` with ``softcap_in =
  scale / softcap``, and the host passes ``qk_scale = softcap * log2(e)``, so that
  ``qk * qk_scale`` is ``softcap * tanh(scale q.k / softcap)`` in log2 units.
- ``ALIBI``: ``- slope * |i + alibi_shift - j|``, the slope loaded once per program
  (``Alibi + b * stride_alibi_b + h``; stride 0 for per-head slopes) and divided by
  ``qk_scale`` so the bias enters before the one ``qk * qk_scale`` FMA.
- ``LEFT_BOUND``: the left bound; key blocks left of every row's window are skipped and the
  range is cut in three (masked left edge, unmasked middle, masked diagonal / tail).
- ``SINKS``: the running max and sum start at ``(sinks[h] * log2 e, 1)`` instead of
  ``(-inf, 0)``: the sink is one more "key" with a zero value vector, so ``l`` and ``lse``
  include ``exp(sinks[h])`` and a row that sees no key gives ``out = 0``, ``lse = sinks[h]``.
- ``DROPOUT``: ``p`` enters ``acc`` only where ``dropout_keep`` keeps it, ``l`` sums every
  ``p`` (the lse has no dropout), and ``out`` is scaled by ``dropout_scale = 1 / (1 - p)``.
- ``IS_FP8``: Q, K, V are float8 e4m3 with FA3's descales (the real value is ``fp8 * descale``,
  one float32 per (batch, kv head) each, ``Descale``: (B, Hkv, 3) = (q, k, v)). The raw
  ``q.k`` (float32 sums of exact fp8 products) is scaled by ``qk_scale * dq * dk``; P is
  ``exp2(s - m + 8)`` in [0, 256] (FA3's ``Max_offset = 8``: the 2^8 uses e4m3's range, so a
  small weight rounds to a normal e4m3 number instead of underflowing), rounded to e4m3
  (nearest-even) for the P V product, while ``l`` sums the unrounded float32 ``p``; at the end
  ``l`` drops the 2^8 (exact) and ``acc`` takes ``dv / 2^8``, so ``out = dv sum_j q8(2^8 p_j)
  v_j / sum_j 2^8 p_j`` and ``lse`` is the descaled inputs' (up to float32). With sinks ``l``
  starts at 2^8.
"""

import triton
import triton.language as tl

from . import attention_blocks as blocks
from .rounding import to_output
from .tile_loads import rows_descriptor


@triton.jit
def _forward_key_blocks(
    acc, m_i, l_i, q, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, lo, hi, seqlen_k_visible,
    qk_scale, bounds, score, dropout, walk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, RIGHT_BOUND: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
    TMA: tl.constexpr = False, P_OFFSET: tl.constexpr = 0.0,
):
    """Fold key blocks ``[lo, hi)`` into the running (acc, m, l) of one query block. With a
    window the masked call walks two ranges in one loop (``walk = (split, gap)``): blocks from
    ``split`` on are moved ``gap`` keys right (``[lo, split)`` then ``[split + gap, hi + gap)``):
    one masked loop body in the kernel instead of two keeps the register pressure of the plain
    kernel. ``bounds``, ``score``, ``dropout``, ``k_strides``, ``v_strides``: the argument groups
    of kernels/attention_blocks.py.
    With ``TMA``, ``k_base`` and ``v_base`` are tensor descriptors (kernels/tile_loads.py).
    ``P_OFFSET``: 8 with FP8 (p = exp2(s - m + 8), the module docstring), else 0."""
    offs_n = tl.arange(0, BLOCK_N)
    for block_start in range(lo, hi, BLOCK_N):
        keys, kt, v = blocks.key_block_tiles(
            k_base, v_base, block_start, walk, offs_n, offs_d, offs_dv, k_strides, v_strides, seqlen_k_visible,
            HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, MASKED, LEFT_BOUND, False, UPCAST, TMA)  # k^T; v as loaded
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION,  # (BLOCK_M, BLOCK_N) float32
                    max_num_imprecise_acc=blocks.FP8_PRECISE_ACCUMULATION if q.dtype == tl.float8e4nv else None)
        s = blocks.forward_scores(
            qk, offs_m[:, None], keys[None, :], (keys < seqlen_k_visible)[None, :], bounds, score,
            MASKED, RIGHT_BOUND, LEFT_BOUND, SOFTCAP, ALIBI)
        p, m_new, l_i, acc = blocks.online_softmax_step(s, m_i, l_i, acc, qk_scale, P_OFFSET)
        if DROPOUT:
            # l (hence lse) sums every p; only the kept ones reach the output.
            p = tl.where(blocks.dropout_keep(dropout, offs_m[:, None], keys[None, :]), p, 0.0)
        acc = blocks.accumulate_pv(acc, p, v, UPCAST, DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attention_forward_kernel(
    Q, K, V, Out, Lse, KvLens, Alibi, Sinks, CuSeqQ, CuSeqK, Descale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_alibi_b,
    heads_q, group_size, seqlen_q, seqlen_k, causal_shift, qk_scale,
    window_shift, alibi_shift, softcap_in, dropout_p, dropout_scale, seed,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    RIGHT_BOUND: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SHIFT_KV_LEN: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, SINKS: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr = False, TMA: tl.constexpr = False, IS_FP8: tl.constexpr = False,
):
    """out, lse for one (query block, batch x head).

    Q: (B, Hq, Lq, D), K: (B, Hkv, Lk, D), V: (B, Hkv, Lk, Dv), Out: (B, Hq, Lq, Dv), any strides
    (``HEAD_DIM`` = D, ``HEAD_DIM_V`` = Dv: V, the accumulator and Out live in Dv, padded to
    ``BLOCK_DV``; Dv != D is DeepSeek's MLA).
    Lse: (B, Hq, Lq) float32, contiguous. KvLens: (B,) int32 (read only if HAS_KV_LENS).
    Alibi: float32 slopes at ``b * stride_alibi_b + h`` (read only if ALIBI); Sinks: (Hq,)
    float32 (read only if SINKS). ``qk_scale = softmax_scale * log2(e)`` (``softcap *
    log2(e)`` with SOFTCAP). ``RIGHT_BOUND``: the right bound ``j <= i + causal_shift`` exists
    (causal and/or a right window, folded into one shift by the host); ``LEFT_BOUND``: the left
    bound ``j >= i + window_shift``. ``SHIFT_KV_LEN``: add ``kv_len[b]`` to the three shifts.
    ``seed``, ``dropout_p``, ``dropout_scale``: see ``attention_blocks.dropout_keep`` (read only if DROPOUT).
    ``VARLEN``: packed sequences (see ``attention_blocks.sequence_start``): ``b`` is sequence b of
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
    ``IS_FP8``: Q, K, V float8 e4m3, ``Descale`` (B, Hkv, 3) float32 (read only if IS_FP8),
    Out bfloat16 or another dtype; see the module docstring.
    """
    (pid_m, pid_bh, b, h, h_kv, q_start, k_start, seqlen_q, seqlen_k_visible, lse_row,
     causal_shift, window_shift, alibi_shift, alibi_slope) = blocks.query_prologue(
        heads_q, group_size, seqlen_q, seqlen_k, causal_shift, window_shift, alibi_shift, qk_scale,
        KvLens, CuSeqQ, CuSeqK, Alibi, stride_alibi_b, HAS_KV_LENS, SHIFT_KV_LEN, VARLEN, ALIBI)

    start_m, offs_m, offs_d, offs_dv, row_ok = blocks.query_block_offsets(pid_m, seqlen_q, BLOCK_M, BLOCK_D, BLOCK_DV)
    dv_ok = offs_dv < HEAD_DIM_V

    q_base = blocks.head_rows(Q, b, h, stride_qb, stride_qh, q_start, stride_qm, VARLEN)
    k_base = blocks.head_rows(K, b, h_kv, stride_kb, stride_kh, k_start, stride_kn, VARLEN)
    v_base = blocks.head_rows(V, b, h_kv, stride_vb, stride_vh, k_start, stride_vn, VARLEN)
    o_base = blocks.head_rows(Out, b, h, stride_ob, stride_oh, q_start, stride_om, VARLEN)
    if TMA:
        q_base = rows_descriptor(q_base, seqlen_q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
        # From here on k_base, v_base are descriptors; keys past kv_len load as zeros.
        k_base = rows_descriptor(k_base, seqlen_k_visible, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D)
        v_base = rows_descriptor(v_base, seqlen_k_visible, stride_vn, HEAD_DIM_V, BLOCK_N, BLOCK_DV)
    q = blocks.load_tile(q_base, start_m, offs_m, offs_d, stride_qm, stride_qd, seqlen_q, HEAD_DIM, BLOCK_D,
                         True, False, TMA)
    if UPCAST:
        q = q.to(tl.float32)

    # FA3's Max_offset: p = exp2(s - m + 8) in [0, 256] for FP8 (module docstring).
    P_OFFSET: tl.constexpr = 8.0 if IS_FP8 else 0.0
    P_SCALE: tl.constexpr = 256.0 if IS_FP8 else 1.0
    if IS_FP8:
        descale = Descale + (b * (heads_q // group_size) + h_kv) * 3  # (q, k, v) of this (batch, kv head)
        qk_scale = qk_scale * (tl.load(descale) * tl.load(descale + 1))

    if SINKS:
        # The sink is a key with score sinks[h] and a zero value: (m, l) = (sink, 1) (2^8 for FP8).
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sinks + h) * blocks.LOG2E_K
        l_i = tl.full([BLOCK_M], P_SCALE, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    unmasked_lo, unmasked_hi, masked_lo, masked_hi, split, gap = blocks.key_ranges(
        start_m, seqlen_q, seqlen_k_visible, causal_shift, window_shift, BLOCK_M, BLOCK_N, RIGHT_BOUND, LEFT_BOUND, VARLEN)
    k_strides, v_strides = (stride_kn, stride_kd), (stride_vn, stride_vd)
    bounds, score = (causal_shift, window_shift), (alibi_shift, alibi_slope, softcap_in)
    dropout = (seed, pid_bh, seqlen_k, dropout_p)  # the keep mask's stream: this (batch, head)
    acc, m_i, l_i = _forward_key_blocks(
        acc, m_i, l_i, q, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, unmasked_lo, unmasked_hi,
        seqlen_k_visible, qk_scale, bounds, score, dropout, (0, 0),
        HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_N, False, RIGHT_BOUND, UPCAST, DOT_PRECISION, LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA,
        P_OFFSET)
    acc, m_i, l_i = _forward_key_blocks(
        acc, m_i, l_i, q, k_base, v_base, k_strides, v_strides, offs_m, offs_d, offs_dv, masked_lo, masked_hi,
        seqlen_k_visible, qk_scale, bounds, score, dropout, (split, gap),
        HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, BLOCK_N, True, RIGHT_BOUND, UPCAST, DOT_PRECISION, LEFT_BOUND, SOFTCAP, ALIBI, DROPOUT, TMA,
        P_OFFSET)

    if IS_FP8:
        # Drop P's 2^8 from l (exact) and from acc, which also takes v's descale.
        l_i = l_i * (1.0 / P_SCALE)
        acc = acc * (tl.load(descale + 2) * (1.0 / P_SCALE))
    # Fully masked rows: l = 0, so out = 0 and lse = -inf.
    out, lse = blocks.finish_rows(acc, m_i, l_i)
    if DROPOUT:
        out = out * dropout_scale

    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
             to_output(out, Out.dtype.element_ty, UPCAST), mask=row_ok[:, None] & dv_ok[None, :])
    tl.store(Lse + lse_row + offs_m, lse, mask=row_ok)
