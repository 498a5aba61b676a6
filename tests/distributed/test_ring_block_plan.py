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
