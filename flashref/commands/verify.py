"""`flashref verify`: the correctness gate, kernel vs float64 oracle.

Runs `flashref.equivalence`'s sweep on CUDA when a GPU is present, otherwise on the
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
import random
import time

from flashref.commands.argtypes import comma_list
from flashref.commands.device import choose_device

# The gate's dtypes, named once (flashref.equivalence.DTYPES); this module must not import
# torch at CLI start-up, and equivalence imports it lazily.
from flashref.equivalence import DTYPES  # noqa: E402
CAUSAL = {"on": True, "off": False, "both": None}
MAX_REPLAYS_SHOWN = 10


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
    p.add_argument("--dtype", type=comma_list(str, DTYPES), default=None,
                   help="only these dtypes, e.g. float16,bfloat16")
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
    if args.model:  # issue 12: the whole-model check (flashref/model_check.py)
        from flashref.model_check import run_verify_model

        return run_verify_model(args, console)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)

    if args.distributed is not None:  # ring attention on N processes (flashref.distributed.check)
        from flashref.distributed.check import verify_command

        return verify_command(args, console, device, seed)

    from flashref import equivalence as eq
    from flashref.reporting import (describe_device, environment, verify_report, verify_table, write_json,
                                    write_junit)

    try:
        if args.case:
            cases = [eq.Case.from_name(name, seed=seed) for name in args.case]
        else:
            cases = eq.sweep(args.preset, dtypes=args.dtype, head_dims=args.head_dim,
                             causal=CAUSAL[args.causal], seed=seed)
    except ValueError as err:
        console.print(f"[red]flashref verify: {err}[/]")
        return 2
    if not cases:
        console.print("[red]flashref verify: no configuration matches these filters[/]")
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


def _run_implementations(args, cases: list, device: str, seed: int, console) -> int:
    """``--impl A --impl B``: every case for every implementation; one table, a summary per
    implementation, replay lines; exit 1 if any implementation fails or errs on a case."""
    from rich.markup import escape

    from flashref.gate import check_case_with, parse_features, resolve_implementation
    from flashref.reporting import (describe_device, environment, implementations_table, verify_report, write_json,
                                    write_junit_suites)

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
                from flashref import equivalence as eq

                outcome = dataclasses.replace(eq.CaseResult.from_exception(case, exc, time.perf_counter() - t0),
                                              implementation=impl.name)
            outcomes.append(outcome)
        results[impl.name] = outcomes
    console.print(implementations_table(results))
    bad = 0
    for name, outcomes in results.items():
        counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "error", "unsupported")}
        worst = {}
        for o in outcomes:
            for tensor, e in o.errors.items():
                worst[(o.case.dtype, tensor)] = max(worst.get((o.case.dtype, tensor), 0.0), e.ratio)
        worst_text = ", ".join(f"{d} {t} {r:.2f}" for (d, t), r in sorted(worst.items()))
        console.print(f"{name}: {counts['pass']} passed, {counts['fail']} failed, {counts['error']} errors, "
                      f"{counts['unsupported']} unsupported; worst ratio: {worst_text or '-'}", highlight=False,
                      soft_wrap=True)
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
    if not bad and all(o.status == "unsupported" for outcomes in results.values() for o in outcomes):
        console.print("[bold red]nothing could run[/]: every case is unsupported by every implementation "
                      "(see the reasons above); nothing was judged")
        return 1
    return 1 if bad else 0


def _run_cases(cases: list, device: str, console) -> list:
    """Check each case under a live progress bar; a case that raises is a failure, not a crash."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flashref import equivalence as eq

    outcomes = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(cases))
        for case in cases:
            progress.update(task, description=case.name)
            t0 = time.perf_counter()
            try:
                outcome = eq.check_case(case, device=device)
            except Exception as exc:  # the gate reports it; the rest of the sweep still runs
                outcome = eq.CaseResult.from_exception(case, exc, time.perf_counter() - t0)
            outcomes.append(outcome)
            progress.advance(task)
    return outcomes
