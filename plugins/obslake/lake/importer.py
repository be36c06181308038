"""Import one file version into its model's Iceberg table, exactly once.

The recipe (one Iceberg transaction per file):

1. The ledger row for (job, bucket, key, etag) goes to ``pending``.
2. If a snapshot in the table's current lineage carries ``obslake.source-file`` = the file's URI and
   ``obslake.source-etag`` = its etag, the file is already committed (a crash hit between the commit
   and the ledger update): the ledger is repaired from the snapshot summary, nothing is appended.
3. The file is streamed in record batches, mapped (:class:`~obslake.schema.mapping.BatchMapper`) and
   written as Parquet data files in chunks of bounded size, each on a background thread while the
   next one is read (:class:`_DataFileWriter`) — memory does not grow with the file.
4. One transaction deletes the rows of any earlier version of the same key (the file changed) and
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
import functools
import itertools
import json
import logging
import random
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
from obslake.lake.ledger import Ledger
from obslake.schema.mapping import MAX_PROBLEMS, PARTITION_COLUMN, TS_TYPE, RecordErrors, check_table_types
from obslake.schema.traces import make_mapper
from obslake.schema.validate import error_code, internal_problem
from obslake.storage.base import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

PROP_SOURCE_FILE = "obslake.source-file"
PROP_SOURCE_ETAG = "obslake.source-etag"
PROP_JOB = "obslake.job"
PROP_ROWS = "obslake.rows"
COMMIT_ATTEMPTS = 12
CHUNK_ROWS = 1_000_000
CHUNK_BYTES = 64 * 1024**2
DICTIONARY_SAMPLE_ROWS = 10_000


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
def _table_definition(catalog: "Catalog", job: ImportJob, arrow_schema: pa.Schema) -> dict:
    """Schema (fresh ids), partition spec (identity on ``date``) and properties of a new model table."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import assign_fresh_schema_ids
    from pyiceberg.transforms import IdentityTransform

    schema = assign_fresh_schema_ids(catalog._convert_schema_if_needed(arrow_schema))
    spec = PartitionSpec(
        PartitionField(
            source_id=schema.find_field(PARTITION_COLUMN).field_id, field_id=1000,
            transform=IdentityTransform(), name=PARTITION_COLUMN,
        )
    )
    model = {"obslake.model.space": job.model.space, "obslake.model.name": job.model.name,
             "obslake.model.environment": job.model.environment.value} if job.model else {}
    properties = {
        **model,
        "obslake.job.kind": job.kind.value,
        # full (untruncated) bounds let a replace drop whole files by metadata alone
        "write.metadata.metrics.column._source_file": "full",
        "write.parquet.compression-codec": "zstd",
    }
    return {"schema": schema, "partition_spec": spec, "properties": properties}


def _ensure_namespace(catalog: "Catalog", namespace: str) -> None:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    try:
        catalog.create_namespace(namespace)
    except (NamespaceAlreadyExistsError, IntegrityError):  # SQL catalogs report a lost race as IntegrityError
        pass


def _load_table(catalog: "Catalog", ident: tuple[str, str]) -> "Table | None":
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        return None


def ensure_table(catalog: "Catalog", job: ImportJob, arrow_schema: pa.Schema) -> "Table":
    """Load the model's table, creating it (partitioned by ``date``) on first use.

    Imports do not call this: they create the table in the transaction of their first commit, so a
    file that fails never leaves a table (or a column) behind.
    """
    return _load_or_create(catalog, job.table_identifier, lambda: _table_definition(catalog, job, arrow_schema))


def _load_or_create(catalog: "Catalog", ident: tuple[str, str], definition) -> "Table":
    """Load a table, or create it (namespace too) from ``definition()``, tolerating a parallel creator."""
    from pyiceberg.exceptions import TableAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    table = _load_table(catalog, ident)
    if table is not None:
        return table
    _ensure_namespace(catalog, ident[0])
    try:
        return catalog.create_table(ident, **definition())
    except (TableAlreadyExistsError, IntegrityError):  # a parallel task created it first
        return catalog.load_table(ident)


def _lineage(table: "Table") -> Iterator:
    snap = table.current_snapshot()
    while snap is not None:
        yield snap
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None


def find_committed(table: "Table", uri: str, etag: str):
    """The snapshot in the current lineage that committed this file version, or None."""
    for snap in _lineage(table):
        s = snap.summary
        if s is not None and s.get(PROP_SOURCE_FILE) == uri and s.get(PROP_SOURCE_ETAG) == etag:
            return snap
    return None


def _has_earlier_version(table: "Table", uri: str) -> bool:
    return any(s.summary is not None and s.summary.get(PROP_SOURCE_FILE) == uri for s in _lineage(table))


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
                    code="TYPE_MISMATCH", column=field.name,
                ) from None
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=target)


# -- the import -------------------------------------------------------------------------------------
def _partition_tasks(metadata, df: pa.Table, write_uuid: uuid.UUID, counter) -> list | None:
    """pyiceberg write tasks for ``df``, one per ``date`` partition (and target file size), or None.

    The same tasks as pyiceberg's ``_dataframe_to_data_files`` makes for a table partitioned by
    ``identity(date)`` (the spec :func:`ensure_table` creates), split more cheaply: one vectorised
    ``filter`` per distinct date instead of a group-by and an Acero filter plan per partition (which
    cost as much as writing). None for any other spec: the caller uses pyiceberg's own split.
    """
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, pyarrow_to_schema
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, TableProperties, WriteTask
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.utils.config import Config
    from pyiceberg.utils.properties import property_as_int

    spec, schema = metadata.spec(), metadata.schema()
    if (len(spec.fields) != 1 or not isinstance(spec.fields[0].transform, IdentityTransform)
            or schema.find_column_name(spec.fields[0].source_id) != PARTITION_COLUMN
            or PARTITION_COLUMN not in df.column_names):
        return None
    target_file_size = property_as_int(metadata.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
                                       TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
    task_schema = pyarrow_to_schema(
        df.schema, name_mapping=schema.name_mapping,
        downcast_ns_timestamp_to_us=Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False,
        format_version=metadata.format_version,
    )
    dates = df[PARTITION_COLUMN]
    values = pc.unique(dates)
    tasks = []
    for value in values:
        if len(values) == 1:
            part = df
        else:
            part = df.filter(pc.equal(dates, value) if value.is_valid else pc.is_null(dates))
        key = PartitionKey(field_values=[PartitionFieldValue(field=spec.fields[0], value=value.as_py())],
                           partition_spec=spec, schema=schema)
        for batches in bin_pack_arrow_table(part, target_file_size):
            tasks.append(WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches,
                                   partition_key=key, schema=task_schema))
    return tasks


def _dictionary_columns(df: pa.Table) -> list[str]:
    """The Parquet columns of ``df`` to dictionary-encode: all but the mostly-distinct primitive ones.

    Arrow's Parquet writer dictionary-encodes every column until its dictionary outgrows the page
    limit (``write.parquet.dict-size-bytes``, 2 MiB). For a column of mostly distinct values - float
    features, ids, timestamps, ``_source_row`` - that is wasted work (most of the write time of a
    typical inference file) and makes the file larger than plain encoding under zstd. So a top-level
    primitive column more than half distinct in its first :data:`DICTIONARY_SAMPLE_ROWS` rows is
    written plain; the others (tags, labels, ``date``, the lineage constants, nested columns' leaves)
    keep dictionary encoding. Only the encoding differs: values and statistics are the same.
    """
    sample = df.slice(0, DICTIONARY_SAMPLE_ROWS)
    out: list[str] = []
    for field, col in zip(sample.schema, sample.columns):
        if pa.types.is_nested(field.type):
            out.extend(_leaf_paths(field.name, field.type))
            continue
        valid = len(col) - col.null_count
        try:
            mostly_distinct = valid > 0 and pc.count_distinct(col).as_py() * 2 > valid
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # a type without a hash kernel
            mostly_distinct = False
        if not mostly_distinct:
            out.append(field.name)
    return out


def _leaf_paths(path: str, t: pa.DataType) -> list[str]:
    """The Parquet leaf column paths of an Arrow field (as pyarrow names them, compliant nested types)."""
    if pa.types.is_struct(t):
        return [leaf for f in t for leaf in _leaf_paths(f"{path}.{f.name}", f.type)]
    if pa.types.is_map(t):
        return (_leaf_paths(f"{path}.key_value.key", t.key_type)
                + _leaf_paths(f"{path}.key_value.value", t.item_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_paths(f"{path}.list.element", t.value_type)
    return [path]


def _write_data_file(metadata, io, locations, task) -> "DataFile":
    """Write one pyiceberg ``WriteTask`` as a Parquet data file; its DataFile (with column metrics).

    The same file pyiceberg's ``write_file`` writes (schema with field ids, the table's Parquet
    properties and metrics modes), except that only :func:`_dictionary_columns` are dictionary-encoded.
    """
    from pyiceberg.io.fileformat import FileFormatFactory
    from pyiceberg.io.pyarrow import (
        _get_parquet_writer_kwargs,
        _to_requested_schema,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.schema import sanitize_column_names
    from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, TableProperties
    from pyiceberg.typedef import Record
    from pyiceberg.utils.config import Config
    from pyiceberg.utils.properties import property_as_int

    file_schema = sanitize_column_names(metadata.schema())
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    format_model = FileFormatFactory.get(FileFormat.PARQUET)
    df = pa.Table.from_batches([
        _to_requested_schema(requested_schema=file_schema, file_schema=task.schema, batch=batch,
                             downcast_ns_timestamp_to_us=downcast, include_field_ids=True, format_model=format_model)
        for batch in task.record_batches
    ])
    file_path = locations.new_data_location(data_file_name=task.generate_data_file_filename("parquet"),
                                            partition_key=task.partition_key)
    row_group_size = property_as_int(metadata.properties, TableProperties.PARQUET_ROW_GROUP_LIMIT,
                                     TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT)
    out = io.new_output(file_path)
    with out.create(overwrite=True) as fos:
        with pq.ParquetWriter(fos, schema=df.schema, store_decimal_as_integer=True,
                              use_dictionary=_dictionary_columns(df),
                              **_get_parquet_writer_kwargs(metadata.properties)) as writer:
            writer.write(df, row_group_size=row_group_size)
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=writer.writer.metadata,
        stats_columns=compute_statistics_plan(file_schema, metadata.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(file_schema),
    )
    return DataFile.from_args(
        content=DataFileContent.DATA, file_path=file_path, file_format=FileFormat.PARQUET,
        partition=task.partition_key.partition if task.partition_key else Record(),
        file_size_in_bytes=len(out), sort_order_id=None, spec_id=metadata.default_spec_id, equality_ids=None,
        key_metadata=None, **statistics.to_serialized_dict(),
    )


def _write_chunk(metadata, io, batches: list[pa.RecordBatch], write_uuid: uuid.UUID, counter) -> list:
    """Write ``batches`` as Parquet data files (one per partition and target file size); their DataFiles.

    The files of a chunk are written in parallel on pyiceberg's executor, as pyiceberg does.
    """
    from pyiceberg.io.pyarrow import _dataframe_to_data_files
    from pyiceberg.table.locations import load_location_provider
    from pyiceberg.utils.concurrent import ExecutorFactory

    df = pa.Table.from_batches(batches)
    tasks = _partition_tasks(metadata, df, write_uuid, counter)
    if tasks is None:
        return list(_dataframe_to_data_files(table_metadata=metadata, df=df, io=io,
                                             write_uuid=write_uuid, counter=counter))
    locations = load_location_provider(table_location=metadata.location, table_properties=metadata.properties)
    write = functools.partial(_write_data_file, metadata, io, locations)
    return list(ExecutorFactory.get_or_create().map(write, tasks))


class _DataFileWriter:
    """Writes the mapped rows of one file as Iceberg data files, overlapping writing with reading.

    :meth:`add` buffers batches; every ``chunk_rows`` rows or :data:`CHUNK_BYTES` bytes the buffer (a
    *chunk*) goes to a background thread, which splits it by partition and writes the Parquet data
    files while the caller reads and maps the next chunk. At most one chunk is being written at a
    time, so memory stays bounded by about two chunks whatever the file's size.

    Use it as a context manager: leaving the block (normally or by an exception) waits for the chunk
    in flight, so no data file is still being written after ``import_file`` returns. An error of the
    background write is raised by the next :meth:`add` or by :meth:`finish`.
    """

    def __init__(self, metadata, io, chunk_rows: int):
        self.metadata, self.io, self.chunk_rows = metadata, io, chunk_rows
        self.write_uuid, self.counter = uuid.uuid4(), itertools.count(0)
        self.data_files: list = []
        self.rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = self._buffered_bytes = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="obslake-write")
        self._in_flight: Future | None = None

    def __enter__(self) -> "_DataFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._in_flight is not None:
            wait([self._in_flight])  # its error, if any, was raised already or is moot after another error
        self._pool.shutdown(wait=True)

    def add(self, batch: pa.RecordBatch) -> bool:
        """Buffer one batch; True if that completed a chunk (now being written)."""
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        self._buffered_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self._buffered_rows >= self.chunk_rows or self._buffered_bytes >= CHUNK_BYTES:
            self._flush()
            return True
        return False

    def finish(self) -> list:
        """Write what is buffered, wait for all writes; the DataFiles of the whole file."""
        self._flush()
        self._collect()
        return self.data_files

    def _flush(self) -> None:
        if not self._buffer:
            return
        chunk, self._buffer, self._buffered_rows, self._buffered_bytes = self._buffer, [], 0, 0
        self._collect()  # one chunk in flight at most
        self._in_flight = self._pool.submit(self._write, chunk)

    def _write(self, chunk: list[pa.RecordBatch]) -> list:
        """Write one chunk (background thread); its DataFiles."""
        data_files = _write_chunk(self.metadata, self.io, chunk, self.write_uuid, self.counter)
        chunk.clear()
        # hand the chunk's freed memory back to the OS now rather than leave it to the allocator
        # (~50 MB less peak RSS importing a 2 GB CSV)
        pa.default_memory_pool().release_unused()
        return data_files

    def _collect(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            self.data_files.extend(future.result())


class _SchemaRace(Exception):
    """Another writer changed the table's schema so that the field ids of the written files no longer
    match: the file must be written again (rare: two files adding different columns at the same time)."""


def _begin(catalog: "Catalog", job: ImportJob, table: "Table | None", arrow_schema: pa.Schema):
    """A transaction that creates the table, or adds the file's new columns to it, with nothing committed.

    The data files are written against ``tx.table_metadata`` and appended in the same transaction,
    so the table (and any column) exists only if the file's data is committed.
    """
    if table is None:
        _ensure_namespace(catalog, job.table_identifier[0])
        return catalog.create_table_transaction(job.table_identifier,
                                                **_table_definition(catalog, job, arrow_schema))
    tx = table.transaction()
    current = set(table.schema().as_arrow().names)
    new = [f for f in arrow_schema if f.name not in current]
    if new:
        with tx.update_schema() as upd:
            upd.union_by_name(pa.schema(new))
    return tx


def _same_field_ids(written, now) -> bool:
    """True if every column of the written files has the same field id and type in ``now``."""
    for field in written.fields:
        try:
            other = now.find_field(field.name)
        except ValueError:
            return False
        if other.field_id != field.field_id or other.field_type != field.field_type:
            return False
    return True


def _commit(catalog: "Catalog", job: ImportJob, tx, arrow_schema: pa.Schema, uri: str, etag: str,
            data_files: list, props: dict[str, str], replace: bool):
    """Commit the file's transaction (table creation / new columns, replace, append), retrying conflicts.

    Returns:
        (table, the snapshot that holds the file (or None), whether an earlier version was replaced).

    Raises:
        _SchemaRace: the written files no longer match the table's field ids; write them again.
        CommitConflictError: still conflicting after :data:`COMMIT_ATTEMPTS` attempts (transient).
    """
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
    from pyiceberg.expressions import EqualTo
    from sqlalchemy.exc import IntegrityError

    written = tx.table_metadata.schema()
    for attempt in range(COMMIT_ATTEMPTS):
        if attempt:
            table = catalog.load_table(job.table_identifier)
            done = find_committed(table, uri, etag)
            if done is not None:
                return table, done, False
            replace = replace or _has_earlier_version(table, uri)
            tx = _begin(catalog, job, table, arrow_schema)
            if not _same_field_ids(written, tx.table_metadata.schema()):
                raise _SchemaRace(f"{uri}: the table's schema changed while the file was written")
        try:
            if replace:
                tx.delete(EqualTo("_source_file", uri), snapshot_properties={PROP_JOB: props[PROP_JOB]})
            if data_files or replace:
                with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
                    for df in data_files:
                        append.append_data_file(df)
            table = tx.commit_transaction()
            return table, find_committed(table, uri, etag), replace
        except (CommitFailedException, TableAlreadyExistsError, IntegrityError) as exc:
            wait = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
            log.info("%s: commit conflict (%s); retrying in %.2fs", printable(uri), printable(exc, 200), wait)
            time.sleep(wait)
        except Exception as exc:  # sqlite "database is locked" and friends
            if "locked" not in str(exc).lower():
                raise
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
    raise CommitConflictError(f"{uri}: commit kept conflicting after {COMMIT_ATTEMPTS} attempts; retry the task")


class TooManyBadRowsError(TerminalError):
    """``on_error: skip_rows`` but the file has more bad rows than the job allows."""

    code = "TOO_MANY_BAD_ROWS"


QUARANTINE_SCHEMA = pa.schema([
    ("_source_file", pa.string()), ("_source_etag", pa.string()), ("_source_row", pa.int64()),
    ("_ingested_at", TS_TYPE), ("error_codes", pa.string()), ("errors", pa.string()),
    ("record", pa.string()),
])


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
            self.rows.append({
                "_source_file": self.uri, "_source_etag": self.etag, "_source_row": first_row + idx,
                "_ingested_at": self.ingested_at, "error_codes": ",".join(sorted({p.code for p in probs})),
                "errors": "\n".join(str(p) for p in probs), "record": json.dumps(record, default=str)[:100_000],
            })
        return set(by_row)

    def commit(self, catalog: "Catalog") -> None:
        """Append the bad rows to ``<table>__quarantine`` exactly once per file version."""
        if not self.rows:
            return
        ident = self.job.quarantine_table_identifier
        table = _load_or_create(catalog, ident, lambda: {"schema": QUARANTINE_SCHEMA})
        if find_committed(table, self.uri, self.etag) is not None:
            return
        props = {PROP_SOURCE_FILE: self.uri, PROP_SOURCE_ETAG: self.etag, PROP_JOB: self.job.name,
                 PROP_ROWS: str(len(self.rows))}
        data = pa.Table.from_pylist(self.rows, QUARANTINE_SCHEMA)
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(COMMIT_ATTEMPTS):
            try:
                table.append(data, snapshot_properties=props)
                log.info("%s: %d bad row(s) kept in %s", self.uri, len(self.rows), ".".join(ident))
                return
            except CommitFailedException:
                table.refresh()
                if find_committed(table, self.uri, self.etag) is not None:
                    return
                time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        raise CommitConflictError(f"{self.uri}: quarantine commit kept conflicting; retry the task")


SCHEMA_RACE_ATTEMPTS = 3


def _is_transient(exc: BaseException) -> bool:
    """An exception that is no fault of the file: the catalog, the ledger or the warehouse did not answer."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                        sa_exc.DisconnectionError, ConnectionError, TimeoutError)):
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
    catalog: "Catalog",
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
    ledger.mark_pending(job.name, info)
    log.info("importing %s (etag %s, %d bytes) into %s", printable(uri), printable(info.etag), info.size, table_name)

    def failed(code: str, message: str) -> ImportResult:
        log.error("%s", printable(message, 4000))
        ledger.mark_failed(job.name, info, error=message, fingerprint=fingerprint, code=code)
        return ImportResult(uri, info.etag, "failed", error=message, table=table_name,
                            seconds=time.monotonic() - started, code=code)

    try:
        return _import(job, store, info, uri, table_name, fingerprint, started, catalog=catalog, ledger=ledger,
                       batch_rows=batch_rows, chunk_rows=chunk_rows)
    except ObjectChangedError as exc:
        msg = f"{exc} (this version is gone; the new version is imported on the next poll)"
        return failed("OBJECT_CHANGED", msg)
    except TransientError as exc:
        ledger.mark_retry(job.name, info, error=str(exc))
        raise
    except TerminalError as exc:
        return failed(_failure_code(exc), str(exc))
    except Exception as exc:  # noqa: BLE001 - per-file isolation: nothing raised for one file escapes it
        if _is_transient(exc):
            ledger.mark_retry(job.name, info, error=f"{type(exc).__name__}: {exc}")
            raise StorageUnavailableError(f"{uri}: {type(exc).__name__}: {printable(exc, 500)}; retrying") from exc
        problem = internal_problem(uri, exc)
        log.exception("%s: unexpected error", printable(uri))
        return failed(problem.code, str(problem))


def _import(job: ImportJob, store: ObjectStore, info: ObjectInfo, uri: str, table_name: str, fingerprint: str,
            started: float, *, catalog: "Catalog", ledger: Ledger, batch_rows: int, chunk_rows: int) -> ImportResult:
    if info.size > job.max_file_bytes:
        raise FileTooLargeError(
            f"{uri}: {info.size:,} bytes is over the job's max_file_bytes ({job.max_file_bytes:,}); split the "
            "file or raise max_file_bytes in the job YAML", code="FILE_TOO_LARGE"
        )
    fmt = format_for_key(info.key, job.formats)
    if fmt is None:
        raise FileFormatError(f"{uri}: extension not among the job's formats {list(job.formats)}",
                              code="FORMAT_NOT_ALLOWED")
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return _import_once(job, store, info, uri, fmt, table_name, fingerprint, started, catalog=catalog,
                                ledger=ledger, batch_rows=batch_rows, chunk_rows=chunk_rows)
        except _SchemaRace as exc:
            log.info("%s; writing the file again (attempt %d)", printable(exc), attempt + 2)
    raise CommitConflictError(f"{uri}: the table's schema kept changing while the file was written; retry the task")


def _delete_quietly(io, data_files: list) -> None:
    """Remove data files no snapshot will reference (best effort: orphan removal catches the rest)."""
    for df in data_files:
        try:
            io.delete(df.file_path)
        except Exception:  # noqa: BLE001
            log.debug("could not delete unreferenced data file %s", df.file_path)


def _import_once(job: ImportJob, store: ObjectStore, info: ObjectInfo, uri: str, fmt: str, table_name: str,
                 fingerprint: str, started: float, *, catalog: "Catalog", ledger: Ledger, batch_rows: int,
                 chunk_rows: int) -> ImportResult:
    ingested_at = dt.datetime.now(dt.timezone.utc)
    quarantine = _Quarantine(job, uri, info.etag, ingested_at)
    counts = {"read": 0, "bad": 0}
    data_files: list = []
    io = None
    try:
        table = _load_table(catalog, job.table_identifier)
        table_schema = table.schema().as_arrow() if table is not None else None
        with store.open(info.key, etag=info.etag) as f:
            mapper = make_mapper(job, read_schema(f, fmt, source=uri, max_bytes=job.max_file_bytes), uri,
                                 ingested_at, fmt, table_schema=table_schema)
            batches = read_batches(f, fmt, source=uri, batch_rows=batch_rows, csv_as_strings=fmt == "csv",
                                   max_bytes=job.max_file_bytes)

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
                                f"the first ones:\n" + "\n".join(f"  {p}" for p in problems[:20]))
                        keep = pa.array([i not in bad for i in range(b.num_rows)])
                        mapped = mapped.filter(keep)
                    row += b.num_rows
                    yield mapped

            stream = mapped_batches()
            first = next(stream, None)
            if first is None:  # a header (schema) and no rows: FILE_EMPTY, as validate_file reports it
                raise FileFormatError(f"{uri}: the file has a header but no data rows; upload the complete file with "
                                      "at least one data row", code="FILE_EMPTY")
            if table is not None:
                done = find_committed(table, uri, info.etag)
                if done is not None:
                    rows = int(done.summary.get(PROP_ROWS, "0"))
                    log.info("%s already committed in snapshot %s; repairing the ledger only", printable(uri),
                             done.snapshot_id)
                    ledger.mark_succeeded(job.name, info, rows=rows, table_name=table_name,
                                          snapshot_id=done.snapshot_id, fingerprint=fingerprint)
                    return ImportResult(uri, info.etag, "already-imported", rows, table_name, done.snapshot_id,
                                        seconds=time.monotonic() - started)
                check_table_types(first.schema, table_schema, uri)
            # table creation and new columns are staged in the transaction that commits the data
            tx = _begin(catalog, job, table, first.schema)
            io = tx._table.io
            target = tx.table_metadata.schema().as_arrow()
            with _DataFileWriter(tx.table_metadata, io, chunk_rows) as writer:
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
                f"{job.max_bad_fraction:g} (on_error: skip_rows); fix the file or raise the threshold")
        quarantine.commit(catalog)
        replace = table is not None and _has_earlier_version(table, uri)
        props = {PROP_SOURCE_FILE: uri, PROP_SOURCE_ETAG: info.etag, PROP_JOB: job.name, PROP_ROWS: str(total)}
        note = f"{counts['bad']} bad row(s) kept in {'.'.join(job.quarantine_table_identifier)}" if counts["bad"] else None
        if not data_files and not replace:
            ledger.mark_succeeded(job.name, info, rows=0, table_name=table_name, snapshot_id=None,
                                  bad_rows=counts["bad"], fingerprint=fingerprint, note=note)
            return ImportResult(uri, info.etag, "imported", 0, table_name, seconds=time.monotonic() - started)
        table, snap, replaced = _commit(catalog, job, tx, first.schema, uri, info.etag, data_files, props, replace)
        data_files = []  # committed: referenced by the table now
    except BaseException:
        if io is not None and data_files:
            _delete_quietly(io, data_files)
        raise
    snapshot_id = snap.snapshot_id if snap is not None else None
    rows = int(snap.summary.get(PROP_ROWS, total)) if snap is not None else total
    ledger.mark_succeeded(job.name, info, rows=rows, table_name=table_name, snapshot_id=snapshot_id,
                          bad_rows=counts["bad"], fingerprint=fingerprint, note=note)
    seconds = time.monotonic() - started
    log.info("%s: committed %d rows in snapshot %s (%.2fs)%s%s", printable(uri), rows, snapshot_id, seconds,
             "; replaced the rows of an earlier version" if replaced else "", f"; {note}" if note else "")
    return ImportResult(uri, info.etag, "imported", rows, table_name, snapshot_id, replaced,
                        seconds=seconds, bad_rows=counts["bad"])
