"""flashref.gate: the correctness gate for any attention implementation.

``Implementation`` declares an attention function and what it can do; ``check(impl, cases)``
judges it against the float64 oracle with flashref's rule (flashref/equivalence.py,
docs/design.md) and returns a ``GateReport``; ``resolve_implementation`` finds one by name
(built-ins, ``module:attribute``, or the ``flashref.implementations`` entry points).
"""

from .check import GateReport, check, check_case_with
from .implementations import (FEATURES, Implementation, ImplementationError, builtin_implementations,
                              parse_features, required_features, resolve_implementation)

__all__ = ["FEATURES", "GateReport", "Implementation", "ImplementationError", "builtin_implementations", "check",
           "check_case_with", "parse_features", "required_features", "resolve_implementation"]
