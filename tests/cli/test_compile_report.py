"""Specification of `flashref compile-report`: the selection, the table, the gate's verdicts, JSON.

The gate's logic is checked with a stand-in compile gate (so a spill, a compile error and a
missing wgmma can be forced without compiling); one real compile runs in a fresh process
(marked `compile`). Compiling every specialization is the `compile` tests' job in tests/kernels.
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
from flashref.commands import compile_report
from flashref.commands.compile_report import row_problems
from flashref.kernels import compile_gate as real_gate


@dataclasses.dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclasses.dataclass(frozen=True)
class Spec:
    kernel: str
    head_dim: int
    dtype: str
    causal: bool
    config: Config


DEFAULT, OTHER = Config(128, 64, 8, 3), Config(64, 64, 4, 2)


def row_for(spec: Spec, arch: str, **changes) -> dict:
    row = dict(kernel=spec.kernel, arch=arch, head_dim=spec.head_dim, dtype=spec.dtype, causal=spec.causal,
               BLOCK_M=spec.config.block_m, BLOCK_N=spec.config.block_n, num_warps=spec.config.num_warps,
               num_stages=spec.config.num_stages, registers=168, shared_memory=98304, spills=0,
               uses_wgmma=spec.dtype != "float32", compile_seconds=1.5)
    return {**row, **changes}


@pytest.fixture
def fake_gate(monkeypatch):
    """A stand-in compile gate: two kernels x head dims x dtypes x causal x two configs.
    `broken` maps a kernel name to the row fields (or exception) its compile produces."""

    def install(broken=None):
        broken = broken or {}
        calls = {"axes": [], "compiled": []}

        def specializations(**axes):
            axes.pop("arch")
            calls["axes"].append(axes)
            axes = dict(dict(head_dims=(64, 128), dtypes=("bfloat16", "float32"), causal=(False, True),
                             kernels=("forward", "backward_dq")), **axes)
            return [Spec(k, d, dt, c, cfg) for k in axes["kernels"] for d in axes["head_dims"]
                    for dt in axes["dtypes"] for c in axes["causal"] for cfg in (DEFAULT, OTHER)]

        def compile_specialization(spec, arch):
            calls["compiled"].append((spec, arch))
            fault = broken.get(spec.kernel, {})
            if isinstance(fault, Exception):
                raise fault
            return types.SimpleNamespace(**row_for(spec, arch, **fault))

        gate = types.SimpleNamespace(specializations=specializations, compile_specialization=compile_specialization,
                                     configs_for=lambda kernel, head_dim, dtype, arch: (DEFAULT, OTHER),
                                     problems=real_gate.problems, VARIANT_BY_NAME=real_gate.VARIANT_BY_NAME,
                                     TENSOR_CORE_MMA=real_gate.TENSOR_CORE_MMA,
                                     mma_sync_by_design=real_gate.mma_sync_by_design)
        monkeypatch.setattr(compile_report, "_gate", lambda: gate)
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # restored after the test
        return calls

    return install


@pytest.mark.parametrize(
    "changes, arch, problems",
    [
        ({}, "sm_90", []),
        ({"spills": 64}, "sm_90", ["spills 64 B"]),
        ({"spills": 8, "dtype": "float32", "uses_wgmma": False}, "sm_80", ["spills 8 B"]),  # no excuse
        ({"uses_wgmma": False}, "sm_90", ["no wgmma"]),
        ({"uses_wgmma": False}, "sm_80", []),  # Ampere has no wgmma
        ({"uses_wgmma": False, "dtype": "float32"}, "sm_90", []),  # exact fp32 dots use no MMA
        ({"uses_wgmma": False, "kernel": "backward_delta"}, "sm_90", []),  # no matrix product at all
        ({"shared_memory": 200000}, "sm_80", ["smem 200000 > 166912 B"]),
        ({"spills": 8, "uses_wgmma": False}, "sm_90", ["spills 8 B", "no wgmma"]),
    ],
)
def test_gate_verdicts(changes, arch, problems):
    spec = Spec("forward", 128, "bfloat16", True, DEFAULT)
    assert row_problems(row_for(spec, arch, **changes)) == problems


def test_a_row_that_did_not_compile_fails():
    assert row_problems({"kernel": "forward", "arch": "sm_90", "error": "RuntimeError: ptxas fatal\nmore"}) == [
        "does not compile"]


def test_clean_rows_print_a_table_and_exit_0(fake_gate, capsys, tmp_path):
    calls = fake_gate()
    assert main(["compile-report", "--arch", "sm_80", "--jobs", "1", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert len(calls["compiled"]) == 2 * 2 * 2 * 2 * 2 and {a for _, a in calls["compiled"]} == {"sm_80"}
    for header in ("kernel", "head dim", "BLOCK_M", "warps", "stages", "regs/thread", "smem bytes",
                   "spill bytes", "wgmma", "gate"):
        assert header in out
    assert "backward_dq" in out and "98304" in out and "PASS: all 32 specializations compile for sm_80" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["arch"] == "sm_80" and len(report["rows"]) == 32
    assert report["rows"][0]["registers"] == 168 and report["rows"][0]["problems"] == []
    streamed = (tmp_path / "c.json.rows.jsonl").read_text().splitlines()  # kept if a run is cut short
    assert len(streamed) == 32 and json.loads(streamed[0])["arch"] == "sm_80"


@pytest.mark.parametrize(
    "argv, axes, count",
    [
        (["--quick"], dict(head_dims=(64, 128, 256), dtypes=("bfloat16",), variants=("plain",)), 2 * 3 * 1 * 2),
        (["--kernel", "forward", "--head-dim", "64", "--dtype", "float16", "--causal", "on"],
         dict(kernels=("forward",), head_dims=(64,), dtypes=("float16",), causal=(True,)), 1 * 1 * 1 * 1 * 2),
    ],
)
def test_filters_reach_the_gate(fake_gate, capsys, argv, axes, count):
    calls = fake_gate()
    assert main(["compile-report", "--jobs", "1", *argv]) == 0
    assert calls["axes"] == [axes]
    assert len(calls["compiled"]) == count
    if "--quick" in argv:
        assert {spec.config for spec, _ in calls["compiled"]} == {DEFAULT}


def test_a_spill_or_a_compile_error_fails_the_command(fake_gate, capsys):
    fake_gate({"forward": {"spills": 256}, "backward_dq": RuntimeError("PassManager::run failed")})
    assert main(["compile-report", "--jobs", "1", "--dtype", "bfloat16", "--head-dim", "64"]) == 1
    out = capsys.readouterr().out
    assert out.count("spills 256 B") == 4 and out.count("does not compile") == 4
    assert "backward_dq d=64 bfloat16 causal=False BLOCK_M=128 BLOCK_N=64 warps=8: RuntimeError: PassManager::run failed" in out
    assert "FAIL: 8 of 8 specializations fail" in out


def test_bad_arguments_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile-report", "--arch", "sm_70"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sm_70'" in capsys.readouterr().err


@pytest.mark.compile
def test_one_real_specialization_compiles_for_hopper(tmp_path):
    """No GPU needed: the delta kernel (the smallest) compiled for sm_90 in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "flashref", "compile-report", "--kernel", "backward_delta", "--head-dim", "64",
         "--dtype", "bfloat16", "--variant", "plain", "--jobs", "1", "--json", str(tmp_path / "c.json")],
        capture_output=True, text=True, env=env, timeout=600)
    report = json.loads((tmp_path / "c.json").read_text())
    (row,) = report["rows"]
    assert (row["kernel"], row["head_dim"], row["dtype"], row["arch"]) == ("backward_delta", 64, "bfloat16", "sm_90")
    assert row["registers"] > 0 and row["shared_memory"] >= 0
    assert proc.returncode == (0 if not row["problems"] else 1), proc.stdout + proc.stderr


def test_the_command_and_pytest_share_one_verdict(monkeypatch):
    """`compile-report` asks compile_gate.problems (what `pytest -m compile` asserts on)."""
    seen = []
    monkeypatch.setattr(real_gate, "problems", lambda row: seen.append(row) or ["judged by the gate"])
    row = {"kernel": "forward", "arch": "sm_90", "spills": 0}
    assert row_problems(row) == ["judged by the gate"] and seen == [row]


def test_unknown_variant_is_rejected(fake_gate, capsys):
    fake_gate()
    assert main(["compile-report", "--jobs", "1", "--variant", "nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().out


def test_prune_table_keeps_what_the_gate_passes_and_resumes(monkeypatch, tmp_path, capsys):
    """`--prune-table` compiles each candidate of a group once and writes those the gate
    passes; a rerun skips the groups already in the file."""
    compiled = []

    def fake_compile_one(spec, arch):  # a 128-row tile spills, the rest is clean
        compiled.append(spec)
        c = spec.config
        return dict(kernel=spec.kernel, arch=arch, head_dim=spec.head_dim, dtype=spec.dtype, causal=spec.causal,
                    variant="plain", BLOCK_M=c.block_m, BLOCK_N=c.block_n, num_warps=c.num_warps,
                    num_stages=c.num_stages, registers=100 + c.block_n, shared_memory=1000 * c.num_stages,
                    spills=64 if c.block_m == 128 else 0, uses_wgmma=True, compile_seconds=0.1)

    monkeypatch.setattr(compile_report, "compile_one", fake_compile_one)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    path = tmp_path / "sm_90.json"
    argv = ["compile-report", "--arch", "sm_90", "--jobs", "1", "--prune-table", str(path)]
    assert main([*argv, "--kernel", "backward_dq", "--head-dim", "64"]) == 0
    table = json.loads(path.read_text())
    assert table["schema"] == "flashref.tile-table/1" and table["arch"] == "sm_90"
    assert list(table["tables"]) == ["backward_dq/64"]
    kept = [e["config"] for e in table["tables"]["backward_dq/64"]]
    assert kept and all(c["block_m"] == 64 for c in kept)
    assert all(r["problems"] == ["spills 64 B"] for r in table["rejected"]["backward_dq/64"])
    assert {(s.dtype, s.causal, s.head_dim) for s in compiled} == {("bfloat16", True, 64)}
    assert len(kept) + len(table["rejected"]["backward_dq/64"]) == len(compiled) == 16

    # resume over every group: backward_dq/64 is not compiled again
    compiled.clear()
    assert main(argv) == 0
    table = json.loads(path.read_text())
    assert "backward_dq/64" in table["tables"] and "backward_dk/256" in table["tables"]
    assert not any((s.kernel, s.head_dim) == ("backward_dq", 64) for s in compiled)
    # a candidate whose float32 tiles alone overflow the register file is never compiled
    assert any("not compiled" in p for r in table["rejected"]["forward/256"] for p in r["problems"])


def test_prune_table_refuses_another_archs_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"schema": "flashref.tile-table/1", "arch": "sm_80", "tables": {}}))
    assert main(["compile-report", "--arch", "sm_90", "--prune-table", str(path)]) == 2
    assert "table of sm_80" in capsys.readouterr().out
