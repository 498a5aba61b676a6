"""``flash_attention_varlen``: packed variable-length attention on the fused kernels.

The same three kernels as ``flash_attention`` (forward, dK/dV, dQ, and the delta kernel)
with their ``VARLEN`` constexpr set: it changes only each program's prologue (where its
sequence starts in the packed tensors, its two lengths, the lse/delta row) and nothing of
the tile loops. The grid covers ``max_seqlen_q`` (``max_seqlen_k`` for dK/dV) query (key)
blocks x ``B * H``; a program past its sequence's end visits no block and stores nothing.

Checks and their cost (docs/guide.md, "Packed sequences and KV-cache decoding"): dtypes,
shapes, devices, ``max_seqlen_*`` types and ``cu_seqlens[0] == 0``/``cu_seqlens[-1] == total``
are read from the tensors' metadata or one element each; "non-decreasing" and "no length above
max_seqlen" need the whole (B + 1,) array: on a GPU they cost one device-to-host sync per
call (two small reductions copied back together), never one per sequence.
``check_cu_seqlens=False`` skips those two for callers that guarantee them (a wrong
``max_seqlen`` then silently drops rows, as FlashAttention's does). Under ``torch.compile`` the
custom op makes them when the graph runs (kernels/library.py).

Layers: this API function -> kernels/checks.py -> the custom ops
``torch.ops.flashref.attention_varlen_forward`` / ``_backward`` (kernels/library.py) ->
kernels/launch.py (``VARLEN`` launches) -> the kernels.
"""

import math

import torch

from . import library  # noqa: F401 -- registers torch.ops.flashref.attention_varlen_forward / _backward
from .checks import check_cu_seqlens_tensor, check_qkv, check_variants, variant_arguments
from .launch import dropout_seed_for

__all__ = ["flash_attention_varlen"]


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                           causal=False, causal_alignment="top_left", softmax_scale=None,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None, sinks=None,
                           dropout_p=0.0, dropout_seed=None, return_lse=False, check_cu_seqlens=True):
    """Fused attention over packed sequences, differentiable in q, k, v (and ``sinks``).

    q: (total_q, Hq, D), k: (total_k, Hkv, D), v: (total_k, Hkv, Dv) (Dv may differ from D:
    MLA), any strides (FlashAttention's varlen layout); cu_seqlens_q, cu_seqlens_k: (B + 1,) int32 (int64 is converted) on q's device,
    starting at 0, non-decreasing (empty sequences allowed), ending at total_q / total_k;
    max_seqlen_q/k: ints >= every length. Sequence b is ``q[cu_q[b]:cu_q[b+1]]`` against
    ``k[cu_k[b]:cu_k[b+1]]``; every keyword means what it means in ``flash_attention`` per
    sequence, with query i and key j counted from the sequence's start ("bottom_right":
    ``shift_b = Lk_b - Lq_b``). alibi_slopes: (Hq,) or (B, Hq). Dropout: element (b, h, i, j)
    uses the Philox counters ``(i * max_seqlen_k + j, b * Hq + h)``, i.e. the dense kernel's on
    the batch padded to (B, Hq, max_seqlen_q, max_seqlen_k).

    Returns out (total_q, Hq, Dv) in q's dtype, and with ``return_lse`` lse (Hq, total_q)
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
    # Value checks (one sync) here in eager mode; under torch.compile the op makes them.
    eager_values = check_cu_seqlens and not torch.compiler.is_compiling()
    check_cu_seqlens_tensor("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q, values=eager_values)
    batch = cu_seqlens_q.shape[0] - 1
    check_cu_seqlens_tensor("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q, batch, values=eager_values)
    # The variant checks see (B, Hq): alibi_slopes may be per sequence.
    check_variants(q.new_empty((batch, q.shape[1], 0, 0)), window_size, softcap, alibi_slopes, sinks,
                    dropout_p, dropout_seed)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[2])
    seed = dropout_seed_for(dropout_p, dropout_seed)
    alibi_slopes, sinks, left, right = variant_arguments(alibi_slopes, sinks, window_size)
    # torch.ops.flashref.attention_varlen_forward (kernels/library.py): a custom op with a fake
    # implementation and an autograd formula, as the dense path's.
    out, lse = torch.ops.flashref.attention_varlen_forward(
        q, k, v, cu_seqlens_q.to(torch.int32).contiguous(), cu_seqlens_k.to(torch.int32).contiguous(),
        int(max_seqlen_q), int(max_seqlen_k), alibi_slopes, sinks, causal, causal_alignment, scale, left, right,
        float(softcap), float(dropout_p), seed, bool(check_cu_seqlens and torch.compiler.is_compiling()))
    return (out, lse) if return_lse else out
