"""The per-block causal decomposition: for every layout, world size, rank and source block,
block_plan's (rows, cols, causal) is exactly the global causal mask restricted to the rank's
query positions and the source's key positions. The ring merges these blocks, so this is
the whole correctness argument for causal masking (the spawned tests check the numbers)."""

import pytest
import torch

from flashref.distributed import LAYOUTS, block_plan, shard_positions
from flashref.distributed.layout import chunks_per_sequence


def plan_mask(plan, n):
    mask = torch.zeros(n, n, dtype=torch.bool)
    if plan is None:
        return mask
    rows, cols, causal = plan
    block = mask[rows, cols]
    block[:] = torch.ones_like(block).tril() if causal else True
    mask[rows, cols] = block
    return mask


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 3])
def test_block_plan_is_the_global_mask(layout, world, causal, chunk):
    seqlen = chunk * chunks_per_sequence(layout, world)
    n = seqlen // world
    visible_pairs = 0
    for rank in range(world):
        qpos = shard_positions(seqlen, world, rank, layout=layout)
        for src in range(world):
            kpos = shard_positions(seqlen, world, src, layout=layout)
            expected = (kpos[None, :] <= qpos[:, None]) if causal else torch.ones(n, n, dtype=torch.bool)
            plan = block_plan(layout, causal, rank, src, n)
            assert torch.equal(plan_mask(plan, n), expected), (rank, src, plan)
            visible_pairs += int(expected.sum())
    assert visible_pairs == (seqlen * (seqlen + 1) // 2 if causal else seqlen * seqlen)


def piece_mask(piece, n, window, batch_row):
    """What the kernel computes for one piece, on the (n, n) local grid: inside rows x cols,
    the causal / window condition on global distance (the piece's offset plus local indices)
    and the piece's valid-key prefix."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    rows, cols = torch.arange(n)[piece.rows], torch.arange(n)[piece.cols]
    i, j = torch.arange(len(rows))[:, None], torch.arange(len(cols))[None, :]
    distance = piece.offset + i - j  # global query position - global key position
    left, right = window
    if piece.causal:
        right = 0 if right < 0 else min(right, 0)
    visible = torch.ones(len(rows), len(cols), dtype=torch.bool)
    if right >= 0:
        visible &= distance >= -right
    if left >= 0:
        visible &= distance <= left
    if piece.kv_lens is not None:
        visible &= j < int(piece.kv_lens[batch_row])
    mask[rows[:, None], cols[None, :]] = visible
    return mask


WINDOWS = [(-1, -1), (2, -1), (1, 1), (0, 4), (5, 0)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lengths", ["none", "mixed", "short"])
@pytest.mark.parametrize("window", WINDOWS)
def test_the_pieces_are_the_global_mask(layout, world, causal, lengths, window):
    """For every rank and source block, the pieces ring attention runs (block_plan's without a
    window or ALiBi, chunk pairs with one; each with its offset and valid-key prefix) cover
    exactly the globally visible (query, key) pairs of each batch row, each pair once."""
    from flashref.distributed.ring import _Options, _Ring, _step_pieces

    chunk = 3
    seqlen = chunk * chunks_per_sequence(layout, world)
    n = seqlen // world
    # mixed: full, empty, one key, mid-sequence, one chunk; short: every row within the first chunk
    kv_lens = {"none": None, "mixed": (seqlen, 0, 1, seqlen // 2 + 1, chunk), "short": (0, 1, chunk)}[lengths]
    alibi = torch.zeros(2)  # any slopes: their presence alone switches to chunk pieces
    for opts in {_Options(causal, 1.0, layout, 0.0, kv_lens, window),
                 _Options(causal, 1.0, layout, 0.0, kv_lens, window, alibi)}:
        for rank in range(world):
            qpos = shard_positions(seqlen, world, rank, layout=layout)
            for src in range(world):
                kpos = shard_positions(seqlen, world, src, layout=layout)
                pieces = _step_pieces(_Ring(None, rank, world, 0, 0), opts, src, n, "cpu")
                for p in pieces:  # positions that the offset speaks of
                    if p.offset or opts.positional:
                        assert p.offset == int(qpos[p.rows][0] - kpos[p.cols][0])
                        assert torch.equal(qpos[p.rows].diff(), torch.ones(len(qpos[p.rows]) - 1, dtype=torch.long))
                        assert torch.equal(kpos[p.cols].diff(), torch.ones(len(kpos[p.cols]) - 1, dtype=torch.long))
                distance = qpos[:, None] - kpos[None, :]
                left, right = window
                if causal:
                    right = 0 if right < 0 else min(right, 0)
                visible = torch.ones(n, n, dtype=torch.bool)
                if right >= 0:
                    visible &= distance >= -right
                if left >= 0:
                    visible &= distance <= left
                for b, length in enumerate(kv_lens or (seqlen,)):
                    expected = visible & (kpos[None, :] < length)
                    masks = [piece_mask(p, n, window, b) for p in pieces]
                    covered = torch.stack(masks).sum(0) if masks else torch.zeros(n, n, dtype=torch.long)
                    assert torch.equal(covered, expected.long()), (rank, src, b, pieces)
