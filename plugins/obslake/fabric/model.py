"""Data Fabric: the shapes every trace source produces and the exported table's column layout.

A source yields, per project, *changes*: batches of spans (:data:`SPAN_SCHEMA`) together with ALL
annotations of those spans (:data:`ANNOTATION_SCHEMA`), plus a new cursor. The exporter turns each
span and its annotations into one row of the project's table:

* the span columns of :data:`SPAN_SCHEMA` (``attributes`` and ``events`` as JSON text);
* flattened OpenInference attributes (:data:`FLAT_ATTRIBUTES`) as ``attributes.<key>`` columns;
* per annotation name, from the most recently updated annotation of that name on the span:
  ``eval.<name>.label|score|explanation`` for annotator kinds LLM and CODE, and
  ``annotation.<name>.label|score|explanation|annotator_kind|identifier|updated_at`` for HUMAN;
  all annotations, every identifier, also as JSON in ``annotations``;
* ``date`` / ``hour`` of ``start_time`` (UTC) — the Hive-style identity partitions;
* ``_updated_at`` (the change time that made this row be exported) and ``_synced_at``.
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
    """Spans that changed (new, updated, or whose annotations changed) and all their annotations."""

    spans: pa.Table  # SPAN_SCHEMA
    annotations: pa.Table  # ANNOTATION_SCHEMA, every annotation of these spans


@dataclasses.dataclass
class Changes:
    """What a source returns for one project: the batches (lazy) and the cursor to store after them.

    ``cursor`` is a JSON-able dict, opaque to the caller; read it only after the batches are consumed.
    ``high_watermark`` is the largest change time covered (for the completeness marker).
    """

    batches: Iterator[ChangeBatch]
    cursor: dict
    high_watermark: dt.datetime | None = None


@runtime_checkable
class TraceSource(Protocol):
    """Where traces come from (the lake's own trace tables, an Arize Phoenix database, …).

    Note:
        Change capture must never miss a late or updated row: cursors are on change time (ingest or
        update time) or on insertion ids, never on event time, and a source with coarse timestamps
        (Phoenix on SQLite stores ``updated_at`` to the second) re-reads an ``overlap`` window before
        the cursor. Duplicates are fine: the exporter de-duplicates by ``span_id``.
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
