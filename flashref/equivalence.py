"""The kernels-vs-oracle gate: FlashAttention's error-ratio rule with a derived slack.

For one ``Case`` (shapes, dtype, masking, seed) ``check_case`` draws fresh seeded inputs, runs

- ``ref``: the float64 NumPy oracle (``flashref.reference.attention_forward``/``_backward``),
- ``base``: plain unfused attention computed by torch in the kernel's own dtype, its mask
  taken from the oracle's ``attention_mask`` and its float32 matmuls without TF32, and
- ``kernel``: ``flashref.kernels.flash_attention`` with every output buffer NaN-poisoned,

all on the same inputs (drawn once, rounded to the dtype, then widened for the oracle), and
judges each tensor (out, dq, dk, dv) by the rule of docs/design.md:

    max|kernel - ref| <= factor * max|base - ref| + slack,   factor 2 for out, 3 for gradients,

where ``slack`` is the error float32 arithmetic cannot avoid on this very problem: the unit
roundoff ``u32 = 2^-24`` times the sum of the magnitudes of the terms the kernel adds up
(computed by the oracle on absolute values, ``magnitudes``), plus the rounding of the
result to the output dtype. The factor says "no worse than doing the obvious thing in this
precision"; the slack only matters where the baseline is exact by cancellation (a row that
sees a single key), and a test keeps it below the factor term everywhere else.

The baseline is itself checked: its error must stay under ``BASELINE_CEILING`` units of its
dtype's roundoff times the same magnitudes, so a baseline that goes wrong fails the case
instead of widening its bound.

``sweep(preset)`` lists the cases of a preset: "quick" (about a minute on a 2-core CPU under
the interpreter), "ci" (the CPU test sweep, FlashAttention's own test shapes in a covering
design: every value of every axis appears in several combinations), "full" (much larger).
``Case.name`` / ``Case.from_name`` and ``Case.replay_command()`` make a failure replayable.

Adding an attention keyword (a variant) to the gate is local: a field of ``Case``, its
optional name suffix in ``Case.SUFFIXES``, its entry in ``attention_kwargs`` (the one place
the oracle's, the baseline's and the kernel's keyword arguments come from) and, for a new
gradient, a name in ``TENSORS`` with its factor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

DTYPES = ("float16", "bfloat16", "float32")
# The tensors the rule judges, in report order; a variant with a gradient of its own (dsinks)
# appends its name here and to FACTORS, and is judged whenever the oracle returns it.
TENSORS = ("out", "lse", "dq", "dk", "dv", "dsinks")
FACTORS = {"out": 2.0, "lse": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0, "dsinks": 3.0}
# The RMS criterion's factors (``RmsError``, ``rms_check``), by what the error is made of.
# The dtype's roundings (16-bit): a correct kernel's RMS error is 0.84-1.02 times the
# algorithm baseline's over the CI sweep on fresh seeds (docs/design.md); a bfloat16 cast that
# truncates gives 2.3-2.8, P rounded to a coarser dtype 3.8-6.8. Float32 arithmetic alone
# (float32 inputs, or 16-bit tensors where dS cancels: a row that sees one key): 0.7-1.6 on
# ordinary cases, up to 2.4 where a row sees one key (other summation orders, P from the lse).
RMS_FACTOR_16BIT = 1.5
RMS_FACTOR_FLOAT32 = 3.0
# The boundary between the regimes, in float32 units of the tensor's magnitudes: 16-bit errors
# sit hundreds of units above it, float32 noise a few units below.
FLOAT32_REGIME = 64.0
CAUSAL_MODES = ((False, "top_left"), (True, "top_left"), (True, "bottom_right"))
# The launches a case's ``tiles`` force, in order (a split dK / dV pass takes the dK/dV tile).
TILE_LAUNCHES = ("forward", "backward_dkdv", "backward_dq")

# Unit roundoff (half an ulp at 1) of float32, the kernels' accumulator, and of each dtype.
U32 = 2.0**-24
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": U32}
# A baseline error above BASELINE_CEILING * u_dtype * max(magnitude) (+ the output rounding)
# is not "plain attention in this dtype" any more but a broken baseline (over the CI sweep
# the baseline uses at most 0.55 of it; docs/design.md).
BASELINE_CEILING = {"float16": 8.0, "bfloat16": 8.0, "float32": 64.0}
# Standard deviations of independent rounding errors the slack allows (``magnitudes``):
# a chance below 2 exp(-LAMBDA^2 / 2) = 0.02 per element even if every rounding error took
# its bound (they are far below it: docs/design.md).
LAMBDA = 3.0
# The error of one dS element in units of u32 * (sum of |terms| of dP and of D): a float32 sum
# of n terms errs between 1 and n of those units; measured at Lk = 1 (where dS = 0 exactly and
# only this error remains) up to 1.04 at head dim 256 over 30 seeds (docs/design.md), so 2.5.
DS_ROUNDING = 2.5
# The kernels' tanh (exp2, 1 - e, 1 + e, one division): its error on t, in units of u32 |t|.
TANH_ROUNDING = 4.0
# The kernels' lse = ln2 (m + log2 l): four roundings (S log2e, log2 l, the sum, the ln 2
# product), in units of u32 (|lse| + 1), the RMS slack of lse (a row that sees one key has an
# exact algorithm-baseline lse and the kernel's 13x that on one CI seed).
LSE_ROUNDING = 4.0

# FlashAttention's test shapes: lengths that miss every block size, Lq != Lk both ways.
CI_SEQLENS = ((1, 239), (3, 799), (113, 203), (127, 512), (128, 217), (239, 1), (256, 512), (512, 256),
              (17, 17), (97, 97), (200, 200))
CI_HEAD_DIMS = (32, 40, 64, 96, 128, 256)
# (batch, heads_q, heads_kv): MHA, GQA (2 query heads per kv head), MQA.
HEAD_LAYOUTS = ((2, 2, 2), (1, 4, 2), (2, 3, 1))


# ---------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Suffix:
    """An optional part of a case name, for a ``Case`` field that has a default.

    ``pattern`` matches the part without its leading "-" (it may contain "-"), ``format``
    writes the field's value, ``parse`` reads it back from the match. The part is left out of
    the name when the field has its default value."""

    field: str
    pattern: str
    format: Callable[[Any], str]
    parse: Callable[[re.Match], Any]


@dataclass(frozen=True)
class Case:
    """One equivalence check: q (batch, heads_q, seqlen_q, head_dim), k and v
    (batch, heads_kv, seqlen_k, head_dim), in ``dtype`` ("float16", "bfloat16", "float32")."""

    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str
    causal: bool
    causal_alignment: str
    kv_lens: bool
    seed: int = 0
    # The attention variants (issue 10), each off by default: (left, right) with -1 unbounded;
    # softcap 0 = off; ALiBi slopes "" (none), "h" ((Hq,)) or "bh" ((B, Hq)); sinks (Hq,)
    # (judged: dsinks); dropout probability (the kernel's Philox mask, replayed by the oracle).
    window: tuple = (-1, -1)
    softcap: float = 0.0
    alibi: str = ""
    sinks: bool = False
    dropout_p: float = 0.0
    # The gate's reach (issue 20): explicit kv_lens (one per batch row) instead of drawn ones,
    # so a sweep can put kv_len and kv_len - Lq on chosen residues; the launch tiles
    # ((BLOCK_M, BLOCK_N) of the forward, the dK/dV and the dQ kernel) forced under the
    # interpreter (``config_dispatch.forced_configs``; on a GPU the dispatcher's own); and the Hopper
    # path (tensor descriptors, kernels/tile_loads.py) forced on where the inputs allow it.
    kv_len_values: tuple = ()
    tiles: tuple = ()
    descriptors: bool = False

    _NAME = re.compile(r"b(\d+)-hq(\d+)-hkv(\d+)-lq(\d+)-lk(\d+)-d(\d+)-(float16|bfloat16|float32)"
                       r"-(noncausal_bottom_right|noncausal|causal_top_left|causal_bottom_right)-(kvlens|dense)")
    # Variants append their Suffix here (in name order).
    SUFFIXES: ClassVar[tuple] = ()

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.causal_alignment not in ("top_left", "bottom_right"):
            raise ValueError(f"causal_alignment must be 'top_left' or 'bottom_right', got {self.causal_alignment!r}")
        if self.alibi not in ("", "h", "bh"):
            raise ValueError(f"alibi must be '', 'h' or 'bh', got {self.alibi!r}")
        object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        object.__setattr__(self, "kv_len_values", tuple(int(n) for n in self.kv_len_values))
        object.__setattr__(self, "tiles", tuple(tuple(int(b) for b in tile) for tile in self.tiles))
        if self.kv_len_values and (not self.kv_lens or len(self.kv_len_values) != self.batch
                                   or not all(0 <= n <= self.seqlen_k for n in self.kv_len_values)):
            raise ValueError(f"kv_len_values needs kv_lens=True and one value in [0, seqlen_k] per batch row, "
                             f"got {self.kv_len_values!r}")
        if self.tiles and (len(self.tiles) != len(TILE_LAUNCHES) or any(len(t) != 2 for t in self.tiles)):
            raise ValueError(f"tiles must be {len(TILE_LAUNCHES)} (BLOCK_M, BLOCK_N) pairs, one per launch "
                             f"{TILE_LAUNCHES}, got {self.tiles!r}")

    @property
    def name(self) -> str:
        """Everything but the seed, e.g. ``b1-hq4-hkv2-lq113-lk203-d64-bfloat16-causal_bottom_right-kvlens``,
        then one ``-<suffix>`` per variant field that is not at its default."""
        # Without causal the alignment still places windows and ALiBi: named unless top-left.
        mask = (f"causal_{self.causal_alignment}" if self.causal
                else "noncausal" if self.causal_alignment == "top_left" else f"noncausal_{self.causal_alignment}")
        base = (f"b{self.batch}-hq{self.heads_q}-hkv{self.heads_kv}-lq{self.seqlen_q}-lk{self.seqlen_k}"
                f"-d{self.head_dim}-{self.dtype}-{mask}-{'kvlens' if self.kv_lens else 'dense'}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for suffix in self.SUFFIXES:
            value = getattr(self, suffix.field)
            if value != defaults[suffix.field]:
                base += "-" + suffix.format(value)
        return base

    @classmethod
    def from_name(cls, name: str, seed: int = 0) -> "Case":
        """The inverse of ``name`` (a packed family's name gives its case: flashref/packed_equivalence.py)."""
        from flashref.packed_equivalence import from_name as packed_from_name

        packed = packed_from_name(name, seed)
        if packed is not None:
            return packed
        text = name.strip()
        m = cls._NAME.match(text)
        if m is None:
            raise ValueError(f"case name must look like 'b1-hq4-hkv2-lq113-lk203-d64-bfloat16-"
                             f"causal_bottom_right-kvlens', got {name!r}")
        b, hq, hkv, lq, lk, d = (int(g) for g in m.groups()[:6])
        mask = m.group(8)
        fields: dict[str, Any] = dict(
            batch=b, heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk, head_dim=d, dtype=m.group(7),
            causal=mask.startswith("causal"), causal_alignment="bottom_right" if mask.endswith("bottom_right") else "top_left",
            kv_lens=m.group(9) == "kvlens", seed=seed)
        rest = text[m.end():]
        for suffix in cls.SUFFIXES:
            sm = re.match(r"-(?:" + suffix.pattern + r")(?=-|$)", rest)
            if sm is not None:
                fields[suffix.field] = suffix.parse(sm)
                rest = rest[sm.end():]
        if rest:
            raise ValueError(f"case name {name!r}: cannot read the part {rest!r} "
                             f"(known suffixes: {[s.field for s in cls.SUFFIXES]})")
        return cls(**fields)

    def replay_command(self) -> str:
        return f'flashref verify --case "{self.name}" --seed {self.seed}'

    @property
    def config(self) -> dict[str, Any]:
        """The case's fields as plain data (for reports)."""
        return dataclasses.asdict(self)


def _window_text(w: int) -> str:
    return "inf" if w < 0 else str(w)


Case.SUFFIXES = (
    Suffix("window", r"win(\d+|inf)_(\d+|inf)", lambda w: f"win{_window_text(w[0])}_{_window_text(w[1])}",
           lambda m: tuple(-1 if g == "inf" else int(g) for g in m.groups())),
    Suffix("softcap", r"softcap([0-9.]+)", lambda c: f"softcap{c:g}", lambda m: float(m.group(1))),
    Suffix("alibi", r"alibi_(h|bh)", lambda a: f"alibi_{a}", lambda m: m.group(1)),
    Suffix("sinks", r"sinks", lambda _: "sinks", lambda m: True),
    Suffix("dropout_p", r"dropout([0-9.]+)", lambda p: f"dropout{p:g}", lambda m: float(m.group(1))),
    Suffix("kv_len_values", r"kvl(\d+(?:_\d+)*)", lambda v: "kvl" + "_".join(map(str, v)),
           lambda m: tuple(int(n) for n in m.group(1).split("_"))),
    Suffix("tiles", r"tiles(\d+x\d+(?:_\d+x\d+)*)", lambda t: "tiles" + "_".join(f"{a}x{b}" for a, b in t),
           lambda m: tuple(tuple(int(n) for n in tile.split("x")) for tile in m.group(1).split("_"))),
    Suffix("descriptors", r"tma", lambda _: "tma", lambda m: True),
)


# ---------------------------------------------------------------------------- results
def error_ratio(error: float, bound: float) -> float:
    """error / bound; NaN for a NaN error, inf for a positive error over a 0 bound."""
    if bound == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / bound


@dataclass(frozen=True)
class RmsError:
    """The second criterion (docs/design.md, "The algorithm's own rounding"): the root mean
    square of ``|kernel - ref|`` against that of the *algorithm baseline*
    (``algorithm_attention``: the FlashAttention algorithm computed by torch in float32 with
    P and dS rounded to the dtype where a fused kernel rounds them):

        rms|kernel - ref| <= factor * rms|algorithm - ref| + slack.

    The max-norm rule bounds the worst element against plain attention in the dtype, whose
    errors in 16-bit are several times a fused kernel's; this one sees a kernel that is
    uniformly less precise than its own algorithm (a truncating cast, a coarser rounding of P,
    a truncated constant), which moves every element a little and no element much."""

    kernel: float
    reference: float
    slack: float
    factor: float

    @property
    def bound(self) -> float:
        return self.factor * self.reference + self.slack

    @property
    def ratio(self) -> float:
        return error_ratio(self.kernel, self.bound)

    @property
    def passed(self) -> bool:
        return bool(self.kernel <= self.bound)


@dataclass(frozen=True)
class TensorError:
    """The rule applied to one tensor (out, dq, dk, dv, lse, ...):

    ``kernel``/``baseline`` are max |x - ref| against the float64 oracle,
    ``bound = factor * baseline + slack`` and ``max_ratio = kernel / bound``. ``ceiling`` is
    the most the baseline may err (``inf``: unchecked); a baseline above it fails the tensor
    whatever the kernel did. ``rms``: the root-mean-square criterion (``RmsError``), when
    judged. ``ratio`` is the worse of the two criteria's ratios (the only ratio the reports
    print): the tensor passes iff ``ratio <= 1`` and the baseline is within its ceiling.
    """

    kernel: float
    baseline: float
    slack: float
    factor: float
    ceiling: float = math.inf
    rms: RmsError | None = None

    @property
    def bound(self) -> float:
        return self.factor * self.baseline + self.slack

    @property
    def max_ratio(self) -> float:
        return error_ratio(self.kernel, self.bound)

    @property
    def ratio(self) -> float:
        """The worse of the max-norm ratio and the RMS ratio (NaN if either is NaN)."""
        ratios = [self.max_ratio] + ([self.rms.ratio] if self.rms is not None else [])
        return math.nan if any(math.isnan(r) for r in ratios) else max(ratios)

    @property
    def baseline_ok(self) -> bool:
        return bool(self.baseline <= self.ceiling)

    @property
    def passed(self) -> bool:
        # NaN compares False, so a NaN error (an unwritten, poisoned element) fails as it must.
        return (bool(self.kernel <= self.bound) and self.baseline_ok
                and (self.rms is None or self.rms.passed))

    def describe(self, tensor: str) -> str:
        """Why this tensor failed, in one clause ('' when it passed)."""
        if not self.baseline_ok:
            return (f"{tensor}: baseline err {self.baseline:.3g} > its ceiling {self.ceiling:.3g} "
                    f"(the torch baseline is out of line with the oracle; the bound is not widened)")
        if not bool(self.kernel <= self.bound):
            return (f"{tensor}: kernel err {self.kernel:.3g} > bound {self.bound:.3g} "
                    f"(baseline {self.baseline:.3g}, slack {self.slack:.3g})")
        if self.rms is not None and not self.rms.passed:
            return (f"{tensor}: kernel rms err {self.rms.kernel:.3g} > rms bound {self.rms.bound:.3g} "
                    f"(algorithm baseline rms {self.rms.reference:.3g}: uniformly less precise than its algorithm)")
        return ""


@dataclass(frozen=True)
class CaseResult:
    """What one case produced: its ``errors`` per tensor, or the ``exception`` its check raised
    (a case that raised never passes)."""

    case: Case
    errors: Mapping[str, TensorError] = field(default_factory=dict)
    seconds: float = 0.0
    exception: str | None = None
    path: str = ""  # the kernels' tile loads: "tma" (tensor descriptors) or "pointer"; "" unknown
    # flashref.gate: the implementation judged, and why it could not run the case (if so).
    implementation: str = "flashref"
    unsupported: str | None = None

    @classmethod
    def from_exception(cls, case: Case, exc: BaseException, seconds: float) -> "CaseResult":
        return cls(case, {}, float(seconds), f"{type(exc).__name__}: {exc}".strip())

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def replay(self) -> str:
        command = self.case.replay_command()
        if self.implementation != "flashref":
            command = command.replace("flashref verify ", f"flashref verify --impl {self.implementation} ", 1)
        return command

    @property
    def passed(self) -> bool:
        return self.exception is None and bool(self.errors) and all(e.passed for e in self.errors.values())

    @property
    def status(self) -> str:
        """"pass", "fail", "error" (the check raised) or "unsupported"."""
        if self.unsupported is not None:
            return "unsupported"
        if self.exception is not None:
            return "error"
        return "pass" if self.passed else "fail"

    def failure_summary(self) -> str:
        """One line saying why the case failed ('' when it passed)."""
        if self.exception is not None:
            return f"raised {self.exception.splitlines()[0]}"
        if not self.errors:
            return "no tensor was checked"
        return "; ".join(e.describe(t) for t, e in self.errors.items() if not e.passed)

    def summary(self) -> str:
        parts = [f"{t} {e.kernel:.2e}/{e.bound:.2e}" for t, e in self.errors.items()]
        verdict = "PASS" if self.passed else "FAIL"
        line = f"{verdict} {self.case.name} seed={self.case.seed} " + " ".join(parts)
        if not self.passed:
            line += f"  [{self.failure_summary()}]  replay: {self.replay}"
        return line


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class CaseInputs:
    """One case's inputs in the case's dtype (on ``device``) and its kv_lens (or None)."""

    q: Any
    k: Any
    v: Any
    dout: Any
    kv_lens: Any
    alibi_slopes: Any = None  # float32 (Hq,) or (B, Hq)
    sinks: Any = None  # float32 (Hq,)
    dropout_seed: int | None = None


def make_inputs(case: Case, device: str = "cpu") -> CaseInputs:
    """Seeded standard-normal q, k, v, dout (never zeros), drawn in float32 on the CPU so a seed
    gives the same numbers on every device, then rounded to the case's dtype. kv_lens, when on,
    are uniform in [0, seqlen_k] per batch (0 makes whole rows fully masked), the first batch
    at least half of seqlen_k."""
    import torch

    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)

    def draw(*shape):
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    q = draw(case.batch, case.heads_q, case.seqlen_q, case.head_dim)
    k = draw(case.batch, case.heads_kv, case.seqlen_k, case.head_dim)
    v = draw(case.batch, case.heads_kv, case.seqlen_k, case.head_dim)
    dout = draw(case.batch, case.heads_q, case.seqlen_q, case.head_dim)
    kv_lens = None
    if case.kv_len_values:
        kv_lens = torch.tensor(case.kv_len_values).to(device)
    elif case.kv_lens:
        kv_lens = torch.randint(0, case.seqlen_k + 1, (case.batch,), generator=gen)
        # The first sequence keeps at least half its keys, so a case never collapses into
        # all-padding (every output 0) and passes without testing anything.
        kv_lens[:1] = kv_lens[:1].clamp(min=(case.seqlen_k + 1) // 2)
        kv_lens = kv_lens.to(device)
    # The variants' inputs are drawn after the plain ones, so a plain case's numbers do not move.
    alibi_slopes = sinks = dropout_seed = None
    if case.alibi:
        shape = (case.heads_q,) if case.alibi == "h" else (case.batch, case.heads_q)
        alibi_slopes = (torch.rand(*shape, generator=gen) * 0.5).to(device)  # ALiBi's slopes lie in (0, 1)
    if case.sinks:
        sinks = (torch.randn(case.heads_q, generator=gen) + 1.0).to(device)
    if case.dropout_p > 0:
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return CaseInputs(q, k, v, dout, kv_lens, alibi_slopes, sinks, dropout_seed)


#: The keywords of ``attention_kwargs`` that decide which keys a query sees (what
#: ``flashref.reference.attention_mask`` takes); the others change the scores, not the mask.
MASK_KEYWORDS = ("causal", "causal_alignment", "kv_lens", "window_size")


def attention_kwargs(case: Case, inputs: CaseInputs) -> dict[str, Any]:
    """The attention keywords of this case, as the kernel takes them (torch tensors).

    The one place they are built: the oracle gets the same dict with tensors turned into
    NumPy arrays (``_for_oracle``) and the baseline reads its mask from the oracle with it."""
    kw = dict(causal=case.causal, causal_alignment=case.causal_alignment, kv_lens=inputs.kv_lens)
    # Variant keywords appear only when the variant is on (a plain case's call is unchanged).
    if case.window != (-1, -1):
        kw["window_size"] = case.window
    if case.softcap:
        kw["softcap"] = case.softcap
    if inputs.alibi_slopes is not None:
        kw["alibi_slopes"] = inputs.alibi_slopes
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks
    if case.dropout_p > 0:
        kw.update(dropout_p=case.dropout_p, dropout_seed=inputs.dropout_seed)
    return kw


def _for_oracle(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {k: (v.detach().cpu().double().numpy() if v.is_floating_point() else v.detach().cpu().numpy())
            if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _float64(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


# ---------------------------------------------------------------------------- the three sides
def oracle_attention(case: Case, inputs: CaseInputs) -> dict[str, np.ndarray]:
    """The float64 oracle on the same (rounded) inputs: {"out", "dq", "dk", "dv"} as arrays, and
    the forward's "lse" (not judged: the slack's magnitudes need it)."""
    from flashref.reference import attention_backward, attention_forward

    q, k, v, dout = (_float64(t) for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    kw = _for_oracle(attention_kwargs(case, inputs))
    out, lse = attention_forward(q, k, v, **kw)
    grads = attention_backward(q, k, v, out, lse, dout, **kw)  # dq, dk, dv(, dsinks)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out, lse=lse)


@contextlib.contextmanager
def float32_matmuls_in_ieee():
    """TF32 (and oneDNN's bf16 shortcut) off for float32 matmuls inside, whatever the process
    set; every setting is restored afterwards. Only torch's per-backend ``fp32_precision``
    API is used: mixing it with the legacy ``allow_tf32`` / ``set_float32_matmul_precision``
    makes torch refuse to read the precision back."""
    import torch

    backends = [torch.backends]
    for name in ("cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
                 "mkldnn.rnn"):
        obj = torch.backends
        for part in name.split("."):
            obj = getattr(obj, part, None)
        backends.append(obj)
    saved = [(b, b.fp32_precision) for b in backends if b is not None and hasattr(b, "fp32_precision")]
    if not saved:  # torch before the per-backend API: the legacy switches
        legacy = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                  torch.backends.cudnn.allow_tf32)
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(legacy[0])
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy[1:]
        return
    try:
        for b, _ in saved:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, value in saved:
            b.fp32_precision = value


def baseline_attention(case: Case, inputs: CaseInputs) -> dict:
    """Plain unfused attention in the case's dtype with torch autograd: {"out", "dq", "dk", "dv"}
    (and "dsinks" with sinks).

    S = scale * q k^T materialised (B, Hq, Lq, Lk); the softcap (``c tanh(S / c)``) and the
    ALiBi bias (the oracle's, rounded to the dtype) in the dtype; softmax (over one more
    column, the sink's logit, with sinks); the dropout keep mask (the oracle's Philox replay)
    times ``1 / (1 - p)``; P v. The mask is the oracle's ``attention_mask`` (a mask rule wrong
    in the kernels cannot be repeated here); fully masked rows get zero scores before the
    softmax and zero weights after it, so they output 0 (not NaN). float32 matmuls run without
    TF32 whatever the process's torch settings."""
    import torch

    from flashref.reference import attention_mask
    from flashref.reference.attention_inputs import check_attention_inputs

    kw = _for_oracle(attention_kwargs(case, inputs))
    mask_kw = {key: kw[key] for key in MASK_KEYWORDS if key in kw}
    visible = attention_mask(case.seqlen_q, case.seqlen_k, batch=max(case.batch, 1), **mask_kw)
    mask = torch.from_numpy(np.ascontiguousarray(visible)).to(inputs.q.device)  # (B, 1, Lq, Lk)
    spec = check_attention_inputs(inputs.q.shape, inputs.k.shape, inputs.v.shape, **kw)
    q, k, v = (t.detach().clone().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    wrt = [q, k, v]
    group = case.heads_q // case.heads_kv
    with float32_matmuls_in_ieee():
        k_full, v_full = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        empty_rows = ~mask.any(dim=-1, keepdim=True)
        scores = (q @ k_full.transpose(-1, -2)) * (1.0 / math.sqrt(case.head_dim))
        if case.softcap:
            scores = case.softcap * torch.tanh(scores / case.softcap)
        alibi = spec.alibi()
        if alibi is not None:
            scores = scores + torch.from_numpy(alibi).to(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
        if inputs.sinks is None:
            probs = torch.softmax(scores.masked_fill(empty_rows, 0.0), dim=-1).masked_fill(~mask, 0.0)
        else:  # the sink's column keeps every row's softmax finite
            sinks = inputs.sinks.detach().clone().to(q.dtype).requires_grad_()
            wrt.append(sinks)
            column = sinks[None, :, None, None].expand(*scores.shape[:3], 1)
            probs = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
        dropout = spec.dropout_scale()
        if dropout is not None:
            probs = probs * torch.from_numpy(dropout).to(probs)
        out = probs @ v_full
        grads = torch.autograd.grad(out, wrt, inputs.dout)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out.detach())


def algorithm_attention(case: Case, inputs: CaseInputs, rounding: Callable | None = None) -> dict:
    """The FlashAttention algorithm computed plainly by torch in float32: the *algorithm
    baseline* of the RMS criterion (``RmsError``) and of lse. {"out", "lse", "dq", "dk", "dv"}
    (and "dsinks"), rounded to the case's dtype as the kernels store them (lse, dsinks float32).

    Inputs in the dtype, every product and sum in float32 (IEEE matmuls), and the dtype's
    rounding exactly where a fused kernel rounds: P (unnormalised, ``exp(S - rowmax)``) before
    the P V product, ``P = exp(S - lse)`` before dV = P^T dO, and dS before dQ = scale dS K and
    dK = scale dS^T Q; ``D = rowsum(dO o O)`` reads O as stored. In float32 nothing is rounded
    and this is plain float32 attention with the backward's own ``dS = P (dP - D)`` (which does
    not cancel where a row sees one key, exactly as in the kernels). The mask comes from the
    oracle, the variants as in ``baseline_attention``; torch only, no kernel code.

    ``rounding``: float32 tensor -> its value in the dtype, as float32 (default: torch's
    round-to-nearest-even cast). The gate's own tests pass a truncating or a coarser one to
    stand for a kernel that rounds worse than its algorithm."""
    import torch

    from flashref.reference import attention_mask
    from flashref.reference.attention_inputs import check_attention_inputs

    dtype = getattr(torch, case.dtype)
    kw = _for_oracle(attention_kwargs(case, inputs))
    visible = attention_mask(case.seqlen_q, case.seqlen_k, batch=max(case.batch, 1),
                             **{key: kw[key] for key in MASK_KEYWORDS if key in kw})
    device = inputs.q.device
    mask = torch.from_numpy(np.ascontiguousarray(visible)).to(device)  # (B, 1, Lq, Lk)
    spec = check_attention_inputs(inputs.q.shape, inputs.k.shape, inputs.v.shape, **kw)
    group = case.heads_q // case.heads_kv

    def rounded(x):  # float32 -> the dtype's nearest value, kept in float32
        return x.to(dtype).float() if rounding is None else rounding(x)

    def table(array):  # a float64 oracle table (ALiBi bias, dropout scale) as float32 on the device
        return None if array is None else torch.from_numpy(array).float().to(device)

    q, k, v, dout = (t.float() for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, Hq, Lk, D)
    with float32_matmuls_in_ieee():
        raw = (q @ k.transpose(-1, -2)) * spec.softmax_scale  # (B, Hq, Lq, Lk)
        dcap = None
        if case.softcap:
            t = torch.tanh(raw / case.softcap)
            scores, dcap = case.softcap * t, 1.0 - t * t
        else:
            scores = raw
        alibi = table(spec.alibi())
        if alibi is not None:
            scores = scores + alibi
        scores = scores.masked_fill(~mask, float("-inf"))
        m = scores.amax(dim=-1, keepdim=True)  # (B, Hq, Lq, 1)
        sink = None
        if inputs.sinks is not None:
            sink = inputs.sinks.float().to(device)[None, :, None, None]
            m = torch.maximum(m, sink.expand_as(m))
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # a row that sees nothing: p = 0
        p_tilde = torch.exp(scores - m)
        total = p_tilde.sum(dim=-1, keepdim=True) + (0.0 if sink is None else torch.exp(sink - m))
        keep = table(spec.dropout_scale())  # keep / (1 - p) or None
        kept = p_tilde if keep is None else p_tilde * keep
        seen = total > 0
        out = rounded((rounded(kept) @ v) / torch.where(seen, total, torch.ones_like(total)))
        lse = torch.where(seen, m + torch.log(torch.where(seen, total, torch.ones_like(total))),
                          torch.full_like(total, float("-inf")))
        probs = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse))
        dropped = probs if keep is None else probs * keep
        dv = rounded(dropped).transpose(-1, -2) @ dout
        dprobs = dout @ v.transpose(-1, -2)
        if keep is not None:
            dprobs = dprobs * keep
        delta = (dout * out).sum(dim=-1, keepdim=True)  # D from O as stored
        ds = probs * (dprobs - delta)
        if dcap is not None:
            ds = ds * dcap
        ds = rounded(ds)
        dq = spec.softmax_scale * (ds @ k)
        dk = spec.softmax_scale * (ds.transpose(-1, -2) @ q)

    def per_kv_head(x):  # (B, Hq, Lk, D) -> (B, Hkv, Lk, D), the group's float32 sum
        return x.reshape(x.shape[0], x.shape[1] // group, group, *x.shape[2:]).sum(dim=2)

    result = dict(out=out.to(dtype), lse=lse[..., 0], dq=rounded(dq).to(dtype), dk=rounded(per_kv_head(dk)).to(dtype),
                  dv=rounded(per_kv_head(dv)).to(dtype))
    if sink is not None:
        result["dsinks"] = -(torch.exp(sink - lse) * delta).sum(dim=(0, 2, 3))
    return result


def kernel_attention(case: Case, inputs: CaseInputs) -> dict:
    """flash_attention forward and backward with NaN-poisoned outputs: {"out", "lse", "dq", "dk",
    "dv"} (and "dsinks" with sinks), and "path": "tma" or "pointer", the tile loads that ran.

    ``case.tiles`` forces each launch's (BLOCK_M, BLOCK_N) under the interpreter;
    ``case.descriptors`` asks for the Hopper path (tensor descriptors), which runs where the
    inputs allow it: 16-bit, aligned, and on a GPU one of compute capability 9.x."""
    import torch

    from flashref.kernels import flash_attention, poisoned_outputs
    from flashref.kernels.config_dispatch import forced_configs
    from flashref.kernels.tile_tables import KernelConfig
    from flashref.kernels.launch import INTERPRETED, tensor_descriptors, tma_ok

    q, k, v = (t.detach().clone().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    kw = attention_kwargs(case, inputs)
    wrt = [q, k, v]
    if inputs.sinks is not None:
        kw["sinks"] = inputs.sinks.detach().clone().requires_grad_()
        wrt.append(kw["sinks"])
    tiles = {}
    if case.tiles and INTERPRETED:
        tiles = {name: KernelConfig(m, n, 1, 1) for name, (m, n) in zip(TILE_LAUNCHES, case.tiles)}
    with poisoned_outputs(), forced_configs(tiles), tensor_descriptors("on" if case.descriptors else "auto"):
        path = "tma" if tma_ok(q, k, v, inputs.dout) else "pointer"
        out, lse = flash_attention(q, k, v, return_lse=True, **kw)
        grads = torch.autograd.grad(out, wrt, inputs.dout)
    return dict(zip(("dq", "dk", "dv", "dsinks"), grads), out=out.detach(), lse=lse.detach(), path=path)


# ---------------------------------------------------------------------------- the slack
def magnitudes(case: Case, inputs: CaseInputs, ref: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each tensor, the elementwise sum of the magnitudes of the terms the kernel adds up in
    float32 (float64, the tensor's shape): the kernel's unavoidable float32 error on an element
    is about ``u32`` times it. Computed by the oracle with the same products on absolute values
    (docs/design.md, "The slack"):

    - out = P V: ``P |V|``;  dv = P^T dO: ``P^T |dO|`` (summed over a GQA group), plus the
      error of the backward's recomputed P, ``u32 W`` relative with
      ``W = 1 + 2|S| + 3|lse| + scale |Q| |K|^T`` (the roundings of the exp2 argument
      ``S log2e - lse log2e`` and of the recomputed raw q.k) on rows that see a single key (where
      the baseline's P is exactly 1; elsewhere it errs alike), carried like the dS errors below:
      ``min((P o W)^T |dO|, LAMBDA sqrt(((P o W)^2)^T dO^2))``;
    - dS = P o (dP - D), dP = dO V^T, D = rowsum(dO o O): the kernel forms dP and D as two
      float32 sums of D products each and subtracts them, so dS carries an absolute error of
      about ``u32 E`` with ``E = DS_ROUNDING P o (|dO| |V|^T + rowsum|dO o O|)`` -- even where dS is exactly 0
      (a row that sees one key), which is where the baseline is exact by cancellation;
    - dq = scale dS K: ``scale |dS| |K|`` for its own sum, plus the dS errors carried through
      it. Those come from separate sums for every (i, j), so they are independent and add in
      quadrature: ``scale min(E |K|, LAMBDA sqrt(E^2 |K|^2))`` (squares elementwise). The first
      is the sure bound; the second holds but with probability below ``2 exp(-LAMBDA^2 / 2)``
      (Hoeffding: a sum of independent zero-mean terms bounded by ``c_i`` exceeds
      ``LAMBDA sqrt(sum c_i^2)``) and is the smaller one once a few terms add up;
    - dk = scale dS^T Q: ``scale |dS|^T |Q| + scale min(E^T |Q|, LAMBDA sqrt((E^2)^T |Q|^2))``.

    Variants: with dropout, ``P`` in out, dv and ``dP`` carry ``keep / (1 - p)`` and ``D`` the
    rounding of the stored ``O`` (``rowsum |dO| half_ulp(O) / u32``); with a softcap
    ``|dS|`` and ``E`` carry ``1 - tanh^2`` (<= 1); with sinks, ``dsinks[h] = -sum_{b,i}
    p_sink D``: ``sum p_sink (|D| + DS_ROUNDING rowsum|dO o O|)``.
    """
    from flashref.reference.attention import (expand_kv_heads, probabilities_from_lse, reduce_kv_heads,
                                              score_tile, sink_logits)
    from flashref.reference.attention_inputs import check_attention_inputs

    q, k, v, dout = (_float64(t) for t in (inputs.q, inputs.k, inputs.v, inputs.dout))
    kw = _for_oracle(attention_kwargs(case, inputs))
    spec = check_attention_inputs(q.shape, k.shape, v.shape, **kw)
    scale, group = spec.softmax_scale, spec.group
    k_full, v_full = expand_kv_heads(k, group), expand_kv_heads(v, group)
    out, lse = ref["out"], ref["lse"]
    scores, dcap = score_tile(q, k_full, spec)
    probs = probabilities_from_lse(scores, lse)  # 0 where masked, on empty rows
    dropout = spec.dropout_scale()  # keep / (1 - p) or None
    dropped = probs if dropout is None else probs * dropout
    abs_k, abs_v = np.abs(k_full), np.abs(v_full)
    m_out = dropped @ abs_v
    m_dv = reduce_kv_heads(dropped.swapaxes(-1, -2) @ np.abs(dout), group)
    # The backward recomputes P = exp2(S log2e - lse log2e) from the stored lse (and S from a
    # dot in another order), so its P carries a relative error of about u32 * W, where plain
    # attention's P is exactly 1 (a row that sees one key). Separate per (i, j), so carried
    # into dv like the dS errors into dq: the sure sum or LAMBDA deviations.
    finite_lse = np.where(np.isfinite(lse), np.abs(lse), 0.0)[..., None]
    finite_scores = np.where(np.isfinite(scores), np.abs(scores), 0.0)
    # The recomputed raw q.k errs by u32 scale |q||k|^T (a float32 sum of D products). A
    # softcap passes that error on times 1 - t^2 (0 once tanh saturates: raw logits near 1e4
    # must not widen the bound by their size), and its own tanh (exp2, 1 -+ e, a division)
    # errs by about TANH_ROUNDING u32 |t|, i.e. TANH_ROUNDING u32 |S| on the capped score.
    abs_q = np.abs(q)
    abs_raw = scale * (abs_q @ abs_k.swapaxes(-1, -2))  # sum of |terms| of each raw q.k
    raw_error = abs_raw if dcap is None else abs_raw * dcap + TANH_ROUNDING * finite_scores  # in units of u32
    w = 1.0 + 2.0 * finite_scores + 3.0 * finite_lse + raw_error
    # Every row: plain attention's softmax rounds its P once or twice, the recomputation from a
    # float32 lse rounds by u32 W; where a key's dv sums few rows (Lq = 1, a narrow window) the
    # factor term cannot absorb the difference (a float32 row of 10 keys: dv 4x the baseline).
    error_p = dropped * w
    carried_dv = np.minimum(reduce_kv_heads(error_p.swapaxes(-1, -2) @ np.abs(dout), group),
                            LAMBDA * np.sqrt(reduce_kv_heads((error_p**2).swapaxes(-1, -2) @ dout**2, group)))
    m_dv = m_dv + carried_dv
    # The forward's p = exp2(S log2e - m) rounds its argument too, by u32 (1 + |S| + |lse|)
    # relative (m ~ lse); normalisation turns those errors e_ij into sum_j P_ij e_ij (v_j - o_i).
    error_fwd = dropped * (1.0 + finite_scores + finite_lse + (0.0 if dcap is None else raw_error))
    abs_out = np.abs(out)
    m_out = m_out + np.minimum(
        error_fwd @ abs_v + error_fwd.sum(axis=-1, keepdims=True) * abs_out,
        LAMBDA * np.sqrt((error_fwd**2) @ v_full**2 + (error_fwd**2).sum(axis=-1, keepdims=True) * out**2))
    dprobs = dout @ v_full.swapaxes(-1, -2)
    m_dprobs = np.abs(dout) @ abs_v.swapaxes(-1, -2)
    if dropout is not None:
        dprobs, m_dprobs = dprobs * dropout, m_dprobs * dropout
    delta = np.sum(dout * out, axis=-1)[..., None]
    m_delta = np.sum(np.abs(dout * out), axis=-1)[..., None]
    error_ds = DS_ROUNDING * probs * (m_dprobs + m_delta)
    if dropout is not None or spec.sinks is not None:
        # D = rowsum(dO o O) reads O as stored, rounded to the dtype. Without dropout a row that
        # sees one key (where the baseline is exact) has O = v exactly; with dropout
        # O = v / (1 - p) is not representable, nor with a sink O = P v, P < 1, and D errs by up to rowsum(|dO| h), h = half_ulp(O)
        # (independent roundings: LAMBDA sqrt(rowsum(dO^2 h^2)) with the same odds as above).
        h = half_ulp(out, case.dtype)
        rounding = np.minimum(np.sum(np.abs(dout) * h, axis=-1), LAMBDA * np.sqrt(np.sum((dout * h) ** 2, axis=-1)))
        error_ds = error_ds + probs * rounding[..., None] / U32
    abs_ds = probs * np.abs(dprobs - delta)
    if dcap is not None:
        # dS = P (dP - D) (1 - t^2): P's recomputation error (u32 W relative) enters dS too,
        # and 1 - t^2 is formed from the rounded t, an absolute error of about
        # 2|t| dt + 1 with dt = TANH_ROUNDING |t| + (1 - t^2) (the raw q.k error / softcap).
        t = np.sqrt(np.clip(1.0 - dcap, 0.0, 1.0))
        error_dcap = 2.0 * t * (TANH_ROUNDING * t + dcap * abs_raw / case.softcap) + 1.0
        error_ds = (error_ds + abs_ds * w) * dcap + abs_ds * error_dcap
        abs_ds = abs_ds * dcap
    error_ds2 = error_ds**2
    carried_dq = np.minimum(error_ds @ abs_k, LAMBDA * np.sqrt(error_ds2 @ abs_k**2))
    m_dq = scale * (abs_ds @ abs_k + carried_dq)
    m_dk = scale * reduce_kv_heads(abs_ds.swapaxes(-1, -2) @ abs_q, group)
    # The heads of a GQA group are separate sums too: their variances add before the root.
    carried_dk = np.minimum(reduce_kv_heads(error_ds.swapaxes(-1, -2) @ abs_q, group),
                            LAMBDA * np.sqrt(reduce_kv_heads(error_ds2.swapaxes(-1, -2) @ abs_q**2, group)))
    m_dk = m_dk + scale * carried_dk
    # lse = log(sum_j exp(S_ij)) moves by sum_j P_ij dS_ij: the P-weighted score errors (W, as
    # for the backward's P), the final ln 2 product (|lse|), and the rounding of the float32
    # sum l over the row's n visible keys (independent roundings: LAMBDA sqrt(n)).
    visible_keys = np.sum(np.isfinite(scores), axis=-1)
    m_lse = np.sum(probs * w, axis=-1) + finite_lse[..., 0] + LAMBDA * np.sqrt(visible_keys)
    result = dict(out=m_out, lse=m_lse, dq=m_dq, dk=m_dk, dv=m_dv)
    # A row that sees one or two keys: dS cancels (exactly, or nearly) and the kernel's float32
    # dP - D cancels in other orders than any baseline's (``rms_check``).
    result["few_keys"] = bool(np.any((visible_keys == 1) | (visible_keys == 2)))
    if dcap is not None:
        # The baseline rounds the raw scores R = scale q k^T to its dtype before the cap: an error
        # of u |R| that the cap passes on times 1 - tanh^2. With logits near 1e4 and a cap of the
        # same size that is many units of P's relative error, all the baseline's own: it widens
        # the baseline's ceiling (baseline_ceiling), never the slack.
        raw = spec.softmax_scale * np.abs(q @ k_full.swapaxes(-1, -2))
        result["score_error"] = float(np.max(np.where(np.isfinite(scores), raw * dcap, 0.0), initial=0.0))
    sink = sink_logits(spec)  # (1, Hq, 1) or None
    if sink is not None:
        p_sink = np.exp(sink - lse)  # lse >= sink: never above 1
        # D reads O as stored (rounded to the dtype: O = P v, P < 1 with a sink, is not
        # representable), so each term also errs by rowsum(|dO| half_ulp(O)), as in dS above.
        result["dsinks"] = np.sum(p_sink * (np.abs(delta[..., 0]) + DS_ROUNDING * m_delta[..., 0]
                                            + rounding / U32), axis=(0, 2))
    return result


def half_ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """Half the spacing of ``dtype`` at each |x|: the most rounding x to that dtype can move it."""
    import torch

    tiny = torch.finfo(getattr(torch, dtype)).tiny
    exponent = np.floor(np.log2(np.maximum(np.abs(x), tiny)))
    mantissa_bits = {"float16": 10, "bfloat16": 7, "float32": 23}[dtype]
    return np.exp2(exponent - mantissa_bits - 1)


def _max(x: np.ndarray) -> float:
    return float(np.max(x)) if x.size else 0.0


def slack(case: Case, magnitude: np.ndarray, ref: np.ndarray) -> float:
    """``u32 * max magnitude + max half_ulp(ref)``: what float32 accumulation and the final
    rounding to the dtype cannot avoid on this problem (docs/design.md, "The slack")."""
    return U32 * _max(magnitude) + _max(half_ulp(ref, case.dtype))


def baseline_ceiling(case: Case, magnitude: np.ndarray, ref: np.ndarray, score_error: float = 0.0) -> float:
    """The most the same-dtype baseline may err: ``BASELINE_CEILING[dtype]`` units of the dtype's
    roundoff times the same magnitudes, plus the output rounding. ``score_error``: the relative
    error of P, in units of the dtype's roundoff, that the baseline's rounded raw scores add
    through a softcap (``magnitudes``'s "score_error"; 0 without one)."""
    return (BASELINE_CEILING[case.dtype] * UNIT_ROUNDOFF[case.dtype] * _max(magnitude) * (1.0 + score_error)
            + _max(half_ulp(ref, case.dtype)))


def max_abs_error(x, ref: np.ndarray) -> float:
    """max |x - ref| in float64; NaN anywhere in x gives NaN; 0 for empty arrays."""
    if not isinstance(x, np.ndarray):
        x = _float64(x)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(x - ref)))


def finite_error(x, ref: np.ndarray) -> float:
    """max |x - ref| over the elements where ref is finite (lse); inf if x is finite where ref
    is -inf (a row that sees no key must say so), NaN anywhere in x gives NaN."""
    if not isinstance(x, np.ndarray):
        x = _float64(x)
    if np.isnan(x).any():
        return math.nan
    finite = np.isfinite(ref)
    if np.any(x[~finite] != ref[~finite]):
        return math.inf
    return float(np.max(np.abs(x[finite] - ref[finite]), initial=0.0))


def rms_error(x, ref: np.ndarray) -> float:
    """sqrt(mean |x - ref|^2) over the elements where ref is finite; NaN anywhere gives NaN."""
    if not isinstance(x, np.ndarray):
        x = _float64(x)
    finite = np.isfinite(ref)
    diff = x[finite] - ref[finite]
    return float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0


def judge(kernel_error: float, baseline_error: float, factor: float, slack: float = 0.0,
          ceiling: float = math.inf, rms: RmsError | None = None) -> TensorError:
    """The rule for one tensor: passes iff kernel_error <= factor * baseline_error + slack, the
    baseline is within its ceiling and, when given, the RMS criterion ``rms`` holds."""
    return TensorError(float(kernel_error), float(baseline_error), float(slack), float(factor), float(ceiling),
                       rms)


def check_case(case: Case, device: str = "cpu") -> CaseResult:
    """Run one case through kernel, baseline, algorithm baseline and oracle and apply the rule
    to each tensor."""
    if hasattr(case, "check"):  # the packed families (varlen, kvcache) run themselves
        return case.check(device)
    start = time.perf_counter()
    inputs = make_inputs(case, device)
    ref = oracle_attention(case, inputs)
    base = baseline_attention(case, inputs)
    algo = algorithm_attention(case, inputs)
    kern = kernel_attention(case, inputs)
    return CaseResult(case, judge_all(case, inputs, ref, base, kern, algo), time.perf_counter() - start,
                      path=kern["path"])


def judge_all(case: Case, inputs: CaseInputs, ref: Mapping, base: Mapping, kern: Mapping,
              algo: Mapping | None = None) -> dict[str, TensorError]:
    """The rule on every tensor the oracle returned and the kernel gave, in ``TENSORS`` order.

    ``algo`` (``algorithm_attention``'s tensors) adds the RMS criterion to every tensor and
    judges lse (whose max-norm baseline it is: plain attention in a 16-bit dtype has no lse
    worth the name); without it the max-norm rule alone, on out and the gradients."""
    mags = magnitudes(case, inputs, ref)
    errors = {}
    for key in (t for t in TENSORS if t in ref and t in kern):
        if key == "lse":
            if algo is None:
                continue
            f32 = dataclasses.replace(case, dtype="float32")  # lse is float32 in every dtype
            # lse has no dS to cancel; the kernels' lse = ln2 (m + log2 l), m from S log2(e), rounds
            # four times (S log2e, log2 l, the sum, the ln 2 product) where the algorithm
            # baseline's m + log l rounds twice: LSE_ROUNDING u32 (|lse| + 1) per row on RMS.
            finite = np.isfinite(ref[key])
            lse_slack = LSE_ROUNDING * U32 * rms_error(np.zeros(int(finite.sum())), np.abs(ref[key][finite]) + 1.0)
            lse_rms = rms_check(f32, kern[key], algo[key], ref[key], mags[key], slack=lse_slack)
            errors[key] = judge(finite_error(kern[key], ref[key]), finite_error(algo[key], ref[key]), FACTORS[key],
                                U32 * _max(mags[key]), baseline_ceiling(f32, mags[key], np.zeros(1)), lse_rms)
            continue
        errors[key] = judge(max_abs_error(kern[key], ref[key]), max_abs_error(base[key], ref[key]), FACTORS[key],
                            slack(case, mags[key], ref[key]),
                            baseline_ceiling(case, mags[key], ref[key], mags.get("score_error", 0.0)),
                            None if algo is None else rms_check(case, kern[key], algo[key], ref[key], mags[key],
                                                                mags["few_keys"]))
    return errors


def rms_check(case: Case, kernel, algo, ref: np.ndarray, magnitude: np.ndarray, few_keys: bool = False,
              slack: float | None = None) -> RmsError:
    """The RMS criterion on one tensor (docs/design.md, "The algorithm's own rounding").

    Two regimes. Where the dtype's roundings make the error (16-bit inputs, and the algorithm
    baseline errs by more than ``FLOAT32_REGIME`` float32 units of the tensor's magnitudes), a
    correct kernel rounds where its algorithm rounds and its RMS error is the baseline's within
    a few percent: factor ``RMS_FACTOR_16BIT``. Where only float32 arithmetic is left (float32
    inputs, or a row that sees one key, where dS cancels to rounding noise), the kernel's sums
    run in other orders than torch's and its P comes from the stored lse:
    ``RMS_FACTOR_FLOAT32``. Either factor is widened by ``1 + LAMBDA / sqrt(n)`` over the
    tensor's n rows (a mean of n independent squares wanders by about 1 / sqrt(n) of itself,
    and the elements of one row share its roundings: dsinks or a one-query out is judged
    loosely, a tall tensor at the factor; measured: float32, Lq = 1 against 97 keys with ALiBi,
    four rows, the kernel's dq RMS error 4.1x the algorithm baseline's).

    Slack ``u32 * rms(ref)`` (one float32 rounding of every element, where the algorithm
    baseline happens to be exact); with ``few_keys`` (a row sees one or two keys) the max-norm
    rule's derived slack in RMS, ``u32 * rms(magnitude)``: there dS = P (dP - D) cancels, and
    how much of the float32 rounding of dP and D cancels with it depends on the two sums'
    orders, which no baseline shares with the kernel (docs/design.md, "Known limits"). An
    explicit ``slack`` replaces both (lse's: ``LSE_ROUNDING``)."""
    finite = np.isfinite(ref)
    # Independent samples: rows, not elements (a row's elements share its roundings of l and of
    # the dS row: with Lq = 1 four rows are four draws, however wide the head).
    n = max(int(np.count_nonzero(finite)) // (ref.shape[-1] if ref.ndim == 4 else 1), 1)
    reference = rms_error(algo, ref)
    magnitude_rms = rms_error(np.zeros(np.count_nonzero(finite)), magnitude[finite])
    sixteen_bit = case.dtype != "float32" and reference > FLOAT32_REGIME * U32 * magnitude_rms
    factor = (RMS_FACTOR_16BIT if sixteen_bit else RMS_FACTOR_FLOAT32) * (1.0 + LAMBDA / math.sqrt(n))
    if slack is None:
        slack = U32 * (magnitude_rms if few_keys else rms_error(np.zeros_like(ref), ref))
    return RmsError(rms_error(kernel, ref), reference, slack, factor)


# ---------------------------------------------------------------------------- sweeps
def _covering(seqlens, head_dims, dtypes, masks, layouts, kv_lens_options, seed):
    """One case per (seqlens, mask) pair; the other axes advance with different strides so that
    every value of every axis meets many values of the others (a covering design, not the full
    cross product)."""
    cases = []
    for index, ((lq, lk), (causal, alignment)) in enumerate(product(seqlens, masks)):
        b, hq, hkv = layouts[(index + 2 * (index // 3)) % len(layouts)]
        if lq * lk >= LARGE_CASE:
            b = 1  # the interpreter's cost grows with B * H * Lq * Lk; one sequence is enough
        cases.append(Case(
            batch=b, heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk,
            head_dim=head_dims[(index * 5 + index // len(head_dims)) % len(head_dims)],
            dtype=dtypes[(index + index // 3 + 1) % len(dtypes)],
            causal=causal, causal_alignment=alignment,
            kv_lens=kv_lens_options[(index // 2) % len(kv_lens_options)],
            seed=seed + index))
    # 16-bit cases alternate the pointer and the descriptor (TMA) path, which under the
    # interpreter runs only when asked for (on a GPU: compute capability 9.x decides).
    return [dataclasses.replace(c, descriptors=c.dtype != "float32" and i % 2 == 1) for i, c in enumerate(cases)]


# The attention variants (issues 10, 14): each alone, then the combinations models use, as
# ``Case`` fields over a plain case; ``_variant_cases`` gives each family its own shapes.
VARIANT_FAMILIES = (
    dict(window=(19, 0)),  # sliding window (its right edge is causal's)
    dict(window=(5, 9), causal=False),  # a two-sided window narrower than a block
    dict(softcap=5.0),
    dict(alibi="h", causal=True),
    dict(alibi="bh", causal=True, causal_alignment="bottom_right", kv_lens=True),
    dict(sinks=True),
    dict(sinks=True, causal=True),
    dict(dropout_p=0.2),
    dict(dropout_p=0.3, causal=True),
    # GQA over several batch rows: the dropout counters' (batch, head) stream and the sinks'
    # per-head reads must not mix up heads of a group or rows of the batch.
    dict(dropout_p=0.25, sinks=True, causal=True, layout=(2, 4, 2)),
    dict(window=(24, -1), softcap=10.0, causal=True, causal_alignment="bottom_right", kv_lens=True,
         layout=(2, 4, 2)),
)
# Small shapes: the variants change the score pipeline, not the tiling the plain sweep covers.
VARIANT_SEQLENS = ((17, 17), (33, 47), (113, 57), (1, 97), (64, 90))
VARIANT_HEAD_DIMS = (32, 64, 128)


def _variant_cases(seqlens, head_dims, dtypes, layouts, repeats, seed) -> list[Case]:
    """``repeats`` cases per family of VARIANT_FAMILIES, the shape axes advancing with different
    strides (every value meets several families); a family's ``layout`` fixes its (B, Hq, Hkv).
    A family's first case is 16-bit and its second float32 (when the dtypes allow), so every
    variant is judged in both regimes even in quick; 16-bit cases alternate the pointer and the
    descriptor (TMA) path."""
    cases = []
    index = 0
    sixteen = [d for d in dtypes if d != "float32"] or list(dtypes)
    for family_index, family in enumerate(VARIANT_FAMILIES):
        family = dict(family)
        layout = family.pop("layout", None)
        for repeat in range(repeats):
            lq, lk = seqlens[index % len(seqlens)]
            b, hq, hkv = layout or layouts[(index // 2) % len(layouts)]
            if repeat == 1 and "float32" in dtypes:
                dtype = "float32"
            elif repeat == 0:
                dtype = sixteen[family_index % len(sixteen)]
            else:
                dtype = dtypes[(index + 2 * (index // 3)) % len(dtypes)]
            fields = {**dict(causal=False, causal_alignment="top_left", kv_lens=False), **family}
            cases.append(Case(batch=min(b, 2), heads_q=hq, heads_kv=hkv, seqlen_q=lq, seqlen_k=lk,
                              head_dim=head_dims[(index + index // 3) % len(head_dims)], dtype=dtype,
                              descriptors=dtype != "float32" and family_index % 2 == 1,
                              seed=seed + 10_000 + index, **fields))
            index += 1
    return cases


# ---------------------------------------------------------------------------- block boundaries
# The residues a boundary quantity must take modulo every block size B a launch can run with:
# the first elements of a block (0, 1, 2) and its last two (B - 2, B - 1). The block sizes are
# powers of two, so a quantity = c * Bmax + r with r in RESIDUES (r < 0: Bmax + r) takes the
# five residues modulo every B <= Bmax at once.
RESIDUES = (-2, -1, 0, 1, 2)
# (Lq residue, shift residue) pairs in which the shift and the sum (Lk's residue) run through
# RESIDUES too: five cases put Lq, Lk and Lk - Lq on every residue. The second pairing does
# the same for (Lq, kv_len - Lq) with kv_len's residue, so the two shifts do not move together.
SHIFT_PAIRING = (2, 0, -2, 1, -1)
KV_LEN_PAIRING = (1, -2, 0, 2, -1)
# The boundary quantities a case puts on residues, and what each is (see ``boundary_quantities``).
BOUNDARY_QUANTITIES = ("Lq", "Lk", "Lk - Lq", "kv_len", "kv_len - Lq", "right edge", "window left edge")
# Quick's tile triple: one table tile per launch, BLOCK_M != BLOCK_N in each.
QUICK_TILES = ((64, 32), (32, 64), (64, 32))


def table_tiles() -> dict[str, tuple[tuple[int, int], ...]]:
    """Per launch of ``TILE_LAUNCHES``, every (BLOCK_M, BLOCK_N) its tables hold on any
    architecture (defaults, variants, dropout, the tuning candidates: what the dispatcher or
    ``flashref tune`` can pick; kernels/config_dispatch.py)."""
    from flashref.kernels.config_dispatch import all_triton_configs

    return {launch: tuple(sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in all_triton_configs(launch)}))
            for launch in TILE_LAUNCHES}


def tile_triples(preset: str) -> list[tuple[tuple[int, int], ...]]:
    """The launch tiles the boundary cases force: quick one triple (``QUICK_TILES``); ci and
    full as many triples as the longest launch table, the i-th taking each launch's i-th tile
    (cycling), so every tile of every launch runs."""
    if preset == "quick":
        return [QUICK_TILES]
    tables = table_tiles()
    count = max(len(t) for t in tables.values())
    return [tuple(tables[launch][i % len(tables[launch])] for launch in TILE_LAUNCHES) for i in range(count)]


def boundary_cases(preset: str, *, dtypes=DTYPES, head_dims=None, causal=None, seed: int = 0) -> list[Case]:
    """Cases that put every boundary quantity on the residues 0, 1, 2, B - 2, B - 1 modulo every
    block size of their forced tiles (``tile_triples``), built rather than drawn.

    Per tile triple, with ``Bmax`` its largest block and r running through ``RESIDUES``:
    ``Lq = Bmax + r``; batch row 0 sees every key, so its bottom-right shift is
    ``Lk - Lq = Bmax + SHIFT_PAIRING[r]``; batch row 1 has ``kv_len = Bmax + KV_LEN_PAIRING[r]``.
    Five causal bottom-right cases (the right edge of the visible keys is the shift), then five
    non-causal left windows whose left edge ``shift - left`` runs through the residues too.
    GQA (2 query heads on 1), head dims and dtypes cycle; 16-bit cases alternate the pointer
    and the descriptor (TMA) path."""
    dims = tuple(head_dims) if head_dims is not None else (16, 40)
    cases = []
    for t, tiles in enumerate(tile_triples(preset)):
        bmax = max(max(tile) for tile in tiles)
        for family in ("causal", "window"):
            if causal is not None and causal != (family == "causal"):
                continue
            for i, r in enumerate(RESIDUES):
                index = len(cases)
                lq = bmax + r
                shift = bmax + SHIFT_PAIRING[i]
                lk = lq + shift
                kv_len = bmax + KV_LEN_PAIRING[(i + t) % len(RESIDUES)]
                dtype = dtypes[(index + t) % len(dtypes)]
                fields = dict(batch=2, heads_q=2, heads_kv=1, seqlen_q=lq, seqlen_k=lk,
                              head_dim=dims[index % len(dims)], dtype=dtype, causal_alignment="bottom_right",
                              kv_lens=True, kv_len_values=(lk, kv_len), tiles=tiles,
                              descriptors=dtype != "float32" and index % 2 == 0, seed=seed + 30_000 + index)
                if family == "causal":
                    cases.append(Case(causal=True, **fields))
                else:
                    # A left window alone (no right bound): key j visible to row i iff
                    # j >= i + shift - left, the left edge shift - left on RESIDUES[i + 2]
                    # (mod Bmax, in [0, Bmax)); the keys right of it up to kv_len stay
                    # visible, so every query block has an unmasked interior the edge bounds.
                    left = shift - (RESIDUES[(i + 2) % 5] % bmax)
                    cases.append(Case(causal=False, window=(left, -1), **fields))
    return cases


def boundary_quantities(case: Case) -> dict[str, list[int]]:
    """The boundary quantities of a case (``BOUNDARY_QUANTITIES``), each with its values over
    the batch rows: the shifts are bottom-right's (``kv_len - Lq``; row b's kv_len is Lk
    without kv_lens), the right edge ``shift + right`` (causal: right = 0; present with a
    right bound) and the window's left edge ``shift - left`` (present with a left bound)."""
    lens = list(case.kv_len_values) if case.kv_len_values else [case.seqlen_k] * case.batch
    shifts = [n - case.seqlen_q for n in lens] if case.causal_alignment == "bottom_right" else [0] * case.batch
    out = {"Lq": [case.seqlen_q], "Lk": [case.seqlen_k], "Lk - Lq": [case.seqlen_k - case.seqlen_q]}
    if case.kv_len_values:
        out["kv_len"] = lens
        out["kv_len - Lq"] = [n - case.seqlen_q for n in lens]
    left, right = case.window
    if left >= 0:
        out["window left edge"] = [sh - left for sh in shifts]
    if case.causal or right >= 0:
        right = max(right, 0) if not case.causal else (0 if right < 0 else min(right, 0))
        out["right edge"] = [sh + right for sh in shifts]
    return out


def residue_gaps(cases: list[Case], tables: Mapping[str, tuple] | None = None) -> list[str]:
    """What the cases' forced tiles leave uncovered: for every launch, every tile of ``tables``
    (default ``table_tiles()``: every tile the dispatcher can pick) and both its block sizes B,
    every quantity of ``BOUNDARY_QUANTITIES`` must take each residue 0, 1, 2, B - 2, B - 1 in
    some case run with that tile. Returns one line per missing (launch, tile, B, quantity,
    residue); [] when the coverage is complete."""
    gaps = []
    tables = table_tiles() if tables is None else tables
    for launch_index, launch in enumerate(TILE_LAUNCHES):
        tiles = tables[launch]
        for tile in tiles:
            running = [c for c in cases if c.tiles and c.tiles[launch_index] == tile]
            for block in sorted(set(tile)):
                wanted = {0, 1, 2, block - 2, block - 1}
                for quantity in BOUNDARY_QUANTITIES:
                    seen = {v % block for c in running for v in boundary_quantities(c).get(quantity, [])}
                    for residue in sorted(wanted - seen):
                        gaps.append(f"{launch} tile {tile[0]}x{tile[1]}: {quantity} never = {residue} mod {block}")
    return gaps


LARGE_CASE = 100_000  # Lq * Lk above which the covering sweeps use batch 1
QUICK_SEQLENS = ((1, 239), (113, 203), (128, 217), (239, 1), (200, 200))
QUICK_HEAD_DIMS = (40, 64, 128)


def sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0, packed: bool = True) -> list[Case]:
    """The cases of ``preset`` ("quick", "ci", "full"), optionally restricted to some dtypes
    (names), head dims, or to causal (True: both alignments) / non-causal (False) masking.
    Case seeds are ``seed, seed + 1, ...`` (the variant families': ``seed + 10000, ...``).
    Every preset then has the variant families (``VARIANT_FAMILIES``): twice each in "quick"
    (16-bit, then float32), three times in "ci", four times in "full"; then the block-boundary cases (``boundary_cases``:
    every boundary quantity on the residues 0, 1, 2, B - 2, B - 1 of every block size B of the
    forced tiles: quick one tile triple, ci and full every tile of the tables, seeds
    ``seed + 30000, ...``).
    ``packed``: then the families of the packed entry points (``flash_attention_varlen``,
    ``flash_attention_with_kvcache``; flashref/packed_equivalence.py), seeds ``seed + 20000, ...``."""
    if preset not in ("quick", "ci", "full"):
        raise ValueError(f"preset must be 'quick', 'ci' or 'full', got {preset!r}")
    requested_head_dims = head_dims  # the packed families have their own head dims unless filtered
    dtypes = tuple(dtypes) if dtypes is not None else DTYPES
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtypes must be among {DTYPES}, got {d!r}")
    masks = tuple(m for m in CAUSAL_MODES if causal is None or m[0] == causal)
    if preset == "quick":
        seqlens, default_dims, layouts = QUICK_SEQLENS, QUICK_HEAD_DIMS, HEAD_LAYOUTS
    else:
        seqlens, default_dims, layouts = CI_SEQLENS, CI_HEAD_DIMS, HEAD_LAYOUTS
    head_dims = tuple(head_dims) if head_dims is not None else default_dims
    for d in head_dims:
        if not (isinstance(d, int) and 1 <= d <= 256):
            raise ValueError(f"head_dims must be integers in [1, 256], got {d!r}")
    repeats = {"quick": 2, "ci": 3, "full": 4}[preset]
    variant_dims = tuple(head_dims) if head_dims is not None else VARIANT_HEAD_DIMS
    variants = [c for c in _variant_cases(VARIANT_SEQLENS, variant_dims, dtypes, layouts, repeats, seed)
                if causal is None or c.causal == causal]
    if preset == "full":
        # Every (seqlens, mask, head dim, dtype); layouts and kv_lens still cycle.
        cases = []
        for index, ((lq, lk), (c, a), d, dt) in enumerate(product(seqlens, masks, head_dims, dtypes)):
            b, hq, hkv = layouts[index % len(layouts)]
            cases.append(Case(b, hq, hkv, lq, lk, d, dt, c, a, bool(index // 3 % 2), seed + index))
    else:
        cases = _covering(seqlens, head_dims, dtypes, masks, layouts, (False, True), seed)
    boundary = boundary_cases(preset, dtypes=dtypes, head_dims=requested_head_dims, causal=causal, seed=seed)
    cases = cases + variants + boundary
    # The packed entry points (issue 11): flash_attention_varlen and flash_attention_with_kvcache.
    if not packed:
        return cases
    from flashref.packed_equivalence import packed_sweep

    return cases + packed_sweep(preset, dtypes=dtypes, head_dims=requested_head_dims, causal=causal,
                                seed=seed + 20000)
