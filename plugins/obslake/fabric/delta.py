"""Delta Lake log over the Data Fabric's Iceberg tables: the same Parquet files, a second table format.

With ``delta`` enabled, every project table at ``<location>`` (written by pyiceberg, copy-on-write) also
gets a ``<location>/_delta_log/`` whose snapshot references exactly the Parquet files of the Iceberg
table's current snapshot, so Databricks (or any Delta reader) reads the folder as a Delta table. No
data is copied: :func:`sync_delta_log` only commits ``add`` / ``remove`` actions for files pyiceberg
already wrote, through the ``deltalake`` (delta-rs) transaction API
(:meth:`deltalake.DeltaTable.create_write_transaction`).

Column names. pyiceberg (like Java Iceberg) writes Parquet columns under Avro-compatible names:
``eval.hallucination.label`` is stored as ``eval_x2Ehallucination_x2Elabel``
(:func:`pyiceberg.schema.make_compatible_name`); Iceberg maps them back by field id. A Delta table
without column mapping resolves columns by Parquet name, so a Delta column is named after the *stored*
name (:func:`delta_column_name`). Data Fabric tables are created with
``obslake.parquet.column-names=iceberg`` (:data:`obslake.lake.iceberg.PROP_PARQUET_NAMES`): their files
store the Iceberg names as they are, so Delta shows the true, dotted names. Delta column mapping with
``physicalName`` = the sanitised name would have done it for older tables, but delta-rs 1.6 refuses
caller-chosen physical names ("Column mapping is not supported for write operation 'CREATE TABLE with
column mapping metadata' yet").

Never run ``VACUUM`` on these Delta tables: files are owned by Iceberg (its snapshot expiry deletes
them), and a Delta vacuum would delete every file the Delta snapshot does not reference, including the
Iceberg ``metadata/`` folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from obslake.exceptions import CommitConflictError, TerminalError

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

_SYNC_OPERATION = "obslake.delta-sync"


class DeltaLogError(TerminalError):
    """The Iceberg table cannot be mirrored by the Delta log as it is (retrying cannot help).

    Raised for a non-additive schema change (a column's type changed), a partitioning that differs
    from the existing Delta table's, a non-identity or nested partition field, merge-on-read delete
    files, a non-Parquet data file, or a data file outside the table location.
    """


@dataclasses.dataclass(frozen=True)
class DataFileInfo:
    """One Parquet data file of the table, as the Delta log records it.

    Attributes:
        path: Path relative to the table location, unencoded (the object key suffix), e.g.
            ``data/date=2024-01-01/hour=5/00000-0-<uuid>.parquet``.
        size: File size in bytes.
        partition_values: Iceberg source column name -> Delta partition value string (``date`` ->
            ``'2024-01-01'``, ``hour`` -> ``'5'``), ``None`` for a null partition value.
        num_records: Row count (Delta ``stats.numRecords``).
        modification_time_ms: Epoch milliseconds the file was written (the adding Iceberg snapshot).
    """

    path: str
    size: int
    partition_values: Mapping[str, str | None]
    num_records: int
    modification_time_ms: int


def delta_column_name(name: str, true_names: bool = False) -> str:
    """The Delta column name of an Iceberg column: the name the Parquet files store it under.

    Args:
        name: The Iceberg column name, e.g. ``attributes.llm.model_name``.
        true_names: the table writes the Iceberg names into its Parquet files
            (``obslake.parquet.column-names=iceberg``, every Data Fabric table created since 2026-12-03).

    Returns:
        ``name`` itself with ``true_names``; else pyiceberg's Avro-compatible name, e.g.
        ``attributes_x2Ellm_x2Emodel_name`` (names made of ``[A-Za-z0-9_]``, not starting with a
        digit, are unchanged).
    """
    if true_names:
        return name
    from pyiceberg.schema import make_compatible_name

    return make_compatible_name(name)


def sync_delta_log(
    location: str,
    schema: pa.Schema,
    partition_by: list[str],
    files_now: list[DataFileInfo],
    storage_options: dict[str, str] | None = None,
    true_names: bool = False,
) -> int | None:
    """Make the Delta table at ``location`` reference exactly ``files_now``.

    On the first call the Delta table is created (version 0) with ``files_now``. Later calls commit,
    in one Delta transaction, an ``add`` for every file not yet in the Delta snapshot and a
    ``remove`` for every file in the snapshot but not in ``files_now`` (copy-on-write replaced it).
    Columns added to ``schema`` are added to the Delta schema first, in a metadata-only commit:
    delta-rs ignores ``schema`` in an append transaction, and its overwrite mode, which does write a
    new schema, rejects explicit remove actions. Nothing is committed when the snapshot already
    matches.

    Args:
        location: The table folder (``/path``, ``file:///path``, ``s3://bucket/prefix``), the same
            folder the Iceberg table's data files live under.
        schema: The Iceberg table's current Arrow schema (``table.schema().as_arrow()``), with
            Iceberg column names; they are mapped by :func:`delta_column_name`. Every Delta column is
            nullable.
        partition_by: The identity-partition source columns (Iceberg names), e.g. ``["date", "hour"]``.
        files_now: The data files of the Iceberg snapshot to mirror (:func:`files_from_iceberg`).
        storage_options: delta-rs object store options (:meth:`obslake.storage.credentials.StorageCredentials.delta_options`).
        true_names: the Parquet files carry the Iceberg names (see :func:`delta_column_name`).

    Returns:
        The Delta version after the sync, or ``None`` when nothing had to be committed.

    Raises:
        DeltaLogError: A column changed type, ``partition_by`` differs from the existing Delta
            table's, or ``files_now`` repeats a path.
        CommitConflictError: Another writer committed to the Delta log concurrently (transient).

    Note:
        Failure semantics: the Iceberg commit comes first and is the source of truth; the Delta log
        is derived. A crash between the Iceberg commit and this call, or inside it (the optional
        schema commit done, the file commit not), leaves the Delta table at an older but consistent
        snapshot (each Delta commit is atomic, a reader never sees half a rewrite) and the next sync
        repairs it, because it computes the difference between the Delta snapshot and the *current*
        Iceberg file set rather than replaying events. Iceberg snapshot expiry deletes files that
        older Delta versions still reference: Delta time travel reaches only as far back as Iceberg
        keeps files.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError, TableNotFoundError
    from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions

    uri = _delta_uri(location)
    delta_schema = _delta_schema(schema, true_names)
    delta_partitions = [delta_column_name(c, true_names) for c in partition_by]
    wanted: dict[str, DataFileInfo] = {}
    for info in files_now:
        if info.path in wanted:
            raise DeltaLogError(f"files_now lists {info.path!r} twice")
        wanted[info.path] = info

    def add_action(info: DataFileInfo) -> AddAction:
        return AddAction(
            path=info.path,
            size=info.size,
            partition_values={delta_column_name(k, true_names): v for k, v in info.partition_values.items()},
            modification_time=info.modification_time_ms,
            data_change=True,
            stats=json.dumps({"numRecords": info.num_records}),
        )

    try:
        # Not DeltaTable.is_deltatable(): it blocks on the network while holding the GIL, which stalls
        # every other thread of the process (Airflow heartbeats; an in-process moto server in tests).
        try:
            table = DeltaTable(uri, storage_options=storage_options)
        except TableNotFoundError:
            table = None
        if table is None:
            create_table_with_add_actions(
                uri,
                delta_schema,
                [add_action(info) for info in wanted.values()],
                mode="error",
                partition_by=delta_partitions,
                storage_options=storage_options,
                commit_properties=_commit_properties(CommitProperties, added=len(wanted), removed=0),
            )
            log.info("created Delta log at %s with %d files", location, len(wanted))
            return 0

        existing_partitions = list(table.metadata().partition_columns)
        if existing_partitions != delta_partitions:
            raise DeltaLogError(
                f"Delta table at {location} is partitioned by {existing_partitions}, the Iceberg table by "
                f"{delta_partitions}; delete {location}/_delta_log to rebuild it"
            )
        new_fields = _added_fields(table, delta_schema, location)
        current = _current_files(table)
        adds = [add_action(info) for path, info in wanted.items() if path not in current]
        now_ms = int(time.time() * 1000)
        removes = [
            RemoveAction(path, True, now_ms, size, values)
            for path, (size, values) in current.items()
            if path not in wanted
        ]
        if not new_fields and not adds and not removes:
            return None
        if new_fields:
            table.alter.add_columns(
                new_fields, commit_properties=_commit_properties(CommitProperties, added=0, removed=0)
            )
            log.info("added columns %s to Delta log at %s", [f.name for f in new_fields], location)
        if adds or removes:
            table.create_write_transaction(
                [*adds, *removes],
                mode="append",
                schema=table.schema(),
                partition_by=delta_partitions,
                commit_properties=_commit_properties(CommitProperties, added=len(adds), removed=len(removes)),
            )
            log.info("Delta log at %s: %d files added, %d removed", location, len(adds), len(removes))
        table.update_incremental()
        return table.version()
    except CommitFailedError as exc:
        raise CommitConflictError(f"Delta commit at {location} lost a race with another writer: {exc}") from exc


def files_from_iceberg(table: Table) -> list[DataFileInfo]:
    """The data files of a pyiceberg table's current snapshot, as Delta ``add`` actions describe them.

    Args:
        table: A pyiceberg ``Table`` (loaded or refreshed by the caller).

    Returns:
        One :class:`DataFileInfo` per live data file, paths relative to ``table.location()``,
        partition values keyed by the source column name and rendered like the Hive folder names
        (``date`` -> ``'2024-01-01'``, ``hour`` -> ``'5'``); ``modification_time_ms`` is the commit
        time of the snapshot that added the file. Empty when the table has no snapshot.

    Raises:
        DeltaLogError: The snapshot has delete files (merge-on-read: a Delta log of the data files
            alone would resurrect deleted rows), a non-Parquet data file, a non-identity or nested
            partition field, or a file outside the table location.
    """
    from pyiceberg.manifest import DataFileContent, FileFormat, ManifestContent
    from pyiceberg.transforms import IdentityTransform

    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    schema = table.schema()
    specs = table.specs()
    commit_ms = {s.snapshot_id: s.timestamp_ms for s in table.metadata.snapshots}
    root = _normalize_uri(table.location()).rstrip("/") + "/"
    files: list[DataFileInfo] = []
    for manifest in snapshot.manifests(table.io):
        entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        if manifest.content != ManifestContent.DATA:
            if entries:
                raise DeltaLogError(
                    f"Iceberg table {table.name()} has delete files (merge-on-read); the Delta log can "
                    "only mirror copy-on-write tables"
                )
            continue
        spec = specs[manifest.partition_spec_id]
        for entry in entries:
            data_file = entry.data_file
            if data_file.content != DataFileContent.DATA:
                raise DeltaLogError(f"unexpected delete file {data_file.file_path} in a data manifest")
            if data_file.file_format != FileFormat.PARQUET:
                raise DeltaLogError(f"{data_file.file_path} is {data_file.file_format}, Delta needs Parquet")
            values: dict[str, str | None] = {}
            for pos, field in enumerate(spec.fields):
                source = schema.find_field(field.source_id)
                if not isinstance(field.transform, IdentityTransform) or source not in schema.fields:
                    raise DeltaLogError(
                        f"partition field {field.name} ({field.transform}) is not an identity partition of a "
                        "top-level column; Delta partition columns must be table columns"
                    )
                values[source.name] = _partition_string(_iceberg_value(source.field_type, data_file.partition[pos]))
            path = _normalize_uri(data_file.file_path)
            if not path.startswith(root):
                raise DeltaLogError(f"data file {data_file.file_path} is outside the table location {root}")
            files.append(
                DataFileInfo(
                    path=path[len(root) :],
                    size=data_file.file_size_in_bytes,
                    partition_values=values,
                    num_records=data_file.record_count,
                    modification_time_ms=commit_ms.get(entry.snapshot_id, snapshot.timestamp_ms)
                    if entry.snapshot_id is not None
                    else snapshot.timestamp_ms,
                )
            )
    return files


def identity_partition_columns(table: Table) -> list[str]:
    """The source column names of the table's current partition spec (all must be identity transforms)."""
    schema = table.schema()
    return [schema.find_field(field.source_id).name for field in table.spec().fields]


def sync_from_iceberg(table: Table, storage_options: dict[str, str] | None = None) -> int | None:
    """:func:`sync_delta_log` for a pyiceberg table: its location, schema, partitioning and files.

    Args:
        table: The pyiceberg ``Table`` right after the export's Iceberg commit.
        storage_options: delta-rs object store options (:meth:`obslake.storage.credentials.StorageCredentials.delta_options`).

    Returns:
        The new Delta version, or ``None`` when the log already matched.

    Note:
        See :func:`sync_delta_log` for the failure semantics: run it after every Iceberg commit; a
        missed run is repaired by the next one.
    """
    return sync_delta_log(
        table.location(),
        table.schema().as_arrow(),
        identity_partition_columns(table),
        files_from_iceberg(table),
        storage_options=storage_options,
        true_names=writes_true_names(table),
    )


def writes_true_names(table: Table) -> bool:
    """Whether the table's Parquet files carry the Iceberg column names (see :func:`delta_column_name`)."""
    from obslake.lake.iceberg import stores_iceberg_names

    return stores_iceberg_names(table.properties)


# --------------------------------------------------------------------------------------------------


def _commit_properties(cls: Any, *, added: int, removed: int) -> Any:
    return cls(
        custom_metadata={
            "obslake.operation": _SYNC_OPERATION,
            "obslake.filesAdded": added,
            "obslake.filesRemoved": removed,
        }
    )


def _normalize_uri(uri: str) -> str:
    """``file:///p``, ``file:/p`` and ``/p`` -> ``file:///p``; ``s3a://`` -> ``s3://``; others unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file://" + parsed.path
    if parsed.scheme in ("s3a", "s3n"):
        return "s3://" + uri.split("://", 1)[1]
    return uri


def _delta_uri(location: str) -> str:
    """The URI delta-rs opens: a local path for ``file:`` locations, ``s3://`` for ``s3a://``."""
    normalized = _normalize_uri(location).rstrip("/")
    return normalized[len("file://") :] if normalized.startswith("file://") else normalized


def _delta_type(data_type: pa.DataType, true_names: bool) -> pa.DataType:
    if pa.types.is_struct(data_type):
        return pa.struct([_delta_field(data_type.field(i), true_names) for i in range(data_type.num_fields)])
    if pa.types.is_map(data_type):
        return pa.map_(_delta_type(data_type.key_type, true_names), _delta_type(data_type.item_type, true_names))
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        return pa.list_(pa.field("element", _delta_type(data_type.value_type, true_names)))
    return data_type


def _delta_field(field: pa.Field, true_names: bool) -> pa.Field:
    # Metadata (PARQUET:field_id) is dropped: without column mapping Delta resolves by name.
    return pa.field(delta_column_name(field.name, true_names), _delta_type(field.type, true_names), nullable=True)


def _delta_schema(schema: pa.Schema, true_names: bool = False) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(pa.schema([_delta_field(f, true_names) for f in schema]))


def _added_fields(table: Any, desired: Any, location: str) -> list[Any]:
    """Fields of ``desired`` missing from the Delta table; raises on a changed column type."""
    existing = {f["name"]: f["type"] for f in json.loads(table.schema().to_json())["fields"]}
    added = []
    for field in desired.fields:
        wanted_type = json.loads(field.to_json())["type"]
        if field.name not in existing:
            added.append(field)
        elif existing[field.name] != wanted_type:
            raise DeltaLogError(
                f"column {field.name} of the Delta table at {location} is {existing[field.name]}, the Iceberg "
                f"table now has {wanted_type}; only added columns can be mirrored (delete _delta_log to rebuild)"
            )
    gone = set(existing) - {f.name for f in desired.fields}
    if gone:
        log.warning("columns %s dropped from the Iceberg table stay in the Delta log at %s", sorted(gone), location)
    return added


def _current_files(table: Any) -> dict[str, tuple[int, dict[str, str | None]]]:
    """Unencoded path -> (size, partition values) of the files in the Delta snapshot."""
    actions = pa.table(table.get_add_actions(flatten=False))
    partitions = actions.column("partition").to_pylist() if "partition" in actions.column_names else None
    files = {}
    for i, (path, size) in enumerate(
        zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist(), strict=True)
    ):
        values = {k: _partition_string(v) for k, v in (partitions[i] or {}).items()} if partitions else {}
        files[unquote(path)] = (size, values)
    return files


def _partition_string(value: Any) -> str | None:
    """A partition value as Delta (and the Hive folder name) writes it: ``2024-01-01``, ``5``, ``true``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _iceberg_value(field_type: Any, value: Any) -> Any:
    """A manifest partition value (dates as days, timestamps as microseconds) as a Python value."""
    from pyiceberg.types import DateType, TimestampType, TimestamptzType

    if value is None:
        return None
    if isinstance(field_type, DateType) and isinstance(value, int):
        return dt.date(1970, 1, 1) + dt.timedelta(days=value)
    if isinstance(field_type, (TimestampType, TimestamptzType)) and isinstance(value, int):
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=value)
    return value
