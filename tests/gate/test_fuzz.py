"""The fuzzer (flashref/gate/fuzz.py): it draws across the whole space an implementation
declares and nothing outside it, it finds planted bugs a short run can reach, and it shrinks a
failure to a small case whose replay command names the implementation."""

from __future__ import annotations

import random

import pytest

from flashref.cli import main
from flashref.gate import FEATURES, Case, Implementation, builtin_implementations, required_features
from flashref.gate.fuzz import draw_case, fuzz, shrink, smaller_cases

from seeding import session_seed
from user_impls import PLAIN, drops_last_partial_block, off_by_one_causal, plain_attention

FLASHREF = builtin_implementations()["flashref"]


def draws(impl, n, seed, interpreted=False):
    rng = random.Random(seed)
    return [draw_case(rng, impl, seed + i, interpreted=interpreted) for i in range(n)]


def test_draws_cover_everything_flashref_declares():
    cases = draws(FLASHREF, 600, session_seed(), interpreted=True)
    used = set().union(*(required_features(c) for c in cases))
    assert used == set(FEATURES) - {"lse", "varlen", "kvcache", "paged", "absorbed_decode"}  # every dense feature
    assert {c.dtype for c in cases} == {"float16", "bfloat16", "float32"}
    assert any(c.seqlen_q == 1 for c in cases) and any(c.seqlen_k == 1 for c in cases)
    assert any(c.seqlen_q > c.seqlen_k for c in cases) and any(c.seqlen_q < c.seqlen_k for c in cases)
    assert any(c.seqlen_k % 16 in (1, 15) for c in cases)  # one key past / short of a block
    assert any(0 in c.kv_len_values for c in cases)  # a batch row that sees no key
    assert any(c.logit_scale >= 16 for c in cases) and any(c.tiles for c in cases) and any(c.descriptors for c in cases)
    assert len({c.head_dim for c in cases}) >= 8


def test_draws_stay_inside_what_an_implementation_declares():
    narrow = Implementation("narrow", plain_attention, features={"causal_top_left"}, dtypes=("bfloat16",),
                            head_dims=lambda d: d in (32, 64))
    for case in draws(narrow, 300, session_seed()):
        assert required_features(case) <= {"causal_top_left"}, case.name
        assert case.dtype == "bfloat16" and case.head_dim in (32, 64)
        assert not case.tiles and not case.descriptors  # only flashref's kernels take forced tiles


def test_shrink_reaches_a_minimal_failing_case():
    case = Case(3, 4, 2, 250, 199, 96, "float16", True, "bottom_right", True, kv_len_values=(199, 0, 77),
                softcap=5.0, sinks=True, logit_scale=8.0)

    def fails(c):  # stands for a bug that needs a softcap and at least 17 keys
        return c.softcap > 0 and c.seqlen_k >= 17

    smallest, checks = shrink(case, fails)
    assert fails(smallest) and checks <= 200
    assert (smallest.batch, smallest.heads_q, smallest.heads_kv, smallest.seqlen_q, smallest.seqlen_k) == (1, 1, 1, 1, 17)
    assert not (smallest.causal or smallest.kv_lens or smallest.sinks) and smallest.logit_scale == 1.0
    assert all(not fails(c) for c in smaller_cases(smallest))  # a local minimum: no one step keeps it failing


@pytest.mark.parametrize("bug, features", [(off_by_one_causal, {"causal_top_left"}),
                                           (drops_last_partial_block, set())])
def test_fuzz_finds_a_planted_bug_and_shrinks_it(bug, features):
    impl = Implementation(bug.__name__, bug, features=features)
    report = fuzz(impl, 120, seed=session_seed(), max_cases=40, shrink_seconds=60)
    assert report.failures, f"{bug.__name__} escaped 40 fuzz cases"
    shrunk = report.shrunk
    assert shrunk.status == "fail" and f"--impl {bug.__name__}" in shrunk.replay
    first = report.failures[0].case
    assert shrunk.case.seqlen_q * shrunk.case.seqlen_k <= first.seqlen_q * first.seqlen_k
    assert shrunk.case.batch == 1


def test_a_correct_implementation_passes_the_fuzzer():
    report = fuzz(PLAIN, 120, seed=session_seed(), max_cases=30)
    assert report.passed and len(report.results) == 30 and report.shrunk is None


def test_verify_fuzz_prints_the_shrunk_replay_and_fails(capsys):
    code = main(["verify", "--impl", "user_impls:off_by_one_causal", "--features", "causal_top_left",
                 "--fuzz", "8", "--seed", str(session_seed())])
    out = capsys.readouterr().out
    # Half the drawn cases are causal and almost all see two keys: a plain callable runs a
    # hundred cases in eight seconds, so the bug cannot hide.
    assert code == 1 and "shrunk" in out
    assert 'flashref verify --impl user_impls:off_by_one_causal --case "' in out


@pytest.mark.parametrize("argv", [["--fuzz", "0"], ["--fuzz", "5", "--impl", "nosuch"],
                                  ["--fuzz", "5", "--case", "b1-hq1-hkv1-lq1-lk1-d8-float32-noncausal-dense"]])
def test_verify_fuzz_bad_arguments_exit_2(argv, capsys):
    assert main(["verify", *argv]) == 2
