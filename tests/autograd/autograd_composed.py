"""The fused composites rebuilt from elementary primitives: the fused backwards' check.

``softmax``, ``log_softmax``, ``logsumexp``, ``layer_norm`` and ``cross_entropy`` run as
fused primitives in :mod:`flashref.autograd` (one forward, one hand-derived backward:
docs/autograd.md). Each twin here computes the same function from the elementary
primitives only (exp, log, max, sum, mean, sqrt, getitem, masked_fill ...), so its gradient
comes from the engine's chain rule rather than from the derivation; test_functional.py
checks that the two agree in value and gradient. The twins take finite inputs only (an
all ``-inf`` row is where the fused versions are needed).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from flashref.autograd import Tensor, masked_fill
from flashref.autograd.functional import _flatten_classes, _normalized_shape, _rows_by_class


def softmax_composed(x: Tensor, axis: int = -1) -> Tensor:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (the max is a constant shift)."""
    shifted = x - x.max(axis=axis, keepdims=True).detach()
    e = shifted.exp()
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp_composed(x: Tensor, axis: int | tuple[int, ...] | None = -1, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x - m))) + m`` over ``axis``, ``m = max(x)`` held constant."""
    m = x.max(axis=axis, keepdims=True).detach()
    out = (x - m).exp().sum(axis=axis, keepdims=True).log() + m
    if keepdims:
        return out
    return out.reshape(np.squeeze(out.data, axis=axis).shape)


def log_softmax_composed(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``."""
    return x - logsumexp_composed(x, axis=axis, keepdims=True)


def layer_norm_composed(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``(x - mean) / sqrt(biased var + eps) * weight + bias`` over the trailing axes."""
    shape = _normalized_shape(x, normalized_shape)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    centred = x - x.mean(axis=axes, keepdims=True)
    var = (centred * centred).mean(axis=axes, keepdims=True)
    y = centred / (var + eps).sqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def cross_entropy_composed(
    logits: Tensor,
    target: Any,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """torch's ``cross_entropy`` (class indices) from ``log_softmax_composed`` and indexing."""
    target, target_shape = _flatten_classes(logits, target, "cross_entropy")
    rows = _rows_by_class(logits)
    flat = target.reshape(-1)
    classes = rows.shape[1]
    kept = flat != ignore_index
    log_p = log_softmax_composed(rows, axis=-1)
    picked = log_p[np.arange(len(flat)), np.where(kept, flat, 0)]
    loss = picked * -(1.0 - label_smoothing)
    if label_smoothing:
        loss = loss - log_p.sum(axis=-1) * (label_smoothing / classes)
    loss = masked_fill(loss, ~kept, 0.0)
    if reduction == "none":
        return loss.reshape(target_shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / max(int(kept.sum()), 1)
