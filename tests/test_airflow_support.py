"""What the Airflow wrappers share (airflow_support.py): the job's JSON form and the error mapping."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from obslake.airflow_support import airflow_errors, job_from_dict, job_to_dict
from obslake.config import ImportJob
from obslake.exceptions import (
    BucketOwnershipError,
    ConfigError,
    ObjectChangedError,
    StorageAccessError,
    StorageUnavailableError,
    TerminalError,
    TransientError,
)


@pytest.fixture
def job(make_job) -> ImportJob:
    return make_job(
        "s3://some-bucket/models/ctr",
        conn_id="aws_prod",
        formats=["parquet", "csv"],
        on_error="skip_rows",
        max_bad_rows=7,
        poll_interval=2.5,
        deferrable=True,
        schema={
            "prediction_id": "pid",
            "timestamp": "ts",
            "prediction_label": "y",
            "prediction_score": "p",
            "features": {"prefix": "f_"},
            "tags": ["region"],
            "embedding_features": {"img": {"vector": "v", "link_to_data": "url"}},
            "column_types": {"f_x": "double"},
        },
    )


def test_a_job_survives_its_json_form(job):
    data = job_to_dict(job)
    wire = json.loads(json.dumps(data))  # what XCom / trigger kwargs carry
    assert wire == data
    again = job_from_dict(wire)
    assert again == job
    assert again.schema_.fingerprint() == job.schema_.fingerprint()  # "Fix Schema" must not fire by itself
    assert again.source == "s3://some-bucket/models/ctr/"


def test_the_json_form_uses_the_yaml_key_names(job):
    data = job_to_dict(job)
    assert "schema" in data and "schema_" not in data  # the alias, as written in the job YAML
    assert data["on_error"] == "skip_rows" and data["formats"] == ["parquet", "csv"]
    assert data["model"]["type"] == "score_categorical"


def test_job_from_dict_passes_a_job_through_and_validates_dicts(job):
    assert job_from_dict(job) is job
    bad = {**job_to_dict(job), "poll_interval": 0}
    with pytest.raises(ValidationError, match="poll_interval"):
        job_from_dict(bad)
    with pytest.raises(ValidationError, match="extra"):
        job_from_dict({**job_to_dict(job), "surprise": 1})


@pytest.mark.parametrize(
    "exc",
    [
        TerminalError("terminal", code="X_CODE"),
        ConfigError("bad yaml"),
        StorageAccessError("s3://b/: AccessDenied; grant s3:ListBucket"),
        BucketOwnershipError("bucket s3://b/ has no tag"),
    ],
)
def test_terminal_errors_become_airflow_fail_exceptions(exc):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as err, airflow_errors():
        raise exc
    assert str(err.value) == str(exc)
    assert err.value.__cause__ is exc  # the coded error stays reachable in the traceback


@pytest.mark.parametrize(
    "exc",
    [
        StorageUnavailableError("S3 did not answer; retry later"),
        ObjectChangedError("rewritten while read"),
        TransientError("catalog busy"),
        ValueError("a bug"),
        KeyError("k"),
    ],
)
def test_other_errors_pass_through_unchanged_and_stay_retryable(exc):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(type(exc)) as err, airflow_errors():
        raise exc
    assert err.value is exc and not isinstance(err.value, AirflowFailException)


def test_no_error_no_effect():
    with airflow_errors():
        result = 42
    assert result == 42
