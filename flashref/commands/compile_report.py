"""`flashref compile-report`: compile every kernel specialization for a GPU that is not here.

Triton can build PTX and a cubin for Hopper (sm_90) or Ampere (sm_80) on a CPU-only
machine; `flashref.kernels.compile_gate` does it and reads back, per
specialization, the block sizes, warps, stages, registers per thread, shared
memory, spills and whether the PTX uses Hopper's `wgmma`. This command prints that
table (and `--json` writes it). It catches kernels that would not compile, that
spill, or that miss `wgmma`, without borrowing a GPU.

The interpreter must be off for this (it replaces `@triton.jit` functions by
Python ones that cannot be compiled), so the run function turns it off before
the kernels are first imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

ARCHS = ("sm_90", "sm_80")
# Short headers for the compile gate's field names (anything else: underscores to spaces).
HEADERS = {"head_dim": "head dim", "num_warps": "warps", "num_stages": "stages", "registers": "regs/thread",
           "shared_memory": "smem bytes", "uses_wgmma": "wgmma"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile-report",
        help="compile each kernel specialization for sm_90/sm_80 without a GPU; registers, smem, spills, wgmma",
        description=(
            "Compile every Triton kernel specialization for the given architecture on this machine (no GPU "
            "needed) and report block sizes, warps, stages, registers per thread, shared memory, spills and "
            "whether the PTX uses wgmma."
        ),
    )
    p.add_argument("--arch", choices=ARCHS, default="sm_90", help="target architecture (default sm_90)")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="write the rows as JSON here")
    p.set_defaults(func=run)


def _row_dict(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row):
        return dataclasses.asdict(row)
    if hasattr(row, "_asdict"):
        return dict(row._asdict())
    return dict(vars(row))


def row_problems(row: dict[str, Any], arch: str) -> list[str]:
    """What the gate objects to in one row: a compile error, spills, no wgmma on Hopper."""
    problems = []
    if row.get("error"):
        problems.append(f"does not compile: {str(row['error']).splitlines()[0]}")
    spills = row.get("spills")
    if isinstance(spills, (int, float)) and spills > 0:
        problems.append(f"{spills} bytes spilled")
    if arch == "sm_90" and row.get("uses_wgmma") is False:
        problems.append("no wgmma on sm_90")
    if row.get("passed") is False and not problems:
        problems.append("failed the compile gate")
    return problems


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: one line per row
        console = Console(width=max(console.width, 160))
    if "flashref.kernels" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "0"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        console.print("[red]flashref compile-report: the kernels were loaded under Triton's interpreter; "
                      "unset TRITON_INTERPRET and rerun[/]")
        return 2

    from flashref.kernels.compile_gate import compile_specializations
    from flashref.reporting import environment, write_json

    t0 = time.perf_counter()
    rows = [_row_dict(r) for r in compile_specializations(arch=args.arch)]
    seconds = time.perf_counter() - t0
    if not rows:
        console.print("[red]flashref compile-report: no kernel specializations to compile[/]")
        return 1

    columns = list(rows[0])
    table = Table(title=f"kernel specializations compiled for {args.arch} ({seconds:.1f} s, no GPU)",
                  title_justify="left")
    for col in columns:
        table.add_column(HEADERS.get(col, col.replace("_", " ")), justify="right" if isinstance(rows[0][col], (int, float)) else "left",
                         overflow="fold")
    table.add_column("gate")
    bad = 0
    for row in rows:
        problems = row_problems(row, args.arch)
        bad += bool(problems)
        verdict = "[green]ok[/]" if not problems else "[red]" + "; ".join(problems) + "[/]"
        table.add_row(*(_cell(row.get(c)) for c in columns), verdict)
    console.print(table)

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
        console.print(f"[bold red]{bad} of {len(rows)} specializations fail the compile gate[/]")
        return 1
    console.print(f"[bold green]all {len(rows)} specializations compile for {args.arch} "
                  f"without spills{' and use wgmma' if args.arch == 'sm_90' else ''}[/]")
    return 0
