"""ConfigErrorOperator: stands in for a job whose YAML is invalid and fails with the reason."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator


class ConfigErrorOperator(BaseOperator):
    """Fail (no retry) with the configuration error message."""

    ui_color = "#fde8e8"

    def __init__(self, *, message: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context) -> None:
        """Always fails: fix the YAML named in the message."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(self.message)
