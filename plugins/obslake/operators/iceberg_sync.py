"""IcebergSyncOperator: commit data into the Iceberg lake (import mode: one file per mapped task)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import airflow_errors, job_from_dict, job_to_dict


class IcebergSyncOperator(BaseOperator):
    """Import one file version into its model table, exactly once.

    Map it over the validated files (``.partial(job=…).expand(file=validate.output)``) so files import
    in parallel; each commit is its own Iceberg transaction and conflicts retry inside the task.

    Args:
        job: the import job (or its dict form).
        file: one ``ObjectInfo`` dict.
        mode: ``import`` (Data Fabric modes come later).
    """

    template_fields = ("file",)
    ui_color = "#e8eefd"

    def __init__(self, *, job: dict, file: Any = None, mode: str = "import", **kwargs: Any):
        super().__init__(**kwargs)
        if mode != "import":
            raise ValueError(f"IcebergSyncOperator mode {mode!r} is not supported; use 'import'")
        self.job = job_to_dict(job_from_dict(job))
        self.file = file
        self.mode = mode

    def execute(self, context) -> dict:
        """Import; a bad file fails this task without retries, transient errors retry."""
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
