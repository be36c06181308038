"""Which files under a job's prefix are new: listed, of a supported format, not yet done in the ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable

from obslake.config import ImportJob
from obslake.exceptions import StorageAccessError, TransientError
from obslake.formats import format_for_key
from obslake.lake.ledger import Ledger
from obslake.storage.base import ObjectInfo, ObjectStore
from obslake.storage.notifications import Notice, NotificationQueue

log = logging.getLogger(__name__)


def find_new_files(job: ImportJob, store: ObjectStore, prefix: str, ledger: Ledger) -> tuple[list[ObjectInfo], int]:
    """List ``prefix`` recursively and return (new file versions, oldest first, capped; how many new in all).

    A version is new unless the ledger holds it as succeeded, or as failed under the current schema
    (a file that failed is validated again once the job's schema changes: "Fix Schema"); ``pending``
    versions (a run that died) are offered again. At most ``job.max_files_per_run`` are returned; the rest wait for the next run.
    """
    started = time.monotonic()
    done = ledger.done_versions(job.name, job.schema_.fingerprint())  # a failed file is retried after a schema fix
    listed = 0
    new: list[ObjectInfo] = []
    for obj in store.list(prefix):
        listed += 1
        if obj.size == 0 and obj.key.endswith("/"):
            continue  # a "folder" placeholder object
        if format_for_key(obj.key, job.formats) is None:
            continue
        if (obj.bucket, obj.key, obj.etag) not in done:
            new.append(obj)
    new.sort(key=lambda o: (o.mtime, o.key))
    log.info(
        "%s: listed %d object(s) under %s in %.2fs; %d new version(s)%s",
        job.name,
        listed,
        store.uri(prefix),
        time.monotonic() - started,
        len(new),
        f", taking the oldest {job.max_files_per_run} this run" if len(new) > job.max_files_per_run else "",
    )
    return new[: job.max_files_per_run], len(new)


def find_notified_files(
    job: ImportJob,
    store: ObjectStore,
    prefix: str,
    ledger: Ledger,
    notices: Iterable[Notice],
    unread: set[str] | None = None,
) -> list[ObjectInfo]:
    """The new file versions that event notifications point at: each notified key of the job's bucket, under
    ``prefix`` and of a supported format, read as it is *now* (HEAD: a notification may be duplicated, late, or
    of a version already overwritten; a key deleted since is skipped), then kept unless the ledger holds that
    version as done (as :func:`find_new_files` decides, per key: the cost does not grow with the history).
    Oldest first; not capped (:func:`discover` caps). A key whose HEAD fails transiently is added to ``unread``
    (its notification is kept, to be read again) and does not stop the others."""
    unread = set() if unread is None else unread
    bucket = getattr(store, "bucket", None)
    keys = sorted(
        {
            n.key
            for n in notices
            if not n.removed
            and (bucket is None or n.bucket == bucket)
            and n.key.startswith(prefix)
            and not n.key.endswith("/")
            and format_for_key(n.key, job.formats) is not None
        }
    )
    current = []
    for key in keys:
        try:
            current.append(store.head(key))
        except StorageAccessError as exc:  # deleted since (or unreadable: the full listing reports that)
            log.warning("%s: skipping a notified key: %s", job.name, exc)
        except TransientError as exc:  # one key's HEAD does not stop the others; its message comes back
            log.warning("%s: a notified key could not be read now (its notification is kept): %s", job.name, exc)
            unread.add(key)
    done = ledger.done_among(job.name, current, job.schema_.fingerprint())
    new = sorted((o for o in current if (o.bucket, o.key, o.etag) not in done), key=lambda o: (o.mtime, o.key))
    if keys:
        log.info("%s: %d notified key(s) under %s; %d new version(s)", job.name, len(keys), store.uri(prefix), len(new))
    return new


@dataclasses.dataclass
class Discovery:
    """What one discovery step found: the new versions (oldest first, capped), how many are new in all (a
    listing counts them; notifications count what they pointed at), the receipts of the queue messages to
    delete once the files are handed to a run, and whether the source was listed in full."""

    files: list[ObjectInfo]
    total_new: int
    receipts: list[str]
    listed: bool


def discover(
    job: ImportJob,
    store: ObjectStore,
    prefix: str,
    ledger: Ledger,
    queue: NotificationQueue | None = None,
    *,
    wait_seconds: float = 0,
    now: dt.datetime | None = None,
    full_listing: bool = False,
) -> Discovery:
    """One discovery step of a job. Without ``queue``: a listing of ``prefix`` (:func:`find_new_files`).

    With ``queue`` (a job with ``notifications``): a full listing when the last one began at least
    ``notifications.full_listing_interval`` seconds ago (or never; its start is recorded once it has
    succeeded), otherwise one receive from the queue (waiting up to ``wait_seconds``) and the notified keys
    (:func:`find_notified_files`). A message that points at nothing new is deleted at once; the receipts of
    the others are returned, to be deleted when their files are handed to a run (a message whose file did
    not fit under ``max_files_per_run`` stays, and comes back).

    ``full_listing``: list in full now whatever the interval (a retried task: files whose notifications an
    earlier try deleted, handed to a run that then failed, are found at once, not at the next listing)."""
    if queue is None or job.notifications is None:
        files, total = find_new_files(job, store, prefix, ledger)
        return Discovery(files, total, [], True)
    now = now or dt.datetime.now(dt.UTC)
    last = ledger.listed_at(job.name)
    if full_listing or last is None or (now - last).total_seconds() >= job.notifications.full_listing_interval:
        files, total = find_new_files(job, store, prefix, ledger)
        ledger.mark_listed(job.name, now)
        log.info("%s: full listing (every %gs, the safety net of the notifications)", job.name,
                 job.notifications.full_listing_interval)  # fmt: skip
        return Discovery(files, total, [], True)
    messages = queue.receive(wait_seconds=wait_seconds)
    if not messages:
        return Discovery([], 0, [], False)
    unread: set[str] = set()
    new = find_notified_files(job, store, prefix, ledger, [n for m in messages for n in m.notices], unread)
    files = new[: job.max_files_per_run]
    new_keys, handed = {o.key for o in new}, {o.key for o in files}
    ack_now, ack_later = [], []
    for m in messages:
        notified = {n.key for n in m.notices}
        keys = notified & new_keys
        if notified & unread:
            continue  # a key could not be read now: the message comes back after its visibility timeout
        if not keys:
            ack_now.append(m.receipt)  # nothing new behind it (a test event, a done or deleted file, a duplicate)
        elif keys <= handed:
            ack_later.append(m.receipt)
        # else: a new file beyond the cap: neither handed nor deleted, the message comes back after its
        # visibility timeout (and the full listing finds the file in any case)
    if ack_now:
        queue.delete(ack_now)
    return Discovery(files, len(new), ack_later, False)
