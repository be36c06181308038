"""Fixtures for lake tests: an isolated catalog + ledger on SQLite, or on a fresh Postgres database."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import uuid
from typing import Any, Callable, Iterator

import pyarrow as pa
import pytest

from obslake.config import ImportJob
from obslake.lake.catalog import LakeSettings, load_catalog
from obslake.lake.ledger import Ledger
from obslake_demo.writers import write_table

PG_ADMIN_URI = os.environ.get("OBSLAKE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@dataclasses.dataclass
class Lake:
    settings: LakeSettings
    env: dict[str, str]

    @property
    def catalog(self):
        return load_catalog(self.settings)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.state_uri)


@pytest.fixture
def lake(tmp_path, monkeypatch) -> Lake:
    """A fresh embedded lake: SQLite catalog + ledger and a warehouse under tmp_path."""
    env = {"OBSLAKE_HOME": str(tmp_path / "lake")}
    for k in ("OBSLAKE_CATALOG_URI", "OBSLAKE_STATE_URI", "OBSLAKE_WAREHOUSE", "OBSLAKE_CATALOG_TYPE",
              "OBSLAKE_CATALOG_PROPERTIES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Lake(LakeSettings.from_env(), env)


@pytest.fixture
def pg_lake(tmp_path, monkeypatch) -> Iterator[Lake]:
    """A lake whose catalog and ledger live in a new Postgres database (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"obslake_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URI, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    uri = PG_ADMIN_URI.rsplit("/", 1)[0] + f"/{name}"
    env = {"OBSLAKE_CATALOG_URI": uri, "OBSLAKE_WAREHOUSE": f"file://{tmp_path / 'warehouse'}",
           "OBSLAKE_HOME": str(tmp_path / "home")}
    (tmp_path / "warehouse").mkdir()
    for k in ("OBSLAKE_STATE_URI", "OBSLAKE_CATALOG_TYPE", "OBSLAKE_CATALOG_PROPERTIES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield Lake(LakeSettings.from_env(), env)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inference_rows(n: int, *, start: int = 0, id_prefix: str = "p", day: str | None = None) -> pa.Table:
    """A small inference table with a timestamp inside the accepted range (yesterday by default)."""
    import datetime as dt

    base = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if day:
        base = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
    return pa.table({
        "prediction_id": [f"{id_prefix}-{i}" for i in range(start, start + n)],
        "prediction_ts": pa.array([base + dt.timedelta(minutes=i) for i in range(start, start + n)],
                                  pa.timestamp("us", tz="UTC")),
        "feature_x": pa.array([float(i) for i in range(start, start + n)]),
        "feature_city": pa.array([["paris", "lima", "oslo"][i % 3] for i in range(start, start + n)]),
        "region": pa.array(["eu"] * n),
        "predicted_label": pa.array([["a", "b"][i % 2] for i in range(start, start + n)]),
        "predicted_score": pa.array([i / (n + start) for i in range(start, start + n)]),
    })


def to_bytes(table: pa.Table, fmt: str) -> bytes:
    buf = io.BytesIO()
    write_table(table, fmt, buf)
    return buf.getvalue()


@pytest.fixture
def make_job() -> Callable[..., ImportJob]:
    """Build a valid ImportJob for a source URI, with overrides."""

    def _make(source: str, **overrides: Any) -> ImportJob:
        data = {
            "name": "test_job",
            "source": source,
            "model": {"space": "tests", "name": "ctr", "type": "score_categorical", "environment": "production"},
            "ingestion_key_variable": "obslake_test_key",
            "schema": {
                "prediction_id": "prediction_id",
                "timestamp": "prediction_ts",
                "prediction_label": "predicted_label",
                "prediction_score": "predicted_score",
                "features": {"prefix": "feature_"},
                "tags": ["region"],
            },
        }
        data.update(overrides)
        return ImportJob.model_validate(data)

    return _make


def aws_connection(monkeypatch, endpoint: str, conn_id: str = "aws_default", region: str = "us-east-1",
                   **extra: Any) -> str:
    """Give Airflow the connection ``conn_id`` (in the environment, as a deployment would) to an S3 endpoint
    on loopback with moto's dummy credentials; ``extra`` joins the connection's extras. Returns ``conn_id``."""
    import json

    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": region, **extra}}))
    return conn_id


def own_bucket_for_airflow(monkeypatch, s3_client, bucket: str, moto_server: str, variable: str) -> str:
    """Tag ``bucket`` with a fresh ingestion key and give Airflow what a DAG needs to use it.

    Sets the ``aws_default`` connection (the moto server) and the Variable ``variable`` (the key)
    in the environment, as a deployment would. Returns the key.
    """
    key = "k-" + os.urandom(8).hex()
    s3_client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": key}]})
    aws_connection(monkeypatch, moto_server)
    monkeypatch.setenv(f"AIRFLOW_VAR_{variable.upper()}", key)
    return key


def asset_events(uri: str) -> list[dict]:
    """The extras of the Airflow asset events of ``uri``, oldest first (from the metadata DB)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        q = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(AssetModel.uri == uri)
        return [e.extra for e in q.order_by(AssetEvent.id)]
