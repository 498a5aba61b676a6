"""Implementations a user might bring, for tests/gate: a plain torch attention, and the same
with realistic bugs (each must FAIL the gate) or bad behaviour (each must be an ERROR)."""

from __future__ import annotations

import math

import torch

from flashref.gate import Implementation


def plain_attention(q, k, v, *, causal=False, key_limit=None, scale_factor=1.0, diagonal=0):
    """softmax(q k^T / sqrt(D)) v in float32, q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D): causal
    top-left, GQA. ``key_limit``, ``scale_factor``, ``diagonal``: the planted bugs."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * (scale_factor / math.sqrt(q.shape[-1]))
    lq, lk = q.shape[2], k.shape[2]
    hidden = torch.zeros(lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        hidden = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1 + diagonal)
    if key_limit is not None:
        hidden[:, key_limit(lk):] = True
    probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1).nan_to_num(0.0)
    return (probs @ v.float()).to(q.dtype)


def plain_blhd(q, k, v, **kw):
    """The same in FlashAttention's (B, L, H, D) layout."""
    return plain_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw).transpose(1, 2)


def off_by_one_causal(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, diagonal=1 if causal else 0)


def truncated_scale(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, scale_factor=0.9999)


def drops_last_partial_block(q, k, v, causal=False):
    return plain_attention(q, k, v, causal=causal, key_limit=lambda n: n // 16 * 16 if n > 16 else n)


def raises(q, k, v, **kw):
    raise RuntimeError("kernel launch failed")


def wrong_shape(q, k, v, **kw):
    return plain_attention(q, k, v, **kw)[..., :-1]


def returns_nan(q, k, v, **kw):
    out = plain_attention(q, k, v, **kw)
    return out + float("nan") * (torch.arange(out.shape[-1], device=out.device) == 0)


def writes_into_q(q, k, v, **kw):
    with torch.no_grad():
        q.mul_(1.0)
        q[..., 0] = 0.0
    return plain_attention(q, k, v, **kw)


PLAIN = Implementation("plain", plain_attention, features={"causal_top_left", "gqa"})

