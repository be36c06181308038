"""The README's demo command works and shows exactly-once results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.airflow
def test_demo_runs_and_prints_what_landed(tmp_path):
    obslake = Path(sys.executable).parent / "obslake"
    proc = subprocess.run([str(obslake), "demo", "--workdir", str(tmp_path / "demo")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "13,600 rows" in out and "distinct prediction ids: 13,600" in out
    assert "[ID_MISSING]" in out and "row 7" in out  # the bad file is reported with its location
    assert "date=" in out
