"""Shared helpers for the Transformer/training tests: fresh seeds, torch twins, comparisons.

torch appears only in tests: an independent implementation, never the oracle.
"""

from __future__ import annotations

import os
import secrets

import numpy as np

SEED_ENV = "FLASHREF_SEED"


def fresh_seed(label: str = "") -> int:
    """A new seed per run, printed (pytest shows it on failure); FLASHREF_SEED=<n> replays."""
    seed = int(os.environ.get(SEED_ENV, secrets.randbits(32)))
    print(f"{label} seed: {SEED_ENV}={seed}")
    return seed


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs| (theirs == 0 everywhere -> the absolute error)."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    scale = np.abs(theirs).max() if theirs.size else 0.0
    err = np.abs(ours - theirs).max() if theirs.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def grad_mismatches(ours: dict, theirs: dict, tol: float) -> list[str]:
    """Names whose gradients disagree beyond tol (relative), or exist on one side only.

    ours: {name: ndarray | None}, theirs: {name: ndarray | None}."""
    bad = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None:
            bad.append(f"{name}: gradient missing on {'ours' if a is None else 'torch'} side")
            continue
        err = rel_err(a, b)
        if not err <= tol:
            bad.append(f"{name}: relative error {err:.3e}")
    return bad
