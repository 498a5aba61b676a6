"""The layers call only downward (docs/architecture.md): no module imports a private name
(``_x``) from another module, and the kernels' host side is a one-way stack: the API modules ->
checks -> the custom ops -> the launch layer -> the Triton kernels, with no import back up,
not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flashref", "kernels", "reference", "autograd")
# kernels/: each module's rank in the stack; a module may import only modules of a lower rank.
KERNEL_STACK = {
    "rounding": 0, "tile_loads": 0, "tile_tables": 0,  # jit helpers, the launch tables
    "attention_blocks": 1,  # the @triton.jit blocks every kernel shares
    "tuning_space": 1, "tuned_tables": 2, "config_dispatch": 3,  # tuning candidates, tuned tables, config choice
    "attention_forward": 4, "attention_backward": 5, "attention_decode": 5,  # the Triton kernels
    "launch": 6, "checks": 7, "library": 8,  # the launch layer, the host checks, the custom ops
    "flash_attention": 9, "flash_attention_varlen": 9, "flash_attention_kvcache": 9, "fp8_quantize": 9,  # the API
    "sdpa_routing": 10, "tuning": 10, "compile_gate": 10, "__init__": 11,  # users of the API and the tables
}


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text())


@pytest.mark.parametrize("path, tree", list(modules()), ids=lambda x: str(x.relative_to(ROOT))
                         if isinstance(x, Path) else "")
def test_no_private_name_is_imported_from_another_module(path, tree):
    private = [f"line {node.lineno}: {alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private, f"{path.relative_to(ROOT)} imports private names: {private}"


def _kernel_imports(tree) -> set[str]:
    """The kernels/ modules a kernels/ module imports (relative imports, anywhere in the file)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_the_kernels_host_side_is_a_one_way_stack():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        name = path.stem
        assert name in KERNEL_STACK, f"kernels/{path.name}: give it a rank in KERNEL_STACK (tests/test_layers.py)"
        for imported in _kernel_imports(ast.parse(path.read_text())):
            assert KERNEL_STACK[imported] < KERNEL_STACK[name], \
                f"kernels/{name}.py imports {imported} (rank {KERNEL_STACK[imported]} >= {KERNEL_STACK[name]}): upward"


def test_the_oracle_never_imports_torch_triton_or_the_kernels():
    for package in ("autograd", "reference"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in names:
                    assert name.split(".")[0] not in ("torch", "triton") and not name.startswith("flashref.kernels"), \
                        f"{path.relative_to(ROOT)} imports {name}"


def _module_name(path: Path) -> str:
    """flashref/gate/rule.py -> flashref.gate.rule; kernels/launch.py -> flashref.kernels.launch."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "flashref":
        parts = ["flashref"] + parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, tree, known: set[str]) -> set[str]:
    """The project's modules a file imports anywhere in it (inside functions too), absolute or
    relative; ``from package import name`` counts ``package.name`` when that is a module."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != here}


def test_no_import_cycle_not_even_inside_functions():
    """The project's import graph (every import statement, at the top of a file or inside a
    function) has no cycle: a package's ``__init__`` re-exporting its modules aside, each edge
    points down."""
    files = {_module_name(path): (path, tree) for path, tree in modules()}
    known = set(files)
    graph = {}
    for name, (path, tree) in files.items():
        # A package's __init__ importing its own modules, and a module importing the package it
        # lives in (its __init__'s names), are the package's own business, not layering.
        graph[name] = {m for m in _imported_modules(path, tree, known)
                       if not m.startswith(name + ".") and not name.startswith(m + ".")}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
