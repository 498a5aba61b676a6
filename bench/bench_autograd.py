"""flashref.autograd against torch CPU float64: one forward+backward of a block stack.

    pytest bench/bench_autograd.py --benchmark-enable

Each block, on ``x: (B, L, D)`` with B=32, L=64, D=512 (float64):
``h = layer_norm(x @ W, D, gamma, beta)``, ``p = softmax(h @ h^T / sqrt(D))``, ``x = p @ h``;
three blocks, then ``sum(x * c)`` for a fixed random ``c`` and a backward to every input.
The same computation runs in torch (CPU, float64) beside it; compare the two means.
Timings only: nothing here asserts on time.
"""

import math

import numpy as np
import pytest
import torch

import flashref.autograd.functional as F
from flashref.autograd import Tensor

BATCH, SEQ, WIDTH, BLOCKS = 32, 64, 512, 3


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((BATCH, SEQ, WIDTH)), "c": rng.standard_normal((BATCH, SEQ, WIDTH))}
    for k in range(BLOCKS):
        arrays[f"w{k}"] = rng.standard_normal((WIDTH, WIDTH)) / math.sqrt(WIDTH)
        arrays[f"gamma{k}"] = 1.0 + 0.1 * rng.standard_normal(WIDTH)
        arrays[f"beta{k}"] = 0.1 * rng.standard_normal(WIDTH)
    return arrays


def flashref_step(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One forward and backward in flashref.autograd; returns every input's gradient."""
    t = {k: Tensor(v, requires_grad=k != "c") for k, v in arrays.items()}
    x = t["x"]
    for k in range(BLOCKS):
        h = F.layer_norm(x @ t[f"w{k}"], WIDTH, t[f"gamma{k}"], t[f"beta{k}"])  # (B, L, D)
        p = F.softmax((h @ h.swapaxes(-1, -2)) * (1.0 / math.sqrt(WIDTH)), axis=-1)  # (B, L, L)
        x = p @ h  # (B, L, D)
    (x * t["c"]).sum().backward()
    return {k: v.grad for k, v in t.items() if v.requires_grad}


def torch_step(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same forward and backward in torch."""
    t = {k: v.detach().requires_grad_(k != "c") for k, v in arrays.items()}
    x = t["x"]
    for k in range(BLOCKS):
        h = torch.nn.functional.layer_norm(x @ t[f"w{k}"], (WIDTH,), t[f"gamma{k}"], t[f"beta{k}"])
        p = torch.softmax((h @ h.transpose(-1, -2)) * (1.0 / math.sqrt(WIDTH)), dim=-1)
        x = p @ h
    (x * t["c"]).sum().backward()
    return {k: v.grad for k, v in t.items() if v.requires_grad}


@pytest.fixture(scope="module")
def arrays():
    return make_arrays()


def test_both_engines_compute_the_same_gradients(arrays):
    ours = flashref_step(arrays)
    theirs = torch_step({k: torch.from_numpy(v) for k, v in arrays.items()})
    for k, g in ours.items():
        expected = theirs[k].numpy()
        assert np.max(np.abs(g - expected)) <= 1e-10 * np.max(np.abs(expected)), k


@pytest.mark.benchmark(group="matmul+layer_norm+softmax x3, B=32 L=64 D=512, fwd+bwd float64")
def test_flashref_autograd(benchmark, arrays):
    benchmark(flashref_step, arrays)


@pytest.mark.benchmark(group="matmul+layer_norm+softmax x3, B=32 L=64 D=512, fwd+bwd float64")
def test_torch_cpu(benchmark, arrays):
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    benchmark(torch_step, tensors)
