"""The import graph: the arithmetic contract (``core``) at the bottom, nothing importing upward.

Every ``import`` in the project's packages is read with :mod:`ast` (imports inside functions included),
so a lazy import that would pull the training side into Verilog generation fails here too.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The project's packages and the ones each may import (besides itself).
ALLOWED = {
    "core": set(),
    "sw": {"core"},
    "hw": {"core"},
    "firmware_gen": {"core", "hw"},
    "sim": {"core", "hw", "firmware_gen"},
    "flow": {"core", "sw", "hw", "firmware_gen", "sim"},
    "bench": {"core", "sw", "hw", "firmware_gen", "sim"},
}
#: Third-party packages the contract may use: tensors and the artifact's container.
CORE_THIRD_PARTY = {"torch", "numpy", "safetensors"}


def imported_modules(source: str) -> list[str]:
    """Absolute module names that ``source`` imports anywhere (relative imports stay in their package)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def violations(package: str, source: str) -> list[str]:
    """The imports in ``source`` (a module of ``package``) that the layering forbids."""
    found = []
    for name in imported_modules(source):
        top = name.split(".")[0]
        if top == package:
            continue
        if top in ALLOWED and top not in ALLOWED[package]:
            found.append(f"{name} (upward or sideways from {package})")
        elif (package == "core" and top not in ALLOWED and top not in sys.stdlib_module_names
              and top not in CORE_THIRD_PARTY):
            found.append(f"{name} (core may use only the standard library and {sorted(CORE_THIRD_PARTY)})")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    found = {str(path.relative_to(ROOT)): bad for path in files
             if (bad := violations(package, path.read_text(encoding="utf-8")))}
    assert found == {}


def test_layering_check_catches_an_upward_import():
    lazy = "def gen():\n    from sw.pipeline import TrainConfig\n    return TrainConfig\n"
    assert violations("hw", lazy) == ["sw.pipeline (upward or sideways from hw)"]
    assert violations("core", "import hw.config\n") == ["hw.config (upward or sideways from core)"]
    assert violations("core", "import transformers\n") == [
        "transformers (core may use only the standard library and ['numpy', 'safetensors', 'torch'])"]
    assert violations("sim", "from firmware_gen.image import LinearImage\nimport torch\n") == []
