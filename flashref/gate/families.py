"""The case families and their registry: dense, varlen, kvcache, model and ring are peers.

A ``Family`` says how its cases are named, listed and judged: ``prefix`` (a case name that
starts with it is the family's; the dense family's is empty and comes last), ``from_name``,
``sweep(preset, *, dtypes, head_dims, causal, seed)``, ``check(case, device)`` (flashref's
kernels against the oracle by the rule, a ``CaseResult``), ``features(case)`` (what an
implementation must declare to run it, ``cases.FEATURES``), the entry point it exercises, the
``Implementation`` attribute that holds another implementation's entry point (``attention``,
``varlen``, ``kvcache``; ``check(case, device, that_callable, name)`` judges it for the packed
families; None: flashref's kernels only) and the ``seed_offset`` its sweep's seeds start at.
``in_presets``: whether ``sweep(preset)`` lists it by default (the model and ring families
are asked for by name: ``flashref verify --model``, ``--distributed N``). ``sweep``,
``case_from_name`` and ``check_case`` go through the registry, so a new family is one
``register_family`` call, not a branch in every caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .cases import Case, dense_features
from .dense import check_case as check_dense_16
from .fp8 import check_fp8_case
from .model import ModelCase, check_model, model_cases
from .packed import (KvcacheCase, VarlenCase, check_kvcache, check_varlen, kvcache_features, kvcache_sweep,
                     varlen_features, varlen_sweep)
from .results import CaseResult
from .ring import RingCase, check_ring, ring_sweep
from .rule import CASE_DTYPES, FP8
from .sweeps import dense_sweep

PRESETS = ("quick", "ci", "full")


@dataclass(frozen=True)
class Family:
    """One family of gate cases (module docstring)."""

    name: str
    case_type: type
    prefix: str
    sweep: Callable[..., list]
    check: Callable[..., CaseResult]
    features: Callable[[Any], set]
    entry_point: str
    implementation_attribute: str | None
    seed_offset: int = 0
    in_presets: bool = True

    def from_name(self, name: str, seed: int = 0):
        return self.case_type.from_name(name, seed)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (its name and its case type must be new)."""
    if family.name in FAMILIES:
        raise ValueError(f"a case family named {family.name!r} is already registered")
    if any(f.case_type is family.case_type for f in FAMILIES.values()):
        raise ValueError(f"{family.case_type.__name__} already belongs to a registered family")
    FAMILIES[family.name] = family
    return family


def check_dense(case: Case, device: str = "cpu") -> CaseResult:
    """A dense case: the 16/32-bit judges (dense.py), or the FP8 forward's (fp8.py)."""
    return check_fp8_case(case, device) if case.dtype == FP8 else check_dense_16(case, device)


register_family(Family("dense", Case, "", dense_sweep, check_dense, dense_features, "flash_attention", "attention"))
register_family(Family("varlen", VarlenCase, "varlen-", varlen_sweep, check_varlen, varlen_features,
                       "flash_attention_varlen", "varlen", seed_offset=20_000))
register_family(Family("kvcache", KvcacheCase, "kvcache-", kvcache_sweep, check_kvcache, kvcache_features,
                       "flash_attention_with_kvcache", "kvcache", seed_offset=20_000))


def _model_sweep(preset, *, dtypes=None, head_dims=None, causal=None, seed=0):
    return model_cases([d for d in dtypes if d in ("float32", "bfloat16", "float16")] if dtypes else None, seed=seed)


def _ring_sweep(preset, *, dtypes=None, head_dims=None, causal=None, seed=0, world_size=2):
    return ring_sweep(world_size, dtypes=dtypes, causal=causal, seed=seed)


register_family(Family("model", ModelCase, "transformer-", _model_sweep, check_model, lambda case: set(),
                       "torch.nn.Transformer on sdpa_routing", None, in_presets=False))
register_family(Family("ring", RingCase, "ring", _ring_sweep, check_ring, lambda case: set(), "ring_attention", None,
                       in_presets=False))


def family_of(case) -> Family:
    """The registered family ``case`` belongs to (TypeError for anything else)."""
    for family in FAMILIES.values():
        if isinstance(case, family.case_type):
            return family
    raise TypeError(f"{type(case).__name__} is not a case of any registered family ({sorted(FAMILIES)})")


def case_from_name(name: str, seed: int = 0):
    """The case a name (a table row, a replay line) stands for, of whichever family names it so."""
    text = name.strip()
    prefixed = sorted((f for f in FAMILIES.values() if f.prefix), key=lambda f: -len(f.prefix))
    for family in prefixed:
        if text.startswith(family.prefix):
            return family.from_name(text, seed)
    return FAMILIES["dense"].from_name(text, seed)


def sweep(preset: str, *, dtypes=None, head_dims=None, causal=None, seed: int = 0, families=None) -> list:
    """The cases of ``preset`` ("quick", "ci", "full") over the ``families`` named (default: every
    registered one ``in_presets``, in registration order), each family's seeds from ``seed + seed_offset``,
    optionally restricted to some dtypes (names), head dims, or to causal (True: both
    alignments) / non-causal (False) masking."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if dtypes is not None:
        for d in dtypes:
            if d not in CASE_DTYPES:
                raise ValueError(f"dtypes must be among {CASE_DTYPES}, got {d!r}")
    names = tuple(n for n, f in FAMILIES.items() if f.in_presets) if families is None else tuple(families)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown case families {unknown}; registered: {sorted(FAMILIES)}")
    cases = []
    for name in names:
        family = FAMILIES[name]
        cases += family.sweep(preset, dtypes=dtypes, head_dims=head_dims, causal=causal,
                              seed=seed + family.seed_offset)
    return cases


def check_case(case, device: str = "cpu") -> CaseResult:
    """Judge one case of any family: flashref's kernels against the float64 oracle by the rule."""
    return family_of(case).check(case, device)


__all__ = ["FAMILIES", "PRESETS", "Family", "case_from_name", "check_case", "family_of", "register_family", "sweep"]
