"""The gate's power (issue 20): what it must see, shown by what it catches.

- Block boundaries: the boundary cases put every boundary quantity on the residues 0, 1, 2,
  B - 2, B - 1 of every block size B of every tile the tables hold, and a new tile cannot open a
  hole (the sweep is derived from the tables; ``residue_gaps`` checks it).
- Precision: the RMS criterion against the algorithm baseline (docs/design.md) fails a kernel
  whose casts truncate, or that rounds P to a coarser dtype, and the lse check fails a
  truncated ln 2; the real kernel passes both on the same inputs.
- Reach: every path and family the kernels have is in the sweeps (descriptor loads, float32 and
  16-bit per family, kvcache variants and split paths, GQA dropout over several batch rows).

The kernel-level mutation score (realistic one-line bugs planted in a scratch copy of the
kernels) is ``flashref mutate`` (flashref/mutations.py, tests/kernels/test_mutations.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from flashref import gate
from flashref.gate import Case, KvcacheCase, VarlenCase, case_from_name, sweep


# ---------------------------------------------------------------------------- block boundaries
def test_ci_cases_put_every_boundary_quantity_on_every_residue_of_every_table_tile():
    cases = sweep("ci", families=["dense"])
    assert gate.residue_gaps(cases) == []
    tables = gate.table_tiles()
    for launch_index, launch in enumerate(gate.TILE_LAUNCHES):
        assert {c.tiles[launch_index] for c in cases if c.tiles} == set(tables[launch]), launch


def test_quick_covers_the_residues_of_its_own_tiles():
    cases = sweep("quick", families=["dense"])
    own = {launch: (tile,) for launch, tile in zip(gate.TILE_LAUNCHES, gate.QUICK_TILES)}
    assert gate.residue_gaps(cases, own) == []
    tables = gate.table_tiles()
    assert all(tile in tables[launch] for launch, tile in zip(gate.TILE_LAUNCHES, gate.QUICK_TILES))


def test_a_missing_residue_is_reported():
    cases = sweep("ci", families=["dense"])
    boundary = [c for c in cases if c.tiles]
    gaps = gate.residue_gaps([c for c in cases if c is not boundary[2]])
    assert gaps and all("never" in g for g in gaps)


def test_a_new_tile_in_the_tables_is_covered_by_construction(monkeypatch):
    tables = gate.table_tiles()
    grown = {**tables, "forward": tables["forward"] + ((256, 16),)}
    monkeypatch.setattr(gate.boundaries, "table_tiles", lambda: grown)
    cases = gate.boundary_cases("ci")
    assert any(c.tiles[0] == (256, 16) for c in cases)
    assert gate.residue_gaps(cases) == []


def test_decode_tiles_are_the_dispatchers_and_kvcache_lengths_hit_the_residues():
    from flashref.kernels.attention_decode import decode_tile
    from flashref.gate import DECODE_TILES, kvcache_boundary_rows

    dispatched = {decode_tile(d, dt, hopper)[:2] for d in (16, 32, 64, 96, 128, 256)
                  for dt in ("float16", "bfloat16", "float32") for hopper in (False, True)}
    assert dispatched <= set(DECODE_TILES)
    rows = kvcache_boundary_rows("ci")
    for tile in DECODE_TILES:
        lengths = [n + row[3] for row, extra in rows if extra["tile"] == tile for n in extra["cache_lens"]]
        for block in (*tile, 16, 32, 64):  # the tile, the page sizes and the 64-key split chunk
            assert {n % block for n in lengths} >= {0, 1, 2, block - 2, block - 1}, (tile, block)


# ---------------------------------------------------------------------------- precision
def truncating(dtype):
    """A cast to ``dtype`` that rounds toward zero (what a truncating conversion does)."""
    def cast(x):
        y = x.to(dtype)
        toward_zero = torch.nextafter(y, torch.zeros_like(y))
        return torch.where(y.float().abs() > x.abs(), toward_zero, y).float()
    return cast


def coarser(x):
    """P and dS rounded to bfloat16 whatever the dtype (a coarser rounding than float16's)."""
    return x.to(torch.bfloat16).float()


PRECISION_CASE = dict(batch=2, heads_q=2, heads_kv=1, seqlen_q=64, seqlen_k=90, head_dim=32, causal=True,
                      causal_alignment="bottom_right", kv_lens=False)


@pytest.mark.interp
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_rms_criterion_fails_a_kernel_that_rounds_worse_than_its_algorithm(dtype, seed):
    case = Case(dtype=dtype, seed=seed, **PRECISION_CASE)
    inputs = gate.make_inputs(case)
    ref, base = gate.oracle_attention(case, inputs), gate.baseline_attention(case, inputs)
    algo = gate.algorithm_attention(case, inputs)
    kernel = gate.judge_all(case, inputs, ref, base, gate.kernel_attention(case, inputs), algo)
    assert all(e.passed for e in kernel.values()), {t: e.ratio for t, e in kernel.items()}
    bad_roundings = [truncating(getattr(torch, dtype))] + ([coarser] if dtype == "float16" else [])
    for rounding in bad_roundings:
        worse = gate.algorithm_attention(case, inputs, rounding=rounding)
        judged = gate.judge_all(case, inputs, ref, base, worse, algo)
        for key in ("out", "dq", "dk", "dv"):
            assert not judged[key].passed and judged[key].rms.ratio > 1, (key, judged[key].rms)
        # The max-norm rule alone lets some of it through (plain 16-bit attention errs more).
        print(rounding, {key: round(judged[key].max_ratio, 2) for key in ("out", "dq", "dk", "dv")})


@pytest.mark.interp
@pytest.mark.parametrize("dtype", gate.DTYPES)
def test_a_truncated_ln2_in_the_lse_fails(dtype, seed):
    case = Case(dtype=dtype, seed=seed, **PRECISION_CASE)
    inputs = gate.make_inputs(case)
    ref, base = gate.oracle_attention(case, inputs), gate.baseline_attention(case, inputs)
    algo, kern = gate.algorithm_attention(case, inputs), gate.kernel_attention(case, inputs)
    assert gate.judge_all(case, inputs, ref, base, kern, algo)["lse"].passed
    truncated = dict(kern, lse=kern["lse"] * (0.6931 / math.log(2)))
    assert not gate.judge_all(case, inputs, ref, base, truncated, algo)["lse"].passed


def test_the_rms_criterion_allows_for_few_elements():
    case = Case(1, 1, 1, 1, 1, 1, "bfloat16", False, "top_left", False)
    small = gate.rms_check(case.dtype, torch.ones(2), torch.ones(2), np.zeros(2), np.ones(2))
    large = gate.rms_check(case.dtype, torch.ones(10**4), torch.ones(10**4), np.zeros(10**4), np.ones(10**4))
    assert small.factor > 2 * large.factor and large.factor == pytest.approx(gate.RMS_FACTOR_16BIT * 1.03)
    # (B, H, L, D) tensors count rows: one query row of 256 elements is one sample, not 256.
    one_row = gate.rms_check(case.dtype, torch.ones(1, 1, 1, 256), torch.ones(1, 1, 1, 256), np.zeros((1, 1, 1, 256)),
                           np.ones((1, 1, 1, 256)))
    assert one_row.factor == pytest.approx(gate.RMS_FACTOR_16BIT * 4)


# ---------------------------------------------------------------------------- reach
@pytest.mark.parametrize("preset", ["quick", "ci"])
def test_every_family_has_float32_and_16bit_cases(preset):
    cases = sweep(preset)
    dense = [c for c in cases if isinstance(c, Case)]
    families = {
        "dense": [c for c in dense if not c.tiles and c.window == (-1, -1) and not (c.softcap or c.alibi or c.sinks
                                                                                   or c.dropout_p)],
        "sinks": [c for c in dense if c.sinks],
        "dropout": [c for c in dense if c.dropout_p > 0],
        "window": [c for c in dense if c.window != (-1, -1)],
        "softcap": [c for c in dense if c.softcap],
        "alibi": [c for c in dense if c.alibi],
        "boundary": [c for c in dense if c.tiles],
        "varlen": [c for c in cases if isinstance(c, VarlenCase)],
        "kvcache": [c for c in cases if isinstance(c, KvcacheCase)],
    }
    for name, members in families.items():
        dtypes = {c.dtype for c in members}
        assert "float32" in dtypes and dtypes - {"float32"}, (preset, name, dtypes)


@pytest.mark.parametrize("preset", ["quick", "ci"])
def test_the_descriptor_path_and_the_pointer_path_both_run(preset):
    sixteen = [c for c in sweep(preset, families=["dense"]) if c.dtype != "float32"]
    for group in ([c for c in sixteen if not c.tiles], [c for c in sixteen if c.tiles]):
        assert {c.descriptors for c in group} == {True, False}
    assert all(c.head_dim % 8 == 0 for c in sixteen if c.descriptors)  # 16-byte rows: TMA can load them


@pytest.mark.parametrize("preset", ["quick", "ci"])
def test_kvcache_has_variants_and_both_split_paths(preset):
    kv = [c for c in sweep(preset, families=["varlen", "kvcache"]) if isinstance(c, KvcacheCase)]
    assert any(c.window != (-1, -1) for c in kv) and any(c.softcap for c in kv)
    assert any(c.alibi for c in kv) and any(c.sinks for c in kv)
    assert {c.num_splits == 1 for c in kv} == {True, False}  # one split (no combine) and several


def test_quick_has_gqa_dropout_over_several_batch_rows():
    assert any(c.batch > 1 and c.heads_q > c.heads_kv > 0 and c.dropout_p > 0
               for c in sweep("quick", families=["dense"]))


@pytest.mark.interp
def test_verify_runs_and_reports_the_path_it_asked_for(seed):
    tma = Case(1, 2, 1, 20, 33, 16, "bfloat16", True, "top_left", False, seed=seed, descriptors=True)
    assert gate.check_case(tma).path == "tma"
    assert gate.check_case(dataclasses.replace(tma, descriptors=False)).path == "pointer"
    assert gate.check_case(dataclasses.replace(tma, dtype="float32")).path == "pointer"  # float32: no TMA


@pytest.mark.parametrize("name", [
    "b2-hq2-hkv1-lq64-lk126-d16-float32-causal_bottom_right-kvlens-kvl126_64-tiles64x32_32x64_64x32",
    "b2-hq2-hkv1-lq63-lk127-d16-float16-noncausal-kvlens-win61_inf-kvl127_62-tiles64x32_32x64_64x32-tma",
    "kvcache-hq4-hkv2-lq1-new1-cap192-page16-splits3-d32-bfloat16-lens61_126_127_64-tile16x32",
    "kvcache-hq4-hkv2-lq2-new1-cap48-page16-splits3-d32-float16-win9_inf-softcap20-alibi-sinks",
])
def test_new_case_fields_round_trip_through_names(name):
    case = case_from_name(name, 5)
    assert case.name == name and case.seed == 5


def test_bad_new_case_fields_are_rejected():
    with pytest.raises(ValueError, match="kv_len_values"):
        Case(2, 1, 1, 4, 8, 16, "float16", False, "top_left", True, kv_len_values=(8, 9))
    with pytest.raises(ValueError, match="kv_len_values"):
        Case(2, 1, 1, 4, 8, 16, "float16", False, "top_left", False, kv_len_values=(8, 3))
    with pytest.raises(ValueError, match="tiles"):
        Case(1, 1, 1, 4, 8, 16, "float16", False, "top_left", False, tiles=((32, 32),))
    with pytest.raises(ValueError, match="cache_lens"):
        KvcacheCase(2, 1, 1, 1, 32, 16, 3, 32, "float16", cache_lens=(1, 2, 3, 40))
