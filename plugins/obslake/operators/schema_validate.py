"""SchemaValidateOperator: the dry run, per file, before anything is written."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import job_from_dict, job_to_dict
from obslake.hooks import ObslakeHook


class SchemaValidateOperator(BaseOperator):
    """Validate each new file against the job's model schema; return the files that may be imported, in batches.

    A failed file is recorded in the ledger as ``failed`` with every located problem (file, row,
    column, value, fix) and is not offered again until it changes; the other files go on.

    Args:
        job: the import job (or its dict form).
        files: the sensor's output (list of ``ObjectInfo`` dicts), usually ``sensor.output``.
    """

    template_fields = ("files",)
    ui_color = "#eef8e8"

    def __init__(self, *, job: dict, files: Any, **kwargs: Any):
        super().__init__(**kwargs)
        job_obj = job_from_dict(job)
        self.job = job_to_dict(job_obj)
        self.files = files
        self.conn_id = job_obj.conn_id

    @cached_property
    def hook(self) -> ObslakeHook:
        """The lake and the job's bucket."""
        return ObslakeHook(self.conn_id)

    def execute(self, context) -> list[list[dict]]:
        """Validate every file, one by one (one bad file never stops the others); the valid ones in batches
        for the import tasks (:func:`~obslake.lake.importer.plan_batches`)."""
        from obslake.exceptions import TransientError, printable
        from obslake.lake.catalog import table_arrow_schema
        from obslake.lake.importer import plan_batches
        from obslake.schema.validate import internal_problem, validate_file
        from obslake.storage.base import ObjectInfo

        job = job_from_dict(self.job)
        store, _ = self.hook.store(job.source)
        ledger = self.hook.ledger
        table_schema = table_arrow_schema(self.hook.catalog, job.table_identifier)
        fingerprint = job.schema_.fingerprint()
        ok: list[dict] = []
        refused: list[dict] = []  # for the run's report (ImportReportOperator): file, code, located problems
        retry = 0
        for item in self.files or []:
            info = ObjectInfo.from_dict(item)
            try:
                report = validate_file(job, store, info, table_schema=table_schema)
            except TransientError as exc:  # this file only: the next poll tries it again
                retry += 1
                self.log.warning("RETRY %s: %s", printable(store.uri(info.key)), printable(exc, 500))
                ledger.mark_retry(job.name, info, error=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - validate_file catches everything; belt and braces
                problem = internal_problem(store.uri(info.key), exc)
                refused.append({"file": store.uri(info.key), "code": problem.code, "error": str(problem)[:4000]})
                self.log.error("INVALID %s", printable(problem))
                ledger.mark_failed(job.name, info, error=str(problem), fingerprint=fingerprint, code=problem.code)
                continue
            if report.ok:
                self.log.info(
                    "%s: %s (%d rows, %d bad)%s",
                    report.status,
                    printable(report.file),
                    report.rows,
                    report.bad_rows,
                    "".join(f"; {n}" for n in report.notes),
                )
                ok.append(item)
            else:
                code = report.problems[0].code if report.problems else None
                refused.append({"file": store.uri(info.key), "code": code, "error": report.summary()[:4000]})
                self.log.error("INVALID %s", "\n".join(printable(line) for line in report.summary().splitlines()))
                ledger.mark_failed(
                    job.name,
                    info,
                    error=report.summary(),
                    fingerprint=fingerprint,
                    code=code,
                )
        batches = plan_batches(
            [ObjectInfo.from_dict(item) for item in ok],
            job.batch.max_files,
            job.batch.max_bytes,
            job.batch.large_file_bytes,
        )
        self.log.info(
            "%d file(s) valid, %d failed validation, %d to retry; %d import task(s) (batch: max %d files, %d bytes)",
            len(ok),
            len(refused),
            retry,
            len(batches),
            job.batch.max_files,
            job.batch.max_bytes,
        )
        context["ti"].xcom_push(key="failed", value=refused)
        return [[info.to_dict() for info in batch] for batch in batches]
