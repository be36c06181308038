"""S3KeyPrefixSensor: wait until a job's bucket prefix holds file versions not yet in the ledger.

One class serves ``s3://``, ``gs://`` and ``file://`` through the storage protocol.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from obslake.airflow_support import airflow_errors, job_from_dict, job_to_dict


def _try_number(context: Any) -> int:
    """The task instance's try (1 for the first; 1 when the context has no task instance)."""
    ti = context.get("ti") if hasattr(context, "get") else None
    return int(getattr(ti, "try_number", None) or 1)


class S3KeyPrefixSensor(BaseSensorOperator):
    """Return (as XCom) the new file versions under the job's prefix, oldest first.

    Poke mode lists once per ``poke_interval`` (the job's ``poll_interval``); ``deferrable=True``
    hands the wait to :class:`~obslake.triggers.prefix.NewFilesTrigger` and frees the worker slot.

    Args:
        job: the import job (an ``ImportJob`` or its dict form).
        deferrable: defer to the triggerer instead of poking.
    """

    template_fields = ("source",)
    ui_color = "#e8f4fd"

    def __init__(self, *, job: dict, deferrable: bool = False, **kwargs: Any):
        job_obj = job_from_dict(job)
        kwargs.setdefault("poke_interval", job_obj.poll_interval)
        kwargs.setdefault("timeout", job_obj.sensor_timeout)
        super().__init__(**kwargs)
        self.job = job_to_dict(job_obj)
        self.source = job_obj.source
        self.deferrable = deferrable
        self.window = ""  # a windowed job's folder of this run (below source), set by execute
        self._listed_on_retry = False  # an event-driven job's retried try lists in full in its first poke

    def _job(self):
        data = dict(self.job)
        data["source"] = self.source
        return job_from_dict(data)

    def poke(self, context) -> PokeReturnValue:
        """List the prefix once (after proving the bucket's ownership, a verdict kept five minutes); done when
        there is at least one new version."""
        from obslake.hooks import ObslakeHook
        from obslake.hooks.obslake import notification_queue, verify_ownership
        from obslake.lake.discovery import discover

        job = self._job()
        hook = ObslakeHook(job.conn_id)
        with airflow_errors():
            store, prefix = hook.store(job.source)
            verify_ownership(store, job.ingestion_key_variable, job.tag_name)  # before the bucket is listed
            queue = None if self.window else notification_queue(job)
            # a retry (an earlier try may have deleted notifications of files its run then did not import, or
            # been marked failed by Airflow after it resumed) lists in full once, so those files come now
            retry = queue is not None and not self._listed_on_retry and _try_number(context) > 1
            found = discover(job, store, prefix + self.window, hook.ledger, queue, full_listing=retry)
            self._listed_on_retry = self._listed_on_retry or retry
            if found.receipts and queue is not None:  # the files are this task's result now
                queue.delete(found.receipts)
        return PokeReturnValue(is_done=bool(found.files), xcom_value=[o.to_dict() for o in found.files])

    def execute(self, context) -> Any:
        """Poke once; if nothing is new and deferrable, wait in the triggerer.

        Note:
            Only "nothing new before ``timeout``" ends as *skipped* (the next run polls again); errors
            such as a missing bucket or denied access fail the task. (Airflow's ``soft_fail`` would
            skip those too, hiding them, so it is not used.)
        """
        job = self._job()
        if job.status.value != "active":
            from airflow.sdk.exceptions import AirflowSkipException

            # is_paused_upon_creation only applies once; a YAML switched to paused later still stops here
            raise AirflowSkipException(f"job {job.name} has status {job.status.value} in its YAML: nothing is read")
        if job.window_prefix and context.get("data_interval_start") is not None:
            # a windowed job: this run lists only its data interval's folder; a window that has ended (a
            # backfill, a late run) is listed once: what is new is imported, nothing is waited for
            self.window = job.window_folder(context["data_interval_start"])
            self.log.info("window %s .. %s: %s%s", context["data_interval_start"], context["data_interval_end"],
                          self.source, self.window)  # fmt: skip
            end = context.get("data_interval_end")
            if end is not None and end <= dt.datetime.now(dt.UTC):
                first = self.poke(context)
                if first.is_done:
                    return first.xcom_value
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(
                    f"nothing new under {self.source}{self.window} (a past window: not waited for)"
                )
        if not self.deferrable:
            from airflow.sdk.exceptions import AirflowSensorTimeout

            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:
                raise self._nothing_new() from exc
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        from obslake.triggers.prefix import NewFilesTrigger

        self.defer(
            trigger=NewFilesTrigger(job=job_to_dict(self._job()), poll_interval=self.poke_interval, window=self.window),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout),
        )

    def _nothing_new(self):
        from airflow.sdk.exceptions import AirflowSkipException

        return AirflowSkipException(
            f"no new files under {self.source} within {self.timeout:g}s; the next run polls again"
        )

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context) -> Any:
        """Turn the deferral timeout (nothing new) into a skip; everything else propagates."""
        from airflow.sdk.exceptions import AirflowSensorTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout as exc:
            raise self._nothing_new() from exc

    def execute_complete(self, context, event: dict) -> list[dict]:
        """Resume after the trigger fired: return its files or raise its error."""
        if event.get("status") != "success":
            from airflow.sdk.exceptions import AirflowException, AirflowFailException

            exc = AirflowFailException if event.get("terminal") else AirflowException
            raise exc(event.get("message", "trigger failed"))
        self.log.info("%d new file version(s) (%d new in all)", len(event["files"]), event.get("total_new", 0))
        if event.get("receipts"):  # an event-driven job: its notifications are handled once the files are ours
            from obslake.hooks.obslake import notification_queue

            queue = notification_queue(self._job())
            if queue is not None:
                with airflow_errors():
                    queue.delete(event["receipts"])
        return event["files"]
