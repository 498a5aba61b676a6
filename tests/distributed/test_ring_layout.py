"""Sharding layouts: shard/unshard are inverse, positions are the layout's chunks, zigzag
balances causal work, and a length the layout cannot split is a clear error."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flashref.distributed import LAYOUTS, shard_positions, shard_sequence, unshard_sequence
from flashref.distributed.layout import chunks_per_sequence, rank_chunks


@given(world=st.integers(1, 6), chunk=st.integers(1, 9), layout=st.sampled_from(LAYOUTS),
       dim=st.sampled_from([0, 2, -1]))
def test_unshard_inverts_shard_and_shards_hold_the_layouts_positions(world, chunk, layout, dim):
    seqlen = chunk * chunks_per_sequence(layout, world)
    shape = [2, 3, 4]
    shape[dim] = seqlen
    x = torch.randn(*shape)
    shards = [shard_sequence(x, world, r, layout=layout, dim=dim) for r in range(world)]
    assert torch.equal(unshard_sequence(shards, layout=layout, dim=dim), x)
    positions = torch.cat([shard_positions(seqlen, world, r, layout=layout) for r in range(world)])
    assert sorted(positions.tolist()) == list(range(seqlen))  # every position on exactly one rank
    for r in range(world):
        pos = shard_positions(seqlen, world, r, layout=layout)
        assert bool((pos[1:] > pos[:-1]).all())  # increasing: what makes the diagonal block top-left causal
        assert torch.equal(shards[r], x.index_select(dim, pos))


def test_zigzag_rank_holds_chunks_r_and_2w_minus_1_minus_r():
    assert [rank_chunks("zigzag", 4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert shard_positions(8, 2, 1, layout="zigzag").tolist() == [2, 3, 4, 5]
    assert shard_positions(8, 2, 1, layout="contiguous").tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_zigzag_balances_causal_work_and_contiguous_does_not(world):
    """Visible (query, key) pairs per rank under causal masking."""
    seqlen = 2 * world * 5

    def work(layout, r):
        pos = shard_positions(seqlen, world, r, layout=layout)
        return int((pos[:, None] >= torch.arange(seqlen)[None, :]).sum())

    zigzag = [work("zigzag", r) for r in range(world)]
    contiguous = [work("contiguous", r) for r in range(world)]
    assert max(zigzag) - min(zigzag) <= 5  # equal up to the diagonals' chunk-length term
    assert contiguous[-1] > world * contiguous[0]  # about 2 * world - 1 times


@pytest.mark.parametrize("layout, world, seqlen", [("zigzag", 2, 6), ("zigzag", 4, 12), ("contiguous", 4, 10)])
def test_a_length_the_layout_cannot_split_is_a_clear_error(layout, world, seqlen):
    with pytest.raises(ValueError, match=f"cannot be split by the '{layout}' layout over {world} ranks"):
        shard_sequence(torch.zeros(1, 1, seqlen, 4), world, 0, layout=layout)


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout must be one of"):
        shard_sequence(torch.zeros(1, 1, 4, 4), 2, 0, layout="striped")
    with pytest.raises(ValueError, match="rank must be an int in"):
        shard_sequence(torch.zeros(1, 1, 4, 4), 2, 2, layout="contiguous")
    with pytest.raises(ValueError, match="same shape"):
        unshard_sequence([torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 4)], layout="contiguous")

