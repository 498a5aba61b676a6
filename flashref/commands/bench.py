"""`flashref bench`: the GPU attention sweep, or, without a GPU, the CPU benchmarks.

On a CUDA device it runs `flashref.bench.dense` (flashref beside torch SDPA's
backends and a naive attention, TFLOP/s over sequence lengths) and writes, under
`--out`: bench.json, bench.jsonl (one line per point, as they come: survives a
kill), results.md (the tables) and one PNG per dtype.

`--impl` takes the sweep's own names (flashref, sdpa_flash, ..., naive_torch) and any name
`flashref verify --impl` takes (the gate's built-ins such as sdpa-math, flex, flex-compiled,
flash-attn; module:attribute with --features / --layout; entry points), timed side by side on
the same inputs; a point an implementation does not declare is recorded `unsupported`.

Without a GPU it says so and points at the CPU benchmarks (pytest-benchmark, in
bench/); `--cpu` runs them, and `--cpu --impl A --impl B` times those implementations on the
CPU instead (the same sweep at CPU sizes, wall-clock timing).
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
    from flashref.bench import dense as B

    p = subparsers.add_parser(
        "bench",
        help="attention TFLOP/s on a GPU beside torch SDPA (or the CPU benchmarks with --cpu)",
        description=(
            "GPU: forward/backward TFLOP/s of flashref's kernel beside torch SDPA's flash, efficient, "
            "cuDNN and math backends and a naive attention, over sequence lengths at B*L=16384. "
            "--impl also takes any implementation `flashref verify --impl` judges, timed beside the others. "
            "No GPU: says so; --cpu runs the pytest-benchmark suite in bench/, or with --impl times those "
            "implementations on the CPU."
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
                        "(flashref/bench/packed.py)")
    p.add_argument("--dtype", type=comma_list(str, B.DTYPES_ALL), default=None,
                   help="e.g. bfloat16,float16 (float32: the --cpu sweep's default)")
    p.add_argument("--head-dim", type=comma_list(int, B.HEAD_DIMS_FULL), default=None, help="e.g. 64,128")
    p.add_argument("--seqlen", type=comma_list(int), default=None, help="e.g. 512,4096,16384")
    p.add_argument("--direction", type=comma_list(str, B.DIRECTIONS), default=None, help="fwd,bwd,fwd_bwd")
    p.add_argument("--impl", action="append", default=None, metavar="NAME[,NAME...]",
                   help="repeatable: the sweep's own " + ",".join(B.IMPLEMENTATIONS) + ", or any implementation "
                        "flashref verify --impl takes (sdpa-math, flex, flex-compiled, flash-attn, an entry point, "
                        "module:attribute)")
    p.add_argument("--features", type=str, default=None, metavar="A,B,...",
                   help="with --impl module:attribute naming a plain callable: what it can do (as for verify)")
    p.add_argument("--layout", choices=("bhld", "blhd"), default=None,
                   help="with --impl module:attribute naming a plain callable: (B, H, L, D) or (B, L, H, D)")
    p.add_argument("--tokens", type=int, default=None, metavar="N", help="B*L of every point (default 16384; --cpu 2048)")
    p.add_argument("--model-dim", type=int, default=None, metavar="N", help="H*D of every point (default 2048; --cpu 256)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop measuring after this long; the rest is recorded as skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true",
                   help="run the CPU benchmarks (pytest-benchmark, bench/); with --impl, time those on the CPU")
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
    if args.cpu and args.impl:
        if args.sweep != "attention":
            console.print("[red]flashref bench: --cpu --impl times the attention sweep only[/]")
            return 2
        return _run_sweep(args, console, device="cpu")
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
    return _run_sweep(args, console, device="cuda")


def resolve_targets(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict]:
    """The --impl names in order (None: the plan's default) and the gate's ``Target`` of each
    name that is not one of the sweep's own; ValueError with one line for a bad spec."""
    from flashref.bench import dense as B

    if not args.impl:
        return None, {}
    from flashref.gate import parse_features, resolve_implementation

    features = parse_features(args.features) if args.features is not None else None
    names, targets = [], {}
    for spec in (part.strip() for value in args.impl for part in value.split(",")):
        if not spec:
            continue
        if spec in B.IMPLEMENTATIONS:
            name = spec
        else:
            impl = resolve_implementation(spec, features=features, layout=args.layout)
            name = impl.name
            targets[name] = B.gate_target(impl)
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("--impl: no implementation named")
    return tuple(names), targets


def _run_packed(args: argparse.Namespace, console) -> int:
    """The varlen or decode sweep (issue 11): bench.json, results.md (and bench.jsonl as it goes)."""
    from flashref.bench import packed as P
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


def _run_sweep(args: argparse.Namespace, console, device: str) -> int:
    """The TFLOP/s sweep on ``device`` (CUDA: do_bench; the CPU: wall-clock at CPU sizes)."""
    import dataclasses

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from flashref.bench import dense as B
    from flashref.reporting import write_json

    from rich.markup import escape

    try:
        names, targets = resolve_targets(args)
    except (ValueError, TypeError) as err:
        console.print(f"[red]flashref bench: {escape(str(err))}[/]")
        return 2
    plan = B.Plan.preset(args.preset or ("cpu" if device == "cpu" else "quick"))
    overrides = {
        "dtypes": args.dtype, "head_dims": args.head_dim, "seqlens": args.seqlen,
        "directions": args.direction, "implementations": names, "tokens": args.tokens,
        "model_dim": args.model_dim,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.tokens < 1 or plan.model_dim < 1:
        console.print("[red]flashref bench: --tokens and --model-dim must be positive[/]")
        return 2
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
                f"{m.implementation}: {m.status if m.status != 'ok' else f'{B.tflops_text(m.tflops)} TFLOP/s'}"))

        if device == "cpu":
            report = B.run_sweep(plan, device="cpu", timer=B.wallclock_timer, ceiling_n=1024,
                                 time_budget_s=args.time_budget, seed=args.seed, on_result=on_result, targets=targets)
        else:
            report = B.run_sweep(plan, time_budget_s=args.time_budget, seed=args.seed, on_result=on_result,
                                 **({"targets": targets} if targets else {}))
    stream.close()

    write_json(out / "bench.json", report)
    (out / "results.md").write_text(B.markdown_tables(report))
    pngs = B.plot_report(report, out)

    summary = Table(title=f"best TFLOP/s per implementation ({report['environment']['device']['name']})",
                    title_justify="left")
    summary.add_column("implementation")
    summary.add_column("best TFLOP/s", justify="right")
    for impl, best in sorted(B.best_by_implementation(report).items(), key=lambda kv: -kv[1]):
        summary.add_row(impl, B.tflops_text(best))
    console.print(summary)
    console.print("matmul ceiling (TFLOP/s): " + ", ".join(
        f"{d} {v}" for d, v in report["matmul_ceiling_tflops"].items()))
    console.print("points: " + ", ".join(f"{k} {v}" for k, v in B.status_counts(report["results"]).items()))
    reasons = {}
    for r in report["results"]:
        if r["status"] == "unsupported":
            reasons.setdefault(r["implementation"], set()).add(r["message"])
    for impl, why in reasons.items():
        console.print(f"  {impl} unsupported: {escape('; '.join(sorted(why)))}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'bench.json'}, {out / 'results.md'}, " + ", ".join(str(p) for p in pngs))
    return 0
