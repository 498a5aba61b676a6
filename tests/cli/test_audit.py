"""Specification of `flashref audit`: the attention trace (default: the seed article's
example, checked against an independent softmax here) and the op-by-op gradient check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flashref.autograd import opcheck
from flashref.cli import main
from flashref.commands.audit import ARTICLE_K, ARTICLE_Q, ARTICLE_V, parse_matrix


def softmax_attention(q, k, v, scale=None, causal=False):
    """The textbook formula, written out again here as an independent second opinion."""
    s = q @ k.T * (scale if scale is not None else 1 / np.sqrt(q.shape[1]))
    if causal:
        s = np.where(np.tril(np.ones_like(s, dtype=bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, p @ v


def row(values) -> str:
    return "[" + " ".join(f"{x:8.4f}" for x in values) + "]"


def test_default_is_the_article_example_and_says_the_article_is_wrong(capsys):
    assert main(["audit", "attention"]) == 0
    out = capsys.readouterr().out
    q, k, v = (parse_matrix(m) for m in (ARTICLE_Q, ARTICLE_K, ARTICLE_V))
    weights, result = softmax_attention(q, k, v)
    assert "section 4.1.1" in out
    for i in range(3):
        assert f"row {i}: {row(weights[i])}" in out
        assert row(result[i]) in out
    # The article prints softmax weights [[.5, .5, 0], ...] and output [[.5, 0, .5], ...]; both are wrong.
    np.testing.assert_allclose(weights[0], [0.3904, 0.2192, 0.3904], atol=1e-4)
    assert "does NOT match" in out


@pytest.mark.parametrize(
    "extra, scale, causal",
    [([], None, False), (["--scale", "1.0"], 1.0, False), (["--causal"], None, True),
     (["--causal", "--scale", "0.25"], 0.25, True)],
)
def test_inline_matrices_with_scale_and_causal(extra, scale, causal, capsys):
    rng = np.random.default_rng(5)
    q, k, v = rng.integers(-3, 4, (3, 4, 2)).astype(float)
    as_arg = [";".join(",".join(str(x) for x in r) for r in m) for m in (q, k, v)]
    # "--q=..." because a value starting with "-" would read as an option.
    assert main(["audit", "attention", f"--q={as_arg[0]}", f"--k={as_arg[1]}", f"--v={as_arg[2]}", *extra]) == 0
    out = capsys.readouterr().out
    weights, result = softmax_attention(q, k, v, scale, causal)
    for i in range(4):
        assert f"row {i}: {row(weights[i])}" in out
    assert "article" not in out
    if causal:
        assert "[1 0 0 0]" in out


def test_npy_files_and_several_heads(tmp_path, capsys):
    rng = np.random.default_rng(1)
    paths = []
    for name in "qkv":
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((2, 3, 4)))  # (H, L, D)
        paths.append(str(tmp_path / f"{name}.npy"))
    assert main(["audit", "attention", "--q", paths[0], "--k", paths[1], "--v", paths[2]]) == 0
    out = capsys.readouterr().out
    assert "batch 0, head 0" in out and "batch 0, head 1" in out
    q, k, v = (np.load(p)[1] for p in paths)
    weights, _ = softmax_attention(q, k, v)
    assert f"row 2: {row(weights[2])}" in out


def test_heads_split_the_columns(capsys):
    q = "1,0,2,1;0,1,1,0;1,1,0,2"
    assert main(["audit", "attention", "--q", q, "--k", q, "--v", q, "--heads", "2"]) == 0
    out = capsys.readouterr().out
    m = parse_matrix(q)
    w1, _ = softmax_attention(m[:, 2:], m[:, 2:], m[:, 2:])
    assert "head 1: softmax weights" in out and f"row 0: {row(w1[0])}" in out and "concat" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--q", "1,2;3"], "rows have different lengths"),
        (["--q", "a,b"], "entries must be numbers"),
        (["--q", "missing.npy"], "cannot load 'missing.npy'"),
        (["--heads", "x"], "invalid int value"),
    ],
)
def test_bad_matrices_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "attention", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--q", "1,0;0,1"], "give all of --q, --k, --v"),
        (["--q", "1,0,1", "--k", "1,0,1", "--v", "1,0,1", "--heads", "2"], "do not split into 2 heads"),
        (["--q", "1,0", "--k", "1,0,1", "--v", "1,0,1"], "k"),
    ],
)
def test_inconsistent_inputs_exit_2_with_a_message(argv, message, capsys):
    assert main(["audit", "attention", *argv]) == 2
    assert message in capsys.readouterr().out


def test_gradcheck_lists_every_op(capsys):
    assert main(["audit", "gradcheck"]) == 0
    out = capsys.readouterr().out
    ops = {case.name for case in opcheck.OP_CASES}
    assert all(op in out for op in ops)
    assert f"{len(opcheck.OP_CASES)}/{len(opcheck.OP_CASES)} ops pass" in out


def test_gradcheck_fails_when_an_op_fails(monkeypatch, capsys):
    rows = [opcheck.OpCheck("exp", 3e-10, True, 0), opcheck.OpCheck("tanh", 0.4, False, 0)]
    monkeypatch.setattr(opcheck, "check_all_ops", lambda seed=0: rows)
    assert main(["audit", "gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "worst: tanh at 4.00e-01" in out


def test_audit_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit"])
    assert exit_info.value.code == 2


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_inline_matrices_round_trip(m):
    text = ";".join(",".join(repr(float(x)) for x in r) for r in m)
    np.testing.assert_array_equal(parse_matrix(text), m)
