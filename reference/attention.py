r"""Exact attention in float64: the closed-form forward and backward.

Notation for one (batch b, query head h) pair; kv head ``g = h // (Hq // Hkv)`` (GQA);
the score pipeline and the masks are those of `flashref.reference.attention_inputs`:

    R   = softmax_scale * Q K_g^T                 (Lq, Lk)  raw scores
    T   = softcap * tanh(R / softcap)             softcap > 0; T = R when off
    S   = T + bias + alibi                        masked entries S_ij = -inf
    lse = log(exp(sink_h) + sum_j exp(S_ij))      (Lq,)  the sink term only with sinks;
                                                  -inf for an empty row without sinks
    P   = exp(S - lse[:, None])                   (Lq, Lk)  rows sum to 1 - exp(sink_h - lse)
    Z   = keep / (1 - p)                          (Lq, Lk)  dropout; Z = 1 without dropout
    O   = (P * Z) V_g                             (Lq, Dv)

Backward, given dO = dL/dO (derivation in docs/attention.md):

    dV_g += (P * Z)^T dO                          summed over the query heads sharing g
    dP    = (dO V_g^T) * Z
    D_i   = sum_j P_ij dP_ij = rowsum(dO * O)_i   (the identity that lets kernels skip P)
    dS    = P * (dP - D[:, None])                 softmax's vector-Jacobian product
    dR    = dS * (1 - tanh^2(R / softcap))        softcap's chain rule; dR = dS when off
    dQ    = softmax_scale * dR K_g
    dK_g += softmax_scale * dR^T Q                summed over the query heads sharing g
    dsink_h = -sum_{b,i} exp(sink_h - lse_i) D_i  (the sink is a key with a zero value)

ALiBi and the masks are constants added to S: they pass dS through unchanged.

A row with no visible key ("fully masked") has P = 0, so O = 0, dS = 0 and its gradients
are 0; its lse is -inf, or sink_h with sinks. None of this ever produces a NaN or a
floating-point warning.

The oracle never imports torch or triton.
"""

from __future__ import annotations

import numpy as np

from .attention_inputs import AttentionInputs, as_float64, attention_keywords, check_attention_inputs


@attention_keywords(before="return_dropout_mask")
def attention_forward(
    q,
    k,
    v,
    *,
    return_dropout_mask=False,
    **attention,
):
    """Attention output and per-row log-sum-exp, float64, closed form.

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv) -- any real dtype, computed
    in float64. window_size: (left, right); softcap: float >= 0; alibi_slopes: (Hq,) or
    (B, Hq); sinks: (Hq,); dropout from exactly one of dropout_seed (int, the kernels'
    Philox draw), rng, dropout_mask. Semantics in `flashref.reference.attention_inputs`.

    Returns ``(out, lse)``: out (B, Hq, Lq, Dv), lse (B, Hq, Lq) (lse includes the sink;
    it excludes dropout). A row that sees no key has out = 0 and lse = -inf (sinks[h] with
    sinks). With ``return_dropout_mask=True`` returns ``(out, lse, keep)``, keep: bool
    (B, Hq, Lq, Lk) or None when dropout_p == 0.
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(q.shape, k.shape, v.shape, **attention)
    k_full, v_full = expand_kv_heads(k, inputs.group), expand_kv_heads(v, inputs.group)
    scores, _ = score_tile(q, k_full, inputs)  # (B, Hq, Lq, Lk), -inf where masked
    row_max = scores.max(axis=-1)  # (B, Hq, Lq)
    sink = sink_logits(inputs)  # (1, Hq, 1) or None
    if sink is not None:
        row_max = np.maximum(row_max, sink)
    empty = row_max == -np.inf  # never with sinks: the sink is always "visible"
    shift = np.where(empty, 0.0, row_max)  # an empty row would give -inf - -inf = NaN
    weights = np.exp(scores - shift[..., None])  # exp(-inf) = 0 exactly
    row_sum = weights.sum(axis=-1)  # >= 1 on non-empty rows (the max contributes exp(0))
    if sink is not None:
        row_sum = row_sum + np.exp(sink - shift)
    safe_sum = np.where(empty, 1.0, row_sum)
    probs = weights / safe_sum[..., None]  # (B, Hq, Lq, Lk); 0 on empty rows
    lse = np.where(empty, -np.inf, shift + np.log(safe_sum))
    dropout = inputs.dropout_scale()
    if dropout is not None:
        probs = probs * dropout
    out = probs @ v_full  # (B, Hq, Lq, Dv)
    if return_dropout_mask:
        return out, lse, inputs.dropout_keep()
    return out, lse


@attention_keywords()
def attention_backward(
    q,
    k,
    v,
    out,
    lse,
    dout,
    **attention,
):
    """Gradients of attention, closed form: ``(dq, dk, dv)``, or ``(dq, dk, dv, dsinks)``
    when ``sinks`` is given; float64.

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv), out and dout: (B, Hq, Lq, Dv),
    lse: (B, Hq, Lq) -- ``out`` and ``lse`` as returned by `attention_forward` with the same
    keyword arguments; dsinks: (Hq,). Like a FlashAttention backward it recomputes P from
    ``lse`` and uses ``out`` for ``D = rowsum(dout * out)``; see the module docstring and
    docs/attention.md.

    With dropout, the backward must see the forward's mask: the same ``dropout_seed``
    (the mask is regenerated), ``dropout_mask=keep`` (as returned by
    ``attention_forward(..., return_dropout_mask=True)``), or an ``rng`` in the state the
    forward's rng was in. dk, dv are summed over the query heads sharing a kv head.
    """
    q, k, v = as_float64("q", q), as_float64("k", k), as_float64("v", v)
    inputs = check_attention_inputs(q.shape, k.shape, v.shape, **attention)
    out, lse, dout = check_saved_forward(out, lse, dout, inputs)
    k_full, v_full = expand_kv_heads(k, inputs.group), expand_kv_heads(v, inputs.group)
    scores, dcap = score_tile(q, k_full, inputs)
    probs = probabilities_from_lse(scores, lse)  # (B, Hq, Lq, Lk)
    dropout = inputs.dropout_scale()
    dropped = probs if dropout is None else probs * dropout
    dv_full = dropped.swapaxes(-1, -2) @ dout  # (B, Hq, Lk, Dv)
    dprobs = dout @ v_full.swapaxes(-1, -2)  # (B, Hq, Lq, Lk)
    if dropout is not None:
        dprobs = dprobs * dropout
    delta = (dout * out).sum(axis=-1)  # (B, Hq, Lq) = rowsum(P * dP)
    dscores = probs * (dprobs - delta[..., None])  # (B, Hq, Lq, Lk)
    if dcap is not None:
        dscores = dscores * dcap  # through softcap: d(c tanh(r/c))/dr = 1 - tanh^2
    dq = inputs.softmax_scale * (dscores @ k_full)  # (B, Hq, Lq, D)
    dk_full = inputs.softmax_scale * (dscores.swapaxes(-1, -2) @ q)  # (B, Hq, Lk, D)
    grads = (dq, reduce_kv_heads(dk_full, inputs.group), reduce_kv_heads(dv_full, inputs.group))
    if inputs.sinks is None:
        return grads
    return grads + (sink_gradient(inputs, lse, delta),)


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


def score_tile(
    q: np.ndarray, k_full: np.ndarray, inputs: AttentionInputs,
    rows: slice = slice(None), cols: slice = slice(None),
):  # fmt: skip
    """The scores of a tile and softcap's derivative: ``(S, dT/dR)``.

    q: (B, Hq, r, D) (the query rows ``rows``), k_full: (B, Hq, c, D) (kv heads already
    expanded; the keys ``cols``). S (B, Hq, r, c) = softcap(scale * q k^T) + bias + alibi,
    -inf at hidden keys. dT/dR = 1 - tanh^2(R / softcap), (B, Hq, r, c), or None without
    softcap.
    """
    scores = inputs.softmax_scale * (q @ k_full.swapaxes(-1, -2))
    dcap = None
    if inputs.softcap > 0.0:
        capped = np.tanh(scores / inputs.softcap)
        scores = inputs.softcap * capped
        dcap = 1.0 - capped * capped
    bias = inputs.bias(rows, cols)
    if bias is not None:
        scores = scores + bias
    alibi = inputs.alibi(rows, cols)
    if alibi is not None:
        scores = scores + alibi
    return np.where(inputs.mask(rows, cols), scores, -np.inf), dcap


def sink_logits(inputs: AttentionInputs) -> np.ndarray | None:
    """sinks as (1, Hq, 1), broadcasting against (B, Hq, rows); None without sinks."""
    return None if inputs.sinks is None else inputs.sinks[None, :, None]


def sink_gradient(inputs: AttentionInputs, lse: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """dsinks (Hq,) = -sum_{b,i} exp(sinks[h] - lse_bhi) * D_bhi; lse, delta: (B, Hq, Lq)."""
    sink_probs = np.exp(sink_logits(inputs) - lse)  # the sink's softmax weight; lse >= sink
    return -(sink_probs * delta).sum(axis=(0, 2))


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
