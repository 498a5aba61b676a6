"""Fixtures of the torch-integration tests (the op, SDPA routing, the model check, the torch engine).

Every test here that draws random numbers takes ``seed``: a fresh one per run, printed (pytest
shows it with a failure) so that the failure can be replayed with ``FLASHREF_SEED=<seed>``.
"""

import os
import random

import pytest

from flashref.kernels import INTERPRETED

if not INTERPRETED:
    import torch

    if not torch.cuda.is_available():  # pragma: no cover - conftest sets TRITON_INTERPRET without a GPU
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("FLASHREF_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed {value} (replay: FLASHREF_SEED={value})")
    return value
