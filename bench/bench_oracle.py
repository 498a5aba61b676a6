"""CPU benchmarks of the attention oracles beside torch's float64 SDPA, on the same work.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m pytest bench/bench_oracle.py \
        --benchmark-enable --benchmark-columns=min,median,rounds

One thread each (NumPy's BLAS and torch read these variables at start-up), because on a
shared machine a multi-threaded BLAS fighting other processes for cores slows small
matrix products down by an order of magnitude and the comparison measures the contention.

Four implementations of one causal attention problem, all float64 on the CPU:
  naive       the textbook formula softmax(Q K^T * scale + mask) V in NumPy: no lse, no
              empty-row care -- the least work that gives the answer
  closed      flashref.reference.attention_forward / attention_backward
  blocked     flashref.reference.blocked_attention_forward / _backward (FlashAttention-2
              tile loop in NumPy, 128 x 128 tiles)
  torch       torch.nn.functional.scaled_dot_product_attention, float64, CPU, and its
              autograd for the backward
Timings are information, never assertions. Results: bench/RESULTS.md, "## Attention oracle".
"""

from __future__ import annotations

import numpy as np
import pytest

from flashref.reference import (
    attention_backward,
    attention_forward,
    attention_mask,
    blocked_attention_backward,
    blocked_attention_forward,
)

# (batch, heads, length, head_dim): a small and a medium problem.
SHAPES = {"b1_h4_l512_d64": (1, 4, 512, 64), "b1_h2_l2048_d64": (1, 2, 2048, 64)}
BLOCK = 128


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def problem(request):
    batch, heads, length, dim = SHAPES[request.param]
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((batch, heads, length, dim)) for _ in range(4))
    return q, k, v, dout


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(D) + causal mask) v, straight from the formula. q, k, v: (B, H, L, D)."""
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    scores = np.where(attention_mask(q.shape[2], k.shape[2], causal=True), scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


def test_forward_naive(benchmark, problem):
    q, k, v, _ = problem
    benchmark.group = f"forward {q.shape}"
    benchmark(naive_attention, q, k, v)


def test_forward_closed(benchmark, problem):
    q, k, v, _ = problem
    benchmark.group = f"forward {q.shape}"
    benchmark(attention_forward, q, k, v, causal=True)


def test_forward_blocked(benchmark, problem):
    q, k, v, _ = problem
    benchmark.group = f"forward {q.shape}"
    benchmark(blocked_attention_forward, q, k, v, causal=True, block_m=BLOCK, block_n=BLOCK)


def test_forward_torch(benchmark, problem):
    torch = pytest.importorskip("torch")
    q, k, v = (torch.from_numpy(x) for x in problem[:3])
    benchmark.group = f"forward {tuple(q.shape)}"
    with torch.no_grad():
        benchmark(torch.nn.functional.scaled_dot_product_attention, q, k, v, is_causal=True)


def test_backward_closed(benchmark, problem):
    q, k, v, dout = problem
    out, lse = attention_forward(q, k, v, causal=True)
    benchmark.group = f"backward {q.shape}"
    benchmark(attention_backward, q, k, v, out, lse, dout, causal=True)


def test_backward_blocked(benchmark, problem):
    q, k, v, dout = problem
    out, lse = attention_forward(q, k, v, causal=True)
    benchmark.group = f"backward {q.shape}"
    benchmark(blocked_attention_backward, q, k, v, out, lse, dout, causal=True,
              block_m=BLOCK, block_n=BLOCK)  # fmt: skip


def test_backward_torch(benchmark, problem):
    torch = pytest.importorskip("torch")
    q, k, v = (torch.tensor(x, requires_grad=True) for x in problem[:3])
    dout = torch.from_numpy(problem[3])
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    benchmark.group = f"backward {tuple(q.shape)}"
    benchmark(torch.autograd.grad, out, (q, k, v), dout, retain_graph=True)
