"""Launch configurations per kernel, head dim and dtype: the tables the dispatcher picks from.

On a GPU each kernel is wrapped in ``triton.autotune`` over the union of all tables, and the
autotuner's ``early_config_prune`` cuts that union down to the table for the call's head dim
and dtype, so a configuration that does not fit (registers, shared memory) is never launched.
The compile gate (``kernels/compile_gate.py``) compiles every entry of every table for sm_90
and sm_80 and fails on spills, which is what keeps these tables honest without a GPU.

Under Triton's interpreter one small configuration is used: autotuning cannot run there
("0 active drivers") and warps/stages mean nothing to it.

The shapes follow what maps onto Hopper's ``wgmma`` (an M tile of 64 rows per warpgroup, so
BLOCK_M 64 with 4 warps or 128 with 8 warps / 4 warps x 2 tiles) and what FlashAttention-2
uses: a tall query tile in the forward and the dQ kernel, a tall key tile in the dK/dV kernel.
The first entry of each table is the untuned default. What remains to tune on an H200 is
written in docs/kernels.md.
"""

from dataclasses import dataclass

import torch
import triton

KERNEL_NAMES = ("forward", "backward_dkdv", "backward_dq")
# The dK/dV kernel's launches by what they accumulate (its ``GRADS`` constexpr). A split pass
# ("backward_dk", "backward_dv") uses the dK/dV kernel's table.
DKDV_LAUNCHES = {"backward_dkdv": "dkdv", "backward_dk": "dk", "backward_dv": "dv"}


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration: tile sizes, warps per program, software-pipelining stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def as_triton(self) -> triton.Config:
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n},
                             num_warps=self.num_warps, num_stages=self.num_stages)


INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, num_warps=1, num_stages=1)

# Rows: (kernel, largest padded head dim, float32?) -> configs, default first.
# fp16 and bf16 share rows (same bytes, same wgmma shapes). Every entry was compiled by the
# compile gate for sm_90 and sm_80 (`flashref compile-report`); numbers in docs/kernels.md.
_C = KernelConfig
_SIXTEEN_BIT_UP_TO_128 = {
    "forward": (_C(128, 64, 8, 3), _C(64, 64, 4, 3), _C(64, 32, 4, 2)),
    "backward_dkdv": (_C(32, 64, 8, 2),),
    "backward_dq": (_C(64, 32, 4, 2), _C(64, 32, 4, 3)),
}
_SIXTEEN_BIT_256 = {
    "forward": (_C(64, 32, 8, 2), _C(64, 64, 8, 1)),
    # Launched twice, dK then dV (dkdv_passes): with both float32 BLOCK_N x 256 accumulators
    # every tile tried spilled; one accumulator per pass fits with a two-stage pipeline.
    "backward_dkdv": (_C(16, 64, 8, 2),),
    "backward_dq": (_C(64, 32, 8, 2),),
}
# float32 is a correctness path (FlashAttention has none): exact ("ieee") float32 FMA dots on
# 16x32 tiles. Exact FMA dots keep their operands and the accumulator in registers spread over
# the program's threads: with 4 warps the forward spilled at head dims 80-256 (48 B to 7.6 KB)
# and dQ up to 1.9 KB; 8 warps halve each thread's share and compile clean on sm_90 and sm_80.
# The dK/dV kernel's 4-warp tile is clean. Same dots, same tiles: the float32 numerics do not
# change with the warp count.
_FLOAT32 = {"forward": (_C(16, 32, 8, 1),), "backward_dkdv": (_C(16, 32, 4, 1),), "backward_dq": (_C(16, 32, 8, 1),)}
_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {}
# dK/dV at padded head dim 64: 32x64 w8 s2 spills 24 bytes on sm_80 with triton 3.6 (not 3.9);
# a 16-row query block with one stage is clean on sm_80/sm_90 under both.
_SIXTEEN_BIT_UP_TO_64 = {**_SIXTEEN_BIT_UP_TO_128, "backward_dkdv": (_C(16, 64, 8, 1),)}
for _kernel in KERNEL_NAMES:
    _TABLE[(_kernel, 64, False)] = _SIXTEEN_BIT_UP_TO_64[_kernel]
    _TABLE[(_kernel, 128, False)] = _SIXTEEN_BIT_UP_TO_128[_kernel]
    _TABLE[(_kernel, 256, False)] = _SIXTEEN_BIT_256[_kernel]
    for _bucket in (64, 128, 256):
        _TABLE[(_kernel, _bucket, True)] = _FLOAT32[_kernel]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 16, tl.dot's smallest K) that a head dim is padded to."""
    return max(16, triton.next_power_of_2(head_dim))


def dkdv_passes(head_dim: int) -> tuple[str, ...]:
    """What each launch of the dK/dV kernel accumulates (its ``GRADS``), in launch order.

    Up to a padded head dim of 128 one launch holds both float32 ``BLOCK_N x D`` accumulators.
    At 256 they and the resident K, V tiles spill on sm_90 and sm_80 at every tile tried, so
    the kernel runs twice, dK then dV, each pass recomputing P (one more ``K Q^T`` product).
    """
    return ("dkdv",) if padded_head_dim(head_dim) <= 128 else ("dk", "dv")


def configs_for(kernel: str, head_dim: int, dtype: torch.dtype) -> tuple[KernelConfig, ...]:
    """The configurations the autotuner may pick for ``kernel`` at this head dim and dtype
    (``kernel``: a name of ``KERNEL_NAMES`` or of ``DKDV_LAUNCHES``)."""
    if kernel in DKDV_LAUNCHES:
        kernel = "backward_dkdv"
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
    bucket = min(b for b in (64, 128, 256) if padded_head_dim(head_dim) <= b)
    return _TABLE[(kernel, bucket, dtype == torch.float32)]


def all_triton_configs(kernel: str) -> list[triton.Config]:
    """Every configuration of ``kernel`` in any table (what ``triton.autotune`` is given)."""
    seen: list[KernelConfig] = []
    for (name, _, _), table in _TABLE.items():
        seen.extend(c for c in table if name == kernel and c not in seen)
    return [c.as_triton() for c in seen]


def config_pruner(kernel: str):
    """An ``early_config_prune`` hook keeping only the table for the call's head dim and dtype."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        wanted = configs_for(kernel, args["HEAD_DIM"], args["Q"].dtype)
        return [c for c in configs
                if KernelConfig(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]

    return prune
