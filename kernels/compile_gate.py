"""The compile gate: build every kernel specialization for Hopper/Ampere on a CPU-only machine.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs Triton's whole
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas -> cubin) without a GPU; the wheel carries
``ptxas`` and ``cuobjdump``. Each compiled specialization gives one ``CompileRow``:
registers per thread, spilled bytes (both from ``cuobjdump --dump-resource-usage`` on the
cubin: "REG", and "LOCAL"/"STACK" which on these kernels are register spills), dynamic shared
memory (``metadata.shared``), and whether the PTX uses Hopper's ``wgmma`` instructions.

A specialization is what the dispatcher (``flash_attention.py``) can launch: a kernel, a
head dim, a dtype, causal or not, and one configuration of ``configs.configs_for``. Where the
dK/dV kernel is launched once per gradient (``configs.dkdv_passes``: head dims above 128)
each launch is its own row, named "backward_dk" and "backward_dv". Strides of
the head axis are 1 and pointers/other strides 16-divisible, as the JIT specializes them for
contiguous torch tensors. Works with triton 3.6 and 3.9 (same API).
"""

import dataclasses
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

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .flash_attention import FLOAT32_DOT_PRECISION
from .configs import DKDV_LAUNCHES, KERNEL_NAMES, KernelConfig, configs_for, dkdv_passes, padded_head_dim

ARCHS = {"sm_90": 90, "sm_80": 80}
HOPPER_SHARED_MEMORY_LIMIT = 232448  # bytes of dynamic shared memory per block on sm_90
AMPERE_SHARED_MEMORY_LIMIT = 166912  # sm_80 (A100)
# Head dims the gate compiles: every padded width (16..256) and the non-powers of two that
# models use (each is its own specialization: HEAD_DIM is a constexpr).
GATE_HEAD_DIMS = (16, 32, 40, 64, 80, 96, 112, 128, 160, 192, 256)
GATE_DTYPES = ("float16", "bfloat16", "float32")
DELTA_CONFIG = KernelConfig(block_m=64, block_n=0, num_warps=4, num_stages=1)

_TRITON_TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
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

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Specialization:
    kernel: str
    head_dim: int
    dtype: str
    causal: bool
    config: KernelConfig


def launch_names(kernel: str, head_dim: int) -> tuple[str, ...]:
    """The gate's names for the launches ``kernel`` makes at ``head_dim``: the dK/dV kernel is
    "backward_dk" + "backward_dv" where it runs once per gradient, any other kernel itself.
    Asked for one pass by name ("backward_dk"), it is empty at head dims that have no such pass."""
    if kernel not in DKDV_LAUNCHES:
        return (kernel,)
    names = tuple(name for grads in dkdv_passes(head_dim)
                  for name, g in DKDV_LAUNCHES.items() if g == grads)
    return names if kernel == "backward_dkdv" else tuple(n for n in names if n == kernel)


def specializations(head_dims=GATE_HEAD_DIMS, dtypes=GATE_DTYPES, causal=(False, True),
                    kernels=KERNEL_NAMES + ("backward_delta",)) -> list[Specialization]:
    """Every (kernel, head dim, dtype, causal, config) the dispatcher can launch, for the given
    axes. The delta kernel has no causal variant and one fixed config."""
    specs = []
    for kernel, d, dt in product(kernels, head_dims, dtypes):
        if kernel == "backward_delta":
            specs.append(Specialization(kernel, d, dt, False, DELTA_CONFIG))
            continue
        for name, c, config in product(launch_names(kernel, d), causal, configs_for(kernel, d, getattr(torch, dt))):
            specs.append(Specialization(name, d, dt, c, config))
    return specs


def _signature(fn, spec: Specialization):
    """(signature, constexprs, attrs) for ASTSource: pointers typed by role, strides i32 (the
    head-axis strides fixed to 1), scalars i32/fp32, constexprs from the spec."""
    elem = _TRITON_TYPE[spec.dtype]
    constexprs = {
        "HEAD_DIM": spec.head_dim,
        "BLOCK_D": padded_head_dim(spec.head_dim),
        "BLOCK_M": spec.config.block_m,
    }
    if spec.kernel != "backward_delta":
        constexprs.update(
            BLOCK_N=spec.config.block_n, CAUSAL=spec.causal, HAS_KV_LENS=False, UPCAST=False,
            DOT_PRECISION=FLOAT32_DOT_PRECISION if spec.dtype == "float32" else "tf32")
    if spec.kernel in DKDV_LAUNCHES:
        constexprs["GRADS"] = DKDV_LAUNCHES[spec.kernel]
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"
            constexprs[name] = 1
        elif name.startswith("stride_"):
            signature[name] = "i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("Lse", "Delta"):
            signature[name] = "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name == "KvLens":
            signature[name] = "*i32"
        elif name[0].isupper():  # Q, K, V, Out, DOut, DQ, DK, DV
            signature[name] = f"*{elem}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("qk_scale", "softmax_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature, constexprs, attrs


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
    """Compile one specialization for ``arch`` ("sm_90" or "sm_80") and measure it."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    if triton_is_interpreting():
        return _compile_in_subprocess([spec], arch)[0]
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    fn = compilable_kernel(spec.kernel)
    signature, constexprs, attrs = _signature(fn, spec)
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs, attrs),
        target=GPUTarget("cuda", ARCHS[arch], 32),
        options={"num_warps": spec.config.num_warps, "num_stages": spec.config.num_stages})
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    return CompileRow(
        kernel=spec.kernel, arch=arch, head_dim=spec.head_dim, dtype=spec.dtype, causal=spec.causal,
        BLOCK_M=spec.config.block_m, BLOCK_N=spec.config.block_n,
        num_warps=spec.config.num_warps, num_stages=spec.config.num_stages,
        registers=usage["REG"], shared_memory=int(compiled.metadata.shared),
        spills=usage.get("LOCAL", 0) + usage.get("STACK", 0),
        uses_wgmma="wgmma" in compiled.asm["ptx"],
        compile_seconds=round(seconds, 2))


def compile_specializations(arch: str = "sm_90", **axes) -> list[CompileRow]:
    """Compile every specialization of ``specializations(**axes)`` for ``arch`` (in one
    subprocess when this process runs Triton's interpreter)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {tuple(ARCHS)}, got {arch!r}")
    specs = specializations(**axes)
    if triton_is_interpreting():
        return _compile_in_subprocess(specs, arch)
    return [compile_specialization(spec, arch) for spec in specs]


def _spec_to_json(spec: Specialization) -> dict:
    return {**dataclasses.asdict(spec), "config": dataclasses.asdict(spec.config)}


def _spec_from_json(d: dict) -> Specialization:
    return Specialization(d["kernel"], d["head_dim"], d["dtype"], d["causal"], KernelConfig(**d["config"]))


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


if __name__ == "__main__":
    _main()
