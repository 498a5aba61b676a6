"""The machine a command runs on: the kernels on a CUDA device, or on the CPU under Triton's
interpreter (switched on before triton and flashref.kernels are imported); and NumPy's BLAS
threads for the commands that run the oracle."""

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


def single_threaded_blas() -> None:
    """OpenBLAS's worker threads spin when the cores are busy; the oracle's small matmuls
    run up to 10x slower with them on a shared CPU. Only effective before numpy loads."""
    if "numpy" not in sys.modules:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
