"""Measuring launch configurations on a GPU: what ``flashref tune`` runs (docs/tuning.md).

For each tuning group (a launch — "forward", "backward_dkdv" or its split passes "backward_dk" /
"backward_dv" at head dims above 128, "backward_dq" — at one head-dim bucket, 16-bit dtype and
causal flag) every candidate of ``tuning_space.tuning_configs`` (the untuned default first, then the
arch's gate-pruned table) is timed on a fixed grid of shapes: 16k tokens and a model width of
2048 (``flashref bench``'s axis), sequence lengths 1k / 4k / 16k. The candidate is forced on
its launch (``config_dispatch.force_config``); the other launches keep their own config, so a backward
candidate's time differs from the default's only by its own kernel. The winner (least total
median time over the shapes) becomes the group's entry in the device's tuned table
(written by ``tuned_tables.write_tuned``).

The time box is checked before each candidate (a compile cannot be interrupted): groups run in
priority order (bfloat16 before float16, head dim 128, 64, 256, the forward first) and the table
is written after every group, so a run cut short keeps what it measured. A group cut short keeps
the best of the candidates it reached — the default is measured first, so an entry is never
slower than the default on the measured shapes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from typing import Any, Callable, Iterable

import torch
import triton

from .config_dispatch import force_config
from .tile_tables import DKDV_LAUNCHES, KernelConfig, dkdv_passes
from .tuned_tables import TUNED_SCHEMA, tuned_key
from .tuning_space import tuning_configs

TUNE_HEAD_DIMS = (128, 64, 256)  # priority order
TUNE_DTYPES = ("bfloat16", "float16")
TUNE_SEQLENS = (1024, 4096, 16384)
TUNE_KERNELS = ("forward", "backward_dkdv", "backward_dq")
TOKENS, MODEL_DIM = 16384, 2048


@dataclasses.dataclass(frozen=True)
class TuneGroup:
    """One entry of a tuned table: a launch at a head dim (its bucket), dtype, causal flag."""

    kernel: str  # a launch name: forward, backward_dkdv, backward_dk, backward_dv, backward_dq
    head_dim: int
    dtype: str
    causal: bool

    @property
    def key(self) -> str:
        return tuned_key(self.kernel, self.head_dim, self.dtype, self.causal)


def plan(arch: str, kernels: Iterable[str] = TUNE_KERNELS, head_dims: Iterable[int] = TUNE_HEAD_DIMS,
         dtypes: Iterable[str] = TUNE_DTYPES, causal: Iterable[bool] = (True, False),
         ) -> list[tuple[TuneGroup, tuple[KernelConfig, ...]]]:
    """The groups to measure, in priority order, each with its candidates (default first)."""
    groups = []
    for dtype in dtypes:
        for head_dim in head_dims:
            for kernel in kernels:
                names = (tuple(n for g in dkdv_passes(head_dim) for n, gg in DKDV_LAUNCHES.items() if gg == g)
                         if kernel == "backward_dkdv" else (kernel,))
                for name in names:
                    for c in causal:
                        groups.append((TuneGroup(name, head_dim, dtype, c), tuning_configs(name, head_dim, arch)))
    return groups


def shapes(head_dim: int, seqlens: Iterable[int] = TUNE_SEQLENS) -> list[tuple[int, int, int, int]]:
    """(batch, heads, seqlen, head_dim) per length: 16k tokens, model width 2048."""
    return [(max(1, TOKENS // n), max(1, MODEL_DIM // head_dim), n, head_dim) for n in seqlens]


def _clear_autotune_caches() -> None:
    """Forget every autotuner's choice so that the next launch asks the pruner again."""
    from triton.runtime.autotuner import Autotuner

    from . import launch

    for value in vars(launch).values():
        if isinstance(value, Autotuner):
            value.cache.clear()


def time_candidate(group: TuneGroup, config: KernelConfig, shape, timer) -> float:
    """Median ms of ``group``'s launch direction (forward, or the whole backward) with
    ``config`` forced on its launch, on fresh random inputs of ``shape``."""
    from .flash_attention import flash_attention

    dtype = getattr(torch, group.dtype)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=group.kernel != "forward")
               for _ in range(3))
    force_config(group.kernel, config)
    _clear_autotune_caches()
    try:
        if group.kernel == "forward":
            def fn():
                return flash_attention(q, k, v, causal=group.causal)
            grads = None
        else:
            out = flash_attention(q, k, v, causal=group.causal)
            dout = torch.randn_like(out)

            def fn():
                out.backward(dout, retain_graph=True)
            grads = [q, k, v]
        fn()  # compiles this config
        torch.cuda.synchronize()
        return float(timer(fn, grads))
    finally:
        force_config(group.kernel, None)
        _clear_autotune_caches()


def do_bench_timer(fn: Callable[[], Any], grads) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40, grad_to_none=grads, return_mode="median")


def new_table(device_name: str, capability: tuple[int, int]) -> dict:
    return {"schema": TUNED_SCHEMA, "device": device_name, "capability": list(capability),
            "triton": triton.__version__, "torch": torch.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seqlens": list(TUNE_SEQLENS), "tokens": TOKENS, "model_dim": MODEL_DIM, "entries": {}}


def tune(groups, table: dict, *, seqlens=TUNE_SEQLENS, budget_s: float, measure=None, timer=do_bench_timer,
         on_group: Callable[[TuneGroup, dict | None], None] | None = None, clock=time.monotonic) -> dict:
    """Measure ``groups`` (from ``plan``) into ``table["entries"]`` until ``budget_s`` runs out.

    ``measure(group, config, shape) -> ms`` (default: ``time_candidate`` with ``timer``). A
    candidate that fails (too much shared memory at launch, out of memory, ...) is skipped.
    ``on_group(group, entry)`` is called after each group (entry None if nothing was measured),
    e.g. to write the table. Returns ``table`` with ``complete`` set."""
    measure = measure or (lambda g, c, s: time_candidate(g, c, s, timer))
    deadline = clock() + budget_s
    table["complete"] = True
    for group, candidates in groups:
        results = []
        for config in candidates:
            if clock() >= deadline:
                table["complete"] = False
                break
            try:
                per_shape = [measure(group, config, s) for s in shapes(group.head_dim, seqlens)]
            except Exception as exc:  # a config that cannot run here is not a winner
                results.append({"config": dataclasses.asdict(config), "error": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            results.append({"config": dataclasses.asdict(config), "ms": round(sum(per_shape), 4),
                            "ms_per_seqlen": [round(x, 4) for x in per_shape]})
        timed = [r for r in results if "ms" in r]
        entry = None
        if timed:
            best = min(timed, key=lambda r: r["ms"])
            default = timed[0] if timed[0]["config"] == dataclasses.asdict(candidates[0]) else None
            entry = {"config": best["config"], "ms": best["ms"],
                     "default_ms": default["ms"] if default else None,
                     "measured": len(results), "candidates": len(candidates),
                     "complete": len(results) == len(candidates), "results": results}
            table["entries"][group.key] = entry
        if on_group:
            on_group(group, entry)
        if clock() >= deadline:
            table["complete"] = False
            break
    return table

