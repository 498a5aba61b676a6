"""`flashref tune`: measure the gate-pruned launch configurations on this GPU; write the winners.

On a CUDA device, each kernel launch (forward, dK/dV or its split passes, dQ) is timed with
every candidate of its head-dim bucket (the untuned default, then the arch's compile-gated table
kernels/tables/ARCH.json) on a fixed grid of shapes (head dims 128/64/256, lengths 1k/4k/16k at
16k tokens, causal and not, bfloat16 then float16), within a time box. The winners go to a JSON
table named after the device, its compute capability and triton version
(``kernels/tuned/nvidia-h200-sm90-triton3.6.0.json``), which the dispatcher reads first on that
device; commit it. ``--dry-run`` prints the plan without a GPU. Without CUDA it refuses (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashref.commands.argtypes import comma_list

KERNELS = ("forward", "backward_dkdv", "backward_dq")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the time budget must be positive, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="on a GPU: time the compile-gated launch configs, write this device's tuned table",
        description=(
            "Time every compile-gated launch configuration of each kernel on a fixed grid of shapes on this "
            "CUDA device, within a time budget, and write the winners to a JSON table keyed by device name, "
            "compute capability and triton version (the dispatcher reads it first on that device)."
        ),
    )
    p.add_argument("--time-budget", type=_positive_seconds, default=240.0, metavar="SECONDS",
                   help="stop starting new measurements after this long (default 240); the table is written "
                        "after every group, so a run cut short keeps what it measured")
    p.add_argument("--kernel", type=comma_list(str, KERNELS), default=None, help="e.g. forward,backward_dq")
    p.add_argument("--head-dim", type=comma_list(int, (64, 128, 256)), default=None, help="e.g. 128,64")
    p.add_argument("--dtype", type=comma_list(str, ("bfloat16", "float16")), default=None, help="e.g. bfloat16")
    p.add_argument("--causal", choices=("on", "off", "both"), default="both")
    p.add_argument("--seqlen", type=comma_list(int), default=None, help="shape grid lengths (default 1024,4096,16384)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the table (default: the package's kernels/tuned/, what the dispatcher reads)")
    p.add_argument("--arch", choices=("sm_90", "sm_80"), default=None,
                   help="whose gate-pruned table to plan from (default: this device's; needed with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (groups, candidates) and exit; no GPU needed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        console.print("[red]flashref tune: no CUDA device here (torch.cuda.is_available() is False).[/] Tuning "
                      "times kernels on the GPU it tunes for; on a CPU use --dry-run to see the plan, and "
                      "`flashref compile-report --prune-table` to gate the candidates.")
        return 1
    from flashref.kernels import tuned_tables, tuning, tuning_space

    arch = args.arch
    if arch is None and torch.cuda.is_available():
        arch = tuned_tables.ARCH_OF_CAPABILITY.get(tuple(torch.cuda.get_device_capability()))
    if arch is None:
        console.print("[red]flashref tune: --arch is needed (no CUDA device, or one that is neither sm_90 nor "
                      "sm_80: its candidates would not be compile-gated)[/]")
        return 2
    causal = {"on": (True,), "off": (False,), "both": (True, False)}[args.causal]
    groups = tuning.plan(arch, kernels=args.kernel or tuning.TUNE_KERNELS,
                         head_dims=args.head_dim or tuning.TUNE_HEAD_DIMS,
                         dtypes=args.dtype or tuning.TUNE_DTYPES, causal=causal)
    seqlens = tuple(args.seqlen or tuning.TUNE_SEQLENS)
    out = args.out or tuned_tables.TUNED_DIR
    table_source = tuning_space.TABLES_DIR / f"{arch}.json"
    console.print(f"plan for {arch}: {len(groups)} groups, {sum(len(c) for _, c in groups)} candidate runs, "
                  f"shapes {[s[:3] for s in tuning.shapes(groups[0][0].head_dim, seqlens)]} (batch, heads, length) at "
                  f"head dim {groups[0][0].head_dim}; "
                  f"candidates from {table_source if table_source.exists() else 'the defaults (no pruned table)'}; "
                  f"budget {args.time_budget:.0f} s", highlight=False)
    if args.dry_run:
        for group, candidates in groups:
            console.print(f"  {group.key}: {len(candidates)} candidates, default "
                          f"{candidates[0].block_m}x{candidates[0].block_n} w{candidates[0].num_warps} "
                          f"s{candidates[0].num_stages}", highlight=False)
        return 0

    device = torch.cuda.get_device_name()
    table = tuning.new_table(device, tuple(torch.cuda.get_device_capability()))
    table["seqlens"] = list(seqlens)
    written = []

    def on_group(group, entry):
        if entry is None:
            console.print(f"{group.key}: nothing measured", highlight=False)
            return
        c = entry["config"]
        gain = f", {entry['default_ms'] / entry['ms']:.2f}x the default" if entry.get("default_ms") else ""
        console.print(f"{group.key}: {c['block_m']}x{c['block_n']} w{c['num_warps']} s{c['num_stages']} "
                      f"{entry['ms']:.3f} ms over {len(seqlens)} shapes{gain} "
                      f"({entry['measured']}/{entry['candidates']} measured)", highlight=False)
        written[:] = [tuned_tables.write_tuned(dict(table, complete=False), out)]

    tuning.tune(groups, table, seqlens=seqlens, budget_s=args.time_budget, on_group=on_group)
    if not table["entries"]:
        console.print("[red]flashref tune: nothing was measured within the budget[/]")
        return 1
    path = tuned_tables.write_tuned(table, out)
    done = sum(e["complete"] for e in table["entries"].values())
    console.print(f"wrote {path}: {len(table['entries'])} entries ({done} with every candidate measured)"
                  f"{'' if table['complete'] else '; the time budget ran out before the end of the plan'}")
    return 0
