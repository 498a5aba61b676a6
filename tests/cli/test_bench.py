"""Specification of the benchmark sweep's bookkeeping and of `flashref bench` without a GPU.

The sweep's timing needs a GPU; its logic (FLOP counts, plan, fresh inputs, failure
classification, time budget, JSON, plots) is checked here on the CPU with tiny shapes
and a fake timer that reports 1 ms, so TFLOP/s are exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import flashref.reporting as R
from flashref.bench import dense as B
from flashref.cli import main


def one_ms(fn, *, warmup_ms, rep_ms, grad_to_none=None):
    fn()
    return 1.0


TINY = dict(tokens=64, model_dim=32)


@pytest.mark.parametrize(
    "args, causal, direction, expected",
    [
        ((1, 1, 1, 1, 1), False, "fwd", 4.0),
        ((2, 16, 1024, 1024, 128), False, "fwd", 4.0 * 2 * 16 * 1024 * 1024 * 128),
        ((2, 16, 1024, 1024, 128), True, "fwd", 2.0 * 2 * 16 * 1024 * 1024 * 128),
        ((1, 1, 3, 5, 7), False, "bwd", 2.5 * 4 * 3 * 5 * 7),
        ((1, 1, 3, 5, 7), True, "fwd_bwd", 3.5 * 2 * 3 * 5 * 7),
    ],
)
def test_flop_count_is_flashattentions(args, causal, direction, expected):
    assert B.attention_flops(*args, causal=causal, direction=direction) == pytest.approx(expected)


def test_flop_count_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        B.attention_flops(1, 1, 1, 1, 1, causal=False, direction="sideways")


def test_plans_keep_tokens_and_width_fixed():
    full = B.Plan.preset("full")
    cases = full.cases()
    assert len(cases) == 6 * 3 * 2 * 2 * 3
    assert {c.seqlen for c in cases} == {512, 1024, 2048, 4096, 8192, 16384}
    assert all(c.batch * c.seqlen == 16384 and c.heads * c.head_dim == 2048 for c in cases)
    quick = B.Plan.preset("quick")
    assert set(quick.head_dims) == {64, 128, 256} and len(quick.cases()) < len(cases)
    with pytest.raises(ValueError, match="preset"):
        B.Plan.preset("medium")


@pytest.mark.parametrize("direction", B.DIRECTIONS)
@pytest.mark.parametrize("impl", ["naive_torch", "sdpa_math"])
def test_measure_on_cpu_reports_tflops_from_the_timer(impl, direction):
    case = B.BenchCase("float32", 16, True, 32, direction, **TINY)
    m = B.measure(case, impl, device="cpu", timer=one_ms)
    assert m.status == "ok", m.message
    assert m.tflops == pytest.approx(case.flops / 1e-3 / 1e12)
    assert m.peak_memory_bytes is None  # only measured on CUDA


def test_sdpa_backends_are_pinned_not_substituted():
    """torch has no memory-efficient or cuDNN attention on the CPU: pinned, they must be
    reported unsupported rather than silently timed as another backend."""
    case = B.BenchCase("float32", 16, False, 32, "fwd", **TINY)
    statuses = {impl: B.measure(case, impl, device="cpu", timer=one_ms).status
                for impl in ("sdpa_efficient", "sdpa_cudnn", "sdpa_math")}
    assert statuses == {"sdpa_efficient": "unsupported", "sdpa_cudnn": "unsupported", "sdpa_math": "ok"}


def test_naive_attention_matches_torch_sdpa():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(B.ATTENTION["naive_torch"](q, k, v, causal), want)


@pytest.mark.parametrize(
    "exc, status",
    [
        (NotImplementedError("head dim 256"), "unsupported"),
        (RuntimeError("No available kernel. Aborting execution."), "unsupported"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB"), "oom"),
        (RuntimeError("illegal memory access"), "error"),
    ],
)
def test_failures_are_recorded_not_raised(monkeypatch, exc, status):
    def broken(q, k, v, causal):
        raise exc

    monkeypatch.setitem(B.ATTENTION, "flashref", broken)
    m = B.measure(B.BenchCase("float32", 16, False, 32, "fwd", **TINY), "flashref", device="cpu", timer=one_ms)
    assert (m.status, m.tflops) == (status, None)
    assert type(exc).__name__ in m.message


def tiny_plan(**kw) -> B.Plan:
    base = dict(seqlens=(16, 32), head_dims=(8,), dtypes=("float32",), directions=("fwd", "fwd_bwd"),
                implementations=("naive_torch", "sdpa_math"), warmup_ms=1, rep_ms=1, **TINY)
    return B.Plan(**{**base, **kw})


def test_sweep_report_is_strict_json_and_plots(tmp_path):
    report = B.run_sweep(tiny_plan(), device="cpu", timer=one_ms, ceiling_n=16)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["schema"] == B.BENCH_SCHEMA
    assert len(report["results"]) == 2 * 2 * 2 * 2  # lengths x causal x directions x implementations
    assert B.status_counts(report["results"]) == {"ok": 16}
    assert report["matmul_ceiling_tflops"]["float32"] == pytest.approx(2 * 16**3 / 1e-3 / 1e12, abs=0.01)
    assert set(report["environment"]) >= {"torch", "triton", "numpy", "device"}
    pngs = B.plot_report(report, tmp_path)
    assert [p.name for p in pngs] == ["attention_tflops_float32.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = B.markdown_tables(report)
    assert "| naive_torch |" in table and "| implementation | 16 | 32 |" in table


def test_sweep_records_the_rest_as_skipped_when_time_runs_out():
    report = B.run_sweep(tiny_plan(), device="cpu", timer=one_ms, ceiling_n=16, time_budget_s=0.0)
    assert B.status_counts(report["results"]) == {"skipped": 16}
    assert B.markdown_tables(report).count(" - |") > 0


def test_bench_without_gpu_says_so_and_points_at_cpu_benchmarks(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench"]) == 1
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "flashref bench --cpu" in out and "--benchmark-enable" in out


def test_bench_cpu_runs_the_pytest_benchmark_suite_single_threaded(monkeypatch, capsys):
    calls = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("subprocess.call", lambda cmd, cwd, env: calls.append((cmd, cwd, env)) or 0)
    assert main(["bench", "--cpu"]) == 0
    (cmd, cwd, env), = calls
    assert cmd[1:4] == ["-m", "pytest", f"{cwd}/bench"]
    assert "python_files=bench_*.py" in cmd and "--benchmark-enable" in cmd
    assert env["OMP_NUM_THREADS"] == "1"


def test_bench_on_a_gpu_writes_json_tables_and_plots(monkeypatch, tmp_path, capsys):
    """The GPU path end to end, with the sweep itself run on the CPU with tiny shapes."""
    real_sweep = B.run_sweep

    def cpu_sweep(plan, **kw):
        plan = dataclasses.replace(plan, warmup_ms=1, rep_ms=1, **TINY, seqlens=(16,), head_dims=(8,))
        return real_sweep(plan, device="cpu", timer=one_ms, ceiling_n=16, time_budget_s=kw["time_budget_s"],
                          on_result=kw["on_result"])

    env = {**R.environment(), "device": {"kind": "cuda", "name": "Fake GPU", "capability": "sm_90"}}
    monkeypatch.setattr(R, "environment", lambda: env)
    monkeypatch.setattr(B, "run_sweep", cpu_sweep)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code = main(["bench", "--out", str(tmp_path), "--impl", "naive_torch,sdpa_math", "--dtype", "float16",
                 "--direction", "fwd"])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {r["implementation"] for r in report["results"]} == {"naive_torch", "sdpa_math"}
    assert len((tmp_path / "bench.jsonl").read_text().splitlines()) == len(report["results"])
    assert (tmp_path / "attention_tflops_float16.png").exists() and (tmp_path / "results.md").exists()
    assert "best TFLOP/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--head-dim", "65"], "'65' is not one of: 64, 128, 256"),
        (["bench", "--dtype", "float64"], "'float64' is not one of"),
        (["bench", "--seqlen", "1k"], "cannot read '1k'"),
        (["bench", "--quick", "--full"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_clear_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- bench/gpu_check.sh
GPU_CHECK = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def run_gpu_check(tmp_path, *args, cuda=True, budget=None):
    """Run the script with a stand-in `python3` that records each call (and says whether CUDA
    is there): the script's structure, order and time box, without a GPU or minutes."""
    import subprocess

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python3"
    fake.write_text('#!/bin/bash\necho "$*" >> "$CALLS"\n'
                    'if [ "$1" = "-" ]; then cat >/dev/null; exit "$FAKE_CUDA_RC"; fi\n'
                    'case "$*" in *get_device_capability*) echo sm_90;; esac\nexit 0\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "CALLS": str(calls), "FAKE_CUDA_RC": "0" if cuda else "3",
           "PYTHON": str(fake), "HOME": str(tmp_path)}
    if budget:
        env["FLASHREF_GPU_BUDGET_S"] = str(budget)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(GPU_CHECK), *args, str(out)], env=env, capture_output=True, text=True,
                          timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc, lines, out


def test_gpu_check_runs_tests_then_tune_then_bench_within_8_minutes(tmp_path):
    proc, calls, out = run_gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls[0] == "-"  # the CUDA probe
    assert calls[1] == "-m pip install -q --no-deps --no-build-isolation -e ."
    steps = [c.split()[1] + (" " + c.split()[2] if c.startswith("-m flashref") else "") for c in calls[2:]]
    assert steps == ["import", "import", "flashref compile-report", "pytest", "pytest", "flashref tune",
                     "flashref bench"], calls
    assert "--prune-table" in calls[4]
    assert "tests/kernels -m gpu" in calls[5] and "large_logits" in calls[6]
    tune_budget = int(calls[7].split("--time-budget ")[1].split()[0])
    bench = calls[8]
    assert "--impl flashref,sdpa_flash,sdpa_efficient,sdpa_cudnn" in bench and f"--out {out}/bench" in bench
    bench_budget = int(bench.split("--time-budget ")[1].split()[0])
    # the tuner gets its cap, the sweep what is left after the tail kept for plots and listing
    assert 0 < tune_budget <= 150 and 60 <= bench_budget <= 480 - 40
    assert (out / "gpu_check.log").exists() and "done in" in (out / "gpu_check.log").read_text()


def test_gpu_check_refuses_without_cuda(tmp_path):
    proc, calls, out = run_gpu_check(tmp_path, cuda=False)
    assert proc.returncode == 1 and "no CUDA device" in proc.stdout
    assert calls == ["-"]


def test_gpu_check_dry_run_touches_no_gpu(tmp_path):
    proc, calls, out = run_gpu_check(tmp_path, "--dry-run", cuda=False)
    assert proc.returncode == 0, proc.stdout
    assert not any("pip install" in c for c in calls)
    assert any(c.startswith("-m pytest") and "--collect-only" in c for c in calls)
    assert any(c.startswith("-m flashref tune --dry-run --arch sm_90") for c in calls)


def test_gpu_check_refuses_a_budget_its_steps_do_not_fit(tmp_path):
    proc, calls, out = run_gpu_check(tmp_path, budget=200)
    assert proc.returncode == 1 and "do not fit the budget of 200 s" in proc.stdout


# ---------------------------------------------------------------------------- the gate's implementations
def test_bench_cpu_times_gate_implementations_side_by_side(tmp_path, capsys):
    """`flashref bench --cpu --impl A --impl B`: the same names as `verify --impl`, timed on the
    same points; a point an implementation does not declare is unsupported, not timed."""
    code = main(["bench", "--cpu", "--impl", "sdpa-math", "--impl", "user_attention_for_bench:attention,sdpa-efficient",
                 "--features", "causal_top_left", "--seqlen", "16,32", "--head-dim", "64", "--tokens", "64",
                 "--model-dim", "128", "--direction", "fwd,fwd_bwd", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "bench.json").read_text())
    names = ["sdpa-math", "user_attention_for_bench:attention", "sdpa-efficient"]
    assert report["plan"]["implementations"] == names and report["plan"]["dtypes"] == ["float32"]
    assert report["implementations"]["user_attention_for_bench:attention"]["features"] == ["causal_top_left"]
    status = {}
    for r in report["results"]:
        assert (r["batch"], r["heads"], r["head_dim"]) == (64 // r["seqlen"], 2, 64)
        status.setdefault(r["implementation"], set()).add(r["status"])
    assert status == {"sdpa-math": {"ok"}, "user_attention_for_bench:attention": {"ok"}, "sdpa-efficient": {"unsupported"}}
    assert all(r["tflops"] > 0 for r in report["results"] if r["status"] == "ok")
    assert "efficient" in next(r["message"] for r in report["results"] if r["implementation"] == "sdpa-efficient")
    table = (tmp_path / "results.md").read_text()
    assert "| user_attention_for_bench:attention |" in table and "| sdpa-efficient | n/a | n/a |" in table
    assert (tmp_path / "attention_tflops_float32.png").read_bytes()[:4] == b"\x89PNG"
    assert "sdpa-efficient unsupported:" in out


def test_bench_a_point_outside_the_declared_features_is_unsupported(tmp_path):
    """A plain callable declares nothing: its causal points are unsupported (never timed), its
    others run; a forward-only implementation's backward points are unsupported on the CPU."""
    from flashref.gate import Implementation

    from user_attention_for_bench import attention

    plain = B.gate_target(Implementation("plain", attention))
    forward_only = B.gate_target(Implementation("fwd-only", attention, features={"causal_top_left"},
                                                backward_devices=("cuda",)))
    statuses = {(t.name, causal, direction): B.measure(B.BenchCase("float32", 8, causal, 16, direction, **TINY), t,
                                                       device="cpu", timer=one_ms).status
                for t in (plain, forward_only) for causal in (False, True) for direction in ("fwd", "bwd")}
    assert statuses == {("plain", False, "fwd"): "ok", ("plain", False, "bwd"): "ok",
                        ("plain", True, "fwd"): "unsupported", ("plain", True, "bwd"): "unsupported",
                        ("fwd-only", False, "fwd"): "ok", ("fwd-only", True, "fwd"): "ok",
                        ("fwd-only", False, "bwd"): "unsupported", ("fwd-only", True, "bwd"): "unsupported"}


def test_bench_blhd_implementations_get_their_layout(tmp_path):
    from flashref.gate import Implementation

    def blhd(q, k, v):
        assert q.shape == (4, 16, 4, 8)  # (B, L, H, D) at TINY sizes: B*L = 64, H*D = 32
        return q.clone()

    target = B.gate_target(Implementation("blhd", blhd, layout="blhd"))
    m = B.measure(B.BenchCase("float32", 8, False, 16, "fwd", **TINY), target, device="cpu", timer=one_ms)
    assert m.status == "ok", m.message


@pytest.mark.parametrize("argv, message", [
    (["bench", "--cpu", "--impl", "nosuch"], "unknown implementation 'nosuch'"),
    (["bench", "--cpu", "--impl", "no_such_module_at_all:f"], "cannot import"),
    (["bench", "--cpu", "--impl", "sdpa-math", "--features", "telepathy"], "unknown features"),
])
def test_bench_a_bad_impl_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().out
