"""The GPU attention benchmark: TFLOP/s of flashref's kernel beside torch's, in one run.

FLOPs are counted as FlashAttention's benchmarks count them, so our numbers sit on
the same axis as its published charts:

    forward   = 4 * B * H * Lq * Lk * D     (two matmuls, 2 FLOPs per multiply-add)
    causal    : halved (about half the score matrix is masked away)
    backward  = 2.5 * forward               (five matmuls instead of two)
    fwd + bwd = 3.5 * forward

The sweep keeps the token count fixed (B * L = 16384) and the model width fixed
(H * D = 2048) while the sequence length goes 512 .. 16384, for head dims 64, 128,
256, causal and not, bfloat16 and float16, forward / backward / both. Each point is
measured for flashref and, in the same process on the same inputs, torch SDPA's
flash, efficient, cuDNN and math backends and a naive torch attention. Timing is
`triton.testing.do_bench` (median over repetitions after a warm-up, L2 flushed
between runs); every configuration gets freshly drawn inputs. Peak memory is
`torch.cuda.max_memory_allocated` over one extra call, above what was allocated
before it. A backend that cannot run a configuration (unsupported head dim,
out of memory, ...) is recorded as such, never a crash.

Any implementation the gate judges (flashref.gate: `sdpa-math`, `flex`, `flash-attn`,
`module:attribute`, entry points) is timed the same way through a `Target` (`gate_target`):
its attention called with `causal=True` on causal points, in its own layout, and a point it
does not declare (a feature, dtype, head dim, device, or a backward where it has none) is
recorded `unsupported` with the gate's reason. On a CPU (`flashref bench --cpu --impl ...`) the
same sweep runs at CPU sizes (`Plan.preset("cpu")`) with a wall-clock timer.

Nothing here asserts on time: these are measurements for people to read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

TOKENS = 16384  # B * L, fixed across the sweep
MODEL_DIM = 2048  # H * D, fixed across the sweep
SEQLENS_FULL = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS_FULL = (64, 128, 256)
DTYPES_FULL = ("bfloat16", "float16")
DTYPES_ALL = ("bfloat16", "float16", "float32")  # float32: the CPU sweep's
DIRECTIONS = ("fwd", "bwd", "fwd_bwd")
IMPLEMENTATIONS = ("flashref", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "naive_torch")
BENCH_SCHEMA = "flashref.bench/1"

# Multiplier on the forward FLOP count per direction (FlashAttention's convention).
DIRECTION_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    *, causal: bool, direction: str = "fwd") -> float:
    """FlashAttention's FLOP count: 4*B*H*Lq*Lk*D forward, halved if causal, x2.5 bwd, x3.5 both."""
    if direction not in DIRECTION_FLOPS:
        raise ValueError(f"direction must be one of {sorted(DIRECTION_FLOPS)}, got {direction!r}")
    forward = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim
    if causal:
        forward /= 2.0
    return forward * DIRECTION_FLOPS[direction]


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One point of the sweep: q, k, v are (batch, heads, seqlen, head_dim) in `dtype`."""

    dtype: str
    head_dim: int
    causal: bool
    seqlen: int
    direction: str
    tokens: int = TOKENS
    model_dim: int = MODEL_DIM

    @property
    def batch(self) -> int:
        return max(1, self.tokens // self.seqlen)

    @property
    def heads(self) -> int:
        return max(1, self.model_dim // self.head_dim)

    @property
    def flops(self) -> float:
        return attention_flops(self.batch, self.heads, self.seqlen, self.seqlen, self.head_dim,
                               causal=self.causal, direction=self.direction)

    @property
    def panel(self) -> tuple[int, bool, str]:
        """The plot panel this point belongs to."""
        return (self.head_dim, self.causal, self.direction)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to sweep; `quick` trims it to fit a few minutes of a borrowed GPU."""

    seqlens: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtypes: tuple[str, ...]
    causal: tuple[bool, ...] = (False, True)
    directions: tuple[str, ...] = DIRECTIONS
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    tokens: int = TOKENS
    model_dim: int = MODEL_DIM
    warmup_ms: int = 25
    rep_ms: int = 100

    @classmethod
    def preset(cls, name: str) -> "Plan":
        if name == "full":
            return cls(SEQLENS_FULL, HEAD_DIMS_FULL, DTYPES_FULL)
        if name == "quick":
            # Every head dim, both maskings and directions, one dtype, four of the six lengths
            # (a third of the full sweep), shorter timing windows. Ordered so that a run cut
            # short by its time budget has the forward panels first, head dim 128 first.
            return cls((512, 2048, 8192, 16384), (128, 64, 256), ("bfloat16",),
                       directions=("fwd", "fwd_bwd", "bwd"), warmup_ms=10, rep_ms=40)
        if name == "cpu":
            # CPU sizes: B*L = 2048, H*D = 256 (four heads of 64), float32, a few seconds per
            # implementation; forward panels first.
            return cls((128, 256, 512, 1024), (64,), ("float32",), directions=("fwd", "fwd_bwd", "bwd"),
                       tokens=2048, model_dim=256, warmup_ms=10, rep_ms=40)
        raise ValueError(f"preset must be 'quick', 'full' or 'cpu', got {name!r}")

    def cases(self) -> list[BenchCase]:
        """In the plan's order, direction before head dim: a run cut short by its time
        budget still has whole panels (every length of one head dim, masking, direction)."""
        return [
            BenchCase(dtype, hd, causal, L, direction, self.tokens, self.model_dim)
            for dtype in self.dtypes
            for direction in self.directions
            for hd in self.head_dims
            for causal in self.causal
            for L in self.seqlens
        ]


@dataclasses.dataclass
class Measurement:
    """One (case, implementation) result. `status`: ok | unsupported | oom | error | skipped."""

    case: BenchCase
    implementation: str
    status: str
    ms: float | None = None
    tflops: float | None = None
    peak_memory_bytes: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.case)
        d.update(batch=self.case.batch, heads=self.case.heads, flops=self.case.flops,
                 implementation=self.implementation, status=self.status, ms=self.ms,
                 tflops=self.tflops, peak_memory_bytes=self.peak_memory_bytes, message=self.message)
        return d


# --------------------------------------------------------------------------- implementations


def _naive_attention(q, k, v, causal: bool):
    """softmax(q k^T / sqrt(D) [+ causal mask]) v, every step in the inputs' dtype, fully materialised."""
    import torch

    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, L, L)
    if causal:
        L, S = scores.shape[-2:]
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _sdpa(q, k, v, causal: bool):
    """torch SDPA; which backend runs is pinned by `backend_context` around the measurement."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _flashref(q, k, v, causal: bool):
    from flashref.kernels import flash_attention

    return flash_attention(q, k, v, causal=causal)


ATTENTION: dict[str, Callable] = {
    "flashref": _flashref,
    "sdpa_flash": _sdpa,
    "sdpa_efficient": _sdpa,
    "sdpa_cudnn": _sdpa,
    "sdpa_math": _sdpa,
    "naive_torch": _naive_attention,
}
SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION",
                 "sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_math": "MATH"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One implementation as the sweep times it: ``attend(q, k, v, causal)`` returns out, q, k, v
    in ``layout`` ("bhld" (B, H, L, D) or "blhd" (B, L, H, D)); ``context()`` is entered once
    around a point's measurement (untimed); ``unsupported(case, device)`` says why a point is
    not run, or None; ``about``: what the report says of it."""

    name: str
    attend: Callable
    layout: str = "bhld"
    context: Callable[[], Any] = contextlib.nullcontext
    unsupported: Callable[[BenchCase, str], str | None] | None = None
    about: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def builtin_target(name: str) -> Target:
    """One of ``IMPLEMENTATIONS`` (KeyError otherwise), looked up in ``ATTENTION`` now."""
    return Target(name, ATTENTION[name], context=lambda: backend_context(name),
                  about={"source": "flashref.bench.dense", "layout": "bhld"})


def gate_target(impl) -> Target:
    """A ``flashref.gate.Implementation`` as the sweep times it: its attention with
    ``causal=True`` on causal points (Lq = Lk, so both alignments agree), its first output;
    a point is unsupported where the gate would call the same case unsupported
    (``unsupported_reason``), or for a backward on a device it has none on."""
    from flashref.gate.cases import Case
    from flashref.gate.implementations import unsupported_reason

    def attend(q, k, v, causal):
        result = impl.attention(q, k, v, **({"causal": True} if causal else {}))
        return result[0] if isinstance(result, tuple) else result

    def unsupported(case: BenchCase, device: str) -> str | None:
        kind = device.split(":")[0]
        if case.direction != "fwd" and kind not in impl.backward_devices:
            return f"{impl.name} has no backward on {kind}"
        gate_case = Case(batch=case.batch, heads_q=case.heads, heads_kv=case.heads, seqlen_q=case.seqlen,
                         seqlen_k=case.seqlen, head_dim=case.head_dim, dtype=case.dtype, causal=case.causal,
                         causal_alignment="top_left", kv_lens=False)
        return unsupported_reason(impl, gate_case, kind)

    return Target(impl.name, attend, layout=impl.layout, unsupported=unsupported,
                  about={"source": "flashref.gate", "layout": impl.layout, "features": sorted(impl.features),
                         "dtypes": list(impl.dtypes)})


def backend_context(implementation: str):
    """Pins torch SDPA to one backend for a whole measurement (entered once, outside the
    timed calls, so its cost is not timed); a no-op for the other implementations."""
    import contextlib

    if implementation not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[implementation]))


# --------------------------------------------------------------------------- timing


Timer = Callable[..., float]  # timer(fn, *, warmup_ms, rep_ms, grad_to_none) -> milliseconds


def do_bench_timer(fn: Callable[[], Any], *, warmup_ms: int, rep_ms: int, grad_to_none=None) -> float:
    """Median milliseconds from `triton.testing.do_bench` (needs a GPU)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"))


def wallclock_timer(fn: Callable[[], Any], *, warmup_ms: int, rep_ms: int, grad_to_none=None) -> float:
    """Median milliseconds by `time.perf_counter`, for running the sweep's logic on a CPU."""
    deadline = time.perf_counter() + warmup_ms / 1e3
    fn()
    while time.perf_counter() < deadline:
        fn()
    samples = []
    stop = time.perf_counter() + rep_ms / 1e3
    while not samples or time.perf_counter() < stop:
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _classify(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    text = str(exc)
    # torch SDPA with a pinned backend that cannot take the inputs: "No available kernel"
    # (torch <= 2.12) or "No viable backend" (2.13).
    if isinstance(exc, (NotImplementedError, ValueError, TypeError)) or "No available kernel" in text \
            or "No viable backend" in text or "not supported" in text.lower() or "unsupported" in text.lower():
        return "unsupported"
    return "error"


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def measure(case: BenchCase, implementation: str | Target, *, device: str = "cuda", timer: Timer = do_bench_timer,
            warmup_ms: int = 25, rep_ms: int = 100, seed: int = 0) -> Measurement:
    """Time one implementation (a name of ``IMPLEMENTATIONS`` or a ``Target``) on one case,
    with fresh inputs drawn from `seed`."""
    import torch

    name = implementation.name if isinstance(implementation, Target) else implementation
    result = Measurement(case, name, status="ok")
    reason = (implementation.unsupported(case, device)
              if isinstance(implementation, Target) and implementation.unsupported is not None else None)
    if reason is not None:
        result.status, result.message = "unsupported", reason
        return result
    try:
        target = implementation if isinstance(implementation, Target) else builtin_target(implementation)
        with target.context():
            result.ms, result.peak_memory_bytes = _time_one(case, target.attend, device=device, timer=timer,
                                                            warmup_ms=warmup_ms, rep_ms=rep_ms, seed=seed,
                                                            layout=target.layout)
        result.tflops = case.flops / (result.ms * 1e-3) / 1e12
    except Exception as exc:  # every failure is a recorded outcome, not the end of the sweep
        result.status = _classify(exc)
        result.message = _short(exc)
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the next point starts from the same empty allocator
    return result


def _time_one(case: BenchCase, attend: Callable, *, device: str, timer: Timer, warmup_ms: int, rep_ms: int,
              seed: int, layout: str = "bhld") -> tuple[float, int | None]:
    """(median ms, peak extra bytes on CUDA or None) for `attend` on fresh inputs of `case`,
    laid out (B, H, L, D) or, for "blhd", (B, L, H, D)."""
    import torch

    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = ((case.batch, case.heads, case.seqlen, case.head_dim) if layout == "bhld"
             else (case.batch, case.seqlen, case.heads, case.head_dim))
    needs_grad = case.direction != "fwd"
    q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_(needs_grad)
               for _ in range(3))
    if case.direction == "fwd":
        def fn():
            return attend(q, k, v, case.causal)
    elif case.direction == "bwd":
        out = attend(q, k, v, case.causal)
        dout = torch.randn(out.shape, generator=gen, device=device, dtype=dtype)

        def fn():
            out.backward(dout, retain_graph=True)
    else:
        dout = torch.randn(shape, generator=gen, device=device, dtype=dtype)

        def fn():
            attend(q, k, v, case.causal).backward(dout)

    fn()  # compiles (autotunes) and proves the implementation supports this case before timing
    ms = timer(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, grad_to_none=[q, k, v] if needs_grad else None)
    if not device.startswith("cuda"):
        return ms, None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return ms, int(torch.cuda.max_memory_allocated() - before)


def matmul_ceiling(dtype: str = "bfloat16", n: int = 8192, *, device: str = "cuda",
                   timer: Timer = do_bench_timer) -> float:
    """Measured TFLOP/s of one (n x n) @ (n x n) matmul: the roof the attention lines sit under."""
    import torch

    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    ms = timer(lambda: a @ b, warmup_ms=25, rep_ms=100)
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- the sweep


def run_sweep(plan: Plan, *, device: str = "cuda", timer: Timer = do_bench_timer,
              time_budget_s: float | None = None, seed: int = 0,
              on_result: Callable[[Measurement], None] | None = None,
              ceiling_n: int = 8192, targets: Mapping[str, Target] | None = None) -> dict[str, Any]:
    """Measure every (case, implementation) of `plan`; returns the JSON-ready report.

    A name of ``plan.implementations`` is looked up in ``targets`` (e.g. ``gate_target``s),
    else it is one of ``IMPLEMENTATIONS``.

    When `time_budget_s` runs out, the remaining points are recorded as `skipped`
    (the report says how far it got instead of being lost to a kill).
    `on_result` is called after each measurement (progress display, incremental saves).
    """
    from flashref.reporting import environment

    start = time.monotonic()
    targets = dict(targets or {})
    ceilings = {dtype: matmul_ceiling(dtype, ceiling_n, device=device, timer=timer) for dtype in plan.dtypes}
    measurements: list[Measurement] = []
    for i, case in enumerate(plan.cases()):
        for impl in plan.implementations:
            if time_budget_s is not None and time.monotonic() - start > time_budget_s:
                m = Measurement(case, impl, status="skipped", message="time budget spent")
            else:
                m = measure(case, targets.get(impl, impl), device=device, timer=timer, warmup_ms=plan.warmup_ms,
                            rep_ms=plan.rep_ms, seed=seed + i)
            measurements.append(m)
            if on_result is not None:
                on_result(m)
    return {
        "schema": BENCH_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()},
        "implementations": {impl: dict(targets[impl].about) if impl in targets
                            else {"source": "flashref.bench.dense", "layout": "bhld"} for impl in plan.implementations},
        "seed": seed,
        "seconds": round(time.monotonic() - start, 2),
        "flop_count": "4*B*H*Lq*Lk*D forward, /2 causal, x2.5 backward, x3.5 forward+backward",
        "matmul_ceiling_tflops": {dtype: round(v, 2) for dtype, v in ceilings.items()},
        "results": [m.as_dict() for m in measurements],
    }


# --------------------------------------------------------------------------- plots and tables


def plot_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG per dtype: one panel per (head dim, causal, direction), TFLOP/s vs sequence length,
    one line per implementation, the measured matmul ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in report["results"] if r["status"] == "ok"]
    paths = []
    plan = report["plan"]
    for dtype in plan["dtypes"]:
        panels = [(hd, c) for hd in sorted(plan["head_dims"]) for c in plan["causal"]]
        directions = [d for d in DIRECTIONS if d in plan["directions"]]
        fig, axes = plt.subplots(len(panels), len(directions), squeeze=False,
                                 figsize=(4.2 * len(directions), 3.2 * len(panels)))
        ceiling = report["matmul_ceiling_tflops"].get(dtype)
        for r_i, (hd, causal) in enumerate(panels):
            for c_i, direction in enumerate(directions):
                ax = axes[r_i][c_i]
                for colour, impl in enumerate(plan["implementations"]):  # one colour per implementation in every panel
                    pts = sorted((r["seqlen"], r["tflops"]) for r in rows
                                 if r["dtype"] == dtype and r["head_dim"] == hd and r["causal"] == causal
                                 and r["direction"] == direction and r["implementation"] == impl)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, color=f"C{colour % 10}")
                if ceiling:
                    ax.axhline(ceiling, linestyle="--", color="grey", linewidth=1, label="matmul ceiling")
                ax.set_xscale("log", base=2)
                ax.set_xticks(plan["seqlens"], [str(L) for L in plan["seqlens"]], fontsize=7)
                ax.minorticks_off()
                ax.set_title(f"{direction}, head dim {hd}, {'causal' if causal else 'non-causal'}", fontsize=9)
                ax.set_xlabel("sequence length")
                ax.set_ylabel("TFLOP/s")
                ax.grid(True, alpha=0.3)
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.985 - 0.04 / len(panels)),
                   ncol=min(len(labels), 7), fontsize=8)
        device = report["environment"]["device"].get("name", "?")
        fig.suptitle(f"attention TFLOP/s, {dtype}, {device}, B*L={plan['tokens']}, H*D={plan['model_dim']}",
                     y=0.998, fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(panels)))
        path = out_dir / f"attention_tflops_{dtype}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def tflops_text(tflops: float) -> str:
    """One decimal on a GPU's scale, three significant digits below 1 TFLOP/s (a CPU's)."""
    return f"{tflops:.1f}" if tflops >= 1 else f"{tflops:.3g}"


def _cell(r: Mapping[str, Any]) -> str:
    if r["status"] == "ok":
        return tflops_text(r["tflops"])
    return {"oom": "OOM", "unsupported": "n/a", "skipped": "-", "error": "err"}.get(r["status"], r["status"])


def markdown_tables(report: Mapping[str, Any]) -> str:
    """One markdown table per (dtype, head dim, causal, direction): TFLOP/s per implementation and length."""
    plan = report["plan"]
    by_key: dict[tuple, dict[str, dict[int, str]]] = {}
    for r in report["results"]:
        key = (r["dtype"], r["head_dim"], r["causal"], r["direction"])
        by_key.setdefault(key, {}).setdefault(r["implementation"], {})[r["seqlen"]] = _cell(r)
    lines = []
    for (dtype, hd, causal, direction), impls in by_key.items():
        lines.append(f"**{dtype}, head dim {hd}, {'causal' if causal else 'non-causal'}, {direction}** (TFLOP/s)\n")
        lines.append("| implementation | " + " | ".join(str(L) for L in plan["seqlens"]) + " |")
        lines.append("|---|" + "---:|" * len(plan["seqlens"]))
        for impl in plan["implementations"]:
            cells = impls.get(impl, {})
            lines.append(f"| {impl} | " + " | ".join(cells.get(L, "-") for L in plan["seqlens"]) + " |")
        lines.append("")
    return "\n".join(lines)


def status_counts(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def best_by_implementation(report: Mapping[str, Any]) -> dict[str, float]:
    """Highest TFLOP/s each implementation reached anywhere in the sweep (a one-line summary)."""
    best: dict[str, float] = {}
    for r in report["results"]:
        if r["status"] == "ok" and r["tflops"] is not None and math.isfinite(r["tflops"]):
            best[r["implementation"]] = max(best.get(r["implementation"], 0.0), r["tflops"])
    return best

