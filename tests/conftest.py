"""Session-wide environment, loaded before any test module (and first in each xdist worker).

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, i.e. when a module
that defines kernels is first imported, and any test directory may import them first. On a
machine without a CUDA GPU the whole session therefore runs Triton's interpreter, so that
the kernels execute on CPU tensors. A value set in the environment wins.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton 3.9 warns when unset and 3.10 flips the default; the kernels expect fused FMAs.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
