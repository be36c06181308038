"""ImportReportOperator: the verdict of an import run, so a file that failed makes the run fail."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator


class ImportReportOperator(BaseOperator):
    """Fail the run (no retry) when its validation refused a file, after every good file was imported.

    Runs after the validate step and the import tasks (``none_failed_min_one_success``: also when every file
    was refused and no import task ran; skipped with them when nothing was new). Its log and its ``summary``
    XCom list the refused files with their codes and located problems; ``on_failure_callback`` and e-mail
    alerts fire as for any failed task. An import that fails fails its own task (and so the run).

    Args:
        validate_task_id: the validate step (pushes ``failed``: the files it refused).
        import_task_id: the (mapped) import task (returns each file's result).
    """

    ui_color = "#fdf3e8"

    def __init__(self, *, validate_task_id: str, import_task_id: str, **kwargs: Any):
        kwargs.setdefault("trigger_rule", "none_failed_min_one_success")
        super().__init__(**kwargs)
        self.validate_task_id, self.import_task_id = validate_task_id, import_task_id

    def execute(self, context: Any) -> dict:
        """The run's summary; raises ``AirflowFailException`` if a file failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from obslake.status import format_run_summary, run_summary

        ti = context["ti"]
        summary = run_summary(
            ti.xcom_pull(task_ids=self.validate_task_id, key="failed"), ti.xcom_pull(task_ids=self.import_task_id)
        )
        text = format_run_summary(summary)
        ti.xcom_push(key="summary", value=summary)
        if summary["failed"]:
            self.log.error("%s", text)
            raise AirflowFailException(text)
        self.log.info("%s", text)
        return summary
