"""Specification of the verify reports: the terminal table, the JSON schema, the JUnit XML."""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console

from flashref.reporting import (VERIFY_SCHEMA, CaseOutcome, TensorError, describe_device, environment,
                                verify_report, verify_table, write_json, write_junit)


@dataclasses.dataclass(frozen=True)
class FakeCase:
    batch: int = 1
    seqlen_q: int = 17
    head_dim: int = 64
    dtype: str = "float16"
    causal: bool = True
    seed: int = 7

    @property
    def name(self) -> str:
        return f"b{self.batch}-q{self.seqlen_q}-d{self.head_dim}-{self.dtype}-{'causal' if self.causal else 'full'}-s{self.seed}"

    def replay_command(self) -> str:
        return f"flashref verify --case {self.name}"


@dataclasses.dataclass
class FakeError:
    kernel: float
    baseline: float
    bound: float


@dataclasses.dataclass
class FakeResult:
    case: FakeCase
    errors: dict
    passed: bool
    seconds: float


def error(kernel: float, baseline: float, factor: float) -> FakeError:
    return FakeError(kernel, baseline, factor * baseline + 1e-5)


def result(case: FakeCase, out_kernel: float = 1e-3) -> FakeResult:
    errors = {"out": error(out_kernel, 1e-3, 2), "dq": error(2e-3, 1e-3, 3),
              "dk": error(1e-3, 1e-3, 3), "dv": error(0.0, 0.0, 3)}
    return FakeResult(case, errors, all(e.kernel <= e.bound for e in errors.values()), 0.25)


PASSING = CaseOutcome.from_result(result(FakeCase()))
FAILING = CaseOutcome.from_result(result(FakeCase(head_dim=128, seed=9), out_kernel=5e-3))
RAISING = CaseOutcome.from_exception(FakeCase(dtype="bfloat16"), RuntimeError("kernel exploded\nsecond line"), 0.5)
ENV = {"flashref": "0.1.0", "torch": "2.13.0", "triton": "3.9.0", "numpy": "2.4.6", "python": "3.11",
       "platform": "linux", "device": {"kind": "cpu", "name": "x86_64", "triton_interpreter": True}}


@pytest.mark.parametrize(
    "kernel, baseline, bound, passed",
    [
        (1e-3, 1e-3, 2e-3 + 1e-5, True),
        (2e-3 + 1e-5, 1e-3, 2e-3 + 1e-5, True),  # the bound itself passes
        (2.1e-3, 1e-3, 2e-3 + 1e-5, False),
        (1e-5, 0.0, 1e-5, True),  # exact baseline: the absolute floor decides
        (float("nan"), 1e-3, 2e-3, False),  # NaN never passes
    ],
)
def test_tensor_error_verdict(kernel, baseline, bound, passed):
    assert TensorError(kernel, baseline, bound).passed is passed


def test_outcomes_keep_verdicts_and_replay_lines():
    assert PASSING.passed and not PASSING.failure_summary()
    assert not FAILING.passed
    assert "out: kernel err 0.005" in FAILING.failure_summary()
    assert FAILING.replay == "flashref verify --case b1-q17-d128-float16-causal-s9"
    assert not RAISING.passed and RAISING.exception.startswith("RuntimeError: kernel exploded")
    assert RAISING.failure_summary() == "raised RuntimeError: kernel exploded"


def render(table) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_table_has_a_row_per_tensor_and_marks_failures():
    text = render(verify_table([PASSING, FAILING, RAISING]))
    assert text.count("│ PASS") == 4 + 3 and text.count("│ FAIL") == 1 and text.count("│ ERROR") == 1
    for header in ("configuration", "kernel err", "baseline err", "ratio", "bound"):
        assert header in text
    assert "5.00e-03" in text and "2.01e-03" in text  # the failing out's error and bound


def test_table_can_show_only_failures():
    text = render(verify_table([PASSING, FAILING], only_failures=True))
    assert FAILING.name in text and PASSING.name not in text


def test_json_report_schema(tmp_path):
    report = verify_report([PASSING, FAILING, RAISING], settings={"preset": "quick", "seed": 7}, env=ENV, seconds=1.25)
    path = write_json(tmp_path / "sub" / "verify.json", report)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == VERIFY_SCHEMA
    assert loaded["summary"] == {"cases": 3, "passed": 1, "failed": 2, "seconds": 1.25, "all_passed": False}
    assert set(loaded["environment"]) >= {"flashref", "torch", "triton", "numpy", "device"}
    first = loaded["cases"][0]
    assert set(first) == {"name", "config", "passed", "seconds", "replay", "exception", "errors"}
    assert first["config"]["head_dim"] == 64 and first["config"]["seed"] == 7
    assert set(first["errors"]) == {"out", "dq", "dk", "dv"}
    assert set(first["errors"]["out"]) == {"kernel", "baseline", "bound", "ratio", "kernel_over_bound", "passed"}
    assert first["errors"]["dq"]["ratio"] == pytest.approx(2.0)
    assert loaded["cases"][1]["errors"]["out"]["ratio"] == pytest.approx(5.0)
    assert first["errors"]["dv"]["ratio"] == 0.0  # exact kernel and exact baseline
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
    "kernel, baseline, ratio",
    [(2e-3, 1e-3, 2.0), (0.0, 0.0, 0.0), (1e-6, 0.0, math.inf), (0.0, 1e-3, 0.0)],
)
def test_ratio_is_kernel_error_over_baseline_error(kernel, baseline, ratio):
    assert TensorError(kernel, baseline, 2 * baseline + 1e-5).ratio == ratio


def test_infinite_numbers_are_strings_in_json(tmp_path):
    outcome = dataclasses.replace(PASSING, errors={"out": TensorError(1e-6, 0.0, 1e-5)})
    report = verify_report([outcome], settings={}, env=ENV, seconds=0.0)
    loaded = json.loads(write_json(tmp_path / "r.json", report).read_text())
    assert loaded["cases"][0]["errors"]["out"]["ratio"] == "inf"
