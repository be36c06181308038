"""A connector syncs a real Phoenix project into S3 (Iceberg + Delta) and GCS; readers that are not
pyiceberg (DuckDB, deltalake) see the source's rows and annotation values; a changed annotation on an
old span shows up after the next sync."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest

from fabric_helpers import duckdb_connection
from obslake.config import Connector
from obslake.fabric.export import ProjectExporter
from obslake.lake.catalog import load_catalog
from obslake.storage.credentials import StorageCredentials
from obslake.fabric.phoenix import PhoenixSource
from phoenix_server import annotate, new_trace_id, phoenix_server, send_spans  # noqa: F401 (fixture)

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
    assert first.rows == 6 and first.mode == "full"
    con = duckdb_connection(moto_server)
    uri = f"{s3_conn.project_location(project)}/metadata/latest.metadata.json"
    got = con.execute(f"""SELECT span_id, "eval.correctness.label", "eval.correctness.explanation",
                          "attributes.llm.token_count.prompt" FROM iceberg_scan('{uri}') ORDER BY span_id""").fetchall()
    expected = sorted([(root, None, None, None) for _, root, _ in traces.values()]
                      + [(llm, "correct", f"trace {t} ok", 10 + t) for t, (_, _, llm) in traces.items()])
    assert got == expected

    from deltalake import DeltaTable

    from obslake.fabric.export import delta_storage_options

    dtab = DeltaTable(s3_conn.project_location(project),
                      storage_options=delta_storage_options(s3_exp.table()))
    delta = dtab.to_pyarrow_table()
    assert delta.num_rows == 6
    # Delta shows the true column names (the Parquet files carry them; Iceberg resolves by field id)
    iceberg = s3_exp.table().scan().to_arrow()
    assert sorted(delta.column_names) == sorted(iceberg.column_names)
    assert {"eval.correctness.label", "attributes.llm.token_count.prompt"} <= set(delta.column_names)
    by_span = [("span_id", "ascending")]
    assert delta.select(iceberg.column_names).cast(iceberg.schema).sort_by(by_span).to_pylist() == \
        iceberg.sort_by(by_span).to_pylist()
    label_col = "eval.correctness.label"
    assert sorted(x for x in delta[label_col].to_pylist() if x) == ["correct"] * 3

    # a reviewer changes the verdict on the 90-day-old answer; the next sync rewrites only that partition
    _, _, old_llm = traces[0]
    annotate(srv.base_url, old_llm, "correctness", "incorrect", 0.0, "re-checked", "LLM")
    second = s3_exp.sync(source)
    assert second.mode == "incremental" and second.rows == 1  # only the span whose annotation changed
    row = con.execute(f"""SELECT "eval.correctness.label", "eval.correctness.explanation" FROM iceberg_scan('{uri}')
                          WHERE span_id = '{old_llm}'""").fetchall()
    assert row == [("incorrect", "re-checked")]
    assert con.execute(f"SELECT count(*) FROM iceberg_scan('{uri}')").fetchone()[0] == 6
    delta = DeltaTable(s3_conn.project_location(project), storage_options=delta_storage_options(s3_exp.table()))
    t = delta.to_pyarrow_table()
    assert t.num_rows == 6 and t.filter(pc.equal(t["span_id"], old_llm))[label_col].to_pylist() == ["incorrect"]

    # GCS (emulator): same source, another bucket; read back through the catalog
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_client._connection.API_BASE_URL)
    gs_conn = _connector(f"gs://{gcs_bucket}/exports", name="phx_gcs")
    gs_cat = load_catalog(lake.settings, StorageCredentials.from_env(gs_conn.storage))
    gs_exp = ProjectExporter(gs_conn, project, gs_cat)
    assert gs_exp.sync(source).rows == 6
    data = gs_exp.table().scan().to_arrow()
    assert sorted(data["span_id"].to_pylist()) == sorted(x for _, r, l in traces.values() for x in (r, l))
    assert data.filter(pc.equal(data["span_id"], old_llm))["eval.correctness.label"].to_pylist() == ["incorrect"]
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="exports/ml/support/")}
    assert "exports/ml/support/metadata/latest.metadata.json" in names
    assert any("/data/date=" in n and "/hour=" in n for n in names)
