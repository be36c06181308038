"""Permission probe: prove the worker can write, list, read and delete under a connector's prefix."""

from __future__ import annotations

import logging
import uuid

from obslake.exceptions import StorageAccessError, TerminalError
from obslake.storage.base import ObjectStore

log = logging.getLogger(__name__)

PERMISSIONS = {
    "s3": {"write": "s3:PutObject", "list": "s3:ListBucket", "read": "s3:GetObject", "delete": "s3:DeleteObject"},
    "gs": {
        "write": "storage.objects.create",
        "list": "storage.objects.list",
        "read": "storage.objects.get",
        "delete": "storage.objects.delete",
    },
    "file": {"write": "write", "list": "read (directory)", "read": "read", "delete": "write (directory)"},
}


def probe_storage(store: ObjectStore, prefix: str) -> str:
    """Write, list, read and delete a marker object under ``prefix``; return the marker's URI.

    Raises:
        StorageAccessError: naming the step that failed and the permission to grant (terminal).
    """
    key = f"{prefix.strip('/')}/_obslake_probe/{uuid.uuid4().hex}.txt".lstrip("/")
    body = b"obslake permission probe; safe to delete\n"
    perms = PERMISSIONS[store.scheme]
    uri = store.uri(key)

    def step(name: str, fn):
        try:
            return fn()
        except TerminalError as exc:  # refused: a missing permission (a transient error propagates and retries)
            raise StorageAccessError(
                f"permission probe: cannot {name} {uri}: grant {perms[name]} on {store.uri(prefix.strip('/') + '/')} "
                f"to the Airflow worker's identity ({exc})",
                code="PERMISSION_MISSING",
            ) from exc

    step("write", lambda: store.write(key, body))
    listed = step("list", lambda: [o.key for o in store.list(key.rsplit("/", 1)[0] + "/")])
    if key not in listed:
        raise StorageAccessError(
            f"permission probe: {uri} was written but is not listed; check {perms['list']} "
            "and the bucket's consistency settings",
            code="PERMISSION_MISSING",
        )

    def read():
        with store.open(key) as f:
            return f.read()

    if step("read", read) != body:
        raise StorageAccessError(f"permission probe: {uri} read back different bytes", code="PERMISSION_MISSING")
    step("delete", lambda: store.delete(key))
    log.info("permission probe passed on %s (write, list, read, delete)", store.uri(prefix))
    return uri
