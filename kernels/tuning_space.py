"""The tuning space: what ``flashref tune`` may measure on a GPU (docs/tuning.md).

The candidates (``CANDIDATE_SPACE``) span what the anchors use (Triton's fused-attention
tutorial, FlashAttention-2/3): forward and dQ with a tall query tile, dK/dV with a tall key
tile, 2-4 pipeline stages, one or two warpgroups. Most of them spill or overflow shared memory
at some head dim; the compile gate prunes them ahead of time, per arch, into
kernels/tables/<arch>.json (committed data, made by ``flashref compile-report --arch ARCH
--prune-table``, read here by ``load_tile_table``), so a GPU hour only measures configurations
that compile clean. 16-bit only: float32 is the exactness path, not tuned.
"""

import json
from functools import lru_cache
from itertools import product
from pathlib import Path

import torch

from .tile_tables import DKDV_LAUNCHES, KernelConfig, configs_for, head_dim_bucket

DKDV_TILES = ((16, 64), (32, 64), (64, 64), (16, 128), (32, 128), (64, 128))  # (query rows, key rows)
CANDIDATE_SPACE = {
    "forward": [KernelConfig(m, n, w, s) for m, n, s, w in product((64, 128), (32, 64, 128), (2, 3, 4), (4, 8))],
    "backward_dq": [KernelConfig(m, n, w, s) for m, n, s, w in product((64, 128), (32, 64), (2, 3), (4, 8))],
    "backward_dkdv": [KernelConfig(m, n, w, s) for (m, n), s, w in product(DKDV_TILES, (1, 2, 3), (4, 8))],
}
TABLES_DIR = Path(__file__).parent / "tables"
TABLE_SCHEMA = "flashref.tile-table/1"


def accumulator_registers(kernel: str, config: KernelConfig, block_d: int) -> int:
    """A lower bound on the 32-bit registers per thread a config needs: the float32 tiles that
    are live together in every iteration, spread over ``32 * num_warps`` threads (the forward:
    acc BLOCK_M x D and the scores BLOCK_M x BLOCK_N; dQ: dQ and dS; dK/dV: both accumulators
    BLOCK_N x D and the transposed scores). Operands, addresses and the softmax state come on
    top, so a config above ``REGISTERS_PER_THREAD`` must spill: the pruning skips compiling it."""
    m, n, threads = config.block_m, config.block_n, 32 * config.num_warps
    if kernel == "forward" or kernel == "backward_dq":
        live = m * block_d + m * n
    elif kernel == "backward_dkdv":
        live = 2 * n * block_d + n * m
    else:  # one pass of the split dK/dV kernel: one accumulator
        live = n * block_d + n * m
    return -(-live // threads)


def candidate_configs(kernel: str) -> tuple[KernelConfig, ...]:
    """The tuning candidates of ``kernel`` (a split pass uses the dK/dV kernel's)."""
    return tuple(CANDIDATE_SPACE["backward_dkdv" if kernel in DKDV_LAUNCHES else kernel])


@lru_cache(maxsize=None)
def load_tile_table(arch: str) -> dict | None:
    """The committed gate-pruned table of ``arch`` ("sm_90", "sm_80"), or None if there is none."""
    path = TABLES_DIR / f"{arch}.json"
    if not path.exists():
        return None
    table = json.loads(path.read_text())
    if table.get("schema") != TABLE_SCHEMA or table.get("arch") != arch:
        raise ValueError(f"{path}: not a {TABLE_SCHEMA} table for {arch}")
    return table


def tuning_configs(kernel: str, head_dim: int, arch: str) -> tuple[KernelConfig, ...]:
    """What `flashref tune` measures for ``kernel`` at this head dim on ``arch``: the committed
    gate-pruned table's entries for the head dim's bucket (16-bit), and the untuned default in
    front of them (always gate-checked, so tuning can only improve on it). Without a table
    for the arch, only the defaults."""
    defaults = configs_for(kernel, head_dim, torch.bfloat16, arch=arch)
    table = load_tile_table(arch)
    if table is None:
        return defaults
    name = "backward_dkdv" if kernel in DKDV_LAUNCHES else kernel
    bucket = head_dim_bucket(head_dim)
    pass_name = kernel if kernel in ("backward_dk", "backward_dv") else name
    entries = table["tables"].get(f"{pass_name}/{bucket}", [])
    if pass_name != name and not entries:  # a split pass at a bucket with one launch
        entries = table["tables"].get(f"{name}/{bucket}", [])
    pruned = [KernelConfig(**e["config"]) for e in entries]
    return tuple(dict.fromkeys([*defaults, *pruned]))
