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
``j < kv_len[b]`` and, when causal, ``j <= i + causal_shift`` where ``causal_shift`` is 0 for
``"top_left"`` and ``Lk - Lq`` for ``"bottom_right"``. A row that sees no key keeps
``m = -inf`` and ``l = 0`` and is stored as ``out = 0``, ``lse = -inf`` (never NaN).
"""

import triton
import triton.language as tl

from .rounding import to_dot_operand, to_output


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
def _forward_key_blocks(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, lo, hi, seqlen_k_visible, causal_shift, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold key blocks ``[lo, hi)`` into the running (acc, m, l) of one query block."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        # k^T tile (BLOCK_D, BLOCK_N) and v tile (BLOCK_N, BLOCK_D).
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
        if MASKED:
            visible = (keys < seqlen_k_visible)[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= offs_m[:, None] + causal_shift)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # A row that has seen no key yet has m_new = -inf; subtracting 0 instead keeps
        # exp2(-inf - (-inf)) = NaN out of it (its p and alpha are then exactly 0).
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
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
    Q, K, V, Out, Lse, KvLens,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    heads_q, group_size, seqlen_q, seqlen_k, causal_shift, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """out, lse for one (query block, batch x head).

    Q: (B, Hq, Lq, D), K and V: (B, Hkv, Lk, D), Out: (B, Hq, Lq, D), any strides.
    Lse: (B, Hq, Lq) float32, contiguous. KvLens: (B,) int32 (read only if HAS_KV_LENS).
    ``qk_scale = softmax_scale * log2(e)``. ``HEAD_DIM`` is padded to the power of two
    ``BLOCK_D`` (masked loads, zero padding adds nothing to a dot product).
    ``UPCAST``: set under Triton's interpreter, whose ``tl.dot`` treats bfloat16 as raw uint16
    bits (garbage); tiles are widened to float32 first there, which is also exactly what a GPU's
    tensor cores compute for 16-bit inputs (exact products, float32 sums).
    ``DOT_PRECISION``: ``FLOAT32_DOT_PRECISION`` ("ieee", exact float32 FMA dots) for float32
    inputs, since plain tf32 would be far worse than the float32 baseline (see
    kernels/flash_attention.py); "tf32" otherwise, which 16-bit inputs ignore.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    h_kv = h // group_size
    seqlen_k_visible = seqlen_k
    if HAS_KV_LENS:
        seqlen_k_visible = tl.load(KvLens + b)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < seqlen_q
    d_ok = offs_d < HEAD_DIM

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    hi = visible_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_M, CAUSAL)
    mid = tl.minimum(unmasked_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_N, CAUSAL), hi)
    acc, m_i, l_i = _forward_key_blocks(
        acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, 0, mid, seqlen_k_visible, causal_shift, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, UPCAST, DOT_PRECISION)
    acc, m_i, l_i = _forward_key_blocks(
        acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, mid, hi, seqlen_k_visible, causal_shift, qk_scale,
        HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, UPCAST, DOT_PRECISION)

    # Fully masked rows: l = 0, so out = 0 and lse = -inf.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    LN2: tl.constexpr = 0.6931471805599453
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))

    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             to_output(out, Out.dtype.element_ty, UPCAST), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * seqlen_q + offs_m, lse, mask=row_ok)
