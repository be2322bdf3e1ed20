"""The layers of docs/ARCHITECTURE.md hold: nothing imports a layer above its own."""

from __future__ import annotations

import subprocess

from conftest import REPO, VENV_BIN


def test_imports_only_go_down_the_layers():
    # The contract lives in pyproject.toml ([tool.importlinter]); import-linter reads it from there.
    proc = subprocess.run([str(VENV_BIN / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
