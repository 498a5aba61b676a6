"""The training loop learns, validates, stops early; evaluation counts what it claims to.

The full >= 99% run is the `slow` test at the bottom (minutes on a CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from flashref.workflow import training
from flashref.workflow.data import EOS, ReverseTaskConfig, make_reverse_task, target_ids
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
from flashref.workflow.training import TrainConfig, evaluate, plot_history, train

from transformer_cases import fresh_seed

TINY_MODEL = Seq2SeqConfig(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                           max_len=16)
TINY_TASK = ReverseTaskConfig(min_len=1, max_len=4, num_train=400, num_val=40, num_test=40)


def test_a_few_steps_reduce_the_loss():
    seed = fresh_seed("tiny training")
    task = make_reverse_task(TINY_TASK)
    model = Seq2SeqModel(TINY_MODEL, rng=np.random.default_rng(seed))
    result = train(model, task, TrainConfig(steps=80, batch_size=32, lr=5e-3, warmup_steps=5, eval_every=40,
                                            val_samples=40, target_accuracy=None, seed=seed), progress=False)
    h = result.history
    assert result.steps == 80 and h.step == list(range(1, 81)) and h.val_step == [40, 80]
    assert np.mean(h.loss[-5:]) < 0.7 * np.mean(h.loss[:5])
    assert h.lr[4] == pytest.approx(5e-3) and h.lr[-1] < 5e-3  # warmup, then decay
    assert all(0.0 <= a <= 1.0 for a in h.val_token_accuracy)
    assert result.tokens_per_second > 0 and model.training


def test_early_stop_at_target_accuracy(monkeypatch):
    task = make_reverse_task(TINY_TASK)
    model = Seq2SeqModel(TINY_MODEL, rng=np.random.default_rng(0))
    fake = iter([0.5, 0.999])
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: {
        "token_accuracy": next(fake), "sequence_accuracy": 0.0, "loss": 1.0})
    result = train(model, task, TrainConfig(steps=100, eval_every=3, target_accuracy=0.99), progress=False)
    assert result.steps == 6 and result.stopped_early


class _Scripted:
    """Stands in for greedy_decode: returns prepared outputs, one per source row."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def __call__(self, model, src, **kwargs):
        out, self.outputs = self.outputs[: len(src)], self.outputs[len(src):]
        return out


def test_evaluate_counts_tokens_and_sequences(monkeypatch):
    task = make_reverse_task(TINY_TASK)
    split = task.test
    wants = [target_ids(s)[1:] for s in split.sequences[:4]]  # reversed digits + EOS
    got = [list(wants[0]),                       # exact
           wants[1][:-1] + [wants[1][0]],        # last token (EOS) wrong
           wants[2][1:],                          # one token short: everything shifted
           list(wants[3]) + [5]]                  # extra token after EOS is not a target position
    monkeypatch.setattr(training, "greedy_decode", _Scripted(got))
    model = Seq2SeqModel(TINY_MODEL, rng=np.random.default_rng(0))
    metrics = evaluate(model, split, max_samples=4, batch_size=3)
    shifted_hits = sum(a == b for a, b in zip(wants[2][1:], wants[2]))
    correct = len(wants[0]) + (len(wants[1]) - 1) + shifted_hits + len(wants[3])
    assert metrics["num_tokens"] == sum(map(len, wants))
    assert metrics["token_accuracy"] == pytest.approx(correct / metrics["num_tokens"])
    assert metrics["sequence_accuracy"] == pytest.approx(1 / 4)  # the extra token breaks the last one
    assert wants[0][-1] == EOS


def test_plot_is_written(tmp_path):
    history = training.History(step=[1, 2, 3], loss=[2.0, 1.0, 0.5], lr=[1e-3] * 3, val_step=[3],
                               val_token_accuracy=[0.5], val_sequence_accuracy=[0.1], val_loss=[0.7])
    plot_history(history, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"),
    (dict(schedule="linear"), "schedule"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(target_accuracy=1.5), "target_accuracy"),
])
def test_bad_train_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.slow
def test_default_config_reaches_99_percent_token_accuracy():
    """The issue's acceptance run: the default model and task, greedy test accuracy >= 99%."""
    task = make_reverse_task()
    model = Seq2SeqModel(Seq2SeqConfig(), rng=np.random.default_rng(0))
    train(model, task, TrainConfig(), progress=False)
    metrics = evaluate(model, task.test)
    assert metrics["token_accuracy"] >= 0.99, metrics
