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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

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
T = TypeVar("T")

PROP_SOURCE_FILE = "obslake.source-file"
PROP_SOURCE_ETAG = "obslake.source-etag"
PROP_JOB = "obslake.job"
PROP_ROWS = "obslake.rows"
PROP_SOURCE_FILES = "obslake.source-files"
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


def source_files(summary: Any) -> list[tuple[str, str, int]]:
    """The (uri, etag, rows) of the file versions a snapshot committed (from its summary properties).

    A one-file import names its file in ``obslake.source-file``/``-etag``/``obslake.rows``; a batch lists
    its files in ``obslake.source-files`` (JSON ``[[uri, etag, rows], ...]``). Other snapshots (upkeep,
    deletes) name none.
    """
    if summary is None:
        return []
    listed = summary.get(PROP_SOURCE_FILES)
    if listed:
        try:
            return [(str(u), str(e), int(r)) for u, e, r in json.loads(listed)]
        except (ValueError, TypeError):
            log.warning("a snapshot's %s is not a JSON list of [uri, etag, rows]; ignored", PROP_SOURCE_FILES)
            return []
    uri = summary.get(PROP_SOURCE_FILE)
    if uri is None:
        return []
    try:
        rows = int(summary.get(PROP_ROWS, "0"))
    except ValueError:
        rows = 0
    return [(uri, summary.get(PROP_SOURCE_ETAG, ""), rows)]


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
        if committed_rows(snap, uri, etag) is not None:
            return snap
    return None


def committed_rows(snap: Any, uri: str, etag: str) -> int | None:
    """The rows ``snap`` committed of this file version; None if it did not commit it."""
    for u, e, rows in source_files(snap.summary):
        if u == uri and e == etag:
            return rows
    return None


def _conform(batch: pa.RecordBatch, target: pa.Schema, uri: str, exact: bool = True) -> pa.RecordBatch:
    """Cast ``batch`` to the table's Arrow schema: missing columns become nulls, safe casts only.

    ``exact=False`` keeps a ``string``/``binary`` column where the table's Arrow schema says
    ``large_string``/``large_binary`` (both are Iceberg's string/binary and pyiceberg writes either as
    is): widening every offset of every text column cost ~5 % of a large file's import. The batches of
    one file then share one schema; batches of several files (one commit) use ``exact``.
    """
    arrays, fields = [], []
    for field in target:
        idx = batch.schema.get_field_index(field.name)
        if idx < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            fields.append(field)
            continue
        arr = batch.column(idx)
        if not exact and (arr.type, field.type) in _NARROW_OK:
            arrays.append(arr)
            fields.append(field.with_type(arr.type))
            continue
        fields.append(field)
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
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=target.metadata))


_NARROW_OK = {(pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())}


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


def _commit_state_unknown(exc: BaseException) -> bool:
    """The catalog may have committed although the call failed: the written files must then be kept."""
    from pyiceberg.exceptions import CommitStateUnknownException

    return isinstance(exc, CommitStateUnknownException)


def _failure_code(exc: TerminalError) -> str:
    """The README code of a terminal error: a record error's first problem, else the error's own code."""
    if isinstance(exc, RecordErrors) and exc.problems:
        return exc.problems[0].code
    return error_code(exc)


@dataclasses.dataclass
class _File:
    """One file version being imported: what each step needs to record its outcome."""

    job: ImportJob
    ledger: Ledger
    info: ObjectInfo
    uri: str
    table_name: str
    fingerprint: str
    started: float = dataclasses.field(default_factory=time.monotonic)
    since: dt.datetime | None = None  # when the unfinished attempts on this version began (mark_pending)
    began: bool = False  # this attempt was counted in the ledger (start)

    @classmethod
    def of(cls, job: ImportJob, ledger: Ledger, store: ObjectStore, info: ObjectInfo) -> _File:
        """The bookkeeping of ``info`` (a version of a file under ``store``) for ``job``."""
        table_name = ".".join(job.table_identifier)
        return cls(job, ledger, info, store.uri(info.key), table_name, job.schema_.fingerprint())

    def result(self, status: str, rows: int = 0, snapshot_id: int | None = None, **kw: Any) -> ImportResult:
        """This file's :class:`ImportResult`."""
        seconds = time.monotonic() - self.started
        return ImportResult(self.uri, self.info.etag, status, rows, self.table_name, snapshot_id, seconds=seconds, **kw)

    def imported_already(self) -> ImportResult | None:
        """The result of a version the ledger records as imported (the ledger is the index), else None."""
        done = self.ledger.get(self.job.name, self.info)
        if done is None or done["status"] != "succeeded":
            return None
        log.info(
            "%s (etag %s) was imported already (ledger); nothing to do",
            printable(self.uri),
            printable(self.info.etag),
        )
        return self.result("already-imported", done["rows"] or 0, done["snapshot_id"])

    def start(self, count: bool = True) -> None:
        """The ledger row goes to ``pending``; remember since when earlier attempts are unfinished."""
        self.since = self.ledger.mark_pending(self.job.name, self.info, count=count)
        self.began = True

    def check(self) -> str:
        """The file's format, once its size and extension are allowed by the job."""
        job, info = self.job, self.info
        if info.size > job.max_file_bytes:
            raise FileTooLargeError(
                f"{self.uri}: {info.size:,} bytes is over the job's max_file_bytes ({job.max_file_bytes:,}); "
                "split the file or raise max_file_bytes in the job YAML",
                code="FILE_TOO_LARGE",
            )
        fmt = format_for_key(info.key, job.formats)
        if fmt is None:
            raise FileFormatError(
                f"{self.uri}: extension not among the job's formats {list(job.formats)}", code="FORMAT_NOT_ALLOWED"
            )
        return fmt

    def committed_earlier(self, table: Table | None) -> ImportResult | None:
        """An unfinished earlier attempt that committed without reaching the ledger: repair the ledger."""
        if table is None or self.since is None:
            return None
        snap = find_committed(table, self.uri, self.info.etag, self.since)
        if snap is None:
            return None
        rows = committed_rows(snap, self.uri, self.info.etag) or 0
        log.info(
            "%s already committed in snapshot %s; repairing the ledger only", printable(self.uri), snap.snapshot_id
        )
        self.succeeded(rows, snap.snapshot_id)
        return self.result("already-imported", rows, snap.snapshot_id)

    def succeeded(self, rows: int, snapshot_id: int | None, bad_rows: int = 0, note: str | None = None) -> None:
        """The ledger row goes to ``succeeded``."""
        self.ledger.mark_succeeded(
            self.job.name,
            self.info,
            rows=rows,
            table_name=self.table_name,
            snapshot_id=snapshot_id,
            bad_rows=bad_rows,
            fingerprint=self.fingerprint,
            note=note,
        )

    def failed(self, code: str, message: str) -> ImportResult:
        """The file failed for a reason of its own: ledger row ``failed`` with the code and message."""
        log.error("%s", printable(message, 4000))
        self.ledger.mark_failed(self.job.name, self.info, error=message, fingerprint=self.fingerprint, code=code)
        return self.result("failed", error=message, code=code)

    def guard(self, work: Callable[[], T]) -> T | ImportResult:
        """``work()``, with whatever it raises turned into this file's outcome.

        A fault of the file (anything but a transient error) returns its ``failed`` result; a transient
        one marks the ledger row for retry and raises :class:`TransientError`.
        """
        try:
            return work()
        except ObjectChangedError as exc:
            return self.failed(
                "OBJECT_CHANGED", f"{exc} (this version is gone; the new version is imported on the next poll)"
            )
        except TransientError as exc:
            self.ledger.mark_retry(self.job.name, self.info, error=str(exc))
            raise
        except TerminalError as exc:
            return self.failed(_failure_code(exc), str(exc))
        except Exception as exc:
            if _is_transient(exc):
                self.ledger.mark_retry(self.job.name, self.info, error=f"{type(exc).__name__}: {exc}")
                raise StorageUnavailableError(
                    f"{self.uri}: {type(exc).__name__}: {printable(exc, 500)}; retrying"
                ) from exc
            problem = internal_problem(self.uri, exc)
            log.exception("%s: unexpected error", printable(self.uri))
            return self.failed(problem.code, str(problem))


@dataclasses.dataclass
class _Read:
    """What reading and mapping a file produced so far (the stream fills it as it goes)."""

    rows_read: int = 0
    bad_rows: int = 0


def _mapped_batches(
    f: _File,
    fh: Any,
    fmt: str,
    ingested_at: dt.datetime,
    table_schema: pa.Schema | None,
    quarantine: _Quarantine,
    read: _Read,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The file's rows mapped to the table's columns, in record batches; bad rows abort the file or, under
    ``on_error: skip_rows``, go to ``quarantine``. A file with a header and no rows raises FILE_EMPTY."""
    job, uri = f.job, f.uri
    mapper = make_mapper(
        job,
        read_schema(fh, fmt, source=uri, max_bytes=job.max_file_bytes),
        uri,
        ingested_at,
        fmt,
        table_schema=table_schema,
        defer_duplicates=job.on_error == OnError.abort_file,
    )
    batches = read_batches(
        fh, fmt, source=uri, batch_rows=batch_rows, csv_as_strings=fmt == "csv", max_bytes=job.max_file_bytes
    )
    row = 1
    for b in batches:
        if not b.num_rows:
            continue
        mapped, problems = mapper.map(b, row)
        read.rows_read += b.num_rows
        if problems:
            if job.on_error == OnError.abort_file:
                raise RecordErrors(problems[:MAX_PROBLEMS])
            bad = quarantine.add(b, row, problems)
            read.bad_rows += len(bad)
            if read.bad_rows > job.max_bad_rows:
                raise TooManyBadRowsError(
                    f"{uri}: more than max_bad_rows={job.max_bad_rows} bad rows (on_error: skip_rows); "
                    f"the first ones:\n" + "\n".join(f"  {p}" for p in problems[:20])
                )
            mapped = mapped.filter(pa.array([i not in bad for i in range(b.num_rows)]))
        row += b.num_rows
        yield mapped
    late = mapper.finish()  # repeated ids (deferred under abort_file): the file's data files are then discarded
    if late:
        raise RecordErrors(late[:MAX_PROBLEMS])
    if not read.rows_read:  # a header (schema) and no rows: FILE_EMPTY, as validate_file reports it
        raise FileFormatError(
            f"{uri}: the file has a header but no data rows; upload the complete file with at least one data row",
            code="FILE_EMPTY",
        )


def _check_bad_fraction(f: _File, read: _Read) -> str | None:
    """Raise if too large a fraction of rows was bad (skip_rows); else the note on the kept bad rows."""
    if not read.bad_rows:
        return None
    if read.bad_rows > f.job.max_bad_fraction * read.rows_read:
        raise TooManyBadRowsError(
            f"{f.uri}: {read.bad_rows} of {read.rows_read} rows are bad, over max_bad_fraction="
            f"{f.job.max_bad_fraction:g} (on_error: skip_rows); fix the file or raise the threshold"
        )
    return f"{read.bad_rows} bad row(s) kept in {'.'.join(f.job.quarantine_table_identifier)}"


def import_file(
    job: ImportJob,
    store: ObjectStore,
    info: ObjectInfo,
    *,
    catalog: Catalog,
    ledger: Ledger,
    batch_rows: int = 65_536,
    chunk_rows: int = CHUNK_ROWS,
    attempt_counted: bool = False,
) -> ImportResult:
    """Import one file version exactly once, in its own commit, streamed (see module docstring).

    ``attempt_counted``: a batch began this attempt and hands the file over (the ledger counted it).

    Returns:
        The outcome. Whatever is wrong with the file - any exception while reading, mapping or writing
        it - returns ``status="failed"`` with a code (and is in the ledger); the table is then unchanged.

    Raises:
        TransientError: retry the call (the ledger row stays ``pending``, with this error and the
            attempt count, shown by ``obslake status``).
    """
    f = _File.of(job, ledger, store, info)
    done = f.imported_already()
    if done is not None:
        return done
    f.start(count=not attempt_counted)
    log.info(
        "importing %s (etag %s, %d bytes) into %s", printable(f.uri), printable(info.etag), info.size, f.table_name
    )
    return f.guard(lambda: _import(f, store, catalog, batch_rows, chunk_rows))


def _import(f: _File, store: ObjectStore, catalog: Catalog, batch_rows: int, chunk_rows: int) -> ImportResult:
    fmt = f.check()
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return _import_once(f, store, catalog, fmt, batch_rows, chunk_rows)
        except _SchemaRace as exc:
            log.info("%s; writing the file again (attempt %d)", printable(exc), attempt + 2)
    raise CommitConflictError(f"{f.uri}: the table's schema kept changing while the file was written; retry the task")


def _import_once(
    f: _File, store: ObjectStore, catalog: Catalog, fmt: str, batch_rows: int, chunk_rows: int
) -> ImportResult:
    job, info, uri = f.job, f.info, f.uri
    ingested_at = dt.datetime.now(dt.UTC)
    quarantine = _Quarantine(job, uri, info.etag, ingested_at)
    read = _Read()
    data_files: list = []
    io = None
    try:
        table = load_table(catalog, job.table_identifier)
        table_schema = table.schema().as_arrow() if table is not None else None
        with store.open(info.key, etag=info.etag) as fh:
            stream = _mapped_batches(f, fh, fmt, ingested_at, table_schema, quarantine, read, batch_rows)
            first = next(stream)
            done = f.committed_earlier(table)
            if done is not None:
                return done
            if table is not None:
                check_table_types(first.schema, table_schema, uri)
            # table creation and new columns are staged in the transaction that commits the data
            tx = _begin(catalog, job, table, first.schema)
            io = transaction_io(tx)
            target = tx.table_metadata.schema().as_arrow()
            writer = DataFileWriter(tx.table_metadata, io, chunk_rows)
            try:
                with writer:
                    for mapped in itertools.chain([first], stream):
                        if not mapped.num_rows:
                            continue
                        if writer.add(_conform(mapped, target, uri, exact=False)):
                            log.info("%s: %d rows read, written or being written", printable(uri), writer.rows)
                    data_files, total = writer.finish(), writer.rows
            finally:  # after the chunk in flight was waited for: its files are in writer.data_files too
                data_files = data_files or writer.data_files
        note = _check_bad_fraction(f, read)
        quarantine.commit(catalog, f.since)
        replace = table is not None and f.ledger.has_other_version(job.name, info)
        if not data_files and not replace:
            f.succeeded(0, None, read.bad_rows, note)
            return f.result("imported")
        props = {PROP_SOURCE_FILE: uri, PROP_SOURCE_ETAG: info.etag, PROP_JOB: job.name, PROP_ROWS: str(total)}
        table, snap, replaced = _commit(
            catalog, job, tx, first.schema, uri, info.etag, data_files, props, replace, f.since or ingested_at
        )
        data_files = []  # committed: referenced by the table now
    except BaseException as exc:
        if io is not None and data_files and not _commit_state_unknown(exc):
            delete_quietly(io, data_files)
        raise
    snapshot_id = snap.snapshot_id if snap is not None else None
    rows = committed_rows(snap, uri, info.etag) if snap is not None else None
    rows = total if rows is None else rows
    f.succeeded(rows, snapshot_id, read.bad_rows, note)
    log.info(
        "%s: committed %d rows in snapshot %s (%.2fs)%s%s",
        printable(uri),
        rows,
        snapshot_id,
        time.monotonic() - f.started,
        "; replaced the rows of an earlier version" if replaced else "",
        f"; {note}" if note else "",
    )
    return f.result("imported", rows, snapshot_id, replaced=replaced, bad_rows=read.bad_rows)


# -- batches of small files ------------------------------------------------------------------------
def plan_batches(
    files: list[ObjectInfo], max_files: int, max_bytes: int, large_file_bytes: int
) -> list[list[ObjectInfo]]:
    """Group files for the import tasks: a file over ``large_file_bytes`` alone, the others in their order in
    groups of at most ``max_files`` files and ``max_bytes`` bytes (``max_files=1``: every file alone)."""
    groups: list[list[ObjectInfo]] = []
    current: list[ObjectInfo] = []
    size = 0
    for info in files:
        if max_files <= 1 or info.size > large_file_bytes:
            groups.append([info])
            continue
        if current and (len(current) >= max_files or size + info.size > max_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(info)
        size += info.size
    if current:
        groups.append(current)
    return groups


class _PartlyCommitted(Exception):
    """Some files of a batch were committed by another worker while it was written: each file is then
    imported alone (which finds its commit and repairs the ledger, or imports it)."""


def _committed_since(table: Table, since: dt.datetime) -> set[tuple[str, str]]:
    """(uri, etag) of every file version committed since ``since`` (less :data:`CLOCK_SKEW`)."""
    cutoff_ms = (since - CLOCK_SKEW).timestamp() * 1000
    out: set[tuple[str, str]] = set()
    for snap in snapshot_lineage(table):
        if snap.timestamp_ms < cutoff_ms:
            break
        out.update((u, e) for u, e, _ in source_files(snap.summary))
    return out


class _Alone:
    """A file of a batch that needs a commit of its own: it adds columns, or replaces an earlier version."""

    def __init__(self, why: str):
        self.why = why


@dataclasses.dataclass
class _Staged:
    """A file of a batch that was read and mapped completely; its rows wait in the batch's data files."""

    file: _File
    rows: int
    bad_rows: int
    note: str | None


def import_files(
    job: ImportJob,
    store: ObjectStore,
    files: list[ObjectInfo],
    *,
    catalog: Catalog,
    ledger: Ledger,
    batch_rows: int = 65_536,
    chunk_rows: int = CHUNK_ROWS,
) -> list[ImportResult]:
    """Import a batch of file versions exactly once each, the small ones in ONE commit.

    Each file is read and mapped completely on its own (a bad file fails alone and never reaches the
    commit); the good ones are written into shared data files and committed in one Iceberg transaction
    whose snapshot lists every file with its etag and rows (``obslake.source-files``); then each gets its
    ledger row. A commit conflict retries the same data files against the refreshed table, never twice
    (the retry first looks for the batch among the snapshots committed since it began). The table's
    first file, a file that adds columns or replaces an earlier version, and every file of a batch whose
    writing or commit failed for a reason other than a transient one are imported alone by
    :func:`import_file`, so one file's schema change or fault never reaches the others.

    Returns:
        One :class:`ImportResult` per file that reached an outcome, in order.

    Raises:
        TransientError: after every other file was handled, if some hit a transient error (their
            ledger rows stay ``pending``; retry the call: the imported ones are skipped by the ledger).
    """
    unique = list({(f.bucket, f.key, f.etag): f for f in files}.values())
    if len(unique) < len(files):  # the same version twice (a retried mapping): imported once
        log.warning("%d file version(s) listed twice in the batch; each is imported once", len(files) - len(unique))
        files = unique
    results: dict[int, ImportResult] = {}
    retry: list[str] = []

    started: set[int] = set()  # files whose attempt the batch began (counted in the ledger)

    def alone(i: int) -> None:
        try:
            results[i] = import_file(
                job,
                store,
                files[i],
                catalog=catalog,
                ledger=ledger,
                batch_rows=batch_rows,
                chunk_rows=chunk_rows,
                attempt_counted=i in started,
            )
        except TransientError as exc:
            retry.append(str(exc))
        except Exception as exc:  # the ledger itself failed while recording the outcome
            log.exception("%s: cannot record its outcome; retrying", printable(store.uri(files[i].key)))
            retry.append(f"{store.uri(files[i].key)}: {type(exc).__name__}: {exc}")

    todo = list(range(len(files)))
    table = load_table(catalog, job.table_identifier) if len(todo) > 1 else None
    while todo and (table is None or len(todo) == 1):  # the table's first file creates it, alone
        alone(todo.pop(0))
        if todo:
            table = load_table(catalog, job.table_identifier)
    if todo and table is not None:
        try:
            batch = _Batch(job, store, catalog, ledger, table, batch_rows, chunk_rows)
        except Exception:  # no transaction for the batch: each file alone says what is wrong
            log.exception("cannot begin the batch's transaction; its files are imported alone")
            later = todo
        else:
            later = batch.run([(i, files[i]) for i in todo], results, retry, started)
        for i in later:
            alone(i)
    if retry:
        raise StorageUnavailableError(
            f"{len(retry)} of {len(files)} file(s) hit a transient error and stay pending for the retry: "
            + "; ".join(printable(r, 300) for r in retry[:5])
        )
    return [results[i] for i in sorted(results)]


class _Batch:
    """Small files of one job staged into shared data files and committed in one transaction."""

    def __init__(
        self,
        job: ImportJob,
        store: ObjectStore,
        catalog: Catalog,
        ledger: Ledger,
        table: Table,
        batch_rows: int,
        chunk_rows: int,
    ):
        self.job, self.store, self.catalog, self.ledger = job, store, catalog, ledger
        self.batch_rows, self.chunk_rows = batch_rows, chunk_rows
        self.table, self.table_schema = table, table.schema().as_arrow()
        self.ingested_at = dt.datetime.now(dt.UTC)
        self.tx = _begin(catalog, job, table, self.table_schema)  # no new columns: the table's properties only
        self.target = self.tx.table_metadata.schema().as_arrow()

    def run(
        self,
        items: list[tuple[int, ObjectInfo]],
        results: dict[int, ImportResult],
        retry: list[str],
        started: set[int],
    ) -> list[int]:
        """Stage each file, commit the staged ones; fills ``results``/``retry`` and ``started`` (the files
        whose attempt began here); returns the indices to import alone."""
        staged: dict[int, _Staged] = {}
        later: list[int] = []
        io = transaction_io(self.tx)
        data_files: list[DataFile] = []
        writer = DataFileWriter(self.tx.table_metadata, io, self.chunk_rows)
        broken = False
        try:
            with writer:
                for n, (i, info) in enumerate(items):
                    if broken:
                        later.append(i)
                        continue
                    f = _File.of(self.job, self.ledger, self.store, info)
                    try:
                        outcome = f.guard(lambda f=f: self._stage(f))  # type: ignore[misc]
                    except TransientError as exc:
                        retry.append(str(exc))
                        continue
                    except Exception as exc:  # the ledger itself failed while recording it
                        log.exception("%s: cannot record its outcome; retrying", printable(f.uri))
                        retry.append(f"{f.uri}: {type(exc).__name__}: {exc}")
                        continue
                    if f.began:  # counted here: a hand-over to the one-file path does not count it again
                        started.add(i)
                    if isinstance(outcome, ImportResult):
                        results[i] = outcome
                    elif isinstance(outcome, _Alone):
                        log.info("%s is imported alone: %s", printable(f.uri), outcome.why)
                        later.append(i)
                    else:
                        mapped, staged[i] = outcome
                        try:
                            for b in mapped:
                                writer.add(b)
                        except Exception:  # writing the batch's data files failed: no file of it is at fault
                            log.exception("writing the batch's data files failed; its files are imported alone")
                            broken = True
                            later.extend(staged)
                            staged.clear()
                            continue
                    if (n + 1) % 100 == 0:
                        log.info("batch: %d of %d file(s) read", n + 1, len(items))
                if staged:
                    data_files = writer.finish()
        except Exception:
            log.exception("writing the batch's data files failed; its files are imported alone")
            delete_quietly(io, writer.data_files)
            return sorted(later + list(staged))
        if not staged:
            delete_quietly(io, writer.data_files)
            return sorted(later)
        return sorted(later + self._commit(staged, data_files, io, results, retry))

    def _stage(self, f: _File) -> ImportResult | _Alone | tuple[list[pa.RecordBatch], _Staged]:
        """Read and map one file completely (it is small): its rows conformed to the table, or why not."""
        done = f.imported_already()
        if done is not None:
            return done
        f.start()
        fmt = f.check()
        if self.ledger.has_other_version(self.job.name, f.info):
            return _Alone("it replaces the rows of an earlier version of the file")
        quarantine = _Quarantine(self.job, f.uri, f.info.etag, self.ingested_at)
        read = _Read()
        with self.store.open(f.info.key, etag=f.info.etag) as fh:
            mapped = list(
                _mapped_batches(f, fh, fmt, self.ingested_at, self.table_schema, quarantine, read, self.batch_rows)
            )
        done = f.committed_earlier(self.table)
        if done is not None:
            return done
        mapped = [b for b in mapped if b.num_rows]
        if mapped:
            check_table_types(mapped[0].schema, self.table_schema, f.uri)
            new = [n for n in mapped[0].schema.names if self.target.get_field_index(n) < 0]
            if new:
                return _Alone(f"it adds column(s) {', '.join(new[:10])}")
        note = _check_bad_fraction(f, read)
        conformed = [_conform(b, self.target, f.uri) for b in mapped]
        quarantine.commit(self.catalog, f.since)
        rows = sum(b.num_rows for b in conformed)
        return conformed, _Staged(f, rows, read.bad_rows, note)

    def _commit(
        self,
        staged: dict[int, _Staged],
        data_files: list[DataFile],
        io: Any,
        results: dict[int, ImportResult],
        retry: list[str],
    ) -> list[int]:
        """Commit the staged files in one snapshot, then their ledger rows; the indices to import alone."""
        files = [s.file for s in staged.values()]
        listed = [[s.file.uri, s.file.info.etag, s.rows] for s in staged.values()]
        props = {
            PROP_SOURCE_FILES: json.dumps(listed, separators=(",", ":")),
            PROP_JOB: self.job.name,
            PROP_ROWS: str(sum(s.rows for s in staged.values())),
        }
        since = min([f.since for f in files if f.since is not None] + [self.ingested_at])
        probe = files[0]
        written = self.tx.table_metadata.schema()
        current = self.tx
        ident = self.job.table_identifier

        def attempt(n: int) -> Any:
            nonlocal current
            if n:  # a conflict: start again from the table as it is now (the batch may have committed)
                table = self.catalog.load_table(ident)
                done = find_committed(table, probe.uri, probe.info.etag, since)
                if done is not None and all(committed_rows(done, f.uri, f.info.etag) is not None for f in files):
                    return done  # this batch's own commit (an earlier attempt's)
                others = _committed_since(table, since) & {(f.uri, f.info.etag) for f in files}
                if others:  # another worker committed some of these files meanwhile: never twice
                    raise _PartlyCommitted(f"{len(others)} file(s) of the batch were committed by another worker")
                current = _begin(self.catalog, self.job, table, table.schema().as_arrow())
                if not same_field_ids(written, current.table_metadata.schema()):
                    raise _SchemaRace("the table's schema changed while the batch was written")
            if data_files:
                with current.update_snapshot(snapshot_properties=props).merge_append() as append:
                    for df in data_files:
                        append.append_data_file(df)
            table = current.commit_transaction()
            return find_committed(table, probe.uri, probe.info.etag, since)

        try:
            snap = commit_with_retry(attempt, what=f"a batch of {len(files)} file(s)") if data_files else None
        except Exception as exc:  # noqa: BLE001 - whatever it is, each file is then tried alone
            if not _commit_state_unknown(exc):
                delete_quietly(io, data_files)
            if isinstance(exc, TransientError) or _is_transient(exc):
                for f in files:
                    self.ledger.mark_retry(self.job.name, f.info, error=f"{type(exc).__name__}: {exc}")
                retry.extend(f"{f.uri}: {type(exc).__name__}: {printable(exc, 300)}" for f in files)
                return []
            log.warning("the batch's commit failed (%s: %s); its files are imported alone", type(exc).__name__, exc)
            return list(staged)
        snapshot_id = snap.snapshot_id if snap is not None else None
        log.info(
            "batch: committed %d file(s), %s rows in snapshot %s (%.2fs)",
            len(files),
            props[PROP_ROWS],
            snapshot_id,
            time.monotonic() - min(f.started for f in files),
        )
        for i, s in staged.items():
            try:
                s.file.succeeded(s.rows, snapshot_id if s.rows else None, s.bad_rows, s.note)
            except Exception as exc:  # committed; the retry repairs the ledger from the snapshot
                log.exception("%s: committed, but the ledger could not record it", printable(s.file.uri))
                retry.append(f"{s.file.uri}: committed; ledger: {type(exc).__name__}: {exc}")
                continue
            results[i] = s.file.result("imported", s.rows, snapshot_id if s.rows else None, bad_rows=s.bad_rows)
        return []
