"""The one-way house: import-linter's contracts in pyproject.toml hold, and they do catch an upward import or a cycle.

The contracts list convae's layers from the CLI down to errors.py; every import must point down the list
(and, inside each package, down its own list). ``lint-imports`` (the import-linter package) checks them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install 'convae[test]')")


def lint(python_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if python_path is not None:  # a copy of the package, found before the installed one
        env["PYTHONPATH"] = str(python_path)
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")], capture_output=True,
                          text=True, env=env, cwd=python_path or ROOT, timeout=300)


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of src/convae whose ``module`` (a path inside the package) gains ``line`` at its end."""
    shutil.copytree(ROOT / "src" / "convae", tmp_path / "convae", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "convae" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    return tmp_path


def test_every_import_points_down_the_layers():
    proc = lint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """Extraction importing the probe (features -> analysis) is an upward import, and a cycle with the probe's own imports."""
    proc = lint(copy_with(tmp_path, "features/pooling.py", "from ..analysis import probe as _upward  # noqa: E402,F401"))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and "convae.features.pooling -> convae.analysis" in proc.stdout


def test_a_cycle_inside_a_package_breaks_its_contract(tmp_path):
    """models/blocks.py importing models/conv.py closes a cycle (conv already imports blocks)."""
    proc = lint(copy_with(tmp_path, "models/blocks.py", "from . import conv as _cycle  # noqa: E402,F401"))
    assert proc.returncode != 0
    assert "models: the registry above the models above their blocks BROKEN" in proc.stdout
