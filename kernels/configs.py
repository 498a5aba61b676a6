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

import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path

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
    maxnreg: int | None = None  # ptxas's per-thread register cap (.maxnreg); None: ptxas decides

    def as_triton(self) -> triton.Config:
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n},
                             num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg)

    @classmethod
    def of_triton(cls, config: triton.Config) -> "KernelConfig":
        return cls(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages,
                   config.maxnreg)


INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, num_warps=1, num_stages=1)
# The decode (KV-cache split) kernel's under the interpreter (``interpreter_config("decode")``).
INTERPRETER_DECODE_CONFIG = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)

# Rows: (kernel, largest padded head dim, float32?) -> configs, default first.
# fp16 and bf16 share rows (same bytes, same wgmma shapes). Every entry was compiled by the
# compile gate for sm_90 and sm_80 (`flashref compile-report`); numbers in docs/kernels.md.
#
# Without a ``.maxnreg`` directive ptxas aims at an occupancy: it caps registers at what k
# programs per SM leave (168 for three 4-warp programs, 128 or 80 for two or three 8-warp ones)
# and parks what does not fit on the stack. Where the full compile report saw that (8-24 B of
# stack at exactly those counts, sm_80: the forward 64x64 w4 s3 at head dim 40, dQ 64x32 w4 s3
# at 64, dK/dV 16x64 w8 s1 at 16, the forward 128x64 w8 s3 at 64 with a softcap; and every
# float32 row, below) the entry carries ``maxnreg=255`` (``_R``): ptxas then takes 109-218
# registers and no stack. It trades the occupancy ptxas wanted for no spill, which is the gate's
# rule; a GPU run will say whether the other entries' occupancy was worth more.
_C = KernelConfig


def _R(block_m: int, block_n: int, num_warps: int, num_stages: int) -> KernelConfig:
    """A launch that tells ptxas the full register file (see above)."""
    return KernelConfig(block_m, block_n, num_warps, num_stages, maxnreg=REGISTERS_PER_THREAD)


REGISTERS_PER_THREAD = 255
_SIXTEEN_BIT_UP_TO_128 = {
    "forward": (_C(128, 64, 8, 3), _R(64, 64, 4, 3), _C(64, 32, 4, 2)),
    "backward_dkdv": (_C(32, 64, 8, 2),),
    "backward_dq": (_C(64, 32, 4, 2), _R(64, 32, 4, 3)),
}
_SIXTEEN_BIT_256 = {
    "forward": (_C(64, 32, 8, 2), _C(64, 64, 8, 1)),
    # Launched twice, dK then dV (dkdv_passes): with both float32 BLOCK_N x 256 accumulators
    # every tile tried spilled; one accumulator per pass fits with a two-stage pipeline.
    "backward_dkdv": (_C(16, 64, 8, 2),),
    "backward_dq": (_C(64, 32, 8, 2),),
}
# float32 is a correctness path (FlashAttention has none): exact ("ieee") float32 FMA dots on
# small tiles. Exact FMA dots keep operands and accumulators in registers spread over the
# program's threads, so the warp count sets each thread's share. With 16x32 tiles on 4 warps the
# forward spilled at head dims 80-256 (48 B to 7.6 KB) and dQ up to 1.9 KB; what compiles clean
# on sm_90 and sm_80 (the compile gate, every head dim, causal or not): the forward on 8 warps
# above head dim 64; dQ on a 16x16 tile with 8 warps (16x32 on 8 left 16 B at 80-112 on sm_90
# and 160-192 on sm_80); dK/dV on 4 warps above 64. Up to head dim 64 the forward and dK/dV
# take 16x16 tiles on 4 warps: 16x32 left an 8-byte stack frame at 64 registers on 4 or 8 warps
# (forward at 16 and 40, dK/dV at 40 and 64, sm_80 and sm_90). Same dots: the float32 numerics
# do not depend on the warp count; the tile only changes the order of the float32 sums.
# dK/dV above 64: 16x32 on 4 warps left an 8-byte stack frame on sm_80 under triton 3.6 (d=96,
# causal); 16x16 on 4 warps is clean at 96 and 128, sm_80 and sm_90, causal or not, on 3.6 and
# 3.9. Up to 64, triton 3.6 leaves 8 bytes with 16x16 on 4 warps (sm_90, d=40, causal) where 3.9
# does not, and 3.9 leaves 8 bytes on 8 warps (sm_90, d=40, non-causal) where 3.6 does not: the
# table follows the installed triton there (both checked at 40 and 64, sm_80 and sm_90).
#
# Most of those 8-40 byte frames were not register pressure: without a ``.maxnreg`` directive
# ptxas compiled the float32 dK/dV kernel at 64-96 registers and parked three or four
# long-lived values on the stack (STL before the key loop, LDL after it), and the variants
# (window, softcap, kv_lens, dropout) brought it back at tiles the plain kernel had cleared. With
# an explicit ``.maxnreg 255`` the same kernels take 92-186 registers and no stack (every such
# row of the full compile report, sm_90 and sm_80). So every float32 launch carries
# ``maxnreg=255`` (``_F``): the cap is the hardware's, the directive only stops the heuristic.
_TRITON_36 = triton.__version__.startswith("3.6")


_F = _R  # every float32 launch: exact FMA dots, ptxas told the full register file
_FLOAT32_DKDV_UP_TO_64 = _F(16, 16, 8, 1) if _TRITON_36 else _F(16, 16, 4, 1)
_FLOAT32_BY_BUCKET = {
    64: {"forward": (_F(16, 16, 4, 1),), "backward_dkdv": (_FLOAT32_DKDV_UP_TO_64,), "backward_dq": (_F(16, 16, 8, 1),)},
    128: {"forward": (_F(16, 32, 8, 1),), "backward_dkdv": (_F(16, 16, 4, 1),), "backward_dq": (_F(16, 16, 8, 1),)},
    256: {"forward": (_F(16, 32, 8, 1),), "backward_dkdv": (_F(16, 32, 4, 1),), "backward_dq": (_F(16, 16, 8, 1),)},
}
# At a padded head dim of 16 the 16x16 4-warp dK/dV tile left an 8-byte stack frame at 64
# registers on sm_80 (causal); 16x32 on 4 warps is clean there on sm_80 and sm_90.
_FLOAT32_HEAD_DIM_16 = {"backward_dkdv": (_F(16, 32, 4, 1),)}
_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {}
# dK/dV at padded head dim 64: 32x64 w8 s2 spills 24 bytes on sm_80 with triton 3.6 (not 3.9);
# a 16-row query block with one stage is clean on sm_80/sm_90 under both.
_SIXTEEN_BIT_UP_TO_64 = {**_SIXTEEN_BIT_UP_TO_128, "backward_dkdv": (_R(16, 64, 8, 1),)}
for _kernel in KERNEL_NAMES:
    _TABLE[(_kernel, 64, False)] = _SIXTEEN_BIT_UP_TO_64[_kernel]
    _TABLE[(_kernel, 128, False)] = _SIXTEEN_BIT_UP_TO_128[_kernel]
    _TABLE[(_kernel, 256, False)] = _SIXTEEN_BIT_256[_kernel]
    for _bucket in (64, 128, 256):
        _TABLE[(_kernel, _bucket, True)] = _FLOAT32_BY_BUCKET[_bucket][_kernel]

# The score variants (window, softcap, ALiBi, dropout) cost registers the plain tiles do not
# have everywhere: dropout regenerates its Philox keep mask in every tile of the backward (ten
# rounds of 32-bit multiplies on the (row, key) counters, live next to the float32
# accumulators), and window + softcap + ALiBi together add their masks and tanh. Measured with
# the compile gate (every variant on: its all_variants, tma_all_variants, varlen_all_variants
# and dropout rows, causal or not, float16 and bfloat16, sm_90 and sm_80), (launch name,
# bucket, float32?) -> configs:
# - dK/dV at 128 with dropout: 32x64 w8 s2 spilled 40-64 B on sm_90; 16x64 w8 s2 is clean (one
#   stage or four warps spilled 168-456 B);
# - dQ at 256 with dropout: 64x32 w8 s2 spilled up to 144 B; 64x16 w8 s2 is clean;
# - the forward at 256 with dropout: 64x32 w8 s2 spilled 8 B (packed sequences); 64x16 w8 s2 is
#   clean;
# - the dK and dV passes at 256 with any score variant: window + softcap + ALiBi spilled 8-24 B in
#   dK on sm_90 (each alone: 252-254 registers), dropout up to 112 B, and every tile with the 64
#   key rows that Hopper's wgmma needs spilled with dropout (16-688 B: 16x64 on 4 or 8 warps,
#   1-3 stages, 32x64). A 32-key tile is clean (dK on 8 warps; dV on 4: on 8 it left an 8-byte
#   stack frame at 128 registers) but too narrow for wgmma, so with a score variant these two
#   launches run on mma.sync on Hopper too (``MMA_SYNC_VARIANT_LAUNCHES``: the one place the
#   compile gate accepts a 16-bit sm_90 row without wgmma).
# - the forward at 128 with window + softcap + ALiBi: 128x64 w8 s3 spilled 8-24 B on sm_80 (clean
#   on sm_90); 128x32 w8 s3 is clean on both with every variant on (214 registers at most;
#   64x64 w4 s3 and 128x64 w8 s2 were clean too, at 255).
# - under triton 3.6 (the GPU machine's) the full sm_90 report found more: the 16x32 dK / dV
#   tiles at 256 left 16-32 B of stack at ptxas's occupancy caps (128 / 168 registers) with a
#   softcap or window + softcap + ALiBi, and dQ at 128 (64x32 w4 s2) spilled 8 B with every
#   variant on the Hopper path. dV takes maxnreg=255 (clean on 3.6 and 3.9); dK takes it on 3.6
#   only (on 3.9 the directive made ptxas spill 136 B with packed sequences, without it the
#   tile is clean): the table follows the installed triton there, as the float32 dK/dV does;
#   dQ at 128 takes 64x32 on 8 warps (clean on both, wgmma; 64x16 w4 left 8 B on sm_80 with 3.9).
# Every other launch keeps its default table.
SCORE_VARIANT_SWITCHES = ("WINDOW", "SOFTCAP", "ALIBI", "DROPOUT")
VARIANT_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {
    ("forward", 64, False): (_R(128, 64, 8, 3),),  # a softcap: 24 B of stack at 128 registers on sm_80
    ("forward", 128, False): (KernelConfig(128, 32, 8, 3),),
    ("backward_dq", 128, False): (KernelConfig(64, 32, 8, 2),),
    ("backward_dk", 256, False): (_R(16, 32, 8, 2) if _TRITON_36 else KernelConfig(16, 32, 8, 2),),
    ("backward_dv", 256, False): (_R(16, 32, 4, 2),),
}
DROPOUT_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {
    ("backward_dkdv", 128, False): (KernelConfig(16, 64, 8, 2),),
    ("backward_dq", 256, False): (KernelConfig(64, 16, 8, 2),),
    ("forward", 256, False): (KernelConfig(64, 16, 8, 2),),
}
MMA_SYNC_VARIANT_LAUNCHES = {("backward_dk", 256), ("backward_dv", 256)}
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


def configs_for(kernel: str, head_dim: int, dtype: torch.dtype, *, variants: bool = False,
                dropout: bool = False) -> tuple[KernelConfig, ...]:
    """The configurations the autotuner may pick for ``kernel`` at this head dim and dtype
    (``kernel``: a name of ``KERNEL_NAMES`` or of ``DKDV_LAUNCHES``). ``variants``: the
    launch has a score variant on (``SCORE_VARIANT_SWITCHES``), ``dropout`` (implies it):
    DROPOUT itself; each has a table of its own where the default tile spills
    (``DROPOUT_TABLE`` first, then ``VARIANT_TABLE``)."""
    bucket = head_dim_bucket(head_dim)
    key = (kernel, bucket, dtype == torch.float32)
    if dropout and key in DROPOUT_TABLE:
        return DROPOUT_TABLE[key]
    if (variants or dropout) and key in VARIANT_TABLE:
        return VARIANT_TABLE[key]
    if kernel in DKDV_LAUNCHES:
        kernel = "backward_dkdv"
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
    if dtype == torch.float32 and padded_head_dim(head_dim) == 16 and kernel in _FLOAT32_HEAD_DIM_16:
        return _FLOAT32_HEAD_DIM_16[kernel]
    return _TABLE[(kernel, bucket, dtype == torch.float32)]


def all_triton_configs(kernel: str) -> list[triton.Config]:
    """Every configuration of ``kernel`` in any table, the tuning candidates included (what
    ``triton.autotune`` is given; ``config_pruner`` cuts it down per call)."""
    seen: list[KernelConfig] = []
    for (name, _, _), table in _TABLE.items():
        seen.extend(c for c in table if name == kernel and c not in seen)
    seen.extend(c for c in _FLOAT32_HEAD_DIM_16.get(kernel, ()) if c not in seen)
    for (name, _, _), table in (*DROPOUT_TABLE.items(), *VARIANT_TABLE.items()):
        seen.extend(c for c in table if (name if name in KERNEL_NAMES else "backward_dkdv") == kernel
                    and c not in seen)
    seen.extend(c for c in CANDIDATE_SPACE.get(kernel, ()) if c not in seen)
    return [c.as_triton() for c in seen]


_FORCED: dict[str, KernelConfig] = {}


def force_config(kernel: str, config: KernelConfig | None) -> None:
    """Make every launch of ``kernel`` (a launch name) use ``config`` (None: back to normal).
    `flashref tune` measures candidates this way; clear the autotuners' caches after it."""
    if config is None:
        _FORCED.pop(kernel, None)
    else:
        _FORCED[kernel] = config


def interpreter_config(kernel: str) -> KernelConfig:
    """The launch configuration of ``kernel`` (a launch name: "forward", "backward_dkdv",
    "backward_dk", "backward_dv", "backward_dq", "decode") under Triton's interpreter: the
    forced one (``force_config``; the gate's tile cases run every block size the tables hold
    this way), else ``INTERPRETER_CONFIG`` (``INTERPRETER_DECODE_CONFIG`` for decode). A split
    dK / dV pass falls back to the dK/dV kernel's."""
    if kernel in _FORCED:
        return _FORCED[kernel]
    if kernel in ("backward_dk", "backward_dv") and "backward_dkdv" in _FORCED:
        return _FORCED["backward_dkdv"]
    return INTERPRETER_DECODE_CONFIG if kernel == "decode" else INTERPRETER_CONFIG


@contextmanager
def forced_configs(configs: dict[str, KernelConfig]):
    """Within this block each launch named in ``configs`` uses its config (``force_config``);
    what was forced before is restored afterwards."""
    saved = {name: _FORCED.get(name) for name in configs}
    try:
        for name, config in configs.items():
            force_config(name, config)
        yield
    finally:
        for name, config in saved.items():
            force_config(name, config)


def config_pruner(kernel: str):
    """An ``early_config_prune`` hook: a forced config (tuning), else this device's tuned
    config for the call (``tuned_config``), else the default table for its head dim and dtype."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        name = kernel
        if kernel == "backward_dkdv":
            name = {g: n for n, g in DKDV_LAUNCHES.items()}.get(args.get("GRADS", "dkdv"), kernel)
        q = args["Q"]
        dropout = bool(args.get("DROPOUT"))
        variants = any(bool(args.get(switch)) for switch in SCORE_VARIANT_SWITCHES)
        # Tuning measures launches without score variants: those keep their gate-checked table.
        chosen = None if variants else (
            _FORCED.get(name) or tuned_config(name, args["HEAD_DIM"], q.dtype, bool(args.get("CAUSAL")), q.device))
        defaults = configs_for(name, args["HEAD_DIM"], q.dtype, variants=variants, dropout=dropout)
        for wanted in ((chosen,) if chosen else (), defaults):  # a stale tuned entry: the defaults
            kept = [c for c in configs if KernelConfig.of_triton(c) in wanted]
            if kept:
                return kept
        raise ValueError(f"no launch configuration for {name} at head dim {args['HEAD_DIM']}")

    return prune


# ---------------------------------------------------------------------------------------------
# The tuning space: what `flashref tune` measures on a GPU (docs/tuning.md).
#
# The candidates span what the anchors use (Triton's fused-attention tutorial, FlashAttention-2/3):
# forward and dQ with a tall query tile, dK/dV with a tall key tile, 2-4 pipeline stages, one or
# two warpgroups. Most of them spill or overflow shared memory at some head dim; the compile gate
# prunes them ahead of time, per arch, into kernels/tables/<arch>.json (committed data, made by
# `flashref compile-report --arch ARCH --prune-table`), so a GPU hour only measures
# configurations that compile clean. 16-bit only: float32 is the exactness path, not tuned.
BUCKETS = (64, 128, 256)


def head_dim_bucket(head_dim: int) -> int:
    """The bucket of ``BUCKETS`` a head dim's tables live in: the smallest that holds its padded width."""
    return min(b for b in BUCKETS if padded_head_dim(head_dim) <= b)

DKDV_TILES = ((16, 64), (32, 64), (64, 64), (16, 128), (32, 128), (64, 128))  # (query rows, key rows)
CANDIDATE_SPACE = {
    "forward": [_C(m, n, w, s) for m, n, s, w in product((64, 128), (32, 64, 128), (2, 3, 4), (4, 8))],
    "backward_dq": [_C(m, n, w, s) for m, n, s, w in product((64, 128), (32, 64), (2, 3), (4, 8))],
    "backward_dkdv": [_C(m, n, w, s) for (m, n), s, w in product(DKDV_TILES, (1, 2, 3), (4, 8))],
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
    defaults = configs_for(kernel, head_dim, torch.bfloat16)
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


# ---------------------------------------------------------------------------------------------
# Tuned tables: what `flashref tune` measured on one device (docs/tuning.md). One JSON file per
# (device name, compute capability, triton version) in kernels/tuned/; the dispatcher reads the
# file of the device it runs on first and falls back to the untuned defaults otherwise.
TUNED_DIR = Path(__file__).parent / "tuned"
TUNED_SCHEMA = "flashref.tuned/1"
ARCH_OF_CAPABILITY = {(9, 0): "sm_90", (8, 0): "sm_80"}


def tuned_file_name(device_name: str, capability: tuple[int, int], triton_version: str) -> str:
    """``nvidia-h200-sm90-triton3.6.0.json``: the file a device's tuned table lives in."""
    slug = "".join(ch if ch.isalnum() or ch == "." else "-" for ch in device_name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug}-sm{capability[0]}{capability[1]}-triton{triton_version}.json"


def tuned_key(kernel: str, head_dim: int, dtype: str, causal: bool) -> str:
    """An entry's key: launch name, head-dim bucket, dtype name, causal flag."""
    bucket = head_dim_bucket(head_dim)
    return f"{kernel}/{bucket}/{dtype}/{'causal' if causal else 'full'}"


def validate_tuned(table: dict) -> None:
    """Raise ValueError unless ``table`` is a well-formed tuned table."""
    def fail(why):
        raise ValueError(f"not a {TUNED_SCHEMA} table: {why}")

    if table.get("schema") != TUNED_SCHEMA:
        fail(f"schema is {table.get('schema')!r}")
    for field, kind in (("device", str), ("capability", list), ("triton", str), ("entries", dict)):
        if not isinstance(table.get(field), kind):
            fail(f"{field!r} must be a {kind.__name__}")
    if len(table["capability"]) != 2 or not all(isinstance(x, int) for x in table["capability"]):
        fail("capability must be [major, minor]")
    for key, entry in table["entries"].items():
        kernel, bucket, dtype, causal = (key.split("/") + [None] * 4)[:4]
        if (kernel not in KERNEL_NAMES and kernel not in DKDV_LAUNCHES or bucket not in {str(b) for b in BUCKETS}
                or dtype not in ("float16", "bfloat16") or causal not in ("causal", "full")):
            fail(f"bad entry key {key!r} (kernel/bucket/dtype/causal|full)")
        try:
            KernelConfig(**entry["config"])
        except (KeyError, TypeError) as err:
            fail(f"entry {key!r}: config {entry.get('config')!r} ({err})")


@lru_cache(maxsize=None)
def load_tuned(device_name: str, capability: tuple[int, int], triton_version: str) -> dict | None:
    """The committed tuned table of exactly this device, capability and triton, or None."""
    path = TUNED_DIR / tuned_file_name(device_name, capability, triton_version)
    if not path.exists():
        return None
    table = json.loads(path.read_text())
    validate_tuned(table)
    return table


def tuned_config(kernel: str, head_dim: int, dtype: torch.dtype, causal: bool, device: torch.device):
    """The tuned config for this launch on ``device`` (a CUDA device), or None: unknown
    device, another triton, float32, or a shape group the tuning did not reach."""
    if device.type != "cuda" or dtype == torch.float32:
        return None
    table = load_tuned(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)),
                       triton.__version__)
    if table is None:
        return None
    entry = table["entries"].get(tuned_key(kernel, head_dim, str(dtype).removeprefix("torch."), causal))
    return KernelConfig(**entry["config"]) if entry else None


def tuned_configs_for_arch(kernel: str, head_dim: int, dtype: torch.dtype, arch: str) -> tuple[KernelConfig, ...]:
    """Every config a committed tuned table (of any device of ``arch``) picks for this kernel,
    head dim and dtype: specializations the dispatcher can launch, so the compile gate
    compiles them too."""
    if dtype == torch.float32 or not TUNED_DIR.exists():
        return ()
    found = []
    for path in sorted(TUNED_DIR.glob("*.json")):
        table = json.loads(path.read_text())
        if ARCH_OF_CAPABILITY.get(tuple(table.get("capability", ()))) != arch:
            continue
        for causal in ("causal", "full"):
            key = tuned_key(kernel, head_dim, str(dtype).removeprefix("torch."), causal == "causal")
            if key in table.get("entries", {}):
                found.append(KernelConfig(**table["entries"][key]["config"]))
    return tuple(dict.fromkeys(found))


def dispatcher_configs(kernel: str, head_dim: int, dtype: torch.dtype, arch: str, *, variants: bool = False,
                       dropout: bool = False) -> tuple[KernelConfig, ...]:
    """What the dispatcher can launch on ``arch``: the default table, then tuned winners
    (a launch with a score variant: its table only, see ``config_pruner``)."""
    if variants or dropout:
        return configs_for(kernel, head_dim, dtype, variants=variants, dropout=dropout)
    return tuple(dict.fromkeys([*configs_for(kernel, head_dim, dtype),
                                *tuned_configs_for_arch(kernel, head_dim, dtype, arch)]))


def tuned_outside_tables(table: dict) -> list[str]:
    """The entries of a tuned table whose config is neither the untuned default nor in its
    arch's gate-pruned table (``tuning_configs``): each would launch a config that the
    compile gate never passed. Empty for a sound table."""
    validate_tuned(table)
    arch = ARCH_OF_CAPABILITY.get(tuple(table["capability"]))
    if arch is None:
        return [f"capability {table['capability']} has no compile-gated table (sm_90, sm_80)"]
    bad = []
    for key, entry in table["entries"].items():
        kernel, bucket = key.split("/")[:2]
        if KernelConfig(**entry["config"]) not in tuning_configs(kernel, int(bucket), arch):
            bad.append(f"{key}: {entry['config']} is not in {arch}'s gate-pruned table")
    return bad
