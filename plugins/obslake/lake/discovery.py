"""Which files under a job's prefix are new: listed, of a supported format, not yet done in the ledger."""

from __future__ import annotations

import logging
import time

from obslake.config import ImportJob
from obslake.formats import format_for_key
from obslake.lake.ledger import Ledger
from obslake.storage.base import ObjectInfo, ObjectStore

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
