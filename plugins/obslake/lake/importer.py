"""Import one file version into its model's Iceberg table, exactly once.

The recipe (one Iceberg transaction per file):

1. The ledger is the index of what was imported: a version it records as ``succeeded`` is not imported
   again. Otherwise its row goes to ``pending``; the ledger says whether an earlier attempt on it is
   unfinished, and since when (:meth:`~obslake.lake.ledger.Ledger.mark_pending`).
2. Only then, and only among the snapshots committed since that time, a snapshot carrying
   ``obslake.source-file`` = the file's URI and ``obslake.source-etag`` = its etag means the file is
   already committed (a crash hit between the commit and the ledger update): the ledger is repaired from
   the snapshot summary, nothing is appended. Neither step reads the table's whole history, so the cost
   of an import does not grow with it.
3. The file is streamed in record batches, mapped (:class:`~obslake.schema.mapping.BatchMapper`) and
   written as Parquet data files in chunks of bounded size, each on a background thread while the
   next one is read (:class:`~obslake.lake.iceberg.DataFileWriter`) — memory does not grow with the file.
4. One transaction deletes the rows of any earlier version of the same key (the file changed: the
   ledger knows, even after that version's snapshot has expired) and
   appends the new data files, with the source key and etag in the snapshot properties. A commit
   conflict refreshes the table and retries with the same data files.
5. The ledger row goes to ``succeeded`` (rows, snapshot id).

Note:
    A crash after step 3 leaves unreferenced Parquet files in the warehouse (never visible to
    readers; removed by Iceberg's orphan-file maintenance). A terminal error (bad file) marks the
    ledger row ``failed`` with the error; a transient one leaves it ``pending`` for the retry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from obslake.config import ImportJob, OnError
from obslake.exceptions import (
    CommitConflictError,
    FileFormatError,
    ObjectChangedError,
    SchemaMismatchError,
    StorageUnavailableError,
    TerminalError,
    TransientError,
    printable,
)
from obslake.formats import format_for_key, read_batches, read_schema
from obslake.lake.iceberg import (
    CHUNK_ROWS,
    DEFAULT_TABLE_PROPERTIES,
    DataFileWriter,
    begin,
    commit_with_retry,
    delete_quietly,
    iceberg_schema,
    identity_spec,
    load_or_create,
    load_table,
    same_field_ids,
    snapshot_lineage,
    transaction_io,
)
from obslake.lake.ledger import Ledger
from obslake.schema.mapping import (
    INGESTED_AT,
    MAX_PROBLEMS,
    PARTITION_COLUMN,
    SOURCE_FILE,
    SOURCE_ROW,
    TS_TYPE,
    RecordErrors,
    check_table_types,
)
from obslake.schema.traces import make_mapper
from obslake.schema.validate import error_code, internal_problem
from obslake.storage.base import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table, Transaction

log = logging.getLogger(__name__)

PROP_SOURCE_FILE = "obslake.source-file"
PROP_SOURCE_ETAG = "obslake.source-etag"
PROP_JOB = "obslake.job"
PROP_ROWS = "obslake.rows"
CLOCK_SKEW = dt.timedelta(minutes=10)
"""How far the clocks of two workers (which stamp snapshots and ledger rows) may disagree."""


class FileTooLargeError(TerminalError):
    """A file is over the job's ``max_file_bytes``."""


@dataclasses.dataclass
class ImportResult:
    """What happened to one file version."""

    uri: str
    etag: str
    status: str  # imported | already-imported | failed
    rows: int = 0
    table: str | None = None
    snapshot_id: int | None = None
    replaced: bool = False
    error: str | None = None
    seconds: float = 0.0
    bad_rows: int = 0
    code: str | None = None  # failed: the error code (README "Error codes")

    def to_dict(self) -> dict:
        """Plain form for XCom."""
        return dataclasses.asdict(self)


# -- table management ------------------------------------------------------------------------------
def _table_definition(job: ImportJob, arrow_schema: pa.Schema) -> dict[str, Any]:
    """Schema (fresh ids), partition spec (identity on ``date``) and properties of a new model table."""
    schema = iceberg_schema(arrow_schema)
    model = (
        {
            "obslake.model.space": job.model.space,
            "obslake.model.name": job.model.name,
            "obslake.model.environment": job.model.environment.value,
        }
        if job.model
        else {}
    )
    properties = {
        **DEFAULT_TABLE_PROPERTIES,
        **model,
        "obslake.job.kind": job.kind.value,
        # full (untruncated) bounds let a replace drop whole files by metadata alone
        f"write.metadata.metrics.column.{SOURCE_FILE}": "full",
    }
    return {"schema": schema, "partition_spec": identity_spec(schema, [PARTITION_COLUMN]), "properties": properties}


def ensure_table(catalog: Catalog, job: ImportJob, arrow_schema: pa.Schema) -> Table:
    """Load the model's table, creating it (partitioned by ``date``) on first use.

    Imports do not call this: they create the table in the transaction of their first commit, so a
    file that fails never leaves a table (or a column) behind.
    """
    return load_or_create(catalog, job.table_identifier, lambda: _table_definition(job, arrow_schema))


def find_committed(table: Table, uri: str, etag: str, since: dt.datetime) -> Any:
    """The snapshot that committed this file version since ``since``, or None.

    Only the snapshots committed since then (less :data:`CLOCK_SKEW`) are read, newest first: the ledger
    says when the unfinished attempts of this version began (:meth:`Ledger.mark_pending`), so the cost is
    the number of commits since, never the table's whole history.
    """
    cutoff_ms = (since - CLOCK_SKEW).timestamp() * 1000
    for snap in snapshot_lineage(table):
        if snap.timestamp_ms < cutoff_ms:
            return None
        s = snap.summary
        if s is not None and s.get(PROP_SOURCE_FILE) == uri and s.get(PROP_SOURCE_ETAG) == etag:
            return snap
    return None


def _conform(batch: pa.RecordBatch, target: pa.Schema, uri: str) -> pa.RecordBatch:
    """Cast ``batch`` to the table's Arrow schema: missing columns become nulls, safe casts only."""
    arrays = []
    for field in target:
        idx = batch.schema.get_field_index(field.name)
        if idx < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        arr = batch.column(idx)
        if arr.type != field.type:
            try:
                arr = pc.cast(arr, field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatchError(
                    f"{uri}: column {field.name!r} is {arr.type} in this file but {field.type} in the table; "
                    f"write it as {field.type} (a type change is not an additive schema change): {exc}",
                    code="TYPE_MISMATCH",
                    column=field.name,
                ) from None
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=target)


class _SchemaRace(Exception):
    """Another writer changed the table's schema so that the field ids of the written files no longer
    match: the file must be written again (rare: two files adding different columns at the same time)."""


def _begin(catalog: Catalog, job: ImportJob, table: Table | None, arrow_schema: pa.Schema) -> Transaction:
    """The file's transaction: creates the table or adds the file's new columns, committing nothing."""
    return begin(catalog, job.table_identifier, table, arrow_schema, lambda: _table_definition(job, arrow_schema))


def _commit(
    catalog: Catalog,
    job: ImportJob,
    tx: Transaction,
    arrow_schema: pa.Schema,
    uri: str,
    etag: str,
    data_files: list[DataFile],
    props: dict[str, str],
    replace: bool,
    since: dt.datetime,
) -> tuple[Table, Any, bool]:
    """Commit the file's transaction (table creation / new columns, replace, append), retrying conflicts.

    ``since``: the earliest time an attempt on this version may have committed (a retry after a conflict
    looks for its own commit only among the snapshots since then).

    Returns:
        (table, the snapshot that holds the file (or None), whether an earlier version was replaced).

    Raises:
        _SchemaRace: the written files no longer match the table's field ids; write them again.
        CommitConflictError: still conflicting after :data:`~obslake.lake.iceberg.COMMIT_ATTEMPTS` attempts.
    """
    from pyiceberg.expressions import EqualTo

    written = tx.table_metadata.schema()
    current_tx = tx

    def attempt(n: int) -> tuple[Table, Any, bool]:
        nonlocal current_tx, replace
        if n:  # a conflict: start again from the table as it is now
            table = catalog.load_table(job.table_identifier)
            done = find_committed(table, uri, etag, since)
            if done is not None:
                return table, done, False
            current_tx = _begin(catalog, job, table, arrow_schema)
            if not same_field_ids(written, current_tx.table_metadata.schema()):
                raise _SchemaRace(f"{uri}: the table's schema changed while the file was written")
        if replace:
            # pydantic makes mypy see keyword-only constructors; pyiceberg's expressions take (term, literal)
            replaced = EqualTo(SOURCE_FILE, uri)  # type: ignore[call-arg, arg-type]
            current_tx.delete(replaced, snapshot_properties={PROP_JOB: props[PROP_JOB]})
        if data_files or replace:
            with current_tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                for df in data_files:
                    append.append_data_file(df)
        table = current_tx.commit_transaction()
        return table, find_committed(table, uri, etag, since), replace

    return commit_with_retry(attempt, what=uri)


class TooManyBadRowsError(TerminalError):
    """``on_error: skip_rows`` but the file has more bad rows than the job allows."""

    code = "TOO_MANY_BAD_ROWS"


QUARANTINE_SCHEMA = pa.schema(
    [
        (SOURCE_FILE, pa.string()),
        ("_source_etag", pa.string()),
        (SOURCE_ROW, pa.int64()),
        (INGESTED_AT, TS_TYPE),
        ("error_codes", pa.string()),
        ("errors", pa.string()),
        ("record", pa.string()),
    ]
)


class _Quarantine:
    """Bad rows of one file under ``skip_rows``: the original record as JSON, with its problems."""

    def __init__(self, job: ImportJob, uri: str, etag: str, ingested_at: dt.datetime):
        self.job, self.uri, self.etag, self.ingested_at = job, uri, etag, ingested_at
        self.rows: list[dict] = []

    def add(self, batch: pa.RecordBatch, first_row: int, problems: list) -> set[int]:
        by_row: dict[int, list] = {}
        for p in problems:
            by_row.setdefault(p.row - first_row, []).append(p)
        for idx, probs in sorted(by_row.items()):
            record = batch.slice(idx, 1).to_pylist()[0]
            self.rows.append(
                {
                    SOURCE_FILE: self.uri,
                    "_source_etag": self.etag,
                    SOURCE_ROW: first_row + idx,
                    INGESTED_AT: self.ingested_at,
                    "error_codes": ",".join(sorted({p.code for p in probs})),
                    "errors": "\n".join(str(p) for p in probs),
                    "record": json.dumps(record, default=str)[:100_000],
                }
            )
        return set(by_row)

    def commit(self, catalog: Catalog, since: dt.datetime | None) -> None:
        """Append the bad rows to ``<table>__quarantine`` exactly once per file version.

        ``since``: when unfinished earlier attempts on this version began (None: this is the first).
        """
        if not self.rows:
            return
        ident = self.job.quarantine_table_identifier
        table = load_or_create(
            catalog, ident, lambda: {"schema": QUARANTINE_SCHEMA, "properties": DEFAULT_TABLE_PROPERTIES}
        )
        props = {
            PROP_SOURCE_FILE: self.uri,
            PROP_SOURCE_ETAG: self.etag,
            PROP_JOB: self.job.name,
            PROP_ROWS: str(len(self.rows)),
        }
        data = pa.Table.from_pylist(self.rows, QUARANTINE_SCHEMA)

        def attempt(n: int) -> None:
            if n:
                table.refresh()
            if (n or since is not None) and find_committed(table, self.uri, self.etag, since or self.ingested_at):
                return
            table.append(data, snapshot_properties=props)
            log.info("%s: %d bad row(s) kept in %s", self.uri, len(self.rows), ".".join(ident))

        commit_with_retry(attempt, what=f"{self.uri} (quarantine)")


SCHEMA_RACE_ATTEMPTS = 3


def _is_transient(exc: BaseException) -> bool:
    """An exception that is no fault of the file: the catalog, the ledger or the warehouse did not answer."""
    import sqlalchemy.exc as sa_exc

    if isinstance(
        exc,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,
            sa_exc.DisconnectionError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    # the warehouse's file system (pyarrow/fsspec raise OSError for network and permission faults); the
    # file's own bytes are decoded by obslake.formats, which turns their OSErrors into FileFormatError
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, IsADirectoryError))


def _failure_code(exc: TerminalError) -> str:
    """The README code of a terminal error: a record error's first problem, else the error's own code."""
    if isinstance(exc, RecordErrors) and exc.problems:
        return exc.problems[0].code
    return error_code(exc)


def import_file(
    job: ImportJob,
    store: ObjectStore,
    info: ObjectInfo,
    *,
    catalog: Catalog,
    ledger: Ledger,
    batch_rows: int = 65_536,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportResult:
    """Import one file version exactly once (see module docstring).

    Returns:
        The outcome. Whatever is wrong with the file - any exception while reading, mapping or writing
        it - returns ``status="failed"`` with a code (and is in the ledger); the table is then unchanged.

    Raises:
        TransientError: retry the call (the ledger row stays ``pending``, with this error and the
            attempt count, shown by ``obslake status``).
    """
    started = time.monotonic()
    uri = store.uri(info.key)
    table_name = ".".join(job.table_identifier)
    fingerprint = job.schema_.fingerprint()
    done = ledger.get(job.name, info)
    if done is not None and done["status"] == "succeeded":  # the ledger is the index of what was imported
        log.info("%s (etag %s) was imported already (ledger); nothing to do", printable(uri), printable(info.etag))
        return ImportResult(
            uri,
            info.etag,
            "already-imported",
            done["rows"] or 0,
            table_name,
            done["snapshot_id"],
            seconds=time.monotonic() - started,
        )
    since = ledger.mark_pending(job.name, info)
    log.info("importing %s (etag %s, %d bytes) into %s", printable(uri), printable(info.etag), info.size, table_name)

    def failed(code: str, message: str) -> ImportResult:
        log.error("%s", printable(message, 4000))
        ledger.mark_failed(job.name, info, error=message, fingerprint=fingerprint, code=code)
        return ImportResult(
            uri, info.etag, "failed", error=message, table=table_name, seconds=time.monotonic() - started, code=code
        )

    try:
        return _import(
            job,
            store,
            info,
            uri,
            table_name,
            fingerprint,
            started,
            catalog=catalog,
            ledger=ledger,
            batch_rows=batch_rows,
            chunk_rows=chunk_rows,
            since=since,
        )
    except ObjectChangedError as exc:
        msg = f"{exc} (this version is gone; the new version is imported on the next poll)"
        return failed("OBJECT_CHANGED", msg)
    except TransientError as exc:
        ledger.mark_retry(job.name, info, error=str(exc))
        raise
    except TerminalError as exc:
        return failed(_failure_code(exc), str(exc))
    except Exception as exc:
        if _is_transient(exc):
            ledger.mark_retry(job.name, info, error=f"{type(exc).__name__}: {exc}")
            raise StorageUnavailableError(f"{uri}: {type(exc).__name__}: {printable(exc, 500)}; retrying") from exc
        problem = internal_problem(uri, exc)
        log.exception("%s: unexpected error", printable(uri))
        return failed(problem.code, str(problem))


def _import(
    job: ImportJob,
    store: ObjectStore,
    info: ObjectInfo,
    uri: str,
    table_name: str,
    fingerprint: str,
    started: float,
    *,
    catalog: Catalog,
    ledger: Ledger,
    batch_rows: int,
    chunk_rows: int,
    since: dt.datetime | None,
) -> ImportResult:
    if info.size > job.max_file_bytes:
        raise FileTooLargeError(
            f"{uri}: {info.size:,} bytes is over the job's max_file_bytes ({job.max_file_bytes:,}); split the "
            "file or raise max_file_bytes in the job YAML",
            code="FILE_TOO_LARGE",
        )
    fmt = format_for_key(info.key, job.formats)
    if fmt is None:
        raise FileFormatError(
            f"{uri}: extension not among the job's formats {list(job.formats)}", code="FORMAT_NOT_ALLOWED"
        )
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return _import_once(
                job,
                store,
                info,
                uri,
                fmt,
                table_name,
                fingerprint,
                started,
                catalog=catalog,
                ledger=ledger,
                batch_rows=batch_rows,
                chunk_rows=chunk_rows,
                since=since,
            )
        except _SchemaRace as exc:
            log.info("%s; writing the file again (attempt %d)", printable(exc), attempt + 2)
    raise CommitConflictError(f"{uri}: the table's schema kept changing while the file was written; retry the task")


def _import_once(
    job: ImportJob,
    store: ObjectStore,
    info: ObjectInfo,
    uri: str,
    fmt: str,
    table_name: str,
    fingerprint: str,
    started: float,
    *,
    catalog: Catalog,
    ledger: Ledger,
    batch_rows: int,
    chunk_rows: int,
    since: dt.datetime | None,
) -> ImportResult:
    ingested_at = dt.datetime.now(dt.UTC)
    quarantine = _Quarantine(job, uri, info.etag, ingested_at)
    counts = {"read": 0, "bad": 0}
    data_files: list = []
    io = None
    try:
        table = load_table(catalog, job.table_identifier)
        table_schema = table.schema().as_arrow() if table is not None else None
        with store.open(info.key, etag=info.etag) as f:
            mapper = make_mapper(
                job,
                read_schema(f, fmt, source=uri, max_bytes=job.max_file_bytes),
                uri,
                ingested_at,
                fmt,
                table_schema=table_schema,
            )
            batches = read_batches(
                f, fmt, source=uri, batch_rows=batch_rows, csv_as_strings=fmt == "csv", max_bytes=job.max_file_bytes
            )

            def mapped_batches() -> Iterator[pa.RecordBatch]:
                row = 1
                for b in batches:
                    if not b.num_rows:
                        continue
                    mapped, problems = mapper.map(b, row)
                    counts["read"] += b.num_rows
                    if problems:
                        if job.on_error == OnError.abort_file:
                            raise RecordErrors(problems[:MAX_PROBLEMS])
                        bad = quarantine.add(b, row, problems)
                        counts["bad"] += len(bad)
                        if counts["bad"] > job.max_bad_rows:
                            raise TooManyBadRowsError(
                                f"{uri}: more than max_bad_rows={job.max_bad_rows} bad rows (on_error: skip_rows); "
                                f"the first ones:\n" + "\n".join(f"  {p}" for p in problems[:20])
                            )
                        keep = pa.array([i not in bad for i in range(b.num_rows)])
                        mapped = mapped.filter(keep)
                    row += b.num_rows
                    yield mapped

            stream = mapped_batches()
            first = next(stream, None)
            if first is None:  # a header (schema) and no rows: FILE_EMPTY, as validate_file reports it
                raise FileFormatError(
                    f"{uri}: the file has a header but no data rows; upload the complete file with "
                    "at least one data row",
                    code="FILE_EMPTY",
                )
            if table is not None:
                # an earlier, unfinished attempt may have committed without reaching the ledger
                done = find_committed(table, uri, info.etag, since) if since is not None else None
                if done is not None:
                    rows = int(done.summary.get(PROP_ROWS, "0"))
                    log.info(
                        "%s already committed in snapshot %s; repairing the ledger only",
                        printable(uri),
                        done.snapshot_id,
                    )
                    ledger.mark_succeeded(
                        job.name,
                        info,
                        rows=rows,
                        table_name=table_name,
                        snapshot_id=done.snapshot_id,
                        fingerprint=fingerprint,
                    )
                    return ImportResult(
                        uri,
                        info.etag,
                        "already-imported",
                        rows,
                        table_name,
                        done.snapshot_id,
                        seconds=time.monotonic() - started,
                    )
                check_table_types(first.schema, table_schema, uri)
            # table creation and new columns are staged in the transaction that commits the data
            tx = _begin(catalog, job, table, first.schema)
            io = transaction_io(tx)
            target = tx.table_metadata.schema().as_arrow()
            with DataFileWriter(tx.table_metadata, io, chunk_rows) as writer:
                try:
                    for mapped in itertools.chain([first], stream):
                        if not mapped.num_rows:
                            continue
                        chunk_done = writer.add(_conform(mapped, target, uri))
                        if chunk_done:
                            log.info("%s: %d rows read, written or being written", printable(uri), writer.rows)
                    data_files, total = writer.finish(), writer.rows
                finally:
                    data_files = data_files or writer.data_files
        if counts["bad"] and counts["bad"] > job.max_bad_fraction * counts["read"]:
            raise TooManyBadRowsError(
                f"{uri}: {counts['bad']} of {counts['read']} rows are bad, over max_bad_fraction="
                f"{job.max_bad_fraction:g} (on_error: skip_rows); fix the file or raise the threshold"
            )
        quarantine.commit(catalog, since)
        replace = table is not None and ledger.has_other_version(job.name, info)
        props = {PROP_SOURCE_FILE: uri, PROP_SOURCE_ETAG: info.etag, PROP_JOB: job.name, PROP_ROWS: str(total)}
        note = (
            f"{counts['bad']} bad row(s) kept in {'.'.join(job.quarantine_table_identifier)}" if counts["bad"] else None
        )
        if not data_files and not replace:
            ledger.mark_succeeded(
                job.name,
                info,
                rows=0,
                table_name=table_name,
                snapshot_id=None,
                bad_rows=counts["bad"],
                fingerprint=fingerprint,
                note=note,
            )
            return ImportResult(uri, info.etag, "imported", 0, table_name, seconds=time.monotonic() - started)
        table, snap, replaced = _commit(
            catalog, job, tx, first.schema, uri, info.etag, data_files, props, replace, since or ingested_at
        )
        data_files = []  # committed: referenced by the table now
    except BaseException:
        if io is not None and data_files:
            delete_quietly(io, data_files)
        raise
    snapshot_id = snap.snapshot_id if snap is not None else None
    rows = int(snap.summary.get(PROP_ROWS, total)) if snap is not None else total
    ledger.mark_succeeded(
        job.name,
        info,
        rows=rows,
        table_name=table_name,
        snapshot_id=snapshot_id,
        bad_rows=counts["bad"],
        fingerprint=fingerprint,
        note=note,
    )
    seconds = time.monotonic() - started
    log.info(
        "%s: committed %d rows in snapshot %s (%.2fs)%s%s",
        printable(uri),
        rows,
        snapshot_id,
        seconds,
        "; replaced the rows of an earlier version" if replaced else "",
        f"; {note}" if note else "",
    )
    return ImportResult(
        uri, info.etag, "imported", rows, table_name, snapshot_id, replaced, seconds=seconds, bad_rows=counts["bad"]
    )
