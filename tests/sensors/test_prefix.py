"""The prefix sensor (sensors/prefix.py) against the moto S3 server: poke, poke-mode execute, deferral and resume.

The sensor is run the way the task runner runs it (``execute`` / ``resume_execution`` with a context), with
the ``aws_default`` connection (moto) and the lake's ledger taken from the environment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from lake_fixtures import own_bucket_for_airflow
from obslake.airflow_support import job_to_dict
from obslake.sensors.prefix import S3KeyPrefixSensor
from obslake.storage.base import ObjectInfo
from obslake.triggers.prefix import NewFilesTrigger


@pytest.fixture(autouse=True)
def aws_default(monkeypatch, moto_server, lake, s3_client, s3_bucket):
    """aws_default (moto), the job's ingestion key as a Variable, the bucket tagged with it."""
    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")


@pytest.fixture
def job(make_job, s3_bucket):
    return make_job(f"s3://{s3_bucket}/in/", poll_interval=0.05, sensor_timeout=0.4)


def _sensor(job, **kwargs) -> S3KeyPrefixSensor:
    return S3KeyPrefixSensor(task_id="wait_for_new_files", job=job, **kwargs)


def _put(s3_client, bucket, *keys, body: bytes = b"x"):
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def test_interval_and_timeout_come_from_the_job(job):
    sensor = _sensor(job)
    assert (sensor.poke_interval, sensor.timeout) == (0.05, 0.4)
    assert sensor.job == job_to_dict(job) and sensor.source == job.source
    assert sensor.template_fields == ("source",)
    assert sensor.deferrable is False
    override = _sensor(job_to_dict(job), poke_interval=3, timeout=60, deferrable=True)  # the dict form works too
    assert (override.poke_interval, override.timeout, override.deferrable) == (3, 60, True)


def test_poke_is_done_only_when_a_new_version_is_listed(job, s3_client, s3_bucket):
    sensor = _sensor(job)
    _put(s3_client, s3_bucket, "in/readme.txt", "elsewhere/a.csv")
    empty = sensor.poke({})
    assert (empty.is_done, empty.xcom_value) == (False, [])
    _put(s3_client, s3_bucket, "in/2024/a.csv", "in/b.parquet")
    found = sensor.poke({})
    assert found.is_done
    assert sorted(f["key"] for f in found.xcom_value) == ["in/2024/a.csv", "in/b.parquet"]
    assert all(ObjectInfo.from_dict(f).bucket == s3_bucket for f in found.xcom_value)


def test_poke_skips_versions_the_ledger_has_done(job, s3_client, s3_bucket, lake):
    _put(s3_client, s3_bucket, "in/a.csv")
    sensor = _sensor(job)
    [a] = sensor.poke({}).xcom_value
    lake.ledger.mark_succeeded(job.name, ObjectInfo.from_dict(a), rows=1, table_name="t", snapshot_id=1)
    assert sensor.poke({}).is_done is False
    _put(s3_client, s3_bucket, "in/a.csv", body=b"xy")  # rewritten: a new version (new ETag)
    assert [f["key"] for f in sensor.poke({}).xcom_value] == ["in/a.csv"]


def test_the_rendered_source_is_the_one_listed(job, s3_client, s3_bucket):
    _put(s3_client, s3_bucket, "in/a.csv", "templated/2024-05-06/b.csv")
    sensor = _sensor(job)
    sensor.source = f"s3://{s3_bucket}/templated/2024-05-06/"  # as Jinja rendering sets the template field
    assert [f["key"] for f in sensor.poke({}).xcom_value] == ["templated/2024-05-06/b.csv"]


def test_a_missing_bucket_fails_the_task_instead_of_waiting(make_job):
    from airflow.sdk.exceptions import AirflowFailException

    sensor = _sensor(make_job("s3://obslake-no-such-bucket-7d2e/in/", poll_interval=0.05, sensor_timeout=5))
    with pytest.raises(AirflowFailException, match="obslake-no-such-bucket-7d2e"):
        sensor.poke({})
    started = time.monotonic()
    with pytest.raises(AirflowFailException):
        sensor.execute({})
    assert time.monotonic() - started < 4, "an error must not be retried by poking until the timeout"


def test_poke_mode_returns_the_files(job, s3_client, s3_bucket):
    _put(s3_client, s3_bucket, "in/a.csv")
    assert [f["key"] for f in _sensor(job).execute({})] == ["in/a.csv"]


def test_poke_mode_skips_when_nothing_arrives_before_the_timeout(job, s3_bucket):
    from airflow.sdk.exceptions import AirflowSkipException

    started = time.monotonic()
    with pytest.raises(AirflowSkipException, match=rf"no new files under s3://{s3_bucket}/in/ within 0.4s"):
        _sensor(job).execute({})
    assert 0.4 <= time.monotonic() - started < 5


def test_a_job_paused_in_its_yaml_reads_nothing(make_job):
    from airflow.sdk.exceptions import AirflowSkipException

    # the bucket does not exist: any listing would fail the task instead of skipping it
    paused = make_job("s3://obslake-no-such-bucket-9a1b/in/", status="paused")
    with pytest.raises(AirflowSkipException, match="job test_job has status paused in its YAML"):
        _sensor(paused, deferrable=True).execute({})


def test_deferrable_returns_at_once_when_files_are_there(job, s3_client, s3_bucket):
    _put(s3_client, s3_bucket, "in/a.csv")
    assert [f["key"] for f in _sensor(job, deferrable=True).execute({})] == ["in/a.csv"]


def test_deferrable_defers_to_the_trigger_and_resumes_with_its_files(job, s3_client, s3_bucket):
    from airflow.sdk.exceptions import TaskDeferred

    sensor = _sensor(job, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    d = deferred.value
    assert isinstance(d.trigger, NewFilesTrigger)
    assert d.trigger.job == job_to_dict(job) and d.trigger.poll_interval == 0.05
    assert d.method_name == "execute_complete"
    assert d.timeout == dt.timedelta(seconds=0.4)

    _put(s3_client, s3_bucket, "in/late.csv")

    async def fire():
        return await asyncio.wait_for(d.trigger.run().__anext__(), 20)

    event = asyncio.run(fire())  # the real trigger, as the triggerer would run it
    files = sensor.resume_execution(d.method_name, {"event": event.payload, **(d.kwargs or {})}, {})
    assert [f["key"] for f in files] == ["in/late.csv"]


def test_trigger_errors_fail_the_task_terminal_or_retryable(job):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    sensor = _sensor(job, deferrable=True)
    with pytest.raises(AirflowFailException, match="StorageAccessError: denied"):
        sensor.execute_complete({}, {"status": "error", "message": "StorageAccessError: denied", "terminal": True})
    with pytest.raises(AirflowException, match="StorageUnavailableError: later") as err:
        sensor.execute_complete({}, {"status": "error", "message": "StorageUnavailableError: later", "terminal": False})
    assert not isinstance(err.value, AirflowFailException)  # retried by Airflow
    with pytest.raises(AirflowException, match="trigger failed"):
        sensor.execute_complete({}, {"status": "error"})


def test_a_deferral_timeout_is_a_skip_and_other_trigger_failures_are_not(job, s3_bucket):
    from airflow.sdk.bases.operator import TriggerFailureReason
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferralError

    sensor = _sensor(job, deferrable=True)
    with pytest.raises(AirflowSkipException, match=f"no new files under s3://{s3_bucket}/in/"):
        sensor.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, {})
    with pytest.raises(TaskDeferralError):
        sensor.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_FAILURE}, {})


def test_the_bucket_is_proven_before_it_is_listed_and_the_verdict_is_kept(job, s3_client, s3_bucket, monkeypatch):
    """The sensor proves the bucket's ownership before its first listing (a wrong tag: nothing is listed) and
    keeps a success for a while, so that polling every few seconds does not read the tags each time."""
    import os

    from airflow.sdk.exceptions import AirflowFailException

    from obslake.lake import discovery
    from obslake.storage.s3 import S3Store

    key = os.environ["AIRFLOW_VAR_OBSLAKE_TEST_KEY"]
    _put(s3_client, s3_bucket, "in/a.csv")
    listed, tag_reads = [], []
    real_find, real_tags = discovery.find_new_files, S3Store.get_bucket_tags
    monkeypatch.setattr(discovery, "find_new_files", lambda *a, **k: listed.append(1) or real_find(*a, **k))
    monkeypatch.setattr(S3Store, "get_bucket_tags", lambda self: tag_reads.append(1) or real_tags(self))

    s3_client.put_bucket_tagging(Bucket=s3_bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": "x"}]})
    for _ in range(2):  # a failure is never kept: each poke reads the tags again, and lists nothing
        with pytest.raises(AirflowFailException, match="differs from the key"):
            _sensor(job).poke({})
    assert listed == [] and len(tag_reads) == 2

    s3_client.put_bucket_tagging(Bucket=s3_bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": key}]})
    for _ in range(3):
        assert _sensor(job).poke({}).is_done
    assert len(listed) == 3 and len(tag_reads) == 3  # proven once, then kept (OWNERSHIP_TTL_SECONDS)


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_windowed_job_lists_its_intervals_folder_and_never_waits_for_a_past_one(make_job, s3_client, s3_bucket,
                                                                                  deferrable):
    import datetime as dt

    from airflow.sdk.exceptions import AirflowSkipException

    job = make_job(f"s3://{s3_bucket}/in/", poll_interval=0.05, sensor_timeout=30, window_prefix="dt={date}/")
    _put(s3_client, s3_bucket, "in/dt=2026-11-29/a.csv", "in/dt=2026-11-30/b.csv", "in/c.csv")
    day = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    ctx = {"data_interval_start": day, "data_interval_end": day + dt.timedelta(days=1)}
    assert [f["key"] for f in _sensor(job, deferrable=deferrable).execute(dict(ctx))] == ["in/dt=2026-11-29/a.csv"]
    started = time.monotonic()
    empty = {"data_interval_start": day - dt.timedelta(days=1), "data_interval_end": day}
    with pytest.raises(AirflowSkipException, match="a past window: not waited for"):
        _sensor(job, deferrable=deferrable).execute(empty)
    assert time.monotonic() - started < 10  # not the 30 s sensor_timeout
