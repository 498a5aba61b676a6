"""The gate's reports: what people and CI systems read of a list of ``CaseResult``s.

- ``verify_table``: a rich table for the terminal, one row per (configuration, tensor), with
  the implementation's max error against the float64 oracle, the same-dtype baseline's, the
  slack, the bound of the rule, the RMS criterion's ratio, the verdict's ratio and PASS/FAIL;
  ``implementations_table``: a row per configuration, a column per implementation;
- ``verify_report``: the JSON report (``schema: flashref.verify/3``) with the versions of
  flashref, torch, triton, numpy and the device, every configuration and every number;
- ``write_junit`` / ``write_junit_suites``: JUnit XML (a <testcase> per configuration, a
  <testsuite> per implementation) that CI systems display.

The rule itself is rule.py's (docs/design.md); this module only reports it, and prints nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.markup import escape
from rich.table import Table

from flashref.reporting import describe_device, json_safe

VERIFY_SCHEMA = "flashref.verify/3"


def _case_config(case: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(case):
        return {k: json_safe(v) for k, v in dataclasses.asdict(case).items()}
    return {"name": str(case.name)}


# --------------------------------------------------------------------------- terminal


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def verify_table(outcomes: Iterable[Any], *, only_failures: bool = False) -> Table:
    """One row per (configuration, tensor); the configuration is named on its first row."""
    table = Table(
        title="kernel vs float64 oracle: max |error| of out, lse and each gradient",
        title_justify="left",
        caption=("baseline = plain attention in the kernel's dtype (for lse: the algorithm in float32); bound = "
                 "2 x (out, lse) or 3 x (dq, dk, dv) baseline err + slack (float32 rounding on this problem, "
                 "docs/design.md); rms = kernel's RMS err / its bound against the algorithm baseline (the FA "
                 "algorithm in float32, rounding where a fused kernel rounds); ratio = the worse of the two, "
                 "PASS when <= 1; path = the kernels' tile loads (tma: tensor descriptors)"),
        caption_justify="left",
        show_lines=False,
    )
    table.add_column("configuration", overflow="fold")
    table.add_column("tensor")
    table.add_column("kernel err", justify="right")
    table.add_column("baseline err", justify="right")
    table.add_column("slack", justify="right")
    table.add_column("bound", justify="right")
    table.add_column("rms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("result")
    for outcome in outcomes:
        if only_failures and outcome.passed:
            continue
        if outcome.exception is not None:
            table.add_row(escape(outcome.name), "-", "-", "-", "-", "-", "-", "-", "[bold red]ERROR[/]", end_section=True)
            continue
        items = list(outcome.errors.items())
        for i, (tensor, err) in enumerate(items):
            verdict = "[green]PASS[/]" if err.passed else "[bold red]FAIL[/]"
            label = escape(outcome.name) + (f" [{outcome.path}]" if getattr(outcome, "path", "") == "tma" else "")
            table.add_row(
                label if i == 0 else "",
                tensor,
                _fmt(err.kernel),
                _fmt(err.baseline) + ("" if err.baseline_ok else " [bold red](> ceiling)[/]"),
                _fmt(err.slack),
                _fmt(err.bound),
                "-" if getattr(err, "rms", None) is None else _ratio_text(err.rms.ratio),
                _ratio_text(err.ratio),
                verdict,
                end_section=i == len(items) - 1,
            )
    return table


def implementations_table(results: Mapping[str, list[Any]]) -> Table:
    """``flashref verify --impl A --impl B``: a row per configuration, a column per
    implementation: its verdict ratio (the worst tensor's), FAIL with it, ERROR, or unsupported."""
    names = list(results)
    table = Table(title="implementations vs float64 oracle: worst ratio per configuration (PASS when <= 1)",
                  title_justify="left", show_lines=False)
    table.add_column("configuration", overflow="fold")
    for name in names:
        table.add_column(name, justify="right")
    for row in zip(*(results[n] for n in names)):
        cells = []
        for outcome in row:
            status = outcome.status
            if status == "unsupported":
                cells.append("[dim]unsupported[/]")
            elif status == "error":
                cells.append("[bold red]ERROR[/]")
            else:
                worst = max((e.ratio for e in outcome.errors.values()), default=0.0)
                text = _ratio_text(worst)
                cells.append(f"[green]{text}[/]" if status == "pass" else f"[bold red]FAIL {text}[/]")
        table.add_row(escape(row[0].name), *cells)
    return table


def model_tables(results: list, *, only_failures: bool = False) -> list:
    """``flashref verify --model``: one rich Table per group of ``ModelResult``s' tensors (the
    output, then parameter groups), groups and rows worst first."""
    rows: dict[str, list] = {}
    for result in results:
        for check in result.checks:
            if only_failures and check.error.passed:
                continue
            rows.setdefault(check.group, []).append((result, check))
    ordered = sorted(rows.items(), key=lambda item: -max(_finite_ratio(c.error) for _, c in item[1]))
    tables = []
    for group, entries in ordered:
        entries.sort(key=lambda rc: -_finite_ratio(rc[1].error))
        table = Table(title=f"{group}: {len({c.name for _, c in entries})} tensor(s)", title_justify="left")
        for column in ("tensor", "dtype", "kernel err", "baseline err", "ratio", "bound", "result"):
            table.add_column(column, justify="left" if column in ("tensor", "dtype", "result") else "right")
        for result, check in entries:
            e = check.error
            table.add_row(check.name, result.case.dtype, f"{e.kernel:.2e}", f"{e.baseline:.2e}", f"{e.ratio:.2f}",
                          f"{e.bound:.2e}", "[green]PASS[/]" if e.passed else "[bold red]FAIL[/]")
        tables.append(table)
    return tables


def _finite_ratio(error) -> float:
    return math.inf if not math.isfinite(error.ratio) else error.ratio


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio < 1000 else _fmt(ratio)


# --------------------------------------------------------------------------- JSON


def verify_report(
    outcomes: list[Any],
    *,
    settings: Mapping[str, Any],
    env: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The machine-readable verify report (schema ``flashref.verify/3``): the summary counts each
    status (pass, fail, error, unsupported; an unsupported case is neither passed nor failed)."""
    status = [getattr(o, "status", "pass" if o.passed else "error" if o.exception else "fail") for o in outcomes]
    return {
        "schema": VERIFY_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": json_safe(dict(env)),
        "settings": json_safe(dict(settings)),
        "summary": {
            "cases": len(outcomes),
            "passed": status.count("pass"),
            "failed": status.count("fail"),
            "errors": status.count("error"),
            "unsupported": status.count("unsupported"),
            "seconds": round(seconds, 3),
            "all_passed": status.count("fail") + status.count("error") == 0,
        },
        "cases": [
            {
                "name": o.name,
                "config": _case_config(o.case),
                "passed": o.passed,
                "seconds": round(o.seconds, 4),
                "replay": o.replay,
                "exception": o.exception,
                "status": getattr(o, "status", "pass" if o.passed else "fail"),
                "unsupported": getattr(o, "unsupported", None),
                "path": getattr(o, "path", ""),
                "errors": {
                    t: {
                        "kernel": json_safe(e.kernel),
                        "baseline": json_safe(e.baseline),
                        "slack": json_safe(e.slack),
                        "factor": json_safe(e.factor),
                        "bound": json_safe(e.bound),
                        "ratio": json_safe(e.ratio),
                        "baseline_ceiling": json_safe(e.ceiling),
                        "rms": None if getattr(e, "rms", None) is None else {
                            "kernel": json_safe(e.rms.kernel), "algorithm_baseline": json_safe(e.rms.reference),
                            "slack": json_safe(e.rms.slack), "factor": json_safe(e.rms.factor),
                            "bound": json_safe(e.rms.bound), "ratio": json_safe(e.rms.ratio)},
                        "passed": e.passed,
                    }
                    for t, e in o.errors.items()
                },
            }
            for o in outcomes
        ],
    }


# --------------------------------------------------------------------------- JUnit


def write_junit(
    path: str | os.PathLike[str],
    outcomes: list[Any],
    *,
    env: Mapping[str, Any],
    suite: str = "flashref.verify",
    seconds: float | None = None,
) -> Path:
    """A JUnit XML file: one <testcase> per configuration, failures with their replay command.

    A case that raised is an <error>, a case outside the bound a <failure>.
    """
    return write_junit_suites(path, {suite: outcomes}, env=env, seconds=seconds)


def write_junit_suites(
    path: str | os.PathLike[str],
    suites_outcomes: Mapping[str, list[Any]],
    *,
    env: Mapping[str, Any],
    seconds: float | None = None,
) -> Path:
    """A JUnit XML file with one <testsuite> per name of ``suites_outcomes`` (``flashref verify
    --impl A --impl B``: one per implementation); an unsupported case is <skipped>."""
    suites = ET.Element("testsuites", name="flashref")
    flat_env = dict(env)
    device = flat_env.pop("device", {})
    for suite, outcomes in suites_outcomes.items():
        skipped = sum(1 for o in outcomes if getattr(o, "unsupported", None) is not None)
        failures = sum(1 for o in outcomes if not o.passed and o.exception is None
                       and getattr(o, "unsupported", None) is None)
        errors = sum(1 for o in outcomes if o.exception is not None)
        total_time = seconds if seconds is not None else sum(o.seconds for o in outcomes)
        ts = ET.SubElement(
            suites,
            "testsuite",
            name=suite,
            tests=str(len(outcomes)),
            failures=str(failures),
            errors=str(errors),
            skipped=str(skipped),
            time=f"{total_time:.3f}",
            timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            hostname=socket.gethostname(),
        )
        props = ET.SubElement(ts, "properties")
        for key, value in list(flat_env.items()) + [("device", describe_device({"device": device}))]:
            ET.SubElement(props, "property", name=str(key), value=str(value))
        for o in outcomes:
            tc = ET.SubElement(ts, "testcase", classname=suite, name=o.name, time=f"{o.seconds:.3f}")
            details = "\n".join(
                f"{t}: kernel={e.kernel:.6g} baseline={e.baseline:.6g} slack={e.slack:.6g} "
                f"bound={e.bound:.6g}"
                + ("" if getattr(e, "rms", None) is None else f" rms={e.rms.kernel:.6g}/{e.rms.bound:.6g}")
                + f" ratio={e.ratio:.4g} {'PASS' if e.passed else 'FAIL'}"
                for t, e in o.errors.items()
            )
            if getattr(o, "unsupported", None) is not None:
                ET.SubElement(tc, "skipped", message=f"unsupported: {o.unsupported}")
            elif o.exception is not None:
                el = ET.SubElement(tc, "error", message=o.exception.splitlines()[0], type="error")
                el.text = f"{o.exception}\nreplay: {o.replay}"
            elif not o.passed:
                el = ET.SubElement(tc, "failure", message=o.failure_summary(), type="bound")
                el.text = f"{details}\nreplay: {o.replay}"
            else:
                ET.SubElement(tc, "system-out").text = details
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path


__all__ = ["VERIFY_SCHEMA", "implementations_table", "model_tables", "verify_report", "verify_table", "write_junit",
           "write_junit_suites"]
