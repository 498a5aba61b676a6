"""What one case produced: the rule's verdict per tensor, or why it could not be judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .rule import TensorError


class ImplementationError(RuntimeError):
    """An implementation raised, or returned something that is not attention's output: the
    gate reports ERROR for that case (``CaseResult.exception``) and goes on."""

@dataclass(frozen=True)
class CaseResult:
    """What one case produced: its ``errors`` per tensor, or the ``exception`` its check raised
    (a case that raised never passes)."""

    case: Any  # a Case of any family (families.py)
    errors: Mapping[str, TensorError] = field(default_factory=dict)
    seconds: float = 0.0
    exception: str | None = None
    path: str = ""  # the kernels' tile loads: "tma" (tensor descriptors) or "pointer"; "" unknown
    # flashref.gate: the implementation judged, and why it could not run the case (if so).
    implementation: str = "flashref"
    unsupported: str | None = None

    @classmethod
    def from_exception(cls, case: Any, exc: BaseException, seconds: float) -> "CaseResult":
        return cls(case, {}, float(seconds), f"{type(exc).__name__}: {exc}".strip())

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def replay(self) -> str:
        command = self.case.replay_command()
        if self.implementation != "flashref":
            command = command.replace("flashref verify ", f"flashref verify --impl {self.implementation} ", 1)
        return command

    @property
    def passed(self) -> bool:
        return self.exception is None and bool(self.errors) and all(e.passed for e in self.errors.values())

    @property
    def status(self) -> str:
        """"pass", "fail", "error" (the check raised) or "unsupported"."""
        if self.unsupported is not None:
            return "unsupported"
        if self.exception is not None:
            return "error"
        return "pass" if self.passed else "fail"

    def failure_summary(self) -> str:
        """One line saying why the case failed ('' when it passed)."""
        if self.exception is not None:
            return f"raised {self.exception.splitlines()[0]}"
        if not self.errors:
            return "no tensor was checked"
        return "; ".join(e.describe(t) for t, e in self.errors.items() if not e.passed)

    def summary(self) -> str:
        parts = [f"{t} {e.kernel:.2e}/{e.bound:.2e}" for t, e in self.errors.items()]
        verdict = "PASS" if self.passed else "FAIL"
        line = f"{verdict} {self.case.name} seed={self.case.seed} " + " ".join(parts)
        if not self.passed:
            line += f"  [{self.failure_summary()}]  replay: {self.replay}"
        return line


__all__ = ["CaseResult", "ImplementationError"]
