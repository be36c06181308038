"""Data Fabric from the lake's own trace tables into S3, read back by DuckDB (not pyiceberg)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fabric_helpers import NOW, annotations_table, duckdb_ddl, spans_table
from lake_fixtures import to_bytes
from obslake.config import Connector, ImportJob
from obslake.fabric.export import PROP_CURSOR, PROP_WATERMARK, ProjectExporter
from obslake.lake.catalog import load_catalog
from obslake.storage.credentials import StorageCredentials
from obslake.fabric.lake_source import LakeTraceSource
from obslake.lake.importer import import_file
from obslake.storage import open_store


@pytest.fixture
def fabric(lake, s3_client, s3_bucket, moto_server, monkeypatch):
    monkeypatch.setenv("OBSLAKE_S3_ENDPOINT_URL", moto_server)
    store, _ = open_store(f"s3://{s3_bucket}/", s3_client=s3_client)
    jobs = {k: ImportJob.model_validate({"name": f"trace_{k}", "source": f"s3://{s3_bucket}/in/{k}/", "kind": k,
                                         "trace_project": "rag-app", "ingestion_key_variable": "k"})
            for k in ("spans", "annotations")}
    conn = Connector.model_validate({"name": "prod", "source": {"type": "lake"}, "projects": ["rag-app"],
                                     "storage": f"s3://{s3_bucket}/exports", "namespace": "ml",
                                     "ingestion_key_variable": "k", "overlap_seconds": 5})
    catalog = load_catalog(lake.settings, StorageCredentials.from_env(conn.storage))
    n = {"i": 0}

    def put(kind, table, fmt="parquet"):
        n["i"] += 1
        info = store.write(f"in/{kind}/f{n['i']}.{fmt}", to_bytes(table, fmt))
        r = import_file(jobs[kind], store, info, catalog=lake.catalog, ledger=lake.ledger)
        assert r.status == "imported", r.error

    def sync():
        return ProjectExporter(conn, "rag-app", catalog).sync(LakeTraceSource(catalog, "traces"))

    def read(sql_tail="", view="rag_app_latest"):
        """Through the DuckDB DDL of `obslake fabric ddl` (spans joined to their latest annotations)."""
        names = ProjectExporter(conn, "rag-app", catalog).annotation_names()
        con = duckdb_ddl(conn, "rag-app", names, moto_server)
        return con.execute(f"SELECT * FROM {view} {sql_tail}").fetch_arrow_table()

    return put, sync, read, conn, catalog


def test_full_then_incremental_with_late_child_and_updated_old_annotation(fabric, s3_client, s3_bucket):
    put, sync, read, conn, catalog = fabric
    old = NOW - dt.timedelta(days=90)
    put("spans", spans_table([
        {"span_id": "a1", "trace_id": "ta", "name": "chain", "kind": "CHAIN", "start": old, "ms": 900},
        {"span_id": "a2", "trace_id": "ta", "parent_id": "a1", "name": "llm", "start": old + dt.timedelta(seconds=1)},
        {"span_id": "b1", "trace_id": "tb", "name": "llm", "start": NOW - dt.timedelta(hours=2)},
        {"span_id": "c1", "trace_id": "tc", "name": "llm", "start": NOW - dt.timedelta(hours=1)},
    ]))
    put("annotations", annotations_table([
        {"span_id": "a2", "name": "hallucination", "label": "factual", "score": 0.0, "explanation": "grounded"},
        {"span_id": "b1", "name": "thumbs", "label": "up", "score": 1.0, "annotator_kind": "HUMAN", "identifier": "u1"},
    ]), "csv")
    first = sync()
    assert first.mode == "full" and first.rows == 4
    data = read("ORDER BY span_id")
    assert data["span_id"].to_pylist() == ["a1", "a2", "b1", "c1"]
    row = {k: v for k, v in zip(data.column_names, [c[1].as_py() for c in data.columns])}  # a2
    assert row["eval.hallucination.label"] == "factual" and row["eval.hallucination.explanation"] == "grounded"
    assert row["attributes.llm.model_name"] == "gpt-4o" and row["attributes.llm.token_count.total"] == 15
    assert data["annotation.thumbs.label"].to_pylist()[2] == "up"
    assert data["annotation.thumbs.identifier"].to_pylist()[2] == "u1"
    table = ProjectExporter(conn, "rag-app", catalog).table()
    summary = table.current_snapshot().summary
    assert summary.get(PROP_WATERMARK) and json.loads(summary.get(PROP_CURSOR))["spans_snapshot"]
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="exports/ml/rag-app/")["Contents"]}
    assert "exports/ml/rag-app/metadata/latest.metadata.json" in keys
    assert "exports/ml/rag-app/metadata/version-hint.text" in keys
    assert any(f"/data/date={old:%Y-%m-%d}/hour={old.hour}/" in k for k in keys), sorted(keys)[:10]

    # nothing changed: no rows, the marker still moves
    assert sync().rows == 0

    # a late child span in the 90-day-old trace, and an annotation changed on the old span
    put("spans", spans_table([{"span_id": "a3", "trace_id": "ta", "parent_id": "a1", "name": "tool", "kind": "TOOL",
                               "start": old + dt.timedelta(seconds=2), "ms": 5000}]))
    put("annotations", annotations_table([{"span_id": "a2", "name": "hallucination", "label": "hallucinated",
                                           "score": 1.0, "explanation": "made up",
                                           "updated_at": NOW + dt.timedelta(seconds=1)}]))
    files_before = {t.file.file_path for t in table.refresh().scan().plan_files()}
    second = sync()
    assert second.mode == "incremental" and second.rows == 3  # the whole old trace: a1, a2, a3
    data = read("ORDER BY span_id")
    assert data["span_id"].to_pylist() == ["a1", "a2", "a3", "b1", "c1"]
    assert data["eval.hallucination.label"].to_pylist()[1] == "hallucinated"
    assert data["trace_end_time"].to_pylist()[0] == old + dt.timedelta(seconds=2, milliseconds=5000)
    files_after = {t.file.file_path for t in table.refresh().scan().plan_files()}
    untouched = {f for f in files_before if f"date={old:%Y-%m-%d}" not in f}
    assert untouched <= files_after, "partitions without changes must not be rewritten"
    assert not any("delete" in (t.file.content.name.lower()) for t in table.scan().plan_files() if t.delete_files)


def test_backfill_window_twice_gives_the_same_table_and_keeps_the_cursor(fabric):
    put, sync, read, conn, catalog = fabric
    put("spans", spans_table([{"span_id": f"w{i}", "trace_id": f"tw{i}", "name": "llm",
                               "start": NOW - dt.timedelta(days=10, hours=i)} for i in range(5)]))
    first = sync()
    exporter = ProjectExporter(conn, "rag-app", catalog)
    cursor = exporter.last_cursor()
    before = read("ORDER BY span_id")
    window = (NOW - dt.timedelta(days=1), dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1))
    source = LakeTraceSource(catalog, "traces")
    a = exporter.sync(source, window=window)
    after_a = read("ORDER BY span_id")
    b = exporter.sync(source, window=window)
    after_b = read("ORDER BY span_id")
    assert first.rows == 5 and a.rows == 5 and b.rows == 5  # the window covers the import: all re-exported
    drop = ["_synced_at"]
    assert after_a.drop_columns(drop).equals(before.drop_columns(drop))
    assert after_b.drop_columns(drop).equals(before.drop_columns(drop))
    assert exporter.last_cursor() == cursor  # a backfill never moves the incremental cursor
    empty = exporter.sync(source, window=(NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=399)))
    assert empty.rows == 0 and read().num_rows == 5


def test_pause_then_resume_loses_nothing(fabric):
    put, sync, read, conn, catalog = fabric
    put("spans", spans_table([{"span_id": "p0", "trace_id": "tp0", "name": "llm", "start": NOW - dt.timedelta(hours=5)}]))
    sync()
    # paused: two more imports happen, no sync runs
    put("spans", spans_table([{"span_id": "p1", "trace_id": "tp1", "name": "llm", "start": NOW - dt.timedelta(hours=4)}]))
    put("annotations", annotations_table([{"span_id": "p0", "name": "qa", "label": "ok", "score": 1.0}]))
    put("spans", spans_table([{"span_id": "p2", "trace_id": "tp2", "name": "llm", "start": NOW - dt.timedelta(days=40)}]))
    resumed = sync()
    assert (resumed.rows, resumed.annotation_rows) == (2, 1)  # p0 only got an annotation: its span is not rewritten
    data = read("ORDER BY span_id")
    assert data["span_id"].to_pylist() == ["p0", "p1", "p2"] and data["eval.qa.label"].to_pylist()[0] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["fabric-after-write", "fabric-after-commit", "fabric-before-publish"])
def test_kill_9_during_a_sync_then_rerun_gives_exactly_the_source(fabric, lake, moto_server, fault):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    put, sync, read, conn, catalog = fabric
    specs = [{"span_id": f"k{i}", "trace_id": f"tk{i // 3}", "name": "llm",
              "start": NOW - dt.timedelta(days=i % 4, hours=i)} for i in range(30)]
    put("spans", spans_table(specs[:20]))
    sync()
    put("spans", spans_table(specs[20:]))
    put("annotations", annotations_table([{"span_id": "k3", "name": "qa", "label": "bad", "score": 0.0}]))
    env = {**os.environ, **lake.env, "OBSLAKE_S3_ENDPOINT_URL": moto_server, "OBSLAKE_FAULT_AT": fault,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent.parent)])}
    payload = json.dumps({"connector": conn.model_dump(mode="json"), "project": "rag-app"})
    worker = Path(__file__).with_name("fabric_worker.py")
    crashed = subprocess.run([sys.executable, str(worker), payload], env=env, capture_output=True, text=True,
                             timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    env.pop("OBSLAKE_FAULT_AT")
    rerun = subprocess.run([sys.executable, str(worker), payload], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    data = read("ORDER BY span_id")
    assert sorted(data["span_id"].to_pylist()) == sorted(s["span_id"] for s in specs)  # nothing lost or doubled
    assert data.filter(pa_equal(data, "span_id", "k3"))["eval.qa.label"].to_pylist() == ["bad"]
    log = read(view="rag_app_annotations")
    assert log["span_id"].to_pylist() == ["k3"]  # one version: a retried sync replaced its earlier attempt's rows


def pa_equal(table, column, value):
    import pyarrow.compute as pc

    return pc.equal(table[column], value)


def test_lake_upkeep_keeps_latest_metadata_and_the_cursor_of_an_export(fabric):
    """Expiry commits to a Data Fabric table and orphan removal deletes the partitions' rewritten files:
    latest.metadata.json follows the commit (DuckDB reads every span through it), and the next sync still
    starts from the stored cursor (it exports only what changed)."""
    from obslake.fabric.export import PROP_SOURCE, PROP_WATERMARK
    from obslake.lake.maintenance import Policy, maintain

    put, sync, read, conn, catalog = fabric
    hour = NOW - dt.timedelta(days=2)
    for i in range(5):  # five syncs, each adding a span to the same hour: the partition rewritten each time
        put("spans", spans_table([{"span_id": f"s{i}", "trace_id": f"t{i}", "name": "llm",
                                   "start": hour + dt.timedelta(minutes=i)}]))
        assert sync().rows == 1
    exporter = ProjectExporter(conn, "rag-app", catalog)
    cursor = exporter.last_cursor()
    policy = Policy(retention=dt.timedelta(0), orphan_age=dt.timedelta(0), min_files=2)
    report = maintain(catalog, exporter.identifier, policy,
                      now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), after_commit=exporter.publish,
                      carry_properties=(PROP_CURSOR, PROP_WATERMARK, PROP_SOURCE))
    assert report.snapshots_expired >= 4 and report.orphans_removed >= 4  # the partition's earlier versions
    assert sorted(read()["span_id"].to_pylist()) == [f"s{i}" for i in range(5)]  # via latest.metadata.json
    assert exporter.last_cursor() == cursor  # in the current snapshot, which is never expired
    put("spans", spans_table([{"span_id": "s9", "trace_id": "t9", "name": "llm", "start": NOW}]))
    after = sync()
    assert (after.mode, after.rows) == ("incremental", 1)  # not a re-export of everything
    assert len(read()) == 6


def test_upkeep_keeps_only_the_newest_version_copies(fabric, s3_client, s3_bucket):
    """Each sync writes metadata/v<N>.metadata.json beside the table; the upkeep keeps the newest 10 (an
    hourly connector would otherwise collect 8,760 copies a year) and the one version-hint.text names."""
    from obslake.lake.maintenance import KEPT_COPIES, Policy, maintain

    put, sync, read, conn, catalog = fabric
    for i in range(KEPT_COPIES + 3):
        put("spans", spans_table([{"span_id": f"s{i}", "trace_id": f"t{i}", "name": "llm",
                                   "start": NOW - dt.timedelta(hours=i)}]))
        assert sync().rows == 1
    prefix = "exports/ml/rag-app/metadata/"

    def copies():
        keys = [o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=prefix) for o in page.get("Contents", [])]
        return sorted(int(k[len(prefix) + 1:-len(".metadata.json")]) for k in keys
                      if k[len(prefix):].startswith("v") and k.endswith(".metadata.json"))

    before = copies()
    assert len(before) >= KEPT_COPIES + 3
    exporter = ProjectExporter(conn, "rag-app", catalog)
    policy = Policy(orphan_age=dt.timedelta(0))  # keep every snapshot: only the copies are at stake
    report = maintain(catalog, exporter.identifier, policy, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
                      after_commit=exporter.publish)
    after = copies()
    assert after == before[-KEPT_COPIES:] and report.orphans_removed >= len(before) - KEPT_COPIES
    hint = int(s3_client.get_object(Bucket=s3_bucket, Key=prefix + "version-hint.text")["Body"].read())
    assert hint == after[-1]
    assert len(read()) == KEPT_COPIES + 3  # latest.metadata.json still reads every span
    again = maintain(catalog, exporter.identifier, policy, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
                     after_commit=exporter.publish)
    assert again.orphans_removed == 0 and copies() == after


def test_delta_names_true_for_new_tables_and_kept_for_tables_of_earlier_versions(fabric, s3_client, s3_bucket,
                                                                                 monkeypatch):
    """A table created now stores the Iceberg names in its Parquet files (Delta shows them); a table created
    by an earlier obslake (no obslake.parquet.column-names) keeps the Avro-compatible names in every file
    it gets after the upgrade, so its Delta log stays consistent."""
    from deltalake import DeltaTable

    from obslake.fabric import export
    from obslake.fabric.export import delta_storage_options

    put, _sync, read, conn, catalog = fabric
    put("spans", spans_table([{"span_id": "a", "trace_id": "t", "name": "llm", "start": NOW - dt.timedelta(hours=1)}]))
    put("annotations", annotations_table([{"span_id": "a", "name": "qa", "label": "ok"}]))
    from obslake.fabric.lake_source import LakeTraceSource

    def delta_columns(c, exporter):
        return DeltaTable(c.project_location("rag-app"), storage_options=delta_storage_options(exporter.table())) \
            .to_pyarrow_table()

    new = conn.model_copy(update={"name": "fresh", "namespace": "fresh", "formats": ("iceberg", "delta")})
    fresh = ProjectExporter(new, "rag-app", catalog)
    assert fresh.sync(LakeTraceSource(catalog, "traces")).rows == 1
    t = delta_columns(new, fresh)
    assert "attributes.llm.model_name" in t.column_names and t["span_id"].to_pylist() == ["a"]
    notes = DeltaTable(new.project_location("rag-app__annotations"),
                       storage_options=delta_storage_options(fresh.annotations_table())).to_pyarrow_table()
    assert notes["label"].to_pylist() == ["ok"] and notes["kind"].to_pylist() == ["eval"]

    old = conn.model_copy(update={"name": "older", "namespace": "older", "formats": ("iceberg", "delta")})
    earlier = ProjectExporter(old, "rag-app", catalog)
    monkeypatch.setattr(export, "PROP_PARQUET_NAMES", "obslake.test.not-set")  # created as an earlier obslake did
    assert earlier.sync(LakeTraceSource(catalog, "traces")).rows == 1
    monkeypatch.undo()
    assert "obslake.parquet.column-names" not in earlier.table().properties
    put("spans", spans_table([{"span_id": "b", "trace_id": "u", "name": "llm", "start": NOW - dt.timedelta(hours=1)}]))
    assert earlier.sync(LakeTraceSource(catalog, "traces")).rows == 1  # after the upgrade: same naming
    t = delta_columns(old, earlier)
    assert "attributes_x2Ellm_x2Emodel_name" in t.column_names and "attributes.llm.model_name" not in t.column_names
    assert sorted(t["span_id"].to_pylist()) == ["a", "b"] and t["attributes_x2Ellm_x2Emodel_name"].null_count == 0
    iceberg = earlier.table().scan().to_arrow()
    assert sorted(iceberg["span_id"].to_pylist()) == ["a", "b"]
    assert earlier.annotations_table().scan().to_arrow()["label"].to_pylist() == ["ok"]


def span_files(table) -> set[str]:
    return {t.file.file_path for t in table.refresh().scan().plan_files()}


@pytest.mark.parametrize("in_filter_max", [200, 0], ids=["iceberg-filter", "arrow-filter"])
def test_an_annotation_changed_on_a_90_day_old_span_appends_one_row_and_rewrites_no_span_file(
        fabric, monkeypatch, in_filter_max):
    """The layout's point: a changed evaluation on an old span costs one change-log row, not a rewrite of
    the span's partition; the latest view shows the new version, the log keeps both. (The lake source
    filters by id with pyiceberg's In up to IN_FILTER_MAX values, in Arrow above: both ways.)"""
    from obslake.fabric import lake_source

    monkeypatch.setattr(lake_source, "IN_FILTER_MAX", in_filter_max)
    put, sync, read, conn, catalog = fabric
    old = NOW - dt.timedelta(days=90)
    put("spans", spans_table([{"span_id": f"o{i}", "trace_id": f"to{i}", "name": "llm",
                               "start": old + dt.timedelta(minutes=i)} for i in range(20)]))
    put("annotations", annotations_table([{"span_id": "o7", "name": "hallucination", "label": "factual",
                                           "score": 0.0, "updated_at": NOW - dt.timedelta(days=89)}]))
    assert sync().rows == 20
    exporter = ProjectExporter(conn, "rag-app", catalog)
    spans_before, log_before = span_files(exporter.table()), span_files(exporter.annotations_table())
    put("annotations", annotations_table([{"span_id": "o7", "name": "hallucination", "label": "hallucinated",
                                           "score": 1.0, "updated_at": NOW}]))
    result = sync()
    assert (result.mode, result.rows, result.annotation_rows) == ("incremental", 0, 1)
    assert span_files(exporter.table()) == spans_before  # no span file written or removed
    log_after = span_files(exporter.annotations_table())
    assert log_before < log_after and len(log_after - log_before) == 1  # one appended file, nothing rewritten
    data = read("ORDER BY span_id")
    assert data.num_rows == 20
    row = data.filter(pa_equal(data, "span_id", "o7"))
    assert row["eval.hallucination.label"].to_pylist() == ["hallucinated"]
    assert row["eval.hallucination.score"].to_pylist() == [1.0]
    assert read("", view="rag_app_annotations").num_rows == 2  # both versions in the change log


def test_upkeep_compacts_the_annotation_log_to_the_latest_version_per_key(fabric):
    from obslake.lake.maintenance import Policy, maintain

    put, sync, read, conn, catalog = fabric
    put("spans", spans_table([{"span_id": "c0", "trace_id": "tc", "name": "llm", "start": NOW - dt.timedelta(days=3)},
                              {"span_id": "c1", "trace_id": "tc", "name": "llm", "start": NOW - dt.timedelta(days=3)}]))
    sync()
    for i in range(4):  # four versions of one evaluation, and one human annotation per identifier
        put("annotations", annotations_table([
            {"span_id": "c0", "name": "qa", "label": f"v{i}", "score": float(i), "updated_at": NOW + dt.timedelta(seconds=i)},
            {"span_id": "c1", "name": "thumbs", "label": "up" if i % 2 else "down", "annotator_kind": "HUMAN",
             "identifier": f"user{i % 2}", "updated_at": NOW + dt.timedelta(seconds=i)}]))
        sync()
    before = read("ORDER BY span_id")
    exporter = ProjectExporter(conn, "rag-app", catalog)
    # 4 versions of c0's eval, 4 of c1's thumbs, and the unchanged other thumbs re-sent with its span 3 times
    assert read("", view="rag_app_annotations").num_rows == 11
    report = maintain(catalog, exporter.annotations_identifier, Policy(retention=dt.timedelta(0)),
                      now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), after_commit=exporter.publish_annotations)
    assert report.files_compacted == 4 and report.files_written == 1
    log = read("ORDER BY span_id, identifier", view="rag_app_annotations")
    assert list(zip(log["span_id"].to_pylist(), log["identifier"].to_pylist(), log["label"].to_pylist())) == [
        ("c0", "", "v3"), ("c1", "user0", "down"), ("c1", "user1", "up")]
    assert read("ORDER BY span_id").equals(before)  # the view reads the same
    assert before["eval.qa.label"].to_pylist() == ["v3", None]
    assert before["annotation.thumbs.label"].to_pylist() == [None, "up"]  # user1's is the most recent
    again = maintain(catalog, exporter.annotations_identifier, Policy(retention=dt.timedelta(0)),
                     now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), after_commit=exporter.publish_annotations)
    assert again.files_compacted == 0  # idempotent


def test_a_table_of_the_first_layout_is_re_exported_on_its_next_sync(fabric, caplog):
    """A connector exported by the first layout (eval.* columns and an `annotations` JSON column in the spans
    table) keeps syncing: the next sync re-exports it into the new layout in one OVERWRITE commit, and the
    old files are still referenced by the earlier snapshot (nothing deleted before the upkeep's retention)."""
    import pyarrow as pa

    from obslake.fabric.export import PROP_LAYOUT

    put, sync, read, conn, catalog = fabric
    put("spans", spans_table([{"span_id": f"m{i}", "trace_id": "tm", "name": "llm",
                               "start": NOW - dt.timedelta(days=5, minutes=i)} for i in range(3)]))
    put("annotations", annotations_table([{"span_id": "m1", "name": "qa", "label": "ok", "score": 1.0}]))
    sync()
    exporter = ProjectExporter(conn, "rag-app", catalog)
    table = exporter.table()
    # what the first layout left: its columns, one of its files, and no layout property
    with table.update_schema() as upd:
        upd.add_column(("eval.qa.label",), pa_type("string"))
        upd.add_column(("annotations",), pa_type("string"))
    table = table.refresh()
    rows = table.scan().to_arrow()
    rows = rows.set_column(rows.schema.get_field_index("eval.qa.label"), "eval.qa.label",
                           pa.array(["stale"] * rows.num_rows, pa.string()))
    table.overwrite(rows.cast(table.schema().as_arrow()))
    with table.transaction() as tx:
        tx.remove_properties(PROP_LAYOUT)
    old_files = span_files(table)
    result = sync()
    assert (result.mode, result.rows) == ("full", 3)
    table = exporter.table()
    assert table.properties[PROP_LAYOUT] == "2"
    assert not {"eval.qa.label", "annotations"} & set(table.schema().column_names)
    assert not old_files & span_files(table)
    previous = table.metadata.snapshot_by_id(table.current_snapshot().parent_snapshot_id)
    assert {t.file.file_path for t in table.scan(snapshot_id=previous.snapshot_id).plan_files()} == old_files
    data = read("ORDER BY span_id")
    assert data["span_id"].to_pylist() == ["m0", "m1", "m2"]
    assert data["eval.qa.label"].to_pylist() == [None, "ok", None]  # from the annotations table, not "stale"
    caplog.clear()
    with caplog.at_level("INFO", logger="obslake.fabric.export"):
        again = sync()
    assert (again.mode, again.rows) == ("unchanged", 0)  # and then incremental as usual
    assert any("no changes since" in r.getMessage() for r in caplog.records)  # a sync with nothing says so


def pa_type(name):
    from pyiceberg.types import StringType

    return {"string": StringType()}[name]


def test_latest_view_reads_the_same_through_delta_as_through_iceberg(fabric):
    """Every table of the layout is also a Delta table over the same files (true column names): the latest
    view over what deltalake reads gives the same rows as over what DuckDB's iceberg_scan reads."""
    import duckdb
    from deltalake import DeltaTable

    from obslake.fabric.ddl import latest_view
    from obslake.fabric.export import delta_storage_options

    put, _sync, read, conn, catalog = fabric
    both = conn.model_copy(update={"formats": ("iceberg", "delta")})
    exporter = ProjectExporter(both, "rag-app", catalog)
    put("spans", spans_table([{"span_id": f"d{i}", "trace_id": f"td{i // 2}", "name": "llm",
                               "start": NOW - dt.timedelta(days=i * 7, hours=i)} for i in range(8)]))
    put("annotations", annotations_table(
        [{"span_id": f"d{i}", "name": "qa.check", "label": f"l{i}", "score": i / 8} for i in range(0, 8, 2)]
        + [{"span_id": "d3", "name": "thumbs", "label": "up", "annotator_kind": "HUMAN", "identifier": "u"}]))
    source = LakeTraceSource(catalog, "traces")
    exporter.sync(source)
    put("annotations", annotations_table([{"span_id": "d2", "name": "qa.check", "label": "changed", "score": 0.9,
                                           "updated_at": NOW + dt.timedelta(seconds=3)}]))
    exporter.sync(source)
    spans = DeltaTable(exporter.location, storage_options=delta_storage_options(exporter.table())).to_pyarrow_table()
    notes = DeltaTable(exporter.annotations_location,
                       storage_options=delta_storage_options(exporter.annotations_table())).to_pyarrow_table()
    con = duckdb.connect()
    con.register("spans_delta", spans)
    con.register("notes_delta", notes)
    names = exporter.annotation_names()
    assert names == [("qa.check", "eval"), ("thumbs", "annotation")]
    through_delta = con.execute(f"SELECT * FROM ({latest_view('duckdb', 'spans_delta', 'notes_delta', names)}) "
                                "ORDER BY span_id").fetch_arrow_table()
    through_iceberg = read("ORDER BY span_id")
    assert through_delta.num_rows == through_iceberg.num_rows == 8
    for col in ("span_id", "eval.qa_check.label", "eval.qa_check.score", "annotation.thumbs.label",
                "attributes.llm.model_name"):
        assert through_delta[col].to_pylist() == through_iceberg[col].to_pylist(), col
    assert through_iceberg["eval.qa_check.label"].to_pylist()[2] == "changed"


def test_full_export_goes_day_by_day_and_keeps_traces_and_re_imports_whole(fabric):
    """The first sync reads the lake's span table one date partition at a time: a trace that crosses
    midnight still gets its bounds from both days, a span imported twice is exported once (its later
    version), and every annotation reaches its span."""
    put, sync, read, conn, catalog = fabric
    midnight = (NOW - dt.timedelta(days=3)).replace(hour=0, minute=0, second=0)
    put("spans", spans_table([
        {"span_id": "m1", "trace_id": "tm", "name": "before", "start": midnight - dt.timedelta(minutes=1), "ms": 100},
        {"span_id": "m2", "trace_id": "tm", "parent_id": "m1", "name": "after", "start": midnight + dt.timedelta(minutes=1),
         "ms": 2000},
        {"span_id": "r1", "trace_id": "tr", "name": "first", "start": midnight - dt.timedelta(days=1)},
    ]))
    put("spans", spans_table([{"span_id": "r1", "trace_id": "tr", "name": "re-imported",
                               "start": midnight - dt.timedelta(days=1)}]))
    put("annotations", annotations_table([{"span_id": "m2", "name": "qa", "label": "ok"},
                                          {"span_id": "r1", "name": "qa", "label": "fine"}]))
    first = sync()
    assert (first.mode, first.rows, first.annotation_rows) == ("full", 3, 2)
    data = read("ORDER BY span_id")
    assert data["span_id"].to_pylist() == ["m1", "m2", "r1"]
    assert data["name"].to_pylist() == ["before", "after", "re-imported"]
    end = midnight + dt.timedelta(minutes=1, milliseconds=2000)
    assert data["trace_end_time"].to_pylist()[:2] == [end, end]  # across the two days' partitions
    assert data["trace_start_time"].to_pylist()[:2] == [midnight - dt.timedelta(minutes=1)] * 2
    assert data["eval.qa.label"].to_pylist() == [None, "ok", "fine"]


# -- the source read one batch ahead (read_ahead) ----------------------------------------------------------
def test_read_ahead_keeps_order_raises_where_the_source_failed_and_closes_it_in_its_thread():
    import threading

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from obslake.fabric.export import read_ahead

    events: list = []

    def source(n: int, fail_at: int | None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"bad batch {i}")
                yield i
        finally:  # where a generator's cleanup (e.g. its database connection) runs
            events.append(("closed", threading.current_thread().name))

    @settings(max_examples=50, deadline=None)
    @given(n=st.integers(0, 12), fail_at=st.one_of(st.none(), st.integers(0, 12)), take=st.integers(0, 14))
    def check(n, fail_at, take):
        events.clear()
        before = threading.active_count()
        got, error = [], None
        it = read_ahead(source(n, fail_at), "t-read")
        try:
            for x in it:
                if len(got) == take:
                    break
                got.append(x)
        except ValueError as exc:
            error = str(exc)
        finally:
            it.close()
        failing = fail_at is not None and fail_at < n
        upto = min(n, fail_at) if failing else n
        assert got == list(range(min(upto, take)))  # in order, none lost or doubled
        # the consumer asks for item `take` before it stops: the failure is seen if it came at or before it
        assert error == (f"bad batch {fail_at}" if failing and fail_at <= take else None)
        assert events == [("closed", "t-read")]  # closed once, in the reading thread
        assert threading.active_count() == before  # no thread left behind

    check()
