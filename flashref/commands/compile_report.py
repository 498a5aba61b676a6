"""`flashref compile-report`: compile every kernel specialization for a GPU that is not here.

Triton can build PTX and a cubin for Hopper (sm_90) or Ampere (sm_80) on a CPU-only
machine; `flashref.kernels.compile_gate` does it for one specialization (kernel, head
dim, dtype, causal, launch configuration) and reads back block sizes, warps, stages,
registers per thread, shared memory, spilled bytes and whether the PTX uses Hopper's
`wgmma`. This command compiles a set of them (in parallel worker processes: each compile
takes seconds), prints the table and the gate's verdict per row, and `--json` writes it.
It catches kernels that would not compile, spill, overflow shared memory, or (16-bit
on sm_90) miss `wgmma`, without borrowing a GPU. Exit status 1 if any row fails.

The interpreter must be off to compile (it turns `@triton.jit` functions into Python ones),
so the run function switches it off before triton is first imported; in a process where
triton already runs interpreted, the compile gate compiles in a fresh subprocess instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

from flashref.commands.argtypes import comma_list

ARCHS = ("sm_90", "sm_80")
SHARED_MEMORY_LIMIT = {"sm_90": 232448, "sm_80": 166912}  # dynamic shared memory per block, bytes
WGMMA_DTYPES = ("float16", "bfloat16")  # float32 uses exact (ieee) dots: no tensor-core MMA
QUICK_HEAD_DIMS = (64, 128, 256)
# Short headers for the compile gate's field names (anything else: underscores to spaces).
HEADERS = {"head_dim": "head dim", "BLOCK_M": "BLOCK_M", "BLOCK_N": "BLOCK_N", "num_warps": "warps", "num_stages": "stages", "registers": "regs/thread",
           "shared_memory": "smem bytes", "spills": "spill bytes", "uses_wgmma": "wgmma",
           "compile_seconds": "compile s"}
HIDDEN = ("arch",)  # in the title already


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile-report",
        help="compile each kernel specialization for sm_90/sm_80 without a GPU; registers, smem, spills, wgmma",
        description=(
            "Compile Triton kernel specializations for the given architecture on this machine (no GPU "
            "needed) and report block sizes, warps, stages, registers per thread, shared memory, spills and "
            "whether the PTX uses wgmma. Every specialization by default (hundreds: long on a small CPU); "
            "--quick or the filters narrow it."
        ),
    )
    p.add_argument("--arch", choices=ARCHS, default="sm_90", help="target architecture (default sm_90)")
    p.add_argument("--quick", action="store_true",
                   help="the default launch config of each kernel, bfloat16, head dims 64,128,256")
    p.add_argument("--kernel", type=comma_list(str), default=None,
                   help="only these kernels (forward, backward_dkdv, backward_dq, backward_delta; at head dims "
                        "above 128 backward_dkdv is two launches, backward_dk and backward_dv)")
    p.add_argument("--head-dim", type=comma_list(int), default=None, help="only these head dims, e.g. 64,128")
    p.add_argument("--dtype", type=comma_list(str, ("float16", "bfloat16", "float32")), default=None,
                   help="only these dtypes")
    p.add_argument("--causal", choices=("on", "off", "both"), default="both")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel compile processes (default: the number of CPUs)")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="write the rows as JSON here")
    p.set_defaults(func=run)


def row_problems(row: dict[str, Any], arch: str) -> list[str]:
    """What the gate objects to in one row, in short labels: a compile error, spills, too much
    shared memory, no wgmma for a 16-bit kernel with matrix products on sm_90."""
    if row.get("error"):
        return ["does not compile"]
    problems = []
    spills = row.get("spills")
    if isinstance(spills, (int, float)) and spills > 0:
        problems.append(f"spills {spills} B")
    smem = row.get("shared_memory")
    if isinstance(smem, (int, float)) and smem > SHARED_MEMORY_LIMIT[arch]:
        problems.append(f"smem > {SHARED_MEMORY_LIMIT[arch]} B")
    needs_wgmma = arch == "sm_90" and row.get("dtype") in WGMMA_DTYPES and row.get("kernel") != "backward_delta"
    if needs_wgmma and row.get("uses_wgmma") is False:
        problems.append("no wgmma")
    return problems


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return str(value)


def _gate():
    """flashref.kernels.compile_gate, imported only when a report runs (it loads triton)."""
    from flashref.kernels import compile_gate

    return compile_gate


def select(args: argparse.Namespace) -> list:
    """The specializations the options ask for (compile_gate.Specialization objects)."""
    gate = _gate()
    axes: dict[str, Any] = {}
    if args.quick:
        axes.update(head_dims=QUICK_HEAD_DIMS, dtypes=("bfloat16",))
    if args.head_dim:
        axes["head_dims"] = args.head_dim
    if args.dtype:
        axes["dtypes"] = args.dtype
    if args.kernel:
        axes["kernels"] = args.kernel
    if args.causal != "both":
        axes["causal"] = (args.causal == "on",)
    specs = gate.specializations(**axes)
    if args.quick:  # the untuned default: the first config of each table row
        import torch

        specs = [s for s in specs if s.kernel == "backward_delta"
                 or s.config == gate.configs_for(s.kernel, s.head_dim, getattr(torch, s.dtype))[0]]
    return specs


def compile_one(spec: Any, arch: str) -> dict[str, Any]:
    """One row as a dict; a specialization that fails to compile is a row with `error`."""
    try:
        row = _gate().compile_specialization(spec, arch)
        return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(vars(row))
    except Exception as exc:  # reported in the table, not a crash of the whole report
        return {"kernel": spec.kernel, "arch": arch, "head_dim": spec.head_dim, "dtype": spec.dtype,
                "causal": spec.causal, "BLOCK_M": spec.config.block_m, "BLOCK_N": spec.config.block_n,
                "num_warps": spec.config.num_warps, "num_stages": spec.config.num_stages,
                "error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and pipes: one line per row
        console = Console(width=max(console.width, 160))
    # Compile in this process when we can: with the interpreter on, the gate has to start a
    # fresh process per call. (If the kernels were already loaded interpreted, it does so.)
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "0"

    try:
        specs = select(args)
    except (ValueError, KeyError) as err:
        console.print(f"[red]flashref compile-report: {err}[/]")
        return 2
    if not specs:
        console.print("[red]flashref compile-report: no specialization matches these filters[/]")
        return 2
    jobs = max(1, args.jobs or os.cpu_count() or 1)
    console.print(f"compiling {len(specs)} specializations for {args.arch} with {jobs} process(es)")
    t0 = time.perf_counter()
    rows = _compile_all(specs, args.arch, jobs, console)
    seconds = time.perf_counter() - t0
    return _report(rows, args, seconds, console)


def _compile_all(specs: list, arch: str, jobs: int, console) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("compiling", total=len(specs))
        if jobs == 1:
            rows = []
            for spec in specs:
                rows.append(compile_one(spec, arch))
                progress.advance(task)
            return rows
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: fresh interpreters that inherit TRITON_INTERPRET=0 from the environment.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(compile_one, spec, arch) for spec in specs]
            for future in futures:
                future.add_done_callback(lambda _: progress.advance(task))
            return [f.result() for f in futures]


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float, console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from flashref.reporting import environment, write_json

    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in HIDDEN and c != "error"]
    table = Table(title=f"kernel specializations compiled for {args.arch} ({seconds:.0f} s, no GPU)",
                  title_justify="left")
    for col in columns:
        table.add_column(HEADERS.get(col, col.replace("_", " ")),
                         justify="left" if col in ("kernel", "dtype") else "right",
                         no_wrap=col in ("kernel", "dtype"), overflow="fold")
    table.add_column("gate", no_wrap=True)
    bad = 0
    for row in rows:
        problems = row_problems(row, args.arch)
        bad += bool(problems)
        verdict = "[green]ok[/]" if not problems else "[red]" + escape("; ".join(problems)) + "[/]"
        table.add_row(*(_cell(row.get(c)) for c in columns), verdict)
    console.print(table)
    for row in rows:
        if row.get("error"):
            where = (f"{row['kernel']} d={row['head_dim']} {row['dtype']} causal={row['causal']} "
                     f"BLOCK_M={row.get('BLOCK_M')} BLOCK_N={row.get('BLOCK_N')} warps={row.get('num_warps')}")
            first = str(row["error"]).strip().splitlines()[0]
            console.print(f"[red]{escape(where)}: {escape(first)}[/]", soft_wrap=True)

    if args.json:
        report = {
            "schema": "flashref.compile-report/1",
            "arch": args.arch,
            "environment": environment(),
            "seconds": round(seconds, 2),
            "rows": [dict(r, problems=row_problems(r, args.arch)) for r in rows],
        }
        console.print(f"JSON report: {write_json(args.json, report)}")
    if bad:
        console.print(f"[bold red]FAIL[/]: {bad} of {len(rows)} specializations fail the compile gate "
                      f"(spills, shared memory, missing wgmma or compile errors)")
        return 1
    console.print(f"[bold green]PASS[/]: all {len(rows)} specializations compile for {args.arch} "
                  f"without spills{' and 16-bit ones use wgmma' if args.arch == 'sm_90' else ''}")
    return 0
