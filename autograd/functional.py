"""Composites with torch.nn.functional's names and argument order, NumPy's ``axis`` naming.

``softmax``, ``log_softmax``, ``logsumexp``, ``layer_norm`` and ``cross_entropy`` run as
fused primitives (one forward, one hand-derived backward: docs/autograd.md), because the
composed graphs store many intermediates and lose precision or produce NaN on rows that
are entirely ``-inf``. The tests rebuild each from elementary primitives
(tests/autograd/autograd_composed.py) and check that the two agree in value and gradient.
``linear`` is one primitive too (``x @ weight^T + bias`` and its three gradients, in
primitives.py); ``gelu``, ``dropout`` and ``embedding`` are plain compositions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .tensor import Tensor, index_array, apply, take

_REDUCTIONS = ("mean", "sum", "none")


def _check_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a flashref.autograd.Tensor, got {type(x).__name__}")
    return x


# --------------------------------------------------------------------------- softmax family


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``exp(x) / sum(exp(x), axis)``, max-shifted; a row that is entirely ``-inf`` gives zeros.

    ``x``: any shape; output: same shape.
    """
    return apply("softmax", _check_tensor(x, "softmax: x"), axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x - logsumexp(x, axis)``, max-shifted; a row that is entirely ``-inf`` gives zeros (not NaN)."""
    return apply("log_softmax", _check_tensor(x, "log_softmax: x"), axis=axis)


def logsumexp(x: Tensor, axis: int | tuple[int, ...] | None = -1, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x), axis))``, max-shifted; an all ``-inf`` group gives ``-inf`` with zero gradient."""
    return apply("logsumexp", _check_tensor(x, "logsumexp: x"), axis=axis, keepdims=keepdims)


# --------------------------------------------------------------------------- normalisation


def _normalized_shape(x: Tensor, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(
        int(s) for s in normalized_shape
    )
    if len(shape) == 0 or len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(
            f"layer_norm: normalized_shape={shape} must equal the trailing dimensions of x.shape={x.shape}"
        )
    return shape


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """torch's ``layer_norm``: normalise over the trailing ``normalized_shape`` axes.

    Shapes: ``x: (*lead, *N)``, ``weight, bias: N``. Biased variance, ``eps`` inside the
    square root: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.
    """
    _check_tensor(x, "layer_norm: x")
    shape = _normalized_shape(x, normalized_shape)
    params = []
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            _check_tensor(p, f"layer_norm: {name}")
            if p.shape != shape:
                raise ValueError(f"layer_norm: {name}.shape={p.shape} must equal normalized_shape={shape}")
            params.append(p)
    return apply(
        "layer_norm", x, *params,
        normalized_ndim=len(shape), eps=float(eps),
        has_weight=weight is not None, has_bias=bias is not None,
    )


# --------------------------------------------------------------------------- activations


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)`` elementwise."""
    return _check_tensor(x, "relu: x").relu()


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU ``x * Phi(x)``. ``approximate="none"``: ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``
    (exact; erf from :mod:`flashref.autograd.special`). ``"tanh"``:
    ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``, torch's approximation.
    """
    _check_tensor(x, "gelu: x")
    if approximate == "none":
        return x * 0.5 * ((x * _SQRT_HALF).erf() + 1.0)
    if approximate == "tanh":
        inner = (x + (x**3.0) * 0.044715) * _SQRT_2_OVER_PI
        return x * 0.5 * (inner.tanh() + 1.0)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def dropout(x: Tensor, p: float, training: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    The mask is ``rng.random(x.shape) >= p``, so the same generator state gives the same
    mask. ``rng=None`` draws from a fresh unseeded generator (not reproducible); pass one.
    Identity when ``training`` is false or ``p == 0``.
    """
    _check_tensor(x, "dropout: x")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    keep = rng.random(x.shape) >= p
    if p == 1.0:
        return x * np.zeros(x.shape, dtype=x.dtype)
    return x * (keep * (1.0 / (1.0 - p))).astype(x.dtype)


# --------------------------------------------------------------------------- layers


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight^T + bias``, torch's layout. Shapes: ``x: (..., in)``, ``weight: (out, in)``,
    ``bias: (out,)`` -> ``(..., out)``.
    """
    _check_tensor(x, "linear: x")
    _check_tensor(weight, "linear: weight")
    if weight.ndim != 2 or x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: x.shape={x.shape} needs weight of shape (out, {x.shape[-1:]}), got {weight.shape}")
    if bias is None:
        return apply("linear", x, weight, has_bias=False)
    _check_tensor(bias, "linear: bias")
    if bias.shape != weight.shape[:1]:
        raise ValueError(f"linear: bias.shape={bias.shape} must be ({weight.shape[0]},)")
    return apply("linear", x, weight, bias, has_bias=True)


def embedding(indices: Any, weight: Tensor) -> Tensor:
    """Rows of ``weight`` at integer ``indices`` (torch's argument order).

    Shapes: ``indices: I`` (ints in ``[0, V)``), ``weight: (V, D)`` -> ``(*I, D)``. The
    gradient scatter-adds into the used rows; repeated indices accumulate.
    """
    _check_tensor(weight, "embedding: weight")
    idx = index_array(indices, "embedding: indices")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise IndexError(
            f"embedding: indices must lie in [0, {weight.shape[0]}) for weight of shape {weight.shape}; "
            f"got min {idx.min()}, max {idx.max()}"
        )
    return take(weight, idx, axis=0)


# --------------------------------------------------------------------------- losses


def _flatten_classes(logits: Tensor, target: Any, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Check torch's layouts: ``logits (C,)`` with a scalar target, or ``(N, C, *d)`` with ``(N, *d)``."""
    target = index_array(target, f"{name}: target")
    if logits.ndim == 1:
        expected = ()
    elif logits.ndim >= 2:
        expected = logits.shape[:1] + logits.shape[2:]
    else:
        raise ValueError(f"{name}: logits must have a class axis; got shape {logits.shape}")
    if target.shape != expected:
        raise ValueError(
            f"{name}: logits.shape={logits.shape} (class axis 1, as in torch) needs target.shape={expected}, "
            f"got {target.shape}"
        )
    return target, expected


def _check_target_range(target: np.ndarray, classes: int, ignore_index: int) -> None:
    live = target[target != ignore_index]
    if live.size and (live.min() < 0 or live.max() >= classes):
        raise IndexError(
            f"cross_entropy: target values must lie in [0, {classes}) or equal ignore_index={ignore_index}; "
            f"got min {live.min()}, max {live.max()}"
        )


def _rows_by_class(logits: Tensor) -> Tensor:
    """``(C,)`` or ``(N, C, *d)`` logits as ``(M, C)`` rows (class axis last)."""
    if logits.ndim == 1:
        return logits.reshape(1, -1)
    moved = logits if logits.ndim == 2 else logits.transpose(0, *range(2, logits.ndim), 1)
    return moved.reshape(-1, logits.shape[1])


def cross_entropy(
    logits: Tensor,
    target: Any,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """torch's ``cross_entropy`` with class-index targets.

    Shapes: ``logits: (N, C)`` or ``(N, C, d1, ...)`` (classes on axis 1) or ``(C,)``;
    ``target``: ints of shape ``(N,)`` / ``(N, d1, ...)`` / ``()``. Per element
    ``loss = -(1 - s) log p_target - (s / C) sum_c log p_c`` with ``s = label_smoothing``;
    elements whose target is ``ignore_index`` contribute 0. ``reduction="mean"`` divides the
    sum by the number of non-ignored elements (0 if there are none; torch gives NaN),
    ``"sum"`` adds, ``"none"`` returns the per-element losses in ``target``'s shape.
    """
    _check_tensor(logits, "cross_entropy: logits")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    target, target_shape = _flatten_classes(logits, target, "cross_entropy")
    classes = logits.shape[0] if logits.ndim == 1 else logits.shape[1]
    _check_target_range(target, classes, ignore_index)
    loss = apply(
        "cross_entropy", _rows_by_class(logits),
        target=target.reshape(-1), ignore_index=int(ignore_index),
        label_smoothing=float(label_smoothing), reduction=reduction,
    )
    return loss.reshape(target_shape) if reduction == "none" else loss
