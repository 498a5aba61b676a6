"""The NumPy Transformer beside torch CPU float64: two workloads, the same weights on both sides.

1. ``torch.nn.Transformer``-sized forward+backward (issue 9's yardstick): d_model 256,
   8 heads, 2 encoder + 2 decoder layers, dim_feedforward 1024, dropout 0, batch 16,
   64 source and 64 target tokens (sequence-first), a causal float target mask, float64;
   one backward of a fixed random cotangent into every parameter and both inputs.
   flashref's ``Transformer`` loads torch's ``state_dict``; the setup checks once that
   the two outputs agree to 1e-10 before anything is timed.
2. One training step of the default Seq2SeqModel (forward, masked cross-entropy, backward,
   Adam) on 64 sequences of the built-in reversal task, one thread each.

pytest-benchmark runs the cases one after another::

    python -m pytest bench/bench_transformer.py --benchmark-enable \
        --benchmark-columns=min,median,rounds

On a shared machine a load spike can hit one side only; the interleaved runner alternates
flashref and torch round by round and reports min-of-N for each and their ratio::

    python bench/bench_transformer.py --rounds 9            # default threads
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/bench_transformer.py --rounds 9

Timings only, no assertions on time; results: bench/RESULTS.md, "## Transformer".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from flashref.autograd import Tensor
from flashref.reference.optim import Adam
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
from flashref.reference.transformer import Transformer, generate_square_subsequent_mask
from flashref.workflow.data import ReverseTaskConfig, make_reverse_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from transformer_cases import torch_seq2seq_twin  # noqa: E402  (the tests' torch twin)

# ----------------------------------------------------------------------------- workload 1

CONFIG = dict(d_model=256, nhead=8, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=1024, dropout=0.0)
BATCH, SRC_LEN, TGT_LEN = 16, 64, 64
GROUP = "Transformer fwd+bwd (d 256, 8 heads, 2+2 layers, ff 1024, batch 16, 64+64 tokens, float64)"


@dataclass
class TransformerPair:
    """flashref's and torch's Transformer with the same weights, inputs and cotangent."""

    ours: Transformer
    theirs: torch.nn.Transformer
    src: np.ndarray  # (S, N, E)
    tgt: np.ndarray  # (T, N, E)
    cotangent: np.ndarray  # (T, N, E)
    tgt_mask: np.ndarray  # (T, T) float, -inf above the diagonal

    def flashref_step(self) -> None:
        """zero_grad, forward, backward of the cotangent (every parameter and both inputs)."""
        self.ours.zero_grad()
        src, tgt = Tensor(self.src, requires_grad=True), Tensor(self.tgt, requires_grad=True)
        self.ours(src, tgt, tgt_mask=self.tgt_mask).backward(self.cotangent)

    def torch_step(self) -> None:
        """The same step in torch."""
        self.theirs.zero_grad()
        src = torch.from_numpy(self.src).requires_grad_()
        tgt = torch.from_numpy(self.tgt).requires_grad_()
        out = self.theirs(src, tgt, tgt_mask=torch.from_numpy(self.tgt_mask))
        out.backward(torch.from_numpy(self.cotangent))


def make_transformer_pair(seed: int = 0) -> TransformerPair:
    """Build both models (torch's weights loaded into ours) and check their outputs agree."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch notes that sequence-first inputs skip its nested-tensor path
        warnings.simplefilter("ignore", UserWarning)
        theirs = torch.nn.Transformer(**CONFIG, dtype=torch.float64).train()  # train: no fast path
    ours = Transformer(**CONFIG, rng=np.random.default_rng(seed))
    ours.load_state_dict(theirs.state_dict())
    e = CONFIG["d_model"]
    pair = TransformerPair(
        ours, theirs,
        src=rng.standard_normal((SRC_LEN, BATCH, e)),
        tgt=rng.standard_normal((TGT_LEN, BATCH, e)),
        cotangent=rng.standard_normal((TGT_LEN, BATCH, e)),
        tgt_mask=generate_square_subsequent_mask(TGT_LEN),
    )  # fmt: skip
    ref = theirs(*(torch.from_numpy(a) for a in (pair.src, pair.tgt)), tgt_mask=torch.from_numpy(pair.tgt_mask))
    got = ours(Tensor(pair.src), Tensor(pair.tgt), tgt_mask=pair.tgt_mask).data
    err = np.abs(got - ref.detach().numpy()).max()
    if not err < 1e-10:
        raise AssertionError(f"flashref and torch disagree before timing: max |diff| = {err:.2e}")
    return pair


@pytest.fixture(scope="module")
def transformer_pair():
    return make_transformer_pair()


def test_flashref_transformer_forward_backward(benchmark, transformer_pair):
    benchmark.group = GROUP
    benchmark(transformer_pair.flashref_step)


def test_torch_transformer_forward_backward(benchmark, transformer_pair):
    benchmark.group = GROUP
    benchmark(transformer_pair.torch_step)


# ----------------------------------------------------------------------------- workload 2

SEQ2SEQ_BATCH = 64
SEQ2SEQ_GROUP = "train step (default Seq2SeqModel, batch 64, float64, one thread)"


@pytest.fixture(scope="module")
def seq2seq_setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    task = make_reverse_task(ReverseTaskConfig(num_train=SEQ2SEQ_BATCH, num_val=10, num_test=10))
    batch = task.train.batch(range(SEQ2SEQ_BATCH))
    model = Seq2SeqModel(Seq2SeqConfig(), rng=np.random.default_rng(0))
    yield model, torch_seq2seq_twin(model), batch
    torch.set_num_threads(threads)  # the other workload runs at the default thread count


def test_flashref_train_step(benchmark, seq2seq_setup):
    model, _, b = seq2seq_setup
    opt = Adam(model.parameters(), lr=1e-4)

    def step():
        loss, _ = model.loss(b.src, b.tgt_in, b.tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()

    benchmark.group = SEQ2SEQ_GROUP
    benchmark(step)


def test_torch_train_step(benchmark, seq2seq_setup):
    _, twin, b = seq2seq_setup
    src, tgt_in, tgt_out = (torch.as_tensor(x) for x in (b.src, b.tgt_in, b.tgt_out))
    opt = torch.optim.Adam(twin.parameters(), lr=1e-4)

    def step():
        loss = twin.loss(src, tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()

    benchmark.group = SEQ2SEQ_GROUP
    benchmark(step)


# ----------------------------------------------------------------------------- interleaved runner


def interleaved(pair: TransformerPair, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per step for flashref and torch, alternating round by round (one warm-up each)."""
    pair.flashref_step()
    pair.torch_step()
    ours, theirs = [], []
    for _ in range(rounds):
        for step, times in ((pair.flashref_step, ours), (pair.torch_step, theirs)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per side (default 9)")
    args = parser.parse_args()
    ours, theirs = interleaved(make_transformer_pair(), args.rounds)
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ}
    print(f"{GROUP}\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, env {env or 'default threads'}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, times in (("flashref", ours), ("torch", theirs)):
        print(f"{name:9s} min {min(times) * 1e3:8.1f} ms   median {np.median(times) * 1e3:8.1f} ms   ({len(times)} rounds)")
    print(f"ratio flashref / torch: min {min(ours) / min(theirs):.2f}x, median {np.median(ours) / np.median(theirs):.2f}x")


if __name__ == "__main__":
    main()
