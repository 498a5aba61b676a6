r"""How a sequence is cut across the ranks of a context-parallel group.

A sequence of ``L`` tokens is cut into equal chunks and each rank holds some of them, in
increasing order of position, concatenated along the sequence axis:

- ``"contiguous"``: ``world`` chunks of ``L / world`` tokens; rank ``r`` holds chunk ``r``.
- ``"zigzag"``: ``2 * world`` chunks of ``L / (2 * world)`` tokens; rank ``r`` holds chunks
  ``r`` and ``2 * world - 1 - r``. With causal attention a query in chunk ``c`` sees the keys
  of chunks ``0..c``, so rank ``r``'s work is ``(r + 1) + (2 * world - r)`` chunk pairs: the
  same ``2 * world + 1`` on every rank, where the contiguous layout gives rank ``world - 1``
  about ``2 * world - 1`` times the visible (query, key) pairs of rank 0 (docs/distributed.md).

Both layouts keep each rank's positions increasing, which is what lets a block of queries
against a block of keys from the same rank be ordinary top-left causal attention.

``shard_sequence`` / ``unshard_sequence`` cut and reassemble a full tensor (any dim is the
sequence axis, 2 by default: ``(B, H, L, D)``), ``gather_sequence`` all-gathers the local
shards of a group and reassembles them, ``shard_positions`` gives the global positions a rank
holds (for rotary embeddings and the like).
"""

from __future__ import annotations

import torch

LAYOUTS = ("zigzag", "contiguous")


def _check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _check_world(world_size, rank=None) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")


def chunks_per_sequence(layout: str, world_size: int) -> int:
    """How many equal chunks the layout cuts a sequence into: world (contiguous), 2 * world (zigzag)."""
    _check_layout(layout)
    _check_world(world_size)
    return 2 * world_size if layout == "zigzag" else world_size


def rank_chunks(layout: str, world_size: int, rank: int) -> tuple[int, ...]:
    """The chunk indices rank ``rank`` holds, in the order they are concatenated (increasing)."""
    _check_layout(layout)
    _check_world(world_size, rank)
    return (rank, 2 * world_size - 1 - rank) if layout == "zigzag" else (rank,)


def check_splittable(seqlen: int, layout: str, world_size: int, *, name: str = "sequence length") -> int:
    """The chunk length, or a ValueError saying why ``seqlen`` cannot be cut by this layout."""
    n = chunks_per_sequence(layout, world_size)
    if seqlen % n:
        raise ValueError(
            f"{name} {seqlen} cannot be split by the {layout!r} layout over {world_size} ranks: it must be "
            f"a multiple of {n} ({'2 x ' if layout == 'zigzag' else ''}world size); pad the sequence")
    return seqlen // n


def shard_positions(seqlen: int, world_size: int, rank: int, *, layout: str = "zigzag") -> torch.Tensor:
    """int64 (seqlen / world_size,): the global token positions that ``rank`` holds, in local order."""
    chunk = check_splittable(seqlen, layout, world_size)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in rank_chunks(layout, world_size, rank)])


def shard_sequence(x: torch.Tensor, world_size: int, rank: int, *, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard of the full tensor ``x``: ``x``'s chunks ``rank_chunks(...)`` along
    ``dim`` (the sequence axis; 2 for ``(B, H, L, D)``), concatenated. A new contiguous tensor
    with ``x.shape[dim] / world_size`` positions along ``dim``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    dim = dim % x.dim() if x.dim() else dim
    chunk = check_splittable(x.shape[dim], layout, world_size, name=f"x.shape[{dim}] (sequence length)")
    return torch.cat([x.narrow(dim, c * chunk, chunk) for c in rank_chunks(layout, world_size, rank)], dim=dim)


def unshard_sequence(shards, *, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """The inverse of ``shard_sequence``: ``shards[r]`` is rank r's shard (all the same shape);
    returns the full tensor, positions in order along ``dim``."""
    shards = list(shards)
    if not shards or not all(isinstance(s, torch.Tensor) for s in shards):
        raise TypeError("shards must be a non-empty sequence of torch.Tensors (one per rank)")
    world_size = len(shards)
    if any(s.shape != shards[0].shape for s in shards):
        raise ValueError(f"shards must all have the same shape, got {[tuple(s.shape) for s in shards]}")
    dim = dim % shards[0].dim()
    per_rank = len(rank_chunks(layout, world_size, 0))
    local = shards[0].shape[dim]
    if local % per_rank:
        raise ValueError(f"a {layout!r} shard holds {per_rank} equal chunks, but shards have length {local} "
                         f"along dim {dim}")
    chunk = local // per_rank
    pieces = [None] * (world_size * per_rank)
    for rank, shard in enumerate(shards):
        for i, c in enumerate(rank_chunks(layout, world_size, rank)):
            pieces[c] = shard.narrow(dim, i * chunk, chunk)
    return torch.cat(pieces, dim=dim)


def gather_sequence(x: torch.Tensor, *, group=None, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """All-gather the local shards ``x`` of every rank of ``group`` (torch.distributed; the default
    group when None) and reassemble the full sequence on every rank (``unshard_sequence``)."""
    import torch.distributed as dist

    shards = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, x.contiguous(), group=group)
    return unshard_sequence(shards, layout=layout, dim=dim)
