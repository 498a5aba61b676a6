r"""The ring family: ring attention (``flashref.distributed``) against the float64 oracle, on N
local processes.

``run_ring_check(cases, world_size)`` spawns ``world_size`` processes
(``torch.multiprocessing``, start method "spawn"; gloo and Triton's interpreter on the CPU,
nccl and one GPU per process on CUDA), each joins a process group over TCP on a free local
port, and for every case draws the full sequence (``flashref.gate.make_inputs``, the
same seeded inputs on every rank), takes its shard (``shard_sequence``), runs
``ring_attention`` forward and backward with the kernels' outputs NaN-poisoned, and
all-gathers out, dq, dk, dv (``gather_sequence``; dsinks, each rank's share, all-reduced). The parent judges the gathered tensors
exactly as ``flashref verify`` judges the single-device kernels: against the float64 oracle
on the whole sequence, with the same-dtype plain attention on the whole sequence as the
baseline (``flashref.gate``'s rule).

A run can also exercise bad input across ranks (``BAD_INPUT_SCENARIOS``): every rank must
raise, none may hang. Process-group timeouts and a deadline on the whole run turn a hang into
an error.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cases import Case
from .dense import algorithm_attention, baseline_attention, judge_all, make_inputs, oracle_attention
from .results import CaseResult
from .rule import DTYPES

#: Seconds a process-group operation may wait before it fails (gloo and nccl).
GROUP_TIMEOUT_S = 300
#: Seconds the whole spawned run may take before its processes are killed.
RUN_DEADLINE_S = 1800

#: Bad input every rank must reject with an error (never a hang): name -> what the test expects in the message.
BAD_INPUT_SCENARIOS = {
    "dtype_differs": "dtype must be the same on every rank",
    "length_differs": "q shape must be the same on every rank",
    "zigzag_odd_length": "cannot be split by the 'zigzag' layout",
    "one_rank_bad_head_dim": "rejected its inputs",
    "kv_lens_differs": "kv_lens must be the same on every rank",
    "kv_lens_too_long": "kv_lens must lie in [0, ",
}


#: The tensors ring attention returns and the rule judges (dsinks with sinks: summed over the ranks).
RING_TENSORS = ("out", "dq", "dk", "dv", "dsinks")
# Case fields of the variants ring_attention does not take (docs/distributed.md).
_UNSUPPORTED_FIELDS = ("dropout_p",)


@dataclass(frozen=True)
class RingCase:
    """One check: the full-sequence ``case`` (self-attention: seqlen_q == seqlen_k, top-left
    alignment, any variant but dropout) sharded over ``world_size`` ranks in ``layout``."""

    world_size: int
    layout: str
    case: Case

    _NAME = re.compile(r"ring(\d+)-(zigzag|contiguous)-(.+)")

    def __post_init__(self):
        c = self.case
        from flashref.distributed.layout import LAYOUTS, chunks_per_sequence

        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        variants = [f.name for f in dataclasses.fields(c)
                    if f.name in _UNSUPPORTED_FIELDS and getattr(c, f.name) != f.default]
        if c.seqlen_q != c.seqlen_k or c.causal_alignment != "top_left" or variants:
            raise ValueError(f"a ring case is self-attention (lq == lk, top_left, no "
                             f"{'/'.join(_UNSUPPORTED_FIELDS)}), got {c.name}")
        n = chunks_per_sequence(self.layout, self.world_size)
        if c.seqlen_q % n:
            raise ValueError(f"sequence length {c.seqlen_q} cannot be split by the {self.layout!r} layout over "
                             f"{self.world_size} ranks (needs a multiple of {n})")

    @property
    def seed(self) -> int:
        return self.case.seed

    @property
    def name(self) -> str:
        """e.g. ``ring2-zigzag-b1-hq2-hkv1-lq36-lk36-d16-float16-causal_top_left-dense``."""
        return f"ring{self.world_size}-{self.layout}-{self.case.name}"

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "RingCase":
        m = cls._NAME.fullmatch(name.strip())
        if m is None:
            raise ValueError(f"ring case name must look like 'ring2-zigzag-b1-hq2-hkv1-lq36-lk36-d16-float16-"
                             f"causal_top_left-dense', got {name!r}")
        return cls(int(m.group(1)), m.group(2), Case.from_name(m.group(3), seed=seed))

    def replay_command(self) -> str:
        return f'flashref verify --distributed {self.world_size} --case "{self.name}" --seed {self.seed}'

    @property
    def config(self) -> dict:
        """The case's fields as plain data (for reports)."""
        return {"world_size": self.world_size, "layout": self.layout, **self.case.config}


# (layout, causal, chunk length, (batch, heads_q, heads_kv), head_dim, variants): both layouts
# with and without causal masking, MHA and GQA, odd chunk lengths (contiguous: odd per-rank
# lengths), and each variant ring attention takes in both layouts: key padding (a second
# batch row's length is drawn from [0, L]: sometimes a row with no key), softcap, windows
# narrower than a chunk (whole chunk pairs skipped), ALiBi per head and per batch row, sinks.
_SPECS = (
    ("zigzag", True, 9, (2, 2, 1), 16, dict(kv_lens=True)),
    ("contiguous", True, 17, (2, 2, 2), 32, dict(kv_lens=True, softcap=5.0)),
    ("zigzag", False, 5, (2, 2, 2), 16, dict(softcap=3.0)),
    ("contiguous", False, 13, (1, 4, 2), 24, dict()),
    ("zigzag", True, 7, (2, 2, 1), 16, dict(kv_lens=True, window=(6, -1), alibi="bh", sinks=True)),
    ("contiguous", False, 11, (1, 2, 2), 32, dict(softcap=4.0, window=(5, 9), alibi="h", sinks=True)),
)


def ring_sweep(world_size: int, *, dtypes=None, causal=None, seed: int = 0) -> list[RingCase]:
    """A covering design over layout x causal x GQA x odd lengths, dtypes cycling
    (restricted to ``dtypes`` / ``causal`` when given). Case i has seed ``seed + i``."""
    from flashref.distributed.layout import chunks_per_sequence

    dtypes = tuple(dtypes) if dtypes is not None else DTYPES
    cases = []
    for index, (layout, is_causal, chunk, (b, hq, hkv), d, variants) in enumerate(_SPECS):
        if causal is not None and is_causal != causal:
            continue
        seqlen = chunk * chunks_per_sequence(layout, world_size)
        dtype = dtypes[index % len(dtypes)]
        variants = dict(variants)
        kv_lens = variants.pop("kv_lens", False)
        cases.append(RingCase(world_size, layout, Case(b, hq, hkv, seqlen, seqlen, d, dtype, is_causal,
                                                          "top_left", kv_lens, seed + len(cases), **variants)))
    return cases


# --------------------------------------------------------------------------- the spawned side


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_inputs(scenario: str, rank: int, device):
    """(q, k, v, layout, kv_lens) for one bad-input scenario, as rank ``rank`` would pass them."""
    import torch

    dtype = torch.float32 if scenario == "dtype_differs" and rank == 1 else torch.float16
    seqlen = 5 if scenario == "zigzag_odd_length" else (6 if scenario == "length_differs" and rank == 1 else 4)
    q = torch.randn(1, 2, seqlen, 16, dtype=dtype, device=device)
    k, v = torch.randn_like(q), torch.randn_like(q)
    if scenario == "one_rank_bad_head_dim" and rank == 0:
        v = torch.randn(1, 2, seqlen, 8, dtype=dtype, device=device)
    kv_lens = None
    if scenario == "kv_lens_differs":
        kv_lens = torch.tensor([3 + rank], device=device)
    elif scenario == "kv_lens_too_long":  # the whole sequence has 4 x world positions
        kv_lens = torch.tensor([4 * torch.distributed.get_world_size() + 1], device=device)
    return q, k, v, "zigzag", kv_lens


def _worker(rank: int, world_size: int, port: int, device_kind: str, cases, scenarios, outdir: str) -> None:
    """One rank: join the group, run every case and scenario, write rank{rank}.pt to ``outdir``."""
    import torch

    if device_kind == "cpu":
        # Read by triton when the kernels are decorated: before flashref.kernels is imported.
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    import torch.distributed as dist

    from flashref.distributed import gather_sequence, ring_attention, shard_sequence
    from flashref.kernels import poisoned_outputs

    dist.init_process_group("gloo" if device_kind == "cpu" else "nccl", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
    results = {"cases": [], "scenarios": {}}
    try:
        for rc in cases:
            inputs = make_inputs(rc.case, device)
            q, k, v, dout = (shard_sequence(t, world_size, rank, layout=rc.layout)
                             for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            sinks = None if inputs.sinks is None else inputs.sinks.detach().clone().requires_grad_()
            try:
                start = time.perf_counter()
                with poisoned_outputs():
                    out = ring_attention(q, k, v, causal=rc.case.causal, layout=rc.layout, kv_lens=inputs.kv_lens,
                                         window_size=rc.case.window, softcap=rc.case.softcap,
                                         alibi_slopes=inputs.alibi_slopes, sinks=sinks)
                    grads = torch.autograd.grad(out, (q, k, v) if sinks is None else (q, k, v, sinks), dout)
                if sinks is not None:  # each rank holds its rows' share (ring.py): the group's sum is dsinks
                    dist.all_reduce(grads[3])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            except (TypeError, ValueError, RuntimeError) as err:  # raised on every rank: recorded, next case
                results["cases"].append({"name": rc.name, "error": f"{type(err).__name__}: {err}"})
                continue
            full = [gather_sequence(t.detach(), layout=rc.layout).cpu() for t in (out, *grads[:3])]
            full += [g.cpu() for g in grads[3:]]
            results["cases"].append({"name": rc.name, "tensors": full if rank == 0 else None, "seconds": seconds})
        for scenario in scenarios:
            q, k, v, layout, kv_lens = _bad_inputs(scenario, rank, device)
            try:
                ring_attention(q, k, v, causal=True, layout=layout, kv_lens=kv_lens)
                results["scenarios"][scenario] = None
            except (TypeError, ValueError) as err:
                results["scenarios"][scenario] = f"{type(err).__name__}: {err}"
        # Every rank reaches this point with no message left in flight: the group still works.
        check = torch.full((1,), float(rank + 1), device=device)
        dist.all_reduce(check, group=None)
        results["group_alive"] = float(check.item()) == world_size * (world_size + 1) / 2
    finally:
        torch.save(results, Path(outdir) / f"rank{rank}.pt")
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the parent side


@dataclass
class RingRun:
    """What one spawned run produced: per-case ``flashref.gate.CaseResult``s (a case
    whose ring raised carries the exception and does not pass), per-rank scenario errors,
    whether each rank's group was still usable at the end, the wall time of the run and each
    rank's ring seconds per case."""

    results: list
    scenarios: list[dict]
    group_alive: list[bool]
    seconds: float
    rank_seconds: list[dict]


def _spawn(world_size: int, device_kind: str, cases, scenarios, deadline_s: float) -> tuple[list[dict], float]:
    import torch
    import torch.multiprocessing as mp

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flashref-ring-") as outdir:
        context = mp.start_processes(_worker, args=(world_size, _free_port(), device_kind, list(cases),
                                                    list(scenarios), outdir),
                                     nprocs=world_size, join=False, start_method="spawn")
        while not context.join(timeout=5):
            if time.perf_counter() - start > deadline_s:
                for p in context.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"ring check on {world_size} processes did not finish in {deadline_s:.0f} s")
        per_rank = [torch.load(Path(outdir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    return per_rank, time.perf_counter() - start


def judge_ring_case(rc: RingCase, tensors, seconds: float) -> CaseResult:
    """The project's rule (``flashref.gate.judge_all``) on the gathered
    ``tensors = (out, dq, dk, dv)`` of ``rc``: oracle and baseline on the whole sequence,
    drawn from the same seeded inputs the ranks sharded."""
    inputs = make_inputs(rc.case, "cpu")
    ref = oracle_attention(rc.case, inputs)
    base = baseline_attention(rc.case, inputs)
    algo = algorithm_attention(rc.case, inputs)  # the second baseline; no RMS criterion for the ring
    errors = judge_all(rc.case, inputs, ref, base, dict(zip(RING_TENSORS, tensors)), algo, fused=False)
    return CaseResult(rc, errors, seconds)


def check_ring(case: RingCase, device: str = "cpu") -> CaseResult:
    """One ring case on its own ``world_size`` processes (the family registry's check)."""
    return run_ring_check([case], case.world_size, device=device).results[0]


def run_ring_check(cases, world_size: int, *, device: str = "cpu", scenarios=(),
                   deadline_s: float = RUN_DEADLINE_S) -> RingRun:
    """Spawn ``world_size`` processes on ``device`` ("cpu": gloo + interpreter; "cuda": nccl,
    one GPU each), run ``cases`` (RingCases of that world size) and ``scenarios`` (names in
    BAD_INPUT_SCENARIOS) and judge the cases. A case whose ring raised (on every rank, as bad
    input does) is a result with its ``exception`` text; it does not pass."""
    import torch

    cases = list(cases)
    for rc in cases:
        if rc.world_size != world_size:
            raise ValueError(f"case {rc.name} is for {rc.world_size} ranks, this run has {world_size}")
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(f"world_size {world_size} needs {world_size} GPUs, torch sees {torch.cuda.device_count()}")
    per_rank, seconds = _spawn(world_size, device, cases, scenarios, deadline_s)
    results = []
    for i, rc in enumerate(cases):
        entry = per_rank[0]["cases"][i]
        if "error" in entry:
            results.append(CaseResult(rc, {}, 0.0, entry["error"]))
        else:
            results.append(judge_ring_case(rc, entry["tensors"], max(p["cases"][i]["seconds"] for p in per_rank)))
    return RingRun(results, [p["scenarios"] for p in per_rank],
                   [p.get("group_alive", False) for p in per_rank], seconds,
                   [{c["name"]: c.get("seconds") for c in p["cases"]} for p in per_rank])


__all__ = ["BAD_INPUT_SCENARIOS", "RING_TENSORS", "RingCase", "RingRun", "check_ring", "judge_ring_case",
           "ring_sweep", "run_ring_check"]
