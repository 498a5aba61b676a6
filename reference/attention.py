r"""Exact attention in float64: the closed-form forward and backward, and SDPA on autograd.

Notation for one (batch, query head) pair; kv head ``g = h // (Hq // Hkv)`` (GQA):

    S   = softmax_scale * Q K_g^T + bias         (Lq, Lk)  masked entries S_ij = -inf
    lse = log sum_j exp(S_ij)                    (Lq,)     natural log; -inf for an empty row
    P   = exp(S - lse[:, None])                  (Lq, Lk)  rows sum to 1 (0 for an empty row)
    Z   = keep / (1 - p)                         (Lq, Lk)  dropout; Z = 1 without dropout
    O   = (P * Z) V_g                            (Lq, Dv)

Backward, given dO = dL/dO (derivation in docs/attention.md):

    dV_g += (P * Z)^T dO                         summed over the query heads sharing g
    dP    = (dO V_g^T) * Z
    D_i   = sum_j P_ij dP_ij = rowsum(dO * O)_i  (the identity that lets kernels skip P)
    dS    = P * (dP - D[:, None])                softmax's vector-Jacobian product
    dQ    = softmax_scale * dS K_g
    dK_g += softmax_scale * dS^T Q               summed over the query heads sharing g

A row with no visible key ("fully masked") has P = 0, so O = 0, dS = 0 and its gradients
are 0; its lse is -inf. None of this ever produces a NaN or a floating-point warning.

The oracle never imports torch or triton.
"""

from __future__ import annotations

import numpy as np

from .attention_inputs import AttentionInputs, as_float64, check_attention_inputs


def attention_forward(
    q,
    k,
    v,
    *,
    causal=False,
    causal_alignment="top_left",
    softmax_scale=None,
    kv_lens=None,
    attn_bias=None,
    dropout_p=0.0,
    rng=None,
    dropout_mask=None,
    return_dropout_mask=False,
):
    """Attention output and per-row log-sum-exp, float64, closed form.

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv) -- any real dtype, computed
    in float64. Keyword arguments as in `flashref.reference.attention_inputs`.

    Returns ``(out, lse)``: out (B, Hq, Lq, Dv), lse (B, Hq, Lq) with lse = -inf and
    out = 0 on rows that see no key. With ``return_dropout_mask=True`` returns
    ``(out, lse, keep)``, keep: bool (B, Hq, Lq, Lk) or None when dropout_p == 0; pass it
    back as ``dropout_mask=keep`` to `attention_backward`.
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(
        q.shape, k.shape, v.shape,
        causal=causal, causal_alignment=causal_alignment, softmax_scale=softmax_scale,
        kv_lens=kv_lens, attn_bias=attn_bias, dropout_p=dropout_p, rng=rng,
        dropout_mask=dropout_mask,
    )  # fmt: skip
    k_full, v_full = expand_kv_heads(k, inputs.group), expand_kv_heads(v, inputs.group)
    scores = masked_scores(q, k_full, inputs)  # (B, Hq, Lq, Lk), -inf where masked
    row_max = scores.max(axis=-1)  # (B, Hq, Lq)
    empty = row_max == -np.inf
    shift = np.where(empty, 0.0, row_max)  # an empty row would give -inf - -inf = NaN
    weights = np.exp(scores - shift[..., None])  # exp(-inf) = 0 exactly
    row_sum = weights.sum(axis=-1)  # >= 1 on non-empty rows (the max contributes exp(0))
    safe_sum = np.where(empty, 1.0, row_sum)
    probs = weights / safe_sum[..., None]  # (B, Hq, Lq, Lk); 0 on empty rows
    lse = np.where(empty, -np.inf, shift + np.log(safe_sum))
    dropout = inputs.dropout_scale()
    if dropout is not None:
        probs = probs * dropout
    out = probs @ v_full  # (B, Hq, Lq, Dv)
    if return_dropout_mask:
        return out, lse, inputs.dropout_keep
    return out, lse


def attention_backward(
    q,
    k,
    v,
    out,
    lse,
    dout,
    *,
    causal=False,
    causal_alignment="top_left",
    softmax_scale=None,
    kv_lens=None,
    attn_bias=None,
    dropout_p=0.0,
    rng=None,
    dropout_mask=None,
):
    """Gradients of attention, closed form: ``(dq, dk, dv)`` in float64.

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv), out and dout: (B, Hq, Lq, Dv),
    lse: (B, Hq, Lq) -- ``out`` and ``lse`` as returned by `attention_forward` with the same
    keyword arguments. Like a FlashAttention backward it recomputes P from ``lse`` and uses
    ``out`` for ``D = rowsum(dout * out)``; see the module docstring and docs/attention.md.

    With dropout, the backward must see the forward's mask: pass ``dropout_mask=keep`` (as
    returned by ``attention_forward(..., return_dropout_mask=True)``), or an ``rng`` in the
    state the forward's rng was in. dk, dv are summed over the query heads sharing a kv head.
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(
        q.shape, k.shape, v.shape,
        causal=causal, causal_alignment=causal_alignment, softmax_scale=softmax_scale,
        kv_lens=kv_lens, attn_bias=attn_bias, dropout_p=dropout_p, rng=rng,
        dropout_mask=dropout_mask,
    )  # fmt: skip
    out, lse, dout = check_saved_forward(out, lse, dout, inputs)
    k_full, v_full = expand_kv_heads(k, inputs.group), expand_kv_heads(v, inputs.group)
    probs = probabilities_from_lse(masked_scores(q, k_full, inputs), lse)  # (B, Hq, Lq, Lk)
    dropout = inputs.dropout_scale()
    dropped = probs if dropout is None else probs * dropout
    dv_full = dropped.swapaxes(-1, -2) @ dout  # (B, Hq, Lk, Dv)
    dprobs = dout @ v_full.swapaxes(-1, -2)  # (B, Hq, Lq, Lk)
    if dropout is not None:
        dprobs = dprobs * dropout
    delta = (dout * out).sum(axis=-1)  # (B, Hq, Lq) = rowsum(P * dP)
    dscores = probs * (dprobs - delta[..., None])  # (B, Hq, Lq, Lk)
    dq = inputs.softmax_scale * (dscores @ k_full)  # (B, Hq, Lq, D)
    dk_full = inputs.softmax_scale * (dscores.swapaxes(-1, -2) @ q)  # (B, Hq, Lk, D)
    return dq, reduce_kv_heads(dk_full, inputs.group), reduce_kv_heads(dv_full, inputs.group)


def expand_kv_heads(x: np.ndarray, group: int) -> np.ndarray:
    """(B, Hkv, L, d) -> (B, Hkv * group, L, d): query head h gets kv head h // group."""
    return x if group == 1 else np.repeat(x, group, axis=1)


def reduce_kv_heads(dx: np.ndarray, group: int) -> np.ndarray:
    """(B, Hq, L, d) -> (B, Hq // group, L, d): sum the gradients of the heads sharing a kv head.

    The adjoint of `expand_kv_heads`.
    """
    if group == 1:
        return dx
    b, hq, length, d = dx.shape
    return dx.reshape(b, hq // group, group, length, d).sum(axis=2)


def masked_scores(q: np.ndarray, k_full: np.ndarray, inputs: AttentionInputs) -> np.ndarray:
    """S = softmax_scale * q k^T + bias with -inf at masked keys: (B, Hq, Lq, Lk).

    q: (B, Hq, Lq, D), k_full: (B, Hq, Lk, D) (kv heads already expanded).
    """
    scores = inputs.softmax_scale * (q @ k_full.swapaxes(-1, -2))
    if inputs.attn_bias is not None:
        scores = scores + inputs.attn_bias
    return np.where(inputs.mask(), scores, -np.inf)


def probabilities_from_lse(scores: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """P = exp(S - lse), 0 on rows whose lse is -inf. scores: (..., Lk), lse: (...)."""
    empty = lse == -np.inf
    probs = np.exp(scores - np.where(empty, 0.0, lse)[..., None])
    return np.where(empty[..., None], 0.0, probs)


def check_saved_forward(out, lse, dout, inputs: AttentionInputs):
    """Check out, dout: (B, Hq, Lq, Dv) and lse: (B, Hq, Lq); return them as float64."""
    expected_out = (inputs.batch, inputs.q_heads, inputs.q_len, inputs.v_head_dim)
    out, dout = as_float64("out", out), as_float64("dout", dout)
    lse = as_float64("lse", lse)
    for name, arr, expected in (
        ("out", out, expected_out),
        ("dout", dout, expected_out),
        ("lse", lse, expected_out[:3]),
    ):
        if arr.shape != expected:
            raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    return out, lse, dout
