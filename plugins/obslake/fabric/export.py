"""Export one project's trace changes into its Iceberg table in the customer's bucket.

Layout (per project): ``<storage>/<namespace>/<project>/`` with ``data/date=YYYY-MM-DD/hour=HH/*.parquet``
(identity partitions on ``date`` and ``hour`` of the span start time) and ``metadata/`` holding the
Iceberg metadata, ``latest.metadata.json`` (a copy of the current metadata, rewritten after every
commit), ``v<N>.metadata.json`` + ``version-hint.text`` (for readers that resolve a table by its hint).

A sync is one Iceberg commit:

* the first sync (empty table) appends every span, streamed in batches;
* later syncs rebuild only the partitions the changes touch: the data files of those partitions
  (found by partition value in one pass over the manifests) are read, the changed spans replace
  their old rows (de-duplicated by ``span_id``), and one OVERWRITE snapshot swaps the old files for
  the rewritten ones (copy-on-write: no equality or position deletes, which Snowflake and BigQuery
  readers cannot apply).

The commit's snapshot summary is the completeness marker: ``obslake.fabric.watermark`` (the latest
change time covered), ``obslake.fabric.cursor`` (where the next sync starts), ``obslake.fabric.rows``,
``obslake.fabric.source``. The cursor lives only there, so a crash after the commit loses nothing and a
crash before it repeats the sync — idempotent, since rows are keyed by ``span_id``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from obslake.config import Connector, _ident
from obslake.exceptions import CommitConflictError
from obslake.fabric.flatten import flatten
from obslake.fabric.lake_source import cursor_json
from obslake.fabric.model import TS, ChangeBatch, TraceSource
from obslake.lake.iceberg import (
    DEFAULT_TABLE_PROPERTIES,
    PROP_PARQUET_NAMES,
    commit_with_retry,
    ensure_properties,
    evolve,
    iceberg_schema,
    identity_spec,
    load_or_create,
    load_table,
    read_data_files,
    snapshot_lineage,
    write_data_files,
)
from obslake.storage.credentials import StorageCredentials

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

PROP_WATERMARK = "obslake.fabric.watermark"
PROP_CURSOR = "obslake.fabric.cursor"
PROP_ROWS = "obslake.fabric.rows"
PROP_SOURCE = "obslake.fabric.source"
PROP_SYNC = "obslake.fabric.sync-id"
EVAL_KINDS = ("LLM", "CODE")
EVAL_FIELDS = (("label", pa.string()), ("score", pa.float64()), ("explanation", pa.string()))
HUMAN_FIELDS = (*EVAL_FIELDS, ("annotator_kind", pa.string()), ("identifier", pa.string()), ("updated_at", TS))
PARTITIONS = ["date", "hour"]


def _column_name(name: str) -> str:
    """An annotation name as a column-name segment (dots and control characters become '_')."""
    return re.sub(r"[.\x00-\x1f\x7f]", "_", name).strip() or "_"


def rows_for(batch: ChangeBatch, synced_at: dt.datetime) -> pa.Table:
    """One output row per span: span columns, flattened attributes, eval/annotation columns, partitions."""
    spans = batch.spans
    n = spans.num_rows
    cols: dict[str, pa.Array] = {name: spans[name] for name in spans.column_names if name != "changed_at"}
    flat_attrs = flatten(spans["attributes"])
    if flat_attrs.unreadable:
        log.warning(
            "%d of %d span(s) have attributes that are not a JSON object: their attributes.* columns are null "
            "(the text is kept in the attributes column)",
            flat_attrs.unreadable,
            n,
        )
    cols.update(flat_attrs.columns)
    # annotations: latest per (span, name, eval-or-human) for the flat columns; all of them as JSON
    index = {sid: i for i, sid in enumerate(spans["span_id"].to_pylist())}
    flat: dict[str, list] = {}
    all_json: list[list] = [[] for _ in range(n)]
    last_change = spans["changed_at"].to_pylist()
    ann = batch.annotations.sort_by([("updated_at", "ascending")]) if batch.annotations.num_rows else None
    for a in ann.to_pylist() if ann is not None else []:
        i = index.get(a["span_id"])
        if i is None:
            continue
        all_json[i].append(
            {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in a.items() if k != "span_id"}
        )
        if a["updated_at"] is not None and (last_change[i] is None or a["updated_at"] > last_change[i]):
            last_change[i] = a["updated_at"]
        group, fields = ("eval", EVAL_FIELDS) if a["annotator_kind"] in EVAL_KINDS else ("annotation", HUMAN_FIELDS)
        for field, _ in fields:
            col = f"{group}.{_column_name(a['name'])}.{field}"
            flat.setdefault(col, [None] * n)[i] = a[field]  # ascending updated_at: the latest wins
    for col in sorted(flat):
        typ = dict(HUMAN_FIELDS)[col.rsplit(".", 1)[1]]
        cols[col] = pa.array(flat[col], typ)
    cols["annotations"] = pa.array([json.dumps(x) if x else None for x in all_json], pa.string())
    start = spans["start_time"]
    cols["date"] = pc.cast(start, pa.date32())
    cols["hour"] = pc.hour(start).cast(pa.int32())
    cols["_updated_at"] = pa.array(last_change, TS)
    cols["_synced_at"] = pa.array([synced_at] * n, TS)
    return pa.table(cols)


@dataclasses.dataclass
class SyncResult:
    """What one project's sync did."""

    project: str
    table: str
    location: str
    rows: int
    partitions: int
    snapshot_id: int | None
    watermark: str | None
    seconds: float
    mode: str  # full | incremental | window | unchanged

    def to_dict(self) -> dict:
        """Plain form for XCom."""
        return dataclasses.asdict(self)


class ProjectExporter:
    """Syncs one project of one connector (see the module docstring).

    Args:
        connector: the connector (storage, namespace, formats, overlap).
        project: the project name (a validated path segment).
        catalog: a catalog whose FileIO can write the connector's storage
            (:func:`obslake.lake.catalog.load_catalog` with the connector's storage).
    """

    def __init__(self, connector: Connector, project: str, catalog: Catalog):
        self.connector, self.project, self.catalog = connector, project, catalog
        self.location = connector.project_location(project)
        # the location is part of the identity: a connector whose storage or namespace changes starts a
        # fresh export where it now points, and never writes into its old registration
        import hashlib

        tag = hashlib.sha256(self.location.encode()).hexdigest()[:8]
        self.identifier = (_ident(f"fabric__{connector.name}"), _ident(f"{project}__{tag}"))

    def table(self) -> Table | None:
        """The project's table, or None before the first sync."""
        return load_table(self.catalog, self.identifier)

    def last_cursor(self) -> dict | None:
        """The cursor stored by the last completed sync (None: never synced)."""
        table = self.table()
        if table is None:
            return None
        for snap in snapshot_lineage(table):
            cursor = snap.summary.get(PROP_CURSOR) if snap.summary is not None else None
            if cursor is not None:
                return json.loads(cursor)
        return None

    def _create(self, schema: pa.Schema) -> Table:
        def definition() -> dict:
            ischema = iceberg_schema(schema)
            props = {
                **DEFAULT_TABLE_PROPERTIES,
                "obslake.fabric.connector": self.connector.name,
                "obslake.fabric.project": self.project,
                PROP_PARQUET_NAMES: "iceberg",  # Delta readers see the true column names
                "format-version": "2",
            }
            return {
                "schema": ischema,
                "location": self.location,
                "partition_spec": identity_spec(ischema, PARTITIONS),
                "properties": props,
            }

        return load_or_create(self.catalog, self.identifier, definition)

    @staticmethod
    def _evolve(table: Table, schema: pa.Schema) -> Table:
        added = evolve(table, table.schema().as_arrow(), schema)
        if added:
            log.info("%s: added column(s) %s", table.name(), added)
        return table

    @staticmethod
    def _conform(rows: pa.Table, target: pa.Schema) -> pa.Table:
        arrays = [
            rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
            for f in target
        ]
        return pa.Table.from_arrays(arrays, schema=target)

    def sync(
        self, source: TraceSource, *, window: tuple[dt.datetime, dt.datetime] | None = None, sync_id: str | None = None
    ) -> SyncResult:
        """Export the changes since the stored cursor (or in ``window``) in one commit."""
        started = time.monotonic()
        sync_id = sync_id or uuid.uuid4().hex
        synced_at = dt.datetime.now(dt.UTC)
        cursor = {"window": [w.isoformat() for w in window]} if window else self.last_cursor()
        overlap = dt.timedelta(seconds=self.connector.overlap_seconds)
        changes = source.changes(self.project, cursor, overlap=overlap)
        table = self.table()
        empty = table is None or table.current_snapshot() is None
        mode = "window" if window else ("full" if empty else "incremental")
        if empty:
            table, data_files, rows, parts, replaced = self._write_full(table, changes.batches, synced_at)
        else:
            table, data_files, rows, parts, replaced = self._write_incremental(table, changes.batches, synced_at)
        if table is None:  # nothing in the source yet, and no table to mark
            return SyncResult(
                self.project,
                ".".join(self.identifier),
                self.location,
                0,
                0,
                None,
                None,
                time.monotonic() - started,
                "unchanged",
            )
        watermark = changes.high_watermark.isoformat() if changes.high_watermark else None
        out_cursor = cursor if window else changes.cursor
        props = {
            PROP_WATERMARK: watermark or "",
            PROP_CURSOR: cursor_json(out_cursor),
            PROP_ROWS: str(rows),
            PROP_SOURCE: f"{source.name}:{self.project}",
            PROP_SYNC: sync_id,
        }
        if window:
            props[PROP_CURSOR] = cursor_json(self.last_cursor())  # a backfill never moves the cursor
        table = self._commit(table, data_files, replaced, props)
        self.publish(table)
        snap = table.current_snapshot()
        result = SyncResult(
            self.project,
            ".".join(self.identifier),
            self.location,
            rows,
            parts,
            snap.snapshot_id if snap else None,
            watermark,
            time.monotonic() - started,
            mode if rows else ("window" if window else "unchanged"),
        )
        log.info(
            "%s: %s sync wrote %d row(s) in %d partition(s) to %s (watermark %s, %.2fs)",
            self.project,
            result.mode,
            rows,
            parts,
            self.location,
            watermark,
            result.seconds,
        )
        return result

    def publish(self, table: Table) -> None:
        """After any commit to the project's table (a sync, or the lake upkeep's expiry and compaction): the
        ``latest.metadata.json`` pointer and, with ``delta`` in the formats, the Delta log follow it."""
        write_pointers(table)
        if "delta" in self.connector.formats:
            from obslake.fabric.delta import files_from_iceberg, sync_delta_log, writes_true_names

            sync_delta_log(
                self.location,
                table.schema().as_arrow(),
                PARTITIONS,
                files_from_iceberg(table),
                storage_options=delta_storage_options(table),
                true_names=writes_true_names(table),
            )

    @staticmethod
    def _write_files(table: Table, rows: pa.Table, write_uuid: uuid.UUID, counter: itertools.count[int]) -> list:
        return write_data_files(table.metadata, table.io, rows, write_uuid, counter)

    def _write_full(self, table, batches, synced_at):
        data_files: list = []
        rows = 0
        parts: set = set()
        write_uuid, counter = uuid.uuid4(), itertools.count(0)
        for batch in batches:
            out = rows_for(batch, synced_at)
            if table is None:
                table = self._create(out.schema)
            table = self._evolve(table, out.schema)
            out = self._conform(out, table.schema().as_arrow())
            data_files.extend(self._write_files(table, out, write_uuid, counter))
            rows += out.num_rows
            parts |= set(zip(out["date"].to_pylist(), out["hour"].to_pylist(), strict=True))
        return table, data_files, rows, len(parts), None

    def _write_incremental(self, table, batches, synced_at):
        """Rewrite the data files of the partitions the changes touch (copy-on-write).

        The affected files are found by their partition values in one pass over the manifests (no
        predicate evaluation per file), read whole, merged with the changed spans (a changed span
        replaces its old row) and rewritten; the commit swaps exactly those files.
        """
        clock = time.monotonic()
        changed = [rows_for(b, synced_at) for b in batches]
        changed = [c for c in changed if c.num_rows]
        if not changed:
            return table, [], 0, 0, None
        phases = {"changes": time.monotonic() - clock}
        for c in changed:
            table = self._evolve(table, c.schema)
        target = table.schema().as_arrow()
        new = pa.concat_tables([self._conform(c, target) for c in changed])
        from obslake.fabric.lake_source import latest_by

        new = latest_by(new, ["span_id"], ["_updated_at"])
        parts = set(zip(pc.cast(new["date"], pa.int32()).to_pylist(), new["hour"].to_pylist(), strict=True))
        clock = time.monotonic()
        old_files = self._files_in_partitions(table, parts)
        phases["plan"] = time.monotonic() - clock
        clock = time.monotonic()
        existing = read_data_files(table, old_files)
        phases["read"] = time.monotonic() - clock
        clock = time.monotonic()
        keep = existing.filter(pc.invert(pc.is_in(existing["span_id"], new["span_id"])))
        merged = pa.concat_tables([self._conform(keep, target), new]).sort_by([("start_time", "ascending")])
        data_files = self._write_files(table, merged, uuid.uuid4(), itertools.count(0))
        phases["write"] = time.monotonic() - clock
        log.info(
            "%s: rewriting %d partition(s) (%d file(s) -> %d): %d changed span(s), %d unchanged kept (%s)",
            self.project,
            len(parts),
            len(old_files),
            len(data_files),
            new.num_rows,
            keep.num_rows,
            ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()),
        )
        return table, data_files, new.num_rows, len(parts), old_files

    @staticmethod
    def _files_in_partitions(table: Table, parts: set[tuple[int, int]]) -> list:
        """The live data files whose ``(date, hour)`` partition (days since epoch, hour) is in ``parts``."""
        snap = table.current_snapshot()
        if snap is None:
            return []
        spec = table.spec()
        names = [f.name for f in spec.fields]
        if names != PARTITIONS:
            raise ValueError(f"{table.name()}: unexpected partition spec {names}; expected date, hour")
        days = {d for d, _ in parts}
        found = []
        for manifest in snap.manifests(table.io):
            if manifest.content != 0:  # delete manifests: this exporter never writes delete files
                raise ValueError(f"{table.name()}: has delete files; rewrite it with a full export")
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                p = entry.data_file.partition
                day = p[0]
                if isinstance(day, dt.date):
                    day = (day - dt.date(1970, 1, 1)).days
                if day in days and (day, p[1]) in parts:
                    found.append(entry.data_file)
        return found

    def _commit(self, table: Table, data_files: list, replaced: list | None, props: dict) -> Table:
        from pyiceberg.exceptions import ValidationException

        def attempt(n: int) -> Table:
            if n:
                # a single writer per connector is guaranteed by max_active_runs=1; a conflict means a
                # manual run raced us: an overwrite whose files are gone fails validation below
                table.refresh()
            tx = table.transaction()
            ensure_properties(tx, table.properties)  # bounded metadata also for tables of earlier versions
            if replaced:  # one OVERWRITE snapshot: the old files of the touched partitions out, the new in
                with tx.update_snapshot(snapshot_properties=props).overwrite() as ow:
                    for f in replaced:
                        ow.delete_data_file(f)
                    for f in data_files:
                        ow.append_data_file(f)
            else:
                with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                    for f in data_files:
                        append.append_data_file(f)
            return tx.commit_transaction()

        try:
            return commit_with_retry(attempt, what=self.location)
        except ValidationException as exc:
            # a concurrent commit removed a file we rewrote: our merge is stale, the sync must rerun
            raise CommitConflictError(f"{self.location}: the table changed during the sync ({exc}); retry") from exc


def write_pointers(table: Table) -> None:
    """``metadata/latest.metadata.json`` = the current metadata; ``v<N>.metadata.json`` + ``version-hint.text``.

    Note:
        Written after the commit, not atomically with it: a crash in between leaves the previous
        pointer (an older, consistent snapshot) until the next sync rewrites it.
    """
    io = table.io
    current = table.metadata_location
    data = io.new_input(current).open().read()
    base = current.rsplit("/", 1)[0]
    number = re.match(r"(\d+)", current.rsplit("/", 1)[1])
    version = int(number.group(1)) if number else len(table.metadata.metadata_log) + 1
    for name, payload in (
        (f"v{version}.metadata.json", data),
        ("latest.metadata.json", data),
        ("version-hint.text", str(version).encode()),
    ):
        with io.new_output(f"{base}/{name}").create(overwrite=True) as out:
            out.write(payload)


def delta_storage_options(table: Table) -> dict[str, str] | None:
    """delta-rs storage options for the table's location, from the credentials its FileIO writes with."""
    scheme = table.location().split("://", 1)[0]
    return StorageCredentials.from_fileio_properties(scheme, table.io.properties).delta_options()
