"""Map an input file's columns onto a model table's columns, batch by batch, and find bad records.

The model table holds the canonical role columns (``prediction_id``, ``prediction_timestamp``,
``prediction_label``, ``prediction_score``, ``actual_label``, ``actual_score``), the feature and tag
columns under their own names, the materialised partition column ``date`` and the lineage columns
``_source_file``, ``_source_row`` (1-based) and ``_ingested_at``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from obslake.config import SchemaMapping
from obslake.exceptions import SchemaMismatchError

LINEAGE_COLUMNS = ("_source_file", "_source_row", "_ingested_at")
PARTITION_COLUMN = "date"
TS_TYPE = pa.timestamp("us", tz="UTC")
MAX_ID_CHARS = 512
MAX_PROBLEMS = 100
TS_PAST = dt.timedelta(days=5 * 365)
TS_FUTURE = dt.timedelta(days=365)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, located as precisely as obslake can.

    ``row`` is 1-based among data rows (for CSV, the line is ``row + 1`` because of the header).
    """

    code: str
    message: str
    file: str
    fix: str
    row: int | None = None
    column: str | None = None
    value: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f" column {self.column!r}"
        val = f" (value {self.value!r})" if self.value is not None else ""
        return f"[{self.code}] {where}: {self.message}{val}. Fix: {self.fix}"


class RecordErrors(SchemaMismatchError):
    """Records of a file break the model schema; ``problems`` holds each with its location."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = "" if len(problems) < MAX_PROBLEMS else f" (first {MAX_PROBLEMS} shown)"
        super().__init__(f"{len(problems)} bad record(s){more}:\n" + "\n".join(f"  {p}" for p in problems))


def _short(value: object, limit: int = 80) -> str:
    s = str(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _normalise_type(t: pa.DataType) -> pa.DataType | None:
    """The Iceberg-friendly type for ``t`` (None when it can stay as it is)."""
    if pa.types.is_dictionary(t):
        return _normalise_type(t.value_type) or t.value_type
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_unsigned_integer(t) or t in (pa.int8(), pa.int16()):
        return pa.int64() if t in (pa.uint32(), pa.uint64()) else pa.int32()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t) and t.unit != "us":
        return pa.timestamp("us", tz=t.tz)
    if pa.types.is_time(t) and t != pa.time64("us"):
        return pa.time64("us")
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return None


class BatchMapper:
    """Turns the record batches of one file into batches of the model table.

    Args:
        mapping: the job's column mapping.
        file_schema: the Arrow schema of the file (from :func:`obslake.formats.read_schema`).
        source: the file's URI (lineage and error locations).
        ingested_at: one timestamp for the whole file.

    Raises:
        SchemaMismatchError: a mapped column is missing, or a role column has a type that cannot work.
    """

    def __init__(self, mapping: SchemaMapping, file_schema: pa.Schema, source: str, ingested_at: dt.datetime):
        self.mapping = mapping
        self.source = source
        self.ingested_at = ingested_at
        names = file_schema.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaMismatchError(
                f"{source}: duplicate column name(s) {dupes}; rename them so every column name is unique"
            )
        roles = mapping.role_columns()
        missing = [f"{role} -> {col!r}" for role, col in roles.items() if col not in names]
        if missing:
            raise SchemaMismatchError(
                f"{source}: column(s) named in the job schema are missing from the file: {', '.join(missing)}. "
                f"The file has: {names[:50]}. Fix the job's `schema:` mapping or the file's header."
            )
        claimed = set(roles.values()) | set(mapping.exclude)
        self.tags = [c for c in mapping.tags.select(names) if c not in claimed]
        claimed |= set(self.tags)
        if mapping.features is None:
            self.features = [c for c in names if c not in claimed]
        else:
            self.features = [c for c in mapping.features.select(names) if c not in claimed]
        reserved = set(roles) | set(LINEAGE_COLUMNS) | {PARTITION_COLUMN}
        clash = [c for c in self.features + self.tags if c in reserved]
        if clash:
            raise SchemaMismatchError(
                f"{source}: feature/tag column(s) {clash} collide with obslake's reserved column names; "
                "rename them or list them under `schema.exclude`"
            )
        self.roles = roles
        self.file_schema = file_schema
        self._epoch_unit: str | None = None
        ts_col = roles.get("prediction_timestamp")
        if ts_col is not None:
            t = file_schema.field(ts_col).type
            ok = (
                pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_date(t)
            )
            if not ok:
                raise SchemaMismatchError(
                    f"{source}: timestamp column {ts_col!r} has type {t}; use a timestamp, epoch seconds/ms/us "
                    "as integers, or RFC 3339 strings"
                )

    # -- record checks ---------------------------------------------------------------------------
    def _id_column(self, batch: pa.RecordBatch, first_row: int, problems: list[Problem]) -> pa.Array:
        col = self.roles["prediction_id"]
        arr = batch.column(col)
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_integer(arr.type)):
            problems.append(Problem(
                "ID_TYPE", f"prediction id must be a string or an integer, not {arr.type}", self.source,
                "write prediction ids as strings", column=col,
            ))
            return arr
        arr = arr.cast(pa.string())
        lengths = pc.utf8_length(arr)
        bad = pc.or_kleene(pc.is_null(arr), pc.or_(pc.equal(lengths, 0), pc.greater(lengths, MAX_ID_CHARS)))
        bad = pc.fill_null(bad, True)
        for i in pc.indices_nonzero(bad).to_pylist()[: MAX_PROBLEMS - len(problems)]:
            v = arr[i].as_py()
            if v is None or v == "":
                problems.append(Problem(
                    "ID_MISSING", "prediction id is null or empty", self.source,
                    "give every row a non-empty prediction id", row=first_row + i, column=col,
                ))
            else:
                problems.append(Problem(
                    "ID_TOO_LONG", f"prediction id has {len(v)} characters (max {MAX_ID_CHARS})", self.source,
                    f"shorten ids to at most {MAX_ID_CHARS} characters", row=first_row + i, column=col, value=_short(v),
                ))
        return arr

    def _timestamps(self, batch: pa.RecordBatch, first_row: int, problems: list[Problem]) -> pa.Array:
        col = self.roles.get("prediction_timestamp")
        if col is None:
            return pa.array([self.ingested_at] * batch.num_rows, TS_TYPE)
        arr = batch.column(col)
        t = arr.type
        if pa.types.is_timestamp(t):
            if t.tz is None:
                arr = pc.assume_timezone(arr, "UTC")
            out = arr.cast(pa.timestamp("us", tz="UTC"))
        elif pa.types.is_date(t):
            out = arr.cast(pa.timestamp("us")).cast(TS_TYPE)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            if self._epoch_unit is None:
                mx = pc.max(pc.abs(arr)).as_py()
                if mx is None:
                    mx = 0
                self._epoch_unit = "s" if mx < 1e11 else "ms" if mx < 1e14 else "us" if mx < 1e17 else "ns"
            factor = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[self._epoch_unit]
            micros = pc.multiply(arr.cast(pa.float64()), factor)
            finite = pc.is_finite(micros)
            micros = pc.if_else(finite, micros, None)
            out = pc.round(micros).cast(pa.int64()).cast(TS_TYPE)
            for i in pc.indices_nonzero(pc.invert(pc.fill_null(finite, True))).to_pylist()[:MAX_PROBLEMS]:
                problems.append(Problem(
                    "TS_INVALID", "timestamp is not a finite number", self.source,
                    "write epoch seconds/ms/us as finite numbers", row=first_row + i, column=col,
                    value=_short(arr[i].as_py()),
                ))
        else:  # strings: RFC 3339 / ISO 8601
            arr = arr.cast(pa.string())
            try:
                out = arr.cast(TS_TYPE)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values = []
                for i, v in enumerate(arr.to_pylist()):
                    try:
                        values.append(None if v is None else pa.scalar(v).cast(TS_TYPE).as_py())
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        values.append(None)
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(Problem(
                                "TS_PARSE", "timestamp is not RFC 3339 / ISO 8601", self.source,
                                "write timestamps like 2024-05-01T12:00:00Z or as epoch seconds",
                                row=first_row + i, column=col, value=_short(v),
                            ))
                out = pa.array(values, TS_TYPE)
        # a null timestamp defaults to ingest time, as in Arize
        out = pc.fill_null(out, pa.scalar(self.ingested_at, TS_TYPE))
        lo = pa.scalar(self.ingested_at - TS_PAST, TS_TYPE)
        hi = pa.scalar(self.ingested_at + TS_FUTURE, TS_TYPE)
        bad = pc.or_(pc.less(out, lo), pc.greater(out, hi))
        for i in pc.indices_nonzero(bad).to_pylist()[: max(0, MAX_PROBLEMS - len(problems))]:
            problems.append(Problem(
                "TS_OUT_OF_RANGE", "timestamp is more than 5 years in the past or 1 year in the future",
                self.source, "check the unit (seconds vs milliseconds) and the year", row=first_row + i,
                column=col, value=_short(batch.column(col)[i].as_py()),
            ))
        return out

    # -- mapping ---------------------------------------------------------------------------------
    def map(self, batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
        """Map one batch whose first row is data row ``first_row`` (1-based) of the file.

        Raises:
            RecordErrors: some rows break the schema; nothing of this file should be committed.
        """
        problems: list[Problem] = []
        ids = self._id_column(batch, first_row, problems)
        ts = self._timestamps(batch, first_row, problems)
        if problems:
            raise RecordErrors(problems)
        n = batch.num_rows
        arrays: list[pa.Array] = [ids, ts]
        names: list[str] = ["prediction_id", "prediction_timestamp"]
        for role in ("prediction_label", "prediction_score", "actual_label", "actual_score"):
            col = self.roles.get(role)
            if col is not None:
                arrays.append(batch.column(col))
                names.append(role)
        for col in self.features + self.tags:
            arrays.append(batch.column(col))
            names.append(col)
        for i, a in enumerate(arrays):
            target = _normalise_type(a.type)
            if target is not None:
                arrays[i] = a.dictionary_decode().cast(target) if pa.types.is_dictionary(a.type) else a.cast(target)
        arrays.append(pc.cast(ts, pa.date32()))
        names.append(PARTITION_COLUMN)
        arrays.append(pa.array([self.source] * n, pa.string()))
        arrays.append(pa.array(range(first_row, first_row + n), pa.int64()))
        arrays.append(pa.array([self.ingested_at] * n, TS_TYPE))
        names.extend(LINEAGE_COLUMNS)
        return pa.RecordBatch.from_arrays(arrays, names=names)
