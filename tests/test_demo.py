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
    # the Data Fabric part: DuckDB reads the export; run 2 shows the late span and the changed old annotation
    assert "DuckDB, the view support_bot_latest of `obslake fabric ddl`: 90 spans" in out
    assert "91 spans" in out and "'hallucinated', 're-checked by a reviewer'" in out and "late-tool-call" in out
    assert "deltalake reads the same files as Delta: version 1, 91 rows" in out
    # the lake upkeep DAG runs: the model table keeps only its current snapshot and every row
    assert "maintenance run finished: success" in out
    assert "snapshots -> 1 (this table keeps no snapshot history" in out and "13,600 rows, metadata files" in out
