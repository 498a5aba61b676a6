"""The NumPy Philox twin against Random123's known answers and against Triton itself.

The oracle's dropout replays the kernels' keep mask bit for bit (docs/attention.md,
"Dropout"). This file holds the replay to that: it runs ``triton.language.random`` under
Triton's interpreter (tests may import triton; the oracle never does) with the counters the
convention fixes, and compares raw words, uniforms and keep decisions, not statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from attention_cases import fresh_rng
from flashref.reference import attention_forward
from flashref.reference.philox import (
    dropout_keep,
    philox4x32,
    seed_key,
    uint_to_uniform_float,
)

# Philox4x32-10 known-answer vectors from Random123's kat_vectors (Salmon et al., SC 2011):
# (counter c0..c3, key k0 k1) -> the four output words.
KNOWN_ANSWERS = {
    "zeros": ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    "ones": ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    "pi": (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", KNOWN_ANSWERS, ids=list(KNOWN_ANSWERS))
def test_philox_known_answers(case):
    counter, key, expected = KNOWN_ANSWERS[case]
    words = philox4x32(*counter, *key)
    assert [int(w) for w in words] == list(expected)
    assert all(w.dtype == np.uint32 for w in words)


def test_uniform_conversion_edges():
    words = np.array([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], dtype=np.uint32)
    u = uint_to_uniform_float(words)
    assert u.dtype == np.float32
    # 0 and 0xffffffff (int32 -1 -> ~x = 0) give 0; the largest magnitude stays below 1.
    assert u[0] == 0 and u[4] == 0 and u[3] == u[2] and 0 < u[2] < 1
    assert u[1] == np.float32(4.6566127342e-10)


def test_seed_splits_into_low_and_high_words():
    assert seed_key(0x1234_5678_9ABC_DEF0 & (2**63 - 1)) == (0x9ABCDEF0, 0x12345678)


def test_tiles_draw_the_same_bits_as_the_whole_matrix():
    rng = fresh_rng()
    seed, shape = int(rng.integers(2**63)), (2, 3, 17, 23)
    whole = dropout_keep(seed, 0.3, shape)
    tile = dropout_keep(seed, 0.3, shape, slice(5, 11), slice(16, 23))
    assert np.array_equal(whole[:, :, 5:11, 16:23], tile)


def _triton_dropout(seed: int, p: float, batch: int, heads: int, q_len: int, kv_len: int):
    """Triton's own words, uniforms and keep decisions for the dropout counters, interpreted."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(words_ptr, u_ptr, keep_ptr, rand_ptr, seed, p, HQ, LQ, LK,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
        bh = tl.program_id(0)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        inside = (offs_m[:, None] < LQ) & (offs_n[None, :] < LK)
        c0 = (offs_m[:, None] * LK + offs_n[None, :]).to(tl.uint32)
        c1 = (c0 * 0 + bh).to(tl.uint32)
        zero = c0 * 0
        r0, _, _, _ = tl.philox(seed, c0, c1, zero, zero)
        u = tl.uint_to_uniform_float(r0)
        offs = bh * LQ * LK + offs_m[:, None] * LK + offs_n[None, :]
        tl.store(words_ptr + offs, r0.to(tl.int32, bitcast=True), mask=inside)
        tl.store(u_ptr + offs, u, mask=inside)
        tl.store(keep_ptr + offs, (u >= p).to(tl.int8), mask=inside)
        # tl.rand(seed, offset) is philox(seed, offset, 0, 0, 0)'s first word: equal for bh = 0.
        tl.store(rand_ptr + offs, tl.rand(seed, c0), mask=inside)

    n = batch * heads * q_len * kv_len
    words = torch.zeros(n, dtype=torch.int32)
    u = torch.zeros(n, dtype=torch.float32)
    keep = torch.zeros(n, dtype=torch.int8)
    rand = torch.zeros(n, dtype=torch.float32)
    block_m, block_n = triton.next_power_of_2(q_len), triton.next_power_of_2(kv_len)
    kernel[(batch * heads,)](words, u, keep, rand, seed, p, heads, q_len, kv_len,
                             BLOCK_M=block_m, BLOCK_N=block_n)  # fmt: skip
    shape = (batch, heads, q_len, kv_len)
    return (
        words.numpy().view(np.uint32).reshape(shape),
        u.numpy().reshape(shape),
        keep.numpy().astype(bool).reshape(shape),
        rand.numpy().reshape(shape),
    )


# seeds: small (k1 = 0), above 2**32 (k1 != 0), near 2**63; p values whose float32
# rounding matters (0.1), the 0.9.
TRITON_CASES = {
    "small_seed_p0.1": (12345, 0.1, 2, 3, 5, 7),
    "big_seed_p0.5": (2**40 + 977, 0.5, 1, 2, 9, 13),
    "top_seed_p0.9": (2**63 - 1, 0.9, 2, 1, 3, 17),
    "fresh_seed_p0.3": (None, 0.3, 1, 3, 7, 6),
}


@pytest.mark.parametrize("case", TRITON_CASES, ids=list(TRITON_CASES))
def test_numpy_philox_matches_triton_bit_for_bit(case):
    seed, p, batch, heads, q_len, kv_len = TRITON_CASES[case]
    if seed is None:
        seed = int(fresh_rng(case).integers(2**63))
    words, u, keep, rand = _triton_dropout(seed, p, batch, heads, q_len, kv_len)
    k0, k1 = seed_key(seed)
    i = np.arange(q_len)[:, None] * kv_len + np.arange(kv_len)[None, :]
    bh = np.arange(batch * heads).reshape(batch, heads, 1, 1)
    ours = philox4x32(i[None, None], bh, 0, 0, k0, k1)[0]
    assert np.array_equal(ours, words)
    assert np.array_equal(uint_to_uniform_float(ours).view(np.uint32), u.view(np.uint32))
    assert np.array_equal(dropout_keep(seed, p, (batch, heads, q_len, kv_len)), keep)
    assert np.array_equal(uint_to_uniform_float(ours)[0, 0].view(np.uint32), rand[0, 0].view(np.uint32))
    # The oracle's attention uses exactly that mask.
    q = np.ones((batch, heads, q_len, 2))
    kv = np.ones((batch, 1, kv_len, 2))
    _, _, oracle_keep = attention_forward(q, kv, kv, dropout_p=p, dropout_seed=seed, return_dropout_mask=True)
    assert np.array_equal(oracle_keep, keep)


def test_the_position_counter_wraps_mod_2_to_the_32():
    """c0 = (i * Lk + j) mod 2**32, as a kernel's 32-bit counter wraps: with Lk = 2**16,
    query 2**16 lands on the counters of query 0."""
    seed, shape = int(fresh_rng().integers(2**63)), (1, 2, 2**16 + 3, 2**16)
    wrapped = dropout_keep(seed, 0.5, shape, slice(2**16, 2**16 + 3), slice(0, 64))
    first = dropout_keep(seed, 0.5, shape, slice(0, 3), slice(0, 64))
    assert np.array_equal(wrapped, first) and first.any() and not first.all()
