"""StorageProbeOperator: fail early, with the missing permission named, before a sync writes anything."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import airflow_errors
from obslake.hooks import ObslakeHook


class StorageProbeOperator(BaseOperator):
    """Write, list, read and delete a marker object under ``uri`` (see :func:`obslake.fabric.probe.probe_storage`).

    Args:
        uri: ``s3://bucket/prefix/namespace`` (the connector's root), ``gs://…`` or ``file://…``.
        conn_id: Airflow connection for the bucket.
    """

    template_fields = ("uri", "conn_id")
    ui_color = "#f3e8fd"

    def __init__(self, *, uri: str, conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.uri = uri
        self.conn_id = conn_id

    def execute(self, context) -> str:
        """Raise ``AirflowFailException`` naming the missing permission."""
        from obslake.fabric.probe import probe_storage

        with airflow_errors():
            store, prefix = ObslakeHook(self.conn_id).store(self.uri.rstrip("/") + "/")
            return probe_storage(store, prefix)
