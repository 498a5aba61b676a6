"""Every primitive and composite, gradient-checked on small random off-kink inputs.

:data:`OP_CASES` is the table: one entry per operation (primitives by their registry
name, composites as ``F.name``), each with a function of Tensors and a recipe for its
inputs. :func:`check_all_ops` runs :func:`flashref.autograd.gradcheck` on each and
returns one :class:`OpCheck` per case; ``flashref audit gradcheck`` prints that as a
table and the tests run the same table, so the audit and CI check the same thing.

Inputs are chosen away from kinks and singularities (relu and max at distinct, nonzero
values; log, sqrt and fractional powers on positive numbers; division by ``|b| >= 0.5``)
because a central difference across a kink measures nothing about the derivative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import functional as F
from .gradcheck import gradcheck
from .tensor import Tensor, concatenate, masked_fill, split, stack, take, where

InputRecipe = Callable[[np.random.Generator], list]


@dataclass(frozen=True)
class OpCase:
    """``fn(*inputs)`` for ``inputs = make_inputs(rng)`` (float64 arrays are differentiated)."""

    name: str
    fn: Callable[..., Tensor]
    make_inputs: InputRecipe


@dataclass(frozen=True)
class OpCheck:
    """One row of the audit: the op, its worst relative gradient error, and the verdict."""

    op: str
    worst_rel_error: float
    passed: bool
    seed: int


def normal(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Standard normal values of ``shape``."""
    return lambda rng: rng.standard_normal(shape)


def positive(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Values in [0.5, 2): safe for log, sqrt, fractional powers and division."""
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def off_zero(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Values with ``0.2 <= |x| < 2`` and random sign: off relu's kink and safe as divisors."""
    return lambda rng: rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)


def distinct(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Values at least 0.1 apart (a shuffled grid plus small noise): no ties for max."""
    def make(rng: np.random.Generator) -> np.ndarray:
        size = int(np.prod(shape))
        grid = rng.permutation(size) * 0.1 - size * 0.05
        return (grid + rng.uniform(-0.02, 0.02, size)).reshape(shape)
    return make


def inputs(*makers: Callable[[np.random.Generator], np.ndarray]) -> InputRecipe:
    """A recipe drawing each input from its maker, in order."""
    return lambda rng: [make(rng) for make in makers]


def _dropout_fixed_mask(x: Tensor) -> Tensor:
    # A fresh generator per call: every finite-difference evaluation sees the same mask.
    return F.dropout(x, 0.3, training=True, rng=np.random.default_rng(1234))


def _softcap(s: Tensor, cap: float = 1.5) -> Tensor:
    # Attention's softcap (docs/attention.md): cap * tanh(s / cap), as reference/sdpa.py builds it.
    return (s * (1.0 / cap)).tanh() * cap


def _with_sink_column(scores: Tensor, sinks: Tensor) -> Tensor:
    # An attention sink as reference/sdpa.py builds it: one more column per row holding the
    # head's sink logit; softmax over Lk + 1, then the column is dropped (its value is 0).
    batch, heads, rows, cols = scores.shape
    column = sinks.reshape(1, heads, 1, 1) * Tensor(np.ones((batch, 1, rows, 1)))
    return F.softmax(concatenate([scores, column], axis=-1), axis=-1)[..., :cols]


# A window (left 1, right 0, bottom_right: Lk - Lq = 2) and ALiBi (slopes 0.5, 0.25) for
# 3 queries and 5 keys, constants as the oracle's attention_inputs would make them.
_I, _J = np.arange(3)[:, None] + 2, np.arange(5)[None, :]
_WINDOW_HIDDEN = (_J < _I - 1) | (_J > _I)
_ALIBI = -np.array([0.5, 0.25])[None, :, None, None] * np.abs(_I - _J)


def _attention_variants(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor) -> Tensor:
    # softcap, then the constant ALiBi bias, the window's -inf, the sink column, P V.
    scores = _softcap((q @ k.swapaxes(-1, -2)) * 0.5) + Tensor(_ALIBI)
    return _with_sink_column(masked_fill(scores, _WINDOW_HIDDEN, -np.inf), sinks) @ v


_TARGETS = np.array([2, -100, 0, 4, 4, 1])
_TARGETS_3D = np.array([[1, 3, -100], [0, 0, 2]])
_IDS = np.array([[0, 3, 3], [1, 0, 3]])

OP_CASES: tuple[OpCase, ...] = (
    # elementwise, with broadcasting
    OpCase("add", lambda a, b: a + b, inputs(normal(3, 4), normal(4))),
    OpCase("sub", lambda a, b: a - b, inputs(normal(2, 1, 3), normal(4, 1))),
    OpCase("mul", lambda a, b: a * b, inputs(normal(3, 4), normal(3, 1))),
    OpCase("div", lambda a, b: a / b, inputs(normal(2, 3), off_zero(1, 3))),
    OpCase("neg", lambda a: -a, inputs(normal(3, 2))),
    OpCase("pow", lambda a: a**3.0 + a**-1.5 + a**0.5, inputs(positive(2, 3))),
    OpCase("exp", lambda a: a.exp(), inputs(normal(3, 3))),
    OpCase("log", lambda a: a.log(), inputs(positive(3, 3))),
    OpCase("sqrt", lambda a: a.sqrt(), inputs(positive(3, 3))),
    OpCase("tanh", lambda a: a.tanh(), inputs(normal(3, 3))),
    OpCase("relu", lambda a: a.relu(), inputs(off_zero(3, 4))),
    OpCase("erf", lambda a: (a * 2.0).erf(), inputs(normal(3, 4))),
    # matmul: batched, broadcast batch dims, 1-D operands
    OpCase("matmul", lambda a, b: a @ b, inputs(normal(2, 1, 3, 4), normal(3, 4, 2))),
    OpCase("matmul[vec@mat]", lambda a, b: a @ b, inputs(normal(4), normal(2, 4, 3))),
    OpCase("matmul[mat@vec]", lambda a, b: a @ b, inputs(normal(2, 3, 4), normal(4))),
    # reductions
    OpCase("sum", lambda a: a.sum(axis=(0, 2), keepdims=True) * a.sum(axis=-1)[None, :, :, None], inputs(normal(2, 3, 4))),
    OpCase("mean", lambda a: a.mean(axis=1) + a.mean(), inputs(normal(2, 3, 4))),
    OpCase("max", lambda a: a.max(axis=(0, 2)) + a.max(axis=1, keepdims=True).sum(), inputs(distinct(2, 3, 4))),
    # shape
    OpCase("reshape", lambda a: a.reshape(4, -1) * a.reshape(6, 4).T, inputs(normal(2, 3, 4))),
    OpCase("transpose", lambda a: a.transpose(2, 0, 1) + a.permute(2, 0, 1).swapaxes(1, 2).swapaxes(1, 2), inputs(normal(2, 3, 4))),
    OpCase("getitem[basic]", lambda a: a[1:, ::2, None, -1], inputs(normal(3, 4, 5))),
    OpCase("getitem[advanced]", lambda a: a[np.array([0, 2, 0, 0]), 1:3], inputs(normal(3, 4))),
    OpCase("getitem[mask]", lambda a: a[a.data > 0.3], inputs(normal(4, 5))),
    OpCase("take", lambda w: take(w, _IDS, axis=1), inputs(normal(2, 5, 3))),
    OpCase("concatenate", lambda a, b: concatenate([a, b, a], axis=1), inputs(normal(2, 3), normal(2, 1))),
    OpCase("stack", lambda a, b: stack([a, b, a], axis=-1), inputs(normal(2, 3), normal(2, 3))),
    OpCase("split", lambda a: split(a, [1, 4], axis=1)[0] + split(a, 5, axis=1)[2] * split(a, [2], axis=1)[1][:, 2:3], inputs(normal(3, 5))),
    OpCase("where", lambda a, b: where(np.array([[True, False, True]]), a, b), inputs(normal(2, 3), normal(2, 1))),
    OpCase("masked_fill", lambda a: masked_fill(a, np.array([True, False, False, True]), -3.0), inputs(normal(3, 4))),
    # composites
    OpCase("F.softmax", lambda a: F.softmax(a, axis=1), inputs(normal(2, 5, 3))),
    OpCase("F.log_softmax", lambda a: F.log_softmax(a, axis=-1), inputs(normal(3, 5))),
    OpCase("F.logsumexp", lambda a: F.logsumexp(a, axis=(0, 2), keepdims=False), inputs(normal(2, 3, 4))),
    OpCase("F.layer_norm", lambda x, w, b: F.layer_norm(x, (3, 4), w, b), inputs(normal(2, 3, 4), normal(3, 4), normal(3, 4))),
    OpCase("F.layer_norm[no affine]", lambda x: F.layer_norm(x, 5), inputs(normal(3, 5))),
    OpCase("F.gelu", lambda a: F.gelu(a), inputs(normal(3, 4))),
    OpCase("F.gelu[tanh]", lambda a: F.gelu(a, approximate="tanh"), inputs(normal(3, 4))),
    OpCase("F.relu", lambda a: F.relu(a), inputs(off_zero(3, 4))),
    OpCase("F.dropout", _dropout_fixed_mask, inputs(normal(4, 5))),
    OpCase("F.linear", lambda x, w, b: F.linear(x, w, b), inputs(normal(2, 3, 4), normal(5, 4), normal(5))),
    OpCase("F.embedding", lambda w: F.embedding(_IDS, w), inputs(normal(4, 3))),
    OpCase("F.cross_entropy", lambda z: F.cross_entropy(z, _TARGETS, label_smoothing=0.1), inputs(normal(6, 5))),
    OpCase("F.cross_entropy[sum,3d]", lambda z: F.cross_entropy(z, _TARGETS_3D, reduction="sum"), inputs(normal(2, 4, 3))),
    OpCase("F.cross_entropy[none]", lambda z: F.cross_entropy(z, _TARGETS, label_smoothing=0.3, reduction="none"), inputs(normal(6, 5))),
    # attention variants' paths (reference/sdpa.py; closed forms checked in tests/reference)
    OpCase("tanh[softcap]", _softcap, inputs(normal(3, 4))),
    OpCase("F.softmax[sink column]", _with_sink_column, inputs(normal(2, 2, 3, 4), normal(2))),
    OpCase("attention[softcap+alibi+window+sinks]", _attention_variants,
           inputs(normal(1, 2, 3, 4), normal(1, 2, 5, 4), normal(1, 2, 5, 3), normal(2))),
)


def check_case(case: OpCase, seed: int) -> OpCheck:
    """Gradient-check one case on inputs drawn from ``seed``; never raises on a mismatch."""
    # Inputs from a stream of their own: drawn from the cotangent's seed they would equal
    # the cotangent, a degenerate direction (layer_norm's gradient then nearly vanishes).
    rng = np.random.default_rng([seed, 1])
    report = gradcheck(case.fn, case.make_inputs(rng), seed=seed, raise_on_failure=False)
    return OpCheck(case.name, report.worst_rel_error, report.passed, seed)


def check_all_ops(seed: int = 0) -> list[OpCheck]:
    """One :class:`OpCheck` per entry of :data:`OP_CASES`, inputs and cotangents from ``seed``."""
    return [check_case(case, seed) for case in OP_CASES]
