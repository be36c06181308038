"""Data Fabric connectors: config rules and a real dag.test() run into S3, read back by DuckDB."""

from __future__ import annotations

import datetime as dt
import os
import textwrap

import pytest

from fabric_helpers import NOW, annotations_table, duckdb_connection, duckdb_ddl, spans_table
from lake_fixtures import asset_events, own_bucket_for_airflow, to_bytes
from obslake.config import ImportJob, load_connector, load_connectors
from obslake.lake.importer import import_file
from obslake.storage import open_store


def _yaml(name, storage, namespace, status="active", extra=""):
    return textwrap.dedent(f"""
        name: {name}
        source: {{type: lake, space: traces}}
        projects: [rag-app]
        storage: {storage}
        namespace: {namespace}
        ingestion_key_variable: obslake_test_key
        status: {status}
    """) + extra


def test_overlapping_connectors_are_rejected_and_namespaces_separate_them(tmp_path):
    d = tmp_path / "connectors"
    d.mkdir()
    (d / "a.yaml").write_text(_yaml("a", "s3://bkt/exports", "ml"))
    (d / "b.yaml").write_text(_yaml("b", "s3://bkt/exports", "ml"))  # same path: overlap
    (d / "c.yaml").write_text(_yaml("c", "s3://bkt/exports", "search"))  # same bucket, other namespace: fine
    (d / "d.yaml").write_text(_yaml("d", "s3://bkt/exports/ml/rag-app", "x"))  # inside a's tree: overlap
    (d / "e.yaml").write_text(_yaml("e", "s3://bkt/exports", "../etc"))
    conns, errors = load_connectors(d)
    assert [c.name for c in conns] == ["c"]
    text = "\n".join(str(e) for e in errors)
    assert "overlaps connector 'b'" in text and "overlaps connector 'a'" in text and "overlaps connector 'd'" in text
    assert "e.yaml" in text and "cannot be a path segment" in text


def test_fabric_dag_integrity_and_pause(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    d = tmp_path / "connectors"
    d.mkdir()
    (d / "live.yaml").write_text(_yaml("live", "s3://bkt/x", "ml"))
    (d / "resting.yaml").write_text(_yaml("resting", "s3://bkt/x", "other", status="paused"))
    (d / "gone.yaml").write_text(_yaml("gone", "s3://bkt/x", "third", status="deleted"))
    monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(tmp_path))
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    fabric = {k: v for k, v in bag.dags.items() if k.startswith("obslake_fabric__")}
    assert set(fabric) == {"obslake_fabric__live", "obslake_fabric__resting"}
    assert fabric["obslake_fabric__resting"].is_paused_upon_creation is True
    # paused in YAML: no schedule at all (a paused connector starts no run, not even one that skips)
    assert type(fabric["obslake_fabric__resting"].timetable).__name__ == "NullTimetable"
    # a cron schedule has hour-wide data intervals (what a backfill run re-exports), not Airflow 3's
    # zero-width default (create_cron_data_intervals=False), whatever that setting says
    from airflow.serialization.serialized_objects import DagSerialization

    core = DagSerialization.from_dict(DagSerialization.to_dict(fabric["obslake_fabric__live"])).timetable
    import pendulum

    when = pendulum.datetime(2026, 3, 4, 17, 0, tz="UTC")
    interval = core.infer_manual_data_interval(run_after=when)
    assert (interval.start, interval.end) == (when - dt.timedelta(hours=1), when)
    live = fabric["obslake_fabric__live"]
    assert [t.task_id for t in live.topological_sort()] == ["verify_bucket_ownership", "probe_permissions", "sync_project"]
    assert all(t.retries >= 2 for t in live.tasks) and "data-fabric" in live.tags
    assert live.get_task("sync_project").max_active_tis_per_dag == 1  # backfill runs never sync at once


@pytest.mark.airflow
@pytest.mark.slow
def test_fabric_dag_run_exports_to_s3_and_a_second_connector_keeps_its_own_namespace(
        tmp_path, monkeypatch, lake, s3_client, s3_bucket, moto_server, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")
    store, _ = open_store(f"s3://{s3_bucket}/", s3_client=s3_client)
    spans_job = ImportJob.model_validate({"name": "t_spans", "source": f"s3://{s3_bucket}/in/spans/", "kind": "spans",
                                          "trace_project": "rag-app", "ingestion_key_variable": "k"})
    ann_job = ImportJob.model_validate({"name": "t_ann", "source": f"s3://{s3_bucket}/in/ann/", "kind": "annotations",
                                        "trace_project": "rag-app", "ingestion_key_variable": "k"})
    old = NOW - dt.timedelta(days=30)
    specs = [{"span_id": f"s{i}", "trace_id": f"t{i // 2}", "name": "llm", "start": old + dt.timedelta(hours=i)}
             for i in range(6)]
    info = store.write("in/spans/a.parquet", to_bytes(spans_table(specs), "parquet"))
    assert import_file(spans_job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    info = store.write("in/ann/a.csv", to_bytes(annotations_table(
        [{"span_id": "s1", "name": "qa_correct", "label": "correct", "score": 1.0}]), "csv"))
    assert import_file(ann_job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"

    d = tmp_path / "connectors"
    d.mkdir()
    (d / "first.yaml").write_text(_yaml("first", f"s3://{s3_bucket}/exports", "ml", extra="conn_id: aws_default\n"))
    (d / "second.yaml").write_text(_yaml("second", f"s3://{s3_bucket}/exports", "search",
                                         extra="conn_id: aws_default\n"))
    monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(tmp_path))
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    for name in ("first", "second"):
        run = bag.dags[f"obslake_fabric__{name}"].test()
        assert str(run.state) == "success", name
    con = duckdb_connection(moto_server)
    for name, ns in (("first", "ml"), ("second", "search")):
        conn = load_connector(d / f"{name}.yaml")
        view = duckdb_ddl(conn, "rag-app", [("qa_correct", "eval")], moto_server)
        rows = view.execute('SELECT span_id, "eval.qa_correct.label" FROM rag_app_latest ORDER BY span_id').fetchall()
        assert rows == [(f"s{i}", "correct" if i == 1 else None) for i in range(6)], ns
    # each project table is an Asset (its location): one event per sync that advanced it
    for ns in ("ml", "search"):
        [event] = asset_events(f"s3://{s3_bucket}/exports/{ns}/rag-app")
        assert event["rows"] == 6 and event["annotation_rows"] == 1 and event["mode"] == "full", event
    probes = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="exports/ml/_obslake_probe/")
    assert probes.get("KeyCount", 0) == 0  # the probe cleans up after itself

    # the daily lake upkeep runs over both connectors' tables in the bucket; readers see the same rows
    run = bag.dags["obslake_maintenance"].test()
    assert str(run.state) == "success"
    for ns in ("ml", "search"):
        uri = f"s3://{s3_bucket}/exports/{ns}/rag-app/metadata/latest.metadata.json"
        assert con.execute(f"SELECT count(*) FROM iceberg_scan('{uri}')").fetchone()[0] == 6

    # wrong tag: the run fails before anything is written
    s3_client.put_bucket_tagging(Bucket=s3_bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": "x"}]})
    run = bag.dags["obslake_fabric__first"].test()
    assert str(run.state) == "failed"
