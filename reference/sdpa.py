"""scaled_dot_product_attention composed from `flashref.autograd` operations.

The same function as `attention_forward` (same arguments, same semantics, same dropout
mask for the same generator state or seed), built only from differentiable autograd
primitives so that its gradient -- with respect to q, k, v, a Tensor ``attn_bias`` and
Tensor ``sinks`` -- comes from the autograd engine rather than from the closed-form
derivation. The tests compare the two: that comparison is what makes the closed-form
backward trustworthy.

    scores = scale * q @ k^T
    scores = softcap * tanh(scores / softcap)          softcap > 0
    scores = scores (+ bias) (+ alibi)                 masked keys filled with -inf
    P      = softmax([scores, sink])[..., :Lk]         with sinks: one more column, dropped
    P      = P * (1 - empty)                           rows that see no key are set to 0
    out    = (P * keep / (1 - p)) @ v
"""

from __future__ import annotations

import numpy as np

from flashref.autograd import Tensor, concatenate, masked_fill, where
import flashref.autograd.functional as F

from .attention_inputs import as_float64, attention_keywords, check_attention_inputs


@attention_keywords(before="return_dropout_mask")
def scaled_dot_product_attention(
    q,
    k,
    v,
    *,
    return_dropout_mask=False,
    **attention,
):
    """Attention as a differentiable autograd expression; returns a `Tensor` (B, Hq, Lq, Dv).

    q: (B, Hq, Lq, D), k: (B, Hkv, Lk, D), v: (B, Hkv, Lk, Dv) as autograd Tensors or
    ndarrays (ndarrays become constant float64 Tensors). ``attn_bias`` and ``sinks`` (Hq,)
    may be Tensors that require grad. Keyword arguments as in `attention_forward`; with
    ``return_dropout_mask=True`` returns ``(out, keep)``.
    """
    q, k, v = _as_tensor("q", q), _as_tensor("k", k), _as_tensor("v", v)
    inputs = check_attention_inputs(q.shape, k.shape, v.shape, **attention)
    attn_bias, sinks = attention["attn_bias"], attention["sinks"]  # the caller's, maybe Tensors that require grad
    k_full, v_full = _expand_kv_heads(k, inputs.group), _expand_kv_heads(v, inputs.group)
    scores = (q @ k_full.swapaxes(-1, -2)) * inputs.softmax_scale  # (B, Hq, Lq, Lk)
    if inputs.softcap > 0.0:
        scores = (scores * (1.0 / inputs.softcap)).tanh() * inputs.softcap
    if attn_bias is not None:
        bias = attn_bias if isinstance(attn_bias, Tensor) else Tensor(inputs.attn_bias)
        scores = scores + bias
    alibi = inputs.alibi()  # (B, Hq, Lq, Lk) constant, or None
    if alibi is not None:
        scores = scores + Tensor(alibi)
    hidden = ~inputs.mask()  # (B, 1, Lq, Lk)
    scores = masked_fill(scores, hidden, -np.inf)
    if sinks is not None:
        # The sink is one more key per row: logit sinks[h], value vector zero. Append its
        # column, take the softmax over Lk + 1, and drop the column: its weight multiplies 0.
        sink = sinks if isinstance(sinks, Tensor) else Tensor(inputs.sinks)
        column = sink.reshape(1, inputs.q_heads, 1, 1) * Tensor(np.ones((inputs.batch, 1, inputs.q_len, 1)))
        scores = concatenate([scores, column], axis=-1)  # (B, Hq, Lq, Lk + 1)
    # A row with no finite score would make softmax compute -inf - -inf. Such rows are
    # found from the values (a -inf bias can empty a row too), their scores replaced by a
    # constant 0, and their weights zeroed after the softmax: their gradient is then 0.
    # (With sinks no row is empty: the sink's column is finite.)
    empty = (scores.data == -np.inf).all(axis=-1, keepdims=True)  # (B, Hq, Lq, 1)
    if empty.any():
        scores = where(empty, 0.0, scores)
    probs = F.softmax(scores, axis=-1)
    if empty.any():
        probs = probs * Tensor((~empty).astype(np.float64))
    if sinks is not None:
        probs = probs[..., : inputs.kv_len]  # (B, Hq, Lq, Lk)
    dropout = inputs.dropout_scale()
    if dropout is not None:
        probs = probs * Tensor(dropout)
    out = probs @ v_full  # (B, Hq, Lq, Dv)
    if return_dropout_mask:
        return out, inputs.dropout_keep()
    return out


def _as_tensor(name: str, x) -> Tensor:
    if isinstance(x, Tensor):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}: expected a floating-point Tensor, got dtype {x.dtype}")
        return x
    return Tensor(as_float64(name, x))


def _expand_kv_heads(x: Tensor, group: int) -> Tensor:
    """(B, Hkv, L, d) -> (B, Hkv * group, L, d), query head h reading kv head h // group.

    Written as a broadcast multiply by ones, so the autograd's one unbroadcast sums the
    gradients of the heads that share a kv head.
    """
    if group == 1:
        return x
    b, hkv, length, d = x.shape
    ones = Tensor(np.ones((1, 1, group, 1, 1), dtype=x.dtype))
    return (x.reshape(b, hkv, 1, length, d) * ones).reshape(b, hkv * group, length, d)
