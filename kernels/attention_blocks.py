"""The building blocks of the attention kernels: every ``@triton.jit`` piece that the forward
(kernels/attention_forward.py), the two backward kernels (kernels/attention_backward.py) and
the decoding kernel (kernels/attention_decode.py) share, written once.

Triton inlines every call, so a block costs nothing at run time: the kernels compile to the
code they had when each wrote these lines out (the compile gate's rows, docs/compile_blocks.md).
Constexpr switches are passed through by name and mean what they mean in the kernels
(attention_forward.py's docstring): ``RIGHT_BOUND`` the right bound ``j <= i + causal_shift``
exists, ``LEFT_BOUND`` the left bound ``j >= i + window_shift``, ``SOFTCAP``, ``ALIBI``,
``HAS_KV_LENS``, ``SHIFT_KV_LEN``, ``VARLEN``; ``MASKED``: the tile may hold invisible scores.

In the order a program uses them:

- The program prologue: ``query_prologue`` (all of it, for a query-block program: the forward,
  dQ), made of ``query_program`` (program id -> query block, batch, query head, kv head;
  ``batch_head`` for the other grids), ``sequence_extent`` (kv lengths and packed sequences:
  where batch entry b starts, how long it is), ``row_start`` (its first lse / delta row),
  ``align_shifts`` (``"bottom_right"`` with kv lengths adds ``kv_len[b] - Lq`` to the bounds)
  and ``load_alibi_slope``; then ``query_block_offsets`` (the block's rows and columns) and
  ``head_rows`` (a head's base pointer in each tensor).
- Loop bounds: ``key_ranges`` (a query block's two key loops: unmasked, then masked), made of
  ``visible_key_end``, ``unmasked_key_end`` and ``window_key_ranges``; ``shifted_block_start``
  (one masked loop over two ranges).
- Tile loads: ``load_tile`` (a row tile or its transpose, masked or not, through pointers or a
  tensor descriptor), ``key_block_tiles`` (a key loop step's indices and k, v tiles).
- The score pipeline, on a raw ``q.k`` tile: ``score_tile`` (softcap, then ALiBi),
  ``visible_keys`` (kv length, right and left bounds), ``forward_scores`` (both, invisible
  scores ``-inf``: forward, decode), ``backward_probabilities`` (``P = exp2(s * qk_scale -
  lse)``, invisible ``P`` 0, and the softcap's derivative: dQ, dK/dV).
- The online softmax: ``online_softmax_step`` (running max, sum, rescaled accumulator),
  ``accumulate_pv`` (``acc += P V``), ``finish_rows`` (``out = acc / l``, ``lse``).
- Pieces of math: ``tanh`` (softcap), ``dropout_keep`` (the Philox keep mask).

Argument groups: runtime values that always travel together are passed as one tuple (Triton
unpacks it at compile time; triton 3.6 and 3.9 both take tuples between ``@triton.jit``
functions, constexpr switches stay separate arguments):

- ``bounds = (causal_shift, window_shift)``: the right and left bounds' shifts (``visible_keys``);
- ``score = (alibi_shift, alibi_slope, softcap_in)``: the score variants' scalars (``score_tile``);
- ``walk = (split, gap)``: a masked loop's two ranges (``shifted_block_start``);
- ``k_strides = (stride_row, stride_d)``, ``v_strides`` likewise (``key_block_tiles``);
- ``dropout = (seed, stream, seqlen_k, dropout_p)``: a program's keep-mask stream (``dropout_keep``).

Positions: a block takes query and key positions already broadcast against each other
(``q_pos = offs_m[:, None]``, ``k_pos = keys[None, :]`` for a (query, key) tile; the dK/dV
kernel's transposed tiles pass ``offs_m[None, :]``, ``rows[:, None]``), so one block serves
both orientations.
"""

import triton
import triton.language as tl
from triton.language.random import philox, uint_to_uniform_float

from .rounding import to_dot_operand
from .tile_loads import load_rows

LOG2E = 1.4426950408889634
LOG2E_K = tl.constexpr(LOG2E)  # the same, readable inside @triton.jit functions
# FP8 products on Hopper: wgmma accumulates FP8 products in a narrow (~14-bit) accumulator
# unless told to fold it into float32 every this many products (tl.dot's max_num_imprecise_acc;
# the compile gate checks the FP8 rows' TTGIR for it).
FP8_PRECISE_ACCUMULATION = tl.constexpr(32)


# ---------------------------------------------------------------------------- pieces of math
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
def dropout_keep(dropout, rows, keys):
    """Keep mask of element (stream = b * Hq + h, row i, key j), with ``dropout = (seed, stream,
    seqlen_k, dropout_p)``, bit for bit the oracle's
    (``flashref.reference``'s Philox twin): Philox-4x32-10 with key ``seed`` on the counters
    ``(i * Lk + j mod 2**32, stream, 0, 0)``, first output word, Triton's
    ``uint_to_uniform_float``, keep iff ``u >= p`` in float32. ``rows``/``keys`` broadcast
    against each other (either orientation of a tile). Never materialised: each kernel that
    needs it recomputes it for its tile."""
    seed, stream, seqlen_k, dropout_p = dropout
    c0 = rows * seqlen_k + keys  # int32 arithmetic wraps mod 2**32: the counter's definition
    zero = c0 * 0
    r0, _r1, _r2, _r3 = philox(seed, c0, zero + stream, zero, zero)
    return uint_to_uniform_float(r0) >= dropout_p


# ---------------------------------------------------------------------------- the prologue
@triton.jit
def batch_head(pid_bh, heads):
    """(b, h) of a program over ``batch x heads`` (``pid_bh = b * heads + h``)."""
    return pid_bh // heads, pid_bh % heads


@triton.jit
def query_program(heads_q, group_size):
    """The program of a (query block, batch x query head) grid (the forward, dQ):
    ``(pid_m, pid_bh, b, h, h_kv)``; query heads share kv heads in contiguous groups of
    ``group_size`` (GQA)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = batch_head(pid_bh, heads_q)
    h_kv = h // group_size
    return pid_m, pid_bh, b, h, h_kv


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
def sequence_extent(b, seqlen_q, seqlen_k, KvLens, CuSeqQ, CuSeqK,
                    HAS_KV_LENS: tl.constexpr, VARLEN: tl.constexpr):
    """``(q_start, k_start, seqlen_q, seqlen_k_visible)`` of batch entry b: its first query and
    key row (0 unless ``VARLEN``), its query count (``VARLEN``: from ``CuSeqQ``, else
    ``seqlen_q``) and the keys it sees (``kv_len[b]`` with ``HAS_KV_LENS``, its own key count
    with ``VARLEN``, else ``seqlen_k``)."""
    q_start = 0
    k_start = 0
    seqlen_k_visible = seqlen_k
    if HAS_KV_LENS:
        seqlen_k_visible = tl.load(KvLens + b)
    if VARLEN:
        q_start, k_start, seqlen_q, seqlen_k_visible = sequence_start(CuSeqQ, CuSeqK, b)
    return q_start, k_start, seqlen_q, seqlen_k_visible


@triton.jit
def row_start(bh, h, seqlen_q, q_start, VARLEN: tl.constexpr):
    """Offset (int64) of the first row of an lse / delta array ((B, Hq, Lq) float32) that
    belongs to ``bh = b * Hq + h``; with ``VARLEN`` the array is (Hq, total_q), ``seqlen_q`` is
    ``total_q`` and the sequence starts at ``q_start``."""
    if VARLEN:
        start = h.to(tl.int64) * seqlen_q + q_start
    else:
        start = bh.to(tl.int64) * seqlen_q
    return start


@triton.jit
def align_shifts(causal_shift, window_shift, alibi_shift, seqlen_q, seqlen_k_visible,
                 SHIFT_KV_LEN: tl.constexpr, VARLEN: tl.constexpr):
    """The three bound shifts of batch entry b. ``SHIFT_KV_LEN`` ("bottom_right" with
    kv lengths): the queries are the last Lq tokens of this sequence, so each shift grows by
    ``kv_len[b]`` (with ``VARLEN`` the host's shifts are 0-based and the kernel adds
    ``Lk_b - Lq_b``)."""
    if SHIFT_KV_LEN:
        kv_shift = seqlen_k_visible
        if VARLEN:
            kv_shift -= seqlen_q
        causal_shift += kv_shift
        window_shift += kv_shift
        alibi_shift += kv_shift
    return causal_shift, window_shift, alibi_shift


@triton.jit
def load_alibi_slope(Alibi, b, stride_alibi_b, h, qk_scale, ALIBI: tl.constexpr):
    """ALiBi's slope for batch b, head h (one per program: the forward, dQ, dK/dV; decode's
    packed rows load a vector of them), in the units of the raw ``q.k`` (``slope * log2(e) /
    qk_scale``: the bias enters before the one ``qk * qk_scale`` FMA). Slopes at ``Alibi + b *
    stride_alibi_b + h`` (stride 0: per head). 0 without ``ALIBI`` (then never read)."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(Alibi + b * stride_alibi_b + h) * (LOG2E_K / qk_scale)
    return slope


@triton.jit
def query_prologue(heads_q, group_size, seqlen_q, seqlen_k, causal_shift, window_shift, alibi_shift, qk_scale,
                   KvLens, CuSeqQ, CuSeqK, Alibi, stride_alibi_b,
                   HAS_KV_LENS: tl.constexpr, SHIFT_KV_LEN: tl.constexpr, VARLEN: tl.constexpr,
                   ALIBI: tl.constexpr):
    """The whole prologue of a (query block, batch x query head) program (the forward, dQ), its
    scalars in the order they are derived: ``(pid_m, pid_bh, b, h, h_kv)`` (``query_program``),
    ``(q_start, k_start, seqlen_q, seqlen_k_visible)`` (``sequence_extent``: ``seqlen_q`` becomes
    this sequence's), ``lse_row`` (``row_start``: its lse / delta rows), the three shifts
    (``align_shifts``) and the ALiBi slope (``load_alibi_slope``)."""
    pid_m, pid_bh, b, h, h_kv = query_program(heads_q, group_size)
    q_start, k_start, seqlen_q_b, seqlen_k_visible = sequence_extent(
        b, seqlen_q, seqlen_k, KvLens, CuSeqQ, CuSeqK, HAS_KV_LENS, VARLEN)
    lse_row = row_start(pid_bh, h, seqlen_q, q_start, VARLEN)  # seqlen_q: total_q with VARLEN
    causal_shift, window_shift, alibi_shift = align_shifts(
        causal_shift, window_shift, alibi_shift, seqlen_q_b, seqlen_k_visible, SHIFT_KV_LEN, VARLEN)
    slope = load_alibi_slope(Alibi, b, stride_alibi_b, h, qk_scale, ALIBI)
    return (pid_m, pid_bh, b, h, h_kv, q_start, k_start, seqlen_q_b, seqlen_k_visible, lse_row,
            causal_shift, window_shift, alibi_shift, slope)


# ---------------------------------------------------------------------------- loop bounds
@triton.jit
def head_rows(T, b, h, stride_b, stride_h, start, stride_row, VARLEN: tl.constexpr):
    """The base pointer of (batch entry b, head h)'s rows of ``T``: ``T + b * stride_b + h *
    stride_h`` in 64-bit arithmetic, moved ``start`` rows on with ``VARLEN`` (a packed
    sequence's first row; its batch stride is 0)."""
    base = T + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
    if VARLEN:
        base += start.to(tl.int64) * stride_row
    return base


@triton.jit
def query_block_offsets(pid_m, seqlen_q, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """A query block's indices (the forward, dQ): ``(start_m, offs_m, offs_d, offs_dv, row_ok)``,
    its first row, its rows (BLOCK_M,), q's and k's columns (BLOCK_D,), v's and out's
    (BLOCK_DV,), and which rows exist (``offs_m < seqlen_q``)."""
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    return start_m, offs_m, tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV), offs_m < seqlen_q


@triton.jit
def visible_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_M: tl.constexpr, RIGHT_BOUND: tl.constexpr):
    """One past the last key any row of the query block ``[start_m, start_m + BLOCK_M)`` sees."""
    hi = seqlen_k_visible
    if RIGHT_BOUND:
        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_shift, 0))
    return hi


@triton.jit
def unmasked_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_N: tl.constexpr, RIGHT_BOUND: tl.constexpr):
    """One past the last key block that every row of the query block sees whole (a multiple of
    ``BLOCK_N``): keys below it need neither a bounds mask nor a causal mask."""
    end = seqlen_k_visible
    if RIGHT_BOUND:
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
def key_ranges(start_m, seqlen_q, seqlen_k_visible, causal_shift, window_shift, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, RIGHT_BOUND: tl.constexpr, LEFT_BOUND: tl.constexpr, VARLEN: tl.constexpr):
    """The key blocks a query block ``[start_m, start_m + BLOCK_M)`` visits (the forward, dQ), as
    two loops: ``(unmasked_lo, unmasked_hi, masked_lo, masked_hi, split, gap)``, first the blocks
    every row sees whole (no mask), then the masked ones: the diagonal and the kv-length tail
    ``[mid, hi)``, and with a window also its left edge (one loop over ``[masked_lo, split)``
    and ``[split + gap, masked_hi + gap)``: ``shifted_block_start``). Blocks no row sees are
    never visited; with ``VARLEN`` a query block past its sequence's end visits none."""
    hi = visible_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_M, RIGHT_BOUND)
    if VARLEN:
        # The grid covers max_seqlen_q: a block past this sequence's end visits no key and
        # stores nothing (its rows are masked).
        hi = tl.where(start_m < seqlen_q, hi, 0)
    mid = tl.minimum(unmasked_key_end(start_m, seqlen_k_visible, causal_shift, BLOCK_N, RIGHT_BOUND), hi)
    if LEFT_BOUND:
        lo, edge, full_end = window_key_ranges(start_m, mid, hi, window_shift, BLOCK_M, BLOCK_N)
        # Unmasked [edge, full_end), then the masked [lo, edge) and [full_end, hi) in one loop.
        unmasked_lo, unmasked_hi = edge, full_end
        masked_lo, masked_hi, split, gap = lo, edge + (hi - full_end), edge, full_end - edge
    else:
        # Unmasked [0, mid), then the masked diagonal / tail [mid, hi).
        unmasked_lo, unmasked_hi = 0, mid
        masked_lo, masked_hi, split, gap = mid, hi, 0, 0
    return unmasked_lo, unmasked_hi, masked_lo, masked_hi, split, gap


@triton.jit
def shifted_block_start(block_start, walk, MASKED: tl.constexpr, LEFT_BOUND: tl.constexpr):
    """The block a loop step visits. With a window the masked loop walks two ranges in one loop
    (``walk = (split, gap)``): blocks from ``split`` on are moved ``gap`` rows right (``[lo,
    split)`` then ``[split + gap, hi + gap)``): one masked loop body instead of two keeps the
    register pressure of the plain kernel."""
    split, gap = walk
    start = block_start
    if LEFT_BOUND:
        if MASKED:
            start = tl.where(block_start < split, block_start, block_start + gap)
    return start


# ---------------------------------------------------------------------------- tile loads
@triton.jit
def load_tile(base, start, index, offs_d, stride_row, stride_d, rows,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BOUNDED: tl.constexpr,
              TRANSPOSED: tl.constexpr, TMA: tl.constexpr):
    """The (len(index), BLOCK_D) tile of rows ``index`` (``start + arange``) of a (batch, head)
    slice at ``base`` (row stride ``stride_row``, column stride ``stride_d``), or its transpose
    (``TRANSPOSED``: ``(BLOCK_D, len(index))``, what ``tl.dot(q, kt)`` wants). Zero past
    ``HEAD_DIM`` and, with ``BOUNDED``, at rows ``>= rows``; an unbounded tile at a full head dim
    loads without a mask. With ``TMA`` ``base`` is a tensor descriptor (kernels/tile_loads.py)
    that zero-fills the same places."""
    if TMA:
        tile = load_rows(base, start)
        if TRANSPOSED:
            tile = tl.trans(tile)
    else:
        if TRANSPOSED:
            ptrs = base + index[None, :] * stride_row + offs_d[:, None] * stride_d
            row_ok = (index < rows)[None, :]
            d_ok = (offs_d < HEAD_DIM)[:, None]
        else:
            ptrs = base + index[:, None] * stride_row + offs_d[None, :] * stride_d
            row_ok = (index < rows)[:, None]
            d_ok = (offs_d < HEAD_DIM)[None, :]
        if BOUNDED:
            tile = tl.load(ptrs, mask=row_ok & d_ok, other=0.0)
        elif HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=d_ok, other=0.0)
    return tile


@triton.jit
def key_block_tiles(k_base, v_base, block_start, walk, offs_n, offs_d, offs_dv, k_strides, v_strides,
                    seqlen_k_visible, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
                    MASKED: tl.constexpr, LEFT_BOUND: tl.constexpr, V_TRANSPOSED: tl.constexpr,
                    UPCAST: tl.constexpr, TMA: tl.constexpr):
    """A key loop step's tiles (the forward, dQ): ``(keys, kt, v)`` with the block's key indices
    (``shifted_block_start``), the k^T tile (BLOCK_D, BLOCK_N), float32 with ``UPCAST``, and the
    v tile (BLOCK_N, BLOCK_DV), or v^T with ``V_TRANSPOSED``, as loaded; zero past kv_len (masked
    blocks), past HEAD_DIM in k and past HEAD_DIM_V (V's own head dim, padded to BLOCK_DV) in v
    (``load_tile``); ``k_strides``, ``v_strides``: (row, column) strides of K and V."""
    start_n = shifted_block_start(block_start, walk, MASKED, LEFT_BOUND)
    keys = start_n + offs_n
    kt = load_tile(k_base, start_n, keys, offs_d, k_strides[0], k_strides[1], seqlen_k_visible, HEAD_DIM, BLOCK_D,
                   MASKED, True, TMA)
    v = load_tile(v_base, start_n, keys, offs_dv, v_strides[0], v_strides[1], seqlen_k_visible, HEAD_DIM_V,
                  BLOCK_DV, MASKED, V_TRANSPOSED, TMA)
    if UPCAST:
        kt = kt.to(tl.float32)
    return keys, kt, v


# ---------------------------------------------------------------------------- the score pipeline
@triton.jit
def score_tile(qk, q_pos, k_pos, score, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """The score of a raw ``q.k`` float32 tile, in the units of ``qk`` (times ``qk_scale`` it is
    the log2-domain logit): ``(s, capped)``. ``SOFTCAP``: ``capped = tanh(qk * softcap_in)``
    (the host's ``qk_scale = softcap * log2(e)`` makes it ``softcap * tanh(scale q.k /
    softcap)``), else ``capped = qk``; ``ALIBI``: ``s = capped - slope * |q_pos + alibi_shift -
    k_pos|`` (``alibi_slope`` from ``load_alibi_slope``, a scalar or a column), else ``s = capped``;
    ``score = (alibi_shift, alibi_slope, softcap_in)``."""
    alibi_shift, alibi_slope, softcap_in = score
    capped = qk
    if SOFTCAP:
        capped = tanh(qk * softcap_in)
    s = capped
    if ALIBI:
        s = capped - alibi_slope * tl.abs(q_pos + alibi_shift - k_pos).to(tl.float32)
    return s, capped


@triton.jit
def visible_keys(q_pos, k_pos, key_ok, bounds, RIGHT_BOUND: tl.constexpr, LEFT_BOUND: tl.constexpr):
    """The visibility of a tile: ``key_ok`` (the caller's bound, the kv length say, or None) and,
    with ``RIGHT_BOUND``, ``k_pos <= q_pos + causal_shift`` and, with ``LEFT_BOUND``, ``k_pos >= q_pos +
    window_shift`` (the oracle's mask), ``bounds = (causal_shift, window_shift)``. None if no
    bound applies (the tile needs no mask)."""
    causal_shift, window_shift = bounds
    visible = key_ok
    if RIGHT_BOUND:
        right = k_pos <= q_pos + causal_shift
        if visible is None:
            visible = right
        else:
            visible = visible & right
    if LEFT_BOUND:
        left = k_pos >= q_pos + window_shift
        if visible is None:
            visible = left
        else:
            visible = visible & left
    return visible


@triton.jit
def forward_scores(qk, q_pos, k_pos, key_ok, bounds, score, MASKED: tl.constexpr, RIGHT_BOUND: tl.constexpr,
                   LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """``score_tile`` with the invisible scores at ``-inf`` (when ``MASKED``): what the online
    softmax folds in (the forward, decode)."""
    s, _capped = score_tile(qk, q_pos, k_pos, score, SOFTCAP, ALIBI)
    if MASKED:
        s = tl.where(visible_keys(q_pos, k_pos, key_ok, bounds, RIGHT_BOUND, LEFT_BOUND), s, float("-inf"))
    return s


@triton.jit
def backward_probabilities(qk, q_pos, k_pos, key_ok, lse2, qk_scale, bounds, score, MASKED: tl.constexpr,
                           RIGHT_BOUND: tl.constexpr, LEFT_BOUND: tl.constexpr, SOFTCAP: tl.constexpr,
                           ALIBI: tl.constexpr):
    """The backward's recomputed softmax tile ``(p, dcap)``: ``p = exp2(s * qk_scale - lse2)``
    with ``s`` from ``score_tile`` and ``lse2 = lse * log2(e)`` broadcast like ``q_pos`` (+inf
    for a row that sees no key, so its ``p`` is 0), invisible ``p`` 0 (when ``MASKED``);
    ``dcap = 1 - tanh^2``, the softcap's derivative that ``dS`` takes (``SOFTCAP``; else 1)."""
    s, capped = score_tile(qk, q_pos, k_pos, score, SOFTCAP, ALIBI)
    dcap = 1.0
    if SOFTCAP:
        dcap = 1.0 - capped * capped  # d(softcap * tanh(x)) / d(softcap * x)
    p = tl.math.exp2(s * qk_scale - lse2)
    if MASKED:
        p = tl.where(visible_keys(q_pos, k_pos, key_ok, bounds, RIGHT_BOUND, LEFT_BOUND), p, 0.0)
    return p, dcap


# ---------------------------------------------------------------------------- the online softmax
@triton.jit
def online_softmax_step(s, m_i, l_i, acc, qk_scale, P_OFFSET: tl.constexpr = 0.0):
    """Fold a (BLOCK_M, BLOCK_N) score tile (``-inf`` where invisible) into the running row max
    ``m_i`` (log2 units), sum ``l_i`` and accumulator ``acc``: ``(p, m_new, l_i, acc)`` with
    ``p = exp2(s * qk_scale - m_new)`` and ``l_i``, ``acc`` rescaled by ``exp2(m_i - m_new)``
    (the caller adds ``p V`` to ``acc``: ``accumulate_pv``). ``P_OFFSET`` (FP8: 8, FA3's
    ``Max_offset``): ``p = exp2(s * qk_scale - m_new + P_OFFSET)``, in [0, 2^P_OFFSET]."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    # A row that has seen no key yet has m_new = -inf; subtracting 0 instead keeps
    # exp2(-inf - (-inf)) = NaN out of it (its p and alpha are then exactly 0).
    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    if P_OFFSET != 0.0:
        p = tl.math.exp2(s * qk_scale - (m_sub - P_OFFSET)[:, None])
    else:
        p = tl.math.exp2(s * qk_scale - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def accumulate_pv(acc, p, v, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``acc + p @ v``: p is rounded to v's dtype as on a GPU (float8 e4m3 for FP8 v); under
    the interpreter (``UPCAST``) both are handed over in float32 so that ``tl.dot`` sees true values."""
    p_in = to_dot_operand(p, v.dtype, UPCAST)
    if UPCAST:
        v = v.to(tl.float32)
    # FP8 on Hopper: wgmma's FP8 accumulator keeps ~14 bits unless Triton folds it into the
    # float32 accumulator every 32 products (FA3 does the same); other dtypes: Triton's default.
    return tl.dot(p_in, v, acc, input_precision=DOT_PRECISION,
                  max_num_imprecise_acc=FP8_PRECISE_ACCUMULATION if v.dtype == tl.float8e4nv else None)


@triton.jit
def finish_rows(acc, m_i, l_i):
    """``(out, lse)`` of the rows: ``out = acc / l``, ``lse = (m + log2 l) * ln 2`` (natural
    log); a row that saw no key (``l = 0``) gives ``out = 0``, ``lse = -inf`` (never NaN)."""
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    LN2: tl.constexpr = 0.6931471805599453
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
    return out, lse
