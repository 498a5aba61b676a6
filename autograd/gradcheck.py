"""Check reverse mode against central finite differences, in float64, with a random cotangent.

For ``y = fn(*inputs)`` and a random ``c`` of ``y``'s shape (standard normal, seeded), the
scalar ``L = sum(c * y)`` has gradient ``J^T c`` — what ``y.backward(c)`` computes. Each
element of each input is nudged by ``+-eps`` and ``(L(x + eps) - L(x - eps)) / (2 eps)`` is
compared with it. A random ``c`` matters: ``sum(y)`` (``c = 1``) is blind to errors in the
directions a constant cotangent annihilates — softmax's and layer_norm's backward give an
exact zero for it whatever their bugs.

Error measure, per input: ``max|analytic - numeric| / max|numeric|`` (normwise relative;
elementwise relative error is meaningless where a gradient crosses zero). The check passes
when ``max|analytic - numeric| <= atol + noise + rtol * max|numeric|`` for every input. With
``eps = 1e-6`` in float64 the truncation error is ~``eps^2`` and the rounding error
~``1e-16 / eps`` relative, so a correct backward lands near 1e-9 and a wrong one near 1.
``noise = 4 u sum|out * cotangent| / eps`` (u = 2^-52) is that rounding error in absolute
terms: a gradient that is tiny by cancellation cannot be resolved below it by differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .tensor import Tensor, no_grad


_COTANGENT_STREAM = 0x636F74  # "cot"
# Rounding of one evaluation of the objective, in ulps of each term |out * cotangent| (a few
# elementwise ops made each term, and the sum adds its own): the numeric side's noise floor.
_OBJECTIVE_ULPS = 4


class GradcheckError(AssertionError):
    """Reverse mode disagrees with finite differences; ``.report`` says where."""

    def __init__(self, report: "GradcheckReport"):
        super().__init__(str(report))
        self.report = report


@dataclass(frozen=True)
class GradcheckReport:
    """Outcome of :func:`gradcheck`.

    ``worst_rel_error``: the largest per-input error (see module docstring);
    ``input_index``/``element_index``: where the largest absolute disagreement of that
    input sits, with the ``analytic`` and ``numeric`` values there; ``per_input``: each
    checked input's error, by position in ``inputs``; ``seed``: replays the cotangent.
    """

    passed: bool
    worst_rel_error: float
    input_index: int
    element_index: tuple[int, ...]
    analytic: float
    numeric: float
    per_input: dict[int, float]
    seed: int
    eps: float
    atol: float
    rtol: float

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gradcheck {verdict}: worst relative error {self.worst_rel_error:.3e} at input "
            f"{self.input_index}, element {self.element_index} (analytic {self.analytic:.12g}, "
            f"numeric {self.numeric:.12g}); per input {{{', '.join(f'{k}: {v:.2e}' for k, v in self.per_input.items())}}}; "
            f"eps={self.eps:g}, atol={self.atol:g}, rtol={self.rtol:g}, seed={self.seed}"
        )


def _prepare(inputs: Sequence[Any]) -> list[Any]:
    """Private float64 copies (the check perturbs them in place; the caller's stay untouched)."""
    args: list[Any] = []
    for position, x in enumerate(inputs):
        if isinstance(x, Tensor):
            if x.dtype != np.float64:
                raise TypeError(f"gradcheck: input {position} is {x.dtype}; finite differences need float64")
            args.append(Tensor(np.array(x.data, copy=True), requires_grad=x.requires_grad))
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            if x.dtype != np.float64:
                raise TypeError(f"gradcheck: input {position} is {x.dtype}; finite differences need float64")
            args.append(Tensor(np.array(x, copy=True), requires_grad=True))
        else:
            args.append(x)  # a non-differentiable argument, passed through
    return args


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-9,
    rtol: float = 1e-6,
    seed: int | None = None,
    raise_on_failure: bool = True,
) -> GradcheckReport:
    """Compare ``fn``'s reverse-mode gradients with central differences.

    ``inputs``: Tensors (checked when ``requires_grad``), float64 ndarrays (checked), or
    anything else (passed through). ``fn(*inputs)`` must return one float64 Tensor.
    ``seed`` fixes the random cotangent (drawn and recorded in the report when None).
    Raises :class:`GradcheckError` on failure unless ``raise_on_failure=False``; returns the
    :class:`GradcheckReport` either way.
    """
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    # A stream of its own: callers often draw their inputs from default_rng(seed), and a
    # cotangent equal to the input is a degenerate direction (layer_norm's VJP nearly vanishes).
    rng = np.random.default_rng([seed, _COTANGENT_STREAM])
    args = _prepare(inputs)
    checked = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad, nothing to check")

    out = fn(*args)
    if not isinstance(out, Tensor) or out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn must return a float64 Tensor, got {type(out).__name__}")
    cotangent = rng.standard_normal(out.shape)
    if out.requires_grad:
        out.backward(cotangent)
    analytic = {i: (args[i].grad if args[i].grad is not None else np.zeros(args[i].shape)) for i in checked}

    def objective() -> float:
        with no_grad():
            return float(np.sum(fn(*args).data * cotangent))

    # The numeric derivative cannot resolve anything below its own noise: each evaluation of
    # the objective carries a few ulps of rounding per term, and the central difference divides
    # that by eps. Without this floor a gradient that is tiny by cancellation (layer_norm over
    # two elements: its outputs are +-1 whatever the input) fails on the numeric side's noise.
    noise = _OBJECTIVE_ULPS * np.finfo(np.float64).eps * float(np.sum(np.abs(out.data * cotangent))) / eps
    per_input: dict[int, float] = {}
    worst: tuple[float, int, tuple[int, ...], float, float] | None = None
    passed = True
    for i in checked:
        x = args[i].data
        numeric = np.zeros(x.shape)
        for flat in range(x.size):
            j = np.unravel_index(flat, x.shape)
            original = x[j]
            x[j] = original + eps
            up = objective()
            x[j] = original - eps
            down = objective()
            x[j] = original
            numeric[j] = (up - down) / (2.0 * eps)
        diff = np.abs(analytic[i] - numeric)
        scale = float(np.max(np.abs(numeric))) if numeric.size else 0.0
        largest = float(np.max(diff)) if diff.size else 0.0
        error = largest / scale if scale > 0 else (0.0 if largest == 0 else np.inf)
        per_input[i] = error
        passed &= largest <= atol + noise + rtol * scale
        where = np.unravel_index(int(np.argmax(diff)), x.shape) if diff.size else ()
        if worst is None or error > worst[0]:
            worst = (error, i, tuple(int(w) for w in where),
                     float(analytic[i][where]) if diff.size else 0.0,
                     float(numeric[where]) if diff.size else 0.0)

    assert worst is not None
    report = GradcheckReport(
        passed=bool(passed), worst_rel_error=worst[0], input_index=worst[1], element_index=worst[2],
        analytic=worst[3], numeric=worst[4], per_input=per_input, seed=seed, eps=eps, atol=atol, rtol=rtol,
    )
    if not report.passed and raise_on_failure:
        raise GradcheckError(report)
    return report
