"""Where a command runs the kernels: a CUDA device, or the CPU under Triton's interpreter,
which must be switched on before triton (and flashref.kernels) are imported."""

from __future__ import annotations

import os
import sys


def choose_device(requested: str, command: str) -> str:
    """'cuda' or 'cpu' for ``requested`` ('auto', 'cuda', 'cpu'); for 'cpu' the Triton interpreter
    is switched on before triton loads. ``command`` names the caller in the error messages."""
    import torch  # importing torch does not import triton

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{command}: --device cuda, but torch sees no CUDA device")
    if requested == "cpu":
        already = "flashref.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
        if already:
            raise SystemExit(
                f"{command}: the kernels were imported before the Triton interpreter could be "
                "switched on; set TRITON_INTERPRET=1 in the environment and rerun")
        os.environ["TRITON_INTERPRET"] = "1"
    return requested
