"""Event-driven discovery: S3 event notifications through SQS (moto's S3 sends them to moto's SQS on loopback).

A notification is a hint. These tests send the real ones (moto's S3 on put/delete) and forged ones (duplicated,
stale, out of order, of a deleted key, another bucket, junk) and check that each file version is handed to a run
once, that a lost notification is made good by the periodic full listing, and that handled messages leave the
queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake_fixtures import own_bucket_for_airflow
from obslake.airflow_support import job_to_dict
from obslake.lake.discovery import discover
from obslake.storage.base import ObjectInfo
from obslake.storage.notifications import Notice, SqsQueue, parse_message
from obslake.storage.s3 import S3Store

ACCOUNT = "123456789012"  # moto's default account


def _record(bucket: str, key: str, etag: str = "abc", event: str = "ObjectCreated:Put") -> dict:
    return {"eventSource": "aws:s3", "eventName": event,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 3}}}


def test_parse_message_reads_s3_sns_and_eventbridge_bodies():
    assert parse_message(json.dumps({"Records": [_record("b", "in/a+b%2Bc.csv")]})) == [
        Notice("b", "in/a b+c.csv", "abc")]  # S3 URL-encodes keys
    removed = parse_message(json.dumps({"Records": [_record("b", "in/x.csv", event="ObjectRemoved:Delete")]}))
    assert removed == [Notice("b", "in/x.csv", "abc", removed=True)]
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [_record("b", "k.csv", '"e1"')]})}
    assert parse_message(json.dumps(sns)) == [Notice("b", "k.csv", "e1")]
    bridge = {"source": "aws.s3", "detail-type": "Object Created",
              "detail": {"bucket": {"name": "b"}, "object": {"key": "in/y.parquet", "etag": "e2"}}}
    assert parse_message(json.dumps(bridge)) == [Notice("b", "in/y.parquet", "e2")]
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    for body in (json.dumps(test_event), "not json", "[1, 2]", "null", json.dumps({"Records": [1, {"s3": None}]}),
                 json.dumps({"Records": [{"eventSource": "aws:sqs"}]})):
        assert parse_message(body) == []


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["Records", "s3", "bucket", "object", "key", "name", "eTag", "eventSource", "eventName",
                                         "Type", "Message", "source", "detail", "detail-type", "x"]),
                        inner, max_size=4), max_leaves=12))
def test_parse_message_never_raises_on_any_json(body):
    """Whatever JSON a queue holds (another producer's messages, a half-formed event), parsing never raises."""
    for notice in parse_message(json.dumps(body)):
        assert isinstance(notice.bucket, str) and notice.bucket and isinstance(notice.key, str)


@pytest.fixture
def notified(monkeypatch, moto_server, s3_client, s3_bucket, lake):
    """The bucket (tagged, aws_default = moto) sends its object events to a fresh SQS queue."""
    import boto3

    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName=f"events-{s3_bucket}")["QueueUrl"]
    arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:events-{s3_bucket}"
    s3_client.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    drain = SqsQueue(url, sqs)
    drain.delete([m.receipt for m in drain.receive()])  # the configuration's s3:TestEvent, if any
    return url, sqs


def _job(make_job, bucket: str, url: str, interval: float = 3600, **extra):
    return make_job(f"s3://{bucket}/in/", notifications={"sqs_queue_url": url, "full_listing_interval": interval,
                                                          "wait_seconds": 2}, **extra)


def _in_queue(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _done(lake, job, files):
    for f in files:
        lake.ledger.mark_succeeded(job.name, f, rows=1, table_name="t", snapshot_id=1)


def test_each_version_once_through_real_duplicated_stale_and_deleted_notifications(
        notified, lake, s3_client, s3_bucket, make_job):
    url, sqs = notified
    queue = SqsQueue(url, sqs)
    store = S3Store(s3_bucket, s3_client)
    s3_client.put_object(Bucket=s3_bucket, Key="in/old.csv", Body=b"old")  # before the job: found by the listing
    job = _job(make_job, s3_bucket, url)
    first = discover(job, store, "in/", lake.ledger, queue)
    assert first.listed and [f.key for f in first.files] == ["in/old.csv"] and first.receipts == []
    _done(lake, job, first.files)
    queue.delete([m.receipt for m in queue.receive()])  # old.csv's own notification: already listed

    s3_client.put_object(Bucket=s3_bucket, Key="in/new.csv", Body=b"v1")
    found = discover(job, store, "in/", lake.ledger, queue, wait_seconds=5)
    assert not found.listed and [f.key for f in found.files] == ["in/new.csv"] and len(found.receipts) == 1
    queue.delete(found.receipts)
    _done(lake, job, found.files)
    v1 = found.files[0]

    # the same notification again (SQS delivers at least once), one of a key outside the prefix, another bucket's,
    # another format's, a deleted key's, junk: nothing new, every message deleted at once
    forged = [{"Records": [_record(s3_bucket, "in/new.csv", v1.etag)]}, {"Records": [_record(s3_bucket, "out/x.csv")]},
              {"Records": [_record("someone-else", "in/new.csv")]}, {"Records": [_record(s3_bucket, "in/r.txt")]},
              {"Records": [_record(s3_bucket, "in/gone.csv")]}, "junk"]
    for body in forged:
        sqs.send_message(QueueUrl=url, MessageBody=body if isinstance(body, str) else json.dumps(body))
    for _ in range(3):
        assert discover(job, store, "in/", lake.ledger, queue, wait_seconds=1).files == []
    assert _in_queue(sqs, url) == 0

    # out of order: the file is rewritten (v2), then a stale notification of v1 arrives after v2's; the version
    # handed is the current one, once
    s3_client.put_object(Bucket=s3_bucket, Key="in/new.csv", Body=b"v2 longer")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [_record(s3_bucket, "in/new.csv", v1.etag)]}))
    handed: list[ObjectInfo] = []
    for _ in range(3):
        step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=1)
        handed += step.files
        queue.delete(step.receipts)
        _done(lake, job, step.files)
    assert [(f.key, f.size) for f in handed] == [("in/new.csv", 9)]
    assert _in_queue(sqs, url) == 0

    # a deletion's notification: nothing to import
    s3_client.delete_object(Bucket=s3_bucket, Key="in/old.csv")
    assert discover(job, store, "in/", lake.ledger, queue, wait_seconds=2).files == []
    assert _in_queue(sqs, url) == 0


def test_a_lost_notification_is_made_good_by_the_full_listing(notified, lake, s3_client, s3_bucket, make_job):
    url, sqs = notified
    queue = SqsQueue(url, sqs)
    store = S3Store(s3_bucket, s3_client)
    job = _job(make_job, s3_bucket, url, interval=600)
    t0 = dt.datetime.now(dt.UTC)
    assert discover(job, store, "in/", lake.ledger, queue, now=t0).listed  # the first step lists
    s3_client.put_object(Bucket=s3_bucket, Key="in/lost.parquet", Body=b"x")
    sqs.purge_queue(QueueUrl=url)  # the notification is lost
    step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=1, now=t0 + dt.timedelta(seconds=599))
    assert not step.listed and step.files == []
    step = discover(job, store, "in/", lake.ledger, queue, now=t0 + dt.timedelta(seconds=600))
    assert step.listed and [f.key for f in step.files] == ["in/lost.parquet"]
    assert lake.ledger.listed_at(job.name) == t0 + dt.timedelta(seconds=600)


def test_a_message_whose_file_exceeds_the_cap_stays_in_the_queue(notified, lake, s3_client, s3_bucket, make_job):
    url, sqs = notified
    queue = SqsQueue(url, sqs)
    store = S3Store(s3_bucket, s3_client)
    job = _job(make_job, s3_bucket, url, max_files_per_run=1)
    discover(job, store, "in/", lake.ledger, queue)  # the first listing (empty)
    for k in ("in/a.csv", "in/b.csv"):
        s3_client.put_object(Bucket=s3_bucket, Key=k, Body=b"x")
    messages = []
    while len(messages) < 2:
        messages += SqsQueue(url, sqs).receive(wait_seconds=2)
    for m in messages:  # both back in the queue, then one receive sees both
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m.receipt, VisibilityTimeout=0)
    step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=2)
    assert len(step.files) == 1 and step.total_new == 2 and len(step.receipts) == 1
    queue.delete(step.receipts)
    assert _in_queue(sqs, url) == 1  # the other file's message was neither handed nor deleted


def _fired_after(job, lake, upload) -> dict:
    """The payload of the job's trigger, which must still be waiting 1 s after it started and fire once
    ``upload()`` (run in a thread) has happened; a full listing has just been made, and the poll interval is an
    hour, so only a notification can make it fire in time."""
    from obslake.triggers.prefix import NewFilesTrigger

    lake.ledger.mark_listed(job.name, dt.datetime.now(dt.UTC))
    trigger = NewFilesTrigger(job=job_to_dict(job), poll_interval=3600)

    async def scenario():
        gen = trigger.run().__aiter__()
        waiting = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(1.0)
        assert not waiting.done()
        await asyncio.to_thread(upload)
        return await asyncio.wait_for(waiting, 15)

    return asyncio.run(scenario()).payload


def test_the_trigger_fires_on_a_notification_and_the_sensor_deletes_it(notified, lake, s3_client, s3_bucket,
                                                                         make_job):
    from obslake.sensors.prefix import S3KeyPrefixSensor

    url, sqs = notified
    job = _job(make_job, s3_bucket, url)
    event = _fired_after(job, lake, lambda: s3_client.put_object(Bucket=s3_bucket, Key="in/sub/now.csv", Body=b"x"))
    assert [f["key"] for f in event["files"]] == ["in/sub/now.csv"] and len(event["receipts"]) == 1
    assert _in_queue(sqs, url) == 1
    sensor = S3KeyPrefixSensor(task_id="wait", job=job_to_dict(job), deferrable=True)
    assert sensor.execute_complete({}, event) == event["files"]
    assert _in_queue(sqs, url) == 0


def test_a_retried_sensor_lists_in_full_once(notified, lake, s3_client, s3_bucket, make_job):
    """An earlier try deleted the notification of a file its run then did not import (the run failed, or Airflow
    marked the resumed sensor failed): the retry's first poke lists in full and hands the file at once; its later
    pokes, and a first try, wait on the queue again."""
    from types import SimpleNamespace

    from obslake.sensors.prefix import S3KeyPrefixSensor

    url, sqs = notified
    job = _job(make_job, s3_bucket, url)
    listed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    lake.ledger.mark_listed(job.name, listed)  # a full listing just happened: the next ones are an hour away
    s3_client.put_object(Bucket=s3_bucket, Key="in/handed.csv", Body=b"x")
    while _in_queue(sqs, url) == 0:
        time.sleep(0.1)
    sqs.purge_queue(QueueUrl=url)  # deleted by the earlier try
    first_try = S3KeyPrefixSensor(task_id="wait", job=job_to_dict(job))
    assert first_try.poke({"ti": SimpleNamespace(try_number=1)}).is_done is False
    assert lake.ledger.listed_at(job.name) == listed
    retry = S3KeyPrefixSensor(task_id="wait", job=job_to_dict(job))
    found = retry.poke({"ti": SimpleNamespace(try_number=2)})
    assert found.is_done and [f["key"] for f in found.xcom_value] == ["in/handed.csv"]
    assert lake.ledger.listed_at(job.name) > listed
    relisted = lake.ledger.listed_at(job.name)
    assert retry.poke({"ti": SimpleNamespace(try_number=2)}).is_done is False  # the queue again, not a listing
    assert lake.ledger.listed_at(job.name) == relisted


def test_notifications_need_an_s3_source_and_no_window(make_job):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs an s3:// source"):
        make_job("gs://gcs-bucket/in/", notifications={"sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"})
    with pytest.raises(ValidationError, match="window_prefix"):
        make_job("s3://s3-bucket/in/", window_prefix="dt={date}/",
                 notifications={"sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"})
    with pytest.raises(ValidationError, match="queue URL"):
        make_job("s3://s3-bucket/in/", notifications={"sqs_queue_url": "events"})


def test_a_key_that_cannot_be_read_now_does_not_stop_the_others(notified, lake, s3_client, s3_bucket, make_job,
                                                                 monkeypatch):
    """One notified key whose HEAD fails transiently: the other key's file is handed, and the failing key's
    message stays in the queue (it comes back), instead of the whole step failing."""
    from obslake.exceptions import StorageUnavailableError

    url, sqs = notified
    queue = SqsQueue(url, sqs)
    store = S3Store(s3_bucket, s3_client)
    job = _job(make_job, s3_bucket, url)
    discover(job, store, "in/", lake.ledger, queue)  # the first listing (empty)
    for k in ("in/ok.csv", "in/flaky.csv"):
        s3_client.put_object(Bucket=s3_bucket, Key=k, Body=b"x")
    messages = []
    while len(messages) < 2:
        messages += SqsQueue(url, sqs).receive(wait_seconds=2)
    for m in messages:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m.receipt, VisibilityTimeout=0)
    real_head = S3Store.head

    def head(self, key):
        if key == "in/flaky.csv":
            raise StorageUnavailableError(f"s3://{s3_bucket}/{key}: S3 answered 503; retry later")
        return real_head(self, key)

    monkeypatch.setattr(S3Store, "head", head)
    step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=2)
    assert [f.key for f in step.files] == ["in/ok.csv"] and len(step.receipts) == 1
    queue.delete(step.receipts)
    assert _in_queue(sqs, url) == 1  # the flaky key's message, kept


# -- GCS notifications through Pub/Sub (Google's Pub/Sub emulator on loopback) ------------------------------------
PUBSUB_EMULATOR = os.environ.get(
    "OBSLAKE_PUBSUB_EMULATOR", "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


@pytest.fixture(scope="module")
def pubsub_emulator() -> Iterator[str]:
    """Google's Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator) on 127.0.0.1: host:port."""
    if not os.path.exists(PUBSUB_EMULATOR):
        if os.environ.get("CI"):
            pytest.fail(f"the Pub/Sub emulator is not installed ({PUBSUB_EMULATOR}; ./run test installs it)")
        pytest.skip("the Pub/Sub emulator is not installed (./run test installs it with apt-get as root)")
    from lake_fixtures import free_port

    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([PUBSUB_EMULATOR, "--host=127.0.0.1", f"--port={port}"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the Pub/Sub emulator did not start"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def gcs_notified(monkeypatch, pubsub_emulator, gcs_server, gcs_bucket):
    """A topic and pull subscription on the emulator for the bucket's notifications, and a publisher that sends
    what GCS sends for an object (the storage emulator does not publish notifications itself)."""
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path("obslake-test", f"gcs-{gcs_bucket}")
    sub = subscriber.subscription_path("obslake-test", f"gcs-{gcs_bucket}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)

    def notify(key: str, event: str = "OBJECT_FINALIZE", bucket: str | None = None, **attrs: str) -> None:
        payload = json.dumps({"kind": "storage#object", "bucket": bucket or gcs_bucket, "name": key})
        publisher.publish(topic, payload.encode(), eventType=event, bucketId=bucket or gcs_bucket, objectId=key,
                          payloadFormat="JSON_API_V1", **attrs).result(timeout=30)

    return sub, subscriber, notify


def test_parse_gcs_notification_reads_writes_and_removals_only():
    from obslake.storage.notifications import parse_gcs_notification

    assert parse_gcs_notification({"eventType": "OBJECT_FINALIZE", "bucketId": "b", "objectId": "in/a b.csv"}) == [
        Notice("b", "in/a b.csv")]  # object names are not URL-encoded in GCS notifications
    for event in ("OBJECT_DELETE", "OBJECT_ARCHIVE"):
        assert parse_gcs_notification({"eventType": event, "bucketId": "b", "objectId": "k"}) == [
            Notice("b", "k", removed=True)]
    for attrs in ({"eventType": "OBJECT_METADATA_UPDATE", "bucketId": "b", "objectId": "k"}, {}, None,
                  {"eventType": "OBJECT_FINALIZE", "bucketId": "b"}, {"eventType": "OBJECT_FINALIZE", "objectId": ""}):
        assert parse_gcs_notification(attrs) == []


def test_gcs_pubsub_each_version_once_and_a_lost_notification_made_good(gcs_notified, lake, gcs_client, gcs_bucket,
                                                                        make_job):
    from obslake.storage.gcs import GCSStore
    from obslake.storage.notifications import PubsubSubscription

    sub, subscriber, notify = gcs_notified
    job = make_job(f"gs://{gcs_bucket}/in/", notifications={"pubsub_subscription": sub, "full_listing_interval": 600,
                                                              "wait_seconds": 2})
    queue, store = PubsubSubscription(sub, subscriber), GCSStore(gcs_bucket, gcs_client)
    blob = lambda key, body: gcs_client.bucket(gcs_bucket).blob(key).upload_from_string(body)  # noqa: E731
    blob("in/old.csv", b"old")
    t0 = dt.datetime.now(dt.UTC)
    first = discover(job, store, "in/", lake.ledger, queue, now=t0)
    assert first.listed and [f.key for f in first.files] == ["in/old.csv"]
    _done(lake, job, first.files)

    blob("in/new.csv", b"v1")
    notify("in/new.csv")
    found = discover(job, store, "in/", lake.ledger, queue, wait_seconds=5, now=t0)
    assert not found.listed and [f.key for f in found.files] == ["in/new.csv"] and len(found.receipts) == 1
    queue.delete(found.receipts)
    _done(lake, job, found.files)

    # delivered again, another bucket's, a key outside the prefix, a metadata update, a deletion: nothing new,
    # every message acknowledged at once
    notify("in/new.csv")
    notify("in/new.csv", bucket="someone-else")
    notify("out/x.csv")
    notify("in/new.csv", event="OBJECT_METADATA_UPDATE")
    notify("in/old.csv", event="OBJECT_DELETE")
    for _ in range(3):
        assert discover(job, store, "in/", lake.ledger, queue, wait_seconds=1, now=t0).files == []
    assert queue.receive(wait_seconds=1) == []  # nothing left unacknowledged

    # a rewrite is a new version, handed once
    blob("in/new.csv", b"v2 longer")
    notify("in/new.csv")
    notify("in/new.csv")
    handed = []
    for _ in range(3):
        step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=1, now=t0)
        handed += step.files
        queue.delete(step.receipts)
        _done(lake, job, step.files)
    assert [(f.key, f.size) for f in handed] == [("in/new.csv", 9)]

    # a lost notification: the next full listing finds the file
    blob("in/lost.parquet", b"x")
    step = discover(job, store, "in/", lake.ledger, queue, wait_seconds=1, now=t0 + dt.timedelta(seconds=599))
    assert not step.listed and step.files == []
    step = discover(job, store, "in/", lake.ledger, queue, now=t0 + dt.timedelta(seconds=600))
    assert step.listed and [f.key for f in step.files] == ["in/lost.parquet"]


def test_notifications_config_names_one_channel_that_fits_the_source(make_job):
    from obslake.exceptions import ConfigError

    sub = "projects/p-1/subscriptions/gcs-events"
    assert make_job("gs://bkt/in/", notifications={"pubsub_subscription": sub}).notifications.channel == sub
    for source, notifications in (("s3://bkt/in/", {"pubsub_subscription": sub}),
                                  ("gs://bkt/in/", {"sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"}),
                                  ("gs://bkt/in/", {}),
                                  ("gs://bkt/in/", {"pubsub_subscription": sub,
                                                  "sqs_queue_url": "https://sqs.us-east-1.amazonaws.com/1/q"}),
                                  ("gs://bkt/in/", {"pubsub_subscription": "gcs-events"}),
                                  ("gs://bkt/in/", {"pubsub_subscription": "projects/p/topics/t"})):
        with pytest.raises((ConfigError, ValueError)):
            make_job(source, notifications=notifications)


def test_the_trigger_fires_on_a_gcs_notification_and_the_sensor_acknowledges_it(
        monkeypatch, gcs_notified, lake, gcs_server, gcs_client, gcs_bucket, make_job):
    """Through the Airflow wrappers a deployment uses: the GCS connection (emulator endpoint), the bucket's label,
    the subscription built by the hook (PUBSUB_EMULATOR_HOST), the trigger's pull and the sensor's acknowledgement."""
    from obslake.sensors.prefix import S3KeyPrefixSensor
    from obslake.storage.notifications import PubsubSubscription

    sub, subscriber, notify = gcs_notified
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"api_endpoint": gcs_server}}))
    key = "k-" + os.urandom(6).hex()
    bucket = gcs_client.bucket(gcs_bucket)
    bucket.labels = {"arize-ingestion-key": key}
    bucket.patch()
    monkeypatch.setenv("AIRFLOW_VAR_OBSLAKE_TEST_KEY", key)
    job = make_job(f"gs://{gcs_bucket}/in/", notifications={"pubsub_subscription": sub, "wait_seconds": 2})

    def upload() -> None:
        bucket.blob("in/sub/now.csv").upload_from_string(b"x")
        notify("in/sub/now.csv")

    event = _fired_after(job, lake, upload)
    assert [f["key"] for f in event["files"]] == ["in/sub/now.csv"] and len(event["receipts"]) == 1
    sensor = S3KeyPrefixSensor(task_id="wait", job=job_to_dict(job), deferrable=True)
    assert sensor.execute_complete({}, event) == event["files"]
    # acknowledged: releasing its lease now (a deadline of 0 makes an unacknowledged message due at once) brings
    # nothing back
    with contextlib.suppress(Exception):
        subscriber.modify_ack_deadline(request={"subscription": sub, "ack_ids": event["receipts"],
                                                "ack_deadline_seconds": 0})
    assert PubsubSubscription(sub, subscriber).receive(wait_seconds=2) == []


def test_a_received_gcs_notification_that_is_not_acknowledged_comes_back(gcs_notified, gcs_bucket):
    """The other side of the acknowledgement check above: a released, unacknowledged message is delivered again."""
    from obslake.storage.notifications import PubsubSubscription

    sub, subscriber, notify = gcs_notified
    notify("in/a.csv")
    queue = PubsubSubscription(sub, subscriber)
    first = queue.receive(wait_seconds=5)
    assert [n.key for m in first for n in m.notices] == ["in/a.csv"]
    assert queue.receive(wait_seconds=1) == []  # leased to the first reader (its deadline extended)
    subscriber.modify_ack_deadline(request={"subscription": sub, "ack_ids": [m.receipt for m in first],
                                            "ack_deadline_seconds": 0})
    again = queue.receive(wait_seconds=5)
    assert [n.key for m in again for n in m.notices] == ["in/a.csv"]
    queue.delete([m.receipt for m in again])
    assert queue.receive(wait_seconds=1) == []
