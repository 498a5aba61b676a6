"""`flashref tune` on a CPU: it refuses clearly, parses its arguments, plans with --dry-run."""

from __future__ import annotations

import pytest
import torch

from flashref.cli import main


def test_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["tune", "--time-budget", "30"]) == 1
    out = capsys.readouterr().out
    assert "no CUDA device here" in out and "--dry-run" in out


def test_dry_run_prints_the_plan_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["tune", "--dry-run", "--arch", "sm_90", "--kernel", "backward_dkdv", "--head-dim", "256",
                 "--dtype", "float16", "--causal", "off", "--seqlen", "2048"]) == 0
    out = capsys.readouterr().out
    assert "plan for sm_90: 2 groups" in out
    assert "backward_dk/256/float16/full" in out and "backward_dv/256/float16/full" in out
    assert "(8, 8, 2048)" in out  # 16k tokens at length 2048, width 2048 at head dim 256


def test_dry_run_needs_an_arch_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["tune", "--dry-run"]) == 2
    assert "--arch is needed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--time-budget", "0"], "must be positive"),
    (["--time-budget", "soon"], "expected a number of seconds"),
    (["--head-dim", "96"], "'96' is not one of: 64, 128, 256"),
    (["--dtype", "float32"], "is not one of: bfloat16, float16"),
    (["--kernel", "backward_delta"], "is not one of"),
])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
