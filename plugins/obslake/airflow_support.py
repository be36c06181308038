"""Small pieces the Airflow wrappers share: job (de)serialisation and error mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from obslake.config import ImportJob
from obslake.exceptions import TerminalError


def job_to_dict(job: ImportJob) -> dict:
    """JSON-able form of a job, to pass to operators and triggers."""
    return job.model_dump(mode="json", by_alias=True)


def job_from_dict(data: dict | ImportJob) -> ImportJob:
    """Inverse of :func:`job_to_dict` (accepts a job too)."""
    return data if isinstance(data, ImportJob) else ImportJob.model_validate(data)


@contextlib.contextmanager
def airflow_errors() -> Iterator[None]:
    """Map terminal errors to ``AirflowFailException`` (no retry); transient ones stay retryable."""
    try:
        yield
    except TerminalError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc
