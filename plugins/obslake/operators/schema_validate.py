"""SchemaValidateOperator: the dry run, per file, before anything is written."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.airflow_support import job_from_dict, job_to_dict


class SchemaValidateOperator(BaseOperator):
    """Validate each new file against the job's model schema; return the files that may be imported.

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
        self.job = job_to_dict(job_from_dict(job))
        self.files = files

    def execute(self, context) -> list[dict]:
        """Validate every file (one bad file never stops the others)."""
        from obslake.connections import store_for
        from obslake.lake.catalog import LakeSettings
        from obslake.lake.ledger import Ledger
        from obslake.schema.validate import validate_file
        from obslake.storage.base import ObjectInfo

        job = job_from_dict(self.job)
        store, _ = store_for(job.source, job.conn_id)
        ledger = Ledger(LakeSettings.from_env().state_uri)
        ok: list[dict] = []
        failed = 0
        for item in self.files or []:
            info = ObjectInfo.from_dict(item)
            report = validate_file(job, store, info)
            if report.ok:
                self.log.info("%s: %s (%d rows, %d bad)", report.status, report.file, report.rows, report.bad_rows)
                ok.append(item)
            else:
                failed += 1
                self.log.error("INVALID %s", report.summary())
                ledger.mark_failed(job.name, info, error=report.summary(), fingerprint=job.schema_.fingerprint())
        self.log.info("%d file(s) valid, %d failed validation", len(ok), failed)
        return ok
