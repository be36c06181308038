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


# -- Assets: every model table and every Data Fabric project table -------------------------------------
def table_asset_uri(identifier: tuple[str, str] | list[str]) -> str:
    """The Asset URI of a lake table (``iceberg://lake/<namespace>/<table>``): stable for the table's life,
    whatever the catalog's backend or warehouse."""
    ns, table = identifier
    return f"iceberg://lake/{ns}/{table}"


def export_asset_uri(location: str) -> str:
    """The Asset URI of a Data Fabric project table: its location in the customer's bucket."""
    return location.rstrip("/")


def import_alias(job_name: str) -> str:
    """The AssetAlias an import job's tasks emit their table's events through (only when rows landed)."""
    return f"obslake_import__{job_name}"


def fabric_alias(connector_name: str) -> str:
    """The AssetAlias a connector's sync tasks emit their project table's events through."""
    return f"obslake_fabric__{connector_name}"


def emit_asset_event(context: dict, alias: str, uri: str, extra: dict) -> None:
    """Add one asset event (``uri``, with ``extra``) through the task's outlet ``alias``."""
    from airflow.sdk import Asset, AssetAlias

    # named by its URI, so that a downstream DAG's ``schedule=[Asset("<uri>")]`` is this very asset
    context["outlet_events"][AssetAlias(alias)].add(Asset(uri), extra=extra)
