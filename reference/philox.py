r"""Philox-4x32-10 in NumPy: a bit-for-bit twin of Triton's ``triton.language.random``.

The kernels decide dropout with Triton's counter-based generator; the oracle replays the
same decisions from the same seed, so the two can be compared on the same keep mask.

Philox-4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` to four uint32 words. One
round, all arithmetic mod 2**32 (``hi``/``lo``: the two halves of a 64-bit product):

    c0' = hi(M1 * c2) ^ c1 ^ k0        M0 = 0xD2511F53   (Triton's PHILOX_ROUND_A)
    c2' = hi(M0 * c0) ^ c3 ^ k1        M1 = 0xCD9E8D57   (PHILOX_ROUND_B)
    c1' = lo(M1 * c2)
    c3' = lo(M0 * c0)
    k0 += 0x9E3779B9,  k1 += 0xBB67AE85                  (the Weyl key schedule)

Ten rounds (Triton's default). Triton's ``philox(seed, c0, c1, c2, c3)`` splits a 64-bit
seed into ``k0 = seed & 0xffffffff``, ``k1 = seed >> 32``.

uniform: Triton's ``uint_to_uniform_float`` bitcasts the word to int32 ``x``, folds the
negative half onto the positive one (``x < 0 -> ~x = -x - 1``) and multiplies by
``4.6566127342e-10`` in float32 (the largest scale with ``(2**31 - 1) * scale < 1`` after
rounding), giving a float32 in [0, 1).

Dropout (docs/attention.md): element ``(b, h, i, j)`` of a ``(B, Hq, Lq, Lk)`` score matrix
uses counters ``c0 = i * Lk + j``, ``c1 = b * Hq + h``, ``c2 = c3 = 0`` (each mod 2**32),
takes the first output word, and is kept iff ``uniform(r0) >= float32(p)``.
"""

from __future__ import annotations

import numbers

import numpy as np

PHILOX_ROUNDS = 10
PHILOX_M0 = np.uint64(0xD2511F53)  # multiplies c0 (Triton's PHILOX_ROUND_A)
PHILOX_M1 = np.uint64(0xCD9E8D57)  # multiplies c2 (Triton's PHILOX_ROUND_B)
PHILOX_W0 = np.uint32(0x9E3779B9)  # key increments (golden ratio, sqrt(3) - 1)
PHILOX_W1 = np.uint32(0xBB67AE85)
UNIFORM_SCALE = np.float32(4.6566127342e-10)
SEED_LIMIT = 2**63

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox-4x32 with ``rounds`` rounds: four uint32 arrays, the broadcast shape of the inputs.

    c0..c3: counters, k0, k1: key words; any integer arrays or ints, taken mod 2**32.
    """
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(*(_uint32(x) for x in (c0, c1, c2, c3, k0, k1)))
    with np.errstate(over="ignore"):  # the key schedule wraps mod 2**32 by design
        for _ in range(rounds):
            prod0 = PHILOX_M0 * c0.astype(np.uint64)  # < 2**64: no wrap in uint64
            prod1 = PHILOX_M1 * c2.astype(np.uint64)
            c0, c1, c2, c3 = (
                (prod1 >> _SHIFT32).astype(np.uint32) ^ c1 ^ k0,
                (prod1 & _LOW32).astype(np.uint32),
                (prod0 >> _SHIFT32).astype(np.uint32) ^ c3 ^ k1,
                (prod0 & _LOW32).astype(np.uint32),
            )
            k0 = k0 + PHILOX_W0
            k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


def seed_key(seed: int) -> tuple[np.uint32, np.uint32]:
    """A seed in [0, 2**63) as the key ``(k0, k1) = (seed & 0xffffffff, seed >> 32)``."""
    seed = check_seed("dropout_seed", seed)
    return np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)


def uint_to_uniform_float(words) -> np.ndarray:
    """Triton's conversion of uint32 words to float32 uniforms in [0, 1), bit for bit."""
    x = np.asarray(words, dtype=np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)  # ~x = -x - 1: maps [-2**31, -1] onto [0, 2**31 - 1]
    return x.astype(np.float32) * UNIFORM_SCALE  # int32 -> float32 rounds to nearest, as cvt.rn


def dropout_keep(seed: int, p: float, shape: tuple, rows=slice(None), cols=slice(None)) -> np.ndarray:
    """The kernel's dropout keep mask, bool ``(B, Hq, len(rows), len(cols))``; True = keep.

    shape: ``(B, Hq, Lq, Lk)`` of the whole score matrix (Lk is k's padded length: it sets
    the counter stride); rows / cols select a tile, so a blocked algorithm can draw tile by
    tile what the whole-matrix draw gives. Element ``(b, h, i, j)`` is kept iff
    ``uniform(philox(seed, i * Lk + j, b * Hq + h, 0, 0)[0]) >= float32(p)``.
    """
    batch, heads, q_len, kv_len = shape
    k0, k1 = seed_key(seed)
    i = np.arange(q_len, dtype=np.uint64)[rows][:, None]  # (r, 1)
    j = np.arange(kv_len, dtype=np.uint64)[cols][None, :]  # (1, c)
    bh = np.arange(batch * heads, dtype=np.uint64).reshape(batch, heads, 1, 1)
    with np.errstate(over="ignore"):
        c0 = (i * np.uint64(kv_len) + j) & _LOW32  # (r, c); mod 2**32 as the kernel's uint32
    c1 = bh & _LOW32
    r0, _, _, _ = philox4x32(c0[None, None], c1, 0, 0, k0, k1)
    return uint_to_uniform_float(r0) >= np.float32(p)


def check_seed(name: str, seed) -> int:
    """A Python/NumPy integer in [0, 2**63), else TypeError/ValueError naming ``name``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name}: expected an int in [0, 2**63), got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name}: expected an int in [0, 2**63), got {seed!r}")
    return int(seed)


def _uint32(x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.uint32:
        return arr
    return (arr.astype(np.uint64) & _LOW32).astype(np.uint32) if arr.dtype.kind in "iu" else _bad(arr)


def _bad(arr):
    raise TypeError(f"philox4x32: expected integer counters and keys, got dtype {arr.dtype}")
