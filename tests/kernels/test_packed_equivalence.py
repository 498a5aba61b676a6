"""The packed case families of the gate (flashref/packed_equivalence.py): in the sweeps, names
that replay, the quick cases pass, and the checks fail when the kernel is wrong."""

import pytest

import flashref.equivalence as eq
import flashref.kernels.flash_attention_kvcache as kvcache_host
from flashref.kernels import INTERPRETED
from flashref.packed_equivalence import KvcacheCase, VarlenCase, packed_sweep
from varlen_cases import BASE_SEED

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="interpreter cases (the GPU runs them via flashref verify)")


def test_sweeps_hold_both_families_and_names_replay():
    quick, ci = eq.sweep("quick"), eq.sweep("ci")
    for cases in (quick, ci):
        kinds = {type(c) for c in cases}
        assert {VarlenCase, KvcacheCase} <= kinds and eq.Case in kinds
        assert len({c.seed for c in cases}) == len(cases)
    ci_kv = [c for c in ci if isinstance(c, KvcacheCase)]
    assert {c.page_size for c in ci_kv} == {0, 16, 32, 64, 256} and {c.num_splits for c in ci_kv} == {0, 1, 2, 3}
    assert {c.dtype for c in ci_kv} == set(eq.DTYPES) and {c.heads_kv for c in ci_kv if c.heads_kv == 1}
    for case in packed_sweep("ci", seed=7):
        again = eq.Case.from_name(case.name, seed=case.seed)
        assert again == case and case.replay_command().endswith(f"--seed {case.seed}")
    assert not any(c.causal is False for c in packed_sweep("ci", causal=False) if isinstance(c, KvcacheCase))
    assert {c.dtype for c in packed_sweep("ci", dtypes=["float32"])} == {"float32"}
    with pytest.raises(ValueError, match="kvcache case name"):
        eq.Case.from_name("kvcache-hq4")


@pytest.mark.parametrize("index", range(2), ids=["varlen", "kvcache"])
def test_quick_packed_cases_pass(index):
    case = packed_sweep("quick", seed=BASE_SEED)[index]
    result = eq.check_case(case)
    print(result.summary())
    assert result.passed, result.summary()


def test_a_lost_append_fails_the_kvcache_case(monkeypatch):
    case = KvcacheCase(2, 1, 1, 1, 32, 16, 1, 16, "float16", seed=BASE_SEED)
    monkeypatch.setattr(kvcache_host, "_append", lambda *a: None)
    with pytest.raises(AssertionError, match="k_cache"):
        eq.check_case(case)
