"""Fresh seeded randomness for the autograd tests.

Every test that takes ``seed`` gets a new one per run, printed (pytest shows it with a
failure) so the failure replays with ``FLASHREF_SEED=<seed> pytest ...``.
"""

import os

import numpy as np
import pytest


@pytest.fixture
def seed(request) -> int:
    value = int(os.environ.get("FLASHREF_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"\n{request.node.nodeid}: seed={value} (replay with FLASHREF_SEED={value})")
    return value


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)
