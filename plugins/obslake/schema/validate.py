"""Dry run: validate a file against a job's model schema without writing anything."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import TYPE_CHECKING

import pyarrow as pa

from obslake.exceptions import TerminalError, TransientError, printable
from obslake.formats import format_for_key, read_batches, read_schema
from obslake.schema.mapping import MAX_PROBLEMS, Problem, bad_row_indices, check_table_types
from obslake.schema.traces import make_mapper
from obslake.schema.types import OnError
from obslake.storage.base import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from obslake.config import ImportJob


FILE_FIX = {
    "FILE_EMPTY": "upload the complete file (was the upload interrupted?) with at least one data row",
    "FILE_CORRUPT": "re-export the file; check that the upload finished and the extension matches the format",
    "FILE_ENCODING": "save the file as UTF-8",
    "CSV_RAGGED": "give every CSV row as many fields as the header (quote values that contain commas)",
    "FILE_TOO_LARGE": "split the file, or raise max_file_bytes in the job YAML",
    "COLUMN_MISSING": "fix the job's `schema:` mapping or the file's header",
    "DUPLICATE_COLUMN": "give every column a unique name",
    "TYPE_MISMATCH": "write the column with a type from README 'Expected types', or fix the mapping",
    "ID_TYPE": "write prediction ids as strings or integers",
    "FEATURE_NESTED": "map vectors under schema.embedding_features, or exclude the column",
    "RESERVED_NAME": "rename the column or exclude it",
    "FORMAT_NOT_ALLOWED": "add the format to the job's `formats:` or rename the file",
    "COLUMN_NAME_INVALID": "name every column; drop an index column: df.to_csv(path, index=False)",
    "TYPE_UNSUPPORTED": "cast the column to a type from README 'Expected types', or list it under schema.exclude",
    "ROW_TOO_LARGE": "split the large values into several rows or store them elsewhere (a link)",
    "MEMORY_LIMIT": "split the file into smaller files, or give the worker more memory",
    "INTERNAL_ERROR": "report this file to the obslake maintainers (with the file or its schema and this message); "
    "the other files of the job are not affected",
}


def internal_problem(uri: str, exc: BaseException) -> Problem:
    """The problem for an exception no check anticipated: the file fails alone, with what was raised.

    ``MemoryError`` is a size limit (``MEMORY_LIMIT``); anything else is ``INTERNAL_ERROR``.
    """
    code = "MEMORY_LIMIT" if isinstance(exc, MemoryError) else "INTERNAL_ERROR"
    text = printable(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 300)
    what = (
        "the file needs more memory than the worker has"
        if code == "MEMORY_LIMIT"
        else "obslake could not handle this file"
    )
    return Problem(code, f"{what} ({type(exc).__name__}: {text})", uri, FILE_FIX[code])


@dataclasses.dataclass
class ValidationReport:
    """The verdict on one file.

    ``status`` is ``ok``, ``partial`` (``on_error: skip_rows`` and the bad rows are within the job's
    thresholds: they will be quarantined, the rest imported) or ``failed``.
    """

    file: str
    etag: str
    status: str
    rows: int = 0
    bad_rows: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file may be imported (maybe without its bad rows)."""
        return self.status in ("ok", "partial")

    def summary(self) -> str:
        """A human-readable paragraph: the status line, then one line per problem."""
        bad = f", {self.bad_rows} bad" if self.bad_rows else ""
        head = f"{self.file}: {self.status.upper()} ({self.rows} rows read{bad})"
        more = f"\n  ... and more (first {MAX_PROBLEMS} shown)" if len(self.problems) >= MAX_PROBLEMS else ""
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        return "\n".join([head, *(f"  {p}" for p in self.problems)]) + more + notes

    def to_dict(self) -> dict:
        """Plain form (JSON output of the dry run)."""
        return {
            "file": self.file,
            "etag": self.etag,
            "status": self.status,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
        }


def error_code(exc: TerminalError) -> str:
    """The README code of a terminal error: its own ``code``, else the one its class stands for."""
    return getattr(exc, "code", None) or {
        "FileFormatError": "FILE_CORRUPT",
        "SchemaMismatchError": "TYPE_MISMATCH",
        "StorageAccessError": "ACCESS_DENIED",
        "BucketOwnershipError": "BUCKET_NOT_OWNED",
    }.get(type(exc).__name__, "INTERNAL_ERROR")


def file_problem(uri: str, exc: TerminalError) -> Problem:
    """A whole-file problem from a terminal error (its ``code``, else one derived from its class).

    Located where the error says where: ``column`` (a mapped column that is missing, of the wrong type, ...)
    and, for CSV, ``line`` (the data row is ``line - 1``, exact without quoted values spanning lines).
    """
    code = error_code(exc)
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    message = str(exc).removeprefix(f"{uri}: ")  # Problem.__str__ names the file already
    fix = FILE_FIX.get(code, "see the message")
    own = re.search(r"\. Fix(:)? (.+?)\.?$", message, flags=re.DOTALL)
    if own:  # the error names its own fix (more precise than the code's): said once, as the problem's fix
        message, fix = message[: own.start()], own.group(2) if own.group(1) else f"fix {own.group(2)}"
    return Problem(
        code,
        message,
        uri,
        fix,
        row=line - 1 if line and line > 1 else None,
        column=column,
        line=line,
    )


def validate_file(
    job: ImportJob,
    store: ObjectStore,
    info: ObjectInfo,
    *,
    batch_rows: int = 65_536,
    table_schema: pa.Schema | None = None,
) -> ValidationReport:
    """Read the whole file (streaming) and report every problem (up to 100 listed), writing nothing.

    Args:
        table_schema: the Arrow schema of the job's table as it is now, if it exists: a column whose
            type the table cannot take is a ``TYPE_MISMATCH`` here, as in the import.

    Note:
        Never raises for anything wrong with the file, whatever the exception: an unanticipated one is
        an ``INTERNAL_ERROR`` problem of this file alone. Only transient storage errors propagate (retry).
    """
    uri = store.uri(info.key)
    report = ValidationReport(uri, info.etag, "ok")
    try:
        if info.size > job.max_file_bytes:
            raise TerminalError(
                f"{uri}: {info.size:,} bytes is over the job's max_file_bytes ({job.max_file_bytes:,})",
                code="FILE_TOO_LARGE",
            )
        fmt = format_for_key(info.key, job.formats)
        if fmt is None:
            raise TerminalError(
                f"{uri}: extension not among the job's formats {list(job.formats)}", code="FORMAT_NOT_ALLOWED"
            )
        now = dt.datetime.now(dt.UTC)
        with store.open(info.key, etag=info.etag) as f:
            mapper = make_mapper(
                job,
                read_schema(f, fmt, source=uri, max_bytes=job.max_file_bytes),
                uri,
                now,
                fmt,
                table_schema=table_schema,
            )
            dropped = getattr(mapper, "dropped", [])
            if dropped:
                report.notes.append(
                    f"{len(dropped)} column(s) not imported (not claimed by the job's schema): "
                    f"{[printable(c, 60) for c in dropped[:20]]}{' ...' if len(dropped) > 20 else ''}"
                )
            row = 1
            checked = False
            for batch in read_batches(
                f, fmt, source=uri, batch_rows=batch_rows, csv_as_strings=fmt == "csv", max_bytes=job.max_file_bytes
            ):
                mapped, problems = mapper.map(batch, row)
                if not checked and table_schema is not None:
                    check_table_types(mapped.schema, table_schema, uri)
                    checked = True
                report.bad_rows += len(bad_row_indices(problems, row))
                report.problems.extend(problems[: max(0, MAX_PROBLEMS - len(report.problems))])
                row += batch.num_rows
                report.rows += batch.num_rows
            late = mapper.finish()
            report.bad_rows += len(late)
            report.problems.extend(late[: max(0, MAX_PROBLEMS - len(report.problems))])
        if report.rows == 0:
            report.problems.append(
                Problem("FILE_EMPTY", "the file has a header but no data rows", uri, FILE_FIX["FILE_EMPTY"])
            )
            report.status = "failed"
            return report
    except TransientError:
        raise
    except TerminalError as exc:
        report.problems.append(file_problem(uri, exc))
        report.status = "failed"
        return report
    except Exception as exc:  # noqa: BLE001 - per-file isolation: nothing escapes one file
        report.problems.append(internal_problem(uri, exc))
        report.status = "failed"
        return report
    if report.bad_rows:
        within = report.bad_rows <= job.max_bad_rows and report.bad_rows <= job.max_bad_fraction * max(report.rows, 1)
        report.status = "partial" if job.on_error == OnError.skip_rows and within else "failed"
    return report
