"""The docs describe the code as it is: the README stays a front door whose first lines are the
commands CI runs; every file and every ``flashref.`` name the docs mention exists; the
signatures docs/architecture.md lists are the functions' own."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Paths the docs name as what a command writes, not as files of the tree.
GENERATED = {"bench/bench.json", "bench/results.md"}


def test_the_readme_is_a_front_door_with_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install torch==") and "flashref verify --quick" in first_block[0]
    assert first_block[1] == "OPENBLAS_NUM_THREADS=1 python -m pytest -n 2"
    assert "python -m pytest -n 2" in (ROOT / ".ci/run").read_text()  # CI runs the README's command


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_the_docs_name_exists(doc):
    text = doc.read_text()
    named = {m.group(1).rstrip(".") for m in re.finditer(
        r"(?<![\w/.-])((?:flashref|kernels|reference|autograd|tests|bench|docs|\.ci)/[\w./-]*\w)", text)}
    # Placeholders (kernels/tables/ARCH.json) and prefixes of generated names (bench/bench_) aside.
    missing = sorted(p for p in named - GENERATED
                     if not (ROOT / p).exists() and not re.search(r"[A-Z]{3}|_$", p))
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
    for target in re.findall(r"\]\(([^)#]+)\)", text):  # markdown links
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flashref_name_the_docs_use_exists(doc):
    text = doc.read_text()
    names = set()
    for m in re.finditer(r"\bflashref(?:\.[A-Za-z_]\w*)+", text):
        before, after = text[max(0, m.start() - 4):m.start()], text[m.end():m.end() + 1]
        if before.endswith(("ops.", '"')) or after == "/" or text[max(0, m.start() - 9):m.start()] == "format = ":
            continue  # torch.ops.flashref.* (torch operators), schema and suite names, a file format tag
        names.add(m.group(0))
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, f"{doc.name} names what flashref does not have: {missing}"


def _documented_signatures(text: str) -> dict[str, list[str]]:
    """name -> parameter names of every ``name(...)`` at the start of a line in python blocks."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for m in re.finditer(r"^(\w+)\(", block, re.M):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(block[i], 0)
                i += 1
            params = [p.split("=")[0].strip() for p in re.sub(r"\(.*?\)", "", block[m.end():i - 1]).split(",")]
            found[m.group(1)] = [p for p in params if p and p != "*"]
    return found


def test_docs_kernels_lists_every_module_of_kernels():
    """docs/kernels.md's file table has one line per kernels/ module, and no line for one that is gone."""
    listed = set(re.findall(r"^\| `kernels/(\w+)\.py` \|", (ROOT / "docs/kernels.md").read_text(), re.M))
    modules = {path.stem for path in (ROOT / "kernels").glob("*.py")}
    assert listed == modules, f"docs/kernels.md: unlisted {sorted(modules - listed)}, gone {sorted(listed - modules)}"


@pytest.mark.parametrize("module, names", [
    ("flashref.kernels", ["flash_attention", "flash_attention_varlen", "flash_attention_with_kvcache"]),
    ("flashref.reference", ["attention_forward", "attention_backward", "scaled_dot_product_attention",
                            "blocked_attention_forward", "merge_attention", "attention_mask",
                            "attention_with_kvcache"]),
])
def test_the_documented_signatures_are_the_code(module, names):
    documented = _documented_signatures((ROOT / "docs/architecture.md").read_text())
    mod = importlib.import_module(module)
    for name in names:
        real = [p for p in inspect.signature(getattr(mod, name)).parameters]
        assert documented.get(name) == real, f"docs/architecture.md: {name}{tuple(documented.get(name) or ())} " \
                                             f"vs the code's {tuple(real)}"
