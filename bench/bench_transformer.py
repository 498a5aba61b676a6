"""One training step of the default Seq2SeqModel: flashref (NumPy) beside torch CPU float64.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m pytest bench/bench_transformer.py \
        --benchmark-enable --benchmark-columns=min,median,rounds

A step is: teacher-forced forward and masked cross-entropy, backward, Adam update. Both
sides use the default config (d_model 64, 4 heads, 2 + 2 layers, feed-forward 128, vocab
13, float64), the same weights (torch's twin loads our state dict) and the same batch: the
first 64 training sequences of the built-in reversal task (1-10 digits, padded to 11).
One thread each, for the reason given in bench/RESULTS.md. Timings only, no assertions;
results: bench/RESULTS.md, "## Transformer".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flashref.workflow.data import ReverseTaskConfig, make_reverse_task
from flashref.reference.optim import Adam
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
from transformer_cases import torch_seq2seq_twin  # noqa: E402  (the tests' torch twin)

BATCH = 64


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    task = make_reverse_task(ReverseTaskConfig(num_train=BATCH, num_val=10, num_test=10))
    batch = task.train.batch(range(BATCH))
    model = Seq2SeqModel(Seq2SeqConfig(), rng=np.random.default_rng(0))
    twin = torch_seq2seq_twin(model)
    return model, twin, batch


def test_flashref_train_step(benchmark, setup):
    model, _, b = setup
    opt = Adam(model.parameters(), lr=1e-4)

    def step():
        loss, _ = model.loss(b.src, b.tgt_in, b.tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()

    benchmark.group = "train step (default Seq2SeqModel, batch 64, float64)"
    benchmark(step)


def test_torch_train_step(benchmark, setup):
    _, twin, b = setup
    src, tgt_in, tgt_out = (torch.as_tensor(x) for x in (b.src, b.tgt_in, b.tgt_out))
    opt = torch.optim.Adam(twin.parameters(), lr=1e-4)

    def step():
        loss = twin.loss(src, tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()

    benchmark.group = "train step (default Seq2SeqModel, batch 64, float64)"
    benchmark(step)
