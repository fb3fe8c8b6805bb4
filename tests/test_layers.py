"""The house's shape: imports point one way with no circle (import-linter contracts in
pyproject.toml), tasks/ is grouped, each group says its role, and no module reaches into
another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cscf_model", "tasks", "flows", "benchmarks")


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


def test_tasks_top_level_holds_only_the_wiring() -> None:
    modules = sorted(p.name for p in (ROOT / "tasks").glob("*.py"))
    assert modules == ["__init__.py", "stages.py"]
    groups = sorted(p.parent.name for p in (ROOT / "tasks").glob("*/__init__.py"))
    assert groups == ["encoders", "evaluation", "ingest", "semantics", "serving", "store", "training"]


def test_every_package_says_its_role() -> None:
    for init in [p for name in PACKAGES for p in (ROOT / name).rglob("__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)}: no docstring saying what the package holds"


def _private_imports(source: str, name: str) -> list[str]:
    """`from project.module import _name` lines of one file: reaching into another module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
            found += [f"{name}:{node.lineno} {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_private_names_of_another() -> None:
    files = [p for name in PACKAGES for p in (ROOT / name).rglob("*.py")]
    assert [line for p in files for line in _private_imports(p.read_text(), str(p.relative_to(ROOT)))] == []


def test_private_import_check_sees_one() -> None:
    source = "import torch\n\ndef f():\n    from cscf_model.trainer import epoch_batches, _hidden\n"
    assert _private_imports(source, "planted.py") == ["planted.py:4 _hidden"]
