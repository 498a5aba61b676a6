"""`flashref verify --distributed N`: argument handling and the table, with the spawned run
stood in for (the real 2-process run is tests/distributed/test_ring.py's; its output is in the
README)."""

import json

import pytest

import flashref.gate.ring as check
from flashref import gate
from flashref.cli import main


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def fake_run(factor):
    """A stand-in for run_ring_check whose 'ring' result is the baseline scaled by ``factor``
    (1: within the rule; 100: far out of it)."""

    def run(cases, world_size, *, device="cpu", scenarios=(), deadline_s=0):
        results = []
        for rc in cases:
            base = gate.baseline_attention(rc.case, gate.make_inputs(rc.case))
            ref = gate.oracle_attention(rc.case, gate.make_inputs(rc.case))
            off = [ref[t] + factor * (base[t].double().numpy() - ref[t]) for t in check.RING_TENSORS if t in ref]
            results.append(check.judge_ring_case(rc, off, 0.0))
        return check.RingRun(results, [], [True], 0.0, [])

    return run


def test_passing_run_prints_the_table_writes_reports_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(check, "run_ring_check", fake_run(1.0))
    argv = ["verify", "--distributed", "2", "--seed", "5", "--device", "cpu", "--causal", "on",
            "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ring attention, 3 configurations on 2 processes" in out and "PASS: 3/3" in out
    assert "ring2-zigzag-" in out and "ring2-contiguous-" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["all_passed"] and report["settings"]["distributed"] == 2
    assert {c["config"]["layout"] for c in report["cases"]} == {"zigzag", "contiguous"}
    assert "ring2-zigzag-" in (tmp_path / "r.xml").read_text()


def test_failing_run_prints_the_replay_line_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(check, "run_ring_check", fake_run(100.0))
    name = "ring2-zigzag-b1-hq2-hkv1-lq20-lk20-d16-float32-causal_top_left-dense"
    assert main(["verify", "--distributed", "2", "--case", name, "--seed", "3", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert f'flashref verify --distributed 2 --case "{name}" --seed 3' in out


@pytest.mark.parametrize("argv, message", [
    (["--distributed", "0"], "at least 1 process"),
    (["--distributed", "2", "--case", "b1-hq2-hkv1-lq20-lk20-d16-float32-noncausal-dense"], "ring case name"),
    (["--distributed", "4", "--case", "ring2-zigzag-b1-hq2-hkv1-lq20-lk20-d16-float32-noncausal-dense"],
     "different number of processes"),
    (["--distributed", "2", "--case", "ring2-zigzag-b1-hq2-hkv1-lq18-lk18-d16-float32-noncausal-dense"],
     "cannot be split"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(["verify", *argv, "--device", "cpu"]) == 2
    assert message in capsys.readouterr().out


def test_a_case_whose_ring_raised_is_an_error_row_and_exits_1(monkeypatch, capsys):
    def run(cases, world_size, **_):
        return check.RingRun([gate.CaseResult(rc, {}, 0.0, "RuntimeError: gloo timed out") for rc in cases],
                             [], [True], 0.0, [])

    monkeypatch.setattr(check, "run_ring_check", run)
    assert main(["verify", "--distributed", "2", "--causal", "off", "--seed", "1", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "gloo timed out" in out
