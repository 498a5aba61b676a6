"""The compile gate: build every kernel specialization for Hopper, Ampere and Blackwell
(sm_90, sm_80, sm_100, sm_120: ``ARCHS``) on a CPU-only machine.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs Triton's whole
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas -> cubin) without a GPU; the wheel carries
``ptxas`` and ``cuobjdump``. Each compiled specialization gives one ``CompileRow``:
registers per thread, spilled bytes (both from ``cuobjdump --dump-resource-usage`` on the
cubin: "REG", and "LOCAL"/"STACK" which on these kernels are register spills), dynamic shared
memory (``metadata.shared``), and which MMA instruction the PTX uses (``mma_instruction``:
Blackwell's ``tcgen05``, Hopper's ``wgmma``, ``mma.sync``, or none).

A specialization is what the dispatcher (``flash_attention.py``) can launch: a kernel, a
head dim, a dtype, causal or not, and one configuration of ``tile_tables.configs_for``. Where the
dK/dV kernel is launched once per gradient (``tile_tables.dkdv_passes``: head dims above 128)
each launch is its own row, named "backward_dk" and "backward_dv". Strides of
the head axis are 1 and pointers/other strides 16-divisible, as the JIT specializes them for
contiguous torch tensors. Works with triton 3.6 and 3.9 (same API).
"""

import dataclasses
import functools
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Mapping

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention_blocks
from .attention_decode import decode_tile
from .launch import DELTA_BLOCK_M, DELTA_WARPS, FLOAT32_DOT_PRECISION
from .config_dispatch import dispatcher_configs
from .tile_tables import (
    BUCKETS,
    DKDV_LAUNCHES,
    DROPOUT_TABLE,
    KERNEL_NAMES,
    MMA_SYNC_VARIANT_LAUNCHES,
    REGISTERS_PER_THREAD,
    SCORE_VARIANT_SWITCHES,
    VARIANT_TABLE,
    KernelConfig,
    configs_for,
    dkdv_passes,
    head_dim_bucket,
    padded_head_dim,
)
from .tuning_space import TABLE_SCHEMA, accumulator_registers, candidate_configs

ARCHS = {"sm_90": 90, "sm_80": 80, "sm_100": 100, "sm_120": 120}
# Dynamic shared memory one program (block) may use, bytes: the opt-in maximum per block, from
# the CUDA C++ Programming Guide's "Technical Specifications per Compute Capability" table
# ("Maximum amount of shared memory per thread block"): 9.0 and 10.0 227 KB, 8.0 163 KB,
# 12.0 99 KB (228 / 164 / 100 KB per SM, less the 1 KB the driver reserves per block).
SHARED_MEMORY_LIMITS = {"sm_90": 232448, "sm_80": 166912, "sm_100": 232448, "sm_120": 101376}
# The MMA instruction family each arch's 16-bit dots must use (``mma_instruction``): Hopper's
# warpgroup MMA, Blackwell datacenter's tcgen05 (accumulator in tensor memory); sm_80 and the
# consumer Blackwell sm_120 have only the warp-level mma.sync, so there is nothing to miss.
TENSOR_CORE_MMA = {"sm_90": "wgmma", "sm_100": "tcgen05"}
# Where the dispatcher takes the tensor-descriptor path (kernels/launch.py ``tma_ok``).
TMA_ARCHS = ("sm_90", "sm_100")
# 16-bit dots must lower to Hopper's wgmma; float32 takes exact ("ieee") FMA dots, no MMA.
WGMMA_DTYPES = ("float16", "bfloat16")
# Head dims the gate compiles: every padded width (16..256) and the non-powers of two that
# models use (each is its own specialization: HEAD_DIM is a constexpr).
GATE_HEAD_DIMS = (16, 32, 40, 64, 80, 96, 112, 128, 160, 192, 256)
# The widest head dim of each padded-width bucket of tile_tables.py: where a variant's extra
# registers bite first.
BUCKET_HEAD_DIMS = (64, 128, 256)
GATE_DTYPES = ("float16", "bfloat16", "float32")
# The FP8 forward (IS_FP8: float8_e4m3fn q, k, v, bfloat16 out): compiled on sm_90 only, where
# both of its products must be wgmma with e4m3 operands. sm_80 has no FP8 MMA (FP8 tensor cores
# start at sm_89): the dispatcher refuses FP8 there (kernels/checks.py) and so does the gate.
FP8_DTYPE = "float8_e4m3fn"
FP8_ARCHS = ("sm_90", "sm_100", "sm_120")
# The FP8 matrix product each of them must use: Hopper's wgmma with e4m3 operands, Blackwell's
# tcgen05 of kind f8f6f4 (operand types in its instruction descriptor), consumer Blackwell's
# warp-level mma.sync with e4m3 operands.
FP8_MMA = {"sm_90": "wgmma", "sm_100": "tcgen05", "sm_120": "mma.sync"}
# The most FP8 products an e4m3 wgmma may sum before float32 (the kernels' setting), and what a
# row without the TTGIR's number is taken to have: Triton's default, 2^30.
FP8_PRECISE_ACCUMULATION = attention_blocks.FP8_PRECISE_ACCUMULATION.value
FP8_IMPRECISE_ACC_UNSET = 2**30
DELTA_CONFIG = KernelConfig(block_m=DELTA_BLOCK_M, block_n=0, num_warps=DELTA_WARPS, num_stages=1)  # launch_backward's


@dataclass(frozen=True)
class Variant:
    """A set of the kernels' constexpr switches the dispatcher can turn on, as gate rows.

    ``constexprs``: (name, value) pairs over ``CONSTEXPR_DEFAULTS``; ``head_dims``: where the
    gate compiles it (each with every dtype, causal or not, every table config of every kernel
    that has all of these constexprs). To gate a new switch: give it its "off" value in
    ``CONSTEXPR_DEFAULTS`` and add a ``Variant`` to ``VARIANTS`` (docs/kernels.md)."""

    name: str
    constexprs: tuple[tuple[str, Any], ...] = ()
    head_dims: tuple[int, ...] = BUCKET_HEAD_DIMS
    archs: tuple[str, ...] = tuple(ARCHS)  # where the dispatcher can pick it
    dtypes: tuple[str, ...] = GATE_DTYPES
    # Every config of each table, or the default (first) one only: a switch changes the code,
    # a config the tiles; the plain and Hopper rows cover every tile, the other switches ride
    # on the default tile (keeps the full report a few hundred rows, not thousands).
    all_configs: bool = False
    # (D, Dv) pairs with a value head dim of its own (MLA): compiled instead of ``head_dims``
    # (D filtered by the ``head_dims`` axis), tiles chosen by max(D, Dv) as the dispatcher does.
    head_dim_pairs: tuple[tuple[int, int], ...] = ()

    @property
    def uses_tma(self) -> bool:
        return ("TMA", True) in self.constexprs


# The value each feature switch takes in the plain kernel. A kernel constexpr that is neither
# here nor set by the specialization (tile sizes, HEAD_DIM, ...) is an error: the gate must
# never compile a kernel with a switch it does not know about.
CONSTEXPR_DEFAULTS: dict[str, Any] = {
    "HAS_KV_LENS": False, "UPCAST": False, "SHIFT_KV_LEN": False, "LEFT_BOUND": False,
    "SOFTCAP": False, "ALIBI": False, "SINKS": False, "DROPOUT": False, "VARLEN": False, "TMA": False,
    "IS_FP8": False,
}
_KV_BOTTOM_RIGHT = (("HAS_KV_LENS", True), ("SHIFT_KV_LEN", True))
_VARLEN_ALL = (("VARLEN", True), ("SHIFT_KV_LEN", True), ("LEFT_BOUND", True), ("SOFTCAP", True), ("ALIBI", True),
               ("DROPOUT", True))
VARIANTS = (
    Variant("plain", head_dims=GATE_HEAD_DIMS, all_configs=True),
    Variant("kv_lens", (("HAS_KV_LENS", True),)),
    # The attention variants (issues 10, 14; docs/kernels.md): each alone, then combinations.
    Variant("kv_lens_bottom_right", _KV_BOTTOM_RIGHT),
    Variant("window", (("LEFT_BOUND", True),)),
    Variant("softcap", (("SOFTCAP", True),)),
    Variant("alibi", (("ALIBI", True),)),
    Variant("sinks", (("SINKS", True),)),  # forward and delta only: the other kernels need no switch
    Variant("dropout", (("DROPOUT", True),)),
    Variant("window_softcap_alibi_kv_lens", _KV_BOTTOM_RIGHT + (("LEFT_BOUND", True), ("SOFTCAP", True), ("ALIBI", True))),
    Variant("all_variants", _KV_BOTTOM_RIGHT + (("LEFT_BOUND", True), ("SOFTCAP", True), ("ALIBI", True),
                                                ("DROPOUT", True))),
    Variant("all_variants_sinks", _KV_BOTTOM_RIGHT + (("LEFT_BOUND", True), ("SOFTCAP", True), ("ALIBI", True),
                                                      ("DROPOUT", True), ("SINKS", True))),  # the forward
    # Packed sequences (issue 11, flash_attention_varlen): the prologue only; then with every variant.
    Variant("varlen", (("VARLEN", True),)),
    Variant("varlen_all_variants", _VARLEN_ALL),
    Variant("varlen_all_variants_sinks", _VARLEN_ALL + (("SINKS", True),)),  # the forward and delta
)
# The Hopper path (kernels/tile_loads.py): tiles through tensor descriptors. The dispatcher
# takes it on sm_90 and sm_100 (``TMA_ARCHS``) for 16-bit inputs only; its rows must show TMA
# bulk copies and the arch's MMA (wgmma, tcgen05). sm_120 has TMA too, but it is not taken
# there: it saved nothing (mma.sync kernels; the plain loads pipeline with cp.async).
VARIANTS += (
    Variant("tma", (("TMA", True),), head_dims=GATE_HEAD_DIMS, archs=TMA_ARCHS, dtypes=WGMMA_DTYPES,
            all_configs=True),
    Variant("tma_kv_lens", (("TMA", True), ("HAS_KV_LENS", True)), archs=TMA_ARCHS, dtypes=WGMMA_DTYPES),
    Variant("tma_all_variants", (("TMA", True),) + _KV_BOTTOM_RIGHT + (
        ("LEFT_BOUND", True), ("SOFTCAP", True), ("ALIBI", True), ("DROPOUT", True)), archs=TMA_ARCHS, dtypes=WGMMA_DTYPES),
)
# Value head dim != query/key head dim (issue 23, DeepSeek's MLA): the pairs models use.
MLA_HEAD_DIM_PAIRS = ((192, 128), (128, 64), (64, 128))
VARIANTS += (
    Variant("mla", head_dim_pairs=MLA_HEAD_DIM_PAIRS),
    Variant("mla_tma", (("TMA", True),), archs=TMA_ARCHS, dtypes=WGMMA_DTYPES, head_dim_pairs=MLA_HEAD_DIM_PAIRS),
)
# The FP8 forward (issue 23): every table tile at the bucket head dims, then with the masks and
# sinks it supports (its only kernel is the forward: no other kernel has IS_FP8).
VARIANTS += (
    Variant("fp8", (("IS_FP8", True),), archs=FP8_ARCHS, dtypes=(FP8_DTYPE,), all_configs=True),
    Variant("fp8_kv_lens_window_sinks", (("IS_FP8", True),) + _KV_BOTTOM_RIGHT + (("LEFT_BOUND", True), ("SINKS", True)),
            archs=FP8_ARCHS, dtypes=(FP8_DTYPE,)),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}
# Scalar arguments that are not i32 (the default), and pointers that are not q's dtype.
SCALAR_TYPES = {"qk_scale": "fp32", "softmax_scale": "fp32", "softcap_in": "fp32", "dropout_p": "fp32",
                "dropout_scale": "fp32", "seed": "i64"}
POINTER_TYPES = {"Lse": "*fp32", "Delta": "*fp32", "Alibi": "*fp32", "Sinks": "*fp32", "DSinks": "*fp32", "Descale": "*fp32",
                 "KvLens": "*i32", "CuSeqQ": "*i32", "CuSeqK": "*i32"}

_TRITON_TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", FP8_DTYPE: "fp8e4nv"}
_KERNEL_SYMBOLS = {
    "forward": ("attention_forward", "attention_forward_kernel"),
    "backward_dkdv": ("attention_backward", "attention_backward_dkdv_kernel"),
    "backward_dk": ("attention_backward", "attention_backward_dkdv_kernel"),
    "backward_dv": ("attention_backward", "attention_backward_dkdv_kernel"),
    "backward_dq": ("attention_backward", "attention_backward_dq_kernel"),
    "backward_delta": ("attention_backward", "attention_backward_delta_kernel"),
}


def triton_is_interpreting() -> bool:
    """True when triton itself was imported with TRITON_INTERPRET=1: its own library kernels
    (``tl.sum``, ``tl.cdiv``, ...) are then interpreter functions, and ``triton.compile``
    cannot build anything in this process. The gate then compiles in a fresh subprocess."""
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.sum, JITFunction)


def compilable_kernel(kernel: str):
    """The ``@triton.jit`` function of ``kernel`` (a JITFunction when not interpreting)."""
    module_name, symbol = _KERNEL_SYMBOLS[kernel]
    return getattr(importlib.import_module(f"{__package__}.{module_name}"), symbol)


@dataclass(frozen=True)
class CompileRow:
    """One compiled specialization and what it costs on the chip."""

    kernel: str
    arch: str
    head_dim: int
    dtype: str
    causal: bool
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int
    registers: int  # per thread
    shared_memory: int  # bytes of dynamic shared memory per program
    spills: int  # bytes of local memory per thread (register spills)
    uses_wgmma: bool
    compile_seconds: float
    variant: str = "plain"
    uses_tma: bool = False  # cp.async.bulk.tensor (Hopper's tensor-memory accelerator) in the PTX
    fp8_mma: int = 0  # FP8 matrix-product instructions in the PTX (``mma_counts``)
    other_mma: int = 0  # every other wgmma / tcgen05 / mma.sync instruction (16-bit, tf32 operands)
    maxnreg: int | None = None  # the config's .maxnreg (float32 launches: 255)
    # FP8 rows on sm_90: the largest maxNumImpreciseAcc of the e4m3 warpgroup dots (TTGIR)
    fp8_imprecise_acc: int | None = None
    head_dim_v: int | None = None  # V's head dim where it differs from head_dim (MLA rows)
    mma: str = ""  # the matrix-product instruction in the PTX (``mma_instruction``); "" unknown

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def problems(row: "CompileRow | Mapping[str, Any]") -> list[str]:
    """THE compile gate's verdict on one row: what disqualifies it, in short labels; a row
    passes iff the list is empty. ``flashref compile-report``, ``pytest -m compile`` and the
    table pruning all call this (a row may be a ``CompileRow`` or its dict, with ``error`` set
    when the specialization did not compile).

    - "does not compile": triton or ptxas raised;
    - "spills N B": any local memory per thread (register spills), for every dtype: float32
      is a correctness path, not an excused one;
    - "smem N > LIMIT B": more dynamic shared memory than one program may have on the arch;
    - "no wgmma": a 16-bit kernel with matrix products on sm_90 that misses Hopper's
      warpgroup MMA (it would run on the slower mma.sync path), unless ``mma_sync_by_design``;
    - "no tcgen05": the same on sm_100 for Blackwell's tensor-memory MMA (a row whose PTX
      uses wgmma or mma.sync instead: Triton fell back from tcgen05);
    - "no TMA": a row of the Hopper path (a variant with ``TMA``) on sm_90 or sm_100 whose PTX
      has no ``cp.async.bulk.tensor`` (the descriptors were lowered to plain loads);
    - "no FP8 wgmma" / "no FP8 tcgen05" / "no FP8 mma.sync": an FP8 row whose matrix products
      are not all the arch's FP8 MMA (``FP8_MMA``: e4m3 wgmma on sm_90, tcgen05 of kind f8f6f4
      on sm_100, e4m3 mma.sync on sm_120; Q K^T and P V: an operand upcast to 16 bits shows up
      as a 16-bit product, at half the throughput or less);
    - "FP8 imprecise accumulator": an FP8 row on sm_90 whose e4m3 wgmma may sum more than
      ``FP8_PRECISE_ACCUMULATION`` products in Hopper's narrow FP8 accumulator before they reach
      float32 (the TTGIR's ``maxNumImpreciseAcc``; Triton's default is 2^30: P V would then
      accumulate a whole row in ~14 bits, which the gate's float32 slack does not cover);
    - "FP8 on ARCH": an FP8 row on an arch the FP8 forward is not compiled for (``FP8_ARCHS``).
    """
    row = row.as_dict() if isinstance(row, CompileRow) else row
    if row.get("error"):
        return ["does not compile"]
    found = []
    arch = row["arch"]
    if row.get("spills", 0) > 0:
        found.append(f"spills {row['spills']} B")
    limit = SHARED_MEMORY_LIMITS[arch]
    if row.get("shared_memory", 0) > limit:
        found.append(f"smem {row['shared_memory']} > {limit} B")
    wanted = TENSOR_CORE_MMA.get(arch)
    if (wanted and row.get("dtype") in WGMMA_DTYPES and row.get("kernel") != "backward_delta"
            and not _uses(row, wanted) and not mma_sync_by_design(row)):
        found.append(f"no {wanted}")
    variant = VARIANT_BY_NAME.get(row.get("variant", "plain"))
    if variant is not None and variant.uses_tma and arch in TMA_ARCHS and not row.get("uses_tma"):
        found.append("no TMA")
    if row.get("dtype") == FP8_DTYPE:
        if arch not in FP8_ARCHS:
            found.append(f"FP8 on {arch}")
        elif row.get("fp8_mma", 0) == 0 or row.get("other_mma", 0) > 0:
            found.append(f"no FP8 {FP8_MMA[arch]}")
        elif arch == "sm_90" and (row.get("fp8_imprecise_acc") or FP8_IMPRECISE_ACC_UNSET) > FP8_PRECISE_ACCUMULATION:
            found.append("FP8 imprecise accumulator")
    return found


def _uses(row: Mapping[str, Any], instruction: str) -> bool:
    """Whether the row's PTX uses ``instruction`` ("wgmma", "tcgen05"); rows written before the
    ``mma`` field existed only know wgmma."""
    if row.get("mma"):
        return row["mma"] == instruction
    return instruction == "wgmma" and bool(row.get("uses_wgmma"))


def mma_instruction(ptx: str) -> str:
    """The matrix-product instruction family a kernel's PTX uses: "tcgen05" (Blackwell's
    ``tcgen05.mma``, accumulator in tensor memory), "wgmma" (Hopper's warpgroup MMA),
    "mma.sync" (warp-level, sm_80 onward), or "fma" when it has none (float32 "ieee" dots,
    the delta kernel)."""
    for instruction in ("tcgen05.mma", "wgmma", "mma.sync"):
        if instruction in ptx:
            return instruction.removesuffix(".mma")
    return "fma"


def mma_sync_by_design(row: Mapping[str, Any]) -> bool:
    """The score-variant launches whose only spill-free tile is too narrow for wgmma
    (``tile_tables.MMA_SYNC_VARIANT_LAUNCHES``): a row of a variant with a score switch on, of one of
    those launches, at exactly its variant table's tile; and the absorbed MLA decode rows above
    head dim 256 at ``attention_decode.decode_tile``'s tile (16 rows: the wgmma tile spills, see there)."""
    if row.get("kernel") == "decode_split" and row.get("variant", "").endswith("_absorbed") and row["head_dim"] > 256:
        tile = decode_tile(row["head_dim"], row["dtype"], True, row.get("head_dim_v"), True)
        return (row["BLOCK_M"], row["BLOCK_N"], row["num_warps"]) == tile
    variant = VARIANT_BY_NAME.get(row.get("variant", "plain"))
    if variant is None or not {name for name, on in variant.constexprs if on} & set(SCORE_VARIANT_SWITCHES):
        return False
    bucket = head_dim_bucket(row["head_dim"])
    if (row["kernel"], bucket) not in MMA_SYNC_VARIANT_LAUNCHES:
        return False
    tile = KernelConfig(row["BLOCK_M"], row["BLOCK_N"], row["num_warps"], row["num_stages"], row.get("maxnreg"))
    key = (row["kernel"], bucket, row["dtype"] == "float32")
    return tile in DROPOUT_TABLE.get(key, ()) + VARIANT_TABLE.get(key, ())


def passes(row: "CompileRow | Mapping[str, Any]") -> bool:
    """True iff the gate accepts the row (``problems`` is empty)."""
    return not problems(row)


@dataclass(frozen=True)
class Specialization:
    kernel: str
    head_dim: int
    dtype: str
    causal: bool
    config: KernelConfig
    variant: str = "plain"
    head_dim_v: int | None = None  # V's head dim Dv where it is not head_dim (MLA)


def launch_names(kernel: str, head_dim: int) -> tuple[str, ...]:
    """The gate's names for the launches ``kernel`` makes at ``head_dim``: the dK/dV kernel is
    "backward_dk" + "backward_dv" where it runs once per gradient, any other kernel itself.
    Asked for one pass by name ("backward_dk"), it is empty at head dims that have no such pass."""
    if kernel not in DKDV_LAUNCHES:
        return (kernel,)
    names = tuple(name for grads in dkdv_passes(head_dim)
                  for name, g in DKDV_LAUNCHES.items() if g == grads)
    return names if kernel == "backward_dkdv" else tuple(n for n in names if n == kernel)


def _kernel_constexprs(kernel: str) -> set[str]:
    """The names of ``kernel``'s constexpr parameters (read from its source signature, so it
    works whether or not the kernels were decorated under the interpreter)."""
    import inspect

    fn = compilable_kernel(kernel)
    fn = getattr(fn, "fn", fn)  # JITFunction / InterpretedFunction wrap the Python function
    return {name for name, p in inspect.signature(fn).parameters.items()
            if "constexpr" in str(p.annotation)}


def variant_applies(variant: Variant, kernel: str) -> bool:
    """A variant is compiled for the kernels that have every one of its switches."""
    names = _kernel_constexprs(kernel)
    return all(name in names for name, _ in variant.constexprs)


def specializations(head_dims=GATE_HEAD_DIMS, dtypes=GATE_DTYPES + (FP8_DTYPE,), causal=(False, True),
                    kernels=KERNEL_NAMES + ("backward_delta",), variants=None,
                    configs=None, arch="sm_90") -> list[Specialization]:
    """Every (kernel, head dim, dtype, causal, config, variant) the dispatcher can launch, for
    the given axes. ``variants``: names from ``VARIANTS`` (default all), each compiled at its
    own head dims (intersected with ``head_dims``); ``configs``: a function
    ``(kernel, head_dim, torch dtype, switches on) -> configs`` (default
    ``config_dispatch.dispatcher_configs`` on ``arch``: the default tables and the committed tuned
    winners for that arch; a variant with a score switch on takes its table, as the
    dispatcher's pruner does). The delta kernel has no causal or variant form and one config."""
    configs = configs or (lambda kernel, d, dtype, switches, head_dim_v=None: (
        functools.partial(configs_for if "IS_FP8" in switches else dispatcher_configs, arch=arch))(
            kernel, d, dtype, variants=bool(switches & set(SCORE_VARIANT_SWITCHES)),
            dropout="DROPOUT" in switches, head_dim_v=head_dim_v))
    chosen = [VARIANT_BY_NAME[v] for v in (variants or VARIANT_BY_NAME)]
    specs = []
    for variant in chosen:
        if arch not in variant.archs:
            continue
        pairs = (tuple((d, dv) for d, dv in variant.head_dim_pairs if d in head_dims) if variant.head_dim_pairs
                 else tuple((d, None) for d in head_dims if d in variant.head_dims))
        for kernel, (d, dv), dt in product(kernels, pairs, dtypes):
            if dt not in variant.dtypes:
                continue
            if kernel == "backward_delta":
                # Its switches are SINKS (the dsinks partial sums) and VARLEN (packed rows); it
                # reduces over Dv alone, so the MLA pairs add no row of its own.
                if variant.name in ("plain", "sinks", "varlen", "varlen_all_variants_sinks"):
                    specs.append(Specialization(kernel, d, dt, False, DELTA_CONFIG, variant.name))
                continue
            if not variant_applies(variant, kernel):
                continue
            switches = {name for name, on in variant.constexprs if on}
            wide = max(d, dv or d)  # the launches of max(D, Dv); tiles as config_dispatch.config_pruner
            for name, c in product(launch_names(kernel, wide), causal):
                # FP8 launches the 16-bit tables, untuned (config_dispatch.config_pruner).
                table_dtype = torch.bfloat16 if dt == FP8_DTYPE else getattr(torch, dt)
                chosen_configs = (configs(name, d, table_dtype, switches) if dv is None
                                  else configs(name, d, table_dtype, switches, head_dim_v=dv))
                for config in chosen_configs if variant.all_configs else chosen_configs[:1]:
                    specs.append(Specialization(name, d, dt, c, config, variant.name, dv))
    return specs


def _signature(fn, spec: Specialization):
    """(signature, constexprs, attrs) for ASTSource: pointers typed by role, strides i32 (the
    head-axis strides fixed to 1), scalars by ``SCALAR_TYPES`` (i32 otherwise), constexprs
    from the spec, its variant and ``CONSTEXPR_DEFAULTS``."""
    elem = _TRITON_TYPE[spec.dtype]
    head_dim_v = spec.head_dim_v or spec.head_dim
    constexprs = {
        "HEAD_DIM": spec.head_dim,
        "BLOCK_D": padded_head_dim(spec.head_dim),
        "BLOCK_M": spec.config.block_m,
    }
    if spec.kernel != "backward_delta":
        constexprs.update(
            HEAD_DIM_V=head_dim_v, BLOCK_DV=padded_head_dim(head_dim_v),
            BLOCK_N=spec.config.block_n, RIGHT_BOUND=spec.causal,
            DOT_PRECISION=FLOAT32_DOT_PRECISION if spec.dtype == "float32" else "tf32")
    if spec.kernel in DKDV_LAUNCHES:
        constexprs["GRADS"] = DKDV_LAUNCHES[spec.kernel]
    switches = dict(CONSTEXPR_DEFAULTS)
    switches.update(VARIANT_BY_NAME[spec.variant].constexprs)
    signature, attrs = {}, {}
    for index, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            if name.startswith("stride_"):
                constexprs[name] = 1
            elif name not in constexprs:
                if name not in switches:
                    raise KeyError(f"the compile gate has no value for constexpr {name!r} of {fn.__name__}: "
                                   f"add its 'off' value to compile_gate.CONSTEXPR_DEFAULTS and a Variant row")
                constexprs[name] = switches[name]
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"  # head-axis stride: 1 for the tensors the gate models
            constexprs[name] = 1
        elif name.startswith("stride_"):
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in POINTER_TYPES:
            signature[name] = POINTER_TYPES[name]
            if POINTER_TYPES[name] == "*fp32" and name in ("Lse", "Delta"):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name[0].isupper():  # Q, K, V, Out, DOut, DQ, DK, DV
            signature[name] = "*bf16" if name == "Out" and spec.dtype == FP8_DTYPE else f"*{elem}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = SCALAR_TYPES.get(name, "i32")
    return signature, constexprs, attrs


# ---------------------------------------------------------------------------------------------
# Ahead-of-time pruning of the tuning candidates (tuning_space.CANDIDATE_SPACE) into a per-arch table.
#
# Each candidate is compiled at the widest head dim of its bucket, bfloat16 (float16 compiles
# to the same tiles), causal (the masked loop with the causal compare is the heavier one), as
# the variant a 16-bit launch runs on the arch (the Hopper "tma" path on sm_90, "plain" on sm_80); it enters the table iff ``problems`` passes it. Candidates whose float32 tiles alone
# exceed the register file (``tuning_space.accumulator_registers``) are rejected without compiling.
# A tuned winner is then compiled again at every head dim, dtype and causal flag by the full
# ``compile-report`` (it becomes a specialization the dispatcher can pick).
PRUNE_DTYPE, PRUNE_CAUSAL = "bfloat16", True
# What a 16-bit launch runs on each arch: the Hopper path (tensor descriptors) on sm_90.
PRUNE_VARIANT = {"sm_90": "tma", "sm_80": "plain", "sm_100": "tma", "sm_120": "plain"}


def table_groups(kernels=KERNEL_NAMES, buckets=BUCKETS) -> list[tuple[str, int]]:
    """The table's groups: (launch name, bucket), the dK/dV kernel as its launches there."""
    return [(name, bucket) for kernel in kernels for bucket in buckets for name in launch_names(kernel, bucket)]


def prune_specs(group: tuple[str, int], arch: str = "sm_90") -> tuple[list[Specialization], list[dict]]:
    """(the candidates of ``group`` to compile on ``arch``, the ones rejected by the register
    bound). They compile as the variant the dispatcher launches there (``PRUNE_VARIANT``)."""
    name, bucket = group
    to_compile, rejected = [], []
    for config in candidate_configs(name):
        need = accumulator_registers(name, config, bucket)
        if need > REGISTERS_PER_THREAD:
            rejected.append({"config": dataclasses.asdict(config),
                             "problems": [f"needs >= {need} registers/thread (float32 tiles alone; not compiled)"]})
        else:
            to_compile.append(Specialization(name, bucket, PRUNE_DTYPE, PRUNE_CAUSAL, config, PRUNE_VARIANT[arch]))
    return to_compile, rejected


def build_table(arch: str, rows: list[Mapping[str, Any]], rejected: Mapping[str, list[dict]],
                existing: Mapping[str, Any] | None = None) -> dict:
    """The table file's content: per group "name/bucket", the passing configs (best-first is
    the tuner's job: here fewest registers first) and the rejected ones with the gate's reasons.
    Groups of ``existing`` not recompiled now are kept (the pruning is resumable)."""
    tables = dict(existing["tables"]) if existing else {}
    rejects = dict(existing.get("rejected", {})) if existing else {}
    fresh: dict[str, list] = {}
    for key, entries in rejected.items():
        fresh.setdefault(key, [])
        rejects[key] = list(entries)
    for row in rows:
        key = f"{row['kernel']}/{row['head_dim']}"
        fresh.setdefault(key, [])
        config = {"block_m": row["BLOCK_M"], "block_n": row["BLOCK_N"],
                  "num_warps": row["num_warps"], "num_stages": row["num_stages"]}
        found = problems(row)
        if found:
            rejects.setdefault(key, []).append({"config": config, "problems": found})
        else:
            fresh[key].append({"config": config, "registers": row["registers"],
                               "shared_memory": row["shared_memory"]})
    for key, entries in fresh.items():
        tables[key] = sorted(entries, key=lambda e: (e["registers"], e["shared_memory"]))
    return {
        "schema": TABLE_SCHEMA,
        "arch": arch,
        "triton": triton.__version__,
        "command": f"flashref compile-report --arch {arch} --prune-table",
        "pruned_at": {"dtype": PRUNE_DTYPE, "causal": PRUNE_CAUSAL, "variant": PRUNE_VARIANT[arch],
                      "head_dim": "the bucket's widest (64, 128, 256)"},
        "tables": dict(sorted(tables.items())),
        "rejected": dict(sorted(rejects.items())),
    }


def _cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the (single) function in a cubin, via cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    usage = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    if "REG" not in usage:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    return usage


def compile_specialization(spec: Specialization, arch: str = "sm_90") -> CompileRow:
    """Compile one specialization for ``arch`` (a key of ``ARCHS``) and measure it."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    if spec.dtype == FP8_DTYPE and arch not in FP8_ARCHS:
        raise ValueError(f"{arch} has no FP8 MMA (FP8 tensor cores start at sm_89): the FP8 forward is refused "
                         f"there, by flash_attention and by the compile gate; FP8 compiles for {FP8_ARCHS}")
    if triton_is_interpreting():
        return _compile_in_subprocess([spec], arch)[0]
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    fn = compilable_kernel(spec.kernel)
    signature, constexprs, attrs = _signature(fn, spec)
    start = time.perf_counter()
    options = {"num_warps": spec.config.num_warps, "num_stages": spec.config.num_stages}
    if spec.config.maxnreg is not None:
        options["maxnreg"] = spec.config.maxnreg
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                              target=GPUTarget("cuda", ARCHS[arch], 32), options=options)
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    return CompileRow(
        kernel=spec.kernel, arch=arch, head_dim=spec.head_dim, dtype=spec.dtype, causal=spec.causal,
        BLOCK_M=spec.config.block_m, BLOCK_N=spec.config.block_n,
        num_warps=spec.config.num_warps, num_stages=spec.config.num_stages,
        registers=usage["REG"], shared_memory=int(compiled.metadata.shared),
        spills=usage.get("LOCAL", 0) + usage.get("STACK", 0),
        uses_wgmma="wgmma" in compiled.asm["ptx"],
        compile_seconds=round(seconds, 2), variant=spec.variant,
        uses_tma="cp.async.bulk.tensor" in compiled.asm["ptx"], maxnreg=spec.config.maxnreg,
        head_dim_v=spec.head_dim_v, fp8_imprecise_acc=fp8_imprecise_accumulation(compiled.asm["ttgir"]),
        mma=mma_instruction(compiled.asm["ptx"]), **mma_counts(compiled.asm["ptx"]))


def fp8_imprecise_accumulation(ttgir: str) -> int | None:
    """The largest ``maxNumImpreciseAcc`` of the FP8 warpgroup dots in a TTGIR text (None when it
    has none): how many FP8 products Hopper's wgmma may sum in its narrow accumulator before
    Triton adds them into float32 (``attention_blocks.FP8_PRECISE_ACCUMULATION``)."""
    counts = [int(n) for line in ttgir.splitlines() if "warp_group_dot " in line and "f8E4M3" in line
              for n in re.findall(r"maxNumImpreciseAcc = (\d+)", line)]
    return max(counts, default=None)


def mma_counts(ptx: str) -> dict[str, int]:
    """``fp8_mma``: the FP8 matrix-product instructions of a PTX text (``wgmma.mma_async ...
    .e4m3.e4m3``, ``mma.sync ... .e4m3.e4m3.f32``, ``tcgen05.mma ... kind::f8f6f4``);
    ``other_mma``: every other ``wgmma.mma_async``, ``tcgen05.mma`` or ``mma.sync``."""
    mmas = re.findall(r"\b(?:wgmma\.mma_async|tcgen05\.mma|mma\.sync)\S*", ptx)
    fp8 = sum(1 for m in mmas if ".e4m3.e4m3" in m or "kind::f8f6f4" in m)
    return {"fp8_mma": fp8, "other_mma": len(mmas) - fp8}


def compile_specializations(arch: str = "sm_90", **axes) -> list[CompileRow]:
    """Compile every specialization of ``specializations(**axes)`` for ``arch`` (in one
    subprocess when this process runs Triton's interpreter)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    specs = specializations(arch=arch, **axes)
    if triton_is_interpreting():
        return _compile_in_subprocess(specs, arch)
    return [compile_specialization(spec, arch) for spec in specs]


def _spec_to_json(spec: Specialization) -> dict:
    return {**dataclasses.asdict(spec), "config": dataclasses.asdict(spec.config)}


def _spec_from_json(d: dict) -> Specialization:
    return Specialization(d["kernel"], d["head_dim"], d["dtype"], d["causal"], KernelConfig(**d["config"]),
                          d.get("variant", "plain"), d.get("head_dim_v"))


def _compile_in_subprocess(specs: list[Specialization], arch: str) -> list[CompileRow]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    request = json.dumps({"arch": arch, "specs": [_spec_to_json(s) for s in specs]})
    done = subprocess.run([sys.executable, "-m", __name__], input=request, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compile subprocess failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return [CompileRow(**row) for row in json.loads(done.stdout)]


def _main() -> None:
    """Subprocess entry: a JSON request {"arch", "specs"} on stdin, JSON rows on stdout."""
    request = json.load(sys.stdin)
    rows = [compile_specialization(_spec_from_json(s), request["arch"]) for s in request["specs"]]
    json.dump([row.as_dict() for row in rows], sys.stdout)



# ---------------------------------------------------------------------------------------------
# The decoding kernels (kernels/attention_decode.py, issue 11): split-KV attention over a contiguous or
# paged cache (pack-GQA M tile) and the combine. Their own small table of rows: they have a
# signature of their own and one tile per head dim (``launch.launch_decode`` picks it,
# with ``attention_decode.decode_tile``, the dispatcher's tile rule, imported at the top).

DECODE_POINTER_TYPES = {"BlockTable": "*i32", "SeqLens": "*i32", "Alibi": "*fp32", "OutP": "*fp32",
                        "LseP": "*fp32", "Sinks": "*fp32", "Lse": "*fp32"}
DECODE_SCALAR_TYPES = {"qk_scale": "fp32", "softcap_in": "fp32"}


@dataclass(frozen=True)
class DecodeSpec:
    """One decoding specialization: kernel "decode_split" or "decode_combine", head dim,
    dtype, paged (page size 16) or contiguous, and the split kernel's tile."""

    kernel: str
    head_dim: int
    dtype: str
    paged: bool
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    variants: bool = False  # the split kernel with window, softcap and ALiBi on
    head_dim_v: int | None = None  # the value head dim where it differs from head_dim (MLA)
    absorbed: bool = False  # MLA's absorbed decode: the values are the cache's first head_dim_v columns

    @property
    def variant(self) -> str:
        return (("paged" if self.paged else "contiguous") + ("_window_softcap_alibi" if self.variants else "")
                + ("_absorbed" if self.absorbed else ""))


# MLA decode rows (issue 23): (D, Dv, absorbed): DeepSeek's absorbed latent cache (576 = 512 + 64
# rope) and a plain Dv != D pair (MLA prefill's 192 / 128 caches).
MLA_DECODE_PAIRS = ((576, 512, True), (192, 128, False))


def decode_specs(head_dims=BUCKET_HEAD_DIMS, dtypes=GATE_DTYPES, arch: str = "sm_90",
                 value_pairs=()) -> list[DecodeSpec]:
    """The dispatcher's decode launches on ``arch`` (``attention_decode.decode_tile``: the split kernel
    contiguous and paged, plain and with window + softcap + ALiBi on, and the combine, once per
    head dim and dtype); ``value_pairs``: also those of each (D, Dv, absorbed) (``MLA_DECODE_PAIRS``)."""
    specs = []
    rows = [(d, None, False) for d in head_dims] + [(d, dv, absorbed) for d, dv, absorbed in value_pairs]
    for (d, dv, absorbed), dt in product(rows, dtypes):
        block_m, block_n, warps = decode_tile(d, dt, ARCHS[arch] >= 90, dv, absorbed)  # launch.py: capability >= 9
        specs += [DecodeSpec("decode_split", d, dt, paged, block_m=block_m, block_n=block_n, num_warps=warps,
                             variants=variants, head_dim_v=dv, absorbed=absorbed)
                  for paged in (False, True) for variants in (False, True)]
        specs.append(DecodeSpec("decode_combine", d, dt, False, block_m=0, block_n=0, head_dim_v=dv))
    return specs


def _decode_signature(fn, spec: DecodeSpec):
    elem = _TRITON_TYPE[spec.dtype]
    dv = spec.head_dim_v or spec.head_dim
    if spec.kernel == "decode_split":
        # launch.launch_decode's: absorbed, BLOCK_D pads the rope columns D - Dv only.
        block_d = padded_head_dim(spec.head_dim - dv if spec.absorbed else spec.head_dim)
        constexprs = {"HEAD_DIM": spec.head_dim, "BLOCK_D": block_d, "HEAD_DIM_V": dv,
                      "BLOCK_DV": padded_head_dim(dv), "UPCAST": False, "ABSORBED": spec.absorbed}
        constexprs.update(BLOCK_M=spec.block_m, BLOCK_N=spec.block_n, GROUP=4, PAGE_SIZE=16 if spec.paged else 1,
                          PAGED=spec.paged, RIGHT_BOUND=True, LEFT_BOUND=spec.variants, SOFTCAP=spec.variants,
                          ALIBI=spec.variants,
                          DOT_PRECISION=FLOAT32_DOT_PRECISION if spec.dtype == "float32" else "tf32")
    else:  # the combine works in out's head dim Dv
        constexprs = {"HEAD_DIM": dv, "BLOCK_D": padded_head_dim(dv), "UPCAST": False, "BLOCK_S": 16, "SINKS": False}
    signature, attrs = {}, {}
    for index, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.startswith("stride_"):  # row / head / page strides: multiples of 16 (as the main gate's)
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in DECODE_POINTER_TYPES:
            signature[name] = DECODE_POINTER_TYPES[name]
        elif name[0].isupper():  # Q, KCache, VCache, Out
            signature[name] = f"*{elem}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = DECODE_SCALAR_TYPES.get(name, "i32")
    return signature, constexprs, attrs


def compile_decode(spec: DecodeSpec, arch: str = "sm_90") -> CompileRow:
    """Compile one decoding specialization for ``arch`` and measure it (as ``compile_specialization``)."""
    if triton_is_interpreting():
        raise RuntimeError("compile_decode needs triton imported without TRITON_INTERPRET")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    module = importlib.import_module(f"{__package__}.attention_decode")
    fn = getattr(module, f"{spec.kernel}_kernel")
    signature, constexprs, attrs = _decode_signature(fn, spec)
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", ARCHS[arch], 32),
                              options={"num_warps": spec.num_warps, "num_stages": 2})
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    return CompileRow(
        kernel=spec.kernel, arch=arch, head_dim=spec.head_dim, dtype=spec.dtype, causal=spec.kernel == "decode_split",
        BLOCK_M=spec.block_m, BLOCK_N=spec.block_n, num_warps=spec.num_warps, num_stages=2,
        registers=usage["REG"], shared_memory=int(compiled.metadata.shared),
        spills=usage.get("LOCAL", 0) + usage.get("STACK", 0), uses_wgmma="wgmma" in compiled.asm["ptx"],
        compile_seconds=round(seconds, 2), variant=spec.variant, mma=mma_instruction(compiled.asm["ptx"]),
        head_dim_v=spec.head_dim_v)


if __name__ == "__main__":
    _main()
