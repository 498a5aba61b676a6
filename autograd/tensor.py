"""``Tensor``: a numpy array that records the primitives applied to it, and reverse mode.

The graph: every ``Tensor`` made by a primitive while gradients are enabled remembers
``(primitive, ctx, inputs)``. ``backward`` sorts the graph topologically with an explicit
stack (no recursion, so a chain 10^5 deep is fine), then walks it once in reverse,
summing the gradients that reach a node through several uses before passing them on.

Gradient semantics (the same as torch's defaults):

* Gradients accumulate into ``.grad`` of leaves (tensors created by the user with
  ``requires_grad=True``); ``zero_grad()`` resets ``.grad`` to ``None``.
* Intermediate (non-leaf) tensors keep no ``.grad`` unless ``retain_grad()`` was called
  on them, in which case they accumulate like leaves. The graph itself holds no
  gradient state, so ``backward`` may be called again on the same graph: each call adds
  exactly one more copy of the gradients (twice -> 2x, never 4x).
* Under ``no_grad()`` primitives record nothing.

Dtypes: float64 by default, float32 allowed. Mixing float32 and float64 tensors in one
primitive is a ``TypeError``; cast explicitly with ``x.astype(...)``. Python scalars
and integer/bool arrays take the tensor's dtype; a float ndarray of the other precision
is an error, as for tensors.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator, Sequence

import numpy as np

from .primitives import REGISTRY, Context, Primitive

_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this context (or a function it decorates) primitives record no graph."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    """Whether primitives currently record the graph (False inside ``no_grad()``)."""
    return _grad_enabled


def _as_float_array(data: Any, dtype: Any) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    array = np.asarray(data)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"Tensor dtype must be float64 or float32, got {dtype}")
        return array.astype(dtype, copy=False)
    if array.dtype in _FLOAT_DTYPES:
        return array
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    raise TypeError(
        f"Tensor data must be float64 or float32 (or ints/bools, read as float64), got {array.dtype}; "
        "pass dtype= to convert explicitly"
    )


class Tensor:
    """An ``ndarray`` (``.data``, float64 or float32) with an optional gradient.

    ``Tensor(data, requires_grad=False, dtype=None)`` wraps ``data`` without copying when
    it already is a float32/float64 ndarray.
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "_retains_grad", "__weakref__")
    __array_ufunc__ = None  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        self.data: np.ndarray = _as_float_array(data, dtype)
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._node: tuple[type[Primitive], Context, tuple[Tensor, ...]] | None = None
        self._retains_grad = False

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        """True for tensors the user made (no recorded primitive)."""
        return self._node is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=6, threshold=20)}, dtype={self.dtype}{flag})"

    def numpy(self) -> np.ndarray:
        """The underlying array (shared, not copied)."""
        return self.data

    def item(self) -> float:
        """The value of a one-element tensor as a Python float."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return float(self.data.reshape(()))

    def detach(self) -> "Tensor":
        """The same data (shared) as a new leaf that does not require grad."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (``.grad = None``)."""
        self.grad = None

    def retain_grad(self) -> None:
        """Make this non-leaf tensor accumulate its gradient in ``.grad`` during backward."""
        self._retains_grad = True

    # ------------------------------------------------------------------ reverse mode
    def backward(self, grad: Any = None) -> None:
        """Accumulate ``d(self)/d(leaf)`` contracted with ``grad`` into every leaf's ``.grad``.

        ``grad`` has this tensor's shape; it may be omitted only for a one-element tensor
        (it is then 1).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph to walk)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without grad is only defined for a scalar; this tensor has shape "
                    f"{self.shape}: pass grad= an array of that shape"
                )
            seed = np.ones(self.shape, dtype=self.dtype)
        else:
            seed = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if seed.shape != self.shape:
                raise ValueError(f"backward(): grad.shape={seed.shape} must equal the tensor's shape {self.shape}")
            if seed.dtype.kind == "f" and seed.dtype != self.dtype:
                raise TypeError(f"backward(): grad dtype {seed.dtype} differs from the tensor's dtype {self.dtype}")
            seed = seed.astype(self.dtype, copy=False)

        pending: dict[int, np.ndarray] = {id(self): seed}
        owned: set[int] = set()  # ids whose pending array backward allocated (safe to add into)
        for node in reversed(_topological_order(self)):
            key = id(node)
            grad_here = pending.pop(key, None)
            if grad_here is None:
                continue
            owned.discard(key)
            if node._node is None or node._retains_grad:
                node._accumulate(grad_here)
            if node._node is None:
                continue
            primitive, ctx, inputs = node._node
            input_grads = primitive.backward(ctx, grad_here)
            for inp, g in zip(inputs, input_grads):
                if g is None or not inp.requires_grad:
                    continue
                if g.shape != inp.shape:  # an engine bug, not a user error: fail loudly
                    raise AssertionError(
                        f"{primitive.name} backward gave a gradient of shape {g.shape} for an input of shape {inp.shape}"
                    )
                k = id(inp)
                if k not in pending:
                    pending[k] = g
                elif k in owned:
                    pending[k] += g
                else:
                    pending[k] = pending[k] + g
                    owned.add(k)

    def _accumulate(self, grad: np.ndarray) -> None:
        if self.grad is None:
            self.grad = np.array(grad, dtype=self.dtype, copy=True)  # never alias a graph array
        else:
            self.grad += grad

    # ------------------------------------------------------------------ operators
    def _coerce(self, other: Any) -> "Tensor":
        """``other`` as a Tensor of this tensor's dtype (constants) or an error on mixed floats."""
        if isinstance(other, Tensor):
            return other
        if type(other) is float or type(other) is int:  # the common case, without the ABC check
            return Tensor(np.asarray(other, dtype=self.dtype))
        if isinstance(other, (numbers.Number, np.number, np.bool_)) and not isinstance(other, complex):
            return Tensor(np.asarray(other, dtype=self.dtype))
        array = np.asarray(other)
        if array.dtype.kind == "f" and array.dtype != self.dtype:
            raise TypeError(
                f"mixing a {array.dtype} array with a {self.dtype} tensor; cast one explicitly"
            )
        if array.dtype.kind not in "biuf":
            raise TypeError(f"cannot combine a Tensor with {type(other).__name__} of dtype {array.dtype}")
        return Tensor(array.astype(self.dtype, copy=False))

    def __add__(self, other): return apply("add", self, self._coerce(other))
    def __radd__(self, other): return apply("add", self._coerce(other), self)
    def __sub__(self, other): return apply("sub", self, self._coerce(other))
    def __rsub__(self, other): return apply("sub", self._coerce(other), self)
    def __mul__(self, other): return apply("mul", self, self._coerce(other))
    def __rmul__(self, other): return apply("mul", self._coerce(other), self)
    def __truediv__(self, other): return apply("div", self, self._coerce(other))
    def __rtruediv__(self, other): return apply("div", self._coerce(other), self)
    def __matmul__(self, other): return apply("matmul", self, self._coerce(other))
    def __rmatmul__(self, other): return apply("matmul", self._coerce(other), self)
    def __neg__(self): return apply("neg", self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not isinstance(exponent, (numbers.Real, np.number)):
            raise TypeError(f"pow: the exponent must be a Python/NumPy real scalar, got {type(exponent).__name__}")
        return apply("pow", self, exponent=float(exponent))

    def __getitem__(self, index):
        return apply("getitem", self, index=_plain_index(index))

    # ------------------------------------------------------------------ methods
    def exp(self): return apply("exp", self)
    def log(self): return apply("log", self)
    def sqrt(self): return apply("sqrt", self)
    def tanh(self): return apply("tanh", self)
    def relu(self): return apply("relu", self)
    def erf(self): return apply("erf", self)

    def astype(self, dtype: Any) -> "Tensor":
        """This tensor in another float precision (a recorded, differentiable cast)."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"astype: dtype must be float64 or float32, got {dtype}")
        return self if dtype == self.dtype else apply("cast", self, dtype=dtype)

    def sum(self, axis=None, keepdims=False): return apply("sum", self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return apply("mean", self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return apply("max", self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape) -> "Tensor":
        """``x.reshape(2, 3)`` or ``x.reshape((2, 3))``; one ``-1`` allowed, as in numpy."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply("reshape", self, shape=tuple(int(s) for s in shape))

    def transpose(self, *axes) -> "Tensor":
        """Permute axes (``x.transpose(0, 2, 1)`` or a tuple); no axes reverses them all."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return apply("transpose", self, axes=tuple(axes) if axes else None)

    def permute(self, *axes) -> "Tensor":
        """Alias of :meth:`transpose` with explicit axes (torch's name)."""
        return self.transpose(*axes)

    def swapaxes(self, axis1: int, axis2: int) -> "Tensor":
        """Exchange two axes."""
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return apply("transpose", self, axes=tuple(axes))

    @property
    def T(self) -> "Tensor":
        """All axes reversed, like ``ndarray.T``."""
        return apply("transpose", self, axes=None)


def _plain_index(index: Any) -> Any:
    """An index with any Tensor inside replaced by its (integer or boolean) array."""
    if isinstance(index, tuple):
        return tuple(_plain_index(i) for i in index)
    if isinstance(index, Tensor):
        return index_array(index.data, "index")
    if isinstance(index, list):
        return np.asarray(index)
    return index


def index_array(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.data if isinstance(values, Tensor) else values)
    if array.dtype.kind in "iub":
        return array
    if array.dtype.kind == "f" and array.size and np.all(array == np.round(array)):
        return array.astype(np.int64)
    if array.dtype.kind == "f" and not array.size:
        return array.astype(np.int64)
    raise TypeError(f"{what} must hold integers, got dtype {array.dtype}")


def _topological_order(root: Tensor) -> list[Tensor]:
    """Every tensor ``root`` depends on (that requires grad), inputs before their outputs.

    Iterative depth-first post-order: a node is emitted after all of its inputs. A node
    reached again through another use is skipped (it was emitted already, or is still on
    the stack below, which in a DAG means it is not an ancestor of the current node).
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._node is not None:
            for inp in node._node[2]:
                if inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


def apply(name: str, *inputs: Tensor, **params: Any) -> Tensor:
    """Run the registered primitive ``name`` on ``inputs`` and record it for backward."""
    primitive = REGISTRY[name]
    dtype = inputs[0].data.dtype
    if any(t.data.dtype != dtype for t in inputs[1:]):
        dtypes = {t.data.dtype for t in inputs}
        raise TypeError(
            f"{name}: inputs mix dtypes {sorted(str(d) for d in dtypes)} (shapes "
            f"{[t.shape for t in inputs]}); cast explicitly with .astype(...)"
        )
    needs = tuple(_grad_enabled and t.requires_grad for t in inputs)
    record = any(needs)
    ctx = Context(needs)  # all False under no_grad: backward-only work (max's tie shares) is skipped
    try:
        out = primitive.forward(ctx, *(t.data for t in inputs), **params)
    except ValueError as err:
        if str(err).startswith(f"{name}"):
            raise
        raise ValueError(f"{name}: inputs of shapes {[t.shape for t in inputs]}: {err}") from None
    result = Tensor.__new__(Tensor)
    result.data = np.asarray(out)
    result.grad = None
    result.requires_grad = record
    result._retains_grad = False
    result._node = (primitive, ctx, inputs) if record else None
    return result


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """``Tensor(data, requires_grad, dtype)``: float64 unless ``data`` is float32 or ``dtype`` says."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _as_tensor(x: Any, like: Tensor | None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return like._coerce(x) if like is not None else Tensor(x)


def _first_tensor(items: Sequence[Any]) -> Tensor | None:
    return next((t for t in items if isinstance(t, Tensor)), None)


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing ``axis`` (numpy's ``concatenate``)."""
    like = _first_tensor(tensors)
    return apply("concatenate", *(_as_tensor(t, like) for t in tensors), axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join equal-shaped tensors along a new ``axis`` (numpy's ``stack``)."""
    like = _first_tensor(tensors)
    return apply("stack", *(_as_tensor(t, like) for t in tensors), axis=axis)


def split(x: Tensor, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """numpy's ``split``: ``n`` equal parts, or cuts at the given indices along ``axis``.

    Each part is a ``getitem`` slice of ``x`` (so its backward writes into its slice only).
    """
    size = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        n = int(indices_or_sections)
        if n <= 0 or size % n:
            raise ValueError(f"split: axis {axis} of shape {x.shape} (size {size}) does not divide into {n} equal parts")
        cuts = [size // n * i for i in range(1, n)]
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [size]
    axis = axis % x.ndim
    lead = (slice(None),) * axis
    return [x[lead + (slice(lo, max(lo, hi)),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """``a`` where ``cond`` (boolean, not differentiated) else ``b``; all three broadcast."""
    like = _first_tensor([a, b])
    if like is None:
        raise TypeError("where: at least one of a, b must be a Tensor")
    cond = np.asarray(cond.data if isinstance(cond, Tensor) else cond)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: cond must be a boolean array, got dtype {cond.dtype}")
    return apply("where", _as_tensor(a, like), _as_tensor(b, like), cond=cond)


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """``x`` with ``value`` (e.g. ``-inf``) wherever the boolean ``mask`` (broadcast to ``x``) is true."""
    mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"masked_fill: mask must be a boolean array, got dtype {mask.dtype}")
    return apply("masked_fill", x, mask=mask, value=float(value))


def take(weight: Tensor, indices: Any, axis: int = 0) -> Tensor:
    """Gather slices of ``weight`` at integer ``indices`` along ``axis`` (numpy's ``take``).

    Shapes: ``weight: (..., V, ...)``, ``indices: I`` -> ``weight.shape[:axis] + I + weight.shape[axis+1:]``.
    """
    return apply("take", weight, indices=index_array(indices, "take: indices"), axis=axis)
