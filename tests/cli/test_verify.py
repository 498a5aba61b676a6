"""Specification of `flashref verify`, the correctness gate CI relies on.

One real configuration runs end to end under the interpreter (a tiny one); the gate's
logic (exit codes, replay lines, filters, reports) is checked with a stand-in
`check_case`, so a failure can be forced.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from flashref import gate
from flashref.cli import main

TINY = "b1-hq2-hkv1-lq17-lk9-d16-float32-causal_bottom_right-kvlens"


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch):
    """The in-process tests below never launch a kernel (check_case is stood in for); this
    keeps verify's guard quiet if another test in this process already loaded the kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_a_real_tiny_case_passes_end_to_end(tmp_path):
    """A fresh process, as a user runs it: verify must set up the interpreter by itself."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "flashref", "verify", "--case", TINY, "--seed", "11", "--device", "cpu",
         "--json", str(tmp_path / "v.json"), "--junit", str(tmp_path / "v.xml")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 1/1" in proc.stdout and TINY in proc.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["summary"]["all_passed"] and report["settings"]["seed"] == 11
    assert report["cases"][0]["config"]["seqlen_k"] == 9
    assert ET.parse(tmp_path / "v.xml").getroot().find("testsuite").get("failures") == "0"


def fake_check(*, broken: set[str] = frozenset(), raising: set[str] = frozenset(), seen: list | None = None):
    """A check_case whose verdicts are chosen by case name: `broken` exceed the bound on dq."""

    def check_case(case, device="cpu"):
        if seen is not None:
            seen.append(case)
        if case.name in raising:
            raise RuntimeError("triton compilation failed")
        dq_error = 1.0 if case.name in broken else 1e-4
        errors = {"out": gate.judge(1e-4, 1e-4, 2), "dq": gate.judge(dq_error, 1e-4, 3),
                  "dk": gate.judge(1e-4, 1e-4, 3), "dv": gate.judge(1e-4, 1e-4, 3)}
        return gate.CaseResult(case, errors, 0.01)

    return check_case


def test_a_failure_exits_nonzero_and_prints_seed_and_replay(monkeypatch, capsys, tmp_path):
    cases = gate.sweep("quick", seed=100)[:3]
    monkeypatch.setattr(gate, "sweep", lambda *a, **kw: cases)
    monkeypatch.setattr(gate, "check_case", fake_check(broken={cases[1].name}))
    code = main(["verify", "--seed", "100", "--junit", str(tmp_path / "v.xml")])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL: 1 of 3" in out and "seed 100" in out
    assert cases[1].replay_command() in out.splitlines()[-1]
    assert "dq: kernel err 1" in out
    suite = ET.parse(tmp_path / "v.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1"
    assert cases[1].replay_command() in suite.findall("testcase")[1].find("failure").text


def test_the_replay_line_replays_the_same_case_and_seed(monkeypatch, capsys):
    failing = gate.sweep("quick", seed=40)[5]
    monkeypatch.setattr(gate, "sweep", lambda *a, **kw: [failing])
    monkeypatch.setattr(gate, "check_case", fake_check(broken={failing.name}))
    assert main(["verify"]) == 1
    replay = capsys.readouterr().out.splitlines()[-1].strip()
    seen: list = []
    monkeypatch.setattr(gate, "check_case", fake_check(seen=seen))
    argv = shlex.split(replay)
    assert argv[:2] == ["flashref", "verify"]
    assert main(argv[1:]) == 0
    assert seen == [failing]


def test_a_case_that_raises_is_an_error_not_a_crash(monkeypatch, capsys, tmp_path):
    cases = gate.sweep("quick", seed=0)[:2]
    monkeypatch.setattr(gate, "sweep", lambda *a, **kw: cases)
    monkeypatch.setattr(gate, "check_case", fake_check(raising={cases[0].name}))
    code = main(["verify", "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert code == 1 and "ERROR" in out and "raised RuntimeError: triton compilation failed" in out
    report = json.loads((tmp_path / "v.json").read_text())
    assert [c["passed"] for c in report["cases"]] == [False, True]


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], dict(preset="quick", dtypes=None, head_dims=None, causal=None)),
        (["--full"], dict(preset="full", dtypes=None, head_dims=None, causal=None)),
        (["--dtype", "float16,bfloat16", "--head-dim", "64", "--causal", "off"],
         dict(preset="quick", dtypes=("float16", "bfloat16"), head_dims=(64,), causal=False)),
        (["--causal", "on", "--head-dim", "40,128"], dict(preset="quick", dtypes=None, head_dims=(40, 128), causal=True)),
        (["--ci", "--dtype", "float8_e4m3fn"], dict(preset="ci", dtypes=("float8_e4m3fn",), head_dims=None, causal=None)),
    ],
)
def test_filters_reach_the_sweep(monkeypatch, capsys, argv, expected):
    calls, real_sweep = [], gate.sweep

    def sweep(preset, *, dtypes=None, head_dims=None, causal=None, seed=0):
        calls.append(dict(preset=preset, dtypes=dtypes, head_dims=head_dims, causal=causal, seed=seed))
        return real_sweep("quick", seed=seed)[:1]

    monkeypatch.setattr(gate, "sweep", sweep)
    monkeypatch.setattr(gate, "check_case", fake_check())
    assert main(["verify", *argv, "--seed", "9"]) == 0
    assert calls == [dict(expected, seed=9)]
    assert "PASS: 1/1" in capsys.readouterr().out


def test_without_a_seed_a_fresh_one_is_drawn_and_printed(monkeypatch, capsys):
    seeds, real_sweep = [], gate.sweep

    def sweep(preset, *, seed, **kw):
        seeds.append(seed)
        return real_sweep("quick", seed=seed)[:1]

    monkeypatch.setattr(gate, "sweep", sweep)
    monkeypatch.setattr(gate, "check_case", fake_check())
    main(["verify"])
    first = capsys.readouterr().out
    main(["verify"])
    assert seeds[0] != seeds[1]
    assert f"seed {seeds[0]}" in first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verify", "--dtype", "float64"], "'float64' is not one of: float16, bfloat16, float32, float8_e4m3fn"),
        (["verify", "--causal", "maybe"], "invalid choice: 'maybe'"),
        (["verify", "--quick", "--full"], "not allowed with argument"),
        (["verify", "--head-dim", "sixty-four"], "cannot read 'sixty-four'"),
        (["verify", "--seed", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_are_clear_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verify", "--case", "not-a-case"], "case name must look like"),
        (["verify", "--head-dim", "512"], "head_dims must be integers in [1, 256]"),
    ],
)
def test_bad_values_the_sweep_rejects_exit_2_with_its_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().out


def test_cli_start_up_imports_neither_triton_nor_torch():
    """The interpreter must be chosen before triton loads, so `flashref --help` may not load it."""
    code = ("import sys; from flashref.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('triton', 'torch', 'flashref.kernels') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("mode", [["--model"], ["--distributed", "2"], ["--fuzz", "5"]])
def test_fp8_is_a_sweep_dtype_only(mode, capsys):
    # the FP8 forward's cases live in the kernels' sweep; the model, ring and fuzz checks have none
    assert main(["verify", *mode, "--dtype", "float8_e4m3fn"]) == 2
    assert "no FP8 cases" in capsys.readouterr().out


def test_an_fp8_only_sweep_is_the_fp8_forwards_cases():
    cases = gate.sweep("ci", dtypes=["float8_e4m3fn"])
    assert [c.name for c in cases] == [c.name for c in gate.sweep("ci", families=["dense"]) if c.dtype == gate.FP8]
    assert len(cases) == len(gate.FP8_CASES)
