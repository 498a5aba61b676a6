"""`flashref train | eval | generate` end to end on a tiny model (seconds, not minutes)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from flashref.cli import main

TINY = ["--steps", "30", "--no-progress", "--d-model", "16", "--nhead", "2", "--layers", "1",
        "--dim-feedforward", "24", "--max-digits", "4", "--num-train", "300", "--eval-every", "15",
        "--warmup-steps", "5", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--out", str(out), "--seed", "3", *TINY]) == 0
    (out / "stdout.txt").write_text(printed.getvalue())
    return out


def test_train_writes_checkpoint_plot_history_and_prints_test_accuracy(trained):
    lines = (trained / "stdout.txt").read_text().strip().splitlines()
    assert lines[-2].startswith("test token accuracy: ") and lines[-1].startswith("test sequence accuracy: ")
    assert 0.0 <= float(lines[-2].split(": ")[1]) <= 1.0
    assert (trained / "model.safetensors").stat().st_size > 0
    assert (trained / "training.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((trained / "history.json").read_text())
    assert history["step"][-1] == 30 and history["val_step"] == [15, 30]


def test_eval_and_generate(trained, capsys):
    ckpt = str(trained / "model.safetensors")
    assert main(["eval", ckpt, "--max-samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "test token accuracy: " in out and "test sequence accuracy: " in out
    assert main(["generate", ckpt, "3 1 4"]) == 0
    greedy = capsys.readouterr().out.strip()
    assert all(token.isdigit() for token in greedy.split())
    assert main(["generate", ckpt, "3 1 4", "--beam", "1"]) == 0
    assert capsys.readouterr().out.strip() == greedy  # a beam of one is greedy
    assert main(["generate", ckpt, "3 1 4", "--beam", "3", "--verbose"]) == 0
    assert capsys.readouterr().err.count("\n") == 3


@pytest.mark.parametrize("argv, message", [
    (["eval", "/nonexistent/model.safetensors"], "no such file"),
    (["generate", "/nonexistent/model.safetensors", "1 2"], "no such file"),
    (["train", "--steps", "0"], "steps"),
])
def test_bad_inputs_are_clear_errors(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_tokens_and_corrupt_checkpoint(trained, tmp_path, capsys):
    ckpt = trained / "model.safetensors"
    assert main(["generate", str(ckpt), "3 x 4"]) == 2
    assert "unknown token 'x'" in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(ckpt.read_bytes()[:200])
    assert main(["eval", str(broken)]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err


def test_epochs_set_the_number_of_steps(tmp_path):
    args = [a for a in TINY if a not in ("--steps", "30")]
    assert main(["train", "--out", str(tmp_path), *args, "--epochs", "0.2", "--batch-size", "30"]) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["step"][-1] == 2  # ceil(0.2 * 300 / 30)
