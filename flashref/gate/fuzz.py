"""Fuzzing the gate: dense cases drawn across everything an implementation declares, until a
time is up, and a failure shrunk to the smallest case that still fails.

``draw_case(rng, impl, index, seed)`` picks one ``Case`` from the space ``impl`` declares:
lengths of 1, 2, 3, ones on the residues -2..2 of the block sizes 16..128 and uniform ones up
to 300, Lq < Lk and Lq > Lk alike; every dtype and head dim it takes; MHA, GQA and MQA head
layouts when it declares ``gqa``; each declared feature switched on with some probability
(``kv_lens`` with rows that see no key at all, windows narrower than a block, softcap,
ALiBi per head or per batch row, sinks, dropout, a value head dim Dv != D among the head dims
it takes) and large logits (q drawn with a standard
deviation up to 32). For flashref's own kernels under the interpreter it also forces launch
tiles from the tables and the descriptor path, as the boundary cases do.

``shrink(case, fails)`` walks greedily to a smaller case for which ``fails(case)`` still holds:
variants dropped one at a time, then batch and heads cut down, then lengths halved or set to
1, 2, ..., then the head dim lowered; each accepted step restarts the walk. ``fuzz(impl,
seconds, seed)`` runs both and returns a ``FuzzReport``: every case is replayable by its name
and seed (``flashref verify --impl X --case NAME --seed N``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from .boundaries import table_tiles
from .cases import TILE_LAUNCHES, Case
from .check import check_case_with
from .implementations import Implementation, unsupported_reason
from .results import CaseResult

BLOCK_SIZES = (16, 32, 64, 128)
MAX_LENGTH = 300
HEAD_DIMS = (8, 16, 24, 32, 40, 64, 80, 96, 128, 160, 192, 256)
LOGIT_SCALES = (4.0, 8.0, 16.0, 32.0)
# (batch, heads_q, heads_kv) without and with GQA.
MHA_LAYOUTS = ((1, 1, 1), (2, 2, 2), (3, 1, 1))
GQA_LAYOUTS = ((1, 4, 2), (2, 3, 1), (2, 4, 1), (1, 6, 3))
# The interpreter's cost grows with B * H * Lq * Lk * D: a drawn case above it is cut to batch 1.
LARGE_PROBLEM = 2_000_000


def _length(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.2:
        return rng.choice((1, 2, 3))
    if kind < 0.65:
        return max(1, rng.choice(BLOCK_SIZES) * rng.choice((1, 1, 2)) + rng.randint(-2, 2))
    return rng.randint(1, MAX_LENGTH)


def draw_case(rng: random.Random, impl: Implementation, seed: int, *, interpreted: bool = False) -> Case:
    """One dense case from the space ``impl`` declares (module docstring); ``seed`` its inputs'."""
    features = impl.features
    dtype = rng.choice(tuple(impl.dtypes))
    head_dims = [d for d in HEAD_DIMS if impl.head_dims is None or impl.head_dims(d)] or [64]
    head_dim = rng.choice(head_dims)
    batch, heads_q, heads_kv = rng.choice(MHA_LAYOUTS + (GQA_LAYOUTS if "gqa" in features else ()))
    seqlen_q, seqlen_k = _length(rng), _length(rng)
    if batch * heads_q * seqlen_q * seqlen_k * head_dim > LARGE_PROBLEM:
        batch = 1
    alignments = [a for a in ("top_left", "bottom_right") if f"causal_{a}" in features]
    causal = bool(alignments) and rng.random() < 0.5
    alignment = rng.choice(alignments) if causal else "top_left"
    fields: dict = {}
    if "kv_lens" in features and rng.random() < 0.3:
        fields["kv_lens"] = True
        if rng.random() < 0.5:  # explicit lengths: 0 (a row that sees nothing) and the full length among them
            fields["kv_len_values"] = tuple(rng.choice((0, seqlen_k, rng.randint(0, seqlen_k))) for _ in range(batch))
    if "window" in features and rng.random() < 0.25:
        left, right = rng.choice((-1, rng.randint(0, 40))), rng.choice((-1, rng.randint(0, 40)))
        fields["window"] = (left, right) if (left, right) != (-1, -1) else (rng.randint(0, 40), -1)
    if not causal and "causal_bottom_right" in features and rng.random() < 0.2:
        alignment = "bottom_right"  # places a window and ALiBi without a causal mask
    if "softcap" in features and rng.random() < 0.2:
        fields["softcap"] = rng.choice((2.0, 5.0, 30.0))
    if "alibi" in features and rng.random() < 0.2:
        fields["alibi"] = rng.choice(("h", "bh"))
    if "sinks" in features and rng.random() < 0.2:
        fields["sinks"] = True
    if "dropout" in features and rng.random() < 0.15:
        fields["dropout_p"] = rng.choice((0.1, 0.25, 0.5))
    if rng.random() < 0.15:
        fields["logit_scale"] = rng.choice(LOGIT_SCALES)
    if "value_head_dim" in features and rng.random() < 0.15:  # Dv != D (MLA)
        fields["head_dim_v"] = rng.choice([d for d in head_dims if d != head_dim] or [head_dim])
    if interpreted and impl.name == "flashref":
        if rng.random() < 0.4:
            tables = table_tiles()
            fields["tiles"] = tuple(rng.choice(tables[launch]) for launch in TILE_LAUNCHES)
        fields["descriptors"] = dtype != "float32" and rng.random() < 0.3
    return Case(batch=batch, heads_q=heads_q, heads_kv=heads_kv, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                head_dim=head_dim, dtype=dtype, causal=causal, causal_alignment=alignment,
                kv_lens=fields.pop("kv_lens", False), seed=seed, **fields)


def _kv_lens(case: Case, batch: int, seqlen_k: int) -> tuple:
    return tuple(min(n, seqlen_k) for n in case.kv_len_values[:batch]) if case.kv_len_values else ()


def _resized(case: Case, **changes) -> Case | None:
    """``case`` with shape fields changed and kv_len_values kept consistent; None if invalid."""
    batch = changes.get("batch", case.batch)
    seqlen_k = changes.get("seqlen_k", case.seqlen_k)
    try:
        return dataclasses.replace(case, kv_len_values=_kv_lens(case, batch, seqlen_k), **changes)
    except ValueError:
        return None


def smaller_cases(case: Case) -> list[Case]:
    """The one-step simplifications of ``case``, simplest first (``shrink`` tries them in order)."""
    out = []
    defaults = {f.name: f.default for f in dataclasses.fields(Case) if f.default is not dataclasses.MISSING}
    for name in ("dropout_p", "sinks", "alibi", "softcap", "window", "logit_scale", "descriptors", "tiles",
                 "head_dim_v"):
        if getattr(case, name) != defaults[name]:
            out.append(dataclasses.replace(case, **{name: defaults[name]}))
    if case.kv_lens:
        out.append(dataclasses.replace(case, kv_lens=False, kv_len_values=()))
    if case.causal:
        out.append(dataclasses.replace(case, causal=False))
    if case.causal_alignment != "top_left":
        out.append(dataclasses.replace(case, causal_alignment="top_left"))
    if case.batch > 1:
        out.append(_resized(case, batch=1))
    if case.heads_q > 1:
        out.append(_resized(case, heads_q=case.heads_kv) if case.heads_q != case.heads_kv
                   else _resized(case, heads_q=1, heads_kv=1))
    for name in ("seqlen_q", "seqlen_k"):
        n = getattr(case, name)
        for smaller in sorted({1, 2, n // 2, n - 1} - {n}):
            if 1 <= smaller < n:
                out.append(_resized(case, **{name: smaller}))
    for d in (8, 16, case.head_dim // 2):
        if 1 <= d < case.head_dim:
            out.append(_resized(case, head_dim=d))
    return [c for c in out if c is not None]


def shrink(case: Case, fails: Callable[[Case], bool], *, max_checks: int = 200,
           deadline: float | None = None) -> tuple[Case, int]:
    """The smallest case reachable from ``case`` by ``smaller_cases`` steps for which ``fails``
    still holds (greedy: the first simplification that keeps failing is taken, then again),
    and how many cases were checked. Stops after ``max_checks`` checks or at ``deadline``
    (``time.monotonic()``)."""
    checks = 0
    improved = True
    while improved and checks < max_checks:
        improved = False
        for candidate in smaller_cases(case):
            if checks >= max_checks or (deadline is not None and time.monotonic() > deadline):
                return case, checks
            checks += 1
            if fails(candidate):
                case, improved = candidate, True
                break
    return case, checks


@dataclass
class FuzzReport:
    """What a fuzz run saw: every result, the failures, and the shrunk first failure."""

    implementation: str
    seed: int
    seconds: float = 0.0
    results: list = field(default_factory=list)
    shrunk: CaseResult | None = None
    shrink_checks: int = 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.status in ("fail", "error")]

    @property
    def passed(self) -> bool:
        return not self.failures


def fuzz(impl: Implementation, seconds: float, *, seed: int = 0, device: str = "cpu", interpreted: bool = False,
         shrink_seconds: float | None = None, max_cases: int | None = None,
         progress: Callable[[CaseResult], None] | None = None) -> FuzzReport:
    """Draw and judge cases for ``seconds`` (or ``max_cases``), case i with inputs' seed
    ``seed + i``; then shrink the first failure (for at most ``shrink_seconds``, default a
    quarter of ``seconds``, at least 60 s). ``progress`` is called with every result."""
    rng = random.Random(seed)
    report = FuzzReport(impl.name, seed)
    start = time.monotonic()
    index = 0
    while time.monotonic() - start < seconds and (max_cases is None or index < max_cases):
        case = draw_case(rng, impl, seed + index, interpreted=interpreted)
        index += 1
        if unsupported_reason(impl, case, device) is not None:
            continue  # outside what it declares on this device (its own ``available``): not drawn
        result = check_case_with(impl, case, device)
        report.results.append(result)
        if progress is not None:
            progress(result)
    if report.failures:
        first = report.failures[0]
        budget = shrink_seconds if shrink_seconds is not None else max(60.0, seconds / 4)
        verdicts: dict[Case, CaseResult] = {first.case: first}

        def fails(candidate: Case) -> bool:
            if unsupported_reason(impl, candidate, device) is not None:
                return False
            verdicts[candidate] = check_case_with(impl, candidate, device)
            return verdicts[candidate].status in ("fail", "error")

        smallest, report.shrink_checks = shrink(first.case, fails, deadline=time.monotonic() + budget)
        report.shrunk = verdicts[smallest]
    report.seconds = time.monotonic() - start
    return report


__all__ = ["FuzzReport", "draw_case", "fuzz", "shrink", "smaller_cases"]
