"""What every report records: the environment (versions, device) and JSON that stays JSON.

Shared by the gate's reports (flashref/gate/reports.py), the benchmarks and the compile
report."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping

def json_safe(value: Any) -> Any:
    """JSON-safe: inf/nan become strings (JSON has no literal for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------- environment


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and device, as every report records them.

    Versions come from package metadata, so calling this imports neither torch's
    CUDA runtime nor triton (which must not be imported before the interpreter is
    chosen). The device needs torch, which is already loaded by the time a report
    is written.
    """
    import torch

    from flashref import __version__

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        device = {
            "kind": "cuda",
            "name": torch.cuda.get_device_name(index),
            "capability": f"sm_{major}{minor}",
            "cuda": torch.version.cuda,
        }
    else:
        device = {
            "kind": "cpu",
            "name": platform.processor() or platform.machine(),
            "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        }
    return {
        "flashref": __version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }


def describe_device(env: Mapping[str, Any]) -> str:
    """'NVIDIA H200 (sm_90)' or 'CPU, Triton interpreter'."""
    dev = env["device"]
    if dev["kind"] == "cuda":
        return f"{dev['name']} ({dev['capability']})"
    return "CPU, Triton interpreter" if dev.get("triton_interpreter") else "CPU"


# --------------------------------------------------------------------------- JSON


def write_json(path: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Write `report` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


__all__ = ["describe_device", "environment", "json_safe", "write_json"]
