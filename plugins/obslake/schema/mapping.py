"""Map an input file's columns onto a model table's columns, batch by batch, and locate bad records.

The model table holds the canonical role columns (``prediction_id``, ``prediction_timestamp``,
``prediction_label``, ``prediction_score``, ``actual_label``, ``actual_score``, ranking, multi-class,
object-detection and LLM columns as mapped), the feature, tag and SHAP columns under their own names,
embeddings as ``embedding__<name>__vector|raw_data|link_to_data``, the materialised partition column
``date`` and the lineage columns ``_source_file``, ``_source_row`` (1-based) and ``_ingested_at``.

:meth:`BatchMapper.map` never raises for bad *records*: it returns the mapped batch together with
:class:`Problem` objects that locate each bad cell, so callers can abort the file (``abort_file``) or
drop and quarantine the bad rows (``skip_rows``). Problems with the *file* (missing or duplicate
columns, a column of an impossible type) raise :class:`~obslake.exceptions.SchemaMismatchError` with
a code.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import functools
import json
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obslake.exceptions import SchemaMismatchError, printable
from obslake.schema.model_types import REQUIREMENTS, label_kind
from obslake.schema.types import JobKind, SchemaMapping, arrow_type

if TYPE_CHECKING:  # the job is read for its mapping, model and kind; the configuration layer sits above
    from obslake.config import ImportJob

SOURCE_FILE, SOURCE_ROW, INGESTED_AT = "_source_file", "_source_row", "_ingested_at"
LINEAGE_COLUMNS = (SOURCE_FILE, SOURCE_ROW, INGESTED_AT)
"""Lineage of every row obslake writes: the file URI, its 1-based data row, when it was ingested."""
PARTITION_COLUMN = "date"
TS_TYPE = pa.timestamp("us", tz="UTC")
LINEAGE_FIELDS = (pa.field(SOURCE_FILE, pa.string()), pa.field(SOURCE_ROW, pa.int64()), pa.field(INGESTED_AT, TS_TYPE))
MAX_ID_CHARS = 512
MAX_VALUE_CHARS = 10_000  # a feature or tag cell
MAX_TEXT_CHARS = 1_000_000  # prompt, response, embedding raw data
MAX_PROBLEMS = 100
TS_PAST = dt.timedelta(days=5 * 365)
TS_FUTURE = dt.timedelta(days=365)
SCORE_MAPS = ("prediction_scores", "actual_scores", "threshold_scores")
_NOT_FINITE_TEXT = frozenset({"nan", "inf", "infinity"})  # lower case, without a sign
# what a stored date or timestamp may hold: readers (Python, Java, Spark) stop at year 9999
_MIN_US, _MAX_US = -62135596800 * 1_000_000, 253402300799 * 1_000_000 + 999_999
BBOX_ROLES = ("coordinates", "categories", "scores")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a file, located as precisely as obslake can.

    ``row`` is 1-based among data rows. For CSV, ``line`` is the physical line (header = line 1; a
    quoted value spanning lines shifts later lines, so it is exact only without such values).
    """

    code: str
    message: str
    file: str
    fix: str
    row: int | None = None
    column: str | None = None
    value: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
            if self.line is not None:
                where += f" (line {self.line})"
        if self.column is not None:
            where += f" column {self.column!r}"
        val = f" (value {self.value!r})" if self.value is not None else ""
        return f"[{self.code}] {where}: {self.message}{val}. Fix: {self.fix}"

    def to_dict(self) -> dict:
        """Plain form (status reports, JSON output)."""
        return dataclasses.asdict(self)


class RecordErrors(SchemaMismatchError):
    """Records of a file break the model schema; ``problems`` holds each with its location."""

    code = "RECORD_ERRORS"

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = "" if len(problems) < MAX_PROBLEMS else f" (first {MAX_PROBLEMS} shown)"
        super().__init__(f"{len(problems)} bad record(s){more}:\n" + "\n".join(f"  {p}" for p in problems))


def _short(value: object, limit: int = 80) -> str:
    s = str(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _normalise_type(t: pa.DataType) -> pa.DataType | None:
    """The Iceberg-friendly type for ``t`` (None when it can stay as it is).

    Timestamps become microseconds, naive or UTC (a zone other than UTC is the same instant in UTC:
    Iceberg stores no zone); decimal256 of at most 38 digits becomes decimal128; date64 date32.
    """
    if pa.types.is_dictionary(t):
        return _normalise_type(t.value_type) or t.value_type
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_unsigned_integer(t) or t in (pa.int8(), pa.int16()):
        return pa.int64() if t in (pa.uint32(), pa.uint64()) else pa.int32()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t) and (t.unit != "us" or t.tz not in (None, "UTC")):
        return pa.timestamp("us", tz=None if t.tz is None else "UTC")
    if (pa.types.is_decimal256(t) and t.precision <= 38) or pa.types.is_decimal32(t) or pa.types.is_decimal64(t):
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_time(t) and t != pa.time64("us"):
        return pa.time64("us")
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return None


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _storable(t: pa.DataType) -> bool:
    """True for the scalar Arrow types an Iceberg table stores as they are (after :func:`_normalise_type`)."""
    if isinstance(t, pa.BaseExtensionType):
        return t == pa.uuid()
    return (
        pa.types.is_boolean(t)
        or t
        in (pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.date32(), pa.time64("us"), pa.string(), pa.binary())
        or pa.types.is_decimal128(t)
        or pa.types.is_fixed_size_binary(t)
        or (pa.types.is_timestamp(t) and t.unit == "us" and t.tz in (None, "UTC"))
    )


def _cast_text(text: pa.Array, target: pa.DataType) -> pa.Array:
    """CSV text to ``target`` as pyarrow's CSV reader converts it: surrounding spaces ignored (`` 1`` is
    1), timestamp text with more than 6 fractional digits truncated to µs."""
    text = pc.utf8_trim_whitespace(text)
    try:
        return text.cast(target)
    except pa.ArrowInvalid:
        if not (pa.types.is_timestamp(target) and target.unit != "ns"):
            raise
        return _cast_truncating(text.cast(pa.timestamp("ns", tz=target.tz)), target)


def _epoch_us(when: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _epoch_unit(num: pa.Array) -> str:
    """The epoch unit (s, ms, us, ns) of numbers, from the magnitude of their median (one wild value
    cannot change the unit of the others)."""
    values = np.abs(pc.drop_null(num).to_numpy(zero_copy_only=False).astype(np.float64))
    values = values[np.isfinite(values) & (values > 0)]
    mid = float(np.sort(values)[(len(values) - 1) // 2]) if len(values) else 0.0  # the lower median
    return "s" if mid < 1e11 else "ms" if mid < 1e14 else "us" if mid < 1e17 else "ns"


def _cell_text(arr: pa.Array, i: int) -> object:
    """One cell as a Python value for a message; never raises (a year-190000 timestamp has no datetime)."""
    try:
        return arr[i].as_py()
    except (OverflowError, ValueError, pa.ArrowException):
        try:
            raw = arr.slice(i, 1).cast(pa.int64())[0].as_py()
            unit = getattr(arr.type, "unit", None)
            return f"{raw} ({unit} since 1970)" if unit else raw
        except (OverflowError, ValueError, pa.ArrowException):
            return f"<a {arr.type} value>"


def _cast_located(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Cast like :func:`_cast_truncating`; the cells that do not fit become null and are returned.

    Vectorised when everything fits; otherwise slices of 4,096 cells, then single cells of the
    slices that fail, to locate them (a uint64 above 2**63 - 1, a timestamp beyond year 294,247).
    """
    try:
        return _cast_truncating(arr, target), []
    except (pa.ArrowInvalid, OverflowError):
        pass
    pieces, bad, step = [], [], 4096
    for off in range(0, len(arr), step):
        piece = arr.slice(off, step)
        try:
            pieces.append(_cast_truncating(piece, target))
            continue
        except (pa.ArrowInvalid, OverflowError):
            pass
        for i in range(len(piece)):
            try:
                pieces.append(_cast_truncating(piece.slice(i, 1), target))
            except (pa.ArrowInvalid, OverflowError):
                bad.append(off + i)
                pieces.append(pa.nulls(1, target))
    return (pa.concat_arrays(pieces) if pieces else pa.array([], target)), bad


def check_table_types(mapped: pa.Schema, table: pa.Schema, source: str) -> None:
    """Refuse a file whose columns have types the table's existing columns cannot take.

    A column the table lacks is fine (additive schema evolution). An existing column takes the same
    type or a widening without loss: a narrower integer, an integer into a double, float into double,
    a decimal of the same scale and no more digits, any timestamp into a timestamp, and a number,
    bool or date into a string column (a CSV column inferred as numbers in one file and text in an
    earlier one).

    Raises:
        SchemaMismatchError: ``TYPE_MISMATCH`` naming the column, its type in the file and in the table.
    """
    for field in mapped:
        idx = table.get_field_index(field.name)
        if idx < 0:
            continue
        want, got = table.field(idx).type, field.type
        if not _widens(_canonical(got), _canonical(want)):
            raise SchemaMismatchError(
                f"{source}: column {printable(field.name)!r} is {got} in this file but {want} in the table (a type "
                f"change is not an additive schema change); write it as {want}, declare it with "
                f"schema.column_types, or rename the column",
                code="TYPE_MISMATCH",
                column=field.name,
            )


def _canonical(t: pa.DataType) -> pa.DataType:
    """``t`` with large/view strings, binaries and lists as their plain forms (pyiceberg reads large types)."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_canonical(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(_canonical(t.key_type), _canonical(t.item_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _canonical(f.type)) for f in t])
    if pa.types.is_dictionary(t):
        return _canonical(t.value_type)
    return t


def _widens(got: pa.DataType, want: pa.DataType) -> bool:
    """True if values of ``got`` fit a column of ``want`` without loss (see :func:`check_table_types`)."""
    if got == want or pa.types.is_null(got):
        return True
    if pa.types.is_integer(got) and pa.types.is_integer(want):
        return got.bit_width <= want.bit_width
    if pa.types.is_integer(got) and pa.types.is_floating(want):
        return want.bit_width == 64
    if pa.types.is_floating(got) and pa.types.is_floating(want):
        return got.bit_width <= want.bit_width
    if pa.types.is_decimal(got) and pa.types.is_decimal(want):
        return got.scale == want.scale and got.precision <= want.precision
    if pa.types.is_timestamp(got) and pa.types.is_timestamp(want):
        return (got.tz is None) == (want.tz is None)
    if _is_stringy(want):
        return (
            pa.types.is_integer(got)
            or pa.types.is_floating(got)
            or pa.types.is_boolean(got)
            or pa.types.is_decimal(got)
            or pa.types.is_date(got)
            or _is_stringy(got)
        )
    if pa.types.is_list(got) and pa.types.is_list(want):
        return _widens(got.value_type, want.value_type)
    if pa.types.is_map(got) and pa.types.is_map(want):
        return _widens(got.key_type, want.key_type) and _widens(got.item_type, want.item_type)
    if pa.types.is_struct(got) and pa.types.is_struct(want):
        return all(want.get_field_index(f.name) >= 0 and _widens(f.type, want.field(f.name).type) for f in got)
    return False


def _cast_truncating(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast ``arr`` to ``target``, truncating sub-microsecond parts of times (ns -> µs) instead of failing.

    Every other check of a safe cast (overflow, out-of-bounds timestamps) still applies.
    """
    return pc.cast(arr, options=pc.CastOptions(target, allow_time_truncate=True))


def parse_ts_text_cells(text: pa.Array) -> tuple[pa.Array, list[int]]:
    """Parse RFC 3339 / ISO 8601 text (no offset = UTC); unparseable cells become null.

    Returns:
        (timestamps, indices of the non-null cells that could not be parsed). Vectorised when every
        cell parses; cell by cell only to locate the bad ones.
    """
    out = _parse_ts_text(text)
    if out is not None:
        return out, []
    values, bad = [], []
    for i, v in enumerate(text.to_pylist()):
        one = None if v is None else _parse_ts_text(pa.array([v], pa.string()))
        if one is None and v is not None:
            bad.append(i)
        values.append(None if one is None else one[0].as_py())
    return pa.array(values, TS_TYPE), bad


def _parse_ts_text(text: pa.Array) -> pa.Array | None:
    """RFC 3339 / ISO 8601 text to UTC timestamps (no offset = UTC), or None if any value fails.

    More than 6 fractional digits (nanoseconds, as pandas and Arrow write them) are truncated to µs,
    in the text itself, so the whole µs range parses (a nanosecond parse stops at 1677 and 2262).
    """
    if pc.any(pc.match_substring_regex(text, r"\.[0-9]{7,}")).as_py():
        text = pc.replace_substring_regex(text, r"(\.[0-9]{6})[0-9]+", r"\1")
    for unit in ("us", "ns"):
        try:
            return _cast_truncating(text.cast(pa.timestamp(unit, tz="UTC")), TS_TYPE)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            return _cast_truncating(pc.assume_timezone(text.cast(pa.timestamp(unit)), "UTC"), TS_TYPE)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return None


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t) or (pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type))


def _is_stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _plain_type(t: pa.DataType) -> pa.DataType:
    """The logical type of a column's values: dictionary and run-end encodings, view layouts and
    extension types (but uuid, which Iceberg stores) stripped to the plain type they hold."""
    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_run_end_encoded(t):
        return _plain_type(t.value_type)
    if isinstance(t, pa.BaseExtensionType) and t != pa.uuid():
        return _plain_type(t.storage_type)
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    return t


def _decode(arr: pa.Array) -> pa.Array:
    """``arr`` in the plain layout of :func:`_plain_type` (compute kernels exist for every one of them)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        return _decode(arr.dictionary_decode())
    if pa.types.is_run_end_encoded(t):
        return _decode(pc.run_end_decode(arr))
    if isinstance(t, pa.BaseExtensionType) and t != pa.uuid():
        return _decode(arr.storage)
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return arr.cast(_plain_type(t))
    return arr


_DUPLICATE_FIX = "give every prediction a unique id (send corrections as a new version of the file)"


@functools.cache
def _hasher() -> ThreadPoolExecutor:
    """One background thread for the deferred id hashing of every file in the process (DuckDB releases the
    GIL; one thread keeps one DuckDB connection, see :mod:`obslake.schema.duck`)."""
    return ThreadPoolExecutor(1, thread_name_prefix="obslake-hash")


@functools.lru_cache(maxsize=4)
def constant(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    """``n`` copies of ``value`` (None: nulls) as an Arrow array, without building a Python list.

    Arrow arrays are immutable, so the last few are kept and handed out again: every full batch of a file
    has the same source file and ingestion time (bounded: four arrays of at most one batch each).
    """
    return pa.repeat(pa.scalar(value, type_), n)


def longer_than(arr: pa.Array, limit: int) -> list[int]:
    """Indices of the values of the string array ``arr`` with more than ``limit`` characters.

    A character is at least one byte, so only a batch holding a value of more than ``limit`` bytes (read
    from the offsets, without touching the text) is measured in characters: counting UTF-8 characters of
    every tag of every batch was a tenth of a Parquet import's mapping time.
    """
    longest = pc.max(pc.binary_length(arr)).as_py()
    if longest is None or longest <= limit:
        return []
    return true_rows(pc.greater(pc.utf8_length(arr), limit))


def true_rows(mask: pa.Array) -> list[int]:
    """Indices where the boolean ``mask`` is true (null counts as false)."""
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()


def lineage_arrays(source: str, first_row: int, n: int, ingested_at: dt.datetime) -> dict[str, pa.Array]:
    """The lineage columns of ``n`` rows of ``source`` from data row ``first_row`` on."""
    return {
        SOURCE_FILE: constant(source, pa.string(), n),
        SOURCE_ROW: pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
        INGESTED_AT: constant(ingested_at, TS_TYPE, n),
    }


def _repeats(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For hashes ``h`` (in row order): their stable sort order, and for every occurrence of a hash after
    its first, its index and the index of that first occurrence (equal hashes stay in row order)."""
    order = np.argsort(h, kind="stable")
    hs = h[order]
    same = np.r_[False, hs[1:] == hs[:-1]]
    first_of = np.maximum.accumulate(np.where(same, 0, np.arange(len(hs))))
    return order, order[same], order[first_of[same]]


class _DuplicateIds:
    """Find prediction ids seen earlier in the same file, in bounded memory (16-24 bytes per id).

    Ids are hashed to 64 bits (DuckDB's ``hash`` over the Arrow array, or pandas' for a small file). The distinct hashes seen so far are kept with
    the row they came from in sorted *runs* (a log-structured merge): each batch's new hashes become a
    run of level 0, and ``FANOUT`` runs of one level are merged into one run of the next level. So
    there are O(log n) runs and each hash is re-sorted O(log n) times over the file (inserting into one
    sorted array instead copies every hash once per batch: quadratic in the file's rows). A bitmap of
    the hashes' top bits (16 to 64 bits per hash) sends only the ids that may have been seen (at most
    about 1 in 16 of a batch of new ids) to the binary searches in the runs. A false duplicate needs a
    64-bit hash collision.
    """

    FANOUT = 4
    DUCKDB_FROM = 8_192
    """Ids in the file's first batch from which the ids are hashed by DuckDB (see :meth:`_hash`)."""

    def __init__(self, deferred: bool = False) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray, int]] = []  # (sorted hashes, their rows, level), oldest first
        self.count = 0
        self.shift = 64 - 16  # bitmap index = hash >> shift
        self.bits = np.zeros(1 << 13, dtype=np.uint8)  # 2**16 bits
        self.by_duckdb: bool | None = None  # which hash function this file uses (its first batch decides)
        self.deferred = deferred
        # deferred: per batch, its hashes (or the hashing in flight) and the rows they belong to
        self._pending: list[tuple[np.ndarray | Future[np.ndarray], np.ndarray]] = []

    def check(self, ids: pa.Array, first_row: int) -> list[tuple[int, int]]:
        """(index in batch, row where the id first occurred) for every repeated id, in row order.

        Deferred (``deferred=True``): always ``[]``; the ids are hashed (large batches on a background
        thread, overlapping the caller's work) and :meth:`finish` finds the repeats of the whole file
        with one sort, about 3x cheaper than the runs for a file of millions of rows.
        """
        if ids.null_count:
            valid = pc.is_valid(ids)
            valid_idx = np.nonzero(valid.to_numpy(zero_copy_only=False))[0]
            ids = ids.filter(valid)
        else:
            valid_idx = np.arange(len(ids))
        if not len(ids):
            return []
        rows = first_row + valid_idx.astype(np.int64)
        if self.by_duckdb is None:  # the first batch picks the hash function for the whole file (see _hash)
            self.by_duckdb = len(ids) >= self.DUCKDB_FROM
        if self.deferred:
            self._pending.append((_hasher().submit(self._hash, ids) if self.by_duckdb else self._hash(ids), rows))
            return []
        h = self._hash(ids)
        # ids seen in earlier batches: the bitmap, then a binary search in each run
        earlier = np.full(len(h), -1, dtype=np.int64)
        if self.runs:
            cand = np.nonzero(self._maybe_seen(h))[0]
            if len(cand):
                hc = h[cand]
                for run_h, run_r, _ in self.runs:  # a hash is in at most one run (only new ids are added)
                    pos = np.minimum(np.searchsorted(run_h, hc), len(run_h) - 1)
                    found = run_h[pos] == hc
                    earlier[cand[found]] = run_r[pos[found]]
        hit = earlier >= 0
        # ids repeated within this batch: every occurrence after the first
        order = np.argsort(h)
        hs = h[order]
        same = np.r_[False, hs[1:] == hs[:-1]]
        dup_in = np.zeros(len(h), bool)
        if same.any():  # rare, a fault of the file: a stable sort puts equal hashes in row order (hs is unchanged)
            order, later, first = _repeats(h)
            dup_in[later] = True
            earlier[later] = np.where(hit[later], earlier[later], rows[first])
        flagged = np.nonzero(hit | dup_in)[0]
        out = [(int(rows[k] - first_row), int(earlier[k])) for k in flagged[:MAX_PROBLEMS]]
        new = ~(hit | dup_in)[order]
        self._add(hs[new], rows[order][new])
        return out

    def finish(self) -> list[tuple[int, int]]:
        """Deferred: (row, row where the id first occurred) for every repeated id of the file, in row order
        (at most :data:`MAX_PROBLEMS`). Memory: 8 bytes per id hashed plus the rows (8 bytes per id)."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        h = np.concatenate([p.result() if isinstance(p, Future) else p for p, _ in pending])
        s = np.sort(h)
        if not (s[1:] == s[:-1]).any():
            return []
        rows = np.concatenate([r for _, r in pending])
        _, later_at, first_at = _repeats(h)
        later, earlier = rows[later_at], rows[first_at]
        by_row = np.argsort(later, kind="stable")[:MAX_PROBLEMS]
        return [(int(later[k]), int(earlier[k])) for k in by_row]

    def _hash(self, ids: pa.Array) -> np.ndarray:
        """64-bit hashes of non-null ids, by the function the file's first batch picked (:attr:`by_duckdb`;
        the runs must hold hashes of one function): DuckDB over the Arrow array for a file read in large
        batches (no Python objects: about 3x faster per id), pandas for a small file (no query to set up:
        a 200-row file would pay more for the query than for the hashing)."""
        if self.by_duckdb:
            from obslake.schema.duck import query

            out = query("SELECT hash(id) FROM obslake_ids", obslake_ids=pa.table({"id": ids})).column(0)
            return out.combine_chunks().to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
        import pandas as pd

        values = ids.to_numpy(zero_copy_only=False).astype(object, copy=False)
        return pd.util.hash_array(values, categorize=False)

    def _maybe_seen(self, h: np.ndarray) -> np.ndarray:
        """False where a hash was certainly not seen (its bitmap bit is clear)."""
        idx = h >> np.uint64(self.shift)
        return (self.bits[idx >> np.uint64(3)] >> (idx & np.uint64(7)).astype(np.uint8)) & 1 == 1

    def _mark(self, hs: np.ndarray) -> None:
        """Set the bits of ``hs`` (sorted, so equal bytes of the bitmap are adjacent)."""
        idx = hs >> np.uint64(self.shift)
        byte = idx >> np.uint64(3)
        bit = np.left_shift(np.uint8(1), (idx & np.uint64(7)).astype(np.uint8))
        starts = np.r_[0, np.nonzero(byte[1:] != byte[:-1])[0] + 1]
        self.bits[byte[starts]] |= np.bitwise_or.reduceat(bit, starts)

    def _add(self, hs: np.ndarray, rs: np.ndarray) -> None:
        """Add a sorted run of new hashes; merge full levels; grow the bitmap as the count grows."""
        if not len(hs):
            return
        self.runs.append((hs, rs, 0))
        self.count += len(hs)
        while len(self.runs) >= self.FANOUT and len({lvl for _, _, lvl in self.runs[-self.FANOUT :]}) == 1:
            merge, self.runs = self.runs[-self.FANOUT :], self.runs[: -self.FANOUT]
            h = np.concatenate([m[0] for m in merge])
            order = np.argsort(h, kind="stable")  # sorted runs: timsort merges them in O(n log FANOUT)
            self.runs.append((h[order], np.concatenate([m[1] for m in merge])[order], merge[0][2] + 1))
        if self.count * 16 > len(self.bits) * 8:  # keep >= 16 bits per hash: rebuild 4x larger
            while self.count * 16 > len(self.bits) * 8:
                self.bits = np.zeros(len(self.bits) * 4, dtype=np.uint8)
                self.shift -= 2
            for run_h, _, _ in self.runs:
                self._mark(run_h)
        else:
            self._mark(hs)


class BatchMapper:
    """Turns the record batches of one file into batches of the model table.

    Args:
        job: the import job (mapping, model type, kind).
        declared: the file's Arrow schema from :func:`obslake.formats.read_schema` (for CSV the types
            inferred from the first block, overridden by ``schema.column_types``).
        source: the file's URI (lineage and error locations).
        ingested_at: one timestamp for the whole file.
        fmt: the file format; CSV batches arrive as strings (``read_batches(csv_as_strings=True)``)
            and are cast here, cell by cell, so a bad cell is a located record problem.
        defer_duplicates: report ids repeated in the file by :meth:`finish` (one sort at the end of the
            file, without the id's value) instead of in the batch that repeats them. For a caller that
            discards the whole file on any problem (``on_error: abort_file``): it cannot drop the
            repeated rows from batches already handed on.

    Raises:
        SchemaMismatchError: with ``code`` DUPLICATE_COLUMN, COLUMN_MISSING, TYPE_MISMATCH,
            FEATURE_NESTED or RESERVED_NAME.
    """

    def __init__(
        self,
        job: ImportJob,
        declared: pa.Schema,
        source: str,
        ingested_at: dt.datetime,
        fmt: str = "parquet",
        table_schema: pa.Schema | None = None,
        defer_duplicates: bool = False,
    ):
        self.job = job
        m: SchemaMapping = job.schema_
        self.mapping = m
        self.source = source
        self.ingested_at = ingested_at
        self.is_csv = fmt == "csv"
        if job.model is None:  # the job's validator requires a model for predictions/actuals jobs
            raise ValueError(
                f"job {job.name!r}: a {job.kind.value} job has no `model`; BatchMapper maps "
                "predictions and actuals files only"
            )
        self._model = job.model
        self.label_kind = label_kind(job.model.type)
        # roles a model type cannot do without (a group of one), checked on every predictions row
        self.required = (
            {g[0] for g in REQUIREMENTS[job.model.type].all_of if len(g) == 1}
            if job.kind == JobKind.predictions
            else set()
        )
        names = declared.names
        counts = collections.Counter(names)
        dupes = sorted(n for n, k in counts.items() if k > 1 and n.strip())  # blank names: _check_names
        if dupes:
            raise SchemaMismatchError(
                f"{source}: duplicate column name(s) {[printable(d) for d in dupes]}; rename them so every column "
                "name is unique",
                code="DUPLICATE_COLUMN",
                column=dupes[0],
            )
        overrides = {c: arrow_type(t) for c, t in m.column_types.items()}
        self.declared = {f.name: overrides.get(f.name, _plain_type(f.type)) for f in declared}
        roles = m.role_columns()
        needed = dict(roles)
        for name, emb in m.embedding_features.items():
            for part, col in (("vector", emb.vector), ("raw_data", emb.raw_data), ("link_to_data", emb.link_to_data)):
                if col:
                    needed[f"embedding__{name}__{part}"] = col
        self.score_maps: dict[str, tuple[str, list[str]]] = {}
        for key in SCORE_MAPS:
            sel = getattr(m, key)
            if sel is None:
                continue
            if sel.prefix is None and len(sel.columns) == 1 and not self._is_numeric_declared(sel.columns[0]):
                needed[key] = sel.columns[0]
                self.score_maps[key] = ("column", [sel.columns[0]])
            else:
                cols = sel.select(names)
                missing = [c for c in sel.columns if c not in names]
                if missing or not cols:
                    raise SchemaMismatchError(
                        f"{source}: {key} selects no score columns (missing: {missing or sel.prefix!r}). The file has: "
                        f"{names[:50]}. Fix the job's `schema.{key}`",
                        code="COLUMN_MISSING",
                        column=missing[0] if missing else None,
                    )
                self.score_maps[key] = ("columns", cols)
        missing = [f"{role} -> {col!r}" for role, col in needed.items() if col not in names]
        if missing:
            raise SchemaMismatchError(
                f"{source}: column(s) named in the job schema are missing from the file: {', '.join(missing)}. "
                f"The file has: {names[:50]}. Fix the job's `schema:` mapping or the file's header.",
                code="COLUMN_MISSING",
                column=next(c for c in needed.values() if c not in names),
            )
        self.roles = {k: v for k, v in needed.items() if k not in self.score_maps}
        claimed = set(needed.values()) | set(m.exclude)
        for _kind, cols in self.score_maps.values():
            claimed |= set(cols)
        self.tags = [c for c in m.tags.select(names) if c not in claimed]
        claimed |= set(self.tags)
        self.shap = [c for c in m.shap_values.select(names) if c not in claimed]
        claimed |= set(self.shap)
        if m.features is not None:
            self.features = [c for c in m.features.select(names) if c not in claimed]
        elif job.kind == JobKind.actuals:
            self.features = []  # an actuals file's other columns are not features of the model
        else:
            self.features = [c for c in names if c not in claimed]
        stored = self.features + self.tags + self.shap
        used = [*needed.values(), *(c for _, cols in self.score_maps.values() for c in cols), *stored]
        self._ints_as_double: set[str] = set()  # CSV features of whole numbers read as double
        if self.is_csv:
            self._csv_feature_types(table_schema)
        used_set, excluded = set(used), set(m.exclude)
        self.dropped = [c for c in names if c not in used_set and c not in excluded]
        self._check_names(names, stored, used, set(needed) | set(self.score_maps))
        for col in self.features + self.tags:
            if pa.types.is_union(self.declared[col]):
                raise SchemaMismatchError(
                    f"{source}: column {col!r} is {self.declared[col]}, a union of types, which an Iceberg table "
                    "cannot store; write one type per column or list it under `schema.exclude`",
                    code="TYPE_UNSUPPORTED",
                    column=col,
                )
            if _is_nested(self.declared[col]):
                raise SchemaMismatchError(
                    f"{source}: column {col!r} is {self.declared[col]}, but features and tags must be scalars "
                    "(string, number, bool, date, timestamp). Map vectors under `schema.embedding_features`, or "
                    "list the column under `schema.exclude`",
                    code="FEATURE_NESTED",
                    column=col,
                )
        for col in self.shap:
            t = self.declared[col]
            if not (
                pa.types.is_integer(t)
                or pa.types.is_floating(t)
                or pa.types.is_decimal(t)
                or (self.is_csv and _is_stringy(t))
            ):
                raise SchemaMismatchError(
                    f"{source}: SHAP column {col!r} is {t}; SHAP values must be numbers",
                    code="TYPE_MISMATCH",
                    column=col,
                )
        self._check_role_types()
        for col in self.features + self.tags:
            t = _normalise_type(_value_type(self.declared[col])) or _value_type(self.declared[col])
            if not _storable(t):
                raise SchemaMismatchError(
                    f"{source}: column {col!r} is {self.declared[col]}, a type an Iceberg table cannot store; cast it "
                    "(durations and intervals to int64, e.g. microseconds; decimals to at most 38 digits or double; "
                    "unions to one type) or list the column under `schema.exclude`",
                    code="TYPE_UNSUPPORTED",
                    column=col,
                )
        self._epoch_unit: str | None = None
        self._lines_before = 0  # CSV: line breaks inside quoted values of the rows before this batch
        self._shift = np.zeros(0, dtype=np.int64)
        self._emb_len: dict[str, int] = {}
        self._dups = _DuplicateIds(deferred=defer_duplicates)
        # deferred CSV duplicates: (first row, line breaks before it) of every batch, and the per-row
        # shifts of the batches that have line breaks inside quoted values (to give :meth:`finish` lines)
        self._batch_lines: list[tuple[int, int, np.ndarray | None]] = []

    # -- file-level checks -------------------------------------------------------------------------
    def _csv_feature_types(self, table_schema: pa.Schema | None) -> None:
        """The types CSV feature and tag cells are cast to (CSV has none of its own).

        ``schema.column_types`` first; then, for a column the table already has and whose inferred type
        widens into the table's, the table's type: the text is cast to it directly (``007`` stays
        ``007`` in a string column, ``100`` is 100.0 in a double column); an incompatible one is a
        ``TYPE_MISMATCH``. A new column takes pyarrow's inference from the file's first block, except
        that whole numbers in a feature are read as double: CSV cannot tell ``100`` from ``100.0``
        (pyarrow writes whole doubles without ``.0``), and an integer column created by one CSV file
        could never take the doubles of the next file or of a Parquet file (Iceberg cannot widen
        long to double). Integers up to 2**53 are exact; declare ``schema.column_types`` to keep
        integers (or larger ones as string).
        """
        for col in self.features + self.tags + self.shap:
            if col in self.mapping.column_types:
                continue
            idx = table_schema.get_field_index(col) if table_schema is not None else -1
            if table_schema is not None and idx >= 0:
                want = _canonical(table_schema.field(idx).type)
                if not pa.types.is_nested(want) and _widens(_canonical(self.declared[col]), want):
                    if pa.types.is_integer(self.declared[col]) and pa.types.is_floating(want):
                        self._ints_as_double.add(col)
                    self.declared[col] = want  # else: TYPE_MISMATCH, as for typed formats
            elif col not in self.tags and pa.types.is_integer(self.declared[col]):
                self.declared[col] = pa.float64()
                self._ints_as_double.add(col)

    def _check_names(self, names: list[str], stored: list[str], used: list[str], canonical: set[str]) -> None:
        """Column names that cannot be stored, repeated (also ignoring case) or taken by obslake's columns."""
        src = self.source
        bad = [c for c in stored if not c.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in c)]
        if bad:
            raise SchemaMismatchError(
                f"{src}: column name {printable(bad[0])!r} is empty, blank or holds control characters (an unnamed "
                "index column, an empty header cell or a trailing comma in the header); name every column, or "
                "drop the index column: df.to_csv(path, index=False) / df.to_parquet(path, index=False)",
                code="COLUMN_NAME_INVALID",
                column=bad[0],
            )
        by_lower: dict[str, str] = {}

        def fold(name: str) -> str:  # equal for SQL engines and for people: case, composed/decomposed accents
            return unicodedata.normalize("NFC", name).casefold()

        wanted = {fold(c) for c in used}  # a column read (mapped or stored) and any other of its name
        for c in names:
            if fold(c) not in wanted:
                continue
            other = by_lower.setdefault(fold(c), c)
            if other != c:
                raise SchemaMismatchError(
                    f"{src}: columns {printable(other)!r} and {printable(c)!r} differ only in case; SQL engines "
                    "(DuckDB, Athena, BigQuery, Snowflake) match column names ignoring case and would read the "
                    "wrong one. Rename one, or list it under `schema.exclude`",
                    code="DUPLICATE_COLUMN",
                    column=c,
                )
        reserved = {
            r.casefold(): r for r in (*canonical, *SCORE_MAPS, *LINEAGE_COLUMNS, PARTITION_COLUMN, "model_version")
        }
        reserved.update(
            {
                f"embedding__{n}__{part}".casefold(): f"embedding__{n}__{part}"
                for n in self.mapping.embedding_features
                for part in ("vector", "raw_data", "link_to_data")
            }
        )
        clash = [c for c in stored if c.casefold() in reserved]
        if clash:
            raise SchemaMismatchError(
                f"{src}: column(s) {[printable(c) for c in clash]} collide (ignoring case) with obslake's column "
                f"{reserved[clash[0].casefold()]!r}; rename them or list them under `schema.exclude`",
                code="RESERVED_NAME",
                column=clash[0],
            )

    def _is_numeric_declared(self, col: str) -> bool:
        t = self.declared.get(col)
        return t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))

    def _check_role_types(self) -> None:
        def bad(role: str, col: str, t: pa.DataType, want: str) -> SchemaMismatchError:
            return SchemaMismatchError(
                f"{self.source}: column {col!r} ({role}) is {t}; it must be {want} (README 'Expected types')",
                code="TYPE_MISMATCH",
                column=col,
            )

        for role, col in self.roles.items():
            t = self.declared[col]
            if pa.types.is_dictionary(t):
                t = t.value_type
            if self.is_csv:
                continue  # CSV roles are read as text and cast cell by cell (whatever pyarrow would infer)
            scalar = not pa.types.is_nested(t)
            numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            if role == "prediction_id":
                if not (_is_stringy(t) or pa.types.is_integer(t)):
                    raise SchemaMismatchError(
                        f"{self.source}: column {col!r} (prediction_id) is {t}; prediction ids must be strings or "
                        "integers",
                        code="ID_TYPE",
                        column=col,
                    )
            elif role == "prediction_timestamp":
                if not (pa.types.is_timestamp(t) or numeric or _is_stringy(t) or pa.types.is_date(t)):
                    raise bad(role, col, t, "a timestamp, epoch seconds/ms/us as numbers, or RFC 3339 text")
            elif role in ("prediction_score", "actual_score", "relevance_score", "rank"):
                if not (numeric or _is_stringy(t)):
                    raise bad(role, col, t, "a number")
            elif role in ("prediction_label", "actual_label") and self.label_kind == "number":
                if not (numeric or _is_stringy(t)):
                    raise bad(role, col, t, "a number (regression labels)")
            elif role in ("prediction_label", "actual_label"):
                if not (_is_stringy(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
                    raise bad(role, col, t, "a string, integer or bool (classification labels)")
            elif role.endswith("__vector"):
                if not (
                    pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or _is_stringy(t)
                ):
                    raise bad(role, col, t, "a list of numbers")
            elif role.endswith("_bbox_coordinates"):
                if not (pa.types.is_list(t) or pa.types.is_large_list(t) or _is_stringy(t)):
                    raise bad(role, col, t, "a list of [x1, y1, x2, y2] boxes")
            elif role.endswith(("_bbox_categories", "_bbox_scores")):
                if not (pa.types.is_list(t) or pa.types.is_large_list(t) or _is_stringy(t)):
                    raise bad(role, col, t, "a list")
            elif role.endswith("__raw_data"):
                if not (_is_stringy(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
                    raise bad(role, col, t, "text or a list of tokens")
            elif not scalar:
                raise bad(role, col, t, "a scalar (string, number or bool)")
        for key, (kind, cols) in self.score_maps.items():
            if kind == "column":
                t = self.declared[cols[0]]
                if not (pa.types.is_map(t) or pa.types.is_list(t) or pa.types.is_large_list(t) or _is_stringy(t)):
                    raise bad(
                        key,
                        cols[0],
                        t,
                        "a map<string, number>, a list<struct<class_name, score>> or per-class "
                        "score columns (schema: {prefix: ...})",
                    )
            else:
                for c in cols:
                    if not (self._is_numeric_declared(c) or (self.is_csv and _is_stringy(self.declared[c]))):
                        raise bad(key, c, self.declared[c], "a number (one column per class)")

    # -- record checks -----------------------------------------------------------------------------
    def _count_lines(self, batch: pa.RecordBatch, first_row: int) -> None:
        """CSV: per row, how many line breaks inside quoted values precede it (so ``line`` is physical)."""
        per_row = None
        for col in batch.columns:
            if _is_stringy(col.type):
                n = pc.fill_null(pc.count_substring(col, "\n"), 0)
                per_row = n if per_row is None else pc.add(per_row, n)
        counts = (
            per_row.to_numpy(zero_copy_only=False).astype(np.int64)
            if per_row is not None
            else np.zeros(batch.num_rows, dtype=np.int64)
        )
        self._shift = self._lines_before + np.cumsum(counts) - counts
        if self._dups.deferred:
            self._batch_lines.append((first_row, self._lines_before, self._shift if counts.any() else None))
        self._lines_before += int(counts.sum())

    def _line(self, row: int) -> int:
        """The physical CSV line of data row ``row`` of an earlier batch (deferred duplicates)."""
        k = bisect.bisect_right([b[0] for b in self._batch_lines], row) - 1
        first, before, shift = self._batch_lines[k]
        return row + 1 + (before if shift is None else int(shift[row - first]))

    def _problem(
        self,
        problems: list[Problem],
        code: str,
        message: str,
        fix: str,
        row_index: int,
        first_row: int,
        column: str | None,
        value: object = None,
    ) -> None:
        if len(problems) >= MAX_PROBLEMS * 10:
            return
        row = first_row + row_index
        problems.append(
            Problem(
                code,
                message,
                self.source,
                fix,
                row=row,
                column=column,
                value=None if value is None else _short(value),
                line=row + 1 + int(self._shift[row_index]) if self.is_csv else None,
            )
        )

    def _bad_rows(self, mask: pa.Array) -> list[int]:
        return true_rows(mask)

    def finish(self) -> list[Problem]:
        """The problems found only at the end of the file: ids repeated in it (``defer_duplicates``)."""
        return [
            Problem(
                "ID_DUPLICATE",
                f"prediction id occurs more than once in the file (first seen in row {earlier})",
                self.source,
                _DUPLICATE_FIX,
                row=row,
                column=self.roles["prediction_id"],
                line=self._line(row) if self.is_csv else None,
            )
            for row, earlier in self._dups.finish()
        ]

    def _ids(self, arr: pa.Array, col: str, first_row: int, problems: list[Problem]) -> pa.Array:
        arr = _decode(arr).cast(pa.string())
        missing = pc.or_kleene(pc.is_null(arr), pc.equal(pc.binary_length(arr), 0))
        for i in self._bad_rows(missing):
            self._problem(
                problems,
                "ID_MISSING",
                "prediction id is null or empty",
                "give every row a non-empty prediction id",
                i,
                first_row,
                col,
            )
        for i in longer_than(arr, MAX_ID_CHARS):
            self._problem(
                problems,
                "ID_TOO_LONG",
                f"prediction id is longer than {MAX_ID_CHARS} characters",
                f"shorten ids to at most {MAX_ID_CHARS} characters",
                i,
                first_row,
                col,
                arr[i].as_py(),
            )
        for i, earlier in self._dups.check(arr, first_row):
            seen = f" (first seen in row {earlier})" if earlier > 0 else ""
            self._problem(
                problems,
                "ID_DUPLICATE",
                f"prediction id occurs more than once in the file{seen}",
                _DUPLICATE_FIX,
                i,
                first_row,
                col,
                arr[i].as_py(),
            )
        return arr

    def _numbers(
        self,
        arr: pa.Array,
        col: str,
        role: str,
        first_row: int,
        problems: list[Problem],
        code: str = "SCORE_TYPE",
        not_finite_code: str = "SCORE_NOT_FINITE",
    ) -> pa.Array:
        """To float64; non-numeric text and NaN/inf are located problems (the cell becomes null)."""
        arr = _decode(arr)
        if not (
            _is_stringy(arr.type)
            or pa.types.is_integer(arr.type)
            or pa.types.is_floating(arr.type)
            or pa.types.is_decimal(arr.type)
        ):
            raise SchemaMismatchError(
                f"{self.source}: column {col!r} ({role}) is {arr.type}; it must be a number",
                code="TYPE_MISMATCH",
                column=col,
            )
        if _is_stringy(arr.type):
            text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
            text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
            try:
                out = text.cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values = []
                for i, v in enumerate(text.to_pylist()):
                    try:
                        values.append(None if v is None else float(v))
                    except ValueError:
                        values.append(None)
                        self._problem(
                            problems, code, f"{role} is not a number", f"write {role} as a number", i, first_row, col, v
                        )
                out = pa.array(values, pa.float64())
        else:
            out = pc.cast(arr, pa.float64(), safe=False)  # big integers and decimals: the nearest double
        finite = pc.is_finite(out)
        bad = self._bad_rows(pc.invert(finite))
        for i in bad:
            self._problem(
                problems,
                not_finite_code,
                f"{role} is NaN or infinite",
                f"write a finite {role} or leave the cell empty",
                i,
                first_row,
                col,
                out[i].as_py(),
            )
        return pc.if_else(finite, out, pa.scalar(None, pa.float64())) if bad else out

    def _strings(
        self, arr: pa.Array, col: str, role: str, first_row: int, problems: list[Problem], limit: int = MAX_VALUE_CHARS
    ) -> pa.Array:
        arr = _decode(arr)
        if pa.types.is_floating(arr.type):
            raise SchemaMismatchError(
                f"{self.source}: column {col!r} ({role}) is {arr.type}; write it as text",
                code="TYPE_MISMATCH",
                column=col,
            )
        out = arr.cast(pa.string())
        for i in longer_than(out, limit):
            self._problem(
                problems,
                "VALUE_TOO_LONG",
                f"{role} has more than {limit:,} characters",
                f"shorten it to at most {limit:,} characters",
                i,
                first_row,
                col,
                out[i].as_py(),
            )
        return out

    def _timestamps(self, batch: pa.RecordBatch, first_row: int, problems: list[Problem]) -> pa.Array:
        """The prediction timestamps as UTC µs; every cell outside [now - 5 y, now + 1 y] is located.

        Bounds are checked in the input's own unit *before* any cast, so a value no µs timestamp can
        hold (year 190000, epoch 1e300) is a located ``TS_OUT_OF_RANGE``, never an overflow.
        """
        col = self.roles.get("prediction_timestamp")
        if col is None:
            return pa.repeat(pa.scalar(self.ingested_at, TS_TYPE), batch.num_rows)
        arr = _decode(batch.column(col))
        original = arr
        t = arr.type
        lo_dt, hi_dt = self.ingested_at - TS_PAST, self.ingested_at + TS_FUTURE
        lo_us, hi_us = _epoch_us(lo_dt), _epoch_us(hi_dt)

        def outside(raw: pa.Array, lo: int | float, hi: int | float) -> pa.Array:
            """Null the cells of ``raw`` outside [lo, hi], each a located TS_OUT_OF_RANGE."""
            mask = pc.or_(pc.less(raw, pa.scalar(lo, raw.type)), pc.greater(raw, pa.scalar(hi, raw.type)))
            bad = self._bad_rows(mask)
            for i in bad:
                self._problem(
                    problems,
                    "TS_OUT_OF_RANGE",
                    "timestamp is more than 5 years in the past or 1 year in the future",
                    "check the unit (seconds vs milliseconds) and the year",
                    i,
                    first_row,
                    col,
                    _cell_text(original, i),
                )
            return pc.if_else(pc.fill_null(mask, False), pa.scalar(None, raw.type), raw) if bad else raw

        if self.is_csv and _is_stringy(t):
            arr = pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), pa.scalar(None, pa.string()), arr)
            declared = self.declared[col]
            if pa.types.is_integer(declared) or pa.types.is_floating(declared):
                arr = self._numbers(
                    arr, col, "timestamp", first_row, problems, code="TS_PARSE", not_finite_code="TS_INVALID"
                )
                t = arr.type
        if pa.types.is_timestamp(t):
            per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
            raw = outside(arr.cast(pa.int64()), lo_us * per_second // 1_000_000, hi_us * per_second // 1_000_000)
            arr = raw.cast(pa.timestamp(t.unit, tz=t.tz))
            if t.tz is None:
                arr = pc.assume_timezone(arr, "UTC")
            out = _cast_truncating(arr, TS_TYPE)  # ns -> µs; any zone -> UTC (same instant)
        elif pa.types.is_date(t):
            days = (
                arr.cast(pa.int32()).cast(pa.int64())
                if pa.types.is_date32(t)
                else pc.divide(arr.cast(pa.int64()), 86_400_000)
            )
            days = outside(days, lo_us // 86_400_000_000 - 1, hi_us // 86_400_000_000 + 1)
            out = pc.multiply(days, 86_400_000_000).cast(TS_TYPE)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            integral = pa.types.is_integer(t)
            num = pc.cast(arr, pa.int64() if integral else pa.float64(), safe=False)
            if t == pa.uint64():  # above 2**63 - 1: out of range, not wrapped
                num = pc.if_else(pc.greater(arr, pa.scalar(2**63 - 1, t)), pa.scalar(-(2**63), pa.int64()), num)
            if not integral:
                finite = pc.is_finite(num)
                for i in self._bad_rows(pc.invert(finite)):
                    self._problem(
                        problems,
                        "TS_INVALID",
                        "timestamp is not a finite number",
                        "write epoch seconds/ms/us as finite numbers",
                        i,
                        first_row,
                        col,
                        num[i].as_py(),
                    )
                num = pc.if_else(finite, num, pa.scalar(None, pa.float64()))
            if self._epoch_unit is None:
                self._epoch_unit = _epoch_unit(num)
            factor = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[self._epoch_unit]
            lo, hi = lo_us / factor, hi_us / factor
            num = outside(num, int(lo) if integral else lo, int(hi) if integral else hi)
            if integral:
                micros = pc.divide(num, 1000) if self._epoch_unit == "ns" else pc.multiply(num, int(factor))
            else:
                micros = pc.round(pc.multiply(num, factor)).cast(pa.int64())
            out = micros.cast(TS_TYPE)
        else:  # text: RFC 3339 / ISO 8601; without a zone offset it is UTC (as naive timestamps are)
            text = arr.cast(pa.string())
            out, bad = parse_ts_text_cells(text)
            for i in bad:
                value = text[i].as_py()
                if value.strip().lower().lstrip("+-") in _NOT_FINITE_TEXT:
                    self._problem(
                        problems,
                        "TS_INVALID",
                        "timestamp is not a finite number",
                        "write a timestamp or leave the cell empty",
                        i,
                        first_row,
                        col,
                        value,
                    )
                    continue
                self._problem(
                    problems,
                    "TS_PARSE",
                    "timestamp is not RFC 3339 / ISO 8601 or epoch seconds",
                    "write timestamps like 2024-05-01T12:00:00Z or as epoch seconds",
                    i,
                    first_row,
                    col,
                    value,
                )
        # text (and anything that slipped through): the same range, now in µs
        lo, hi = pa.scalar(lo_dt, TS_TYPE), pa.scalar(hi_dt, TS_TYPE)
        for i in self._bad_rows(pc.or_(pc.less(out, lo), pc.greater(out, hi))):
            self._problem(
                problems,
                "TS_OUT_OF_RANGE",
                "timestamp is more than 5 years in the past or 1 year in the future",
                "check the unit (seconds vs milliseconds) and the year",
                i,
                first_row,
                col,
                _cell_text(original, i),
            )
        return pc.fill_null(out, pa.scalar(self.ingested_at, TS_TYPE))  # as Arize: missing -> ingest time

    def _json_cells(
        self, arr: pa.Array, col: str, role: str, first_row: int, problems: list[Problem], target: pa.DataType
    ) -> pa.Array:
        """CSV cells holding JSON (vectors, boxes, score maps) parsed into ``target``."""
        values: list[Any] = []
        for i, v in enumerate(arr.to_pylist()):
            if v is None or v.strip() == "":
                values.append(None)
                continue
            try:
                parsed = json.loads(v)
                if pa.types.is_map(target):
                    parsed = list(parsed.items())
                values.append(pa.scalar(parsed, target).as_py() if not pa.types.is_map(target) else parsed)
            except (ValueError, TypeError, AttributeError, pa.ArrowInvalid, pa.ArrowTypeError):
                values.append(None)
                self._problem(
                    problems,
                    "TYPE_MISMATCH",
                    f"{role} is not a JSON value of type {target}",
                    f"write {role} as JSON, e.g. [0.1, 0.2]",
                    i,
                    first_row,
                    col,
                    v,
                )
        return pa.array(values, target)

    def _vectors(self, name: str, arr: pa.Array, col: str, first_row: int, problems: list[Problem]) -> pa.Array:
        target = pa.list_(pa.float32())
        arr = _decode(arr)
        if _is_stringy(arr.type):
            arr = self._json_cells(arr, col, f"embedding {name!r}", first_row, problems, target)
        else:
            try:
                arr = arr.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise SchemaMismatchError(
                    f"{self.source}: embedding column {col!r} is {arr.type}; it must be a list of numbers",
                    code="TYPE_MISMATCH",
                    column=col,
                ) from None
        lengths = pc.list_value_length(arr)
        for i in self._bad_rows(pc.equal(lengths, 0)):
            self._problem(
                problems,
                "EMBEDDING_EMPTY",
                f"embedding {name!r} is an empty vector",
                "write a non-empty vector or leave the cell null",
                i,
                first_row,
                col,
            )
        if name not in self._emb_len:
            first = pc.drop_null(pc.if_else(pc.greater(lengths, 0), lengths, pa.scalar(None, lengths.type)))
            if len(first):
                self._emb_len[name] = first[0].as_py()
        want = self._emb_len.get(name)
        if want is not None:
            for i in self._bad_rows(pc.and_(pc.not_equal(lengths, want), pc.greater(lengths, 0))):
                self._problem(
                    problems,
                    "EMBEDDING_LENGTH",
                    f"embedding {name!r} has {lengths[i].as_py()} dimensions; the file's first vector has {want}",
                    "give every vector of this embedding the same length",
                    i,
                    first_row,
                    col,
                )
        flat = pc.list_flatten(arr)
        if len(flat) and not pc.all(pc.is_finite(flat)).as_py():
            bad = pc.list_parent_indices(arr).filter(pc.invert(pc.fill_null(pc.is_finite(flat), True)))
            for i in sorted(set(bad.to_pylist()))[:MAX_PROBLEMS]:
                self._problem(
                    problems,
                    "EMBEDDING_NOT_FINITE",
                    f"embedding {name!r} contains NaN or infinity",
                    "write finite numbers",
                    i,
                    first_row,
                    col,
                )
        return arr

    def _boxes(self, side: str, batch: pa.RecordBatch, first_row: int, problems: list[Problem]) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {}
        targets = {
            "coordinates": pa.list_(pa.list_(pa.float64())),
            "categories": pa.list_(pa.string()),
            "scores": pa.list_(pa.float64()),
        }
        for part in BBOX_ROLES:
            role = f"{side}_bbox_{part}"
            col = self.roles.get(role)
            if col is None:
                continue
            arr = _decode(batch.column(col))
            if _is_stringy(arr.type):
                arr = self._json_cells(arr, col, role, first_row, problems, targets[part])
            else:
                try:
                    arr = arr.cast(targets[part])
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise SchemaMismatchError(
                        f"{self.source}: column {col!r} ({role}) is {arr.type}; it must be {targets[part]}",
                        code="TYPE_MISMATCH",
                        column=col,
                    ) from None
            out[part] = arr
        coords = out.get("coordinates")
        if coords is not None:
            inner = pc.list_value_length(pc.list_flatten(coords))
            parents = pc.list_parent_indices(coords)
            bad = parents.filter(pc.not_equal(inner, 4))
            for i in sorted(set(bad.to_pylist()))[:MAX_PROBLEMS]:
                self._problem(
                    problems,
                    "BBOX_COORDINATES",
                    "a bounding box does not have 4 coordinates [x1, y1, x2, y2]",
                    "write each box as 4 numbers",
                    i,
                    first_row,
                    self.roles[f"{side}_bbox_coordinates"],
                )
            n = pc.list_value_length(coords)
            for part in ("categories", "scores"):
                if part in out:
                    for i in self._bad_rows(pc.not_equal(pc.list_value_length(out[part]), n)):
                        self._problem(
                            problems,
                            "BBOX_LENGTH",
                            f"{side} boxes and their {part} differ in number",
                            "give one category (and score) per box",
                            i,
                            first_row,
                            self.roles[f"{side}_bbox_{part}"],
                        )
        return out

    def _score_map(self, key: str, batch: pa.RecordBatch, first_row: int, problems: list[Problem]) -> pa.Array:
        kind, cols = self.score_maps[key]
        target = pa.map_(pa.string(), pa.float64())
        n = batch.num_rows
        if kind == "columns":
            sel = getattr(self.mapping, key)
            names = [c[len(sel.prefix) :] if sel.prefix and c.startswith(sel.prefix) else c for c in cols]
            values = [
                self._numbers(batch.column(c), c, f"{key} {cls!r}", first_row, problems)
                for c, cls in zip(cols, names, strict=True)
            ]
            items = pa.array(
                np.column_stack([v.to_numpy(zero_copy_only=False) for v in values]).ravel() if n else [],
                pa.float64(),
                from_pandas=True,
            )  # NaN (was null) -> null
            keys = pa.array(names * n, pa.string())
            offsets = pa.array(np.arange(0, n * len(cols) + 1, len(cols), dtype=np.int32))
            return pa.MapArray.from_arrays(offsets, keys, items)
        col = cols[0]
        arr = _decode(batch.column(col))
        if _is_stringy(arr.type):
            return self._json_cells(arr, col, key, first_row, problems, target)
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):  # list<struct<class_name, score>>
            flat = pc.list_flatten(arr)
            if not pa.types.is_struct(flat.type) or flat.type.num_fields != 2:
                raise SchemaMismatchError(
                    f"{self.source}: column {col!r} ({key}) is {arr.type}; use list<struct"
                    "<class_name, score>> or map<string, double>",
                    code="TYPE_MISMATCH",
                    column=col,
                )
            offsets = arr.offsets if not arr.offset else pc.subtract(arr.offsets, arr.offsets[0])
            return pa.MapArray.from_arrays(offsets, flat.field(0).cast(pa.string()), flat.field(1).cast(pa.float64()))
        try:
            return arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise SchemaMismatchError(
                f"{self.source}: column {col!r} ({key}) is {arr.type}; use map<string, double>",
                code="TYPE_MISMATCH",
                column=col,
            ) from None

    def _scalar_column(
        self, col: str, batch: pa.RecordBatch, first_row: int, problems: list[Problem], what: str
    ) -> pa.Array:
        """A feature/tag/SHAP column: CSV text cast to the declared type cell by cell; others normalised."""
        arr = _decode(batch.column(col))
        declared = self.declared[col]
        if pa.types.is_dictionary(declared):
            declared = declared.value_type
        if self.is_csv and _is_stringy(arr.type) and not _is_stringy(declared):
            try:
                arr = _cast_text(arr, declared)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values = []
                for i, v in enumerate(arr.to_pylist()):
                    try:
                        values.append(
                            None if v is None else _cast_text(pa.array([v], pa.string()), declared)[0].as_py()
                        )
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        values.append(None)
                        self._problem(
                            problems,
                            "CAST_FAILED",
                            f"{what} value does not fit the column's type {declared} "
                            "(inferred from the file's first rows)",
                            "write every value of the column with "
                            f"the same type, or declare it: schema.column_types: {{{col}: string}}",
                            i,
                            first_row,
                            col,
                            v,
                        )
                arr = pa.array(values, declared)
            if col in self._ints_as_double:  # a whole number a double cannot hold exactly (from 2**53 on)
                whole = pc.match_substring_regex(batch.column(col), r"^\s*[+-]?[0-9]+\s*$")
                for i in self._bad_rows(pc.and_(whole, pc.greater_equal(pc.abs(arr), 2.0**53))):
                    self._problem(
                        problems,
                        "VALUE_OUT_OF_RANGE",
                        f"{what} value is a whole number from 2**53 on, "
                        "which a double (whole numbers in CSV features are doubles) cannot hold exactly",
                        f"declare it: schema.column_types: {{{col}: int64}} (or string)",
                        i,
                        first_row,
                        col,
                        batch.column(col)[i].as_py(),
                    )
        elif not self.is_csv and arr.type != declared and col in self.mapping.column_types:
            cast, bad = _cast_located(arr, declared)
            for i in bad:
                self._problem(
                    problems,
                    "CAST_FAILED",
                    f"{what} value does not fit the type {declared} of schema.column_types",
                    f"fix the value or the declared type of {col!r}",
                    i,
                    first_row,
                    col,
                    _cell_text(arr, i),
                )
            arr = cast
        if _is_stringy(arr.type):
            for i in longer_than(arr, MAX_VALUE_CHARS):
                self._problem(
                    problems,
                    "VALUE_TOO_LONG",
                    f"{what} value has more than {MAX_VALUE_CHARS:,} characters",
                    "shorten it, or list the column under schema.exclude",
                    i,
                    first_row,
                    col,
                    arr[i].as_py(),
                )
        target = _normalise_type(arr.type)
        out, bad = _cast_located(arr, target) if target is not None else (arr, [])
        if pa.types.is_timestamp(out.type) or pa.types.is_date(out.type):
            # years 1..9999 only: beyond them no reader (nor pyiceberg's statistics) has a date
            raw = (
                out.cast(pa.int64())
                if pa.types.is_timestamp(out.type)
                else pc.multiply(out.cast(pa.int32()).cast(pa.int64()), 86_400_000_000)
            )
            mask = pc.or_(pc.less(raw, _MIN_US), pc.greater(raw, _MAX_US))
            far = self._bad_rows(mask)
            if far:
                bad = sorted(set(bad) | set(far))
                out = pc.if_else(pc.fill_null(mask, False), pa.scalar(None, out.type), out)
        for i in bad:
            self._problem(
                problems,
                "VALUE_OUT_OF_RANGE",
                f"{what} value does not fit the stored type "
                f"{target or arr.type} (dates and timestamps: years 1 to 9999)",
                f"write values within that range, or declare the column as string: "
                f"schema.column_types: {{{col}: string}}",
                i,
                first_row,
                col,
                _cell_text(arr, i),
            )
        return out

    # -- mapping -----------------------------------------------------------------------------------
    def map(self, batch: pa.RecordBatch, first_row: int) -> tuple[pa.RecordBatch, list[Problem]]:
        """Map one batch whose first row is data row ``first_row`` (1-based) of the file.

        Returns:
            (the mapped batch, the located problems). Rows with problems are in the batch with their
            bad cells set to null; drop them (``skip_rows``) or discard the file (``abort_file``).

        Raises:
            SchemaMismatchError: a whole column has an impossible type (e.g. a struct for a score).
        """
        problems: list[Problem] = []
        if self.is_csv:
            self._count_lines(batch, first_row)
        r = self.roles
        out: dict[str, pa.Array] = {}
        out["prediction_id"] = self._ids(batch.column(r["prediction_id"]), r["prediction_id"], first_row, problems)
        out["prediction_timestamp"] = self._timestamps(batch, first_row, problems)
        for role in ("prediction_label", "actual_label"):
            if role in r:
                col = r[role]
                if self.label_kind == "number":
                    out[role] = self._numbers(batch.column(col), col, role, first_row, problems, code="LABEL_TYPE")
                else:
                    out[role] = self._strings(batch.column(col), col, role, first_row, problems)
                if role == "prediction_label" and self.job.kind == JobKind.predictions:
                    for i in self._bad_rows(pc.is_null(batch.column(col))):
                        self._problem(
                            problems,
                            "LABEL_MISSING",
                            "prediction label is null",
                            "give every prediction a label (or map only prediction_score)",
                            i,
                            first_row,
                            col,
                        )
        for role in ("prediction_score", "actual_score", "relevance_score"):
            if role in r:
                out[role] = self._numbers(batch.column(r[role]), r[role], role, first_row, problems)
        if "prediction_score" in self.required and "prediction_score" in r:
            col = r["prediction_score"]
            raw = _decode(batch.column(col))
            empty = pc.is_null(raw)
            if _is_stringy(raw.type):
                empty = pc.or_kleene(empty, pc.equal(pc.utf8_trim_whitespace(raw.cast(pa.string())), ""))
            for i in self._bad_rows(empty):
                self._problem(
                    problems,
                    "SCORE_MISSING",
                    f"prediction score is null or empty ({self._model.type.value} "
                    "models need a score on every prediction)",
                    "give every prediction a score",
                    i,
                    first_row,
                    col,
                )
        if "rank" in r:
            num = self._numbers(batch.column(r["rank"]), r["rank"], "rank", first_row, problems, code="RANK_RANGE")
            ok = pc.and_(pc.and_(pc.greater_equal(num, 1), pc.less_equal(num, 100)), pc.equal(pc.floor(num), num))
            for i in self._bad_rows(pc.invert(ok)):
                self._problem(
                    problems,
                    "RANK_RANGE",
                    "rank must be a whole number from 1 to 100",
                    "write ranks 1..100",
                    i,
                    first_row,
                    r["rank"],
                    num[i].as_py(),
                )
            out["rank"] = pc.if_else(ok, num, pa.scalar(None, pa.float64())).cast(pa.int32())
        if "prediction_group_id" in r:
            col = r["prediction_group_id"]
            gid = _decode(batch.column(col)).cast(pa.string())
            for i in self._bad_rows(pc.or_kleene(pc.is_null(gid), pc.equal(pc.utf8_length(gid), 0))):
                self._problem(
                    problems,
                    "GROUP_ID_MISSING",
                    "prediction group id is null or empty",
                    "give every row of a ranking model its group (query) id",
                    i,
                    first_row,
                    col,
                )
            out["prediction_group_id"] = gid
        for role in ("relevance_label", "model_version", "batch_id"):
            if role in r:
                out[role] = self._strings(batch.column(r[role]), r[role], role, first_row, problems)
        if "model_version" not in out and self._model.version:
            out["model_version"] = pa.repeat(pa.scalar(self._model.version, pa.string()), batch.num_rows)
        for role in ("prompt", "response"):
            if role in r:
                out[role] = self._strings(batch.column(r[role]), r[role], role, first_row, problems, MAX_TEXT_CHARS)
        for key in self.score_maps:
            out[key] = self._score_map(key, batch, first_row, problems)
        for side in ("prediction", "actual"):
            for part, arr in self._boxes(side, batch, first_row, problems).items():
                out[f"{side}_bbox_{part}"] = arr
        for name, emb in self.mapping.embedding_features.items():
            out[f"embedding__{name}__vector"] = self._vectors(
                name, batch.column(emb.vector), emb.vector, first_row, problems
            )
            if emb.raw_data:
                raw = _decode(batch.column(emb.raw_data))
                out[f"embedding__{name}__raw_data"] = (
                    raw.cast(pa.list_(pa.string()))
                    if pa.types.is_list(raw.type) or pa.types.is_large_list(raw.type)
                    else self._strings(
                        raw, emb.raw_data, f"embedding {name!r} raw data", first_row, problems, MAX_TEXT_CHARS
                    )
                )
            if emb.link_to_data:
                out[f"embedding__{name}__link_to_data"] = self._strings(
                    batch.column(emb.link_to_data), emb.link_to_data, "link", first_row, problems, MAX_TEXT_CHARS
                )
        for col in self.features:
            out[col] = self._scalar_column(col, batch, first_row, problems, "feature")
        for col in self.tags:
            out[col] = self._scalar_column(col, batch, first_row, problems, "tag")
        for col in self.shap:
            out[col] = self._numbers(batch.column(col), col, "SHAP value", first_row, problems)
        n = batch.num_rows
        # the UTC date; from the instant's own values (a cast from the zoned type looks up the time zone
        # for every value: ten times slower)
        ts = out["prediction_timestamp"]
        out[PARTITION_COLUMN] = pc.cast(ts.cast(pa.timestamp(ts.type.unit)), pa.date32())
        # constant and sequential columns straight from Arrow/numpy (no Python list of n objects)
        out.update(lineage_arrays(self.source, first_row, n, self.ingested_at))
        arrays = []
        for arr in out.values():
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            t = _normalise_type(arr.type)
            arrays.append(_cast_truncating(arr, t) if t is not None else arr)
        return pa.RecordBatch.from_arrays(arrays, names=list(out)), problems


def bad_row_indices(problems: list[Problem], first_row: int) -> set[int]:
    """Indices (within the batch starting at ``first_row``) of the rows that have problems."""
    return {p.row - first_row for p in problems if p.row is not None}
