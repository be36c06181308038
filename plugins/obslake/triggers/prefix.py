"""Deferrable wait for new files under a prefix; runs in the triggerer's event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

# Imported once when the triggerer loads this class (as provider triggers do), never inside a poll:
# the first poll then does no module loading in its worker thread.
import boto3  # noqa: F401
import google.cloud.storage  # noqa: F401
from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401
from airflow.triggers.base import BaseTrigger, TriggerEvent

import obslake.hooks
import obslake.lake.discovery
import obslake.storage.gcs
import obslake.storage.s3  # noqa: F401

STORE_TTL_SECONDS = 900.0
_clients: dict[tuple, tuple[float, Any]] = {}
_clients_lock = threading.Lock()


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key`` per triggerer process, rebuilt every ``STORE_TTL_SECONDS`` (15 minutes).

    Building a boto3/GCS client parses large JSON models while holding the GIL (0.2-0.3 s here),
    which would stall every trigger sharing the event loop on every poll.
    """
    now = time.monotonic()
    with _clients_lock:
        hit = _clients.get(key)
        if hit is not None and now - hit[0] < STORE_TTL_SECONDS:
            return hit[1]
        value = build()
        _clients[key] = (now, value)
        return value


def _cached_store(source: str, conn_id: str | None):
    """(store, prefix) of a source and connection, one per triggerer process (see :func:`_cached`)."""
    from obslake.hooks import store_for

    return _cached(("store", source, conn_id), lambda: store_for(source, conn_id))


def _cached_queue(job):
    """The SQS queue or Pub/Sub subscription of an event-driven job (None for one that lists), one per triggerer process."""
    from obslake.hooks.obslake import notification_queue

    if job.notifications is None:
        return None
    return _cached(("queue", job.notifications.channel), lambda: notification_queue(job))


def _poll(job_dict: dict, window: str = "") -> tuple[list[dict], int, list[str]]:
    """One discovery step (a listing, or a receive from the job's queue): (files, new in all, receipts)."""
    from obslake.airflow_support import job_from_dict
    from obslake.hooks.obslake import lake_settings, verify_ownership
    from obslake.lake.discovery import discover
    from obslake.lake.ledger import Ledger

    job = job_from_dict(job_dict)
    store, prefix = _cached_store(job.source, job.conn_id)
    verify_ownership(store, job.ingestion_key_variable, job.tag_name)  # before the bucket is listed
    queue = _cached_queue(job)
    found = discover(job, store, prefix + window, Ledger(lake_settings()[0].state_uri), queue,
                     wait_seconds=job.notifications.wait_seconds if job.notifications else 0)  # fmt: skip
    return [o.to_dict() for o in found.files], found.total_new, found.receipts


class NewFilesTrigger(BaseTrigger):
    """Poll a job's prefix every ``poll_interval`` seconds until new file versions appear; an event-driven job
    (``notifications``) waits on its SQS queue or Pub/Sub subscription instead, and lists in full every ``full_listing_interval``.

    The listing and ledger lookup are blocking I/O, so each poll runs in a worker thread
    (``asyncio.to_thread``): the triggerer's event loop is never blocked.

    Args:
        job: the import job as a dict (:func:`obslake.airflow_support.job_to_dict`).
        poll_interval: seconds between polls.
        window: a windowed job's folder below its source that this run lists (``""``: the whole source).
    """

    def __init__(self, job: dict, poll_interval: float = 10.0, window: str = ""):
        super().__init__()
        self.job = job
        self.poll_interval = poll_interval
        self.window = window

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Import path and kwargs, as Airflow stores them."""
        kwargs: dict[str, Any] = {"job": self.job, "poll_interval": self.poll_interval}
        if self.window:  # (the form of triggers deferred before windows existed stays the same)
            kwargs["window"] = self.window
        return ("obslake.triggers.prefix.NewFilesTrigger", kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event: ``success`` with the files, or ``error`` with a message."""
        while True:
            try:
                files, total, receipts = await asyncio.to_thread(_poll, self.job, self.window)
            except Exception as exc:  # noqa: BLE001 - reported to the task, which fails or retries
                from obslake.exceptions import printable

                yield TriggerEvent(
                    {
                        "status": "error",
                        "message": f"{type(exc).__name__}: {printable(exc, 2000)}",
                        "terminal": _is_terminal(exc),
                    }
                )
                return
            if files:
                event: dict[str, Any] = {"status": "success", "files": files, "total_new": total}
                if receipts:  # deleted by the sensor once the files are its result
                    event["receipts"] = receipts
                yield TriggerEvent(event)
                return
            notified = self.job.get("notifications")
            # an event-driven job waits in its long poll (wait_seconds) instead: a notification ends the wait at once
            await asyncio.sleep(0.05 if notified and notified.get("wait_seconds") else self.poll_interval)


def _is_terminal(exc: Exception) -> bool:
    """A fault a retry cannot fix: a terminal obslake error, or a job that does not validate."""
    from pydantic import ValidationError

    from obslake.exceptions import TerminalError

    return isinstance(exc, TerminalError | ValidationError)
