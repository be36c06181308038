"""The deferrable wait for new files (triggers/prefix.py), run in an event loop against the moto S3 server.

The Airflow connection ``aws_default`` (moto) and the lake's ledger come from the environment, as in a
triggerer. ``tests/dags/test_import_dags.py`` checks that polls leave the event loop free; here: the
serialised form, what an event holds, the ledger rule, error events and the per-process store cache.
"""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from lake_fixtures import aws_connection, free_port, own_bucket_for_airflow
from obslake.airflow_support import job_from_dict, job_to_dict
from obslake.storage.base import ObjectInfo
from obslake.triggers.prefix import NewFilesTrigger


@pytest.fixture
def aws_default(monkeypatch, moto_server, s3_client, s3_bucket):
    """aws_default (moto), the job's ingestion key as a Variable, the bucket tagged with it."""
    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")


def _trigger(make_job, source: str, poll: float = 0.05, **job) -> NewFilesTrigger:
    return NewFilesTrigger(job=job_to_dict(make_job(source, **job)), poll_interval=poll)


async def _first(trigger: NewFilesTrigger, timeout: float = 20.0):
    gen = trigger.run().__aiter__()
    event = await asyncio.wait_for(gen.__anext__(), timeout)
    with pytest.raises(StopAsyncIteration):  # one event, then the trigger is done
        await asyncio.wait_for(gen.__anext__(), timeout)
    return event


def test_serialize_round_trips_through_airflows_trigger_row(make_job):
    from airflow.models.trigger import Trigger

    trigger = _trigger(make_job, "s3://serialise-bucket/in/", poll=7.5, conn_id="aws_prod", max_files_per_run=3)
    classpath, kwargs = trigger.serialize()
    assert classpath == "obslake.triggers.prefix.NewFilesTrigger"
    assert set(kwargs) == {"job", "poll_interval"}
    assert json.loads(json.dumps(kwargs)) == kwargs  # primitives only
    row = Trigger.from_object(trigger)  # what the scheduler stores (serde-encoded, encrypted when a key is set)
    module, name = row.classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**row.kwargs)  # what the triggerer runs
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.poll_interval == 7.5
    assert job_from_dict(rebuilt.job) == job_from_dict(trigger.job)


def test_fires_at_once_with_the_oldest_new_files_and_the_total(aws_default, lake, s3_client, s3_bucket, make_job):
    for key in ("in/a.csv", "in/sub/b.parquet", "in/c.avro", "in/readme.txt", "elsewhere/d.csv"):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    trigger = _trigger(make_job, f"s3://{s3_bucket}/in/", max_files_per_run=2)
    event = asyncio.run(_first(trigger))
    payload = event.payload
    assert payload["status"] == "success" and payload["total_new"] == 3
    files = [ObjectInfo.from_dict(f) for f in payload["files"]]  # the dict form the sensor returns
    assert len(files) == 2 and {f.bucket for f in files} == {s3_bucket}
    assert {f.key for f in files} <= {"in/a.csv", "in/sub/b.parquet", "in/c.avro"}
    assert [f.to_dict() for f in files] == payload["files"]
    assert files == sorted(files, key=lambda f: (f.mtime, f.key))


def test_keeps_waiting_while_every_version_is_done_then_fires_for_a_new_one(
    aws_default, lake, s3_client, s3_bucket, make_job
):
    s3_client.put_object(Bucket=s3_bucket, Key="in/old.csv", Body=b"old")
    job = make_job(f"s3://{s3_bucket}/in/")
    trigger = NewFilesTrigger(job=job_to_dict(job), poll_interval=0.05)
    [old] = asyncio.run(_first(trigger)).payload["files"]
    lake.ledger.mark_succeeded(job.name, ObjectInfo.from_dict(old), rows=1, table_name="t", snapshot_id=1)

    async def scenario():
        gen = trigger.run().__aiter__()
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.6)  # about ten polls
        assert not first.done(), "the imported version must not wake the task"
        await asyncio.to_thread(s3_client.put_object, Bucket=s3_bucket, Key="in/new.csv", Body=b"new")
        return await asyncio.wait_for(first, 20)

    event = asyncio.run(scenario())
    assert [f["key"] for f in event.payload["files"]] == ["in/new.csv"]
    assert event.payload["total_new"] == 1


def test_a_missing_bucket_is_a_terminal_error_event(aws_default, lake, make_job):
    trigger = _trigger(make_job, "s3://obslake-no-such-bucket-4f1c9a/in/")
    payload = asyncio.run(_first(trigger)).payload
    assert payload["status"] == "error" and payload["terminal"] is True
    assert payload["message"].startswith("StorageAccessError: ")
    assert "obslake-no-such-bucket-4f1c9a" in payload["message"]


def test_an_unreachable_endpoint_is_a_retryable_error_event(monkeypatch, lake, make_job):
    monkeypatch.setenv("AIRFLOW_VAR_OBSLAKE_TEST_KEY", "some-key")
    aws_connection(
        monkeypatch, f"http://127.0.0.1:{free_port()}", "s3_down",
        config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 1, "read_timeout": 1},
    )
    trigger = _trigger(make_job, "s3://obslake-unreachable/in/", conn_id="s3_down")
    payload = asyncio.run(_first(trigger)).payload
    assert payload["status"] == "error" and payload["terminal"] is False  # the task retries
    assert payload["message"].startswith("StorageUnavailableError: ")


def test_an_invalid_job_is_an_error_event_not_a_crash(lake, make_job):
    data = job_to_dict(make_job("s3://some-bucket/in/"))
    data["poll_interval"] = -1
    payload = asyncio.run(_first(NewFilesTrigger(job=data, poll_interval=0.05))).payload
    assert payload["status"] == "error" and payload["terminal"] is True  # a retry cannot fix the YAML
    assert payload["message"].startswith("ValidationError: ") and "poll_interval" in payload["message"]


def test_one_store_per_source_and_connection_until_it_expires(aws_default, monkeypatch, s3_bucket):
    from obslake.triggers import prefix

    source = f"s3://{s3_bucket}/cached/"
    store, key_prefix = prefix._cached_store(source, "aws_default")
    assert key_prefix == "cached/"
    assert prefix._cached_store(source, "aws_default")[0] is store
    assert prefix._cached_store(f"s3://{s3_bucket}/other/", "aws_default")[0] is not store
    assert prefix._cached_store(source, None)[0] is not store  # None: the scheme's default, its own entry
    monkeypatch.setattr(prefix, "STORE_TTL_SECONDS", 0.0)
    assert prefix._cached_store(source, "aws_default")[0] is not store  # rebuilt after the TTL
