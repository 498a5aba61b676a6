"""A CPU stand-in for the ``flash_attn`` package, so that flashref's ``flash-attn`` adapter (its
layout, mask, window, ALiBi, softcap, kv_lens and lse mapping) is judged by the gate on a
machine without a GPU.

``flash_attn_func`` and ``flash_attn_varlen_func`` with FlashAttention 2's signatures
(flash_attn/flash_attn_interface.py) and their documented semantics, in float32 torch, q
(B, Lq, Hq, D) and k, v (B, Lk, Hkv, D) (varlen: (total, H, D) with cu_seqlens):

- causal is aligned at the bottom right: key j visible to query i iff j <= i + Lk - Lq;
- window (left, right), -1 unbounded: i + Lk - Lq - left <= j <= i + Lk - Lq + right; causal
  sets right = 0; a negative side is unbounded;
- softcap > 0: scores softcap * tanh(s / softcap); ALiBi slopes (H,) or (B, H) float32: bias
  -slope * |i + Lk - Lq - j|;
- a row that sees no key gives out 0 and lse +inf; lse (B, H, Lq) (varlen: (H, total_q));
  ``return_attn_probs=True`` returns (out, softmax_lse, S_dmask) (S_dmask empty, as FA2 gives
  without dropout);
- float16 and bfloat16 only, the head counts divisible, no dropout (the stand-in cannot).

``module(bug)`` builds the module, optionally with one planted mapping bug, so a test can show
the gate notices when the semantics differ: "top_left_causal" (causal from the top left) or
"window_sides_swapped".
"""

from __future__ import annotations

import math
import types

import torch

BUGS = ("top_left_causal", "window_sides_swapped")


def _check(q, k, v, dropout_p, alibi_slopes):
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if q.shape[-2] % k.shape[-2] != 0:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if q.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if dropout_p != 0.0:
        raise NotImplementedError("the flash_attn stand-in has no dropout")
    if alibi_slopes is not None and alibi_slopes.dtype != torch.float32:
        raise RuntimeError("ALiBi slopes must have dtype fp32")


def _one_sequence(q, k, v, scale, causal, window_size, softcap, slopes, bug):
    """q (Lq, Hq, D), k and v (Lk, Hkv, D) -> out (Lq, Hq, D) in q's dtype, lse (Hq, Lq) float32."""
    seqlen_q, heads, _ = q.shape
    seqlen_k = k.shape[0]
    group = heads // k.shape[1]
    qf, kf, vf = (t.float().transpose(0, 1) for t in (q, k, v))  # (H, L, D)
    kf, vf = kf.repeat_interleave(group, 0), vf.repeat_interleave(group, 0)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # (Hq, Lq, Lk)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    i = torch.arange(seqlen_q)[:, None]
    j = torch.arange(seqlen_k)[None, :]
    diagonal = i + seqlen_k - seqlen_q  # FlashAttention's: the bottom right
    if slopes is not None:
        scores = scores - slopes.float()[:, None, None] * (diagonal - j).abs()
    left, right = window_size
    if bug == "window_sides_swapped":
        left, right = right, left
    if causal:
        right = 0
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if right >= 0:
        visible &= j <= (i if bug == "top_left_causal" and causal else diagonal) + right
    if left >= 0:
        visible &= j >= diagonal - left
    scores = scores.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)  # -inf where a row sees no key
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out = (probs @ vf).transpose(0, 1).to(q.dtype)
    return out, lse.masked_fill(lse == -math.inf, math.inf)


def module(bug: str | None = None) -> types.ModuleType:
    """A ``flash_attn`` module: the two entry points (``bug``: one of ``BUGS``, or None)."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"bug must be one of {BUGS}, got {bug!r}")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        _check(q, k, v, dropout_p, alibi_slopes)
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
        slopes = None if alibi_slopes is None else alibi_slopes.expand(q.shape[0], q.shape[2])
        rows = [_one_sequence(q[b], k[b], v[b], scale, causal, window_size, softcap,
                              None if slopes is None else slopes[b], bug) for b in range(q.shape[0])]
        out = torch.stack([o for o, _ in rows])
        lse = torch.stack([s for _, s in rows])  # (B, H, Lq)
        return (out, lse, torch.empty(0, dtype=q.dtype)) if return_attn_probs else out

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None):
        _check(q, k, v, dropout_p, alibi_slopes)
        if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
            raise RuntimeError("cu_seqlens_q and cu_seqlens_k must have dtype int32")
        if block_table is not None:
            raise NotImplementedError("the flash_attn stand-in has no paged KV cache")
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
        batch = cu_seqlens_q.numel() - 1
        slopes = None if alibi_slopes is None else alibi_slopes.expand(batch, q.shape[1])
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        if max(b - a for a, b in zip(cq, cq[1:])) > max_seqlen_q or max(b - a for a, b in zip(ck, ck[1:])) > max_seqlen_k:
            raise RuntimeError("a sequence is longer than max_seqlen_q / max_seqlen_k")
        rows = [_one_sequence(q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]], scale, causal, window_size,
                              softcap, None if slopes is None else slopes[b], bug) for b in range(batch)]
        out = torch.cat([o for o, _ in rows])
        lse = torch.cat([s for _, s in rows], dim=1)  # (H, total_q)
        return (out, lse, torch.empty(0, dtype=q.dtype)) if return_attn_probs else out

    mod = types.ModuleType("flash_attn", "CPU stand-in for flash_attn (tests/gate/flash_attn_standin.py)")
    mod.__version__ = "2.8.3+cpu-standin"
    mod.flash_attn_func = flash_attn_func
    mod.flash_attn_varlen_func = flash_attn_varlen_func
    return mod
