"""Dry run: validate a file against a job's model schema without writing anything."""

from __future__ import annotations

import dataclasses
import datetime as dt

from obslake.config import ImportJob
from obslake.exceptions import ObslakeError, TerminalError
from obslake.formats import format_for_key, read_batches, read_schema
from obslake.schema.mapping import MAX_PROBLEMS, BatchMapper, Problem, RecordErrors
from obslake.storage.base import ObjectInfo, ObjectStore


@dataclasses.dataclass
class ValidationReport:
    """The verdict on one file: ``ok`` or ``failed`` with located problems."""

    file: str
    etag: str
    status: str
    rows: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file may be imported."""
        return self.status == "ok"

    def summary(self) -> str:
        """A human-readable paragraph: the status line, then one line per problem."""
        head = f"{self.file}: {self.status.upper()} ({self.rows} rows read)"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _file_problem(uri: str, exc: ObslakeError) -> Problem:
    code = {
        "FileFormatError": "FILE_UNREADABLE",
        "SchemaMismatchError": "SCHEMA_MISMATCH",
        "FileTooLargeError": "FILE_TOO_LARGE",
        "StorageAccessError": "ACCESS_DENIED",
    }.get(type(exc).__name__, "FILE_ERROR")
    return Problem(code, str(exc), uri, "see the message; fix the file or the job's schema and upload it again")


def validate_file(job: ImportJob, store: ObjectStore, info: ObjectInfo, *, batch_rows: int = 65_536) -> ValidationReport:
    """Read the whole file (streaming) and report every problem, up to 100 record problems.

    Note:
        Transient storage errors propagate (retry); everything wrong with the file is in the report.
    """
    uri = store.uri(info.key)
    report = ValidationReport(uri, info.etag, "ok")
    try:
        if info.size > job.max_file_bytes:
            from obslake.lake.importer import FileTooLargeError

            raise FileTooLargeError(
                f"{info.size:,} bytes is over the job's max_file_bytes ({job.max_file_bytes:,}); split the file "
                "or raise max_file_bytes"
            )
        fmt = format_for_key(info.key, job.formats)
        if fmt is None:
            raise TerminalError(f"{uri}: extension not among the job's formats {list(job.formats)}")
        now = dt.datetime.now(dt.timezone.utc)
        with store.open(info.key, etag=info.etag) as f:
            mapper = BatchMapper(job.schema_, read_schema(f, fmt, source=uri), uri, now)
            row = 1
            for batch in read_batches(f, fmt, source=uri, batch_rows=batch_rows):
                try:
                    mapper.map(batch, row)
                except RecordErrors as exc:
                    report.problems.extend(exc.problems[: MAX_PROBLEMS - len(report.problems)])
                row += batch.num_rows
                report.rows += batch.num_rows
        if report.rows == 0:
            report.problems.append(Problem(
                "FILE_EMPTY", "the file has no data rows", uri, "upload a file with at least one row",
            ))
    except TerminalError as exc:
        report.problems.append(_file_problem(uri, exc))
    if report.problems:
        report.status = "failed"
    return report
