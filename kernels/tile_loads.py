"""Tile loads through tensor descriptors: the Hopper path (``TMA`` constexpr) of the kernels.

On compute capability 9.x a tensor descriptor (``tl.make_tensor_descriptor``) makes a tile load
one bulk copy by the tensor memory accelerator (``cp.async.bulk.tensor`` in the PTX), completed
on an mbarrier, that Triton pipelines into shared memory for ``wgmma`` — what Triton's own
fused-attention tutorial does on Hopper. The pointer path (``tl.load`` with masks) stays for
sm_80, for strides a descriptor cannot take, for float32 and under an old triton.

A descriptor here is a 2-D view ``(rows, HEAD_DIM)`` of one (batch, head) slice with row stride
``stride_row`` and unit column stride; its block is ``(BLOCK_ROWS, BLOCK_D)``. The copy engine
fills what lies outside the view with zeros — rows at or past ``rows`` and columns past
``HEAD_DIM`` — which is exactly what the pointer path's ``mask=..., other=0.0`` gives, so the
math downstream (masks on the scores, padded head dims) is unchanged. The host
(``launch.tma_ok``) chooses the path: CUDA device of capability 9.x, 16-bit dtype,
every tensor with unit last stride, 16-byte aligned base and other strides (TMA's rules).
"""

import triton
import triton.language as tl

#: Tensor descriptors exist in this triton (3.6 and 3.9 both have them; older ones did not).
HAS_TENSOR_DESCRIPTORS = hasattr(tl, "make_tensor_descriptor")


@triton.jit
def rows_descriptor(base, rows, stride_row, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """A descriptor over the ``(rows, HEAD_DIM)`` matrix at ``base`` (row stride ``stride_row``,
    unit column stride), loading ``(BLOCK_ROWS, BLOCK_D)`` tiles, zero outside."""
    return tl.make_tensor_descriptor(base, shape=[rows, HEAD_DIM], strides=[stride_row, 1],
                                     block_shape=[BLOCK_ROWS, BLOCK_D])


@triton.jit
def load_rows(desc, start_row):
    """The tile of rows ``[start_row, start_row + BLOCK_ROWS)``, all ``BLOCK_D`` columns."""
    return desc.load([start_row, 0])
