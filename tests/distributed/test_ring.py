"""The gate for ring attention: processes spawned on the CPU (gloo, kernels under Triton's
interpreter) run ring_attention forward and backward on a sharded random sequence; the
gathered out, dq, dk, dv are judged against the float64 oracle on the whole sequence with the
project's rule (baseline: plain attention in the same dtype on the whole sequence).

CI: 2 processes, a covering design (both layouts x causal or not, MHA / GQA, odd lengths,
float16 / bfloat16 / float32) plus bad input on every rank, in one spawn. ``slow``: 4 and 3
processes. Fresh seeds each run (the session seed of tests/seeding.py, printed in pytest's
header; FLASHREF_SEED=<n> replays), each failure prints its replay command.
"""

import pytest
import torch
from seeding import derived_seed

from flashref import gate
from flashref.distributed import ring_attention, unshard_sequence
from flashref.gate.ring import (BAD_INPUT_SCENARIOS, RING_TENSORS, RingCase, judge_ring_case, ring_sweep,
                                        run_ring_check)

# Case seeds are fixed at collection from the session seed, so the ids and the replay lines agree.
CI_CASES = ring_sweep(2, seed=derived_seed("tests/distributed/test_ring.py::two processes"))


def assert_all_passed(run):
    lines = [r.summary() if r.exception is None else f"ERROR {r.name}: {r.exception}  replay: {r.replay}"
             for r in run.results]
    print("\n".join(lines))
    failed = [line for r, line in zip(run.results, lines) if not r.passed]
    assert not failed, "\n".join(failed)


def assert_bad_input_rejected_everywhere(run):
    for scenario, expected in BAD_INPUT_SCENARIOS.items():
        messages = [errors[scenario] for errors in run.scenarios]
        for rank, message in enumerate(messages):
            print(f"{scenario}, rank {rank}: {message}")
            assert message is not None, f"rank {rank} accepted the bad input of {scenario}"
            assert message.startswith("ValueError"), message
        # In one_rank_bad_head_dim only rank 0 holds the bad tensor; the others say why they stop.
        assert expected in " ".join(messages), (scenario, messages)
    assert all(run.group_alive), "a rank's process group was unusable after the bad-input scenarios"


def test_the_ci_design_covers_layouts_masks_gqa_dtypes_and_odd_lengths():
    assert {(c.layout, c.case.causal) for c in CI_CASES} == {(l, m) for l in ("zigzag", "contiguous") for m in (True, False)}
    assert {c.case.dtype for c in CI_CASES} == set(gate.DTYPES)
    assert any(c.case.heads_q > c.case.heads_kv for c in CI_CASES)
    assert any(c.layout == "contiguous" and c.case.seqlen_q // c.world_size % 2 for c in CI_CASES)  # odd per rank
    assert any(c.layout == "zigzag" and c.case.seqlen_q // (2 * c.world_size) % 2 for c in CI_CASES)  # odd chunk
    for layout in ("zigzag", "contiguous"):  # every variant ring attention takes in both layouts
        cases = [c.case for c in CI_CASES if c.layout == layout]
        assert any(c.kv_lens for c in cases) and any(c.softcap for c in cases) and any(c.sinks for c in cases)
        assert any(c.window != (-1, -1) for c in cases) and any(c.alibi for c in cases)
    assert {c.case.alibi for c in CI_CASES} >= {"h", "bh"}
    assert any(c.case.kv_lens and c.case.batch > 1 for c in CI_CASES)  # a drawn length, possibly 0
    assert any(not c.case.kv_lens and not c.case.softcap for c in CI_CASES)


@pytest.mark.interp
def test_two_processes_meet_the_rule_and_reject_bad_input_on_every_rank():
    """One spawn for every CI case and bad-input scenario: each process imports torch and
    triton, which costs more than a case (and one test keeps pytest-xdist from spawning twice)."""
    run = run_ring_check(CI_CASES, 2, scenarios=list(BAD_INPUT_SCENARIOS), deadline_s=600)
    print(f"2 processes: {run.seconds:.1f} s wall; per-rank ring seconds {run.rank_seconds}")
    assert_all_passed(run)
    assert_bad_input_rejected_everywhere(run)


def test_without_a_process_group_ring_attention_says_so():
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ring_attention(q, q, q)


def test_the_checker_can_fail(seed):
    """A gathered dk whose second half (the zigzag chunks of one rank) is missing fails the rule."""
    rc = RingCase(2, "zigzag", gate.Case(1, 2, 1, 12, 12, 16, "float32", True, "top_left", False, seed))
    inputs = gate.make_inputs(rc.case)
    base = gate.baseline_attention(rc.case, inputs)
    tensors = [base[t] for t in RING_TENSORS if t in base]
    assert judge_ring_case(rc, tensors, 0.0).passed  # the baseline itself is within its own bound
    shards = [t.clone() for t in base["dk"].chunk(2, dim=2)]
    shards[1].zero_()
    tensors[2] = unshard_sequence(shards, layout="contiguous")
    result = judge_ring_case(rc, tensors, 0.0)
    assert not result.passed and not result.errors["dk"].passed and result.errors["out"].passed
    assert "flashref verify --distributed 2 --case" in result.summary()


def test_a_ring_case_is_top_left_self_attention_without_dropout():
    fields = dict(batch=1, heads_q=2, heads_kv=1, seqlen_q=12, seqlen_k=12, head_dim=16, dtype="float16",
                  causal=True, causal_alignment="top_left", kv_lens=False)
    RingCase(2, "zigzag", gate.Case(**fields | dict(kv_lens=True, softcap=5.0, window=(3, 0), alibi="h", sinks=True)))
    for bad in (dict(seqlen_k=10), dict(causal_alignment="bottom_right"), dict(dropout_p=0.1)):
        with pytest.raises(ValueError, match="a ring case is self-attention"):
            RingCase(2, "zigzag", gate.Case(**fields | bad))


@pytest.mark.slow
@pytest.mark.parametrize("world", [4, 3])
def test_more_processes_meet_the_rule_and_reject_bad_input_on_every_rank(world, seed):
    # dtypes rotated against the CI design, so every spec meets another dtype.
    cases = ring_sweep(world, dtypes=("bfloat16", "float32", "float16"), seed=seed)
    run = run_ring_check(cases, world, scenarios=list(BAD_INPUT_SCENARIOS), deadline_s=1800)
    print(f"{world} processes: {run.seconds:.1f} s wall; per-rank ring seconds {run.rank_seconds}")
    assert_all_passed(run)
    assert_bad_input_rejected_everywhere(run)
