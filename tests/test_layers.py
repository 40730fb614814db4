"""The package's shape: the import-linter layers contract in pyproject.toml holds (no upward import, no
cycle between layers), and every module's docstring says what it is for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "genssl"


def test_import_linter_layers_contract_is_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: the same layers over a copy of the package with one upward import fail."""
    import shutil

    copy = tmp_path / "genssl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "experiments"))
    (copy / "nn" / "bad.py").write_text('"""An upward import, on purpose."""\nfrom genssl.training.trainer import Trainer\n')
    shutil.copy(PACKAGE.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "genssl.nn.bad -> genssl.training.trainer" in out.stdout, out.stdout[-3000:]


def test_every_module_says_what_it_is_for():
    missing = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.split("\n")[0]) < 15:
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"modules without a first docstring line that says what they are for: {missing}"
