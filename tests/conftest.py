"""Shared fixtures: local S3 (moto) and GCS (gcp-storage-emulator) servers on loopback.

The servers are session-scoped and in-memory; every test gets fresh, uniquely named buckets, so
tests never see each other's objects. Nothing here talks to a real cloud endpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

# Isolate every test process from the developer's ~/.obslake and ~/airflow before anything imports
# Airflow: a throwaway AIRFLOW_HOME with its own SQLite metadata DB, created by `airflow_db` below.
PROJECT = Path(__file__).resolve().parents[1]
_SCRATCH = Path(tempfile.mkdtemp(prefix="obslake-tests-"))
os.environ["OBSLAKE_HOME"] = str(_SCRATCH / "obslake-home")
os.environ["AIRFLOW_HOME"] = str(_SCRATCH / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT / "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_SCRATCH / 'airflow' / 'airflow.db'}"
os.environ.pop("OBSLAKE_FAULT_AT", None)
# Never reach Google from a test: no metadata-server probing for credentials (python and C++ clients).
os.environ["NO_GCE_CHECK"] = "True"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_ROOT"] = "127.0.0.1:9"

pytest.register_assert_rewrite("lake_fixtures")  # imported here, before pytest_plugins loads it
from lake_fixtures import free_port  # noqa: E402 (after the isolation above)

pytest_plugins = ["lake_fixtures"]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An Airflow metadata DB for dag.test(), created once per test process (`airflow db migrate`)."""
    (_SCRATCH / "airflow").mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _SCRATCH / "airflow"

_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def unique_bucket_name(stem: str = "obslake-test") -> str:
    """A bucket name valid on S3 and GCS, unique per call."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (free port), with dummy AWS credentials in the environment.

    Yields:
        The endpoint URL, e.g. ``http://127.0.0.1:41234``.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in _DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """An in-memory gcp-storage-emulator on 127.0.0.1 (free port).

    Yields:
        The endpoint URL, e.g. ``http://127.0.0.1:41235``.
    """
    from gcp_storage_emulator.server import create_server

    for name in ("gcp_storage_emulator", "api.object", "api.bucket"):
        logging.getLogger(name).setLevel(logging.WARNING)
    port = free_port()
    # a native client that is not given an endpoint (pyarrow's GcsFileSystem) goes to the emulator too
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = f"http://127.0.0.1:{port}"
    server = create_server("127.0.0.1", port, in_memory=True)
    # In memory mode the emulator still re-serialises its whole metadata (every object of every
    # bucket) into an in-memory ".meta" file after each write, which nobody reads back: quadratic
    # cost that makes a 1,000-object bucket take ~15 s. Drop that bookkeeping (behaviour unchanged).
    storage = getattr(server, "_storage", None)
    if storage is not None and hasattr(storage, "_write_config_to_file"):
        storage._write_config_to_file = lambda: None
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_client(moto_server: str) -> Any:
    """A boto3 S3 client for the moto server (obslake's own client factory, dummy credentials)."""
    from obslake.storage.s3 import make_s3_client

    return make_s3_client(
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def gcs_client(gcs_server: str) -> Any:
    """A ``google.cloud.storage.Client`` for the emulator (anonymous credentials)."""
    from obslake.storage.gcs import make_gcs_client

    return make_gcs_client(api_endpoint=gcs_server, project="obslake-test")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty S3 bucket on the moto server; returns its name."""
    name = unique_bucket_name()
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def gcs_bucket(gcs_client: Any) -> str:
    """A fresh, empty GCS bucket on the emulator; returns its name."""
    name = unique_bucket_name()
    gcs_client.create_bucket(name)
    return name
