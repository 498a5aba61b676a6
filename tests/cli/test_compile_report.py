"""Specification of `flashref compile-report`: the table, the gate's verdicts, the JSON.

The gate's logic is checked with a stand-in `compile_specializations` (so a spill, a
compile error and a missing wgmma can be forced); compiling the real kernels for sm_90 is
the `compile` tests' job in tests/kernels, and one real run here is marked `compile`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types

import pytest

from flashref.cli import main
from flashref.commands.compile_report import row_problems


@dataclasses.dataclass(frozen=True)
class Row:
    kernel: str
    head_dim: int
    dtype: str
    causal: bool
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int
    registers: int
    shared_memory: int
    spills: int
    uses_wgmma: bool


CLEAN = Row("forward", 128, "bfloat16", True, 128, 64, 8, 3, 168, 98304, 0, True)


@pytest.fixture
def fake_gate(monkeypatch):
    """Install a stand-in flashref.kernels.compile_gate returning the rows given to it."""

    def install(rows):
        calls = []

        def compile_specializations(arch="sm_90"):
            calls.append(arch)
            return rows

        module = types.ModuleType("flashref.kernels.compile_gate")
        module.compile_specializations = compile_specializations
        monkeypatch.setitem(sys.modules, "flashref.kernels.compile_gate", module)
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # restored after the test
        return calls

    return install


@pytest.mark.parametrize(
    "changes, arch, problem",
    [
        ({}, "sm_90", None),
        ({"spills": 64}, "sm_90", "64 bytes spilled"),
        ({"uses_wgmma": False}, "sm_90", "no wgmma on sm_90"),
        ({"uses_wgmma": False}, "sm_80", None),  # Ampere has no wgmma to use
    ],
)
def test_gate_verdicts(changes, arch, problem):
    problems = row_problems(dataclasses.asdict(dataclasses.replace(CLEAN, **changes)), arch)
    assert problems == ([] if problem is None else [problem])


def test_a_row_that_did_not_compile_fails():
    assert row_problems({"kernel": "forward", "error": "ptxas fatal: out of registers\nmore"}, "sm_90") == [
        "does not compile: ptxas fatal: out of registers"]


def test_clean_rows_print_a_table_and_exit_0(fake_gate, capsys, tmp_path):
    calls = fake_gate([CLEAN, dataclasses.replace(CLEAN, kernel="backward_dq", head_dim=64)])
    assert main(["compile-report", "--arch", "sm_80", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert calls == ["sm_80"]
    for header in ("kernel", "head dim", "BLOCK M", "warps", "stages", "regs/thread", "smem bytes", "spills", "wgmma"):
        assert header in out
    assert "backward_dq" in out and "98304" in out and "all 2 specializations compile for sm_80" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["arch"] == "sm_80" and len(report["rows"]) == 2
    assert report["rows"][0]["registers"] == 168 and report["rows"][0]["problems"] == []


def test_a_spill_fails_the_command(fake_gate, capsys):
    fake_gate([CLEAN, dataclasses.replace(CLEAN, spills=256)])
    assert main(["compile-report"]) == 1
    out = capsys.readouterr().out
    assert "256 bytes spilled" in out and "1 of 2 specializations fail" in out


def test_bad_arch_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile-report", "--arch", "sm_70"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sm_70'" in capsys.readouterr().err
