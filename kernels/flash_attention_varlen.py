"""``flash_attention_varlen``: packed variable-length attention on the fused kernels.

The same three kernels as ``flash_attention`` (forward, dK/dV, dQ, and the delta kernel)
with their ``VARLEN`` constexpr set: it changes only each program's prologue (where its
sequence starts in the packed tensors, its two lengths, the lse/delta row) and nothing of
the tile loops. The grid covers ``max_seqlen_q`` (``max_seqlen_k`` for dK/dV) query (key)
blocks x ``B * H``; a program past its sequence's end visits no block and stores nothing.

Checks and their cost (docs/kernels.md, "Packed variable length"): dtypes, shapes, devices,
``max_seqlen_*`` types and ``cu_seqlens[0] == 0``/``cu_seqlens[-1] == total`` are read from
the tensors' metadata or one element each; "non-decreasing" and "no length above
max_seqlen" need the whole (B + 1,) array: on a GPU they cost one device-to-host sync per
call (two small reductions copied back together), never one per sequence.
``check_cu_seqlens=False`` skips those two for callers that guarantee them (a wrong
``max_seqlen`` then silently drops rows, as FlashAttention's does).
"""

import dataclasses
import math

import torch

from .checks import check_qkv, check_variants, is_int
from .launch import Varlen, dropout_seed_for, launch_backward, launch_forward, resolve_launch

_INT_DTYPES = (torch.int32, torch.int64)


def _check_cu_seqlens(name, cu, total, max_seqlen, q, batch=None, full=True):
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor (B + 1,), got {type(cu).__name__}")
    if cu.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be int32 (or int64, converted), got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B + 1,) with B >= 0, got {tuple(cu.shape)}")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name} must have {batch + 1} entries, like cu_seqlens_q, got {cu.shape[0]}")
    if cu.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {cu.device}")
    if not is_int(max_seqlen) or max_seqlen < 0:
        raise TypeError(f"max_seqlen for {name} must be an int >= 0, got {max_seqlen!r}")
    if total >= 2**31:
        raise ValueError(f"{name}: packed length {total} does not fit int32")
    if not full:
        return
    lengths = cu[1:] - cu[:-1]
    # One transfer for every value-dependent check (the sync documented above).
    first, last, min_len, max_len = torch.stack([
        cu[0].to(torch.int64), cu[-1].to(torch.int64),
        lengths.min().to(torch.int64) if lengths.numel() else cu.new_zeros((), dtype=torch.int64),
        lengths.max().to(torch.int64) if lengths.numel() else cu.new_zeros((), dtype=torch.int64),
    ]).tolist()
    if first != 0:
        raise ValueError(f"{name} must start at 0, got {first}")
    if min_len < 0:
        raise ValueError(f"{name} must be non-decreasing, got {cu.tolist()}")
    if last != total:
        raise ValueError(f"{name}'s last entry must be the packed length {total}, got {last}")
    if max_len > max_seqlen:
        raise ValueError(f"{name}: a sequence of length {max_len} exceeds max_seqlen={max_seqlen}")


class FlashAttentionVarlenFunction(torch.autograd.Function):
    """autograd wiring of the packed path (the dense path's is the custom op's formula,
    kernels/library.py), with the ``Varlen`` description kept on ctx (its int32 tensors are not
    differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, params, alibi, varlen):
        out, lse = launch_forward(q, k, v, params, None, alibi, sinks, varlen)
        ctx.save_for_backward(q, k, v, out, lse, alibi, sinks)
        ctx.params, ctx.varlen = params, varlen
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, alibi, sinks = ctx.saved_tensors
        dq, dk, dv, dsinks = launch_backward(q, k, v, out, lse, dout, ctx.params, None, alibi, sinks, ctx.varlen)
        return dq, dk, dv, dsinks if ctx.needs_input_grad[3] else None, None, None, None


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                           causal=False, causal_alignment="top_left", softmax_scale=None,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                           dropout_p=0.0, dropout_seed=None, return_lse=False, check_cu_seqlens=True):
    """Fused attention over packed sequences, differentiable in q, k, v (and ``sinks``).

    q: (total_q, Hq, D), k and v: (total_k, Hkv, D), any strides (FlashAttention's varlen
    layout); cu_seqlens_q, cu_seqlens_k: (B + 1,) int32 (int64 is converted) on q's device,
    starting at 0, non-decreasing (empty sequences allowed), ending at total_q / total_k;
    max_seqlen_q/k: ints >= every length. Sequence b is ``q[cu_q[b]:cu_q[b+1]]`` against
    ``k[cu_k[b]:cu_k[b+1]]``; every keyword means what it means in ``flash_attention`` per
    sequence, with query i and key j counted from the sequence's start ("bottom_right":
    ``shift_b = Lk_b - Lq_b``). alibi_slopes: (Hq,) or (B, Hq). Dropout: element (b, h, i, j)
    uses the Philox counters ``(i * max_seqlen_k + j, b * Hq + h)``, i.e. the dense kernel's on
    the batch padded to (B, Hq, max_seqlen_q, max_seqlen_k).

    Returns out (total_q, Hq, D) in q's dtype, and with ``return_lse`` lse (Hq, total_q)
    float32. Oracle twin: ``flashref.reference.attention_varlen_forward`` / ``_backward``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be packed (total, heads, head_dim), got shape {tuple(t.shape)}")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v must have the same total_k, got {k.shape[0]} and {v.shape[0]}")
    # The dense checks on (1, H, total, D) views: dtypes, devices, heads, head dims, scale.
    as4 = lambda t: t.transpose(0, 1).unsqueeze(0)  # noqa: E731
    check_qkv(as4(q), as4(k), as4(v), causal, causal_alignment, softmax_scale, None)
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q, full=check_cu_seqlens)
    batch = cu_seqlens_q.shape[0] - 1
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q, batch, full=check_cu_seqlens)
    # The variant checks see (B, Hq): alibi_slopes may be per sequence.
    check_variants(q.new_empty((batch, q.shape[1], 0, 0)), window_size, softcap, alibi_slopes, sinks,
                    dropout_p, dropout_seed)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[2])
    seed = dropout_seed_for(dropout_p, dropout_seed)
    # 0-based shifts (top_left); "bottom_right" adds Lk_b - Lq_b in the kernels (SHIFT_KV_LEN).
    params = resolve_launch(as4(q), as4(k), causal, "top_left", scale, None, window_size, softcap, dropout_p, seed)
    if causal_alignment == "bottom_right":
        params = dataclasses.replace(params, shift_kv_len=True)
    varlen = Varlen(cu_seqlens_q.to(torch.int32).contiguous(), cu_seqlens_k.to(torch.int32).contiguous(),
                    int(max_seqlen_q), int(max_seqlen_k))
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.detach().contiguous()
    if sinks is not None:
        sinks = sinks.contiguous()
    out, lse = FlashAttentionVarlenFunction.apply(q, k, v, sinks, params, alibi_slopes, varlen)
    return (out, lse) if return_lse else out
