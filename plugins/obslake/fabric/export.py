"""Export one project's trace changes into two Iceberg tables in the customer's bucket.

Layout (per project; the layout and why it is this one: README "Data Fabric"):

* **spans** at ``<storage>/<namespace>/<project>/``, the path Arize's docs register: one row per span
  (the span columns, ``attributes`` and ``events`` as JSON, the flattened ``attributes.<key>`` columns),
  identity-partitioned on ``date`` and ``hour`` of the span start (``data/date=YYYY-MM-DD/hour=HH/``).
  Append-mostly: new spans are appended; only a span whose own row changed (a late child moves its
  trace's end time, a re-imported span) rewrites the files that hold it (copy-on-write, no delete files,
  which Snowflake and BigQuery readers cannot apply).
* **annotations** at ``<storage>/<namespace>/<project>__annotations/`` (beside the spans table, never
  inside it): an append-only change log of evaluations and annotations, one row per version
  (:data:`ANNOTATION_LOG_SCHEMA`: the change time ``updated_at``, ``kind`` eval/annotation, a ``deleted``
  marker), partitioned on ``date`` of the span start. A changed annotation on a months-old span appends
  one row; it never rewrites the span. The lake upkeep compacts each partition to the latest version
  per key (:data:`ANNOTATION_KEYS`). Readers get "spans with their latest evals" from the view that
  ``obslake fabric ddl`` prints (:mod:`obslake.fabric.ddl`).

Both tables keep ``metadata/latest.metadata.json`` (a copy of the current metadata, rewritten after
every commit) and ``v<N>.metadata.json`` + ``version-hint.text``, and optionally a Delta log.

A sync commits the annotations first, then the spans. The spans commit's snapshot summary is the
completeness marker: ``obslake.fabric.watermark`` (the latest change time covered),
``obslake.fabric.cursor`` (where the next sync starts), ``obslake.fabric.rows``, ``obslake.fabric.source``.
The cursor lives only there, so a crash after it loses nothing and a crash before it repeats the sync.
The annotations commit names the sync's starting point (``obslake.fabric.base``: the spans table's
snapshot and the cursor); a repeated sync that finds its own base on the annotations table's current
snapshot replaces what that commit added, so a retried sync never doubles the log.

A table of the first layout (one wide table with ``eval.*`` columns, no ``obslake.fabric.layout``
property) is re-exported in full on its next sync, as one OVERWRITE commit: the columns of the old
layout are dropped from the current schema; the old files stay in the earlier snapshots until the
upkeep's retention expires them (nothing is deleted before that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from obslake.config import Connector, _ident
from obslake.exceptions import CommitConflictError, ConfigError
from obslake.fabric.ddl import ANNOTATIONS_SUFFIX
from obslake.fabric.flatten import flatten
from obslake.fabric.lake_source import cursor_json
from obslake.fabric.model import TS, ChangeBatch, TraceSource
from obslake.lake.iceberg import (
    DEFAULT_TABLE_PROPERTIES,
    PROP_PARQUET_NAMES,
    DataFileWriter,
    commit_with_retry,
    ensure_properties,
    evolve,
    iceberg_schema,
    identity_spec,
    latest_by,
    live_data_files,
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
PROP_BASE = "obslake.fabric.base"
PROP_LAYOUT = "obslake.fabric.layout"
LAYOUT = "2"
EVAL_KINDS = ("LLM", "CODE")
PARTITIONS = ["date", "hour"]  # of the spans table
ANNOTATION_PARTITIONS = ["date"]
ANNOTATION_KEYS = ["span_id", "name", "identifier"]
"""One annotation in the source (Phoenix's unique key); the log holds its versions."""
ANNOTATION_ORDER = ["updated_at", "_synced_at"]
"""Which version of a key is the latest (the upkeep's compaction and the view agree on it)."""
ANNOTATION_LOG_SCHEMA = pa.schema(
    [
        ("span_id", pa.string()),
        ("trace_id", pa.string()),
        ("name", pa.string()),  # document annotations: document.<position>.<name>; trace annotations: trace.<name>
        ("kind", pa.string()),  # eval (annotator LLM or CODE) | annotation (HUMAN)
        ("label", pa.string()),
        ("score", pa.float64()),
        ("explanation", pa.string()),
        ("annotator_kind", pa.string()),
        ("identifier", pa.string()),
        ("updated_at", TS),
        ("deleted", pa.bool_()),  # a delete marker: this version says the annotation is gone
        ("date", pa.date32()),  # of the span's start: the partition
        ("_synced_at", TS),
    ]
)
# columns of the first layout's single wide table (dropped when such a table is re-exported)
_OLD_LAYOUT_COLUMNS = re.compile(r"^(eval\.|annotation\.|annotations$)")


T = TypeVar("T")
_END = object()


def read_ahead(items: Iterator[T], name: str = "obslake-read") -> Iterator[T]:
    """``items``, produced one ahead in a thread of their own: the source reads the next batch (Parquet scans,
    Postgres COPY, DuckDB aggregation: work that releases the GIL) while the caller flattens and hands on this
    one. At most one item waits (memory: one batch more). An error of the source is raised here, at the item
    it replaced. When the caller stops early (an error, or it has what it needs), the thread finishes the
    item it is producing and closes ``items`` itself (a generator's ``finally`` runs in the thread it ran in),
    so no read is left running."""
    handoff: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the consumer has its answer (or its own error) already
                    log.warning("closing %s failed", name, exc_info=True)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = handoff.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def span_rows(batch: ChangeBatch, synced_at: dt.datetime) -> pa.Table:
    """One spans-table row per span: span columns, flattened attributes, partitions, change times."""
    spans = batch.spans
    n = spans.num_rows
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        name: spans[name] for name in spans.column_names if name != "changed_at"
    }
    flat_attrs = flatten(spans["attributes"])
    if flat_attrs.unreadable:
        log.warning(
            "%d of %d span(s) have attributes that are not a JSON object: their attributes.* columns are null "
            "(the text is kept in the attributes column)",
            flat_attrs.unreadable,
            n,
        )
    cols.update(flat_attrs.columns)
    start = spans["start_time"]
    cols["date"] = pc.cast(start, pa.date32())
    cols["hour"] = pc.hour(start).cast(pa.int32())
    cols["_updated_at"] = spans["changed_at"]
    cols["_synced_at"] = pa.repeat(pa.scalar(synced_at, TS), n)
    return pa.table(cols)


def annotation_rows(batch: ChangeBatch, synced_at: dt.datetime) -> pa.Table:
    """The batch's annotations as change-log rows (:data:`ANNOTATION_LOG_SCHEMA`); annotations of spans
    that are not in the batch are left out (a source sends every annotation of the spans it sends)."""
    ann = batch.annotations
    if ann.num_rows == 0:
        return ANNOTATION_LOG_SCHEMA.empty_table()
    spans = batch.spans.select(["span_id", "trace_id", "start_time"])
    if pc.count_distinct(spans["span_id"]).as_py() != spans.num_rows:
        spans = latest_by(spans, ["span_id"], [])
    rows = ann.join(spans, "span_id", join_type="inner")
    n = rows.num_rows
    kind = pc.if_else(pc.is_in(rows["annotator_kind"], pa.array(EVAL_KINDS)), "eval", "annotation")
    cols = {
        "span_id": rows["span_id"],
        "trace_id": rows["trace_id"],
        "name": rows["name"],
        "kind": kind,
        "label": rows["label"],
        "score": rows["score"],
        "explanation": rows["explanation"],
        "annotator_kind": rows["annotator_kind"],
        "identifier": pc.fill_null(rows["identifier"], ""),
        "updated_at": rows["updated_at"],
        "deleted": pa.repeat(pa.scalar(False), n),
        "date": pc.cast(rows["start_time"], pa.date32()),
        "_synced_at": pa.repeat(pa.scalar(synced_at, TS), n),
    }
    return pa.Table.from_arrays(
        [pa.chunked_array(cols[f.name]).cast(f.type) if n else pa.array([], f.type) for f in ANNOTATION_LOG_SCHEMA],
        schema=ANNOTATION_LOG_SCHEMA,
    )


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
    annotation_rows: int = 0  # change-log rows appended to the annotations table

    def to_dict(self) -> dict:
        """Plain form for XCom."""
        return dataclasses.asdict(self)


class ProjectExporter:
    """Syncs one project of one connector (see the module docstring).

    Args:
        connector: the connector (storage, namespace, formats, overlap).
        project: the project name (a validated path segment, not ending in ``__annotations``).
        catalog: a catalog whose FileIO can write the connector's storage
            (:func:`obslake.lake.catalog.load_catalog` with the connector's storage).
    """

    def __init__(self, connector: Connector, project: str, catalog: Catalog):
        if project.endswith(ANNOTATIONS_SUFFIX):
            raise ConfigError(
                f"connector {connector.name!r}: project {project!r} ends in {ANNOTATIONS_SUFFIX!r}, the folder "
                f"suffix of a project's annotations table; rename the project in the source"
            )
        self.connector, self.project, self.catalog = connector, project, catalog
        self.location = connector.project_location(project)
        self.annotations_location = connector.project_location(project + ANNOTATIONS_SUFFIX)
        # the location is part of the identity: a connector whose storage or namespace changes starts a
        # fresh export where it now points, and never writes into its old registration
        import hashlib

        tag = hashlib.sha256(self.location.encode()).hexdigest()[:8]
        namespace = _ident(f"fabric__{connector.name}")
        self.identifier = (namespace, _ident(f"{project}__{tag}"))
        self.annotations_identifier = (namespace, _ident(f"{project}{ANNOTATIONS_SUFFIX}__{tag}"))

    def table(self) -> Table | None:
        """The project's spans table, or None before the first sync."""
        return load_table(self.catalog, self.identifier)

    def annotations_table(self) -> Table | None:
        """The project's annotations (change-log) table, or None before the first annotation."""
        return load_table(self.catalog, self.annotations_identifier)

    def annotation_names(self) -> list[tuple[str, str]]:
        """The ``(name, kind)`` pairs in the annotations table (the latest view's column groups)."""
        table = self.annotations_table()
        if table is None or table.current_snapshot() is None:
            return []
        rows = table.scan(selected_fields=("name", "kind")).to_arrow()
        pairs = rows.group_by(["name", "kind"], use_threads=False).aggregate([])
        return sorted(zip(pairs["name"].to_pylist(), pairs["kind"].to_pylist(), strict=True))

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

    def _definition(self, schema: pa.Schema, location: str, partitions: list[str], props: dict) -> dict:
        ischema = iceberg_schema(schema)
        return {
            "schema": ischema,
            "location": location,
            "partition_spec": identity_spec(ischema, partitions),
            "properties": {
                **DEFAULT_TABLE_PROPERTIES,
                "obslake.fabric.connector": self.connector.name,
                "obslake.fabric.project": self.project,
                PROP_PARQUET_NAMES: "iceberg",  # Delta readers see the true column names
                PROP_LAYOUT: LAYOUT,
                "format-version": "2",
                **props,
            },
        }

    def _create(self, schema: pa.Schema) -> Table:
        return load_or_create(
            self.catalog, self.identifier, lambda: self._definition(schema, self.location, PARTITIONS, {})
        )

    def _create_annotations(self) -> Table:
        from obslake.lake.maintenance import PROP_LATEST_BY

        props = {PROP_LATEST_BY: f"{','.join(ANNOTATION_KEYS)};{','.join(ANNOTATION_ORDER)}"}
        return load_or_create(
            self.catalog,
            self.annotations_identifier,
            lambda: self._definition(ANNOTATION_LOG_SCHEMA, self.annotations_location, ANNOTATION_PARTITIONS, props),
        )

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

    @staticmethod
    def _old_layout(table: Table | None) -> bool:
        return (
            table is not None and table.current_snapshot() is not None and table.properties.get(PROP_LAYOUT) != LAYOUT
        )

    def sync(
        self, source: TraceSource, *, window: tuple[dt.datetime, dt.datetime] | None = None, sync_id: str | None = None
    ) -> SyncResult:
        """Export the changes since the stored cursor (or in ``window``): annotations, then spans."""
        started = time.monotonic()
        sync_id = sync_id or uuid.uuid4().hex
        synced_at = dt.datetime.now(dt.UTC)
        table = self.table()
        migrate = self._old_layout(table)
        if migrate:
            log.warning(
                "%s: the table has the first Data Fabric layout (eval.* columns in the spans table): re-exporting "
                "it in full into the spans table plus an annotations table beside it; the old files stay in the "
                "earlier snapshots until the upkeep's retention expires them",
                self.location,
            )
            window = None
        if window:
            cursor: dict | None = {"window": [w.isoformat() for w in window]}
        else:
            cursor = None if migrate else self.last_cursor()
        base = self._base(table, cursor)
        overlap = dt.timedelta(seconds=self.connector.overlap_seconds)
        changes = source.changes(self.project, cursor, overlap=overlap)
        full = table is None or table.current_snapshot() is None or migrate
        mode = "window" if window else ("full" if full else "incremental")
        ann_table = self.annotations_table()
        ann_files: list = []
        ann_rows = 0
        span_files: list = []
        rows = 0
        parts: set = set()
        changed: list[pa.Table] = []
        if migrate and table is not None:
            table = self._drop_old_columns(table)
        # data files are written in the background (one chunk in flight per table) while the next batch is
        # read and flattened; a writer is replaced when the table's schema changed under it
        ann_writer: DataFileWriter | None = None
        span_writer: DataFileWriter | None = None
        with contextlib.ExitStack() as writers:
            # the source reads the next batch while this one is flattened (and the last written)
            for batch in read_ahead(changes.batches, f"obslake-read-{self.project}"):
                log_rows = annotation_rows(batch, synced_at)
                if log_rows.num_rows:
                    ann_table = ann_table or self._create_annotations()
                    ann_writer = ann_writer or writers.enter_context(DataFileWriter(ann_table.metadata, ann_table.io))
                    for b in log_rows.to_batches():
                        ann_writer.add(b)
                    ann_rows += log_rows.num_rows
                if not batch.spans.num_rows or not batch.spans_changed:
                    continue  # only the annotations of these spans changed: the spans table is not touched
                out = span_rows(batch, synced_at)
                if table is None:
                    table = self._create(out.schema)
                table = self._evolve(table, out.schema)
                out = self._conform(out, table.schema().as_arrow())
                if full:  # streamed: each batch is written as it comes
                    if span_writer is None or span_writer.metadata is not table.metadata:
                        span_files += span_writer.finish() if span_writer is not None else []
                        span_writer = writers.enter_context(DataFileWriter(table.metadata, table.io))
                    for b in out.to_batches():
                        span_writer.add(b)
                    rows += out.num_rows
                    hours = out.select(["date", "hour"]).group_by(["date", "hour"]).aggregate([])
                    parts |= set(zip(hours["date"].to_pylist(), hours["hour"].to_pylist(), strict=True))
                else:
                    changed.append(out)
            span_files += span_writer.finish() if span_writer is not None else []
            ann_files += ann_writer.finish() if ann_writer is not None else []
        replaced: list | None = live_data_files(table) if migrate and table is not None else None
        if not full and changes.live_annotation_keys is not None and ann_table is not None:
            markers = self._delete_markers(ann_table, changes.live_annotation_keys, synced_at)
            if markers.num_rows:
                log.info("%s: %d annotation(s) deleted in the source: delete markers appended", self.project,
                         markers.num_rows)  # fmt: skip
                ann_files += write_data_files(ann_table.metadata, ann_table.io, markers)
                ann_rows += markers.num_rows
        gone: set[str] = set()
        if not full and changes.live_trace_ids is not None and table is not None:
            gone = self._gone_traces(table, changes.live_trace_ids)
        if (changed or gone) and table is not None:
            span_files, rows, n_parts, replaced = self._write_changed(table, changed, gone)
        else:
            n_parts = len(parts)
        if table is None:  # nothing in the source yet, and no table to mark
            log.info("%s: nothing in the source yet; nothing exported", self.project)
            return SyncResult(
                self.project, ".".join(self.identifier), self.location, 0, 0, None, None,
                time.monotonic() - started, "unchanged",
            )  # fmt: skip
        watermark = changes.high_watermark.isoformat() if changes.high_watermark else None
        props = {
            PROP_WATERMARK: watermark or "",
            PROP_CURSOR: cursor_json(self.last_cursor() if window else changes.cursor),  # a backfill never moves it
            PROP_ROWS: str(rows),
            PROP_SOURCE: f"{source.name}:{self.project}",
            PROP_SYNC: sync_id,
        }
        # the annotations table exists (and has a snapshot) from the first sync on, so that the latest view
        # can be created before any span has an annotation
        ann_table = ann_table or self._create_annotations()
        if ann_files or ann_table.current_snapshot() is None or self._is_retry(ann_table, base):
            ann_table = self._commit_annotations(ann_table, ann_files, base, sync_id)
            self.publish_annotations(ann_table)
        table = self._commit(table, span_files, replaced, props)
        self.publish(table)
        snap = table.current_snapshot()
        result = SyncResult(
            self.project,
            ".".join(self.identifier),
            self.location,
            rows,
            n_parts,
            snap.snapshot_id if snap else None,
            watermark,
            time.monotonic() - started,
            mode if rows or ann_rows else ("window" if window else "unchanged"),
            ann_rows,
        )
        if result.mode == "unchanged":
            log.info("%s: no changes since %s (watermark); nothing exported (%.2fs)", self.project,
                     watermark or "the first sync", result.seconds)  # fmt: skip
        log.info(
            "%s: %s sync wrote %d span row(s) in %d partition(s) to %s and %d annotation row(s) to %s "
            "(watermark %s, %.2fs)",
            self.project,
            result.mode,
            rows,
            n_parts,
            self.location,
            ann_rows,
            self.annotations_location,
            watermark,
            result.seconds,
        )
        return result

    @staticmethod
    def _base(table: Table | None, cursor: dict | None) -> str:
        """Where a sync starts: the spans table's snapshot and the cursor (see the module docstring)."""
        import hashlib

        snap = table.current_snapshot() if table is not None else None
        digest = hashlib.sha256(cursor_json(cursor).encode()).hexdigest()[:16]
        return f"{snap.snapshot_id if snap is not None else 'none'}:{digest}"

    def publish(self, table: Table) -> None:
        """After any commit to the project's spans table (a sync, or the lake upkeep's expiry and compaction):
        the ``latest.metadata.json`` pointer and, with ``delta`` in the formats, the Delta log follow it."""
        self._publish(table, self.location, PARTITIONS)

    def publish_annotations(self, table: Table) -> None:
        """:meth:`publish` for the annotations table."""
        self._publish(table, self.annotations_location, ANNOTATION_PARTITIONS)

    def _publish(self, table: Table, location: str, partitions: list[str]) -> None:
        write_pointers(table)
        if "delta" in self.connector.formats:
            from obslake.fabric.delta import files_from_iceberg, sync_delta_log, writes_true_names

            sync_delta_log(
                location,
                table.schema().as_arrow(),
                partitions,
                files_from_iceberg(table),
                storage_options=delta_storage_options(table),
                true_names=writes_true_names(table),
            )

    def _drop_old_columns(self, table: Table) -> Table:
        old = [f.name for f in table.schema().fields if _OLD_LAYOUT_COLUMNS.match(f.name)]
        if old:
            with table.update_schema() as upd:
                for name in old:
                    upd.delete_column(name)
            log.info("%s: dropped the first layout's column(s) %s from the current schema", self.location, old)
        return table

    def _write_changed(
        self, table: Table, changed: list[pa.Table], gone: set[str] | None = None
    ) -> tuple[list, int, int, list | None]:
        """Spans whose own rows changed or are new: new ones are appended; the data files that hold an
        earlier row of one of them, or a span of a ``gone`` trace, are rewritten without it
        (copy-on-write of those files only).

        For changed spans only the files of the partitions they fall in are looked at, and of those only
        the ``span_id`` column is read; for gone traces (a delete in the source, rare) the ``trace_id``
        column of every file.
        """
        clock = time.monotonic()
        target = table.schema().as_arrow()
        if changed:
            new = pa.concat_tables([self._conform(c, target) for c in changed])
            new = latest_by(new, ["span_id"], ["_updated_at"])
        else:
            new = target.empty_table()
        parts = set(zip(pc.cast(new["date"], pa.int32()).to_pylist(), new["hour"].to_pylist(), strict=True))
        ids = new["span_id"]
        replaced = [
            f
            for f in (self._files_in_partitions(table, parts) if parts else [])
            if pc.any(pc.is_in(read_data_files(table, [f], ("span_id",))["span_id"], ids)).as_py()
        ]
        gone_ids = pa.array(sorted(gone or ()), pa.string())
        if len(gone_ids):
            seen = {f.file_path for f in replaced}
            replaced += [
                f
                for f in live_data_files(table)
                if f.file_path not in seen
                and pc.any(pc.is_in(read_data_files(table, [f], ("trace_id",))["trace_id"], gone_ids)).as_py()
            ]
        phases = {"plan": time.monotonic() - clock}
        clock = time.monotonic()
        keep_rows = 0
        merged = new
        if replaced:
            existing = read_data_files(table, replaced)
            drop = pc.or_(pc.is_in(existing["span_id"], ids), pc.is_in(existing["trace_id"], gone_ids))
            keep = existing.filter(pc.invert(pc.fill_null(drop, False)))
            keep_rows = keep.num_rows
            if len(gone_ids):
                removed = pc.sum(pc.is_in(existing["trace_id"], gone_ids)).as_py() or 0
                log.info("%s: removing %d span(s) of %d trace(s) deleted in the source", self.project, removed,
                         len(gone_ids))  # fmt: skip
            merged = pa.concat_tables([self._conform(keep, target), new])
        merged = merged.sort_by([("start_time", "ascending")])
        data_files = write_data_files(table.metadata, table.io, merged, uuid.uuid4(), itertools.count(0))
        phases["write"] = time.monotonic() - clock
        log.info(
            "%s: %d changed or new span(s) in %d partition(s): %d file(s) rewritten, %d unchanged row(s) kept, "
            "%d file(s) written (%s)",
            self.project,
            new.num_rows,
            len(parts),
            len(replaced),
            keep_rows,
            len(data_files),
            ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()),
        )
        return data_files, new.num_rows, len(parts), replaced or None

    @staticmethod
    def _gone_traces(table: Table, live: pa.Array) -> set[str]:
        """Trace ids in the spans table that the source no longer has (reads the ``trace_id`` column)."""
        exported = pc.unique(table.scan(selected_fields=("trace_id",)).to_arrow()["trace_id"].combine_chunks())
        return set(exported.filter(pc.invert(pc.is_in(exported, live))).to_pylist())

    @staticmethod
    def _delete_markers(table: Table, live: pa.Table, synced_at: dt.datetime) -> pa.Table:
        """A delete marker for every annotation whose latest version is live in the log but whose key the
        source no longer has (``live``: every key it has). The marker keeps the version's ``updated_at`` and
        gets this sync's ``_synced_at``, so it is the latest version of its key."""
        if table.current_snapshot() is None:
            return ANNOTATION_LOG_SCHEMA.empty_table()
        fields = ("span_id", "trace_id", "name", "kind", "annotator_kind", "identifier", "updated_at", "deleted",
                  "date", "_synced_at")  # fmt: skip
        versions = table.scan(selected_fields=fields).to_arrow()
        latest = latest_by(versions, ANNOTATION_KEYS, ANNOTATION_ORDER)
        alive = latest.filter(pc.invert(pc.fill_null(latest["deleted"], False)))
        # the same key types on both sides (a scan gives large_string, a source string): a join needs them equal
        keys = live.select(ANNOTATION_KEYS).cast(pa.schema([alive.schema.field(k) for k in ANNOTATION_KEYS]))
        gone = alive.join(keys, keys=ANNOTATION_KEYS, join_type="left anti")
        n = gone.num_rows
        cols = {name: gone[name] for name in fields if name in gone.column_names}
        cols["deleted"] = pa.chunked_array([pa.repeat(pa.scalar(True), n)])
        cols["_synced_at"] = pa.chunked_array([pa.repeat(pa.scalar(synced_at, TS), n)])
        arrays = [
            cols[f.name].cast(f.type) if f.name in cols else pa.chunked_array([pa.nulls(n, f.type)])
            for f in ANNOTATION_LOG_SCHEMA
        ]
        return pa.Table.from_arrays(arrays, schema=ANNOTATION_LOG_SCHEMA)

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

    @staticmethod
    def _is_retry(table: Table, base: str) -> bool:
        snap = table.current_snapshot()
        return snap is not None and snap.summary is not None and snap.summary.get(PROP_BASE) == base

    def _commit_annotations(self, table: Table, data_files: list, base: str, sync_id: str) -> Table:
        """Append the sync's change-log files; if the current snapshot is this sync's own earlier attempt
        (same base: it committed the annotations, then failed before the spans), replace its files."""
        from pyiceberg.manifest import ManifestEntryStatus

        snap = table.current_snapshot()
        redo: list = []
        if snap is not None and self._is_retry(table, base):
            redo = [
                e.data_file
                for m in snap.manifests(table.io)
                for e in m.fetch_manifest_entry(table.io, discard_deleted=True)
                if e.snapshot_id == snap.snapshot_id and e.status == ManifestEntryStatus.ADDED
            ]
            log.info(
                "%s: replacing %d file(s) of an earlier attempt of this sync", self.annotations_location, len(redo)
            )
        props = {PROP_BASE: base, PROP_SYNC: sync_id, PROP_ROWS: str(sum(f.record_count for f in data_files))}
        return self._commit(table, data_files, redo or None, props)

    def _commit(self, table: Table, data_files: list, replaced: list | None, props: dict) -> Table:
        from pyiceberg.exceptions import ValidationException

        def attempt(n: int) -> Table:
            if n:
                # a single writer per connector is guaranteed by max_active_runs=1; a conflict means a
                # manual run raced us: an overwrite whose files are gone fails validation below
                table.refresh()
            tx = table.transaction()
            ensure_properties(tx, table.properties)  # bounded metadata also for tables of earlier versions
            if table.properties.get(PROP_LAYOUT) != LAYOUT:  # a new table, or the end of a re-export
                tx.set_properties({PROP_LAYOUT: LAYOUT})
            if replaced:  # one OVERWRITE snapshot: the rewritten files out, the new ones in
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
            return commit_with_retry(attempt, what=table.location())
        except ValidationException as exc:
            # a concurrent commit removed a file we rewrote: our merge is stale, the sync must rerun
            raise CommitConflictError(f"{table.location()}: the table changed during the sync ({exc}); retry") from exc


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
