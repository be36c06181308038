"""TagVerifyOperator: fail the run before any object is read unless the bucket is the caller's."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import airflow_errors
from obslake.config import DEFAULT_TAG_NAME
from obslake.hooks import ObslakeHook


class TagVerifyOperator(BaseOperator):
    """Check that the bucket's tag (S3) or label (GCS) ``tag_name`` equals the ingestion key.

    The key comes from the Airflow Variable ``key_variable`` (so from any secrets backend); its value
    never reaches a log or an error.

    Args:
        source: ``s3://bucket/prefix/``, ``gs://…`` or ``file://…``.
        conn_id: Airflow connection for the bucket.
        key_variable: name of the Airflow Variable holding the key.
        tag_name: the tag/label name (default ``arize-ingestion-key``).
    """

    template_fields = ("source", "conn_id", "key_variable", "tag_name")
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        source: str,
        key_variable: str,
        conn_id: str | None = None,
        tag_name: str = DEFAULT_TAG_NAME,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.source = source
        self.conn_id = conn_id
        self.key_variable = key_variable
        self.tag_name = tag_name

    def execute(self, context) -> None:
        """Raise ``AirflowFailException`` (no retry) when the tag is missing or different."""
        from obslake.hooks.obslake import verify_ownership

        with airflow_errors():
            store, _ = ObslakeHook(self.conn_id).store(self.source)
            verify_ownership(store, self.key_variable, self.tag_name, ttl=0)  # each run proves it afresh
