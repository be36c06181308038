"""Bucket event notifications (S3 -> SQS, GCS -> Pub/Sub): which object keys changed, as hints for discovery.

A notification is only a hint: it names a bucket and key (and the etag of the version that was written),
but notifications can be duplicated, arrive out of order, or be lost. Discovery therefore reads the
object's *current* version with a HEAD request and checks it against the ledger (see
:func:`obslake.lake.discovery.find_notified_files`), and a periodic full listing stays the safety net.

Accepted message bodies: S3's own event notification (``{"Records": [{"eventSource": "aws:s3", ...}]}``),
the same wrapped by SNS (``{"Type": "Notification", "Message": "<json>"}``), and EventBridge's "Object
Created" events (``{"detail-type": "Object Created", "detail": {"bucket": ..., "object": ...}}``). S3's
``s3:TestEvent`` and unrelated messages carry no object and are acknowledged without effect. From Pub/Sub:
GCS's notifications (``gcloud storage buckets notifications create``), read from their attributes
(``eventType``, ``bucketId``, ``objectId``; any payload format): ``OBJECT_FINALIZE`` is a write,
``OBJECT_DELETE``/``OBJECT_ARCHIVE`` a removal; a metadata update and other messages carry nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import urllib.parse
from typing import Any

from obslake.exceptions import printable

log = logging.getLogger(__name__)

RECEIVE_VISIBILITY_SECONDS = 300
"""How long a received message stays hidden from other readers: enough for its files to be handed to a run
(the message is deleted then); a reader that died lets it reappear, and the ledger drops the duplicate."""


@dataclasses.dataclass(frozen=True)
class Notice:
    """One object event: a key of a bucket was written (``removed``: deleted)."""

    bucket: str
    key: str
    etag: str | None = None
    removed: bool = False


@dataclasses.dataclass(frozen=True)
class Message:
    """One queue message: its receipt (to delete it once handled) and the notices it holds."""

    receipt: str
    notices: tuple[Notice, ...]


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a message of another shape is not an error)."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _etag(value: Any) -> str | None:
    return (_text(value) or "").strip('"') or None


def _s3_records(body: dict[str, Any]) -> list[Notice]:
    records = body.get("Records")
    out = []
    for record in records if isinstance(records, list) else []:
        record = _obj(record)
        if record.get("eventSource") != "aws:s3":
            continue
        s3 = _obj(record.get("s3"))
        bucket, obj = _text(_obj(s3.get("bucket")).get("name")), _obj(s3.get("object"))
        key = _text(obj.get("key"))
        if bucket is None or key is None:
            continue
        out.append(
            Notice(
                bucket=bucket,
                key=urllib.parse.unquote_plus(key),  # S3 URL-encodes keys in event notifications
                etag=_etag(obj.get("eTag")),
                removed=str(record.get("eventName", "")).startswith("ObjectRemoved"),
            )
        )
    return out


def parse_message(text: str) -> list[Notice]:
    """The object notices in one message body (empty for a test event, another kind of message, or junk)."""
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        log.warning("ignoring a queue message that is not JSON: %s", printable(text, 200))
        return []
    if not isinstance(body, dict):
        return []
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):  # through SNS
        return parse_message(body["Message"])
    if "Records" in body:
        return _s3_records(body)
    detail = _obj(body.get("detail"))
    if body.get("source") == "aws.s3":  # EventBridge
        bucket, obj = _text(_obj(detail.get("bucket")).get("name")), _obj(detail.get("object"))
        key = _text(obj.get("key"))
        if bucket is not None and key is not None:
            removed = body.get("detail-type") == "Object Deleted"
            return [Notice(bucket=bucket, key=key, etag=_etag(obj.get("etag")), removed=removed)]
    return []


class SqsQueue:
    """An SQS queue read with long polling, through an injected boto3 SQS client.

    Args:
        url: the queue URL.
        client: a boto3 ``sqs`` client (the Airflow wrappers build it from the job's AWS connection).
    """

    def __init__(self, url: str, client: Any):
        self.url, self.client = url, client

    def receive(self, wait_seconds: float = 0, max_messages: int = 10) -> list[Message]:
        """Up to ``max_messages`` messages, waiting up to ``wait_seconds`` (0-20) for the first one."""
        resp = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=int(max(0, min(20, wait_seconds))),
            VisibilityTimeout=RECEIVE_VISIBILITY_SECONDS,
        )
        return [
            Message(receipt=m["ReceiptHandle"], notices=tuple(parse_message(m.get("Body", ""))))
            for m in resp.get("Messages") or []
        ]

    def delete(self, receipts: list[str]) -> None:
        """Delete handled messages (ten per request). One that cannot be deleted (an expired receipt, the queue
        unreachable) is logged, not raised: its message comes back once more, and discovery finds its file done."""
        for start in range(0, len(receipts), 10):
            chunk = receipts[start : start + 10]
            try:
                resp = self.client.delete_message_batch(
                    QueueUrl=self.url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
                )
            except Exception as exc:  # noqa: BLE001 - an acknowledgement: the messages come back, harmlessly
                log.warning("%d queue message(s) not deleted (%s): they will be seen again", len(chunk),
                            printable(exc, 300))  # fmt: skip
                continue
            for failed in resp.get("Failed") or []:
                log.info("queue message not deleted (%s): it will be seen again", failed.get("Code"))


GCS_WRITTEN = "OBJECT_FINALIZE"
GCS_REMOVED = ("OBJECT_DELETE", "OBJECT_ARCHIVE")


def parse_gcs_notification(attributes: Any) -> list[Notice]:
    """The object notice in one Pub/Sub message of a GCS bucket notification (empty for any other message)."""
    attrs = dict(attributes or {})  # a dict, or the protobuf map of a received message
    event, bucket, key = attrs.get("eventType"), _text(attrs.get("bucketId")), _text(attrs.get("objectId"))
    if bucket is None or key is None or (event != GCS_WRITTEN and event not in GCS_REMOVED):
        return []
    return [Notice(bucket=bucket, key=key, removed=event in GCS_REMOVED)]


class PubsubSubscription:
    """A Pub/Sub pull subscription read like :class:`SqsQueue`, through an injected ``SubscriberClient``.

    A pull waits up to ``wait_seconds`` for messages; what it received is hidden from other readers for
    :data:`RECEIVE_VISIBILITY_SECONDS` (its ack deadline is extended to that) and acknowledged by :meth:`delete`.

    Args:
        name: ``projects/<project>/subscriptions/<name>``.
        client: a ``google.cloud.pubsub_v1.SubscriberClient`` (the Airflow wrappers build it from the job's
            GCP connection; with ``PUBSUB_EMULATOR_HOST`` set, the emulator's).
    """

    def __init__(self, name: str, client: Any):
        self.name, self.client = name, client

    def receive(self, wait_seconds: float = 0, max_messages: int = 10) -> list[Message]:
        """Up to ``max_messages`` messages, waiting up to ``wait_seconds`` for the first one."""
        from google.api_core import exceptions as gexc

        try:
            resp = self.client.pull(
                request={"subscription": self.name, "max_messages": max(1, min(1000, max_messages))},
                timeout=max(1.0, float(wait_seconds)),
            )
        except gexc.DeadlineExceeded:
            return []
        received = list(resp.received_messages)
        if not received:
            return []
        try:
            self.client.modify_ack_deadline(
                request={
                    "subscription": self.name,
                    "ack_ids": [m.ack_id for m in received],
                    "ack_deadline_seconds": RECEIVE_VISIBILITY_SECONDS,
                }
            )
        except Exception as exc:  # noqa: BLE001 - the subscription's own deadline applies: a redelivery at worst
            log.info("ack deadline not extended (%s): messages may be delivered again", printable(exc, 300))
        return [
            Message(receipt=m.ack_id, notices=tuple(parse_gcs_notification(m.message.attributes))) for m in received
        ]

    def delete(self, receipts: list[str]) -> None:
        """Acknowledge handled messages. A failure is logged, not raised: the message is delivered again, and
        discovery finds its file done."""
        for start in range(0, len(receipts), 1000):
            chunk = receipts[start : start + 1000]
            try:
                self.client.acknowledge(request={"subscription": self.name, "ack_ids": chunk})
            except Exception as exc:  # noqa: BLE001 - an acknowledgement: the messages come back, harmlessly
                log.warning("%d Pub/Sub message(s) not acknowledged (%s): they will be seen again", len(chunk),
                            printable(exc, 300))  # fmt: skip


NotificationQueue = SqsQueue | PubsubSubscription
"""Where an event-driven job reads its bucket's notifications."""
