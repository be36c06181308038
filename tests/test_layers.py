"""The house rules that code review alone would let drift: one-way layers (README "Architecture").

``lint-imports`` (import-linter) checks the contracts in ``pyproject.toml``: every import, also the
ones inside functions, goes down the layers, and nothing below the Airflow wrappers imports Airflow.
Run it yourself: ``.venv/bin/lint-imports --config pyproject.toml``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache", "--config", str(PROJECT / "pyproject.toml")], cwd=PROJECT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in out.stdout, out.stdout[-2000:]
