"""A connector syncs a real Phoenix project into S3 (Iceberg + Delta) and GCS; readers that are not
pyiceberg (DuckDB, deltalake) see the source's rows and annotation values; a changed annotation on an
old span shows up after the next sync."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest

from fabric_helpers import duckdb_ddl
from obslake.config import Connector
from obslake.fabric.export import ProjectExporter
from obslake.lake.catalog import load_catalog
from obslake.storage.credentials import StorageCredentials
from obslake.fabric.phoenix import PhoenixSource
from phoenix_server import (  # noqa: F401 (fixture)
    annotate,
    delete_span_annotations,
    delete_trace,
    new_trace_id,
    phoenix_server,
    send_spans,
)

pytestmark = [pytest.mark.slow, pytest.mark.phoenix]
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _connector(storage: str, formats=("iceberg",), name: str = "phx") -> Connector:
    return Connector.model_validate({"name": name, "source": {"type": "phoenix", "uri": "sqlite:///unused"},
                                     "projects": ["support"], "storage": storage, "namespace": "ml",
                                     "ingestion_key_variable": "k", "formats": list(formats), "overlap_seconds": 5})


def _seed(srv, project: str) -> dict:
    old = NOW - dt.timedelta(days=90)
    traces = {}
    for t, start in enumerate([old, NOW - dt.timedelta(hours=3), NOW - dt.timedelta(hours=1)]):
        tid = new_trace_id()
        root = send_spans(srv.base_url, project, [{"name": "agent", "trace_id": tid, "kind": "CHAIN",
                                                   "start": start, "end": start + dt.timedelta(seconds=3)}])[0]
        llm = send_spans(srv.base_url, project, [{
            "name": "llm", "trace_id": tid, "parent_id": root["span_id"], "kind": "LLM", "model": "gpt-4o-mini",
            "prompt_tokens": 10 + t, "completion_tokens": 5, "start": start + dt.timedelta(seconds=1),
            "end": start + dt.timedelta(seconds=2)}])[0]
        annotate(srv.base_url, llm["span_id"], "correctness", "correct", 1.0, f"trace {t} ok", "LLM")
        traces[t] = (tid, root["span_id"], llm["span_id"])
    return traces


def test_phoenix_to_s3_and_gcs(phoenix_server, lake, s3_client, s3_bucket, moto_server, gcs_client, gcs_bucket,  # noqa: F811
                               monkeypatch):
    srv = phoenix_server
    project = "support"
    traces = _seed(srv, project)
    source = PhoenixSource(srv.db_uri)
    monkeypatch.setenv("OBSLAKE_S3_ENDPOINT_URL", moto_server)

    # S3, Iceberg + Delta
    s3_conn = _connector(f"s3://{s3_bucket}/exports", ("iceberg", "delta"))
    s3_cat = load_catalog(lake.settings, StorageCredentials.from_env(s3_conn.storage))
    s3_exp = ProjectExporter(s3_conn, project, s3_cat)
    first = s3_exp.sync(source)
    assert first.rows == 6 and first.mode == "full" and first.annotation_rows == 3
    pairs = s3_exp.annotation_names()
    assert pairs == [("correctness", "eval")]
    con = duckdb_ddl(s3_conn, project, pairs, moto_server)  # `obslake fabric ddl`'s DuckDB output, executed
    got = con.execute("""SELECT span_id, "eval.correctness.label", "eval.correctness.explanation",
                         "attributes.llm.token_count.prompt" FROM support_latest ORDER BY span_id""").fetchall()
    expected = sorted([(root, None, None, None) for _, root, _ in traces.values()]
                      + [(llm, "correct", f"trace {t} ok", 10 + t) for t, (_, _, llm) in traces.items()])
    assert got == expected

    from deltalake import DeltaTable

    from obslake.fabric.export import delta_storage_options

    def delta(location, table):
        return DeltaTable(location, storage_options=delta_storage_options(table)).to_pyarrow_table()

    spans = delta(s3_exp.location, s3_exp.table())
    assert spans.num_rows == 6
    # Delta shows the true column names (the Parquet files carry them; Iceberg resolves by field id)
    by_span = [("span_id", "ascending")]
    for location, table in ((s3_exp.location, s3_exp.table()), (s3_exp.annotations_location, s3_exp.annotations_table())):
        through_delta, iceberg = delta(location, table), table.scan().to_arrow()
        assert sorted(through_delta.column_names) == sorted(iceberg.column_names)
        assert through_delta.select(iceberg.column_names).cast(iceberg.schema).sort_by(by_span).to_pylist() == \
            iceberg.sort_by(by_span).to_pylist()
    assert "attributes.llm.token_count.prompt" in spans.column_names
    notes = delta(s3_exp.annotations_location, s3_exp.annotations_table())
    assert sorted(notes["label"].to_pylist()) == ["correct"] * 3

    # a reviewer changes the verdict on the 90-day-old answer: the next sync appends one version of it and
    # writes no span
    _, _, old_llm = traces[0]
    spans_before = {t.file.file_path for t in s3_exp.table().scan().plan_files()}
    annotate(srv.base_url, old_llm, "correctness", "incorrect", 0.0, "re-checked", "LLM")
    second = s3_exp.sync(source)
    assert (second.mode, second.rows, second.annotation_rows) == ("incremental", 0, 1)
    assert {t.file.file_path for t in s3_exp.table().refresh().scan().plan_files()} == spans_before
    row = con.execute(f"""SELECT "eval.correctness.label", "eval.correctness.explanation" FROM support_latest
                          WHERE span_id = '{old_llm}'""").fetchall()
    assert row == [("incorrect", "re-checked")]
    assert con.execute("SELECT count(*) FROM support_latest").fetchone()[0] == 6
    notes = delta(s3_exp.annotations_location, s3_exp.annotations_table().refresh())
    assert notes.num_rows == 4 and sorted(notes.filter(pc.equal(notes["span_id"], old_llm))["label"].to_pylist()) \
        == ["correct", "incorrect"]  # the change log keeps both versions; the view shows the latest

    # GCS (emulator): same source, another bucket; read back through the catalog
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_client._connection.API_BASE_URL)
    gs_conn = _connector(f"gs://{gcs_bucket}/exports", name="phx_gcs")
    gs_cat = load_catalog(lake.settings, StorageCredentials.from_env(gs_conn.storage))
    gs_exp = ProjectExporter(gs_conn, project, gs_cat)
    assert gs_exp.sync(source).rows == 6
    data = gs_exp.table().scan().to_arrow()
    assert sorted(data["span_id"].to_pylist()) == sorted(x for _, r, l in traces.values() for x in (r, l))
    notes = gs_exp.annotations_table().scan().to_arrow()
    assert notes.filter(pc.equal(notes["span_id"], old_llm))["label"].to_pylist() == ["incorrect"]
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="exports/ml/support/")}
    assert "exports/ml/support/metadata/latest.metadata.json" in names
    beside = {b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="exports/ml/support__annotations/")}
    assert "exports/ml/support__annotations/metadata/latest.metadata.json" in beside
    assert any("/data/date=" in n and "/hour=" in n for n in names)


def test_deletes_in_phoenix_disappear_after_the_next_sync(phoenix_server, lake, tmp_path):  # noqa: F811
    """An evaluation deleted on a 90-day-old span, a human annotation deleted, and a whole trace deleted
    in Phoenix: after the next sync the latest view (DuckDB, through the DDL) and the spans table no
    longer have them; the change log keeps each deleted version followed by its delete marker."""
    srv = phoenix_server
    project = "deletes"
    traces = _seed(srv, project)
    (_, _, old_llm), (_, _, mid_llm), (gone_trace, gone_root, gone_llm) = (traces[0], traces[1], traces[2])
    thumbs = annotate(srv.base_url, mid_llm, "thumbs", "up", 1.0, None, "HUMAN", "reviewer-1")
    annotate(srv.base_url, mid_llm, "thumbs", "down", 0.0, None, "HUMAN", "reviewer-2")
    source = PhoenixSource(srv.db_uri)
    conn = _connector(f"file://{tmp_path}/exports", name="phx_del").model_copy(update={"projects": [project]})
    catalog = load_catalog(lake.settings, StorageCredentials.from_env(conn.storage))
    exporter = ProjectExporter(conn, project, catalog)
    assert exporter.sync(source).rows == 6

    def latest():
        con = duckdb_ddl(conn, project, exporter.annotation_names())
        return con.execute('SELECT span_id, "eval.correctness.label", "annotation.thumbs.label", '
                           '"annotation.thumbs.identifier" FROM deletes_latest ORDER BY span_id').fetchall()

    before = {r[0]: r[1:] for r in latest()}
    assert before[old_llm][0] == "correct" and before[mid_llm][1:] == ("down", "reviewer-2")
    # the eval on the 90-day-old span (upserting it again returns its id), one human annotation, a trace
    old_eval = annotate(srv.base_url, old_llm, "correctness", "correct", 1.0, "trace 0 ok", "LLM")
    delete_span_annotations(srv.base_url, [old_eval])
    delete_span_annotations(srv.base_url, [annotate(srv.base_url, mid_llm, "thumbs", "down", 0.0, None, "HUMAN",
                                                    "reviewer-2")])
    delete_trace(srv.base_url, gone_trace)

    result = exporter.sync(source)
    assert result.mode == "incremental"
    after = {r[0]: r[1:] for r in latest()}
    assert set(after) == set(before) - {gone_root, gone_llm}  # the deleted trace's spans are gone
    assert after[old_llm][0] is None  # the deleted eval no longer shows
    assert after[mid_llm][1:] == ("up", "reviewer-1")  # reviewer-2's is deleted: reviewer-1's is the latest left
    assert thumbs  # (reviewer-1's annotation was never touched)
    spans = exporter.table().scan().to_arrow()
    assert sorted(spans["span_id"].to_pylist()) == sorted(after)
    log = exporter.annotations_table().scan().to_arrow()
    markers = log.filter(pc.equal(log["deleted"], True))
    assert sorted(zip(markers["span_id"].to_pylist(), markers["name"].to_pylist())) == sorted(
        [(old_llm, "correctness"), (mid_llm, "thumbs"), (gone_llm, "correctness")])
    # a sync with nothing deleted or changed does not list the keys again and writes nothing
    quiet = exporter.sync(source)
    assert (quiet.rows, quiet.annotation_rows) == (0, 0)
