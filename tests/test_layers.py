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
    "tuning_space": 1, "tuned_tables": 2, "config_dispatch": 3,  # tuning candidates, tuned tables, config choice
    "attention_forward": 4, "attention_backward": 5, "attention_decode": 5,  # the Triton kernels
    "launch": 6, "checks": 7, "library": 8,  # the launch layer, the host checks, the custom ops
    "flash_attention": 9, "flash_attention_varlen": 9, "flash_attention_kvcache": 9,  # the API
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
