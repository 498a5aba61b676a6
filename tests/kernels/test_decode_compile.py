"""The decoding kernels in the compile gate (kernels/compile_gate.py: decode_specs, compile_decode):
the dispatcher's launches compile for Hopper and Ampere without spills, 16-bit split kernels on
wgmma. Compiling runs in a subprocess: this session imported triton under the interpreter."""

import json
import os
import subprocess
import sys

import pytest

from flashref.kernels.compile_gate import BUCKET_HEAD_DIMS, GATE_DTYPES, MLA_DECODE_PAIRS, decode_specs

SCRIPT = """
import json, sys
from flashref.kernels import compile_gate as cg
rows = []
for arch in ("sm_90", "sm_80"):
    for spec in cg.decode_specs(head_dims=(128,), dtypes=("bfloat16",), arch=arch):
        row = cg.compile_decode(spec, arch)
        rows.append(dict(row.as_dict(), problems=cg.problems(row)))
print(json.dumps(rows))
"""


MLA_SCRIPT = """
import json, sys
from flashref.kernels import compile_gate as cg
rows = []
for arch in ("sm_90", "sm_80"):
    for spec in cg.decode_specs(head_dims=(), dtypes=("bfloat16",), arch=arch, value_pairs=cg.MLA_DECODE_PAIRS):
        row = cg.compile_decode(spec, arch)
        rows.append(dict(row.as_dict(), problems=cg.problems(row)))
print(json.dumps(rows))
"""


def test_decode_specs_cover_every_bucket_dtype_and_layout():
    specs = decode_specs()
    assert {(s.head_dim, s.dtype) for s in specs} == {(d, t) for d in BUCKET_HEAD_DIMS for t in GATE_DTYPES}
    split = [s for s in specs if s.kernel == "decode_split"]
    assert {s.paged for s in split} == {False, True}
    assert all(s.block_m == 64 for s in split if s.dtype != "float32")  # Hopper's wgmma M
    assert all(s.block_m == 16 for s in decode_specs(arch="sm_80") if s.kernel == "decode_split")


@pytest.mark.slow
@pytest.mark.compile
def test_decode_kernels_compile_clean_for_hopper_and_ampere():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 10  # (2 layouts x plain / variants + the combine) x 2 archs
    for row in rows:
        assert row["spills"] == 0, row
        if row["kernel"] == "decode_split" and row["arch"] == "sm_90":
            assert row["uses_wgmma"], row
        # The combine has no matrix product: "no wgmma" is the only problem it may have.
        assert [p for p in row["problems"] if p != "no wgmma" or row["kernel"] != "decode_combine"] == [], row


def test_mla_decode_specs():
    """The MLA rows: each (D, Dv, absorbed) pair in both layouts, plain and with the variants,
    and a combine over Dv; the absorbed (576, 512) split kernel on 16 rows on every arch."""
    specs = decode_specs(head_dims=(), dtypes=("bfloat16",), arch="sm_90", value_pairs=MLA_DECODE_PAIRS)
    assert {(s.head_dim, s.head_dim_v, s.absorbed) for s in specs if s.kernel == "decode_split"} == set(MLA_DECODE_PAIRS)
    assert len(specs) == 5 * len(MLA_DECODE_PAIRS)
    absorbed = [s for s in specs if s.absorbed]
    assert absorbed and all(s.block_m == 16 and s.variant.endswith("_absorbed") for s in absorbed)


@pytest.mark.compile
def test_mla_decode_kernels_compile_clean_for_hopper_and_ampere():
    """(576, 512) absorbed and (192, 128) plain decode rows, bfloat16, sm_90 and sm_80: no spills,
    shared memory within the limit; the plain pair's split kernel on wgmma on sm_90, the absorbed
    one on mma.sync by design (``compile_gate.mma_sync_by_design``: the wgmma tile spills)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", MLA_SCRIPT], env=env, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 20  # 2 pairs x (2 layouts x plain / variants + the combine) x 2 archs
    for row in rows:
        assert row["spills"] == 0, row
        if row["kernel"] == "decode_split" and row["arch"] == "sm_90":
            assert row["mma"] == ("mma.sync" if row["variant"].endswith("_absorbed") else "wgmma"), row
        assert [p for p in row["problems"] if p != "no wgmma" or row["kernel"] != "decode_combine"] == [], row
