"""Session-wide environment and the one source of fresh seeds, loaded before any test module
(and first in each xdist worker).

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, i.e. when a module
that defines kernels is first imported, and any test directory may import them first. On a
machine without a CUDA GPU the whole session therefore runs Triton's interpreter, so that
the kernels execute on CPU tensors. A value set in the environment wins.

Seeds: every run draws a fresh session seed (``FLASHREF_SEED=<n>`` replays a run). It is put in
the environment so that collection-time code (``session_seed()``, e.g. the kernel sweep's
case seeds) and subprocesses see the same value. The ``seed`` fixture gives each test its own
seed derived from the session seed and the test's id; it is printed, and a failing test's
report carries it with the line that replays it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton 3.9 warns when unset and 3.10 flips the default; the kernels expect fused FMAs.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from seeding import SEED_ENV, derived_seed, session_seed  # noqa: E402  (draws the session seed)


def pytest_report_header(config):
    return f"flashref seeds: session seed {session_seed()} (replay with {SEED_ENV}={session_seed()})"


@pytest.fixture
def seed(request) -> int:
    """A fresh seed for this test (see the module docstring); printed and kept for the report."""
    value = derived_seed(request.node.nodeid)
    request.node.flashref_seed = value
    print(f"\n{request.node.nodeid}: seed={value} (replay: {SEED_ENV}={session_seed()} pytest '{request.node.nodeid}')")
    return value


@pytest.fixture
def rng(seed):
    import numpy as np

    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        line = f"{SEED_ENV}={session_seed()} pytest '{item.nodeid}'"
        if hasattr(item, "flashref_seed"):
            line = f"seed {item.flashref_seed}; replay: {line}"
        report.sections.append(("flashref seed", line))
