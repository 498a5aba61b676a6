r"""FlashAttention-2, written plainly in NumPy, one tile at a time.

This is the algorithm the Triton kernels implement, with the same loops, so a kernel
developer can read it side by side with their kernel and compare intermediate tiles
(pass ``on_tile``: it is called with an `AttentionTile` after each tile is processed). The
mathematics is that of `flashref.reference.attention` (derivation in docs/attention.md);
only the order of the arithmetic differs, and the results agree to rounding.

Memory: the (Lq, Lk) score matrix is never formed. A forward step holds one
(B, Hq, block_m, block_n) tile; the backward the same plus a (B, Hq, Lk-block) dK/dV
accumulator and the (B, Hq, Lq, D) dQ accumulator. Dropout from ``dropout_seed`` is drawn
tile by tile, as the kernel draws it (Philox is counter-based); a mask from ``rng`` is the
one exception, drawn whole (B, Hq, Lq, Lk) as the closed form draws it so that both oracles
use the same mask.

Forward, for one query block Q_i (rows r) -- the outer loop, parallel on a GPU:

    m = -inf, l = 0, acc = 0                       running max, running sum, unnormalised O
    (with sinks: m = sink_h, l = 1 -- the sink is a first key with a zero value vector)
    for each key block K_j, V_j (columns c) not wholly masked:
        S     = softcap(scale * Q_i K_j^T) + bias + alibi,  -inf where masked  (bm, bn)
        m_new = max(m, rowmax(S))
        alpha = exp(m - m_new)                      rescales what was summed under the old max
        P~    = exp(S - m_new)
        l     = alpha * l + rowsum(P~)
        acc   = alpha * acc + (P~ * Z) V_j          Z = keep / (1 - p), 1 without dropout
        m     = m_new
    O_i = acc / l,  lse_i = m + log(l)              (0 and -inf on a row that saw no key)

Backward (FA-2): preprocess D = rowsum(dO * O); then for each key block K_j, V_j -- the outer
loop, parallel on a GPU -- walk the query blocks:

    P  = exp(S - lse_i)                             recomputed, never stored
    dV_j += (P * Z)^T dO_i
    dP   = (dO_i V_j^T) * Z
    dS   = P * (dP - D_i)
    dR   = dS * (1 - tanh^2(R / softcap))           R = scale * Q_i K_j^T; dR = dS without softcap
    dK_j += scale * dR^T Q_i
    dQ_i += scale * dR K_j                          (atomic adds, or a separate pass, on a GPU)
    dsinks = -sum exp(sinks - lse) D                in the preprocess, with sinks

GQA: the kv head of query head h is h // (Hq // Hkv); dK, dV are summed over sharing heads.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .attention import (
    check_saved_forward,
    expand_kv_heads,
    reduce_kv_heads,
    score_tile,
    sink_gradient,
    sink_logits,
)
from .attention_inputs import as_float64, attention_keywords, check_attention_inputs


@dataclass(frozen=True)
class AttentionTile:
    """One processed tile, handed to ``on_tile`` for inspection.

    phase: "forward" or "backward"; rows / cols: the query / key positions of the tile;
    values: named arrays, each (B, Hq, len(rows), ...) -- see the functions' docstrings.
    The arrays are copies: changing them does not change the computation.
    """

    phase: str
    rows: slice
    cols: slice
    values: dict


TileHook = Callable[[AttentionTile], None]


@attention_keywords(before="return_dropout_mask")
def blocked_attention_forward(
    q,
    k,
    v,
    *,
    block_m=64,
    block_n=64,
    return_dropout_mask=False,
    on_tile: TileHook | None = None,
    **attention,
):
    """FlashAttention-2 forward tile by tile: ``(out, lse)``, float64, equal to the closed form.

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv); block_m query rows and
    block_n keys per tile (any positive sizes; the last block may be partial). Other
    keyword arguments and the return value as in `attention_forward`.

    ``on_tile`` receives, per tile, values ``scores`` (masked S, (B, Hq, bm, bn)),
    ``row_max`` (m after the tile, (B, Hq, bm)), ``rescale`` (alpha), ``probs`` (P~ before
    dropout), ``row_sum`` (l after the tile) and ``acc`` ((B, Hq, bm, Dv) after the tile).
    Key blocks that the mask hides completely are skipped, as a kernel skips them. With
    sinks the running max and sum start at the sink (m = sinks[h], l = 1), not at -inf, 0.
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(q.shape, k.shape, v.shape, **attention)
    block_m, block_n = _check_block("block_m", block_m), _check_block("block_n", block_n)
    batch, heads = inputs.batch, inputs.q_heads
    out = np.empty((batch, heads, inputs.q_len, inputs.v_head_dim))
    lse = np.empty((batch, heads, inputs.q_len))
    for rows in _blocks(inputs.q_len, block_m):
        q_i = q[:, :, rows]  # (B, Hq, bm, D)
        bm = q_i.shape[2]
        sink = sink_logits(inputs)  # (1, Hq, 1) or None
        if sink is None:
            row_max = np.full((batch, heads, bm), -np.inf)
            row_sum = np.zeros((batch, heads, bm))
        else:  # the sink is a key seen first, its value vector zero: exp(sink - m) = 1
            row_max = np.broadcast_to(sink, (batch, heads, bm)).copy()
            row_sum = np.ones((batch, heads, bm))
        acc = np.zeros((batch, heads, bm, inputs.v_head_dim))
        for cols in _blocks(inputs.kv_len, block_n):
            visible = inputs.mask(rows, cols)  # (B, 1, bm, bn)
            if not visible.any():
                continue
            k_j = expand_kv_heads(k[:, :, cols], inputs.group)  # (B, Hq, bn, D)
            v_j = expand_kv_heads(v[:, :, cols], inputs.group)  # (B, Hq, bn, Dv)
            scores, _ = score_tile(q_i, k_j, inputs, rows, cols)  # (B, Hq, bm, bn)
            new_max = np.maximum(row_max, scores.max(axis=-1))
            # Rows that have seen no visible key yet keep max -inf; shift them by 0 instead
            # so that exp(-inf - -inf) never happens.
            shift = np.where(new_max == -np.inf, 0.0, new_max)
            rescale = np.exp(row_max - shift)  # 0 while the old max was -inf
            probs = np.exp(scores - shift[..., None])  # (B, Hq, bm, bn)
            row_sum = rescale * row_sum + probs.sum(axis=-1)
            drop = inputs.dropout_scale(rows, cols)  # keep / (1 - p) on the tile, or None
            dropped = probs if drop is None else probs * drop
            acc = rescale[..., None] * acc + dropped @ v_j
            row_max = new_max
            if on_tile is not None:
                on_tile(AttentionTile("forward", rows, cols, _copies(
                    scores=scores, row_max=row_max, rescale=rescale, probs=probs,
                    row_sum=row_sum, acc=acc,
                )))  # fmt: skip
        empty = row_sum == 0.0  # no visible key (and no sink): the running sum never grew
        safe_sum = np.where(empty, 1.0, row_sum)
        out[:, :, rows] = acc / safe_sum[..., None]
        lse[:, :, rows] = np.where(empty, -np.inf, row_max + np.log(safe_sum))
    if return_dropout_mask:
        return out, lse, inputs.dropout_keep()
    return out, lse


@attention_keywords(before="on_tile")
def blocked_attention_backward(
    q,
    k,
    v,
    out,
    lse,
    dout,
    *,
    block_m=64,
    block_n=64,
    on_tile: TileHook | None = None,
    **attention,
):
    """FlashAttention-2 backward tile by tile: ``(dq, dk, dv)``, plus ``dsinks`` (Hq,) when
    ``sinks`` is given; float64, equal to the closed form.

    Arguments as in `attention_backward`, plus the block sizes. ``on_tile`` receives, per
    tile, values ``probs`` (P recomputed from lse), ``dprobs`` (dP), ``dscores`` (dS, before
    softcap's chain rule), and
    the running ``dk_acc`` / ``dv_acc`` of the key block ((B, Hq, bn, D) / (B, Hq, bn, Dv),
    per query head, before the GQA sum).
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(q.shape, k.shape, v.shape, **attention)
    block_m, block_n = _check_block("block_m", block_m), _check_block("block_n", block_n)
    out, lse, dout = check_saved_forward(out, lse, dout, inputs)
    scale = inputs.softmax_scale
    delta = (dout * out).sum(axis=-1)  # (B, Hq, Lq): the preprocess pass
    empty = lse == -np.inf
    safe_lse = np.where(empty, 0.0, lse)
    dq = np.zeros_like(q)  # (B, Hq, Lq, D)
    dk_full = np.empty((inputs.batch, inputs.q_heads, inputs.kv_len, inputs.head_dim))
    dv_full = np.empty((inputs.batch, inputs.q_heads, inputs.kv_len, inputs.v_head_dim))
    for cols in _blocks(inputs.kv_len, block_n):
        k_j = expand_kv_heads(k[:, :, cols], inputs.group)  # (B, Hq, bn, D)
        v_j = expand_kv_heads(v[:, :, cols], inputs.group)  # (B, Hq, bn, Dv)
        dk_acc = np.zeros_like(k_j)
        dv_acc = np.zeros_like(v_j)
        for rows in _blocks(inputs.q_len, block_m):
            if not inputs.mask(rows, cols).any():
                continue
            q_i, dout_i = q[:, :, rows], dout[:, :, rows]
            scores, dcap = score_tile(q_i, k_j, inputs, rows, cols)  # (B, Hq, bm, bn)
            probs = np.exp(scores - safe_lse[:, :, rows, None])
            probs = np.where(empty[:, :, rows, None], 0.0, probs)
            drop = inputs.dropout_scale(rows, cols)  # keep / (1 - p) on the tile, or None
            dv_acc += (probs if drop is None else probs * drop).swapaxes(-1, -2) @ dout_i
            dprobs = dout_i @ v_j.swapaxes(-1, -2)
            if drop is not None:
                dprobs = dprobs * drop
            dscores = probs * (dprobs - delta[:, :, rows, None])
            draw = dscores if dcap is None else dscores * dcap  # softcap's 1 - tanh^2
            dk_acc += scale * (draw.swapaxes(-1, -2) @ q_i)
            dq[:, :, rows] += scale * (draw @ k_j)
            if on_tile is not None:
                on_tile(AttentionTile("backward", rows, cols, _copies(
                    probs=probs, dprobs=dprobs, dscores=dscores, dk_acc=dk_acc, dv_acc=dv_acc,
                )))  # fmt: skip
        dk_full[:, :, cols] = dk_acc
        dv_full[:, :, cols] = dv_acc
    grads = (dq, reduce_kv_heads(dk_full, inputs.group), reduce_kv_heads(dv_full, inputs.group))
    if inputs.sinks is None:
        return grads
    return grads + (sink_gradient(inputs, lse, delta),)


def _blocks(length: int, block: int):
    """Consecutive slices of ``block`` positions covering [0, length); the last may be short."""
    return [slice(start, min(start + block, length)) for start in range(0, length, block)]


def _check_block(name: str, block) -> int:
    if not isinstance(block, numbers.Integral) or isinstance(block, bool) or block < 1:
        raise ValueError(f"{name}: expected a positive integer block size, got {block!r}")
    return int(block)


def _copies(**arrays) -> dict:
    return {name: np.array(a, copy=True) for name, a in arrays.items()}
