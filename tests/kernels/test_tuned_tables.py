"""Tuned tables and gate-pruned tile tables: the data files, how the dispatcher reads them, the
tuner's time box. CPU only (no kernel runs): the measurements are stand-ins.
"""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

from flashref.kernels import config_dispatch, tile_tables, tuned_tables, tuning, tuning_space
from flashref.kernels.tile_tables import KernelConfig

COMMITTED_TUNED = sorted(tuned_tables.TUNED_DIR.glob("*.json"))
COMMITTED_TABLES = sorted(tuning_space.TABLES_DIR.glob("*.json"))


def tuned_table(entries: dict, capability=(9, 0), device="NVIDIA H200") -> dict:
    table = tuning.new_table(device, capability)
    table["entries"] = {k: {"config": dataclasses.asdict(c), "ms": 1.0} for k, c in entries.items()}
    return table


def test_a_default_config_is_always_a_sound_tuned_entry():
    default = tile_tables.configs_for("forward", 128, torch.bfloat16)[0]
    assert tuned_tables.tuned_outside_tables(tuned_table({"forward/128/bfloat16/causal": default})) == []


def test_a_config_outside_the_gated_table_is_caught():
    never = KernelConfig(256, 256, 2, 7)  # in no table: the gate never saw it
    bad = tuned_tables.tuned_outside_tables(tuned_table({"backward_dq/64/float16/full": never}))
    assert len(bad) == 1 and "backward_dq/64/float16/full" in bad[0]
    assert tuned_tables.tuned_outside_tables(tuned_table({}, capability=(7, 5))) != []


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(schema="other"), "schema"),
    (lambda t: t.update(capability=[9]), "capability"),
    (lambda t: t["entries"].update({"forward/96/bfloat16/causal": {"config": {}}}), "bad entry key"),
    (lambda t: t["entries"].update({"forward/128/float32/causal": {"config": {}}}), "bad entry key"),
    (lambda t: t["entries"].update({"forward/128/bfloat16/full": {"config": {"block_m": 64}}}), "config"),
])
def test_schema_violations_are_rejected(change, message):
    table = tuned_table({})
    change(table)
    with pytest.raises(ValueError, match=message):
        tuned_tables.validate_tuned(table)


@pytest.mark.parametrize("path", COMMITTED_TUNED, ids=lambda p: p.name)
def test_committed_tuned_tables_are_sound(path):
    """Schema, file name = its key, and every config gate-passed for its arch."""
    table = json.loads(path.read_text())
    tuned_tables.validate_tuned(table)
    assert path.name == tuned_tables.tuned_file_name(table["device"], tuple(table["capability"]), table["triton"])
    assert tuned_tables.tuned_outside_tables(table) == []


@pytest.mark.parametrize("path", COMMITTED_TABLES, ids=lambda p: p.name)
def test_committed_tile_tables_hold_only_gate_passed_candidates(path):
    table = json.loads(path.read_text())
    assert table["schema"] == tuning_space.TABLE_SCHEMA and path.stem == table["arch"]
    assert table["command"] == f"flashref compile-report --arch {table['arch']} --prune-table"
    for key, entries in table["tables"].items():
        kernel = key.split("/")[0]
        candidates = tuning_space.candidate_configs(kernel)
        for entry in entries:
            assert KernelConfig(**entry["config"]) in candidates, (key, entry)
        rejected = {json.dumps(r["config"], sort_keys=True) for r in table["rejected"].get(key, [])}
        assert not rejected & {json.dumps(e["config"], sort_keys=True) for e in entries}


def fake_cuda(monkeypatch, tmp_path, name="NVIDIA H200", capability=(9, 0)):
    monkeypatch.setattr(tuned_tables, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    tuned_tables.load_tuned.cache_clear()
    q = types.SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0))
    return dict(Q=q, HEAD_DIM=128, RIGHT_BOUND=True)


def chosen(kernel, args):
    picked = config_dispatch.config_pruner(kernel)(config_dispatch.all_triton_configs(kernel), args)
    return [KernelConfig.of_triton(c) for c in picked]


def test_the_dispatcher_reads_the_devices_tuned_table_first(monkeypatch, tmp_path):
    args = fake_cuda(monkeypatch, tmp_path)
    defaults = list(tile_tables.configs_for("forward", 128, torch.bfloat16))
    assert chosen("forward", args) == defaults  # no file yet: the untuned defaults
    winner = defaults[-1]
    tuned_tables.write_tuned(tuned_table({"forward/128/bfloat16/causal": winner}), tmp_path)
    tuned_tables.load_tuned.cache_clear()
    assert chosen("forward", args) == [winner]
    assert chosen("forward", dict(args, RIGHT_BOUND=False)) == defaults  # a group the file lacks
    # another device, or another triton, falls back to the defaults
    args = fake_cuda(monkeypatch, tmp_path, name="NVIDIA A100-SXM4-80GB", capability=(8, 0))
    assert chosen("forward", args) == defaults
    tuned_tables.load_tuned.cache_clear()


def test_a_split_dkdv_pass_finds_its_own_entry(monkeypatch, tmp_path):
    args = dict(fake_cuda(monkeypatch, tmp_path), HEAD_DIM=256, GRADS="dv")
    dv = tile_tables.configs_for("backward_dkdv", 256, torch.bfloat16)[0]
    tuned_tables.write_tuned(tuned_table({"backward_dv/256/bfloat16/causal": dv}), tmp_path)
    tuned_tables.load_tuned.cache_clear()
    assert chosen("backward_dkdv", args) == [dv]
    tuned_tables.load_tuned.cache_clear()


def test_forced_config_wins_for_the_tuner():
    forced = tuning_space.candidate_configs("backward_dq")[-1]
    config_dispatch.force_config("backward_dq", forced)
    try:
        q = types.SimpleNamespace(dtype=torch.float16, device=torch.device("cpu"))
        assert chosen("backward_dq", dict(Q=q, HEAD_DIM=64, RIGHT_BOUND=False)) == [forced]
    finally:
        config_dispatch.force_config("backward_dq", None)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_tune_keeps_the_fastest_and_stops_at_the_time_box():
    clock = FakeClock()
    groups = tuning.plan("sm_90", kernels=("forward",), head_dims=(128,), dtypes=("bfloat16",))
    assert [g.key for g, _ in groups] == ["forward/128/bfloat16/causal", "forward/128/bfloat16/full"]
    candidates = groups[0][1]
    assert candidates[0] == tile_tables.configs_for("forward", 128, torch.bfloat16)[0]  # default first
    fastest = candidates[-1]

    def measure(group, config, shape):
        clock.now += 10.0  # each measurement "takes" 10 s
        if config == candidates[1]:
            raise RuntimeError("out of resource: shared memory")
        return 1.0 if config == fastest else 2.0

    seen = []
    table = tuning.new_table("NVIDIA H200", (9, 0))
    budget = 10.0 * 3 * len(candidates) + 5  # the first group whole (3 shapes each), then the box shuts
    tuning.tune(groups, table, budget_s=budget, measure=measure, clock=clock, on_group=lambda g, e: seen.append(g.key))
    first = table["entries"]["forward/128/bfloat16/causal"]
    assert KernelConfig(**first["config"]) == fastest and first["ms"] == 3.0 and first["default_ms"] == 6.0
    assert first["complete"] and "error" in first["results"][1]
    assert table["complete"] is False and seen == ["forward/128/bfloat16/causal", "forward/128/bfloat16/full"]
    second = table["entries"]["forward/128/bfloat16/full"]
    assert not second["complete"] and second["measured"] == 1  # the default alone made it in
    assert tuned_tables.tuned_outside_tables(table) == []


def test_write_table_names_the_file_by_device_capability_triton_and_merges(tmp_path):
    a = tile_tables.configs_for("forward", 64, torch.bfloat16)[0]
    b = tile_tables.configs_for("backward_dq", 64, torch.bfloat16)[0]
    p1 = tuned_tables.write_tuned(tuned_table({"forward/64/bfloat16/causal": a}), tmp_path)
    p2 = tuned_tables.write_tuned(tuned_table({"backward_dq/64/bfloat16/causal": b}), tmp_path)
    import triton

    assert p1 == p2 == tmp_path / f"nvidia-h200-sm90-triton{triton.__version__}.json"
    assert set(json.loads(p1.read_text())["entries"]) == {"forward/64/bfloat16/causal", "backward_dq/64/bfloat16/causal"}


def test_the_plan_splits_dkdv_at_256_and_orders_by_priority():
    keys = [g.key for g, _ in tuning.plan("sm_80", causal=(True,))]
    assert keys[0] == "forward/128/bfloat16/causal" and keys[-1].endswith("/float16/causal")
    assert "backward_dk/256/bfloat16/causal" in keys and "backward_dv/256/bfloat16/causal" in keys
    assert "backward_dkdv/256/bfloat16/causal" not in keys
    assert [s[2] for s in tuning.shapes(64)] == list(tuning.TUNE_SEQLENS)
    assert all(b * n == tuning.TOKENS and h * 64 == tuning.MODEL_DIM for b, h, n, _ in tuning.shapes(64))
