"""Specification of the verify reports: the terminal table, the JSON schema, the JUnit XML."""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from flashref.gate import Case, CaseResult, TensorError, judge
from flashref.gate.reports import VERIFY_SCHEMA, verify_report, verify_table, write_junit
from flashref.reporting import describe_device, environment, write_json

SLACK = 1e-5


def case(**changes) -> Case:
    fields = dict(batch=1, heads_q=2, heads_kv=1, seqlen_q=17, seqlen_k=9, head_dim=64, dtype="float16",
                  causal=True, causal_alignment="top_left", kv_lens=False, seed=7)
    return Case(**{**fields, **changes})


def result(c: Case, out_kernel: float = 1e-3) -> CaseResult:
    errors = {"out": judge(out_kernel, 1e-3, 2, SLACK), "dq": judge(2e-3, 1e-3, 3, SLACK),
              "dk": judge(1e-3, 1e-3, 3, SLACK), "dv": judge(0.0, 0.0, 3, SLACK)}
    return CaseResult(c, errors, 0.25)


PASSING = result(case())
FAILING = result(case(head_dim=128, seed=9), out_kernel=5e-3)
RAISING = CaseResult.from_exception(case(dtype="bfloat16"), RuntimeError("kernel exploded\nsecond line"), 0.5)
ENV = {"flashref": "0.1.0", "torch": "2.13.0", "triton": "3.9.0", "numpy": "2.4.6", "python": "3.11",
       "platform": "linux", "device": {"kind": "cpu", "name": "x86_64", "triton_interpreter": True}}


@pytest.mark.parametrize(
    "kernel, baseline, slack, passed",
    [
        (1e-3, 1e-3, 1e-5, True),
        (2e-3 + 1e-5, 1e-3, 1e-5, True),  # the bound itself passes
        (2.1e-3, 1e-3, 1e-5, False),
        (1e-5, 0.0, 1e-5, True),  # exact baseline: the slack decides
        (float("nan"), 1e-3, 0.0, False),  # NaN never passes
    ],
)
def test_tensor_error_verdict(kernel, baseline, slack, passed):
    assert TensorError(kernel, baseline, slack, 2.0).passed is passed


def test_a_baseline_over_its_ceiling_fails_with_a_clear_message():
    e = TensorError(1e-9, 5e-3, 0.0, 3.0, ceiling=1e-3)
    assert not e.passed and not e.baseline_ok and "baseline err 0.005 > its ceiling 0.001" in e.describe("dk")


def test_outcomes_keep_verdicts_and_replay_lines():
    assert PASSING.passed and not PASSING.failure_summary()
    assert not FAILING.passed
    assert "out: kernel err 0.005" in FAILING.failure_summary()
    assert FAILING.replay == f'flashref verify --case "{FAILING.case.name}" --seed 9'
    assert not RAISING.passed and RAISING.exception.startswith("RuntimeError: kernel exploded")
    assert RAISING.failure_summary() == "raised RuntimeError: kernel exploded"


def render(table) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_table_has_a_row_per_tensor_and_marks_failures():
    text = render(verify_table([PASSING, FAILING, RAISING]))
    assert text.count("│ PASS") == 4 + 3 and text.count("│ FAIL") == 1 and text.count("│ ERROR") == 1
    for header in ("configuration", "kernel err", "baseline err", "slack", "bound", "ratio"):
        assert header in text
    assert "5.00e-03" in text and "2.01e-03" in text and "2.49" in text  # failing out: error, bound, ratio


def test_table_can_show_only_failures():
    text = render(verify_table([PASSING, FAILING], only_failures=True))
    assert FAILING.name in text and PASSING.name not in text


def test_json_report_schema(tmp_path):
    report = verify_report([PASSING, FAILING, RAISING], settings={"preset": "quick", "seed": 7}, env=ENV, seconds=1.25)
    path = write_json(tmp_path / "sub" / "verify.json", report)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == VERIFY_SCHEMA
    assert loaded["summary"] == {"cases": 3, "passed": 1, "failed": 1, "errors": 1, "unsupported": 0, "seconds": 1.25,
                                 "all_passed": False}
    assert set(loaded["environment"]) >= {"flashref", "torch", "triton", "numpy", "device"}
    first = loaded["cases"][0]
    assert set(first) == {"name", "config", "passed", "seconds", "replay", "exception", "errors", "path", "status",
                          "unsupported"}
    assert first["status"] == "pass" and first["unsupported"] is None
    assert first["config"]["head_dim"] == 64 and first["config"]["seed"] == 7 and first["name"] == PASSING.case.name
    assert set(first["errors"]) == {"out", "dq", "dk", "dv"}
    assert set(first["errors"]["out"]) == {"kernel", "baseline", "slack", "factor", "bound", "ratio",
                                           "baseline_ceiling", "rms", "passed"}
    assert first["errors"]["out"]["rms"] is None  # judged by the max-norm rule alone
    assert first["errors"]["dq"]["ratio"] == pytest.approx(2e-3 / (3e-3 + SLACK))
    assert loaded["cases"][1]["errors"]["out"]["ratio"] == pytest.approx(5e-3 / (2e-3 + SLACK))
    assert first["errors"]["dv"]["ratio"] == 0.0  # exact kernel
    assert first["errors"]["dv"]["baseline_ceiling"] == "inf"
    assert loaded["cases"][2]["exception"].startswith("RuntimeError")


def test_junit_is_parseable_and_counts_failures_and_errors(tmp_path):
    path = write_junit(tmp_path / "verify.xml", [PASSING, FAILING, RAISING], env=ENV, seconds=1.0)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [PASSING.name, FAILING.name, RAISING.name]
    assert cases[0].find("failure") is None
    assert "replay: flashref verify --case" in cases[1].find("failure").text
    assert cases[2].find("error").get("message") == "RuntimeError: kernel exploded"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["triton"] == "3.9.0" and props["device"] == "CPU, Triton interpreter"


def test_environment_reports_versions_and_device():
    env = environment()
    assert env["flashref"] and env["torch"] and env["numpy"] and env["triton"]
    assert env["device"]["kind"] in {"cpu", "cuda"}
    assert describe_device(env)


@pytest.mark.parametrize(
    "kernel, baseline, slack, ratio",
    [(2e-3, 1e-3, 0.0, 1.0), (0.0, 0.0, 0.0, 0.0), (1e-6, 0.0, 0.0, math.inf), (1e-6, 0.0, 1e-6, 1.0)],
)
def test_ratio_is_kernel_error_over_bound(kernel, baseline, slack, ratio):
    assert TensorError(kernel, baseline, slack, 2.0).ratio == ratio


def test_infinite_numbers_are_strings_in_json(tmp_path):
    outcome = dataclasses.replace(PASSING, errors={"out": TensorError(1e-6, 0.0, 0.0, 2.0)})
    report = verify_report([outcome], settings={}, env=ENV, seconds=0.0)
    loaded = json.loads(write_json(tmp_path / "r.json", report).read_text())
    assert loaded["cases"][0]["errors"]["out"]["ratio"] == "inf"
