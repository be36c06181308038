"""Builders for trace test data and a DuckDB reader (not pyiceberg) for the exported tables."""

from __future__ import annotations

import datetime as dt
import glob
import os

import pyarrow as pa

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def spans_table(specs: list[dict]) -> pa.Table:
    """specs: dicts with span_id, trace_id, parent_id, name, start (datetime), ms (duration) and attributes."""
    import json

    rows = []
    for s in specs:
        start = s["start"]
        rows.append({
            "context.span_id": s["span_id"], "context.trace_id": s["trace_id"], "parent_id": s.get("parent_id"),
            "name": s["name"], "span_kind": s.get("kind", "LLM"), "start_time": start,
            "end_time": start + dt.timedelta(milliseconds=s.get("ms", 100)), "status_code": "OK",
            "status_message": "", "attributes": json.dumps(s.get("attributes", {
                "openinference": {"span": {"kind": s.get("kind", "LLM")}},
                "llm": {"model_name": "gpt-4o", "token_count": {"prompt": 10, "completion": 5, "total": 15}},
                "input": {"value": f"question {s['span_id']}"}, "output": {"value": f"answer {s['span_id']}"}})),
        })
    return pa.Table.from_pylist(rows, pa.schema([
        ("context.span_id", pa.string()), ("context.trace_id", pa.string()), ("parent_id", pa.string()),
        ("name", pa.string()), ("span_kind", pa.string()), ("start_time", pa.timestamp("us", tz="UTC")),
        ("end_time", pa.timestamp("us", tz="UTC")), ("status_code", pa.string()), ("status_message", pa.string()),
        ("attributes", pa.string())]))


def annotations_table(specs: list[dict]) -> pa.Table:
    """specs: dicts with span_id, name, label, score, explanation, annotator_kind, identifier, updated_at."""
    return pa.Table.from_pylist([{
        "span_id": a["span_id"], "name": a["name"], "label": a.get("label"), "score": a.get("score"),
        "explanation": a.get("explanation"), "annotator_kind": a.get("annotator_kind", "LLM"),
        "identifier": a.get("identifier", ""), "updated_at": a.get("updated_at", NOW)} for a in specs],
        pa.schema([("span_id", pa.string()), ("name", pa.string()), ("label", pa.string()), ("score", pa.float64()),
                   ("explanation", pa.string()), ("annotator_kind", pa.string()), ("identifier", pa.string()),
                   ("updated_at", pa.timestamp("us", tz="UTC"))]))


def duckdb_connection(s3_endpoint: str | None = None):
    """DuckDB with the iceberg/avro/httpfs extensions loaded from site-packages (no network)."""
    import duckdb

    con = duckdb.connect()
    version = duckdb.__version__
    for pkg in ("duckdb_extension_httpfs", "duckdb_extension_avro", "duckdb_extension_iceberg"):
        mod = __import__(pkg)
        files = glob.glob(os.path.join(os.path.dirname(mod.__file__), "extensions", f"v{version}", "*.duckdb_extension"))
        assert files, f"{pkg} has no extension for duckdb {version}"
        con.execute(f"LOAD '{files[0]}'")
    if s3_endpoint:
        host = s3_endpoint.split("://", 1)[1]
        con.execute(f"""CREATE SECRET moto (TYPE S3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1',
                        ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)""")
    return con


def duckdb_ddl(connector, project: str, annotations: list[tuple[str, str]], s3_endpoint: str | None = None):
    """A DuckDB connection that ran ``obslake fabric ddl``'s DuckDB output for ``project`` (placeholders
    filled for moto on loopback: plain http, path-style URLs): views ``<t>``, ``<t>_annotations``, ``<t>_latest``."""
    import duckdb

    from obslake.fabric.ddl import ddl, placeholders

    text = ddl("duckdb", table_uri=connector.storage, namespace=connector.namespace, project=project,
               annotations=annotations)
    if s3_endpoint:
        host = s3_endpoint.split("://", 1)[1]
        text = (text.replace("<key_id>", "testing").replace("<secret>", "testing").replace("<region>", "us-east-1")
                .replace("ENDPOINT '<endpoint>',", f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false,")
                .replace("<endpoint>", host))
    assert placeholders(text) == set(), placeholders(text)
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(text)
    return con
