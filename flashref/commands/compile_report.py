"""`flashref compile-report`: compile every kernel specialization for a GPU that is not here.

Triton can build PTX and a cubin for Hopper (sm_90), Ampere (sm_80) and Blackwell
(sm_100: B200/GB200; sm_120: RTX 50xx) on a CPU-only machine; `flashref.kernels.compile_gate` does it for one specialization (kernel, head
dim, dtype, causal, launch configuration) and reads back block sizes, warps, stages,
registers per thread, shared memory, spilled bytes and which MMA instruction the PTX uses
(`mma` column: tcgen05, wgmma, mma.sync, or fma). This command compiles a set of them (in parallel worker processes: each compile
takes seconds), prints the table and the gate's verdict per row, and `--json` writes it.
It catches kernels that would not compile, spill, overflow shared memory, or (16-bit)
miss `wgmma` on sm_90 or `tcgen05` on sm_100, without borrowing a GPU. Exit status 1 if any row fails.

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

ARCHS = ("sm_90", "sm_80", "sm_100", "sm_120")
QUICK_HEAD_DIMS = (64, 128, 256)
# Short headers for the compile gate's field names (anything else: underscores to spaces).
HEADERS = {"head_dim": "head dim", "BLOCK_M": "BLOCK_M", "BLOCK_N": "BLOCK_N", "num_warps": "warps", "num_stages": "stages", "registers": "regs/thread",
           "shared_memory": "smem bytes", "spills": "spill bytes", "uses_wgmma": "wgmma",
           "compile_seconds": "compile s", "uses_tma": "tma", "mma": "mma"}
HIDDEN = ("arch",)  # in the title already


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile-report",
        help="compile each kernel specialization for sm_90/sm_80/sm_100/sm_120 without a GPU; registers, smem, spills, MMA",
        description=(
            "Compile Triton kernel specializations for the given architecture on this machine (no GPU "
            "needed) and report block sizes, warps, stages, registers per thread, shared memory, spills and "
            "whether the PTX uses wgmma. Every specialization by default (hundreds: long on a small CPU); "
            "--quick or the filters narrow it."
        ),
    )
    p.add_argument("--arch", choices=ARCHS, default="sm_90", help="target architecture (default sm_90)")
    p.add_argument("--quick", action="store_true",
                   help="the default launch config of each kernel, bfloat16, head dims 64,128,256, plain variant")
    p.add_argument("--kernel", type=comma_list(str), default=None,
                   help="only these kernels (forward, backward_dkdv, backward_dq, backward_delta; at head dims "
                        "above 128 backward_dkdv is two launches, backward_dk and backward_dv)")
    p.add_argument("--head-dim", type=comma_list(int), default=None, help="only these head dims, e.g. 64,128")
    p.add_argument("--dtype", type=comma_list(str, ("float16", "bfloat16", "float32")), default=None,
                   help="only these dtypes")
    p.add_argument("--causal", choices=("on", "off", "both"), default="both")
    p.add_argument("--variant", type=comma_list(str), default=None,
                   help="only these variants (compile_gate.VARIANTS: plain, kv_lens, ...)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel compile processes (default: the number of CPUs)")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="write the rows as JSON here")
    p.add_argument("--prune-table", nargs="?", const="", default=None, metavar="PATH",
                   help="instead of the report: compile the tuning candidates (tuning_space.CANDIDATE_SPACE) and "
                        "write those the gate passes as the arch's tile table (default "
                        "kernels/tables/ARCH.json); groups already in the file are kept unless --kernel or "
                        "--head-dim name them (resumable)")
    p.set_defaults(func=run)


def row_problems(row: dict[str, Any]) -> list[str]:
    """The compile gate's verdict on one row (``compile_gate.problems``: the one function that
    decides, also for ``pytest -m compile`` and the table pruning)."""
    return _gate().problems(row)


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
        axes.update(head_dims=QUICK_HEAD_DIMS, dtypes=("bfloat16",), variants=("plain",))
    if args.head_dim:
        axes["head_dims"] = args.head_dim
    if args.dtype:
        axes["dtypes"] = args.dtype
    if args.kernel:
        axes["kernels"] = args.kernel
    if args.variant:
        unknown = sorted(set(args.variant) - set(gate.VARIANT_BY_NAME))
        if unknown:
            raise ValueError(f"--variant: unknown {unknown}; known: {sorted(gate.VARIANT_BY_NAME)}")
        axes["variants"] = args.variant
    if args.causal != "both":
        axes["causal"] = (args.causal == "on",)
    specs = gate.specializations(arch=args.arch, **axes)
    if args.quick:  # the untuned default: the first config of each table row
        import torch

        specs = [s for s in specs if s.kernel == "backward_delta"
                 or s.config == gate.configs_for(s.kernel, s.head_dim, getattr(torch, s.dtype), arch=args.arch)[0]]
    return specs


def compile_one(spec: Any, arch: str) -> dict[str, Any]:
    """One row as a dict; a specialization that fails to compile is a row with `error`."""
    try:
        row = _gate().compile_specialization(spec, arch)
        return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(vars(row))
    except Exception as exc:  # reported in the table, not a crash of the whole report
        return {"kernel": spec.kernel, "arch": arch, "head_dim": spec.head_dim, "dtype": spec.dtype,
                "causal": spec.causal, "variant": getattr(spec, "variant", "plain"), "BLOCK_M": spec.config.block_m, "BLOCK_N": spec.config.block_n,
                "num_warps": spec.config.num_warps, "num_stages": spec.config.num_stages,
                "error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and pipes: one line per row
        console = Console(width=max(console.width, 220))
    # Compile in this process when we can: with the interpreter on, the gate has to start a
    # fresh process per call. (If the kernels were already loaded interpreted, it does so.)
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "0"

    if args.prune_table is not None:
        return prune_table(args, console)
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
    stream = f"{args.json}.rows.jsonl" if args.json else None
    if stream:
        console.print(f"rows stream to {stream} as they compile (a run cut short keeps them)")
    rows = _compile_all(specs, args.arch, jobs, console, stream)
    seconds = time.perf_counter() - t0
    return _report(rows, args, seconds, console)


def prune_table(args: argparse.Namespace, console) -> int:
    """``--prune-table``: compile every tuning candidate of the selected groups for ``--arch``
    and write the gate-pruned tile table (compile_gate.build_table). Exit 0 once written."""
    import json
    from pathlib import Path

    gate = _gate()
    from flashref.kernels import tile_tables, tuning_space

    path = Path(args.prune_table or tuning_space.TABLES_DIR / f"{args.arch}.json")
    existing = json.loads(path.read_text()) if path.exists() else None
    if existing and existing.get("arch") != args.arch:
        console.print(f"[red]flashref compile-report: {path} is the table of {existing.get('arch')}, "
                      f"not {args.arch}[/]")
        return 2
    kernels = [k for k in (args.kernel or tile_tables.KERNEL_NAMES) if k != "backward_delta"]
    unknown = sorted(set(kernels) - set(tile_tables.KERNEL_NAMES) - set(tile_tables.DKDV_LAUNCHES))
    if unknown:
        console.print(f"[red]flashref compile-report: --kernel: unknown {unknown}[/]")
        return 2
    buckets = [b for b in tile_tables.BUCKETS if not args.head_dim or b in args.head_dim]
    groups = [g for g in gate.table_groups(tuple(dict.fromkeys(
        "backward_dkdv" if k in tile_tables.DKDV_LAUNCHES else k for k in kernels)), buckets)
        if g[0] in kernels or g[0] in tile_tables.DKDV_LAUNCHES and "backward_dkdv" in kernels]
    if existing and not (args.kernel or args.head_dim):  # resume: skip the groups done
        groups = [g for g in groups if f"{g[0]}/{g[1]}" not in existing["tables"]]
    jobs = max(1, args.jobs or os.cpu_count() or 1)
    console.print(f"pruning {len(groups)} group(s) for {args.arch} into {path}; {jobs} process(es)")
    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    table = existing
    for group in groups:  # the file is written after each group: a run cut short keeps them
        key = f"{group[0]}/{group[1]}"
        todo, bounced = gate.prune_specs(group, args.arch)
        rows = _compile_all(todo, args.arch, jobs, console) if todo else []
        table = gate.build_table(args.arch, rows, {key: bounced}, table)
        path.write_text(json.dumps(table, indent=1) + "\n")
        console.print(f"{key}: {len(table['tables'].get(key, []))} pass, {len(table['rejected'].get(key, []))} "
                      f"rejected ({len(bounced)} over the register file, not compiled); "
                      f"{time.perf_counter() - t0:.0f} s", highlight=False)
    console.print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


def _expected_cost(spec: Any) -> tuple:
    """A sort key putting the slow compiles first (float32's FMA dots, wide heads, big tiles):
    with few worker processes a long compile started last would idle the others."""
    return (spec.dtype == "float32", spec.head_dim, spec.config.block_m * spec.config.block_n)


def _compile_all(specs: list, arch: str, jobs: int, console, stream: str | None = None) -> list[dict[str, Any]]:
    """Compile every spec (``jobs`` worker processes; results in ``specs`` order). A terminal
    gets a progress bar; a log gets a line about every 30 s, so a long report on a small
    machine shows it is alive and how far it is. Compiled kernels land in Triton's cache
    (``TRITON_CACHE_DIR``, default ~/.triton/cache): a rerun on unchanged kernels only reads
    them back and measures them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    order = sorted(range(len(specs)), key=lambda i: _expected_cost(specs[i]), reverse=True)
    rows: list[dict[str, Any] | None] = [None] * len(specs)
    start, last_line = time.perf_counter(), [time.perf_counter()]

    sink = open(stream, "w") if stream else None

    def log_progress(done: int, row: dict[str, Any]) -> None:
        if sink:
            import json

            sink.write(json.dumps(row) + "\n")
            sink.flush()
        now = time.perf_counter()
        if console.is_terminal or (now - last_line[0] < 30 and done < len(specs)):
            return
        last_line[0] = now
        console.print(f"compiled {done}/{len(specs)} in {now - start:.0f} s", highlight=False)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("compiling", total=len(specs))
        if jobs == 1:
            for done, i in enumerate(order, 1):
                rows[i] = compile_one(specs[i], arch)
                progress.advance(task)
                log_progress(done, rows[i])
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn: fresh interpreters that inherit TRITON_INTERPRET=0 from the environment.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(compile_one, specs[i], arch): i for i in order}
                for done, future in enumerate(as_completed(futures), 1):
                    rows[futures[future]] = future.result()
                    progress.advance(task)
                    log_progress(done, rows[futures[future]])
    if sink:
        sink.close()
    return rows  # type: ignore[return-value]


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
        problems = row_problems(row)
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
            "rows": [dict(r, problems=row_problems(r)) for r in rows],
        }
        console.print(f"JSON report: {write_json(args.json, report)}")
    if bad:
        console.print(f"[bold red]FAIL[/]: {bad} of {len(rows)} specializations fail the compile gate "
                      f"(spills, shared memory, missing wgmma/tcgen05 or compile errors)")
        return 1
    wanted = _gate().TENSOR_CORE_MMA.get(args.arch)
    on_mma_sync = sum(1 for r in rows
                      if wanted and r.get("mma", "") != wanted and r.get("dtype") != "float32"
                      and _gate().mma_sync_by_design(r))
    wgmma = ""
    if wanted:
        wgmma = f" and 16-bit ones use {wanted}" + (
            f" (but {on_mma_sync} score-variant dK/dV rows at head dim 256 on mma.sync by design: "
            "tile_tables.MMA_SYNC_VARIANT_LAUNCHES)" if on_mma_sync else "")
    console.print(f"[bold green]PASS[/]: all {len(rows)} specializations compile for {args.arch} "
                  f"without spills{wgmma}")
    return 0
