"""`flashref verify`: the correctness gate, kernel vs float64 oracle.

Runs the gate's sweep (`flashref.gate`) on CUDA when a GPU is present, otherwise on the
CPU under Triton's interpreter, which this command switches on itself: the
interpreter is read when `@triton.jit` runs, so `TRITON_INTERPRET=1` is set here,
in the run function, before `flashref.kernels` (and triton) are first imported.
Nothing imported at CLI start-up touches triton.

Each configuration passes when, for `out` and each gradient,
    max|kernel - oracle| <= factor * max|baseline - oracle| + slack
with the baseline a plain attention in the kernel's own dtype (factor 2 for out,
3 for dq, dk, dv) and the slack what float32 rounding cannot avoid on the case's own
magnitudes (docs/design.md). Exit status 0 only if every configuration passed, 1 otherwise
(2 for bad arguments, as argparse does).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import time

from flashref.commands.argtypes import comma_list
from flashref.commands.device import choose_device

# The gate's dtypes, named once (flashref.gate.rule): the 16/32-bit ones every family takes, and
# FP8 (float8_e4m3fn), which only the kernels' sweep has (the FP8 forward's cases). This module
# must not import torch at CLI start-up, and the gate imports it lazily.
from flashref.gate.rule import CASE_DTYPES, FP8
CAUSAL = {"on": True, "off": False, "both": None}
MAX_REPLAYS_SHOWN = 10
# Exit status of `--impl` when every case of every implementation was unsupported: nothing was judged.
NOTHING_RAN = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check the Triton kernels against the float64 oracle (exit 0 only if all pass)",
        description=(
            "Kernel-vs-oracle equivalence sweep (forward and dq, dk, dv) under the FlashAttention rule: "
            "kernel error <= factor x same-dtype baseline error + slack (float32 rounding, docs/design.md). Runs on CUDA if present, "
            "otherwise under Triton's interpreter on the CPU (set up automatically)."
        ),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="a representative subset, a minute or two on a CPU (default)")
    size.add_argument("--ci", dest="preset", action="store_const", const="ci",
                      help="the sweep CI runs: FlashAttention's test shapes in a covering design")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="every (lengths, masking, head dim, dtype): hundreds of configurations, meant for a GPU")
    p.set_defaults(preset="quick")
    p.add_argument("--dtype", type=comma_list(str, CASE_DTYPES), default=None,
                   help="only these dtypes, e.g. float16,bfloat16; float8_e4m3fn: the FP8 forward's cases "
                        "(the sweeps only, not --model, --distributed or --fuzz)")
    p.add_argument("--head-dim", type=comma_list(int), default=None, help="only these head dims, e.g. 64,128")
    p.add_argument("--causal", choices=sorted(CAUSAL), default="both", help="masking to cover (default both)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random inputs (default: a fresh one, printed so a run can be replayed)")
    p.add_argument("--case", action="append", default=None, metavar="NAME",
                   help="run exactly this configuration (as named in the table or a replay line); repeatable")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA if available, else the CPU with Triton's interpreter")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="write a JSON report here")
    p.add_argument("--junit", type=str, default=None, metavar="PATH", help="write a JUnit XML report here")
    p.add_argument("--failures-only", action="store_true", help="table shows only the failing configurations")
    p.add_argument("--distributed", type=int, default=None, metavar="N",
                   help="check ring attention (flashref.distributed) on N local processes instead: gloo on the "
                        "CPU, nccl with one GPU each on CUDA (docs/distributed.md)")
    p.add_argument("--impl", action="append", default=None, metavar="NAME",
                   help="judge this implementation (repeatable): flashref (default), sdpa-math, sdpa-flash, "
                        "sdpa-efficient, sdpa-cudnn, flex, flex-compiled, flash-attn, an installed flashref.implementations "
                        "entry point, "
                        "or module:attribute (docs/cli.md)")
    p.add_argument("--features", type=str, default=None, metavar="A,B,...",
                   help="with --impl module:attribute naming a plain callable: what it can do "
                        "(causal_top_left, causal_bottom_right, kv_lens, gqa, window, softcap, alibi, sinks, lse)")
    p.add_argument("--layout", choices=("bhld", "blhd"), default=None,
                   help="with --impl module:attribute naming a plain callable: (B, H, L, D) or (B, L, H, D)")
    p.add_argument("--fuzz", type=float, default=None, metavar="SECONDS",
                   help="instead of a preset: draw cases across everything --impl declares (odd lengths, Lq != Lk, "
                        "every dtype and head dim it takes, feature combinations, rows that see no key, large "
                        "logits) for SECONDS per implementation; a failure is shrunk to the smallest failing case")
    p.add_argument("--model", action="store_true",
                   help="instead: a whole torch.nn.Transformer on the kernels vs the NumPy Transformer, output "
                        "and every parameter gradient (flashref.model_check); --dtype, --seed, --case apply")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    if not console.is_terminal:  # CI logs and pipes: keep table rows on one line each
        console = Console(width=max(console.width, 170))
    device = choose_device(args.device, "flashref verify")
    if args.dtype and FP8 in args.dtype and (args.model or args.distributed is not None or args.fuzz is not None):
        console.print(f"[red]flashref verify: --dtype {FP8} selects the FP8 forward's sweep cases; --model, "
                      f"--distributed and --fuzz have no FP8 cases[/]")
        return 2
    if args.model:  # issue 12: the whole-model check (flashref/model_check.py)
        return _run_model(args, console)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)

    if args.distributed is not None:  # ring attention on N processes (flashref.distributed.check)
        return _run_distributed(args, console, device, seed)

    if args.fuzz is not None:
        return _run_fuzz(args, device, seed, console)

    from flashref import gate
    from flashref.gate.reports import verify_report, verify_table, write_junit
    from flashref.reporting import describe_device, environment, write_json

    cases = _cases(console, lambda: [gate.case_from_name(name, seed=seed) for name in args.case] if args.case
                   else gate.sweep(args.preset, dtypes=args.dtype, head_dims=args.head_dim,
                                   causal=CAUSAL[args.causal], seed=seed))
    if cases is None:
        return 2

    if args.impl and args.impl != ["flashref"]:
        return _run_implementations(args, cases, device, seed, console)

    env = environment()
    where = describe_device(env)
    seed_note = f"seed {seed}"
    n = f"{len(cases)} configuration{'s' if len(cases) != 1 else ''}"
    if args.case:
        console.print(f"flashref verify --case: {n} on {where}, {seed_note}")
    else:
        console.print(f"flashref verify --{args.preset}: {n} on {where}, {seed_note} (case i uses seed {seed} + i)")

    outcomes = _run_cases(cases, device, console)
    seconds = sum(o.seconds for o in outcomes)

    console.print(verify_table(outcomes, only_failures=args.failures_only))
    failed = [o for o in outcomes if not o.passed]
    settings = {"preset": args.preset if not args.case else None, "seed": seed, "device": device,
                "dtypes": args.dtype, "head_dims": args.head_dim, "causal": args.causal, "cases": args.case}
    if args.json:
        path = write_json(args.json, verify_report(outcomes, settings=settings, env=env, seconds=seconds))
        console.print(f"JSON report: {path}")
    if args.junit:
        path = write_junit(args.junit, outcomes, env=env, seconds=seconds)
        console.print(f"JUnit report: {path}")

    if not failed:
        console.print(f"[bold green]PASS[/]: {len(outcomes)}/{len(outcomes)} configurations "
                      f"within bounds in {seconds:.1f} s ({where}).")
        return 0
    console.print(f"[bold red]FAIL[/]: {len(failed)} of {len(outcomes)} configurations out of bounds "
                  f"({seed_note}). Replay:")
    for o in failed[:MAX_REPLAYS_SHOWN]:
        console.print(f"  {escape(o.failure_summary())}", highlight=False, soft_wrap=True)
        # print(), not rich: the replay line must stay copy-pasteable at any terminal width.
        print(f"  {o.replay}", flush=True)
    if len(failed) > MAX_REPLAYS_SHOWN:
        console.print(f"  ... and {len(failed) - MAX_REPLAYS_SHOWN} more (see --json / --junit)")
    return 1


def _worst_text(name: str, results) -> str:
    """'float16 dq 0.61, ...': the worst ratio per (dtype, tensor) (``GateReport.worst_ratios``)."""
    from flashref.gate import GateReport

    worst = GateReport(name, tuple(results)).worst_ratios()
    return ", ".join(f"{d} {t} {r:.2f}" for (d, t), r in sorted(worst.items())) or "-"


def _cases(console, build) -> list | None:
    """``build()``'s cases, or None after one red line when it raised ValueError (a bad name or
    filter) or found none."""
    from rich.markup import escape

    try:
        cases = build()
    except ValueError as err:
        console.print(f"[red]flashref verify: {escape(str(err))}[/]")
        return None
    if not cases:
        console.print("[red]flashref verify: no configuration matches these filters[/]")
        return None
    return cases


def _run_implementations(args, cases: list, device: str, seed: int, console) -> int:
    """``--impl A --impl B``: every case for every implementation; one table, a summary per
    implementation, replay lines; exit 1 if any implementation fails or errs on a case."""
    from rich.markup import escape

    from flashref.gate import check_case_with, parse_features, resolve_implementation
    from flashref.gate.reports import implementations_table, verify_report, write_junit_suites
    from flashref.reporting import describe_device, environment, write_json

    try:
        features = parse_features(args.features) if args.features is not None else None
        impls = [resolve_implementation(spec, features=features, layout=args.layout) for spec in args.impl]
    except (ValueError, TypeError) as err:
        console.print(f"[red]flashref verify: {escape(str(err))}[/]")
        return 2
    env = environment()
    where = describe_device(env)
    console.print(f"flashref verify: {len(cases)} configurations x {len(impls)} implementations "
                  f"({', '.join(i.name for i in impls)}) on {where}, seed {seed}")
    results = {}
    for impl in impls:
        outcomes = []
        for case in cases:
            t0 = time.perf_counter()
            try:
                outcome = check_case_with(impl, case, device)
            except Exception as exc:  # the gate reports it; the run goes on
                from flashref import gate

                outcome = dataclasses.replace(gate.CaseResult.from_exception(case, exc, time.perf_counter() - t0),
                                              implementation=impl.name)
            outcomes.append(outcome)
        results[impl.name] = outcomes
    console.print(implementations_table(results))
    bad = 0
    for name, outcomes in results.items():
        counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "error", "unsupported")}
        console.print(f"{name}: {counts['pass']} passed, {counts['fail']} failed, {counts['error']} errors, "
                      f"{counts['unsupported']} unsupported; worst ratio: {_worst_text(name, outcomes)}",
                      highlight=False, soft_wrap=True)
        reasons = sorted({o.unsupported for o in outcomes if o.unsupported})
        if reasons:
            console.print(f"  unsupported: {escape('; '.join(reasons))}", highlight=False, soft_wrap=True)
        impl = next(i for i in impls if i.name == name)
        if device not in impl.backward_devices:
            console.print(f"  {name} has no backward on {device}: its forward alone was judged",
                          highlight=False)
        for o in [o for o in outcomes if o.status in ("fail", "error")][:MAX_REPLAYS_SHOWN]:
            console.print(f"  {escape(o.failure_summary())}", highlight=False, soft_wrap=True)
            print(f"  {o.replay}", flush=True)
        bad += counts["fail"] + counts["error"]
    settings = {"preset": args.preset if not args.case else None, "seed": seed, "device": device,
                "implementations": [i.name for i in impls], "cases": args.case}
    if args.json:
        report = {"schema": "flashref.verify-implementations/1", "settings": settings,
                  "implementations": {name: verify_report(outcomes, settings=settings, env=env,
                                                          seconds=sum(o.seconds for o in outcomes))
                                      for name, outcomes in results.items()}}
        console.print(f"JSON report: {write_json(args.json, report)}")
    if args.junit:
        console.print(f"JUnit report: {write_junit_suites(args.junit, results, env=env)}")
    if bad:
        return 1
    if all(o.status == "unsupported" for outcomes in results.values() for o in outcomes):
        console.print(f"[bold yellow]NOTHING RAN[/]: no implementation could run any of these cases on {where} "
                      "(every case unsupported, see above)")
        return NOTHING_RAN
    return 0


def _run_cases(cases: list, device: str, console) -> list:
    """Check each case under a live progress bar; a case that raises is a failure, not a crash."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flashref import gate

    outcomes = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(cases))
        for case in cases:
            progress.update(task, description=case.name)
            t0 = time.perf_counter()
            try:
                outcome = gate.check_case(case, device=device)
            except Exception as exc:  # the gate reports it; the rest of the sweep still runs
                outcome = gate.CaseResult.from_exception(case, exc, time.perf_counter() - t0)
            outcomes.append(outcome)
            progress.advance(task)
    return outcomes


def _run_fuzz(args, device: str, seed: int, console) -> int:
    """``--fuzz SECONDS``: cases drawn for each implementation until the time is up; the first
    failure shrunk; exit 1 if any case failed or raised, 2 for bad arguments."""
    from rich.markup import escape

    from flashref.gate import parse_features, resolve_implementation
    from flashref.gate.fuzz import fuzz
    from flashref.gate.reports import verify_report, write_junit_suites
    from flashref.reporting import describe_device, environment, write_json

    if args.fuzz <= 0:
        console.print(f"[red]flashref verify: --fuzz needs a positive number of seconds, got {args.fuzz:g}[/]")
        return 2
    if args.case:
        console.print("[red]flashref verify: --fuzz draws its own cases; it takes no --case[/]")
        return 2
    try:
        features = parse_features(args.features) if args.features is not None else None
        impls = [resolve_implementation(spec, features=features, layout=args.layout)
                 for spec in (args.impl or ["flashref"])]
    except (ValueError, TypeError) as err:
        console.print(f"[red]flashref verify: {escape(str(err))}[/]")
        return 2
    env = environment()
    where = describe_device(env)
    reports, bad = {}, 0
    for impl in impls:
        console.print(f"flashref verify --fuzz {args.fuzz:g} --impl {impl.name}: drawing cases over what it declares "
                      f"on {where}, seed {seed} (case i uses seed {seed} + i)", highlight=False)
        with console.status(f"fuzzing {impl.name}") as status:
            counter = itertools.count(1)

            def progress(result):
                status.update(f"fuzzing {impl.name}: {next(counter)} cases, last {result.case.name} {result.status}")

            report = fuzz(impl, args.fuzz, seed=seed, device=device, interpreted=device == "cpu", progress=progress)
        reports[impl.name] = report
        console.print(f"{impl.name}: {len(report.results)} cases in {report.seconds:.0f} s: {report.count('pass')} passed, "
                      f"{report.count('fail')} failed, {report.count('error')} errors; worst ratio: "
                      f"{_worst_text(impl.name, report.results)}", highlight=False, soft_wrap=True)
        if report.failures:
            bad += len(report.failures)
            shrunk = report.shrunk
            console.print(f"[bold red]FAIL[/]: {len(report.failures)} of {len(report.results)} cases; the first shrunk "
                          f"in {report.shrink_checks} checks to:")
            console.print(f"  {escape(shrunk.name)}: {escape(shrunk.failure_summary())}", highlight=False,
                          soft_wrap=True)
            print(f"  {shrunk.replay}", flush=True)
            for r in report.failures[:MAX_REPLAYS_SHOWN]:
                print(f"  unshrunk: {r.replay}", flush=True)
    settings = {"fuzz_seconds": args.fuzz, "seed": seed, "device": device, "implementations": list(reports)}
    if args.json:
        document = {"schema": "flashref.verify-fuzz/1", "settings": settings, "implementations": {
            name: {**verify_report(r.results, settings=settings, env=env, seconds=r.seconds),
                   "shrunk": None if r.shrunk is None else {"name": r.shrunk.name, "seed": r.shrunk.case.seed,
                                                             "replay": r.shrunk.replay,
                                                             "why": r.shrunk.failure_summary()}}
            for name, r in reports.items()}}
        console.print(f"JSON report: {write_json(args.json, document)}")
    if args.junit:
        console.print(f"JUnit report: {write_junit_suites(args.junit, {n: r.results for n, r in reports.items()}, env=env)}")
    if not bad:
        console.print(f"[bold green]PASS[/]: every drawn case within bounds ({where}).")
    return 1 if bad else 0


def _run_model(args, console) -> int:
    """``flashref verify --model``: the device is chosen (and the interpreter switched on) by the caller."""
    import torch
    from rich.markup import escape

    from flashref.gate.model import ModelCase, check_model, model_cases
    from flashref.gate.reports import model_tables
    from flashref.reporting import describe_device, environment

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        if args.case:
            cases = [ModelCase.from_name(name, seed=seed) for name in args.case]
        else:
            cases = model_cases(args.dtype, seed=seed)
    except ValueError as err:
        console.print(f"[red]flashref verify --model: {escape(str(err))}[/]")
        return 2
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    where = describe_device(environment())
    console.print(f"flashref verify --model: torch.nn.Transformer on the kernels vs the NumPy Transformer "
                  f"(float64), {len(cases)} dtype(s) on {where}, seed {seed}")
    results = []
    for case in cases:
        result = check_model(case, device)
        results.append(result)
        worst = result.worst()
        console.print(f"  {case.name}: {len(result.checks)} tensors (output + every parameter gradient), "
                      f"{result.routed_calls} attention calls on the kernels, worst ratio "
                      f"{worst.error.ratio:.2f} ({worst.name}), {result.seconds:.1f} s: "
                      + ("[green]PASS[/]" if result.passed else "[bold red]FAIL[/]"))
        if result.refused:
            console.print(f"  [yellow]baseline on {'+'.join(result.baselines)} only: {escape(result.refused)}[/]")
    for table in model_tables(results, only_failures=args.failures_only):
        console.print(table)
    console.print("ratio = kernel err / bound; PASS when kernel err <= bound = 2 x (output) or 3 x (gradients) "
                  "baseline err + u32 max|ref|; baseline = the same torch model on torch's math and fused SDPA in "
                  "the same dtype (the larger error, pooled over each group relative to each tensor's scale); reference = the NumPy Transformer "
                  "in float64 with the same weights.")
    failed = [r for r in results if not r.passed]
    if not failed:
        console.print(f"[bold green]PASS[/]: {len(results)}/{len(results)} models within bounds on every tensor.")
        return 0
    console.print(f"[bold red]FAIL[/]: {len(failed)} of {len(results)} models out of bounds. Replay:")
    for r in failed:
        print(f"  {r.case.replay_command()}", flush=True)
    return 1


def _run_distributed(args, console, device: str, seed: int) -> int:
    """``flashref verify --distributed N``: the ring sweep (or ``--case`` names) on N local
    processes, the usual table, exit status 0 only if every configuration passed."""
    import torch
    from rich.markup import escape

    from flashref.gate.reports import verify_table
    from flashref.gate.ring import RingCase, ring_sweep, run_ring_check

    world = args.distributed
    if world < 1:
        console.print(f"[red]flashref verify: --distributed needs at least 1 process, got {world}[/]")
        return 2
    if device == "cuda" and torch.cuda.device_count() < world:
        console.print(f"[red]flashref verify: --distributed {world} on CUDA needs {world} GPUs (one per process), "
                      f"torch sees {torch.cuda.device_count()}[/]")
        return 2
    def ring_cases():
        if not args.case:
            return ring_sweep(world, dtypes=args.dtype, causal=CAUSAL[args.causal], seed=seed)
        named = [RingCase.from_name(name, seed=seed) for name in args.case]
        if any(c.world_size != world for c in named):
            raise ValueError(f"--case names a different number of processes than --distributed {world}")
        return named

    cases = _cases(console, ring_cases)
    if cases is None:
        return 2
    where = (f"{world} processes, gloo, CPU with Triton's interpreter" if device == "cpu"
             else f"{world} processes, nccl, one GPU each")
    console.print(f"flashref verify --distributed {world}: ring attention, {len(cases)} configurations on {where}, "
                  f"seed {seed} (case i uses seed {seed} + i)")
    try:
        run = run_ring_check(cases, world, device=device)
    except TimeoutError as err:
        console.print(f"[bold red]FAIL[/]: {escape(str(err))}")
        return 1
    outcomes = run.results
    console.print(verify_table(outcomes))
    if args.json or args.junit:
        from flashref.gate.reports import verify_report, write_junit
        from flashref.reporting import environment, write_json

        env = environment()
        settings = {"distributed": world, "seed": seed, "device": device, "dtypes": args.dtype,
                    "causal": args.causal, "cases": args.case}
        if args.json:
            path = write_json(args.json, verify_report(outcomes, settings=settings, env=env, seconds=run.seconds))
            console.print(f"JSON report: {path}")
        if args.junit:
            path = write_junit(args.junit, outcomes, env=env, suite="flashref.verify.distributed", seconds=run.seconds)
            console.print(f"JUnit report: {path}")
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        console.print(f"[bold green]PASS[/]: {len(outcomes)}/{len(outcomes)} configurations within bounds; "
                      f"{run.seconds:.1f} s wall for {world} processes (spawn, import, ring forward + backward).")
        return 0
    console.print(f"[bold red]FAIL[/]: {len(failed)} of {len(outcomes)} configurations out of bounds (seed {seed}). "
                  "Replay:")
    for o in failed:
        console.print(f"  {escape(o.failure_summary())}", highlight=False, soft_wrap=True)
        print(f"  {o.replay}", flush=True)
    return 1
