"""The one registry of primitives: each forward beside its backward (vector-Jacobian product).

A primitive works on plain ``numpy.ndarray`` values. ``forward(ctx, *arrays, **params)``
returns the output array and stores on ``ctx`` what the backward needs;
``backward(ctx, grad)`` receives ``grad = dL/d(out)`` (the output's shape) and returns one
``dL/d(input)`` per array input, in order, each of that input's shape (``None`` where the
input needs no gradient: ``ctx.needs_input_grad[i]`` says which do).

Non-differentiable arguments (axes, index arrays, masks, exponents) are keyword ``params``,
never inputs: the explicit list of what is not differentiated.

Broadcasting is undone in exactly one place, :func:`unbroadcast`.

The fused composites (softmax, log_softmax, logsumexp, layer_norm, cross_entropy) are
registered here too, so there is one table; their derivations are in ``docs/autograd.md``.
tests/autograd/autograd_composed.py builds each of them from the elementary primitives,
and the tests check the two agree.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import numpy as np

from .special import erf as _erf

Array = np.ndarray
Grads = tuple["Array | None", ...]

REGISTRY: dict[str, type["Primitive"]] = {}


class Context:
    """Scratch space a forward fills for its backward. ``needs_input_grad``: one bool per input."""

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.needs_input_grad = needs_input_grad


class Primitive:
    """A differentiable function on arrays: ``forward`` and ``backward`` side by side."""

    name: ClassVar[str]

    @staticmethod
    def forward(ctx: Context, *arrays: Array, **params: Any) -> Array:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: Array) -> Grads:  # pragma: no cover
        raise NotImplementedError


def register(name: str) -> Callable[[type[Primitive]], type[Primitive]]:
    """Class decorator: put a primitive in :data:`REGISTRY` under ``name``."""

    def decorate(cls: type[Primitive]) -> type[Primitive]:
        if name in REGISTRY:
            raise ValueError(f"primitive {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``grad`` over the axes numpy broadcasting added or stretched, giving ``shape``.

    If ``y = f(broadcast(x))`` then ``dL/dx = sum of dL/dy over every broadcast copy of x``:
    leading axes that ``x`` lacked, and axes where ``x`` had size 1 and ``y`` does not.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    stretched = tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1
    )
    axes = tuple(range(extra)) + stretched
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _normalize_axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    """``axis`` (int, tuple or None for all) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"axis {axis} repeats an axis")
    return tuple(sorted(out))


def _expand_reduced(grad: Array, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Array:
    """Broadcast the gradient of a reduction over ``axes`` back to the input ``shape``."""
    if not keepdims:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


def _keepdims_result(ctx, out: Array, axes: tuple[int, ...], keepdims: bool) -> Array:
    """Return a reduction computed with keepdims=True in the shape the caller asked for,
    remembering (axes, keepdims) for the backward's ``_expand_reduced``."""
    ctx.axes, ctx.keepdims = axes, keepdims
    return out if keepdims else np.squeeze(out, axis=axes)


# --------------------------------------------------------------------------- elementwise


@register("add")
class Add(Primitive):
    """``out = a + b`` (broadcasting). ``da = unbroadcast(g)``, ``db = unbroadcast(g)``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        need_a, need_b = ctx.needs_input_grad
        return (
            unbroadcast(grad, sa) if need_a else None,
            unbroadcast(grad, sb) if need_b else None,
        )


@register("sub")
class Sub(Primitive):
    """``out = a - b`` (broadcasting). ``da = unbroadcast(g)``, ``db = -unbroadcast(g)``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        need_a, need_b = ctx.needs_input_grad
        return (
            unbroadcast(grad, sa) if need_a else None,
            -unbroadcast(grad, sb) if need_b else None,
        )


@register("mul")
class Mul(Primitive):
    """``out = a * b`` (broadcasting). ``da = unbroadcast(g * b)``, ``db = unbroadcast(g * a)``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.a, ctx.b
        need_a, need_b = ctx.needs_input_grad
        return (
            unbroadcast(grad * b, a.shape) if need_a else None,
            unbroadcast(grad * a, b.shape) if need_b else None,
        )


@register("div")
class Div(Primitive):
    """``out = a / b`` (broadcasting). ``da = unbroadcast(g / b)``, ``db = unbroadcast(-g * out / b)``."""

    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.a_shape, ctx.b, ctx.out = a.shape, b, out
        return out

    @staticmethod
    def backward(ctx, grad):
        b, out = ctx.b, ctx.out
        need_a, need_b = ctx.needs_input_grad
        grad_over_b = grad / b
        return (
            unbroadcast(grad_over_b, ctx.a_shape) if need_a else None,
            unbroadcast(-grad_over_b * out, b.shape) if need_b else None,
        )


@register("neg")
class Neg(Primitive):
    """``out = -x``. ``dx = -g``."""

    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, grad):
        return (-grad,)


@register("pow")
class Pow(Primitive):
    """``out = x ** p`` for a scalar exponent ``p`` (a param). ``dx = g * p * x ** (p - 1)``."""

    @staticmethod
    def forward(ctx, x, *, exponent: float):
        ctx.x, ctx.exponent = x, exponent
        return x**exponent

    @staticmethod
    def backward(ctx, grad):
        p = ctx.exponent
        if p == 2.0:
            return (grad * (2.0 * ctx.x),)
        return (grad * (p * ctx.x ** (p - 1.0)),)


@register("exp")
class Exp(Primitive):
    """``out = exp(x)``. ``dx = g * out``."""

    @staticmethod
    def forward(ctx, x):
        ctx.out = np.exp(x)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return (grad * ctx.out,)


@register("log")
class Log(Primitive):
    """``out = log(x)``. ``dx = g / x``."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return np.log(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad / ctx.x,)


@register("sqrt")
class Sqrt(Primitive):
    """``out = sqrt(x)``. ``dx = g / (2 out)``."""

    @staticmethod
    def forward(ctx, x):
        ctx.out = np.sqrt(x)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        return (grad / (2.0 * ctx.out),)


@register("tanh")
class Tanh(Primitive):
    """``out = tanh(x)``. ``dx = g * (1 - out^2)``."""

    @staticmethod
    def forward(ctx, x):
        ctx.out = np.tanh(x)
        return ctx.out

    @staticmethod
    def backward(ctx, grad):
        out = ctx.out
        return (grad * (1.0 - out * out),)


@register("relu")
class Relu(Primitive):
    """``out = max(x, 0)``. ``dx = g * [x > 0]`` (0 at the kink ``x = 0``, like torch)."""

    @staticmethod
    def forward(ctx, x):
        ctx.positive = x > 0
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx, grad):
        return (grad * ctx.positive,)


@register("erf")
class Erf(Primitive):
    """``out = erf(x)`` (see :mod:`flashref.autograd.special`). ``dx = g * 2/sqrt(pi) * exp(-x^2)``."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return _erf(x)

    @staticmethod
    def backward(ctx, grad):
        x = ctx.x
        return (grad * ((2.0 / math.sqrt(math.pi)) * np.exp(-x * x)),)


@register("cast")
class Cast(Primitive):
    """``out = x.astype(dtype)`` (the one explicit way to change precision). ``dx = g.astype(x.dtype)``."""

    @staticmethod
    def forward(ctx, x, *, dtype):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return (grad.astype(ctx.dtype),)


# --------------------------------------------------------------------------- matmul


def _matmul_shapes_error(a_shape, b_shape) -> str | None:
    if len(a_shape) == 0 or len(b_shape) == 0:
        return "matmul needs arrays of at least 1 dimension"
    k_a = a_shape[-1]
    k_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if k_a != k_b:
        return f"inner dimensions differ: {k_a} != {k_b}"
    try:
        np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        return f"batch dimensions {a_shape[:-2]} and {b_shape[:-2]} do not broadcast"
    return None


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b``; an N-D ``a`` against a 2-D ``b`` runs as one 2-D BLAS call."""
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
    return a @ b


@register("matmul")
class Matmul(Primitive):
    """``out = a @ b`` with numpy's rules: batched, batch dims broadcast, 1-D operands.

    Shapes: ``a: (..., M, K)``, ``b: (..., K, N)`` -> ``out: (..., M, N)``; a 1-D ``a`` is
    ``(1, K)`` with that axis dropped from ``out``, a 1-D ``b`` is ``(K, 1)`` likewise.
    ``da = unbroadcast(g @ b^T)``, ``db = unbroadcast(a^T @ g)`` (``^T`` swaps the last two axes),
    computed on the 2-D promotions and reshaped back.
    """

    @staticmethod
    def forward(ctx, a, b):
        problem = _matmul_shapes_error(a.shape, b.shape)
        if problem:
            raise ValueError(f"matmul: a.shape={a.shape} and b.shape={b.shape}: {problem}")
        ctx.a, ctx.b = a, b
        return _matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.a, ctx.b
        need_a, need_b = ctx.needs_input_grad
        a2 = a[None, :] if a.ndim == 1 else a  # (..., M, K)
        b2 = b[:, None] if b.ndim == 1 else b  # (..., K, N)
        g2 = grad
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)  # (..., M, N)
        da = db = None
        if need_a:
            da = unbroadcast(_matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if need_b:
            if b2.ndim == 2 and a2.ndim > 2:
                # Broadcast batch of a against one b: fold the batch into one BLAS call.
                k, n = b2.shape
                db = np.ascontiguousarray(a2).reshape(-1, k).T @ g2.reshape(-1, n)
            else:
                db = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape)
            db = db.reshape(b.shape)
        return da, db


@register("linear")
class Linear(Primitive):
    """``out = x @ weight^T + bias``, torch's layout; ``bias`` optional (``has_bias``).

    Shapes: ``x: (..., in)``, ``weight: (out, in)``, ``bias: (out,)`` -> ``out: (..., out)``.
    With the leading axes flattened (``x2: (M, in)``, ``g2: (M, out)``)::

        dx = g @ weight,   dweight = g2^T @ x2,   dbias = sum over M of g2

    One primitive rather than a matmul, a transpose and a broadcast add: the same
    formulas with one output array instead of two, and each gradient one 2-D BLAS call.
    """

    @staticmethod
    def forward(ctx, x, weight, *bias, has_bias):
        out = _matmul(x, weight.T)
        if has_bias:
            out += bias[0]
        ctx.x, ctx.weight = x, weight
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.x, ctx.weight
        need_x, need_w, *need_b = ctx.needs_input_grad
        g2 = grad.reshape(-1, weight.shape[0])  # (M, out)
        dx = _matmul(grad, weight) if need_x else None
        dw = g2.T @ x.reshape(-1, weight.shape[1]) if need_w else None
        if not need_b:
            return dx, dw
        return dx, dw, (g2.sum(axis=0) if need_b[0] else None)


# --------------------------------------------------------------------------- reductions


@register("sum")
class Sum(Primitive):
    """``out = sum of x over axis`` (int, tuple, None = all; keepdims). ``dx = broadcast(g)``."""

    @staticmethod
    def forward(ctx, x, *, axis=None, keepdims=False):
        axes = _normalize_axes(axis, x.ndim)
        ctx.shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        return np.sum(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return (_expand_reduced(grad, ctx.shape, ctx.axes, ctx.keepdims),)


@register("mean")
class Mean(Primitive):
    """``out = mean of x over axis`` (n elements averaged). ``dx = broadcast(g) / n``."""

    @staticmethod
    def forward(ctx, x, *, axis=None, keepdims=False):
        axes = _normalize_axes(axis, x.ndim)
        ctx.shape, ctx.axes, ctx.keepdims = x.shape, axes, keepdims
        ctx.count = math.prod(x.shape[a] for a in axes)
        return np.mean(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return (_expand_reduced(grad / ctx.count, ctx.shape, ctx.axes, ctx.keepdims),)


@register("max")
class Max(Primitive):
    """``out = max of x over axis``. Ties split the gradient evenly.

    ``dx_i = g * [x_i == out] / #{j : x_j == out}`` within each reduced group: the
    symmetric choice (torch's ``amax`` does the same; ``torch.max(dim)`` instead sends
    everything to one index). Off ties it is the ordinary one-hot derivative.
    """

    @staticmethod
    def forward(ctx, x, *, axis=None, keepdims=False):
        axes = _normalize_axes(axis, x.ndim)
        out = np.max(x, axis=axes, keepdims=True)
        if ctx.needs_input_grad[0]:
            winners = x == out
            ctx.share = winners / np.sum(winners, axis=axes, keepdims=True)
        return _keepdims_result(ctx, out, axes, keepdims)

    @staticmethod
    def backward(ctx, grad):
        return (_expand_reduced(grad, ctx.share.shape, ctx.axes, ctx.keepdims) * ctx.share,)


# --------------------------------------------------------------------------- shape


@register("reshape")
class Reshape(Primitive):
    """``out = x.reshape(shape)``. ``dx = g.reshape(x.shape)``."""

    @staticmethod
    def forward(ctx, x, *, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {x.shape} ({x.size} elements) into {shape}") from None

    @staticmethod
    def backward(ctx, grad):
        return (grad.reshape(ctx.shape),)


@register("transpose")
class Transpose(Primitive):
    """``out = x.transpose(axes)`` (a permutation). ``dx = g.transpose(argsort(axes))``."""

    @staticmethod
    def forward(ctx, x, *, axes):
        axes = tuple(range(x.ndim))[::-1] if axes is None else tuple(int(a) % max(x.ndim, 1) for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} axes of shape {x.shape}")
        ctx.inverse = tuple(np.argsort(axes))
        return np.transpose(x, axes)

    @staticmethod
    def backward(ctx, grad):
        return (np.transpose(grad, ctx.inverse),)


def _is_basic_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items
    )


@register("getitem")
class GetItem(Primitive):
    """``out = x[index]``, basic or advanced numpy indexing.

    ``dx = zeros(x.shape)`` with ``g`` added back at ``index``; with advanced indexing an
    element picked several times collects every pick's gradient (``np.add.at``, a
    scatter-add), which plain assignment would lose.
    """

    @staticmethod
    def forward(ctx, x, *, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        dx = np.zeros(ctx.shape, dtype=ctx.dtype)
        if _is_basic_index(ctx.index):
            dx[ctx.index] = grad  # a basic index addresses each element at most once
        else:
            np.add.at(dx, ctx.index, grad)
        return (dx,)


@register("take")
class Take(Primitive):
    """``out = take(w, indices, axis)`` — a gather, e.g. an embedding lookup.

    Shapes: ``w: (..., V, ...)`` with ``V`` at ``axis``, ``indices: I`` (ints in ``[-V, V)``)
    -> ``out: w.shape[:axis] + I + w.shape[axis+1:]``.
    ``dw`` scatter-adds ``g`` into the looked-up rows; repeated indices accumulate.
    """

    @staticmethod
    def forward(ctx, w, *, indices, axis=0):
        axis = _normalize_axes(axis, w.ndim)[0]
        size = w.shape[axis]
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise IndexError(
                f"take: indices must lie in [-{size}, {size}) for axis {axis} of shape {w.shape}; "
                f"got min {indices.min()}, max {indices.max()}"
            )
        ctx.shape, ctx.dtype, ctx.indices, ctx.axis = w.shape, w.dtype, indices, axis
        return np.take(w, indices, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        axis, indices = ctx.axis, ctx.indices
        dw = np.zeros(ctx.shape, dtype=ctx.dtype)
        rows = np.moveaxis(dw, axis, 0)  # a view: writes land in dw
        index_axes = list(range(axis, axis + indices.ndim))
        g = np.moveaxis(grad, index_axes, list(range(indices.ndim)))
        np.add.at(rows, indices.reshape(-1), g.reshape((-1,) + rows.shape[1:]))
        return (dw,)


@register("concatenate")
class Concatenate(Primitive):
    """``out = concatenate(xs, axis)``. ``dx_k = g`` sliced back along ``axis``."""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        try:
            out = np.concatenate(xs, axis=axis)
        except ValueError as err:
            raise ValueError(
                f"concatenate: shapes {[x.shape for x in xs]} do not line up along axis {axis}: {err}"
            ) from None
        ctx.axis = axis
        ctx.splits = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return out

    @staticmethod
    def backward(ctx, grad):
        parts = np.split(grad, ctx.splits, axis=ctx.axis)
        return tuple(part if need else None for part, need in zip(parts, ctx.needs_input_grad))


@register("stack")
class Stack(Primitive):
    """``out = stack(xs, axis)`` (a new axis). ``dx_k = g`` indexed at ``k`` along ``axis``."""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        try:
            out = np.stack(xs, axis=axis)
        except ValueError as err:
            raise ValueError(f"stack: shapes {[x.shape for x in xs]} must all be equal: {err}") from None
        ctx.axis = axis % out.ndim
        ctx.count = len(xs)
        return out

    @staticmethod
    def backward(ctx, grad):
        lead = (slice(None),) * ctx.axis
        return tuple(grad[lead + (k,)] if need else None for k, need in enumerate(ctx.needs_input_grad))


# --------------------------------------------------------------------------- selection


@register("where")
class Where(Primitive):
    """``out = where(cond, a, b)``; ``cond`` a boolean param, all three broadcast.

    ``da = unbroadcast(g * cond)``, ``db = unbroadcast(g * ~cond)``.
    """

    @staticmethod
    def forward(ctx, a, b, *, cond):
        try:
            out = np.where(cond, a, b)
        except ValueError:
            raise ValueError(
                f"where: cond.shape={cond.shape}, a.shape={a.shape}, b.shape={b.shape} do not broadcast"
            ) from None
        ctx.cond, ctx.shapes = cond, (a.shape, b.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        need_a, need_b = ctx.needs_input_grad
        sa, sb = ctx.shapes
        zero = np.zeros((), dtype=grad.dtype)
        return (
            unbroadcast(np.where(ctx.cond, grad, zero), sa) if need_a else None,
            unbroadcast(np.where(ctx.cond, zero, grad), sb) if need_b else None,
        )


@register("masked_fill")
class MaskedFill(Primitive):
    """``out = x`` with ``value`` wherever ``mask`` (bool, broadcastable to ``x.shape``) is true.

    ``dx = g * ~mask``: filled positions no longer depend on ``x``.
    """

    @staticmethod
    def forward(ctx, x, *, mask, value):
        try:
            full = np.broadcast_shapes(mask.shape, x.shape)
        except ValueError:
            full = None
        if full != x.shape:
            raise ValueError(f"masked_fill: mask.shape={mask.shape} must broadcast to x.shape={x.shape}")
        ctx.mask = mask
        return np.where(mask, np.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, grad):
        return (np.where(ctx.mask, np.zeros((), dtype=grad.dtype), grad),)


# --------------------------------------------------------------------------- fused composites
# Derivations: docs/autograd.md. Composed twins (the check): tests/autograd/autograd_composed.py.


def _shifted_exp(x: Array, axis: int) -> tuple[Array, Array, Array]:
    """``e = exp(x - m)``, ``s = sum(e)``, ``m = max(x)`` along ``axis`` (keepdims).

    A row that is entirely ``-inf`` gets ``m = 0``, hence ``e = 0`` and ``s = 0`` (not NaN).
    """
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isneginf(m), np.zeros((), dtype=x.dtype), m)
    e = x - m
    np.exp(e, out=e)  # in place: e is a fresh array
    return e, np.sum(e, axis=axis, keepdims=True), m


@register("softmax")
class Softmax(Primitive):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``; an all ``-inf`` row gives ``y = 0``.

    ``dx = y * (g - sum(g * y, axis))`` (docs/autograd.md#softmax); zero on an all -inf row.
    """

    @staticmethod
    def forward(ctx, x, *, axis=-1):
        e, s, _ = _shifted_exp(x, axis)
        y = np.divide(e, np.where(s > 0, s, np.ones((), dtype=x.dtype)), out=e)  # e is ours: reuse it
        ctx.y, ctx.axis = y, axis
        return y

    @staticmethod
    def backward(ctx, grad):
        y = ctx.y
        dx = grad * y
        dx -= y * np.sum(dx, axis=ctx.axis, keepdims=True)  # y * (g - sum(g * y))
        return (dx,)


@register("log_softmax")
class LogSoftmax(Primitive):
    """``y = x - max - log(sum(exp(x - max)))`` along ``axis``; an all ``-inf`` row gives ``y = 0``.

    ``dx = g - softmax(x) * sum(g, axis)`` (docs/autograd.md#log_softmax); an all ``-inf``
    row (whose output is the constant 0) gets ``dx = 0``.
    """

    @staticmethod
    def forward(ctx, x, *, axis=-1):
        e, s, m = _shifted_exp(x, axis)
        dead = s == 0
        safe_s = np.where(dead, np.ones((), dtype=x.dtype), s)
        y = np.where(dead, np.zeros((), dtype=x.dtype), x - m - np.log(safe_s))
        ctx.p, ctx.dead, ctx.axis = e / safe_s, dead, axis
        return y

    @staticmethod
    def backward(ctx, grad):
        dx = grad - ctx.p * np.sum(grad, axis=ctx.axis, keepdims=True)
        if ctx.dead.any():
            dx = np.where(ctx.dead, np.zeros((), dtype=dx.dtype), dx)
        return (dx,)


@register("logsumexp")
class LogSumExp(Primitive):
    """``out = max + log(sum(exp(x - max)))`` over ``axis``; an all ``-inf`` group gives ``-inf``.

    ``dx = g * softmax(x)`` (0 for an all ``-inf`` group).
    """

    @staticmethod
    def forward(ctx, x, *, axis=-1, keepdims=False):
        axes = _normalize_axes(axis, x.ndim)
        e, s, m = _shifted_exp(x, axes)
        with np.errstate(divide="ignore"):
            out = m + np.log(s)  # log(0) = -inf is the right answer for an empty group
        ctx.p = e / np.where(s > 0, s, np.ones((), dtype=x.dtype))
        return _keepdims_result(ctx, out, axes, keepdims)

    @staticmethod
    def backward(ctx, grad):
        return (_expand_reduced(grad, ctx.p.shape, ctx.axes, ctx.keepdims) * ctx.p,)


@register("layer_norm")
class LayerNorm(Primitive):
    """torch's layer norm over the last ``k`` axes (``k = normalized_ndim``).

    Shapes: ``x: (*lead, *N)``, ``weight, bias: N`` (each optional: ``has_weight``/``has_bias``).
    Forward, means over the ``N`` axes::

        mu   = mean(x)
        var  = mean((x - mu)^2)            biased, as torch
        rstd = 1 / sqrt(var + eps)         eps inside the root
        xhat = (x - mu) * rstd
        y    = xhat * weight + bias

    Backward (derived in docs/autograd.md#layer_norm), ``g = dL/dy``::

        dxhat   = g * weight
        dx      = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dweight = sum_lead(g * xhat),   dbias = sum_lead(g)
    """

    @staticmethod
    def forward(ctx, x, *params, normalized_ndim, eps, has_weight, has_bias):
        axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
        xhat = x - np.mean(x, axis=axes, keepdims=True)  # x - mu; scaled to xhat in place below
        var = np.mean(np.square(xhat), axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat *= rstd
        y = xhat
        if has_weight:
            y = y * params[0]
        if has_bias:
            y = y + params[-1] if y is xhat else np.add(y, params[-1], out=y)
        ctx.xhat, ctx.rstd, ctx.axes = xhat, rstd, axes
        ctx.weight = params[0] if has_weight else None
        ctx.lead = tuple(range(x.ndim - normalized_ndim))
        ctx.has_weight, ctx.has_bias = has_weight, has_bias
        return y if y is not xhat else xhat.copy()  # the output never aliases what backward reads

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, axes = ctx.xhat, ctx.rstd, ctx.axes
        needs = ctx.needs_input_grad
        grads: list[Array | None] = []
        if needs[0]:
            dxhat = grad * ctx.weight if ctx.has_weight else grad
            mean_dxhat = np.mean(dxhat, axis=axes, keepdims=True)
            mean_dxhat_xhat = np.mean(dxhat * xhat, axis=axes, keepdims=True)
            grads.append(rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat))
        else:
            grads.append(None)
        if ctx.has_weight:
            grads.append(np.sum(grad * xhat, axis=ctx.lead) if needs[1] else None)
        if ctx.has_bias:
            grads.append(np.sum(grad, axis=ctx.lead) if needs[-1] else None)
        return tuple(grads)


@register("cross_entropy")
class CrossEntropy(Primitive):
    """torch's ``cross_entropy`` with class-index targets, ``ignore_index`` and ``label_smoothing``.

    Shapes: ``logits: (M, C)`` (the public wrapper moves torch's class axis 1 last and
    flattens), ``target: (M,)`` ints. With ``p = softmax(logits)``, ``eps = label_smoothing``,
    per row ``loss_i = -(1 - eps) * log p_{i,t_i} - (eps / C) * sum_c log p_{i,c}``, 0 for
    ignored rows; ``reduction``: "none" (per row), "sum", "mean" (sum / number of
    non-ignored rows; 0 when every row is ignored, where torch gives NaN).
    ``dlogits_i = scale_i * (p_i - (1 - eps) * onehot(t_i) - eps / C)`` for kept rows, 0 for
    ignored ones (docs/autograd.md#cross_entropy).
    """

    @staticmethod
    def forward(ctx, logits, *, target, ignore_index, label_smoothing, reduction):
        rows, classes = logits.shape
        kept = target != ignore_index
        safe_target = np.where(kept, target, 0)
        e, s, m = _shifted_exp(logits, -1)
        log_p = logits - (m + np.log(s))
        picked = log_p[np.arange(rows), safe_target]
        loss = -(1.0 - label_smoothing) * picked
        if label_smoothing:
            loss = loss - (label_smoothing / classes) * np.sum(log_p, axis=-1)
        loss = np.where(kept, loss, np.zeros((), dtype=logits.dtype))
        ctx.p, ctx.kept, ctx.target = e / s, kept, safe_target
        ctx.eps, ctx.reduction = label_smoothing, reduction
        ctx.count = int(kept.sum())
        if reduction == "none":
            return loss
        total = np.sum(loss)
        if reduction == "sum":
            return total
        return total / ctx.count if ctx.count else np.zeros((), dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        p, eps = ctx.p, ctx.eps
        rows, classes = p.shape
        dlogits = p - eps / classes if eps else p.copy()
        dlogits[np.arange(rows), ctx.target] -= 1.0 - eps
        if ctx.reduction == "none":
            scale = np.where(ctx.kept, grad, np.zeros((), dtype=grad.dtype))[:, None]
        elif ctx.reduction == "sum":
            scale = (grad * ctx.kept)[:, None]
        else:
            scale = (grad / max(ctx.count, 1) * ctx.kept)[:, None]
        dlogits *= scale
        return (dlogits,)
