"""`flashref mutate`: the gate's mutation score (flashref/mutations.py, docs/design.md).

Each catalogue mutation is planted in a scratch copy of the package and the chosen presets of
`flashref verify` run against it, case by case, stopping at the first failure: the preset
*caught* the bug, or it *escaped*. The table gives, per mutation and preset, the outcome and the
first failing case; the last lines the score per preset. Exit 1 if `--ci` lets any mutation
escape (or a run breaks), 2 for bad arguments or a stale catalogue entry. `--check-witnesses`
first runs each entry's witness case alone and fails if it passes (the entry is not a bug).
Slow: a mutation that escapes runs the whole preset (the ci preset is some 3 minutes on 2 cores).

`--worker PRESET` is the scratch side of a run (used by the runner, not by people): it runs the
preset's cases in order in this process and prints `PASS name` / `FAIL name` lines.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from flashref.commands.argtypes import comma_list
from flashref.commands.device import choose_device

PRESETS = ("quick", "ci")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mutate",
        help="the gate's mutation score: plant each catalogued kernel bug, count what --quick and --ci catch",
        description=("Plant each mutation of flashref.mutations.CATALOGUE (realistic one-line kernel bugs) in a "
                     "scratch copy of the package and run the verify presets against it, stopping at the first "
                     "failing case. Prints caught / escaped per mutation and preset and the score per preset; "
                     "exit 1 if --ci lets any mutation escape."),
    )
    p.add_argument("--preset", type=comma_list(str, PRESETS), default=list(PRESETS),
                   help="presets to score, e.g. quick or quick,ci (default both)")
    p.add_argument("--only", type=comma_list(str), default=None, metavar="NAME,...", help="only these mutations")
    p.add_argument("--seed", type=int, default=None, help="the presets' seed (default: a fresh one, printed)")
    p.add_argument("--check-witnesses", action="store_true",
                   help="first run each mutation's witness case alone and require it to fail")
    p.add_argument("--list", action="store_true", help="list the catalogue and exit")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per preset run (default 1800)")
    p.add_argument("--worker", choices=PRESETS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--case", action="append", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def worker(preset: str, seed: int, names: list[str] | None) -> int:
    """Run the cases in order in this process; print one line each; exit 1 at the first failure."""
    choose_device("auto", "flashref mutate")
    from flashref import gate

    cases = [gate.case_from_name(n, seed) for n in names] if names else gate.sweep(preset, seed=seed)
    for case in cases:
        print(f"CASE {case.name}", flush=True)  # a crash (a signal) is then pinned on this case
        try:
            result = gate.check_case(case)
            passed, why = result.passed, "" if result.passed else result.failure_summary()
        except Exception as exc:  # a crash under the mutation is a catch, as verify's ERROR is
            passed, why = False, f"raised {type(exc).__name__}: {exc}"
        print(f"{'PASS' if passed else 'FAIL'} {case.name} {why}".rstrip(), flush=True)
        if not passed:
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flashref import mutations as mut

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if args.worker is not None:
        return worker(args.worker, seed, args.case)
    console = Console()
    try:
        chosen = mut.by_name(args.only) if args.only else list(mut.CATALOGUE)
        root = mut.repository_root()
        for m in chosen:  # a stale entry is a broken catalogue, said before anything runs
            mut.apply(m, (root / m.file).read_text())
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]flashref mutate: {escape(str(err))}[/]")
        return 2
    if args.list:
        table = Table("mutation", "class", "file", "the bug it stands for", title="flashref mutation catalogue")
        for m in chosen:
            table.add_row(m.name, m.kind, m.file, m.why)
        console.print(table)
        return 0

    console.print(f"flashref mutate: {len(chosen)} mutations x {', '.join(args.preset)}, seed {seed}")
    start = time.perf_counter()
    results, dead = [], []
    if args.check_witnesses:
        for m in chosen:
            run_ = mut.run_preset(m, "quick", seed, timeout=args.timeout, cases=[m.witness])
            ok = run_.outcome == "caught"
            console.print(f"  witness of {m.name}: {'fails as it must' if ok else '[bold red]' + run_.outcome + '[/]'}"
                          f"  ({m.witness})", highlight=False, soft_wrap=True)
            if not ok:
                dead.append(m.name)
    for m in chosen:
        for preset in args.preset:
            result = mut.run_preset(m, preset, seed, timeout=args.timeout)
            results.append(result)
            colour = {"caught": "green", "escaped": "bold red", "broken": "bold red"}[result.outcome]
            console.print(f"  {m.name:<34} {preset:<6} [{colour}]{result.outcome}[/] after {result.cases_run} "
                          f"cases, {result.seconds:.0f} s {escape(result.failing_case)}", highlight=False,
                          soft_wrap=True)
            if result.outcome == "broken":
                console.print(f"    {escape(result.detail[-400:])}", highlight=False, soft_wrap=True)

    table = Table("mutation", "class", *args.preset, title="caught by (first failing case)")
    kinds = {m.name: m.kind for m in chosen}
    for m in chosen:
        cells = []
        for preset in args.preset:
            r = next(r for r in results if r.mutation == m.name and r.preset == preset)
            cells.append("caught: " + r.failing_case if r.outcome == "caught" else f"[bold red]{r.outcome}[/]")
        table.add_row(m.name, kinds[m.name], *cells)
    console.print(table)
    score = {}
    for preset in args.preset:
        runs = [r for r in results if r.preset == preset]
        caught = sum(r.outcome == "caught" for r in runs)
        score[preset] = {"caught": caught, "total": len(runs),
                         "escaped": [r.mutation for r in runs if r.outcome == "escaped"],
                         "broken": [r.mutation for r in runs if r.outcome == "broken"]}
        console.print(f"{preset}: {caught}/{len(runs)} caught"
                      + (f"; escaped: {', '.join(score[preset]['escaped'])}" if score[preset]["escaped"] else "")
                      + (f"; broken: {', '.join(score[preset]['broken'])}" if score[preset]["broken"] else ""))
    console.print(f"{time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "schema": "flashref.mutate/1", "seed": seed, "score": score, "dead_witnesses": dead,
            "runs": [vars(r) for r in results]}, indent=2) + "\n")
    ci_missed = "ci" in score and (score["ci"]["escaped"] or score["ci"]["broken"])
    return 1 if ci_missed or dead else 0
