"""The permission probe task of a Data Fabric DAG (operators/storage_probe.py), run via ``execute(context)``.

Local directories, and moto S3 buckets through Airflow connections from the environment.
"""

from __future__ import annotations

import uuid

import pytest

from lake_fixtures import aws_connection
from obslake.operators.storage_probe import StorageProbeOperator


@pytest.fixture
def aws_conn(monkeypatch, moto_server) -> str:
    conn_id = f"obslake_exports_{uuid.uuid4().hex[:6]}"
    return aws_connection(monkeypatch, moto_server, conn_id)


@pytest.mark.parametrize("suffix", ["/", ""])
def test_a_local_root_is_probed_and_left_clean(tmp_path, suffix):
    root = tmp_path / "exports"
    root.mkdir()
    (root / "keep.txt").write_text("keep")
    marker = StorageProbeOperator(task_id="probe_permissions", uri=f"file://{root}/ml{suffix}").execute({})
    assert marker.startswith(f"file://{root}/ml/_obslake_probe/") and marker.endswith(".txt")
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["keep.txt"]


def test_an_s3_prefix_is_probed_through_the_connection(s3_client, s3_bucket, aws_conn):
    op = StorageProbeOperator(task_id="probe_permissions", uri=f"s3://{s3_bucket}/exports/ml", conn_id=aws_conn)
    marker = op.execute({})
    assert marker.startswith(f"s3://{s3_bucket}/exports/ml/_obslake_probe/")
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_a_missing_bucket_fails_naming_the_permission(s3_client, aws_conn):
    from airflow.sdk.exceptions import AirflowFailException

    missing = f"obslake-missing-{uuid.uuid4().hex[:12]}"
    op = StorageProbeOperator(task_id="probe_permissions", uri=f"s3://{missing}/exports/ml/", conn_id=aws_conn)
    with pytest.raises(AirflowFailException) as err:
        op.execute({})
    message = str(err.value)
    assert message.startswith(f"permission probe: cannot write s3://{missing}/exports/ml/_obslake_probe/")
    assert f"grant s3:PutObject on s3://{missing}/exports/ml/" in message


def test_uri_and_connection_are_templated():
    assert set(StorageProbeOperator.template_fields) == {"uri", "conn_id"}
