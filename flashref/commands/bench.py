"""`flashref bench`: the GPU attention sweep, or, without a GPU, the CPU benchmarks.

On a CUDA device it runs `flashref.benchmark` (flashref beside torch SDPA's
backends and a naive attention, TFLOP/s over sequence lengths) and writes, under
`--out`: bench.json, bench.jsonl (one line per point, as they come: survives a
kill), results.md (the tables) and one PNG per dtype.

Without a GPU it says so and points at the CPU benchmarks (pytest-benchmark, in
bench/); `--cpu` runs them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

from flashref.commands.argtypes import comma_list

CPU_BENCH_ARGS = ["-o", "python_files=bench_*.py", "--benchmark-enable", "-p", "no:cacheprovider"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from flashref import benchmark as B

    p = subparsers.add_parser(
        "bench",
        help="attention TFLOP/s on a GPU beside torch SDPA (or the CPU benchmarks with --cpu)",
        description=(
            "GPU: forward/backward TFLOP/s of flashref's kernel beside torch SDPA's flash, efficient, "
            "cuDNN and math backends and a naive attention, over sequence lengths at B*L=16384. "
            "No GPU: says so; --cpu runs the pytest-benchmark suite in bench/."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="a third of the sweep with short timing windows (default)")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="every length, head dim, dtype, masking and direction")
    p.set_defaults(preset=None)
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench-<UTC time>)")
    p.add_argument("--sweep", choices=("attention", "varlen", "decode"), default="attention",
                   help="attention: the TFLOP/s sweep (default); varlen: packed sequences vs padded SDPA and the "
                        "dense kernel with kv_lens; decode: KV-cache decoding GB/s vs SDPA and gather + SDPA "
                        "(flashref/packed_benchmark.py)")
    p.add_argument("--dtype", type=comma_list(str, B.DTYPES_FULL), default=None, help="e.g. bfloat16,float16")
    p.add_argument("--head-dim", type=comma_list(int, B.HEAD_DIMS_FULL), default=None, help="e.g. 64,128")
    p.add_argument("--seqlen", type=comma_list(int), default=None, help="e.g. 512,4096,16384")
    p.add_argument("--direction", type=comma_list(str, B.DIRECTIONS), default=None, help="fwd,bwd,fwd_bwd")
    p.add_argument("--impl", type=comma_list(str, B.IMPLEMENTATIONS), default=None,
                   help="subset of " + ",".join(B.IMPLEMENTATIONS))
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop measuring after this long; the rest is recorded as skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="run the CPU benchmarks (pytest-benchmark, bench/)")
    p.set_defaults(func=run)


def _bench_dir() -> Path | None:
    import flashref

    candidate = Path(flashref.__file__).resolve().parent.parent / "bench"
    return candidate if candidate.is_dir() else None


def cpu_command() -> list[str] | None:
    bench = _bench_dir()
    if bench is None:
        return None
    return [sys.executable, "-m", "pytest", str(bench), *CPU_BENCH_ARGS]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    command = cpu_command()
    if args.cpu:
        if command is None:
            console.print("[red]bench/ is not next to this flashref install (benchmarks ship with the source tree).[/]")
            return 2
        # One BLAS/OpenMP thread unless the user chose otherwise: on a shared machine a
        # multi-threaded BLAS measures contention, not the code (see bench/RESULTS.md).
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        print("running: OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 " + " ".join(command), flush=True)
        return subprocess.call(command, cwd=str(_bench_dir().parent), env=env)

    import torch

    if not torch.cuda.is_available():
        console.print("[bold yellow]No CUDA GPU here[/] (torch.cuda.is_available() is False): "
                      "the TFLOP/s sweep needs one, and Triton's interpreter is not a benchmark.")
        if command is not None:
            console.print("CPU benchmarks instead (oracle, autograd, Transformer step beside torch CPU):")
            print("  flashref bench --cpu")
            print("  or: python " + " ".join(command[1:]).replace(str(_bench_dir()), "bench/"))
        return 1
    if args.sweep != "attention":
        return _run_packed(args, console)
    return _run_gpu(args, console)


def _run_packed(args: argparse.Namespace, console) -> int:
    """The varlen or decode sweep (issue 11): bench.json, results.md (and bench.jsonl as it goes)."""
    from flashref import packed_benchmark as P
    from flashref.reporting import write_json

    out = args.out or Path("runs") / f"bench-{args.sweep}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    stream = (out / "bench.jsonl").open("w")

    def on_point(point) -> None:
        stream.write(json.dumps(point.as_dict()) + "\n")
        stream.flush()
        shown = f"{point.value:.0f} {point.unit}" if point.status == "ok" else point.status
        console.print(f"{point.sweep} {point.config} {point.implementation}: {shown}")

    copy_gbs = P.copy_bandwidth_gbs() if args.sweep == "decode" else None
    if copy_gbs is not None:
        console.print(f"device copy bandwidth: {copy_gbs:.0f} GB/s")
    points = (P.run_varlen(seed=args.seed, on_point=on_point) if args.sweep == "varlen"
              else P.run_decode(seed=args.seed, on_point=on_point))
    stream.close()
    write_json(out / "bench.json", {"sweep": args.sweep, "copy_bandwidth_gbs": copy_gbs,
                                    "points": [p.as_dict() for p in points]})
    (out / "results.md").write_text(P.markdown(points, copy_gbs))
    console.print(f"wrote {out / 'bench.json'} and {out / 'results.md'}")
    return 0


def _run_gpu(args: argparse.Namespace, console) -> int:
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from flashref import benchmark as B
    from flashref.reporting import write_json

    plan = B.Plan.preset(args.preset or "quick")
    overrides = {
        "dtypes": args.dtype, "head_dims": args.head_dim, "seqlens": args.seqlen,
        "directions": args.direction, "implementations": args.impl,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    out = args.out or Path("runs") / f"bench-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    stream = (out / "bench.jsonl").open("w")
    total = len(plan.cases()) * len(plan.implementations)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("matmul ceiling", total=total)

        def on_result(m: B.Measurement) -> None:
            stream.write(json.dumps(m.as_dict()) + "\n")
            stream.flush()
            c = m.case
            progress.update(task, advance=1, description=(
                f"{c.dtype} d={c.head_dim} {'causal' if c.causal else 'full'} {c.direction} L={c.seqlen} "
                f"{m.implementation}: {m.status if m.status != 'ok' else f'{m.tflops:.0f} TFLOP/s'}"))

        report = B.run_sweep(plan, time_budget_s=args.time_budget, seed=args.seed, on_result=on_result)
    stream.close()

    write_json(out / "bench.json", report)
    (out / "results.md").write_text(B.markdown_tables(report))
    pngs = B.plot_report(report, out)

    summary = Table(title=f"best TFLOP/s per implementation ({report['environment']['device']['name']})",
                    title_justify="left")
    summary.add_column("implementation")
    summary.add_column("best TFLOP/s", justify="right")
    for impl, best in sorted(B.best_by_implementation(report).items(), key=lambda kv: -kv[1]):
        summary.add_row(impl, f"{best:.1f}")
    console.print(summary)
    console.print("matmul ceiling (TFLOP/s): " + ", ".join(
        f"{d} {v}" for d, v in report["matmul_ceiling_tflops"].items()))
    console.print("points: " + ", ".join(f"{k} {v}" for k, v in B.status_counts(report["results"]).items()))
    console.print(f"wrote {out / 'bench.json'}, {out / 'results.md'}, " + ", ".join(str(p) for p in pngs))
    return 0
