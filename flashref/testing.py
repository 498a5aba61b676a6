"""The gate in another project's tests: ``assert_attention_matches_oracle(impl, "quick")``.

``impl`` is an ``flashref.gate.Implementation``, a built-in name (``"sdpa-math"``) or a
``module:attribute`` spec; ``cases`` a preset or a list of ``flashref.gate.Case``. The
assertion fails with every failing case's reason and replay command; unsupported cases are
listed in the report, not failed. The pytest plugin (flashref/pytest_plugin.py, installed as a
``pytest11`` entry point) hands it out as the ``attention_gate`` fixture.
"""

from __future__ import annotations

import random


def assert_attention_matches_oracle(impl, cases="quick", *, device=None, seed=None, features=None, layout=None):
    """Judge ``impl`` on ``cases`` with flashref's rule; AssertionError listing the failures.
    Returns the ``GateReport`` when everything judged passed. ``seed``: fresh when None (it is
    in the message, so a failure replays)."""
    from flashref.gate import Implementation, check, resolve_implementation

    if not isinstance(impl, Implementation):
        impl = resolve_implementation(impl, features=features, layout=layout)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    report = check(impl, cases, device=device, seed=seed)
    bad = [r for r in report.results if r.status in ("fail", "error")]
    if bad:
        lines = [f"{impl.name}: {len(bad)} of {len(report.results)} cases out of bounds (seed {seed})"]
        lines += [f"  {r.failure_summary()}\n    {r.replay}" for r in bad[:10]]
        raise AssertionError("\n".join(lines))
    return report
