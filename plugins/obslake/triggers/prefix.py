"""Deferrable wait for new files under a prefix; runs in the triggerer's event loop."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


def _poll(job_dict: dict) -> tuple[list[dict], int]:
    from obslake.airflow_support import job_from_dict
    from obslake.connections import store_for
    from obslake.lake.catalog import LakeSettings
    from obslake.lake.discovery import find_new_files
    from obslake.lake.ledger import Ledger

    job = job_from_dict(job_dict)
    store, prefix = store_for(job.source, job.conn_id)
    new, total = find_new_files(job, store, prefix, Ledger(LakeSettings.from_env().state_uri))
    return [o.to_dict() for o in new], total


class NewFilesTrigger(BaseTrigger):
    """Poll a job's prefix every ``poll_interval`` seconds until new file versions appear.

    The listing and ledger lookup are blocking I/O, so each poll runs in a worker thread
    (``asyncio.to_thread``): the triggerer's event loop is never blocked.

    Args:
        job: the import job as a dict (:func:`obslake.airflow_support.job_to_dict`).
        poll_interval: seconds between polls.
    """

    def __init__(self, job: dict, poll_interval: float = 10.0):
        super().__init__()
        self.job = job
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Import path and kwargs, as Airflow stores them."""
        return ("obslake.triggers.prefix.NewFilesTrigger", {"job": self.job, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event: ``success`` with the files, or ``error`` with a message."""
        while True:
            try:
                files, total = await asyncio.to_thread(_poll, self.job)
            except Exception as exc:  # reported to the task, which fails or retries
                yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}",
                                    "terminal": _is_terminal(exc)})
                return
            if files:
                yield TriggerEvent({"status": "success", "files": files, "total_new": total})
                return
            await asyncio.sleep(self.poll_interval)


def _is_terminal(exc: Exception) -> bool:
    from obslake.exceptions import TerminalError

    return isinstance(exc, TerminalError)
