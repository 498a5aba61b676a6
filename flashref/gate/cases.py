"""The dense family's case: shapes, dtype, masking, variants and seed, and its name grammar.

``Case.name`` writes everything but the seed (``b1-hq4-hkv2-lq113-lk203-d64-bfloat16-
causal_bottom_right-kvlens`` then one ``-<suffix>`` per variant field off its default) and
``Case.from_name`` reads it back, so ``Case.replay_command()`` reruns exactly the case that
failed. Adding an attention keyword (a variant) to the gate is local: a field here, its
``Suffix`` in ``Case.SUFFIXES``, its entry in ``dense.attention_kwargs`` (the one place the
oracle's, the baselines' and the implementation's keywords come from) and, for a new gradient,
a name in ``rule.TENSORS`` with its factor.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .rule import CASE_DTYPES, FP8

#: What an implementation can declare and a case can need (one vocabulary for every family).
FEATURES = ("causal_top_left", "causal_bottom_right", "kv_lens", "gqa", "window", "softcap", "alibi", "sinks",
            "dropout", "lse", "varlen", "kvcache", "paged", "value_head_dim", "absorbed_decode")

CAUSAL_MODES = ((False, "top_left"), (True, "top_left"), (True, "bottom_right"))
# The launches a case's ``tiles`` force, in order (a split dK / dV pass takes the dK/dV tile).
TILE_LAUNCHES = ("forward", "backward_dkdv", "backward_dq")


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
    """One equivalence check: q (batch, heads_q, seqlen_q, head_dim), k (batch, heads_kv,
    seqlen_k, head_dim) and v (batch, heads_kv, seqlen_k, value_head_dim), in ``dtype``
    ("float16", "bfloat16", "float32"), or "float8_e4m3fn": the FP8 forward
    (flashref/gate/fp8.py), q, k, v quantized per (batch, kv head) with descales, out bfloat16,
    forward only; not with softcap, ALiBi, dropout or the descriptor path. ``head_dim_v``: V's
    head dim Dv where it differs from head_dim (DeepSeek's MLA), None otherwise (named
    ``-dv<Dv>`` only then)."""

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
    # Large logits (the fuzzer's): q drawn with this standard deviation instead of 1, so the
    # scores q.k / sqrt(D) spread over about +-4 logit_scale.
    logit_scale: float = 1.0
    # V's head dim when it is not head_dim (issue 23, MLA); the out / dout / dv tensors take it.
    head_dim_v: int | None = None

    _NAME = re.compile(r"b(\d+)-hq(\d+)-hkv(\d+)-lq(\d+)-lk(\d+)-d(\d+)-(float16|bfloat16|float32|float8_e4m3fn)"
                       r"-(noncausal_bottom_right|noncausal|causal_top_left|causal_bottom_right)-(kvlens|dense)")
    # Variants append their Suffix here (in name order).
    SUFFIXES: ClassVar[tuple] = ()

    def __post_init__(self):
        if self.dtype not in CASE_DTYPES:
            raise ValueError(f"dtype must be one of {CASE_DTYPES}, got {self.dtype!r}")
        if self.dtype == FP8 and (self.softcap or self.alibi or self.dropout_p or self.descriptors):
            raise ValueError("an FP8 case cannot have softcap, ALiBi, dropout or descriptors (the FP8 forward "
                             "does not support them)")
        if self.causal_alignment not in ("top_left", "bottom_right"):
            raise ValueError(f"causal_alignment must be 'top_left' or 'bottom_right', got {self.causal_alignment!r}")
        if self.alibi not in ("", "h", "bh"):
            raise ValueError(f"alibi must be '', 'h' or 'bh', got {self.alibi!r}")
        object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        if self.head_dim_v is not None:  # one spelling per case: Dv equal to D is the default
            object.__setattr__(self, "head_dim_v", None if int(self.head_dim_v) == self.head_dim else int(self.head_dim_v))
        object.__setattr__(self, "kv_len_values", tuple(int(n) for n in self.kv_len_values))
        object.__setattr__(self, "tiles", tuple(tuple(int(b) for b in tile) for tile in self.tiles))
        if self.kv_len_values and (not self.kv_lens or len(self.kv_len_values) != self.batch
                                   or not all(0 <= n <= self.seqlen_k for n in self.kv_len_values)):
            raise ValueError(f"kv_len_values needs kv_lens=True and one value in [0, seqlen_k] per batch row, "
                             f"got {self.kv_len_values!r}")
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale must be positive and finite, got {self.logit_scale!r}")
        if self.tiles and (len(self.tiles) != len(TILE_LAUNCHES) or any(len(t) != 2 for t in self.tiles)):
            raise ValueError(f"tiles must be {len(TILE_LAUNCHES)} (BLOCK_M, BLOCK_N) pairs, one per launch "
                             f"{TILE_LAUNCHES}, got {self.tiles!r}")

    @property
    def value_head_dim(self) -> int:
        """Dv: V's (and the output's) head dim."""
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

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
        """The inverse of ``name`` (a dense case's; ``families.case_from_name`` reads any family's)."""
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
    Suffix("logit_scale", r"qscale([0-9.]+)", lambda s: f"qscale{s:g}", lambda m: float(m.group(1))),
    Suffix("head_dim_v", r"dv(\d+)", lambda dv: f"dv{dv}", lambda m: int(m.group(1))),
)


def dense_features(case: Case) -> set[str]:
    """The features (``FEATURES``) an implementation must declare to run a dense case."""
    needs = set()
    if case.causal:
        needs.add(f"causal_{case.causal_alignment}")
    elif case.causal_alignment == "bottom_right" and (case.window != (-1, -1) or case.alibi):
        needs.add("causal_bottom_right")  # the alignment places the window and ALiBi
    if case.kv_lens:
        needs.add("kv_lens")
    if case.heads_q != case.heads_kv:
        needs.add("gqa")
    if case.head_dim_v is not None:
        needs.add("value_head_dim")
    for feature, used in (("window", case.window != (-1, -1)), ("softcap", case.softcap > 0),
                          ("alibi", bool(case.alibi)), ("sinks", case.sinks), ("dropout", case.dropout_p > 0)):
        if used:
            needs.add(feature)
    return needs


class ReplayableCase:
    """What the reports need of a case besides its name and seed: the replay command and its
    fields as plain data (the packed families' cases inherit it)."""

    def replay_command(self) -> str:
        return f'flashref verify --case "{self.name}" --seed {self.seed}'

    @property
    def config(self) -> dict:
        return dataclasses.asdict(self)


__all__ = ["CAUSAL_MODES", "FEATURES", "TILE_LAUNCHES", "Case", "ReplayableCase", "Suffix", "dense_features"]
