"""flashref.distributed: context parallelism, ring attention over torch.distributed.

``ring_attention`` (ring.py) computes attention over a sequence sharded across the ranks of a
process group, forward and backward, with the fused kernels on each block and K/V (and dK/dV)
passed around the ring; ``shard_sequence`` / ``unshard_sequence`` / ``gather_sequence`` /
``shard_positions`` (layout.py) cut and reassemble sequences in the ``zigzag`` or
``contiguous`` layout; ``merge_attention`` (merge.py) is the torch twin of the oracle's
log-sum-exp merge. The gate's ring family (flashref/gate/ring.py) spawns local processes and judges ring
attention against the float64 oracle (``flashref verify --distributed N``). docs/distributed.md has the math, the
communication volume and the overlap condition.

Importing this package does not import triton: the kernels are loaded on the first call, so
a process can still set ``TRITON_INTERPRET=1`` after importing it.
"""

from .layout import LAYOUTS, gather_sequence, shard_positions, shard_sequence, unshard_sequence
from .merge import merge_attention
from .ring import RingAttentionFunction, block_plan, chunk_pieces, ring_attention

__all__ = ["ring_attention", "RingAttentionFunction", "block_plan", "chunk_pieces", "LAYOUTS", "shard_sequence",
           "unshard_sequence", "gather_sequence", "shard_positions", "merge_attention"]
