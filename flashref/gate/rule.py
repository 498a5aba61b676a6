"""The gate's rule: FlashAttention's error-ratio rule with a slack derived from magnitudes.

For one tensor (out, lse, dq, dk, dv, dsinks) of one problem, with ``ref`` the float64
oracle's value, ``baseline`` plain attention in the implementation's own dtype and
``magnitude`` the elementwise sum of |terms| the implementation adds up (computed by the
family that knows the problem, e.g. ``dense.magnitudes``):

    max|x - ref| <= factor * max|baseline - ref| + slack,   factor 2 for out and lse, 3 for gradients,

``slack = u32 * max(magnitude) + max half_ulp(ref)``: what float32 accumulation and the final
rounding to the dtype cannot avoid on this problem. The baseline is checked too: above its
ceiling (``BASELINE_CEILING`` units of the dtype's roundoff times the magnitudes) the tensor
fails whatever the implementation did. For a fused implementation the RMS criterion
(``RmsError``, ``rms_check``) holds it to its own algorithm computed in float32.

Everything here takes a dtype name and arrays: no case, no torch, no kernel
(docs/design.md, "The rule" and "The slack").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DTYPES = ("float16", "bfloat16", "float32")
# The FP8 forward's case dtype (flashref/gate/fp8.py): float8_e4m3fn q, k, v with descales, out
# bfloat16. Not in DTYPES: the 16/32-bit sweeps and implementations do not take it.
FP8 = "float8_e4m3fn"
CASE_DTYPES = DTYPES + (FP8,)
# The tensors the rule judges, in report order; a variant with a gradient of its own (dsinks)
# appends its name here and to FACTORS, and is judged whenever the oracle returns it.
TENSORS = ("out", "lse", "dq", "dk", "dv", "dsinks")
FACTORS = {"out": 2.0, "lse": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0, "dsinks": 3.0}
# The RMS criterion's factors (``RmsError``, ``rms_check``), by what the error is made of.
# The dtype's roundings (16-bit): a correct kernel's RMS error is 0.84-1.02 times the
# algorithm baseline's over the CI sweep on fresh seeds (docs/design.md); a bfloat16 cast that
# truncates gives 2.3-2.8, P rounded to a coarser dtype 3.8-6.8. Float32 arithmetic alone
# (float32 inputs, or 16-bit tensors where dS cancels: a row that sees one key): 0.7-1.6 on
# ordinary cases, up to 2.4 where a row sees one key (other summation orders, P from the lse).
RMS_FACTOR_16BIT = 1.5
RMS_FACTOR_FLOAT32 = 3.0
# The boundary between the regimes, in float32 units of the tensor's magnitudes: 16-bit errors
# sit hundreds of units above it, float32 noise a few units below.
FLOAT32_REGIME = 64.0
# Unit roundoff (half an ulp at 1) of float32, the kernels' accumulator, and of each dtype.
U32 = 2.0**-24
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": U32}
# e4m3: 3 mantissa bits, u = 2^-4 (normal numbers, |x| >= 2^-6; below, a fixed spacing 2^-9).
U_E4M3 = 2.0**-4
# A baseline error above BASELINE_CEILING * u_dtype * max(magnitude) (+ the output rounding)
# is not "plain attention in this dtype" any more but a broken baseline (over the CI sweep
# the baseline uses at most 0.55 of it; docs/design.md).
BASELINE_CEILING = {"float16": 8.0, "bfloat16": 8.0, "float32": 64.0}
# Standard deviations of independent rounding errors the slack allows (``magnitudes``):
# a chance below 2 exp(-LAMBDA^2 / 2) = 0.02 per element even if every rounding error took
# its bound (they are far below it: docs/design.md).
LAMBDA = 3.0
# The error of one dS element in units of u32 * (sum of |terms| of dP and of D): a float32 sum
# of n terms errs between 1 and n of those units; measured at Lk = 1 (where dS = 0 exactly and
# only this error remains) up to 1.04 at head dim 256 over 30 seeds (docs/design.md), so 2.5.
DS_ROUNDING = 2.5
# The kernels' tanh (exp2, 1 - e, 1 + e, one division): its error on t, in units of u32 |t|.
TANH_ROUNDING = 4.0
# The kernels' lse = ln2 (m + log2 l): four roundings (S log2e, log2 l, the sum, the ln 2
# product), in units of u32 (|lse| + 1), the RMS slack of lse (a row that sees one key has an
# exact algorithm-baseline lse and the kernel's 13x that on one CI seed).
LSE_ROUNDING = 4.0



def error_ratio(error: float, bound: float) -> float:
    """error / bound; NaN for a NaN error, inf for a positive error over a 0 bound."""
    if bound == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / bound


@dataclass(frozen=True)
class RmsError:
    """The second criterion (docs/design.md, "The algorithm's own rounding"): the root mean
    square of ``|kernel - ref|`` against that of the *algorithm baseline*
    (``algorithm_attention``: the FlashAttention algorithm computed by torch in float32 with
    P and dS rounded to the dtype where a fused kernel rounds them):

        rms|kernel - ref| <= factor * rms|algorithm - ref| + slack.

    The max-norm rule bounds the worst element against plain attention in the dtype, whose
    errors in 16-bit are several times a fused kernel's; this one sees a kernel that is
    uniformly less precise than its own algorithm (a truncating cast, a coarser rounding of P,
    a truncated constant), which moves every element a little and no element much."""

    kernel: float
    reference: float
    slack: float
    factor: float

    @property
    def bound(self) -> float:
        return self.factor * self.reference + self.slack

    @property
    def ratio(self) -> float:
        return error_ratio(self.kernel, self.bound)

    @property
    def passed(self) -> bool:
        return bool(self.kernel <= self.bound)


@dataclass(frozen=True)
class TensorError:
    """The rule applied to one tensor (out, dq, dk, dv, lse, ...):

    ``kernel``/``baseline`` are max |x - ref| against the float64 oracle (the baseline: plain
    attention in the dtype), ``algorithm`` the algorithm baseline's (the FlashAttention
    algorithm in the same precision, when computed: ``dense.algorithm_attention``),
    ``bound = factor * max(baseline, min(algorithm, ceiling)) + slack`` and
    ``max_ratio = kernel / bound``: no worse than the less exact of the two obvious ways to
    compute attention in this precision (docs/design.md, "Two baselines"). ``ceiling`` is the
    most either baseline may widen the bound by (``inf``: unchecked); a plain baseline above it
    fails the tensor whatever the kernel did. ``rms``: the root-mean-square criterion (``RmsError``), when
    judged. ``ratio`` is the worse of the two criteria's ratios (the only ratio the reports
    print): the tensor passes iff ``ratio <= 1`` and the baseline is within its ceiling.
    """

    kernel: float
    baseline: float
    slack: float
    factor: float
    ceiling: float = math.inf
    rms: RmsError | None = None
    algorithm: float | None = None

    @property
    def reference(self) -> float:
        """The baseline error the bound scales: plain attention's, or the algorithm's (capped at
        the ceiling) where that is larger."""
        if self.algorithm is None:
            return self.baseline
        return max(self.baseline, min(self.algorithm, self.ceiling))

    @property
    def bound(self) -> float:
        return self.factor * self.reference + self.slack

    @property
    def max_ratio(self) -> float:
        return error_ratio(self.kernel, self.bound)

    @property
    def ratio(self) -> float:
        """The worse of the max-norm ratio and the RMS ratio (NaN if either is NaN)."""
        ratios = [self.max_ratio] + ([self.rms.ratio] if self.rms is not None else [])
        return math.nan if any(math.isnan(r) for r in ratios) else max(ratios)

    @property
    def baseline_ok(self) -> bool:
        return bool(self.baseline <= self.ceiling)

    @property
    def passed(self) -> bool:
        # NaN compares False, so a NaN error (an unwritten, poisoned element) fails as it must.
        return (bool(self.kernel <= self.bound) and self.baseline_ok
                and (self.rms is None or self.rms.passed))

    def describe(self, tensor: str) -> str:
        """Why this tensor failed, in one clause ('' when it passed)."""
        if not self.baseline_ok:
            return (f"{tensor}: baseline err {self.baseline:.3g} > its ceiling {self.ceiling:.3g} "
                    f"(the torch baseline is out of line with the oracle; the bound is not widened)")
        if not bool(self.kernel <= self.bound):
            algorithm = "" if self.algorithm is None else f", algorithm baseline {self.algorithm:.3g}"
            return (f"{tensor}: kernel err {self.kernel:.3g} > bound {self.bound:.3g} "
                    f"(baseline {self.baseline:.3g}{algorithm}, slack {self.slack:.3g})")
        if self.rms is not None and not self.rms.passed:
            return (f"{tensor}: kernel rms err {self.rms.kernel:.3g} > rms bound {self.rms.bound:.3g} "
                    f"(algorithm baseline rms {self.rms.reference:.3g}: uniformly less precise than its algorithm)")
        return ""


def half_ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """Half the spacing of ``dtype`` at each |x|: the most rounding x to that dtype can move it."""
    import torch

    tiny = torch.finfo(getattr(torch, dtype)).tiny
    exponent = np.floor(np.log2(np.maximum(np.abs(x), tiny)))
    mantissa_bits = {"float16": 10, "bfloat16": 7, "float32": 23, FP8: 3}[dtype]
    return np.exp2(exponent - mantissa_bits - 1)


def max_or_zero(x: np.ndarray) -> float:
    """max(x), 0 for an empty array."""
    return float(np.max(x)) if x.size else 0.0


def slack(dtype: str, magnitude: np.ndarray, ref: np.ndarray) -> float:
    """``u32 * max magnitude + max half_ulp(ref)``: what float32 accumulation and the final
    rounding to the dtype cannot avoid on this problem (docs/design.md, "The slack")."""
    return U32 * max_or_zero(magnitude) + max_or_zero(half_ulp(ref, dtype))


def baseline_ceiling(dtype: str, magnitude: np.ndarray, ref: np.ndarray, score_error: float = 0.0) -> float:
    """The most the same-dtype baseline may err: ``BASELINE_CEILING[dtype]`` units of the dtype's
    roundoff times the same magnitudes, plus the output rounding. ``score_error``: the relative
    error of P, in units of the dtype's roundoff, that the baseline's rounded raw scores add
    through a softcap (``magnitudes``'s "score_error"; 0 without one)."""
    return (BASELINE_CEILING[dtype] * UNIT_ROUNDOFF[dtype] * max_or_zero(magnitude) * (1.0 + score_error)
            + max_or_zero(half_ulp(ref, dtype)))


def max_abs_error(x, ref: np.ndarray) -> float:
    """max |x - ref| in float64; NaN anywhere in x gives NaN; 0 for empty arrays."""
    if not isinstance(x, np.ndarray):
        x = as_float64(x)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(x - ref)))


def finite_error(x, ref: np.ndarray) -> float:
    """max |x - ref| over the elements where ref is finite (lse); inf if x is finite where ref
    is -inf (a row that sees no key must say so), NaN anywhere in x gives NaN."""
    if not isinstance(x, np.ndarray):
        x = as_float64(x)
    if np.isnan(x).any():
        return math.nan
    finite = np.isfinite(ref)
    if np.any(x[~finite] != ref[~finite]):
        return math.inf
    return float(np.max(np.abs(x[finite] - ref[finite]), initial=0.0))


def rms_error(x, ref: np.ndarray) -> float:
    """sqrt(mean |x - ref|^2) over the elements where ref is finite; NaN anywhere gives NaN."""
    if not isinstance(x, np.ndarray):
        x = as_float64(x)
    finite = np.isfinite(ref)
    diff = x[finite] - ref[finite]
    return float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0


def judge(kernel_error: float, baseline_error: float, factor: float, slack: float = 0.0,
          ceiling: float = math.inf, rms: RmsError | None = None, algorithm_error: float | None = None) -> TensorError:
    """The rule for one tensor: passes iff kernel_error <= factor * the baseline error (the
    larger of plain attention's and, when given, the algorithm baseline's capped at the
    ceiling) + slack, the plain baseline is within its ceiling and, when given, the RMS
    criterion ``rms`` holds."""
    return TensorError(float(kernel_error), float(baseline_error), float(slack), float(factor), float(ceiling),
                       rms, None if algorithm_error is None else float(algorithm_error))


def rms_check(dtype: str, kernel, algo, ref: np.ndarray, magnitude: np.ndarray, few_keys: bool = False,
              slack: float | None = None, exponent: np.ndarray | None = None) -> RmsError:
    """The RMS criterion on one tensor (docs/design.md, "The algorithm's own rounding").

    Two regimes. Where the dtype's roundings make the error (16-bit inputs, and the algorithm
    baseline errs by more than ``FLOAT32_REGIME`` float32 units of the tensor's magnitudes), a
    correct kernel rounds where its algorithm rounds and its RMS error is the baseline's within
    a few percent: factor ``RMS_FACTOR_16BIT``. Where only float32 arithmetic is left (float32
    inputs, or a row that sees one key, where dS cancels to rounding noise), the kernel's sums
    run in other orders than torch's and its P comes from the stored lse:
    ``RMS_FACTOR_FLOAT32``. Either factor is widened by ``1 + LAMBDA / sqrt(n)`` over the
    tensor's n rows (a mean of n independent squares wanders by about 1 / sqrt(n) of itself,
    and the elements of one row share its roundings: dsinks or a one-query out is judged
    loosely, a tall tensor at the factor; measured: float32, Lq = 1 against 97 keys with ALiBi,
    four rows, the kernel's dq RMS error 4.1x the algorithm baseline's).

    Slack ``u32 * rms(ref)`` (one float32 rounding of every element, where the algorithm
    baseline happens to be exact); with ``few_keys`` (a row sees one or two keys) the max-norm
    rule's derived slack in RMS, ``u32 * rms(magnitude)``: there dS = P (dP - D) cancels, and
    how much of the float32 rounding of dP and D cancels with it depends on the two sums'
    orders, which no baseline shares with the kernel (docs/design.md, "Known limits"). Plus
    ``u32 * rms(exponent)``, the magnitudes that P's exponent rounding carries (``u32 W``
    relative, ``dense.magnitudes``): with large logits the kernels' base-2 exponent rounds
    several times more of it than the algorithm baseline's (the fuzzer: float32, logits in the
    hundreds, dv 4.5x and dsinks 11x the algorithm baseline's RMS error). An explicit ``slack``
    replaces all of it (lse's: ``LSE_ROUNDING``)."""
    finite = np.isfinite(ref)
    # Independent samples: rows, not elements (a row's elements share its roundings of l and of
    # the dS row: with Lq = 1 four rows are four draws, however wide the head).
    n = max(int(np.count_nonzero(finite)) // (ref.shape[-1] if ref.ndim == 4 else 1), 1)
    reference = rms_error(algo, ref)
    magnitude_rms = rms_error(np.zeros(np.count_nonzero(finite)), magnitude[finite])
    sixteen_bit = dtype != "float32" and reference > FLOAT32_REGIME * U32 * magnitude_rms
    factor = (RMS_FACTOR_16BIT if sixteen_bit else RMS_FACTOR_FLOAT32) * (1.0 + LAMBDA / math.sqrt(n))
    if slack is None:
        slack = U32 * (magnitude_rms if few_keys else rms_error(np.zeros_like(ref), ref))
        if exponent is not None:
            slack += U32 * rms_error(np.zeros(np.count_nonzero(finite)), exponent[finite])
    return RmsError(rms_error(kernel, ref), reference, slack, factor)


def as_float64(t) -> np.ndarray:
    """A torch tensor (any device, any dtype) or array as a float64 NumPy array."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float64, copy=False)
    return t.detach().cpu().double().numpy()


__all__ = ["BASELINE_CEILING", "CASE_DTYPES", "DS_ROUNDING", "DTYPES", "FP8", "U_E4M3", "FACTORS", "FLOAT32_REGIME", "LAMBDA", "LSE_ROUNDING",
           "RMS_FACTOR_16BIT", "RMS_FACTOR_FLOAT32", "TANH_ROUNDING", "TENSORS", "U32", "UNIT_ROUNDOFF", "RmsError",
           "TensorError", "as_float64", "baseline_ceiling", "error_ratio", "finite_error", "half_ulp", "judge",
           "max_abs_error", "max_or_zero", "rms_check", "rms_error", "slack"]
