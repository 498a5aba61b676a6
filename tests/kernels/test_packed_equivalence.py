"""The packed case families of the gate (flashref/gate/packed.py): in the sweeps, names
that replay, the quick cases pass, and the checks fail when the kernel is wrong."""

import pytest

from flashref import gate
import flashref.kernels.flash_attention_kvcache as kvcache_host
from flashref.kernels import INTERPRETED
from flashref.gate import KvcacheCase, VarlenCase
from varlen_cases import BASE_SEED

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="interpreter cases (the GPU runs them via flashref verify)")


def test_sweeps_hold_both_families_and_names_replay():
    quick, ci = gate.sweep("quick"), gate.sweep("ci")
    for cases in (quick, ci):
        kinds = {type(c) for c in cases}
        assert {VarlenCase, KvcacheCase} <= kinds and gate.Case in kinds
        assert len({c.seed for c in cases}) == len(cases)
    ci_kv = [c for c in ci if isinstance(c, KvcacheCase)]
    assert {c.page_size for c in ci_kv} == {0, 16, 32, 64, 256} and {c.num_splits for c in ci_kv} == {0, 1, 2, 3}
    assert {c.dtype for c in ci_kv} == set(gate.DTYPES) and {c.heads_kv for c in ci_kv if c.heads_kv == 1}
    for case in gate.sweep("ci", seed=7, families=["varlen", "kvcache"]):
        again = gate.case_from_name(case.name, seed=case.seed)
        assert again == case and case.replay_command().endswith(f"--seed {case.seed}")
    packed = ["varlen", "kvcache"]
    assert not any(c.causal is False for c in gate.sweep("ci", causal=False, families=packed)
                   if isinstance(c, KvcacheCase))
    assert {c.dtype for c in gate.sweep("ci", dtypes=["float32"], families=["varlen", "kvcache"])} == {"float32"}
    with pytest.raises(ValueError, match="kvcache case name"):
        gate.case_from_name("kvcache-hq4")


@pytest.mark.parametrize("index", range(2), ids=["varlen", "kvcache"])
def test_quick_packed_cases_pass(index):
    case = gate.sweep("quick", seed=BASE_SEED, families=["varlen", "kvcache"])[index]
    result = gate.check_case(case)
    print(result.summary())
    assert result.passed, result.summary()


def test_a_lost_append_fails_the_kvcache_case(monkeypatch):
    case = KvcacheCase(2, 1, 1, 1, 32, 16, 1, 16, "float16", seed=BASE_SEED)
    monkeypatch.setattr(kvcache_host, "_append", lambda *a: None)
    with pytest.raises(gate.ImplementationError, match="k_cache"):
        gate.check_case(case)
