"""flashref.gate: any implementation judged by the gate (issue 21's first slice).

Small cases chosen by a covering design (dtype x masking x GQA), so the file stays within a
few seconds per implementation on 2 cores. A correct plain attention passes, each planted bug
fails with a replay command naming the implementation, bad behaviour is an ERROR (never a
crash), a missing feature is unsupported (never a failure), and bad --impl specs exit 2.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from flashref import gate
from flashref.cli import main
from flashref.gate import (FEATURES, Implementation, builtin_implementations, check, parse_features,
                           required_features, resolve_implementation)
from flashref.kernels import INTERPRETED

from user_impls import (MASK_FEATURES, PACKED_FEATURES, PLAIN, PLAIN_PACKED, kvcache_without_append, masked_with,
                        plain_attention, varlen_overreads)

# flashref's own kernels run where the suite runs them: the CPU under the interpreter, else CUDA.
KERNEL_DEVICE = "cpu" if INTERPRETED else "cuda"

CASES = [  # dtype x masking x heads, each value twice
    "b2-hq2-hkv2-lq17-lk33-d16-float32-causal_top_left-dense",
    "b1-hq4-hkv2-lq33-lk17-d32-bfloat16-noncausal-dense",
    "b2-hq2-hkv1-lq40-lk40-d16-float16-causal_top_left-dense",
    "b1-hq2-hkv2-lq9-lk70-d32-float32-noncausal-dense",
]


def judge(impl, names=CASES, seed=0):
    return check(impl, [gate.Case.from_name(n, seed + i) for i, n in enumerate(names)], device="cpu")


def test_a_correct_plain_attention_passes(seed):
    from user_impls import PLAIN

    report = judge(PLAIN, seed=seed)
    assert report.passed and report.count("pass") == len(CASES), [r.failure_summary() for r in report.results]


@pytest.mark.parametrize("name", ["sdpa-math", "sdpa-flash", "flex", "flex-compiled"])
def test_torch_implementations_pass_on_the_cpu(name, seed):
    report = judge(builtin_implementations()[name], seed=seed)
    assert report.passed and report.count("pass") == len(CASES), [r.failure_summary() for r in report.results]


def test_flex_compiled_that_cannot_compile_is_unsupported_with_one_reason(monkeypatch):
    """Where torch cannot compile FlexAttention (no C++ compiler for inductor, ...) the probe
    gives one line, and every case is unsupported with it, never failed."""
    from flashref.gate import implementations as I

    def no_compiler(*args, **kwargs):
        raise RuntimeError("InductorError: CppCompileError: no C++ compiler found\nmore lines")

    monkeypatch.setattr(I, "_compiled_flex_attention", lambda: no_compiler)
    reason = I._flex_compiled_available.__wrapped__("cpu")  # the uncached probe
    assert reason == ("torch.compile of FlexAttention does not run on cpu: RuntimeError: InductorError: "
                      "CppCompileError: no C++ compiler found")
    impl = dataclasses.replace(builtin_implementations()["flex-compiled"], available=I._flex_compiled_available.__wrapped__)
    report = judge(impl)
    assert {(r.status, r.unsupported) for r in report.results} == {("unsupported", reason)} and report.passed


def test_flex_compiled_reuses_its_graph_for_a_case_of_the_same_shape(seed):
    """Compilation is cached per shape: a second case with the same shapes, dtype and mask
    structure (other numbers, other kv_lens) compiles nothing new."""
    import torch

    impl = builtin_implementations()["flex-compiled"]
    name = "b2-hq2-hkv1-lq20-lk36-d16-float32-causal_bottom_right-kvlens-softcap5"
    assert judge(impl, [name], seed=seed).passed
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    assert judge(impl, [name], seed=seed + 1).passed
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames


@pytest.mark.parametrize("bug", ["off_by_one_causal", "truncated_scale", "drops_last_partial_block"])
def test_a_planted_bug_fails_with_a_replay_command(bug, seed):
    import user_impls

    impl = Implementation(bug, getattr(user_impls, bug), features={"causal_top_left", "gqa"})
    report = judge(impl, seed=seed)
    failed = [r for r in report.results if r.status == "fail"]
    assert failed, f"{bug} passed every case"
    assert failed[0].replay.startswith(f"flashref verify --impl {bug} --case ")


@pytest.mark.parametrize("bad, message", [("raises", "raised RuntimeError"), ("wrong_shape", "shape"),
                                          ("returns_nan", "NaN"), ("writes_into_q", "wrote into its input q")])
def test_bad_behaviour_is_an_error_not_a_crash(bad, message):
    import user_impls

    report = judge(Implementation(bad, getattr(user_impls, bad), features={"causal_top_left", "gqa"}))
    assert {r.status for r in report.results} == {"error"} and not report.passed
    assert message in report.results[0].exception


DV_CASES = [  # (D, Dv) pairs both ways, masked and not
    "b1-hq2-hkv1-lq17-lk33-d64-float32-causal_top_left-dense-dv32",
    "b2-hq2-hkv2-lq9-lk20-d32-bfloat16-noncausal-dense-dv64",
]


@pytest.mark.parametrize("name", ["sdpa-math", "flex", "flex-compiled"])
def test_torch_implementations_take_a_value_head_dim_of_its_own(name, seed):
    # out is (..., Dv): the runner's shape check expects v's head dim, not q's
    report = judge(builtin_implementations()[name], DV_CASES, seed=seed)
    assert report.passed and report.count("pass") == len(DV_CASES), [r.failure_summary() for r in report.results]
    # torch's fused CPU backend refuses Ev != E, so sdpa-flash does not declare it
    assert judge(builtin_implementations()["sdpa-flash"], DV_CASES, seed=seed).count("unsupported") == len(DV_CASES)


def test_a_missing_feature_is_unsupported_not_failed():
    from user_impls import PLAIN

    case = gate.Case.from_name("b1-hq2-hkv2-lq9-lk20-d16-float32-causal_bottom_right-dense-softcap5", 1)
    result = check(PLAIN, [case], device="cpu").results[0]
    assert result.status == "unsupported" and "causal_bottom_right" in result.unsupported
    assert required_features(case) == {"causal_bottom_right", "softcap"}


def test_blhd_layout(seed):
    from user_impls import plain_blhd

    report = judge(Implementation("blhd", plain_blhd, layout="blhd", features={"causal_top_left", "gqa"}), seed=seed)
    assert report.passed


def test_flashref_through_the_gate_is_verify(seed):
    case = gate.Case.from_name(CASES[0], seed)
    direct = gate.check_case(case, KERNEL_DEVICE)
    gated = check(builtin_implementations()["flashref"], [case], device=KERNEL_DEVICE).results[0]
    assert {t: e.kernel for t, e in direct.errors.items()} == {t: e.kernel for t, e in gated.errors.items()}


def test_the_cli_judges_a_users_function_with_features(tmp_path, capsys, seed):
    code = main(["verify", "--impl", "user_impls:plain_attention", "--features", "causal_top_left,gqa",
                 "--case", CASES[0], "--case", CASES[2], "--seed", str(seed), "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["implementations"]["user_impls:plain_attention"]["summary"]["passed"] == 2


def test_the_cli_fails_a_buggy_function_and_prints_its_replay(capsys):
    code = main(["verify", "--impl", "user_impls:off_by_one_causal", "--features", "causal_top_left,gqa",
                 "--case", CASES[0], "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 1 and 'flashref verify --impl user_impls:off_by_one_causal --case "' in out


@pytest.mark.parametrize("spec", ["nosuch", "no_such_module_at_all:f", "user_impls:", "user_impls:missing"])
def test_a_bad_impl_spec_exits_2(spec, capsys):
    assert main(["verify", "--impl", spec, "--case", CASES[0]]) == 2
    assert "flashref verify:" in capsys.readouterr().out


def test_entry_points_are_found(monkeypatch):
    import importlib.metadata

    from user_impls import PLAIN

    class Entry:
        name, load = "theirs", staticmethod(lambda: PLAIN)

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Entry()] if group else [])
    assert resolve_implementation("theirs") is PLAIN


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="unknown features"):
        parse_features("causal,telepathy")
    with pytest.raises(ValueError, match="layout"):
        Implementation("x", lambda q, k, v: q, layout="lbhd")
    with pytest.raises(TypeError, match="callable"):
        Implementation("x", 3)
    assert "lse" in FEATURES


def test_the_pytest_plugin_fixture_judges_and_fails(attention_gate):
    """The plugin's fixture as another project uses it (entry point pytest11)."""
    cases = [gate.Case.from_name(n, 7) for n in CASES[:2]]
    report = attention_gate("user_impls:plain_attention", cases, features="causal_top_left,gqa")
    assert report.passed
    with pytest.raises(AssertionError, match="replay|--impl user_impls:off_by_one_causal"):
        attention_gate("user_impls:off_by_one_causal", cases, features="causal_top_left,gqa")


def packed_cases(seed):
    return gate.sweep("quick", seed=seed, families=["varlen", "kvcache"])


def test_packed_families_judge_a_users_varlen_and_kvcache(seed):
    report = check(PLAIN_PACKED, packed_cases(seed), device="cpu")
    assert report.passed, [r.summary() for r in report.results if r.status in ("fail", "error")]
    judged = [r for r in report.results if r.status == "pass"]
    assert {type(r.case).__name__ for r in judged} == {"VarlenCase", "KvcacheCase"}
    # The decode variants it does not declare are unsupported, and say which feature they need.
    assert any(r.unsupported and "alibi" in r.unsupported for r in report.results)
    # Without a varlen entry point the family is unsupported, never failed.
    dense_only = check(PLAIN, packed_cases(seed), device="cpu")
    assert dense_only.count("unsupported") == len(dense_only.results)
    assert all("entry point" in r.unsupported for r in dense_only.results)


@pytest.mark.parametrize("impl, expected", [
    (Implementation("overread", plain_attention, features=PACKED_FEATURES, varlen=varlen_overreads), "fail"),
    (Implementation("no-append", plain_attention, features=PACKED_FEATURES, kvcache=kvcache_without_append), "error"),
])
def test_packed_planted_bugs_fail(impl, expected, seed):
    report = check(impl, packed_cases(seed), device="cpu")
    bad = [r for r in report.results if r.status == expected]
    assert bad, f"{impl.name}: nothing {expected}ed"
    assert f"--impl {impl.name}" in bad[0].replay
    if expected == "error":
        assert "differ from the append's expectation" in bad[0].exception


@pytest.mark.parametrize("bug", [None, "causal_off_by_one", "drops_last_partial_block", "truncated_log2e"])
def test_the_quick_preset_catches_each_planted_bug_of_a_wrapped_implementation(bug, seed):
    """The issue's mutation check: a user's masked attention (flashref's masks, an exp2 softmax)
    judged on `flashref verify --quick`'s cases; correct, it passes every case it declares, and
    each realistic bug fails some with a replay command that names it."""
    impl = Implementation(bug or "masked", masked_with(bug), features=MASK_FEATURES)
    report = check(impl, "quick", device="cpu", seed=seed)
    judged = report.count("pass") + report.count("fail")
    assert report.count("error") == 0 and judged >= 25  # the quick cases without softcap/ALiBi/sinks/dropout
    if bug is None:
        assert report.passed, [r.summary() for r in report.results if r.status == "fail"]
    else:
        failed = [r for r in report.results if r.status == "fail"]
        assert failed, f"{bug} passed all {judged} quick cases it declares"
        assert failed[0].replay.startswith(f"flashref verify --impl {bug} --case ")


def test_an_implementation_that_cannot_run_here_says_so_once_and_exits_3(capsys, seed):
    """An implementation whose ``available`` says it cannot run on this device (sdpa-cudnn on a
    CPU does the same): every case unsupported with its one reason, nothing judged, exit 3."""
    code = main(["verify", "--impl", "user_impls:UNAVAILABLE", "--case", CASES[0], "--case", CASES[1],
                 "--seed", str(seed)])
    out = capsys.readouterr().out
    assert code == 3 and "NOTHING RAN" in out
    assert "unsupported: needs an accelerator this machine does not have" in out
