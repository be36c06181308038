"""The bucket-ownership check before any object is read (operators/tag_verify.py).

Run as the task runner runs it (``execute(context)``), with the key in an Airflow Variable and the S3
connection in Airflow connections, both from the environment (as a secrets backend would give them); on
local directories (tags in ``.obslake-tags.json``) and on moto S3 buckets (bucket tags).
"""

from __future__ import annotations

import json
import uuid

import pytest

from lake_fixtures import aws_connection, own_bucket_for_airflow
from obslake.operators.tag_verify import TagVerifyOperator

KEY = "k-" + "7f3a9c" * 4


@pytest.fixture
def key_variable(monkeypatch) -> str:
    name = f"obslake_key_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", KEY)
    return name


def _local_bucket(tmp_path, tags: dict | None):
    root = tmp_path / "bucket"
    root.mkdir()
    if tags is not None:
        (root / ".obslake-tags.json").write_text(json.dumps(tags))
    return f"file://{root}/"


def _op(source, key_variable, **kwargs) -> TagVerifyOperator:
    return TagVerifyOperator(task_id="verify_bucket_ownership", source=source, key_variable=key_variable, **kwargs)


def test_the_matching_tag_passes(tmp_path, key_variable):
    source = _local_bucket(tmp_path, {"arize-ingestion-key": KEY, "team": "ml"})
    assert _op(source, key_variable).execute({}) is None


def test_a_custom_tag_name(tmp_path, key_variable):
    from airflow.sdk.exceptions import AirflowFailException

    source = _local_bucket(tmp_path, {"owner-key": KEY})
    assert _op(source, key_variable, tag_name="owner-key").execute({}) is None
    with pytest.raises(AirflowFailException, match="has no tag 'arize-ingestion-key'"):
        _op(source, key_variable).execute({})


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_or_empty_key_variable_fails_with_the_command_that_sets_it(tmp_path, monkeypatch, value):
    from airflow.sdk.exceptions import AirflowFailException

    name = f"obslake_key_{uuid.uuid4().hex[:8]}"
    if value is not None:
        monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value)
    source = _local_bucket(tmp_path, {"arize-ingestion-key": KEY})
    with pytest.raises(AirflowFailException) as err:
        _op(source, name).execute({})
    assert f"Airflow Variable {name!r} (the job's ingestion key) is not set" in str(err.value)
    assert f"airflow variables set {name} <your-ingestion-key>" in str(err.value)


def test_a_wrong_key_fails_without_revealing_either_value(tmp_path, key_variable):
    from airflow.sdk.exceptions import AirflowFailException

    theirs = "k-someone-elses-key-123456"
    source = _local_bucket(tmp_path, {"arize-ingestion-key": theirs})
    with pytest.raises(AirflowFailException) as err:
        _op(source, key_variable).execute({})
    message = str(err.value)
    assert "whose value differs from the key in Airflow Variable" in message and key_variable in message
    assert KEY not in message and theirs not in message


def test_a_bucket_without_tags_fails_with_the_fix(tmp_path, key_variable):
    from airflow.sdk.exceptions import AirflowFailException

    source = _local_bucket(tmp_path, None)
    with pytest.raises(AirflowFailException) as err:
        _op(source, key_variable).execute({})
    assert "Nothing was read" in str(err.value) and ".obslake-tags.json" in str(err.value)
    assert KEY not in str(err.value)


def test_s3_bucket_tag_through_the_airflow_connection(monkeypatch, s3_client, s3_bucket, moto_server):
    from airflow.sdk.exceptions import AirflowFailException

    key = own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_s3_key")
    assert _op(f"s3://{s3_bucket}/in/", "obslake_s3_key").execute({}) is None

    # the same bucket through another named connection
    aws_connection(monkeypatch, moto_server, "obslake_other_aws")
    assert _op(f"s3://{s3_bucket}/in/", "obslake_s3_key", conn_id="obslake_other_aws").execute({}) is None

    s3_client.put_bucket_tagging(
        Bucket=s3_bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": "k-rotated"}]}
    )
    with pytest.raises(AirflowFailException) as err:
        _op(f"s3://{s3_bucket}/in/", "obslake_s3_key").execute({})
    assert "aws s3api put-bucket-tagging" in str(err.value) and key not in str(err.value)


def test_a_missing_s3_bucket_fails_instead_of_retrying(monkeypatch, s3_client, s3_bucket, moto_server):
    from airflow.sdk.exceptions import AirflowFailException

    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_s3_key")
    missing = f"obslake-missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(AirflowFailException, match=missing):
        _op(f"s3://{missing}/in/", "obslake_s3_key").execute({})


def test_every_argument_is_templated():
    assert set(TagVerifyOperator.template_fields) == {"source", "conn_id", "key_variable", "tag_name"}
