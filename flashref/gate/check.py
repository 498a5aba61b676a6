"""The gate on any implementation: each case judged by the project's rule (rule.py,
docs/design.md) against the float64 oracle, with flashref's own baselines, never the
implementation under test.

``check_case_with(impl, case)`` gives a ``CaseResult`` whose ``status`` is pass, fail, error
(the implementation raised or returned something wrong: ``ImplementationError``) or unsupported
(a feature, dtype, head dim or device it does not declare). flashref's own kernels take the
gate's usual path (``families.check_case``: same cases, verdicts and replay commands as
``flashref verify`` without ``--impl``). The RMS criterion applies to implementations that
declare ``fused`` (the FlashAttention algorithm); lse is judged where one is returned and the
RMS criterion applies.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from . import dense
from .families import check_case, family_of, sweep
from .implementations import Implementation, ImplementationError, run_implementation, unsupported_reason
from .results import CaseResult


def check_case_with(impl: Implementation, case, device: str = "cpu") -> CaseResult:
    """Judge ``impl`` on one case (see the module docstring)."""
    reason = unsupported_reason(impl, case, device)
    if reason is not None:
        return CaseResult(case, unsupported=reason, implementation=impl.name)
    if impl.name == "flashref" and impl.attention.__module__ == __name__.rsplit(".", 1)[0] + ".implementations":
        result = check_case(case, device)
        return dataclasses.replace(result, implementation=impl.name) if isinstance(result, CaseResult) else result
    family = family_of(case)
    if family.name != "dense":  # a packed family: its check calls the implementation's entry point
        start = time.perf_counter()
        try:
            result = family.check(case, device, getattr(impl, family.implementation_attribute), impl.name)
        except ImplementationError as exc:
            return CaseResult(case, {}, time.perf_counter() - start, str(exc), implementation=impl.name)
        return dataclasses.replace(result, implementation=impl.name)
    start = time.perf_counter()
    inputs = dense.make_inputs(case, device)
    ref = dense.oracle_attention(case, inputs)
    base = dense.baseline_attention(case, inputs)
    algo = dense.algorithm_attention(case, inputs)
    try:
        kern = run_implementation(impl, case, inputs, ref)
    except ImplementationError as exc:
        return CaseResult(case, {}, time.perf_counter() - start, str(exc), implementation=impl.name)
    return CaseResult(case, dense.judge_all(case, inputs, ref, base, kern, algo, fused=impl.fused),
                      time.perf_counter() - start, implementation=impl.name)


@dataclass(frozen=True)
class GateReport:
    """One implementation over a list of cases: the results and their counts."""

    implementation: str
    results: tuple

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def passed(self) -> bool:
        """No case failed or raised (unsupported cases are reported, not failed)."""
        return self.count("fail") == 0 and self.count("error") == 0

    def worst_ratios(self) -> dict[tuple[str, str], float]:
        """(dtype, tensor) -> the worst verdict ratio over the judged cases."""
        worst: dict[tuple[str, str], float] = {}
        for r in self.results:
            for tensor, e in r.errors.items():
                key = (r.case.dtype, tensor)
                worst[key] = max(worst.get(key, 0.0), e.ratio)
        return worst


def resolve_cases(cases, seed: int = 0) -> list:
    """"quick" / "ci" / "full" (the presets, with ``seed``) or a list of cases as given."""
    if isinstance(cases, str):
        return sweep(cases, seed=seed)
    return list(cases)


def check(impl: Implementation, cases="quick", device: str | None = None, seed: int = 0) -> GateReport:
    """Judge ``impl`` on a preset ("quick", "ci", "full") or a list of ``Case``s; ``device``
    None: CUDA if torch sees one, else the CPU (set TRITON_INTERPRET=1 before importing
    flashref.kernels to judge flashref's kernels there). Returns a ``GateReport``."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return GateReport(impl.name, tuple(check_case_with(impl, c, device) for c in resolve_cases(cases, seed)))
