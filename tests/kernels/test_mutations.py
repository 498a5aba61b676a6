"""The mutation catalogue (flashref/mutations.py) stays applicable, and the score holds.

Fast: every entry's old text occurs exactly once in the current tree (a kernel edit that makes
an entry stale fails here with the entry's name, rather than silently scoring nothing), names
are unique, witnesses are case names, and a scratch tree holds the mutated copy. Slow (``-m
slow``, about an hour on 2 cores): the whole score, which fails if ``--ci`` lets any mutation
escape or a witness passes.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from flashref import mutations as mut
from flashref.gate import case_from_name

ROOT = mut.repository_root()


@pytest.mark.parametrize("mutation", mut.CATALOGUE, ids=lambda m: m.name)
def test_every_mutation_applies_to_the_current_tree(mutation):
    text = (ROOT / mutation.file).read_text()
    assert text.count(mutation.old) == 1, f"{mutation.name}: stale ({text.count(mutation.old)} occurrences)"
    assert mut.apply(mutation, text) != text
    case_from_name(mutation.witness, 0)  # a replayable case name (packed ones included)


def test_the_catalogue_covers_the_classes_of_issue_20():
    names = [m.name for m in mut.CATALOGUE]
    assert len(names) == len(set(names)) >= 25
    assert {m.kind for m in mut.CATALOGUE} >= {"boundary", "loop", "rescale", "constant", "rounding", "index",
                                               "stride", "dropout", "packed", "variant", "tma"}
    files = {m.file for m in mut.CATALOGUE}
    assert {"kernels/attention_forward.py", "kernels/attention_backward.py", "kernels/attention_decode.py",
            "kernels/rounding.py", "kernels/tile_loads.py"} <= files


def test_a_stale_mutation_is_refused_by_name():
    stale = dataclasses.replace(mut.CATALOGUE[0], old="this text is in no kernel")
    with pytest.raises(ValueError, match=re.escape(stale.name)):
        mut.apply(stale, (ROOT / stale.file).read_text())


def test_the_scratch_tree_imports_the_mutated_copy(tmp_path):
    mutation = mut.by_name(["log2e-truncated"])[0]
    tree = mut.scratch_tree(mutation, tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import flashref.kernels.attention_blocks as b; print(b.LOG2E)"],
                           cwd=tree, capture_output=True, text=True, timeout=300,
                           env={"PYTHONPATH": str(tree), "TRITON_INTERPRET": "1", "PATH": ""})
    assert probe.stdout.strip() == "1.4427", probe.stdout + probe.stderr
    with pytest.raises(ValueError, match="unknown mutations"):
        mut.by_name(["no-such-mutation"])


@pytest.mark.slow
def test_ci_catches_every_mutation_and_every_witness_fails(tmp_path):
    out = tmp_path / "mutate.json"
    proc = subprocess.run([sys.executable, "-m", "flashref", "mutate", "--check-witnesses", "--json", str(out)],
                          capture_output=True, text=True, timeout=6 * 3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
