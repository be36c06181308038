"""Building a trace source from a connector's ``source:`` block (fabric/sources.py).

The lake source is checked against a real SQLite catalog (it lists the projects of the namespace it was
given); Phoenix sources are built without opening their database (it is opened on first use).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from obslake.config import TraceSourceConfig
from obslake.exceptions import ConfigError, TerminalError
from obslake.fabric.model import TraceSource
from obslake.fabric.sources import make_source


def _resolver(uri: str):
    calls: list[str] = []

    def connection_uri(conn_id: str) -> str:
        calls.append(conn_id)
        return uri

    return connection_uri, calls


def test_a_lake_source_reads_the_given_catalog_and_space(lake):
    from obslake.fabric.lake_source import LakeTraceSource

    catalog = lake.catalog
    catalog.create_namespace("llm")
    schema = pa.schema([pa.field("span_id", pa.string())])
    for name in ("chat__spans", "chat__annotations", "rag__spans", "notes"):
        catalog.create_table(("llm", name), schema=schema)
    source = make_source(TraceSourceConfig(type="lake", space="llm"), catalog)
    assert isinstance(source, LakeTraceSource) and isinstance(source, TraceSource)
    assert source.list_projects() == ["chat", "rag"]
    catalog.create_namespace("traces")
    assert make_source(TraceSourceConfig(type="lake"), catalog).list_projects() == []  # default space: traces


def test_a_phoenix_uri_is_used_as_given_and_opened_read_only(tmp_path):
    from obslake.fabric.phoenix import PhoenixSource

    resolve, calls = _resolver("postgresql://never:used@127.0.0.1:1/x")
    db = tmp_path / "phoenix.db"  # not created: nothing is opened yet
    source = make_source(TraceSourceConfig(type="phoenix", uri=f"sqlite:///{db}", conn_id="phx"), None, resolve)
    assert isinstance(source, PhoenixSource) and isinstance(source, TraceSource)
    assert str(db) in repr(source) and "mode=ro" in repr(source)
    assert calls == []  # `uri:` wins over conn_id
    assert not db.exists()


def test_a_phoenix_conn_id_is_resolved_through_the_given_function():
    resolve, calls = _resolver("postgresql+psycopg2://phoenix:s3cr3t@db.internal:5432/phoenix")
    source = make_source(TraceSourceConfig(type="phoenix", conn_id="phoenix_db"), None, resolve)
    assert calls == ["phoenix_db"]
    assert "db.internal:5432/phoenix" in repr(source)
    assert "s3cr3t" not in repr(source)  # the password stays in Airflow's secrets


def test_a_phoenix_conn_id_outside_airflow_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        make_source(TraceSourceConfig(type="phoenix", conn_id="phoenix_db"), None)
    assert isinstance(err.value, TerminalError)
    message = str(err.value)
    assert "conn_id 'phoenix_db'" in message and "give the database as `uri:`" in message


def test_a_phoenix_uri_that_is_not_a_database_is_a_config_error():
    with pytest.raises(ConfigError, match="a Phoenix database is SQLite or PostgreSQL"):
        make_source(TraceSourceConfig(type="phoenix", uri="mysql://u@h/phoenix"), None)


def test_an_empty_uri_falls_back_to_the_conn_id():
    resolve, calls = _resolver("postgresql://phoenix@db.internal/phoenix")
    make_source(TraceSourceConfig(type="phoenix", uri="", conn_id="phoenix_db"), None, resolve)
    assert calls == ["phoenix_db"]
