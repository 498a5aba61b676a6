"""Which launch configuration a launch gets: forced (``flashref tune``, the gate's tile cases),
else this device's tuned entry (kernels/tuned_tables.py), else its row of the tables
(kernels/tile_tables.py).

On a GPU each kernel is ``triton.autotune``d over ``all_triton_configs`` with ``config_pruner``
as its ``early_config_prune`` (kernels/launch.py); under Triton's interpreter the launch layer
asks ``interpreter_config``. ``dispatcher_configs`` lists what the dispatcher can launch on an
arch, for the compile gate to compile.
"""

from contextlib import contextmanager

import torch
import triton

from .tile_tables import (
    DKDV_LAUNCHES,
    INTERPRETER_CONFIG,
    INTERPRETER_DECODE_CONFIG,
    SCORE_VARIANT_SWITCHES,
    KernelConfig,
    arch_of_capability,
    configs_for,
    table_configs,
)
from .tuned_tables import tuned_config, tuned_configs_for_arch
from .tuning_space import CANDIDATE_SPACE

_FORCED: dict[str, KernelConfig] = {}


def force_config(kernel: str, config: KernelConfig | None) -> None:
    """Make every launch of ``kernel`` (a launch name) use ``config`` (None: back to normal).
    `flashref tune` measures candidates this way; clear the autotuners' caches after it."""
    if config is None:
        _FORCED.pop(kernel, None)
    else:
        _FORCED[kernel] = config


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


def all_triton_configs(kernel: str) -> list[triton.Config]:
    """Every configuration of ``kernel`` in any table, the tuning candidates included (what
    ``triton.autotune`` is given; ``config_pruner`` cuts it down per call)."""
    seen = table_configs(kernel)
    seen.extend(c for c in CANDIDATE_SPACE.get(kernel, ()) if c not in seen)
    return [c.as_triton() for c in seen]


def config_pruner(kernel: str):
    """An ``early_config_prune`` hook: a forced config (tuning), else this device's tuned
    config for the call (``tuned_config``), else the default table for its head dim (the larger
    of D and Dv) and dtype, with the rows of the device's arch (``tile_tables.arch_of_capability``:
    10.x sm_100, 12.x sm_120) first."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        name = kernel
        if kernel == "backward_dkdv":
            name = {g: n for n, g in DKDV_LAUNCHES.items()}.get(args.get("GRADS", "dkdv"), kernel)
        q = args["Q"]
        # Tiles are chosen by the wider of D and Dv (MLA's (192, 128) runs on the 256 row), or
        # by the pair's own row (tile_tables.VALUE_HEAD_DIM_TABLE).
        head_dim_v = args.get("HEAD_DIM_V", args["HEAD_DIM"])
        head_dim = max(args["HEAD_DIM"], head_dim_v)
        # FP8 runs the 16-bit tiles (its tiles are half the bytes: the 16-bit ones fit).
        dtype = torch.bfloat16 if args.get("IS_FP8") else q.dtype
        dropout = bool(args.get("DROPOUT"))
        variants = any(bool(args.get(switch)) for switch in SCORE_VARIANT_SWITCHES)
        # Tuning measures launches without score variants (nor FP8): those keep their gate-checked table.
        chosen = None if variants or args.get("IS_FP8") else (
            _FORCED.get(name) or tuned_config(name, head_dim, dtype, bool(args.get("RIGHT_BOUND")), q.device))
        arch = device_arch(q.device)
        defaults = configs_for(name, args["HEAD_DIM"], dtype, variants=variants, dropout=dropout,
                               head_dim_v=head_dim_v, arch=arch)
        for wanted in ((chosen,) if chosen else (), defaults):  # a stale tuned entry: the defaults
            kept = [c for c in configs if KernelConfig.of_triton(c) in wanted]
            if kept:
                return kept
        raise ValueError(f"no launch configuration for {name} at head dim {head_dim}")

    return prune


def device_arch(device: torch.device) -> str | None:
    """The tile tables' arch of a CUDA device (``arch_of_capability``), None elsewhere."""
    if device.type != "cuda":
        return None
    return arch_of_capability(tuple(torch.cuda.get_device_capability(device)))


def dispatcher_configs(kernel: str, head_dim: int, dtype: torch.dtype, arch: str, *, variants: bool = False,
                       dropout: bool = False, head_dim_v: int | None = None) -> tuple[KernelConfig, ...]:
    """What the dispatcher can launch on ``arch``: the default table, then tuned winners
    (a launch with a score variant: its table only, see ``config_pruner``); ``head_dim_v``:
    V's head dim where it differs (tuned entries are looked up at max(D, Dv))."""
    if variants or dropout:
        return configs_for(kernel, head_dim, dtype, variants=variants, dropout=dropout, head_dim_v=head_dim_v,
                           arch=arch)
    wide = max(head_dim, head_dim_v or head_dim)
    return tuple(dict.fromkeys([*configs_for(kernel, head_dim, dtype, head_dim_v=head_dim_v, arch=arch),
                                *tuned_configs_for_arch(kernel, wide, dtype, arch)]))
