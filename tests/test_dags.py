"""Building the DAGs from a user's own DAGs folder with one import (obslake.dags)."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def test_all_dags_from_an_include_folder(monkeypatch):
    from obslake.dags import all_dags, fabric_dags, import_dags

    monkeypatch.delenv("OBSLAKE_INCLUDE_DIR", raising=False)
    dags = all_dags(PROJECT / "include")
    assert "obslake_maintenance" in dags
    assert set(import_dags(PROJECT / "include")) | set(fabric_dags(PROJECT / "include")) <= set(dags)
    assert {d for d in dags if d.startswith("obslake_import__")} == {
        f"obslake_import__{p.stem}" for p in (PROJECT / "include" / "import_jobs").glob("*.yaml")}
    with pytest.raises(ValueError, match="OBSLAKE_INCLUDE_DIR"):
        all_dags()
    monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(PROJECT / "include"))
    assert set(all_dags()) == set(dags)


def test_a_failure_callback_reaches_every_dag(monkeypatch):
    from airflow.serialization.serialized_objects import DagSerialization

    from obslake.dags import all_dags

    def alert(context):
        pass

    dags = all_dags(PROJECT / "include", on_failure_callback=alert)
    assert dags and all(d.on_failure_callback is alert for d in dags.values())
    assert all(DagSerialization.to_dict(d)["dag"].get("has_on_failure_callback") for d in dags.values())
    assert not any(d.on_failure_callback for d in all_dags(PROJECT / "include").values())
