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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lengths", ["mixed", "short"])
def test_each_blocks_kv_lens_is_the_global_key_padding(layout, world, causal, lengths):
    """With key padding, the block a rank runs against each source (plan plus the block's own
    kv_lens, a prefix of its keys) is the global mask ``causal & (key < kv_lens[b])``; blocks
    with no valid key in any row are skipped."""
    from flashref.distributed.ring import _Options, _Ring, _step_block

    chunk = 3
    seqlen = chunk * chunks_per_sequence(layout, world)
    n = seqlen // world
    # mixed: full, empty, one key, mid-sequence, one chunk; short: every row within the first chunk
    kv_lens = (seqlen, 0, 1, seqlen // 2 + 1, chunk) if lengths == "mixed" else (0, 1, chunk)
    opts = _Options(causal, 1.0, layout, 0.0, kv_lens)
    skipped = 0
    for rank in range(world):
        qpos = shard_positions(seqlen, world, rank, layout=layout)
        for src in range(world):
            kpos = shard_positions(seqlen, world, src, layout=layout)
            block = _step_block(_Ring(None, rank, world, 0, 0), opts, src, n, "cpu")
            skipped += block is None and block_plan(layout, causal, rank, src, n) is not None
            for b, length in enumerate(kv_lens):
                visible = (kpos[None, :] <= qpos[:, None]) if causal else torch.ones(n, n, dtype=torch.bool)
                expected = visible & (kpos[None, :] < length)
                got = plan_mask(None if block is None else block[:3], n)
                if block is not None and block[3] is not None:
                    got[:, :] &= torch.zeros(n, dtype=torch.bool).index_fill_(
                        0, torch.arange(n)[block[1]][: int(block[3][b])], True)[None, :]
                assert torch.equal(got, expected), (rank, src, b, block)
    assert bool(skipped) == (lengths == "short" and world > 1)  # only blocks with no valid key in any row
