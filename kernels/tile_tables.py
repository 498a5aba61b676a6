"""The launch-configuration tables: which tiles each kernel may use, per head dim and dtype.

One row per (kernel, padded head-dim bucket 64 / 128 / 256, float32?), default first, and rows
of their own for the score variants where the default tile spills; ``configs_for`` reads them.
On a GPU each kernel is wrapped in ``triton.autotune`` over every configuration of every table,
and the autotuner's pruner (kernels/config_dispatch.py) cuts that down to the call's row, so a
configuration that does not fit (registers, shared memory) is never launched. The compile gate
(``kernels/compile_gate.py``) compiles every entry of every table for sm_90, sm_80, sm_100 and
sm_120 and fails on spills, which is what keeps these tables honest without a GPU. How each row was found (the
tiles that lost and what they spilled): docs/tile_tables.md.

The shapes follow what maps onto Hopper's ``wgmma`` (an M tile of 64 rows per warpgroup, so
BLOCK_M 64 with 4 warps or 128 with 8 warps / 4 warps x 2 tiles) and what FlashAttention-2
uses: a tall query tile in the forward and the dQ kernel, a tall key tile in the dK/dV kernel.
Under Triton's interpreter one small configuration is used (``INTERPRETER_CONFIG``):
autotuning cannot run there ("0 active drivers") and warps/stages mean nothing to it.
"""

from dataclasses import dataclass

import torch
import triton

KERNEL_NAMES = ("forward", "backward_dkdv", "backward_dq")
# The dK/dV kernel's launches by what they accumulate (its ``GRADS`` constexpr). A split pass
# ("backward_dk", "backward_dv") uses the dK/dV kernel's table.
DKDV_LAUNCHES = {"backward_dkdv": "dkdv", "backward_dk": "dk", "backward_dv": "dv"}
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
BUCKETS = (64, 128, 256)  # padded head dims: the tables' row keys
REGISTERS_PER_THREAD = 255  # the hardware's cap, and the ``.maxnreg`` of the rows that carry one


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

_C = KernelConfig


def _R(block_m: int, block_n: int, num_warps: int, num_stages: int) -> KernelConfig:
    """A launch that tells ptxas the full register file (docs/tile_tables.md, ".maxnreg 255")."""
    return KernelConfig(block_m, block_n, num_warps, num_stages, maxnreg=REGISTERS_PER_THREAD)


_TRITON_36 = triton.__version__.startswith("3.6")  # where 3.6 and 3.9 disagree, the installed one's row

# 16-bit rows (fp16 and bf16 share them), default first.
_SIXTEEN_BIT_UP_TO_128 = {
    "forward": (_C(128, 64, 8, 3), _R(64, 64, 4, 3), _C(64, 32, 4, 2)),
    "backward_dkdv": (_C(32, 64, 8, 2),),
    "backward_dq": (_C(64, 32, 4, 2), _R(64, 32, 4, 3)),
}
_SIXTEEN_BIT_UP_TO_64 = {**_SIXTEEN_BIT_UP_TO_128, "backward_dkdv": (_R(16, 64, 8, 1),)}
_SIXTEEN_BIT_256 = {
    "forward": (_C(64, 32, 8, 2), _C(64, 64, 8, 1)),
    "backward_dkdv": (_C(16, 64, 8, 2),),  # launched twice, dK then dV (dkdv_passes)
    "backward_dq": (_C(64, 32, 8, 2),),
}
# float32 rows: exact ("ieee") FMA dots on small tiles, every launch with maxnreg=255.
_F = _R
_FLOAT32_DKDV_UP_TO_64 = _F(16, 16, 8, 1) if _TRITON_36 else _F(16, 16, 4, 1)
_FLOAT32_BY_BUCKET = {
    64: {"forward": (_F(16, 16, 4, 1),), "backward_dkdv": (_FLOAT32_DKDV_UP_TO_64,), "backward_dq": (_F(16, 16, 8, 1),)},
    128: {"forward": (_F(16, 32, 8, 1),), "backward_dkdv": (_F(16, 16, 4, 1),), "backward_dq": (_F(16, 16, 8, 1),)},
    256: {"forward": (_F(16, 32, 8, 1),), "backward_dkdv": (_F(16, 32, 4, 1),), "backward_dq": (_F(16, 16, 8, 1),)},
}
_FLOAT32_HEAD_DIM_16 = {"backward_dkdv": (_F(16, 32, 4, 1),)}  # padded head dim 16 only

# (kernel, bucket, float32?) -> configs, default first.
_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {}
for _kernel in KERNEL_NAMES:
    _TABLE[(_kernel, 64, False)] = _SIXTEEN_BIT_UP_TO_64[_kernel]
    _TABLE[(_kernel, 128, False)] = _SIXTEEN_BIT_UP_TO_128[_kernel]
    _TABLE[(_kernel, 256, False)] = _SIXTEEN_BIT_256[_kernel]
    for _bucket in BUCKETS:
        _TABLE[(_kernel, _bucket, True)] = _FLOAT32_BY_BUCKET[_bucket][_kernel]

# Launches with a score variant on, where the default tile spills: (launch name, bucket,
# float32?) -> configs. Every other launch keeps its default table.
SCORE_VARIANT_SWITCHES = ("LEFT_BOUND", "SOFTCAP", "ALIBI", "DROPOUT")
VARIANT_TABLE: dict[tuple[str, int, bool], tuple[KernelConfig, ...]] = {
    ("forward", 64, False): (_R(128, 64, 8, 3),),
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
# A value head dim of its own (MLA): tiles come from the row of max(D, Dv), except where that
# tile spills for the pair: (launch, bucket of D, bucket of Dv, float32?) -> configs. (64, 128)
# on the 128 row's dK/dV tile 32 x 64 spilled 16-56 B on sm_80 (compile gate, variant "mla").
VALUE_HEAD_DIM_TABLE: dict[tuple[str, int, int, bool], tuple[KernelConfig, ...]] = {
    ("backward_dkdv", 64, 128, False): (KernelConfig(16, 64, 8, 2),),
}
# Rows of an arch whose shared row fails the compile gate there (spills): (launch name, bucket,
# float32?) -> configs, taken by ``configs_for(..., arch=ARCH)`` before the tables above (for
# launches without a score variant; ``ARCH_VARIANT_TABLES`` for those with one). The
# dispatcher's arch comes from the device's compute capability (``arch_of_capability``). Each
# row is an entry of the arch's gate-pruned table (kernels/tables/ARCH.json).
ARCH_TABLES: dict[str, dict[tuple[str, int, bool], tuple[KernelConfig, ...]]] = {
    # tcgen05 keeps the MMA accumulator in tensor memory, but Triton copies it back to
    # registers every iteration, and the dK/dV kernel's float32 accumulators live in registers:
    # the shared dK/dV tiles spilled causal (32 x 64 x 8 x 2 at 128: 232 B; 16 x 64 x 8 x 2 at
    # 256: dK 616 B, dV 88 B); one pipeline stage less holds them. A 32-key tile would not
    # spill but falls back to mma.sync (tcgen05's M is 64 or 128 rows: here the key tile).
    "sm_100": {
        ("backward_dkdv", 128, False): (_R(32, 64, 8, 1),),  # triton 3.6: 128 registers, 16 B spilled without .maxnreg
        ("backward_dk", 256, False): (_C(16, 64, 8, 1),),
        ("backward_dv", 256, False): (_R(16, 64, 8, 1),),
        # Without .maxnreg ptxas capped this tile at 128 registers on sm_100 and spilled 8 B
        # (TMA path); with it, 130 registers, clean.
        ("forward", 256, False): (_R(64, 32, 8, 2), _C(64, 64, 8, 1)),
        # The shared row's third tile, 64 x 32 x 4 x 2, spilled 8 B; with .maxnreg 255, 176 registers.
        ("forward", 128, False): (_C(128, 64, 8, 3), _R(64, 64, 4, 3), _R(64, 32, 4, 2)),
    },
    # mma.sync keeps the accumulators in registers: the shared (128, 64, 8, 3) spilled 120-128 B
    # at head dim 128 (as did every 128 x 64 tile, the 4-warp 128-row tiles and 64 x 64 x 4 x 3);
    # 128 x 32 with 8 warps holds them in 202 registers and 64 KiB of its 99.
    # The full sm_120 report (triton 3.9) found ptxas capping the smaller tiles at 128 registers
    # without .maxnreg: 64 x 32 x 4 x 2 at 40-64 spilled 8 B (154 registers with it), 64 x 64 x
    # 8 x 2 at 80-112 spilled 32 B (206 with it), and the FP8 forward's 128 x 64 x 8 x 3 at 64
    # spilled 8 B (the 16-bit one did not).
    "sm_120": {
        ("forward", 64, False): (_R(128, 64, 8, 3), _R(64, 64, 4, 3), _R(64, 32, 4, 2)),
        ("forward", 128, False): (_C(128, 32, 8, 3), _R(64, 64, 8, 2), _R(64, 32, 4, 2)),
        # dQ at 256: the shared 64 x 32 x 8 x 2 needs 102400 B of shared memory, 1 KiB over the
        # 99 KiB; one stage spilled 712 B; 64 x 16 with .maxnreg 255: 86016 B, 254 registers.
        ("backward_dq", 256, False): (_R(64, 16, 8, 2),),
    },
}
ARCH_VARIANT_TABLES: dict[str, dict[tuple[str, int, bool], tuple[KernelConfig, ...]]] = {
    # VARIANT_TABLE's dQ tile at 128 (64 x 32 x 8 x 2) was capped at 128 registers and spilled
    # 16 B (varlen with every variant); .maxnreg 255 holds it. The dK/dV kernel at 128 with a
    # score variant takes the arch's plain row (32 x 64 x 8 x 1, maxnreg 255: 148 registers, ALiBi).
    # The full sm_100 report: dQ at 64 with varlen and every variant (64 x 32 x 4 x 2) spilled
    # 16 B causal at 168 registers; with .maxnreg 255 the same 168, clean.
    "sm_100": {("backward_dq", 128, False): (_R(64, 32, 8, 2),), ("backward_dq", 64, False): (_R(64, 32, 4, 2),)},
    # VARIANT_TABLE's dK tile at 256 (16 x 32 x 8 x 2) was capped at 128 registers and spilled
    # 16 B (window + softcap + ALiBi); with .maxnreg 255 it still spilled 152 B with varlen and
    # every variant (full report); one stage: 165 registers, 48 KiB.
    "sm_120": {("backward_dk", 256, False): (_R(16, 32, 8, 1),)},
}
# The same for launches with DROPOUT on (before ``ARCH_VARIANT_TABLES``, as ``DROPOUT_TABLE``
# comes before ``VARIANT_TABLE``). sm_100, dQ at 256: DROPOUT_TABLE's 64 x 16 tile was capped
# at 128 registers by ptxas and spilled 24 B; with .maxnreg 255, 149 registers, clean.
ARCH_DROPOUT_TABLES: dict[str, dict[tuple[str, int, bool], tuple[KernelConfig, ...]]] = {
    # DROPOUT_TABLE's dK/dV tile at 128 (16 x 64 x 8 x 2) spilled 216-304 B; one stage less with
    # .maxnreg 255: 168-180 registers (varlen / TMA with every variant).
    # The full sm_100 report: the forward at 64 with dropout and every other variant (DROPOUT_TABLE's
    # 128 x 64 x 8 x 3, maxnreg 255) spilled 8-32 B; 128 x 32 x 8 x 3: 129-140 registers.
    "sm_100": {("backward_dq", 256, False): (_R(64, 16, 8, 2),), ("backward_dkdv", 128, False): (_R(16, 64, 8, 1),),
               ("forward", 64, False): (_R(128, 32, 8, 3),)},
    # sm_120: DROPOUT_TABLE's dQ tile at 256 spilled 16 B, and so did 64 x 16 x 8 x 2 with
    # .maxnreg 255 causal (full report): 32 x 16 x 8 x 2, 134 registers. The forward at 64 with
    # dropout (128 x 64 x 8 x 3, maxnreg 255) spilled 40 B causal: 128 x 32 x 8 x 3, 221 registers.
    "sm_120": {("backward_dq", 256, False): (_R(32, 16, 8, 2),), ("forward", 64, False): (_R(128, 32, 8, 3),)},
}
# The tables' arch of a compute capability's major version: Blackwell datacenter (10.x: B200,
# GB200, GB300) and consumer Blackwell (12.x: RTX 50xx) have rows of their own; Hopper 9.x.
ARCH_OF_MAJOR = {9: "sm_90", 10: "sm_100", 12: "sm_120"}

# 32-key tiles, too narrow for wgmma: with a score variant these run on mma.sync on Hopper too.
MMA_SYNC_VARIANT_LAUNCHES = {("backward_dk", 256), ("backward_dv", 256)}


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 16, tl.dot's smallest K) that a head dim is padded to."""
    return max(16, triton.next_power_of_2(head_dim))


def head_dim_bucket(head_dim: int) -> int:
    """The bucket of ``BUCKETS`` a head dim's tables live in: the smallest that holds its padded width."""
    return min(b for b in BUCKETS if padded_head_dim(head_dim) <= b)


def dkdv_passes(head_dim: int) -> tuple[str, ...]:
    """What each launch of the dK/dV kernel accumulates (its ``GRADS``), in launch order.

    Up to a padded head dim of 128 one launch holds both float32 ``BLOCK_N x D`` accumulators.
    At 256 they and the resident K, V tiles spill on sm_90 and sm_80 at every tile tried, so
    the kernel runs twice, dK then dV, each pass recomputing P (one more ``K Q^T`` product).
    """
    return ("dkdv",) if padded_head_dim(head_dim) <= 128 else ("dk", "dv")


def arch_of_capability(capability: tuple[int, int]) -> str | None:
    """The arch whose rows a device of this compute capability takes ("sm_100" for 10.x,
    "sm_120" for 12.x, "sm_90" for 9.x), or None: the shared tables only."""
    return ARCH_OF_MAJOR.get(capability[0])


def configs_for(kernel: str, head_dim: int, dtype: torch.dtype, *, variants: bool = False,
                dropout: bool = False, head_dim_v: int | None = None,
                arch: str | None = None) -> tuple[KernelConfig, ...]:
    """The configurations the autotuner may pick for ``kernel`` at this head dim and dtype
    (``kernel``: a name of ``KERNEL_NAMES`` or of ``DKDV_LAUNCHES``). ``variants``: the
    launch has a score variant on (``SCORE_VARIANT_SWITCHES``), ``dropout`` (implies it):
    DROPOUT itself; each has a table of its own where the default tile spills
    (``DROPOUT_TABLE`` first, then ``VARIANT_TABLE``). ``head_dim_v``: V's head dim where it
    differs (MLA): the rows of max(D, Dv), or the pair's own (``VALUE_HEAD_DIM_TABLE``).
    ``arch`` ("sm_100", ...): its rows of ``ARCH_TABLES`` / ``ARCH_DROPOUT_TABLES`` /
    ``ARCH_VARIANT_TABLES`` come first where it has one."""
    if head_dim_v is not None and head_dim_v != head_dim:
        pair = (kernel, head_dim_bucket(head_dim), head_dim_bucket(head_dim_v), dtype == torch.float32)
        if pair in VALUE_HEAD_DIM_TABLE and not (variants or dropout):
            return VALUE_HEAD_DIM_TABLE[pair]
        head_dim = max(head_dim, head_dim_v)
    bucket = head_dim_bucket(head_dim)
    key = (kernel, bucket, dtype == torch.float32)
    own = {name: tables.get(arch or "", {}) for name, tables in (
        ("dropout", ARCH_DROPOUT_TABLES), ("variants", ARCH_VARIANT_TABLES), ("plain", ARCH_TABLES))}
    if dropout:
        for table in (own["dropout"], DROPOUT_TABLE):
            if key in table:
                return table[key]
    if variants or dropout:
        for table in (own["variants"], VARIANT_TABLE):
            if key in table:
                return table[key]
    if key in own["plain"]:
        return own["plain"][key]
    if kernel in DKDV_LAUNCHES:
        kernel = "backward_dkdv"
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
    if dtype == torch.float32 and padded_head_dim(head_dim) == 16 and kernel in _FLOAT32_HEAD_DIM_16:
        return _FLOAT32_HEAD_DIM_16[kernel]
    return _TABLE[(kernel, bucket, dtype == torch.float32)]


def table_configs(kernel: str) -> list[KernelConfig]:
    """Every configuration of ``kernel`` (a name of ``KERNEL_NAMES``; the split dK / dV passes
    count as "backward_dkdv") in any table above, each once, in table order."""
    seen: list[KernelConfig] = []
    for (name, _, _), table in _TABLE.items():
        seen.extend(c for c in table if name == kernel and c not in seen)
    seen.extend(c for c in _FLOAT32_HEAD_DIM_16.get(kernel, ()) if c not in seen)
    arch_rows = [row for tables in (ARCH_TABLES, ARCH_VARIANT_TABLES, ARCH_DROPOUT_TABLES)
                 for rows in tables.values() for row in rows.items()]
    for name, table in ((k[0], t) for k, t in (*DROPOUT_TABLE.items(), *VARIANT_TABLE.items(),
                                                 *VALUE_HEAD_DIM_TABLE.items(), *arch_rows)):
        seen.extend(c for c in table if (name if name in KERNEL_NAMES else "backward_dkdv") == kernel
                    and c not in seen)
    return seen
