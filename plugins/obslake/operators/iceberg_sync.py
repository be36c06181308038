"""IcebergSyncOperator: commit data into the Iceberg lake (import mode: one file per mapped task)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import airflow_errors, job_from_dict, job_to_dict


class IcebergSyncOperator(BaseOperator):
    """Commit data into the Iceberg lake, exactly once.

    ``mode="import"``: import one file version into its model table (map it over the validated files:
    ``.partial(job=…).expand(file=validate.output)``); each commit is its own Iceberg transaction and
    conflicts retry inside the task.

    ``mode="fabric"``: sync one project of a Data Fabric connector into the customer's bucket
    (map it over the connector's projects). A regular run exports the changes since the cursor
    stored in the table; a backfill run (``airflow backfill create``) re-exports the changes of its
    data interval, idempotently, without moving the cursor.

    Args:
        job: the import job (or its dict form), ``mode="import"``.
        file: one ``ObjectInfo`` dict, ``mode="import"``.
        connector: the connector (or its dict form), ``mode="fabric"``.
        project: the project to sync, ``mode="fabric"``.
    """

    template_fields = ("file", "project")
    ui_color = "#e8eefd"

    def __init__(self, *, mode: str = "import", job: dict | None = None, file: Any = None,
                 connector: dict | None = None, project: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in ("import", "fabric"):
            raise ValueError(f"IcebergSyncOperator mode {mode!r}: use 'import' or 'fabric'")
        if mode == "import" and job is None:
            raise ValueError("mode='import' needs job=")
        if mode == "fabric" and connector is None:
            raise ValueError("mode='fabric' needs connector=")
        self.mode = mode
        self.job = job_to_dict(job_from_dict(job)) if job is not None else None
        self.connector = connector.model_dump(mode="json") if hasattr(connector, "model_dump") else connector
        self.file = file
        self.project = project

    def execute(self, context) -> dict:
        """Run the import or the sync; bad input fails without retries, transient errors retry."""
        return self._import() if self.mode == "import" else self._fabric(context)

    def _import(self) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from obslake.connections import store_for
        from obslake.lake.catalog import LakeSettings, load_catalog
        from obslake.lake.importer import import_file
        from obslake.lake.ledger import Ledger
        from obslake.storage.base import ObjectInfo

        job = job_from_dict(self.job)
        settings = LakeSettings.from_env()
        with airflow_errors():
            store, _ = store_for(job.source, job.conn_id)
            result = import_file(
                job, store, ObjectInfo.from_dict(self.file),
                catalog=load_catalog(settings), ledger=Ledger(settings.state_uri),
            )
        if result.status == "failed":
            raise AirflowFailException(result.error)
        return result.to_dict()

    def _fabric(self, context) -> dict:
        from obslake.config import Connector
        from obslake.connections import connection_uri, iceberg_storage_properties
        from obslake.fabric.export import ProjectExporter
        from obslake.fabric.io import fabric_catalog
        from obslake.fabric.sources import make_source

        conn = Connector.model_validate(self.connector)
        if conn.status.value != "active":
            from airflow.sdk.exceptions import AirflowSkipException

            # is_paused_upon_creation only applies once; a connector paused later in YAML stops here too
            raise AirflowSkipException(f"connector {conn.name} has status {conn.status.value}: nothing is synced")
        window = None
        dag_run = context.get("dag_run")
        if dag_run is not None and str(getattr(dag_run, "run_type", "")).lower().endswith("backfill"):
            window = (context["data_interval_start"], context["data_interval_end"])
            self.log.info("backfill run: re-exporting the changes of %s .. %s", *window)
        with airflow_errors():
            catalog = fabric_catalog(iceberg_storage_properties(conn.storage, conn.conn_id))
            result = ProjectExporter(conn, self.project, catalog).sync(
                make_source(conn.source, catalog, connection_uri), window=window, sync_id=context.get("run_id"))
        return result.to_dict()
