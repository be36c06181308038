"""Data Fabric: the shapes every trace source produces.

A source yields, per project, *changes*: batches of spans (:data:`SPAN_SCHEMA`) together with ALL
annotations of those spans (:data:`ANNOTATION_SCHEMA`), plus a new cursor. The exporter
(:mod:`obslake.fabric.export`) writes them into two tables per project:

* spans: the span columns of :data:`SPAN_SCHEMA` (``attributes`` and ``events`` as JSON text), the
  flattened OpenInference attributes (:data:`FLAT_ATTRIBUTES`) as ``attributes.<key>`` columns,
  ``date`` / ``hour`` of ``start_time`` (UTC, the Hive-style identity partitions), ``_updated_at`` (the
  source's change time of the span) and ``_synced_at``;
* annotations: one change-log row per version of an evaluation or annotation; the view that
  ``obslake fabric ddl`` prints turns the latest of each into ``eval.<name>.label|score|explanation``
  (annotator kinds LLM and CODE) and ``annotation.<name>.label|score|explanation|annotator_kind|
  identifier|updated_at`` (HUMAN) columns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import pyarrow as pa

from obslake.schema.traces import ANNOTATION_SCHEMA, SPAN_SCHEMA, TS  # noqa: F401 (the shapes sources produce)

# OpenInference attribute keys flattened into their own columns (`attributes.<key>`); the rest stay in JSON.
FLAT_ATTRIBUTES: dict[str, pa.DataType] = {
    "openinference.span.kind": pa.string(),
    "input.value": pa.string(),
    "input.mime_type": pa.string(),
    "output.value": pa.string(),
    "output.mime_type": pa.string(),
    "llm.model_name": pa.string(),
    "llm.provider": pa.string(),
    "llm.system": pa.string(),
    "llm.token_count.prompt": pa.int64(),
    "llm.token_count.completion": pa.int64(),
    "llm.token_count.total": pa.int64(),
    "llm.invocation_parameters": pa.string(),
    "session.id": pa.string(),
    "user.id": pa.string(),
    "tool.name": pa.string(),
    "retrieval.documents": pa.string(),  # JSON
    "metadata": pa.string(),  # JSON
    "tag.tags": pa.string(),  # JSON
}


@dataclasses.dataclass
class ChangeBatch:
    """Spans that changed (new, updated, or whose annotations changed) and all their annotations.

    ``spans_changed=False`` says that the spans of the batch are only there because their annotations
    changed: the exporter then writes only the annotations (the spans table is not touched) and uses
    only ``span_id``, ``trace_id`` and ``start_time`` of the spans (a source may leave the other columns
    null). A source that cannot tell leaves it True (always correct, only costlier); a whole-history
    export (no cursor) sends every span with True.
    """

    spans: pa.Table  # SPAN_SCHEMA
    annotations: pa.Table  # ANNOTATION_SCHEMA, every annotation of these spans
    spans_changed: bool = True


@dataclasses.dataclass
class Changes:
    """What a source returns for one project: the batches (lazy) and the cursor to store after them.

    ``cursor`` is a JSON-able dict, opaque to the caller; read it only after the batches are consumed.
    ``high_watermark`` is the largest change time covered (for the completeness marker).
    """

    batches: Iterator[ChangeBatch]
    cursor: dict
    high_watermark: dt.datetime | None = None
    live_annotation_keys: pa.Table | None = None
    """When the source saw annotations deleted: the key (``span_id``, ``name``, ``identifier``, as
    exported) of every annotation the project has now; the exporter marks the others deleted."""
    live_trace_ids: pa.Array | None = None
    """When the source saw traces deleted: the id of every trace the project has now; the exporter
    removes the spans of the others."""


@runtime_checkable
class TraceSource(Protocol):
    """Where traces come from (the lake's own trace tables, an Arize Phoenix database, …).

    Note:
        Change capture must never miss a late or updated row: cursors are on change time (ingest or
        update time) or on insertion ids, never on event time, and a source with coarse timestamps
        (Phoenix on SQLite stores ``updated_at`` to the second) re-reads an ``overlap`` window before
        the cursor. Duplicates are fine: the exporter de-duplicates by ``span_id``. A source that can
        lose rows (deletes, retention) says so with ``live_annotation_keys`` / ``live_trace_ids``.
    """

    name: str

    def list_projects(self) -> list[str]:
        """Project names the source holds."""
        ...

    def changes(
        self, project: str, cursor: dict | None, *, overlap: dt.timedelta, batch_spans: int = 50_000
    ) -> Changes:
        """Changes since ``cursor`` (``None``: the whole history)."""
        ...
