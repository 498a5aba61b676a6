"""flashref train --engine torch: torch.nn.Transformer with attention on the kernels, trained from
the NumPy engine's initial weights on the same batches; checkpoints shared by both engines."""

from __future__ import annotations


import numpy as np
import torch

from flashref.cli import main
from flashref.reference.seq2seq import Seq2SeqConfig, Seq2SeqModel
from flashref.workflow.checkpoint import load_checkpoint, save_checkpoint
from flashref.workflow.data import ReverseTaskConfig, make_reverse_task
from flashref.workflow.torch_engine import compare_loss_curves, load_torch_model, train_torch
from flashref.workflow.training import TrainConfig, evaluate, train

# One head and batch 2: the interpreter's cost grows with batch x heads programs per launch.
MODEL = Seq2SeqConfig(d_model=16, nhead=1, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, max_len=16)


def test_loss_curves_of_the_two_engines_agree_within_the_float32_baseline(seed):
    """24 steps. ref: the NumPy engine (float64); kernel: the torch engine, attention on the
    kernels (float32); base: the same torch engine on torch's math SDPA (float32). The largest
    per-step loss gap to the NumPy engine must pass the rule (torch_engine.compare_loss_curves)."""
    task = make_reverse_task(ReverseTaskConfig(max_len=5, num_train=64, num_val=4, num_test=4, seed=seed))
    config = TrainConfig(steps=24, batch_size=2, warmup_steps=4, eval_every=1000, val_samples=4,
                         target_accuracy=None, seed=seed)
    numpy_model = Seq2SeqModel(MODEL, rng=np.random.default_rng(seed))
    ref = np.array(train(numpy_model, task, config).history.loss)
    kernel_run = train_torch(MODEL, task, config, device="cpu", attention="kernels")
    base_run = train_torch(MODEL, task, config, device="cpu", attention="math")
    assert kernel_run.routed_calls == 3 * 24  # every attention call of every step ran on the kernels
    kernel, base = np.array(kernel_run.history.loss), np.array(base_run.history.loss)
    error = compare_loss_curves(ref, kernel, base)
    assert error.passed, f"loss curves: {error.describe('loss')}"
    assert np.ptp(ref) > 1e-3  # the weights moved (batch 2: the loss is noisy, not monotone)




def test_checkpoints_load_into_either_engine(seed, tmp_path):
    task = make_reverse_task(ReverseTaskConfig(max_len=4, num_train=16, num_val=4, num_test=4, seed=seed))
    config = TrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_every=1000, val_samples=4,
                         target_accuracy=None, seed=seed)
    run = train_torch(MODEL, task, config, device="cpu", attention="math")
    path = save_checkpoint(tmp_path / "torch.safetensors", run.numpy_model, run.optimizer, extra={"engine": "torch"})
    checkpoint = load_checkpoint(path)
    assert checkpoint.make_optimizer().step_count == 2
    batch = task.val.batch([0, 1, 2, 3])
    src, tgt_in = torch.from_numpy(batch.src), torch.from_numpy(batch.tgt_in)
    with torch.no_grad():
        want = run.model.eval()(src, tgt_in).double().numpy()
    # torch engine -> NumPy model (float64 from float32 weights): the same function.
    np.testing.assert_allclose(checkpoint.model(batch.src, batch.tgt_in).data, want, atol=1e-4)
    # -> torch model again, exactly the trained weights.
    reloaded, extra = load_torch_model(path)
    assert extra == {"engine": "torch"}
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded.eval()(src, tgt_in).double().numpy(), want)
    # A NumPy-engine checkpoint loads into torch and computes the NumPy model's function.
    numpy_model = Seq2SeqModel(MODEL, rng=np.random.default_rng(seed + 1))
    path = save_checkpoint(tmp_path / "numpy.safetensors", numpy_model)
    torch_model, _ = load_torch_model(path)
    with torch.no_grad():
        got = torch_model.eval()(src, tgt_in).double().numpy()
    np.testing.assert_allclose(got, numpy_model(batch.src, batch.tgt_in).data, atol=1e-4)
    assert set(evaluate(checkpoint.model, task.test)) >= {"token_accuracy", "sequence_accuracy"}


def test_train_engine_torch_cli_then_eval_and_generate(tmp_path, capsys):
    argv = ["train", "--engine", "torch", "--out", str(tmp_path), "--steps", "2", "--batch-size", "2",
            "--d-model", "16", "--nhead", "1", "--layers", "1", "--dim-feedforward", "32", "--max-digits", "4",
            "--num-train", "20", "--eval-every", "1000", "--warmup-steps", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 attention calls ran on the kernels" in out and "test token accuracy" in out
    ckpt = str(tmp_path / "model.safetensors")
    assert load_checkpoint(ckpt).extra["result"]["engine"] == "torch"
    assert main(["eval", ckpt, "--max-samples", "5"]) == 0
    assert "test token accuracy" in capsys.readouterr().out
    assert main(["generate", ckpt, "1 2 3"]) == 0
    assert capsys.readouterr().out.strip() != ""
