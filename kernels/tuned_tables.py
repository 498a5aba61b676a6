"""Tuned tables: what ``flashref tune`` measured on one device (docs/tuning.md), read and written.

One JSON file per (device name, compute capability, triton version) in kernels/tuned/
(``tuned_file_name``), entries keyed "launch/bucket/dtype/causal|full" (``tuned_key``). The
dispatcher (kernels/config_dispatch.py) reads the file of the device it runs on first and falls
back to the untuned defaults otherwise; the compile gate compiles every config such a file
picks (``tuned_configs_for_arch``), and ``tuned_outside_tables`` says whether a file holds a
config the gate never passed.
"""

import json
from functools import lru_cache
from pathlib import Path

import torch
import triton

from .tile_tables import BUCKETS, DKDV_LAUNCHES, KERNEL_NAMES, KernelConfig, head_dim_bucket
from .tuning_space import tuning_configs

TUNED_DIR = Path(__file__).parent / "tuned"
TUNED_SCHEMA = "flashref.tuned/1"
ARCH_OF_CAPABILITY = {(9, 0): "sm_90", (8, 0): "sm_80", (10, 0): "sm_100", (12, 0): "sm_120"}


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


def tuned_outside_tables(table: dict) -> list[str]:
    """The entries of a tuned table whose config is neither the untuned default nor in its
    arch's gate-pruned table (``tuning_configs``): each would launch a config that the
    compile gate never passed. Empty for a sound table."""
    validate_tuned(table)
    arch = ARCH_OF_CAPABILITY.get(tuple(table["capability"]))
    if arch is None:
        return [f"capability {table['capability']} has no compile-gated table (sm_90, sm_80, sm_100, sm_120)"]
    bad = []
    for key, entry in table["entries"].items():
        kernel, bucket = key.split("/")[:2]
        if KernelConfig(**entry["config"]) not in tuning_configs(kernel, int(bucket), arch):
            bad.append(f"{key}: {entry['config']} is not in {arch}'s gate-pruned table")
    return bad


def write_tuned(table: dict, out_dir: Path) -> Path:
    """Write ``table`` as its device's file in ``out_dir``, keeping the entries of an existing
    file for the same device that this run did not measure."""
    validate_tuned(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / tuned_file_name(table["device"], tuple(table["capability"]), table["triton"])
    if path.exists():
        old = json.loads(path.read_text())
        table = {**table, "entries": {**old.get("entries", {}), **table["entries"]}}
    path.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    return path
