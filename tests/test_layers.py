"""The house's shape, checked: the import contracts in pyproject.toml (layers that only point
down, no cycles, private modules kept private), with import-linter."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]'")
    done = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_private_name_crosses_modules():
    """No module imports another gradwise module's underscore name (``from gradwise.x import
    _y``, or ``x._y`` on an imported gradwise module)."""
    import ast

    src = ROOT / "src" / "gradwise"
    modules = {p.stem for p in src.rglob("*.py")} | {p.name for p in src.iterdir() if p.is_dir()}
    found = []
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradwise"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(src)}: from {node.module} import _...")
                    imported.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in imported & modules
            ):
                found.append(f"{path.relative_to(src)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)
