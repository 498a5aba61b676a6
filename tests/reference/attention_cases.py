"""Shared helpers for the attention-oracle tests: seeded inputs and torch's second opinion.

torch appears only here, in tests: it is an independent implementation, never the oracle.
"""

from __future__ import annotations

import numpy as np
from seeding import SEED_ENV, derived_seed, session_seed


def fresh_rng(label: str = "") -> np.random.Generator:
    """A generator seeded from this run's fresh seed (tests/seeding.py), printed so a failing
    run can be replayed with FLASHREF_SEED=<n>."""
    seed = derived_seed(label)
    print(f"{label} seed: {seed} (replay: {SEED_ENV}={session_seed()})")
    return np.random.default_rng(seed)


def random_attention(rng, batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim=None):
    """q (B,Hq,Lq,D), k (B,Hkv,Lk,D), v (B,Hkv,Lk,Dv), dout (B,Hq,Lq,Dv), standard normal."""
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    q = rng.standard_normal((batch, q_heads, q_len, head_dim))
    k = rng.standard_normal((batch, kv_heads, kv_len, head_dim))
    v = rng.standard_normal((batch, kv_heads, kv_len, v_head_dim))
    dout = rng.standard_normal((batch, q_heads, q_len, v_head_dim))
    return q, k, v, dout


def torch_attention(q, k, v, dout, *, visible, softmax_scale=None, attn_bias=None, dropout_scale=None):
    """torch's float64 attention and its autograd gradients: (out, dq, dk, dv) as ndarrays.

    visible: bool broadcastable to (B, Hq, Lq, Lk), the oracle's mask. torch SDPA returns
    NaN on a row that sees no key, so such rows are made fully visible for torch and their
    upstream gradient is set to 0: they then add nothing to dk, dv, and dq is 0 there,
    exactly as the oracle's semantics say. Their output is replaced by 0 before returning.
    Without dropout this calls torch.nn.functional.scaled_dot_product_attention (with
    enable_gqa); with a dropout scale (keep / (1 - p)) it spells the math out in torch ops,
    since torch's own dropout cannot be given a mask.
    """
    import torch

    batch, q_heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    bias = np.zeros((1, 1, 1, 1)) if attn_bias is None else np.asarray(attn_bias, np.float64)
    additive = np.where(visible, bias, -np.inf)
    additive = np.broadcast_to(additive, (batch, q_heads, q_len, kv_len)).copy()
    empty = (additive == -np.inf).all(axis=-1)  # (B, Hq, Lq)
    additive[empty] = 0.0
    dout = np.where(empty[..., None], 0.0, dout)
    tq, tk, tv = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    mask = torch.tensor(additive)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if dropout_scale is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, attn_mask=mask, scale=scale, enable_gqa=kv_heads != q_heads
        )
    else:
        group = q_heads // kv_heads
        tk_full = tk.repeat_interleave(group, dim=1)
        tv_full = tv.repeat_interleave(group, dim=1)
        weights = torch.softmax(tq @ tk_full.transpose(-1, -2) * scale + mask, dim=-1)
        out = (weights * torch.tensor(dropout_scale)) @ tv_full
    out.backward(torch.tensor(dout))
    out = np.where(empty[..., None], 0.0, out.detach().numpy())
    return out, tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


def max_abs_diff(a, b) -> float:
    """max |a - b|, treating equal infinities as equal (lse is -inf on empty rows)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):  # inf - inf where same_inf; those are replaced by 0
        diff = np.where(same_inf, 0.0, np.abs(a - b))
    return float(diff.max(initial=0.0))


def plain_visible(batch, q_len, kv_len, *, causal=False, causal_alignment="top_left",
                  kv_lens=None, window_size=(-1, -1)):  # fmt: skip
    """The visibility rule of docs/attention.md, one (b, i, j) at a time: bool (B, Lq, Lk)."""
    left, right = window_size
    visible = np.zeros((batch, q_len, kv_len), dtype=bool)
    for b in range(batch):
        length = kv_len if kv_lens is None else int(kv_lens[b])
        shift = 0 if causal_alignment == "top_left" else length - q_len
        for i in range(q_len):
            for j in range(kv_len):
                visible[b, i, j] = (
                    j < length
                    and (not causal or j <= i + shift)
                    and (left < 0 or j >= i + shift - left)
                    and (right < 0 or j <= i + shift + right)
                )
    return visible
