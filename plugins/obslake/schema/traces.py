"""Tracing import jobs: files of spans or annotations into the lake's own trace tables.

A ``kind: spans`` job maps files whose columns are OpenInference spans — our names
(:data:`SPAN_SCHEMA`) or Phoenix's export names (``context.span_id``,
``context.trace_id``, ``attributes.<key>`` columns, which are folded into the ``attributes`` JSON) —
into ``<trace_space>.<project>__spans``. A ``kind: annotations`` job maps ``span_id, name, label,
score, explanation, annotator_kind, identifier, updated_at`` into ``<trace_space>.<project>__annotations``.
Both tables get ``date`` (partition) and the lineage columns; ``changed_at`` of a span is its ingest time.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from obslake.exceptions import SchemaMismatchError
from obslake.schema.mapping import (
    LINEAGE_COLUMNS,
    PARTITION_COLUMN,
    TS_TYPE,
    BatchMapper,
    Problem,
    _decode,
    _epoch_unit,
    constant,
    lineage_arrays,
    parse_ts_text_cells,
    true_rows,
)
from obslake.schema.types import JobKind

if TYPE_CHECKING:
    from obslake.config import ImportJob

TS = TS_TYPE  # UTC microseconds, as every obslake timestamp
MIN_US, MAX_US = -62_135_596_800e6, 253_402_300_799e6  # 0001-01-01 .. 9999-12-31 (as float µs: compared with floats)

SPAN_SCHEMA = pa.schema(
    [
        ("span_id", pa.string()),
        ("trace_id", pa.string()),
        ("parent_id", pa.string()),
        ("name", pa.string()),
        ("span_kind", pa.string()),
        ("start_time", TS),
        ("end_time", TS),
        ("status_code", pa.string()),
        ("status_message", pa.string()),
        ("attributes", pa.string()),  # JSON object (nested OpenInference attributes, as Phoenix stores them)
        ("events", pa.string()),  # JSON array
        ("cumulative_error_count", pa.int64()),
        ("cumulative_llm_token_count_prompt", pa.int64()),
        ("cumulative_llm_token_count_completion", pa.int64()),
        ("trace_start_time", TS),
        ("trace_end_time", TS),
        ("changed_at", TS),  # when the source last changed this span (ingest/update time, never event time)
    ]
)

ANNOTATION_SCHEMA = pa.schema(
    [
        ("span_id", pa.string()),
        ("name", pa.string()),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("explanation", pa.string()),
        ("annotator_kind", pa.string()),  # LLM | CODE | HUMAN
        ("identifier", pa.string()),  # "" when none
        ("updated_at", TS),
    ]
)


ALIASES = {
    "context.span_id": "span_id",
    "context.trace_id": "trace_id",
    "parent_span_id": "parent_id",
    "kind": "span_kind",
    "status": "status_code",
    "annotation_name": "name",
    "result.label": "label",
    "result.score": "score",
    "result.explanation": "explanation",
}
REQUIRED = {JobKind.spans: ("span_id", "trace_id", "name", "start_time"), JobKind.annotations: ("span_id", "name")}


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        if value is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return out


class TraceMapper:
    """Same interface as :class:`~obslake.schema.mapping.BatchMapper`, for span and annotation files."""

    def __init__(
        self, job: ImportJob, declared: pa.Schema, source: str, ingested_at: dt.datetime, fmt: str = "parquet"
    ):
        self.job, self.source, self.ingested_at, self.is_csv = job, source, ingested_at, fmt == "csv"
        self.kind = job.kind
        names = declared.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaMismatchError(
                f"{source}: duplicate column name(s) {dupes}; rename them so every column name is unique",
                code="DUPLICATE_COLUMN",
            )
        self.columns = {ALIASES.get(n, n): n for n in names if not n.startswith("attributes.")}
        self.flat_attributes = [n for n in names if n.startswith("attributes.")]
        missing = [c for c in REQUIRED[self.kind] if c not in self.columns]
        if missing:
            raise SchemaMismatchError(
                f"{source}: a {self.kind.value} file needs column(s) {missing} (or their OpenInference names "
                f"context.span_id / context.trace_id); the file has {names[:40]}",
                code="COLUMN_MISSING",
            )
        self.target = SPAN_SCHEMA if self.kind == JobKind.spans else ANNOTATION_SCHEMA

    def _col(self, batch: pa.RecordBatch, name: str) -> pa.Array | None:
        src = self.columns.get(name)
        return None if src is None else _decode(batch.column(src))

    def _time(
        self,
        arr: pa.Array | None,
        n: int,
        name: str,
        first_row: int,
        problems: list[Problem],
        default: dt.datetime | None,
    ) -> pa.Array:
        if arr is None:
            return constant(default, TS, n)
        if pa.types.is_timestamp(arr.type):
            out = (pc.assume_timezone(arr, "UTC") if arr.type.tz is None else arr).cast(TS)
        elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            num = pc.cast(arr, pa.float64(), safe=False)  # int64 ns epochs (about 1.7e18) are beyond 2**53
            factor = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[_epoch_unit(num)]
            micros = pc.multiply(num, factor)
            finite = pc.is_finite(micros)
            outside = pc.or_(pc.less(micros, MIN_US), pc.greater(micros, MAX_US))
            for mask, code, what in (
                (pc.invert(finite), "TS_INVALID", "is not a finite number"),
                (pc.and_(finite, outside), "TS_OUT_OF_RANGE", "is outside the years 1-9999"),
            ):
                for i in true_rows(mask)[:100]:
                    problems.append(
                        Problem(
                            code,
                            f"{name} {what}",
                            self.source,
                            "write epoch seconds, ms, us or ns",
                            row=first_row + i,
                            column=self.columns[name],
                            value=str(num[i].as_py()),
                        )
                    )
            fits = pc.and_(finite, pc.invert(outside))
            micros = pc.if_else(fits, micros, pa.scalar(None, pa.float64()))
            out = pc.round(micros).cast(pa.int64()).cast(TS)
        else:
            text = arr.cast(pa.string())
            out, bad = parse_ts_text_cells(text)
            for i in bad:
                problems.append(
                    Problem(
                        "TS_PARSE",
                        f"{name} is not RFC 3339 / ISO 8601",
                        self.source,
                        "write timestamps like 2024-05-01T12:00:00.123Z",
                        row=first_row + i,
                        column=self.columns[name],
                        value=str(text[i].as_py())[:80],
                    )
                )
        if default is not None:
            out = pc.fill_null(out, pa.scalar(default, TS))
        return out

    def _json(self, arr: pa.Array | None, n: int, default: str) -> pa.Array:
        if arr is None:
            return constant(default, pa.string(), n)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return pc.fill_null(arr.cast(pa.string()), default)
        return pa.array([default if v is None else json.dumps(v, default=str) for v in arr.to_pylist()], pa.string())

    def finish(self) -> list[Problem]:
        """Nothing is checked only at the end of a trace file (the interface of BatchMapper.finish)."""
        return []

    def map(self, batch: pa.RecordBatch, first_row: int) -> tuple[pa.RecordBatch, list[Problem]]:
        """Map one batch (see the module docstring); problems locate missing ids and bad timestamps."""
        problems: list[Problem] = []
        n = batch.num_rows
        out: dict[str, pa.Array] = {}
        for key in ("span_id", "trace_id", "name") if self.kind == JobKind.spans else ("span_id", "name"):
            col = self._col(batch, key)
            if col is None:  # __init__ checked the file has every REQUIRED column
                raise SchemaMismatchError(
                    f"{self.source}: a {self.kind.value} file needs column {key!r}", code="COLUMN_MISSING"
                )
            arr = col.cast(pa.string())
            for i in pc.indices_nonzero(pc.fill_null(pc.equal(pc.utf8_length(arr), 0), True)).to_pylist()[:100]:
                problems.append(
                    Problem(
                        "ID_MISSING",
                        f"{key} is null or empty",
                        self.source,
                        f"give every row a {key}",
                        row=first_row + i,
                        column=self.columns[key],
                    )
                )
            out[key] = arr
        if self.kind == JobKind.spans:
            attrs = self._json(self._col(batch, "attributes"), n, "{}")
            if self.flat_attributes:
                flat = {c[len("attributes.") :]: batch.column(c).to_pylist() for c in self.flat_attributes}
                merged = []
                for i, base in enumerate(attrs.to_pylist()):
                    d = json.loads(base or "{}")
                    d.update(_nest({k: v[i] for k, v in flat.items()}))
                    merged.append(json.dumps(d, default=str))
                attrs = pa.array(merged, pa.string())
            start = self._time(self._col(batch, "start_time"), n, "start_time", first_row, problems, None)
            for i in pc.indices_nonzero(pc.fill_null(pc.is_null(start), True)).to_pylist()[:100]:
                if not any(p.row == first_row + i for p in problems):
                    problems.append(
                        Problem(
                            "TS_MISSING",
                            "start_time is missing",
                            self.source,
                            "give every span its start time",
                            row=first_row + i,
                            column="start_time",
                        )
                    )
            values = {
                "parent_id": self._col(batch, "parent_id"),
                "span_kind": self._col(batch, "span_kind"),
                "status_code": self._col(batch, "status_code"),
                "status_message": self._col(batch, "status_message"),
                "start_time": start,
                "end_time": self._time(self._col(batch, "end_time"), n, "end_time", first_row, problems, None),
                "attributes": attrs,
                "events": self._json(self._col(batch, "events"), n, "[]"),
                "trace_start_time": None,
                "trace_end_time": None,
                "changed_at": constant(self.ingested_at, TS, n),
            }
            part_source = start
        else:
            updated = self._time(self._col(batch, "updated_at"), n, "updated_at", first_row, problems, self.ingested_at)
            kind = self._col(batch, "annotator_kind")
            kind = (
                constant("HUMAN", pa.string(), n)
                if kind is None
                else pc.fill_null(pc.utf8_upper(kind.cast(pa.string())), "HUMAN")
            )
            bad_kind = pc.invert(pc.is_in(kind, pa.array(["LLM", "CODE", "HUMAN"])))
            for i in pc.indices_nonzero(bad_kind).to_pylist()[:100]:
                problems.append(
                    Problem(
                        "ANNOTATOR_KIND",
                        "annotator_kind must be LLM, CODE or HUMAN",
                        self.source,
                        "use LLM, CODE or HUMAN",
                        row=first_row + i,
                        column="annotator_kind",
                        value=kind[i].as_py(),
                    )
                )
            ident = self._col(batch, "identifier")
            values = {
                "label": self._col(batch, "label"),
                "score": self._col(batch, "score"),
                "explanation": self._col(batch, "explanation"),
                "annotator_kind": kind,
                "identifier": constant("", pa.string(), n)
                if ident is None
                else pc.fill_null(ident.cast(pa.string()), ""),
                "updated_at": updated,
            }
            part_source = updated
        for field in self.target:
            if field.name in out:
                continue
            arr = values.get(field.name)
            if arr is None:
                arr = pa.nulls(n, field.type)
            else:
                try:
                    arr = arr.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise SchemaMismatchError(
                        f"{self.source}: column {field.name!r} is {arr.type}; it must be {field.type}",
                        code="TYPE_MISMATCH",
                    ) from None
            out[field.name] = arr
        out[PARTITION_COLUMN] = pc.cast(pc.fill_null(part_source, pa.scalar(self.ingested_at, TS)), pa.date32())
        out.update(lineage_arrays(self.source, first_row, n, self.ingested_at))
        names = [f.name for f in self.target] + [PARTITION_COLUMN, *LINEAGE_COLUMNS]
        return pa.RecordBatch.from_arrays([out[k] for k in names], names=names), problems


def make_mapper(
    job: ImportJob,
    declared: pa.Schema,
    source: str,
    ingested_at: dt.datetime,
    fmt: str,
    table_schema: pa.Schema | None = None,
    defer_duplicates: bool = False,
):
    """The mapper for a job's kind: model files (BatchMapper) or trace files (TraceMapper).

    ``defer_duplicates``: see :class:`BatchMapper`; the caller must add :meth:`finish`'s problems.
    """
    if job.kind.is_trace:
        return TraceMapper(job, declared, source, ingested_at, fmt)
    return BatchMapper(
        job, declared, source, ingested_at, fmt, table_schema=table_schema, defer_duplicates=defer_duplicates
    )
