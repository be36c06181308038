"""MaintenanceOperator and the obslake_maintenance DAG: every table obslake writes gets its upkeep."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from lake_fixtures import inference_rows, to_bytes
from obslake.config import load_connectors, load_import_jobs
from obslake.dag_factory import MAINTENANCE_DAG_ID, build_maintenance_dags, maintenance_targets
from obslake.lake.importer import import_file
from obslake.operators.maintenance import MaintenanceOperator
from obslake.storage.local import LocalStore

PROJECT = Path(__file__).resolve().parents[2]


def test_the_dag_maintains_the_tables_of_every_job_and_connector():
    dags = build_maintenance_dags(PROJECT / "include")
    dag = dags[MAINTENANCE_DAG_ID]
    assert dag.schedule == "@daily" and dag.max_active_runs == 1
    jobs, _ = load_import_jobs(PROJECT / "include" / "import_jobs")
    connectors, _ = load_connectors(PROJECT / "include" / "connectors")
    targets = maintenance_targets(jobs, connectors)
    lake = [t for t in targets if t["kind"] == "lake"]
    assert len(lake) == 1 and [list(j.table_identifier) for j in jobs][0] in lake[0]["tables"]
    assert {t["connector"]["name"] for t in targets if t["kind"] == "fabric"} == {c.name for c in connectors}
    assert dag.get_task("maintain").operator_class is MaintenanceOperator


def test_the_operator_maintains_each_table_and_skips_missing_ones(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(5):
        info = store.write(f"f{i}.parquet", to_bytes(inference_rows(10, id_prefix=f"f{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    target = maintenance_targets([job], [])[0]
    assert [tuple(t) for t in target["tables"]] == sorted([job.table_identifier, job.quarantine_table_identifier])
    plan = MaintenanceOperator(task_id="maintain", target=target, plan_only=True).execute({})
    [report] = plan  # the quarantine table does not exist: skipped
    assert report["dry_run"] and report["files_compacted"] == 5 and report["snapshots_expired"] == 0
    table = lake.catalog.load_table(job.table_identifier)
    table.transaction().set_properties({"obslake.maintenance.snapshot-retention-hours": "0"}).commit_transaction()
    [done] = MaintenanceOperator(task_id="maintain", target=target).execute({})
    assert done["snapshots_expired"] >= 4 and done["files_written"] == 1  # the table's own retention applies
    assert lake.catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == 50


def test_a_table_that_fails_does_not_stop_the_others_and_fails_the_task(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    info = store.write("f.parquet", to_bytes(inference_rows(10), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    lake.catalog.load_table(job.table_identifier).transaction().set_properties(
        {"obslake.maintenance.orphan-age-hours": "not a number"}).commit_transaction()
    target = {"kind": "lake", "tables": [list(job.table_identifier)], "jobs": [job.name]}
    with pytest.raises(AirflowFailException, match="1 table"):
        MaintenanceOperator(task_id="maintain", target=target).execute({})


def test_orphans_that_cannot_be_deleted_fail_the_task_after_the_upkeep(lake, make_job, tmp_path, monkeypatch):
    import os

    from pyiceberg.io.pyarrow import PyArrowFileIO

    real_delete = PyArrowFileIO.delete

    def delete(self, location):  # as an S3 writer without s3:DeleteObject (tests/fabric/test_setup.py: real IAM)
        if "orphan-from-a-crash" in str(location):
            raise PermissionError(f"Access Denied: {location}")
        return real_delete(self, location)

    monkeypatch.setattr(PyArrowFileIO, "delete", delete)

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(3):
        info = store.write(f"f{i}.parquet", to_bytes(inference_rows(10, id_prefix=f"f{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    table.transaction().set_properties({"obslake.maintenance.orphan-age-hours": "0"}).commit_transaction()
    data = table.location().removeprefix("file://").rstrip("/") + "/data"
    folder = next(os.path.join(d, "") for d, _, files in os.walk(data) if files)
    orphan = os.path.join(folder, "orphan-from-a-crash.parquet")
    Path(orphan).write_bytes(b"PAR1")
    os.utime(orphan, (0, 0))
    target = {"kind": "lake", "tables": [list(job.table_identifier)], "jobs": [job.name]}
    with pytest.raises(AirflowFailException, match="could not remove 1 orphan"):
        MaintenanceOperator(task_id="maintain", target=target).execute({})
    assert os.path.exists(orphan)
    assert lake.catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == 30


def test_the_cli_prints_what_a_run_would_do(lake, make_job, tmp_path, capsys):
    from obslake.cli import main

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(4):
        info = store.write(f"f{i}.parquet", to_bytes(inference_rows(5, id_prefix=f"f{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    before = lake.catalog.load_table(job.table_identifier).metadata_location
    assert main(["maintenance", ".".join(job.table_identifier), "--dry-run", "--retention-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert "would expire" in out and "would compact 4 file(s)" in out
    assert lake.catalog.load_table(job.table_identifier).metadata_location == before
    assert main(["maintenance", "no_such.table"]) == 2
