"""IcebergSyncOperator: commit data into the Iceberg lake, exactly once.

Two small operators over one base, each with its own arguments: :class:`IcebergImportOperator` imports
one file version into its model table (import DAGs), :class:`IcebergExportOperator` syncs one project
of a Data Fabric connector into the customer's bucket (fabric DAGs). Both show as ``IcebergSyncOperator``
in the Airflow UI, the design card's name, and are ``IcebergSyncOperator`` instances.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import (
    airflow_errors,
    emit_asset_event,
    export_asset_uri,
    fabric_alias,
    import_alias,
    job_from_dict,
    job_to_dict,
    table_asset_uri,
)
from obslake.hooks import ObslakeHook


class IcebergSyncOperator(BaseOperator):
    """Base of the operators that commit into Iceberg: the hook, the UI name, the error mapping.

    Terminal errors (bad input, refused configuration) fail the task without retries
    (``AirflowFailException``); transient ones (storage, catalog, commit conflicts) retry as usual.
    """

    custom_operator_name = "IcebergSyncOperator"
    ui_color = "#e8eefd"
    conn_id: str | None = None

    @cached_property
    def hook(self) -> ObslakeHook:
        """The lake and the bucket of this task."""
        return ObslakeHook(self.conn_id)


class IcebergImportOperator(IcebergSyncOperator):
    """Import a batch of file versions into their model table (map it over the validated batches).

    ``.partial(job=…).expand(files=validate.output)``: the small files of a batch are committed in one
    Iceberg transaction, a large file alone and streamed (:func:`~obslake.lake.importer.import_files`);
    conflicts retry inside the task.

    Args:
        job: the import job (or its dict form).
        files: a list of ``ObjectInfo`` dicts (one batch planned by the validate step).
        file: one ``ObjectInfo`` dict (the form of DAG runs from before batching).
    """

    template_fields = ("files", "file")

    def __init__(self, *, job: Any, files: Any = None, file: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        job_obj = job_from_dict(job)
        self.job = job_to_dict(job_obj)
        self.conn_id = job_obj.conn_id
        self.files = files
        self.file = file

    def execute(self, context: Any) -> list[dict]:
        """Import the files; the good ones are committed, then a failed file fails the task (no retry),
        a transient error retries it (the imported files are skipped by the ledger)."""
        from airflow.sdk.exceptions import AirflowFailException

        from obslake.exceptions import printable
        from obslake.lake.importer import import_files
        from obslake.storage.base import ObjectInfo

        job = job_from_dict(self.job)
        items = list(self.files or []) + ([self.file] if self.file else [])
        with airflow_errors():
            store, _ = self.hook.store(job.source)
            results = import_files(
                job,
                store,
                [ObjectInfo.from_dict(f) for f in items],
                catalog=self.hook.catalog,
                ledger=self.hook.ledger,
            )
        counts = {s: sum(r.status == s for r in results) for s in ("imported", "already-imported", "failed")}
        self.log.info(
            "%d file(s): %d imported (%d rows), %d imported before, %d failed",
            len(items),
            counts["imported"],
            sum(r.rows for r in results if r.status == "imported"),
            counts["already-imported"],
            counts["failed"],
        )
        landed = [r for r in results if r.status == "imported"]
        if landed and any(getattr(o, "name", None) == import_alias(job.name) for o in self.outlets or []):
            # the table's asset event (only when rows landed): downstream DAGs scheduled on it run next
            emit_asset_event(
                context,
                import_alias(job.name),
                table_asset_uri(job.table_identifier),
                {
                    "job": job.name,
                    "files": [r.uri for r in landed],
                    "rows": sum(r.rows for r in landed),
                    "snapshot_id": landed[-1].snapshot_id,
                },
            )
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise AirflowFailException(
                f"{len(failed)} of {len(items)} file(s) failed (the others were imported):\n"
                + "\n".join(f"{printable(r.uri)}: [{r.code}] {printable(r.error, 2000)}" for r in failed[:20])
            )
        return [r.to_dict() for r in results]


class IcebergExportOperator(IcebergSyncOperator):
    """Sync one project of a Data Fabric connector into the customer's bucket (map it over the projects).

    A regular run exports the changes since the cursor stored in the table; a backfill run (``airflow
    backfill create``) re-exports the changes of its data interval, idempotently, without moving the cursor.

    Args:
        connector: the connector (or its dict form).
        project: the project to sync.
    """

    template_fields = ("project",)

    def __init__(self, *, connector: Any, project: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        from obslake.config import Connector

        conn = connector if isinstance(connector, Connector) else Connector.model_validate(connector)
        self.connector = conn.model_dump(mode="json")
        self.conn_id = conn.conn_id
        self.project = project

    def execute(self, context: Any) -> dict:
        """Export the project's changes in one commit."""
        from obslake.config import Connector
        from obslake.fabric.export import ProjectExporter
        from obslake.fabric.sources import make_source
        from obslake.hooks import connection_uri

        conn = Connector.model_validate(self.connector)
        if conn.status.value != "active":
            from airflow.sdk.exceptions import AirflowSkipException

            # is_paused_upon_creation only applies once; a connector paused later in YAML stops here too
            raise AirflowSkipException(f"connector {conn.name} has status {conn.status.value}: nothing is synced")
        if not self.project:
            raise ValueError(f"{self.task_id}: no project to sync (map the task over the connector's projects)")
        window = None
        dag_run = context.get("dag_run")
        if dag_run is not None and str(getattr(dag_run, "run_type", "")).lower().endswith("backfill"):
            window = (context["data_interval_start"], context["data_interval_end"])
            self.log.info("backfill run: re-exporting the changes of %s .. %s", *window)
        with airflow_errors():
            catalog = self.hook.export_catalog(conn.storage)
            result = ProjectExporter(conn, self.project, catalog).sync(
                make_source(conn.source, catalog, connection_uri), window=window, sync_id=context.get("run_id")
            )
        out = result.to_dict()
        if result.mode != "unchanged" and any(
            getattr(o, "name", None) == fabric_alias(conn.name) for o in self.outlets or []
        ):
            # the project table's asset event, when the export advanced
            extra = {k: out.get(k) for k in ("project", "rows", "annotation_rows", "snapshot_id", "watermark", "mode")}
            emit_asset_event(context, fabric_alias(conn.name), export_asset_uri(result.location), extra)
        return out
