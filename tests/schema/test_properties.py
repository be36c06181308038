"""Property-based tests (Hypothesis): random files in every format through the dry run and the import.

Each example is a *scenario*: one to three random files of a ``score_categorical`` model, written as
Parquet (pyarrow), CSV (pyarrow.csv, or pandas ``to_csv`` with and without its index), Avro (fastavro,
via ``obslake_demo.writers.write_table``) or Arrow IPC (file and stream), put on a ``file://`` store and
imported in order into one model table on an SQLite catalog. The files' columns have random Arrow
types (integers of every width with their extremes, floats with NaN/inf/-0.0/subnormals, decimal128
and decimal256, arbitrary unicode text, huge cells, binary, bools, dates, timestamps of every unit and
time zone, times, durations, intervals, lists/structs/maps, dictionary columns, nulls anywhere) and
random names (empty, whitespace, case duplicates, reserved names, unicode, dots, slashes, control
characters); the role columns (prediction id, timestamp, label, score) are random too and sometimes
broken. Several files of one scenario share a small pool of column names, so later files meet the
columns (and types) that earlier files gave the table.

For every file, the INVARIANT (the error-code contract of issue #10):

* ``validate_file`` and ``import_file`` never raise;
* the import either reproduces every value exactly - read back with DuckDB's ``iceberg_scan`` (and, if
  DuckDB disagrees, pyiceberg's scan) and compared cell by cell with an oracle written independently
  of obslake's mapper: it decodes the file's bytes itself (pyarrow for Parquet/Arrow, fastavro for
  Avro, ``pyarrow.csv.read_csv`` with obslake's documented null values and type inference for CSV)
  and applies the documented normalisation (time zones -> the same UTC instant, ns -> us, unsigned
  -> signed, float16 -> float32, decimal256 (p <= 38) -> decimal128, widening into the table's
  existing types) - or the file fails with a coded error (``status == "failed"``, a non-empty
  ``code`` that is not ``INTERNAL_ERROR``);
* a failed file leaves the table exactly as it was (snapshot ids and schema, or still no table);
* the dry run agrees with the import (validate ok/partial <=> imported).

The oracle also knows, for the clear-cut rules of the contract, whether a file MUST be refused (e.g. a
null score, a NaN timestamp, a duration feature, a reserved or empty column name, uint64 above
2^63-1) or MUST import (nothing wrong, nothing the contract leaves open): an accepted bad file or a
refused good one fails the test too. Where the contract leaves the verdict open (e.g. a time-of-day
feature, a timestamp feature beyond year 9999, an int64 column meeting an int32 table column) only
the invariant above applies.

Why a fresh table per scenario rather than one table for ~25 examples: Hypothesis replays and
shrinks failing examples; with a table shared across examples a failure would depend on earlier
examples (not printed) and its replay would often pass (``Flaky``). A scenario carries its own
history instead, so the minimal falsifying example printed by Hypothesis reproduces on its own, and
a table never grows beyond three files.

Run (``-s`` prints the statistics; the example count - scenarios, 1-3 files each - defaults to 150)::

    .venv/bin/python -m pytest tests/schema/test_properties.py -s
    OBSLAKE_PROPERTY_EXAMPLES=10000 .venv/bin/python -m pytest tests/schema/test_properties.py -s

``OBSLAKE_PROPERTY_SHRINK=0`` skips shrinking (a quicker first look at a failing run). Failing files
are kept under pytest's ``tmp_path`` (the path is in each failure message).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import inspect
import io
import logging
import math
import os
import re
import struct
import time
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis import strategies as st

from obslake.lake.importer import import_file
from obslake.schema.validate import validate_file
from obslake.storage import open_store
from obslake_demo.writers import write_table

EXAMPLES = int(os.environ.get("OBSLAKE_PROPERTY_EXAMPLES", "150"))
SHRINK = os.environ.get("OBSLAKE_PROPERTY_SHRINK", "1") != "0"

# -- constants of the contract (README "Expected types", "Validation, dry run and error codes") ------
ID, TS, LABEL, SCORE, TAG = "prediction_id", "prediction_ts", "predicted_label", "predicted_score", "region"
FEATURE_PREFIX = "feature_"
CSV_NULLS = ["", "NULL", "null"]  # obslake's CSV null cells (formats.CSV_NULL_VALUES, documented there)
MAX_ID_CHARS, MAX_VALUE_CHARS = 512, 10_000
# a feature/tag named like these (ignoring case) is RESERVED_NAME: role, lineage and partition columns
RESERVED = {"date", "_source_file", "_source_row", "_ingested_at", "prediction_id", "prediction_timestamp",
            "prediction_label", "prediction_score", "model_version"}
# canonical columns of roles this job does not map: reserved or not, the contract does not say
MAYBE_RESERVED = {"actual_label", "actual_score", "prediction_group_id", "rank", "relevance_score",
                  "relevance_label", "batch_id", "prompt", "response", "prediction_scores", "actual_scores",
                  "threshold_scores"}
INTERNAL = "INTERNAL_ERROR"

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
DAY_US = 86_400_000_000
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _us(d: dt.datetime) -> int:
    """Microseconds since the epoch of an aware (or naive = UTC) datetime, exactly."""
    td = (d if d.tzinfo else d.replace(tzinfo=UTC)) - EPOCH
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


NOW = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
NOW_US = _us(NOW)
PAST, FUTURE = 5 * 365 * DAY_US, 365 * DAY_US  # the accepted prediction-timestamp window around ingest time
VALID_TS = (NOW_US - PAST + 3 * DAY_US, NOW_US + FUTURE - 3 * DAY_US)  # generated "good" timestamps
PY_US = (_us(dt.datetime(1, 1, 1, tzinfo=UTC)), _us(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)))
PY_DAYS = (-719_162, 2_932_896)  # date(1, 1, 1) .. date(9999, 12, 31)
UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


# ====================================================================================================
# The generated data
# ====================================================================================================
def _short(v: Any) -> str:
    if isinstance(v, (str, bytes)) and len(v) > 40:
        return f"{v[:12]!r}...(len {len(v)})"
    return repr(v)


class _Pretty:
    """Hypothesis prints examples with its own pretty-printer: use our compact repr."""

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


@dataclasses.dataclass(frozen=True)
class Col(_Pretty):
    """One column: its name, the Arrow type it is built with, its values (temporal types: raw ints)."""

    name: str
    type: pa.DataType
    values: tuple

    def __repr__(self) -> str:
        return f"Col({self.name!r}, {self.type}, ({', '.join(map(_short, self.values))}))"

    def array(self) -> pa.Array:
        t, vals = self.type, list(self.values)
        if pa.types.is_dictionary(t):
            return pa.array(vals, t.value_type).dictionary_encode().cast(t)
        if pa.types.is_date32(t) or pa.types.is_time32(t):
            return pa.array(vals, pa.int32()).cast(t)
        if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_time64(t) or pa.types.is_duration(t):
            return pa.array(vals, pa.int64()).cast(t)
        if pa.types.is_interval(t):
            return pa.array([None if v is None else pa.MonthDayNano(v) for v in vals], t)
        return pa.array(vals, t)


@dataclasses.dataclass(frozen=True)
class FileCase(_Pretty):
    """One file: format, writer, the job's feature mapping and the columns."""

    fmt: str  # parquet | csv | avro | arrow | arrow_stream
    columns: tuple[Col, ...]
    writer: str = "pyarrow"  # csv: pyarrow | pandas | pandas_index (df.to_csv default: with the index)
    mapping: str = "prefix"  # features: prefix "feature_" | all (unclaimed columns) | list (``listed``)
    listed: tuple[str, ...] = ()

    def __repr__(self) -> str:
        extra = f", writer={self.writer!r}" if self.fmt == "csv" else ""
        extra += f", listed={self.listed!r}" if self.mapping == "list" else ""
        cols = ",\n      ".join(map(repr, self.columns))
        return f"FileCase({self.fmt!r}, mapping={self.mapping!r}{extra}, columns=(\n      {cols}))"

    @property
    def ext(self) -> str:
        return {"parquet": ".parquet", "csv": ".csv", "avro": ".avro", "arrow": ".arrow",
                "arrow_stream": ".arrows"}[self.fmt]

    def table(self) -> pa.Table:
        return pa.Table.from_arrays([c.array() for c in self.columns], names=[c.name for c in self.columns])

    def to_bytes(self) -> bytes:
        table = self.table()
        buf = io.BytesIO()
        if self.fmt == "parquet":
            pq.write_table(table, buf)
        elif self.fmt == "csv" and self.writer != "pyarrow":
            text = table.to_pandas().to_csv(index=self.writer == "pandas_index")
            return text.encode("utf-8", "surrogatepass")
        else:
            write_table(table, self.fmt, buf)
        return buf.getvalue()

    def job_schema(self) -> dict:
        schema: dict[str, Any] = {"prediction_id": ID, "timestamp": TS, "prediction_label": LABEL,
                                  "prediction_score": SCORE, "tags": [TAG]}
        if self.mapping == "prefix":
            schema["features"] = {"prefix": FEATURE_PREFIX}
        elif self.mapping == "list":
            schema["features"] = list(self.listed)
        return schema


@dataclasses.dataclass(frozen=True)
class Scenario(_Pretty):
    """Files imported in order into one fresh model table."""

    files: tuple[FileCase, ...]

    def __repr__(self) -> str:
        return "Scenario(files=(\n  " + ",\n  ".join(map(repr, self.files)) + "))"


# ====================================================================================================
# Strategies
# ====================================================================================================
INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
TZS = [None, "UTC", "Asia/Kolkata", "America/New_York", "+05:45", "-09:30", "Pacific/Kiritimati", "Etc/GMT+12"]
UNITS = ["s", "ms", "us", "ns"]
CORE_NAMES = ["feature_a", "feature_b", "feature_x"]  # most feature columns: files of a scenario share them
NAME_POOL = ["feature_", "feature_a.b", "feature_x/y", "feature_é😀", "feature_ sp", "feature_A", "Feature_a"]
WEIRD_NAMES = ["", " ", "\t", "\u3000", "feature_\t", "feature_\x01", "feature_\n", "\x7f", "\u0085x", "date",
               "Date", "DATE", "_source_file", "_SOURCE_FILE", "_source_row", "_ingested_at", "Prediction_Timestamp",
               "prediction_timestamp", "model_version", "Model_Version", "Prediction_ID", "PREDICTION_ID",
               "prediction_label", "Predicted_Score", "Region", "actual_label", "rank", "a.b", "x/y", "é😀", "ß",
               "SS", "FEATURE_A", "x" * 300]
SPECIAL_TEXT = ["", " ", "NULL", "null", "NA", "nan", "inf", "1", "0123", " 1", "true", "True", "2026-01-01",
                "2026-01-01 00:00:00", "a,b", 'q"x', "\r\n", "line\nbreak", "\x00", "nul\x00inside", "\U0001F600",
                "\u202e", "é", "\ufeffbom"]
HUGE_TEXT = ["x" * MAX_VALUE_CHARS, "y" * (MAX_VALUE_CHARS + 1), "\U0001F600" * (MAX_VALUE_CHARS + 1), "z" * 100_000]

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any unicode but lone surrogates
PRINTABLE = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=8)
# the common types of the shared feature names: so that later files of a scenario often meet the same type
# (or a widening) in the table, not only a conflict
COMMON_TYPES = [pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.bool_(),
                pa.timestamp("us", "UTC"), pa.date32()]


def int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    return (0, 2**bits - 1) if pa.types.is_unsigned_integer(t) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _python_range(fmt: str) -> bool:
    """Formats whose writer goes through Python objects (dates/timestamps limited to years 1..9999)."""
    return fmt == "avro"


def scalar_types(fmt: str, nested: bool = True) -> st.SearchStrategy[pa.DataType]:
    """Arrow types a feature column of a ``fmt`` file can have (what the format's writer can write)."""
    simple = [*INT_TYPES, pa.float16(), pa.float32(), pa.float64(), pa.string(), pa.large_string(), pa.binary(),
              pa.large_binary(), pa.binary(3), pa.bool_(), pa.date32(), pa.date64(), pa.null(),
              pa.time32("s"), pa.time32("ms"), pa.time64("us"), pa.time64("ns"),
              pa.dictionary(pa.int32(), pa.string()), pa.dictionary(pa.int8(), pa.int64())]
    if fmt in ("parquet", "arrow", "arrow_stream"):
        simple += [pa.string_view(), pa.binary_view()]
    if fmt != "avro":
        simple += [pa.duration(u) for u in UNITS]
    if fmt in ("arrow", "arrow_stream"):
        simple += [pa.month_day_nano_interval()]
    if fmt == "avro":
        simple = [t for t in simple if t != pa.uint64()]
    simple_types = st.sampled_from(simple)
    timestamps = st.builds(pa.timestamp, st.sampled_from(UNITS), st.sampled_from(TZS))
    options = [simple_types] * 6 + [timestamps] * 2 + [
        st.integers(1, 38).flatmap(lambda p: st.builds(pa.decimal128, st.just(p), st.integers(0, p))),
        st.integers(1, 76).flatmap(lambda p: st.builds(pa.decimal256, st.just(p), st.integers(0, p)))]
    if nested and fmt != "csv":
        options.append(st.sampled_from([pa.list_(pa.int64()), pa.large_list(pa.string()),
                                        pa.struct([("a", pa.int64()), ("b", pa.string())]),
                                        pa.map_(pa.string(), pa.int64()), pa.list_(pa.float32(), 2)]))
    return st.one_of(options)


def values_of(t: pa.DataType, fmt: str) -> st.SearchStrategy:
    """Non-null values of type ``t`` (temporal types as raw ints in the type's unit)."""
    if pa.types.is_dictionary(t):
        return values_of(t.value_type, fmt)
    if pa.types.is_integer(t):
        lo, hi = int_range(t)
        return st.one_of(st.sampled_from([lo, hi, 0, 1, hi - 1]), st.integers(lo, hi))
    if pa.types.is_floating(t):
        width = {16: 16, 32: 32, 64: 64}[t.bit_width]
        return st.floats(width=width)  # NaN, +-inf, -0.0 and subnormals included
    if pa.types.is_decimal(t):
        ctx = decimal.Context(prec=100)
        top = 10**t.precision - 1
        return st.one_of(st.sampled_from([top, -top, 0, 1]), st.integers(-top, top)).map(
            lambda u: decimal.Decimal(u).scaleb(-t.scale, context=ctx))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return st.one_of(TEXT, st.sampled_from(SPECIAL_TEXT), st.sampled_from(HUGE_TEXT))
    if pa.types.is_fixed_size_binary(t):
        return st.binary(min_size=t.byte_width, max_size=t.byte_width)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return st.binary(max_size=12)
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_date32(t):
        days = st.integers(*PY_DAYS)
        if _python_range(fmt):
            return days
        return st.one_of(days, st.sampled_from([-(2**31), 2**31 - 1, PY_DAYS[0] - 1, PY_DAYS[1] + 1]))
    if pa.types.is_date64(t):
        return st.integers(*PY_DAYS).map(lambda d: d * 86_400_000)
    if pa.types.is_timestamp(t):
        per_us = {"s": 1_000_000, "ms": 1_000, "us": 1}
        if t.unit == "ns":
            near = st.integers(*VALID_TS).map(lambda u: u * 1000 + 789)
            py = st.integers(I64_MIN, I64_MAX)  # ns always fits python's datetime range (1677..2262)
            return st.one_of(near, py, st.sampled_from([I64_MIN, I64_MAX, -1, 0]))
        near = st.integers(*VALID_TS).map(lambda u: u // per_us[t.unit])
        py = st.integers(PY_US[0] // per_us[t.unit], PY_US[1] // per_us[t.unit])
        if _python_range(fmt):
            return st.one_of(near, py)
        year_190000 = st.just(_us(dt.datetime(1900, 1, 1, tzinfo=UTC)) // per_us[t.unit] + 188_100 * 31_556_952 *
                              (1_000_000 // per_us[t.unit]))
        extreme = st.sampled_from([I64_MIN, I64_MAX, I64_MIN + 1, -1])
        return st.one_of(near, py, year_190000, extreme, st.integers(I64_MIN, I64_MAX))
    if pa.types.is_time32(t) or pa.types.is_time64(t):
        per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}[t.unit]
        return st.integers(0, per_day - 1)
    if pa.types.is_duration(t):
        return st.integers(I64_MIN, I64_MAX)
    if pa.types.is_interval(t):
        return st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1),
                         st.integers(I64_MIN, I64_MAX))
    if pa.types.is_null(t):
        return st.none()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return st.lists(values_of(t.value_type, fmt), max_size=3)
    if pa.types.is_fixed_size_list(t):
        return st.lists(values_of(t.value_type, fmt), min_size=t.list_size, max_size=t.list_size)
    if pa.types.is_struct(t):
        return st.fixed_dictionaries({f.name: values_of(f.type, fmt) for f in t})
    if pa.types.is_map(t):
        return st.lists(st.tuples(values_of(t.key_type, fmt), values_of(t.item_type, fmt)), max_size=3)
    raise AssertionError(f"no values for {t}")


@st.composite
def column_values(draw, t: pa.DataType, fmt: str, n: int) -> tuple:
    nulls = draw(st.sampled_from(["none", "none", "some", "all"]))
    vals = values_of(t, fmt)
    if nulls == "all" or pa.types.is_null(t):
        return (None,) * n
    if nulls == "none":
        return tuple(draw(vals) for _ in range(n))
    return tuple(draw(st.one_of(st.none(), vals)) for _ in range(n))


@st.composite
def feature_cols(draw, fmt: str, n: int) -> list[Col]:
    out = []
    names = st.one_of([st.sampled_from(CORE_NAMES)] * 5 + [st.sampled_from(NAME_POOL)] * 2 + [
        st.sampled_from(WEIRD_NAMES), PRINTABLE.map(lambda s: FEATURE_PREFIX + s), TEXT])
    unique = draw(st.integers(0, 7)) > 0  # mostly distinct names (ignoring case); sometimes duplicates
    for name in draw(st.lists(names, max_size=4, unique_by=str.lower if unique else None)):
        if name in CORE_NAMES and draw(st.booleans()):
            t = draw(st.sampled_from(COMMON_TYPES))
        else:
            t = draw(scalar_types(fmt, nested=draw(st.integers(0, 9)) == 0))
        out.append(Col(name, t, draw(column_values(t, fmt, n))))
    return out


def _ts_text(us: int, form: int) -> str:
    d = EPOCH + dt.timedelta(microseconds=us)
    if form == 0:
        return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if form == 1:
        return d.strftime("%Y-%m-%d %H:%M:%S")
    if form == 2:
        return d.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
    if form == 3:
        return d.strftime("%Y-%m-%d")
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z"  # nanoseconds: truncated to us


@st.composite
def ts_col(draw, fmt: str, n: int) -> list[Col]:
    """The prediction timestamp column: a valid representation, maybe with nulls, maybe broken."""
    instants = [draw(st.integers(*VALID_TS)) for _ in range(n)]
    kind = draw(st.sampled_from(["timestamp"] * 3 + ["date", "epoch_int", "epoch_float", "epoch_decimal", "text"] +
                                ["broken"]))
    if kind == "timestamp":
        unit = draw(st.sampled_from(UNITS))
        tz = draw(st.sampled_from(TZS))
        per = {"s": 1_000_000, "ms": 1_000, "us": 1}
        vals = [u * 1000 + 321 if unit == "ns" else u // per[unit] for u in instants]
        col = Col(TS, pa.timestamp(unit, tz), tuple(vals))
    elif kind == "date":
        t = draw(st.sampled_from([pa.date32(), pa.date64()]))
        days = [u // DAY_US for u in instants]
        col = Col(TS, t, tuple(d if t == pa.date32() else d * 86_400_000 for d in days))
    elif kind == "epoch_int":
        unit = draw(st.sampled_from(UNITS))
        t = draw(st.sampled_from([pa.int64(), pa.uint64()] + ([pa.int32(), pa.uint32()] if unit == "s" else [])))
        col = Col(TS, t, tuple(u * 1000 + 5 if unit == "ns" else u // UNIT_US[unit] for u in instants))
    elif kind == "epoch_float":
        unit = draw(st.sampled_from(["s", "ms"]))
        t = draw(st.sampled_from([pa.float64(), pa.float32()]))
        col = Col(TS, t, tuple(u / UNIT_US[unit] for u in instants))
    elif kind == "epoch_decimal":
        col = Col(TS, pa.decimal128(20, 6), tuple(decimal.Decimal(u).scaleb(-6) for u in instants))
    elif kind == "text":
        form = draw(st.integers(0, 4))
        if form == 3:
            instants = [u - u % DAY_US for u in instants]
        t = draw(st.sampled_from([pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())]))
        col = Col(TS, t, tuple(_ts_text(u, form) for u in instants))
    else:
        bad = draw(st.sampled_from(["nan", "inf", "1e300", "1e30", "year190000_ms", "old", "future", "epoch0",
                                    "i64max_us", "text_bad", "text_nan", "ns_min", "missing", "bool"]))
        i = draw(st.integers(0, n - 1))
        secs = [u / 1e6 for u in instants]
        if bad == "missing":
            return []
        if bad in ("nan", "inf", "1e300", "1e30"):
            secs[i] = {"nan": math.nan, "inf": draw(st.sampled_from([math.inf, -math.inf])), "1e300": 1e300,
                       "1e30": 1e30}[bad]
            col = Col(TS, pa.float64(), tuple(secs))
        elif bad == "year190000_ms":
            ms = [u // 1000 for u in instants]
            ms[i] = 5_933_000_000_000_000
            col = Col(TS, pa.timestamp("ms"), tuple(ms))
        elif bad in ("old", "future", "i64max_us"):
            us = list(instants)
            us[i] = {"old": _us(dt.datetime(2000, 1, 1, tzinfo=UTC)), "future": _us(dt.datetime(2100, 1, 1, tzinfo=UTC)),
                     "i64max_us": I64_MAX}[bad]
            col = Col(TS, pa.timestamp("us", "UTC"), tuple(us))
        elif bad == "epoch0":
            s = [u // 1_000_000 for u in instants]
            s[i] = 0
            col = Col(TS, pa.int64(), tuple(s))
        elif bad in ("text_bad", "text_nan"):
            txt = [_ts_text(u, 0) for u in instants]
            txt[i] = "not a date" if bad == "text_bad" else draw(st.sampled_from(["nan", "inf", "NaN", "-inf"]))
            col = Col(TS, pa.string(), tuple(txt))
        elif bad == "ns_min":
            ns = [u * 1000 for u in instants]
            ns[i] = I64_MIN
            col = Col(TS, pa.timestamp("ns", "UTC"), tuple(ns))
        else:
            col = Col(TS, pa.bool_(), tuple(True for _ in instants))
    if draw(st.integers(0, 4)) == 0 and not pa.types.is_boolean(col.type):  # nulls: the ingest time
        vals = list(col.values)
        vals[draw(st.integers(0, n - 1))] = None
        col = Col(col.name, col.type, tuple(vals))
    return [col]


@st.composite
def id_col(draw, fmt: str, n: int) -> list[Col]:
    kind = draw(st.sampled_from(["str"] * 5 + ["int", "int", "large", "dict", "broken"]))
    suffixes = [draw(st.one_of(TEXT, st.sampled_from(["", "x" * 505]))) for _ in range(n)]
    strs = [f"{i}-{s}" for i, s in enumerate(suffixes)]
    if kind == "str":
        return [Col(ID, pa.string(), tuple(strs))]
    if kind == "large":
        return [Col(ID, pa.large_string(), tuple(strs))]
    if kind == "dict":
        return [Col(ID, pa.dictionary(pa.int32(), pa.string()), tuple(strs))]
    if kind == "int":
        t = draw(st.sampled_from(INT_TYPES))
        lo, hi = int_range(t)
        base = draw(st.sampled_from([lo, hi - n + 1, 0]))
        return [Col(ID, t, tuple(base + i for i in range(n)))]
    bad = draw(st.sampled_from(["null", "empty", "dup", "long", "float", "bool", "missing", "whitespace"]))
    i = draw(st.integers(0, n - 1))
    if bad == "missing":
        return []
    if bad == "float":
        return [Col(ID, pa.float64(), tuple(float(k) for k in range(n)))]
    if bad == "bool":
        return [Col(ID, pa.bool_(), tuple(k % 2 == 0 for k in range(n)))]
    if bad == "dup":
        if n == 1:
            return [Col(ID, pa.string(), tuple(strs))]
        strs[max(i, 1)] = strs[0]
    else:
        strs[i] = {"null": None, "empty": "", "long": "y" * (MAX_ID_CHARS + 1), "whitespace": " "}[bad]
    return [Col(ID, pa.string(), tuple(strs))]


@st.composite
def label_col(draw, fmt: str, n: int) -> list[Col]:
    kind = draw(st.sampled_from(["str"] * 5 + ["int", "int", "bool", "dict", "broken"]))
    if kind in ("str", "dict"):
        vals = [draw(st.one_of(TEXT.filter(bool), st.sampled_from(SPECIAL_TEXT[1:]))) for _ in range(n)]
        t = pa.string() if kind == "str" else pa.dictionary(pa.int32(), pa.string())
        return [Col(LABEL, t, tuple(vals))]
    if kind == "int":
        t = draw(st.sampled_from(INT_TYPES))
        return [Col(LABEL, t, tuple(draw(values_of(t, fmt)) for _ in range(n)))]
    if kind == "bool":
        return [Col(LABEL, pa.bool_(), tuple(draw(st.booleans()) for _ in range(n)))]
    bad = draw(st.sampled_from(["null", "float", "long", "missing", "empty"]))
    if bad == "missing":
        return []
    if bad == "float":
        return [Col(LABEL, pa.float64(), tuple(draw(st.floats()) for _ in range(n)))]
    vals = ["a"] * n
    vals[draw(st.integers(0, n - 1))] = {"null": None, "long": "L" * (MAX_VALUE_CHARS + 1), "empty": ""}[bad]
    return [Col(LABEL, pa.string(), tuple(vals))]


@st.composite
def score_col(draw, fmt: str, n: int) -> list[Col]:
    kind = draw(st.sampled_from(["float"] * 5 + ["int", "int", "decimal", "text", "broken"]))
    if kind == "float":
        t = draw(st.sampled_from([pa.float64(), pa.float32(), pa.float16()]))
        w = t.bit_width
        return [Col(SCORE, t, tuple(draw(st.floats(allow_nan=False, allow_infinity=False, width=w))
                                    for _ in range(n)))]
    if kind == "int":
        t = draw(st.sampled_from(INT_TYPES))
        return [Col(SCORE, t, tuple(draw(values_of(t, fmt)) for _ in range(n)))]
    if kind == "decimal":
        t = draw(st.sampled_from([pa.decimal128(10, 4), pa.decimal128(38, 10), pa.decimal256(20, 3)]))
        return [Col(SCORE, t, tuple(draw(values_of(t, fmt)) for _ in range(n)))]
    if kind == "text":
        return [Col(SCORE, pa.string(),
                    tuple(repr(draw(st.floats(allow_nan=False, allow_infinity=False))) for _ in range(n)))]
    bad = draw(st.sampled_from(["null", "nan", "inf", "abc", "bool", "missing"]))
    if bad == "missing":
        return []
    if bad == "bool":
        return [Col(SCORE, pa.bool_(), tuple(True for _ in range(n)))]
    i = draw(st.integers(0, n - 1))
    if bad == "abc":
        vals = ["0.5"] * n
        vals[i] = draw(st.sampled_from(["abc", "x1", "one", "1,5"]))
        return [Col(SCORE, pa.string(), tuple(vals))]
    vals = [0.5] * n
    vals[i] = {"null": None, "nan": math.nan, "inf": -math.inf}[bad]
    return [Col(SCORE, pa.float64(), tuple(vals))]


@st.composite
def file_cases(draw) -> FileCase:
    fmt = draw(st.sampled_from(["parquet", "csv", "avro", "arrow", "arrow_stream"]))
    writer = draw(st.sampled_from(["pyarrow", "pyarrow", "pandas", "pandas_index"])) if fmt == "csv" else "pyarrow"
    mapping = draw(st.sampled_from(["prefix", "prefix", "all", "list"]))
    n = draw(st.integers(1, 6))
    cols = draw(id_col(fmt, n)) + draw(ts_col(fmt, n)) + draw(label_col(fmt, n)) + draw(score_col(fmt, n))
    if draw(st.booleans()):
        t = draw(scalar_types(fmt, nested=draw(st.integers(0, 9)) == 0))
        cols.append(Col(TAG, t, draw(column_values(t, fmt, n))))
    feats = draw(feature_cols(fmt, n))
    cols = draw(st.permutations(cols + feats))
    listed: tuple[str, ...] = ()
    if mapping == "list":
        names = [c.name for c in feats]
        listed = tuple(dict.fromkeys(draw(st.lists(st.sampled_from(names), max_size=len(names))) if names else []))
        if draw(st.booleans()):
            listed += ("feature_not_in_file",)
    return FileCase(fmt, tuple(cols), writer, mapping, listed)


scenarios = st.integers(1, 3).flatmap(lambda k: st.tuples(*[file_cases()] * k)).map(Scenario)


# ====================================================================================================
# The oracle: decode the bytes independently, apply the documented rules
# ====================================================================================================
@dataclasses.dataclass
class Src:
    """A decoded column: kind (int/float/decimal/string/binary/bool/date/timestamp/time/duration/interval/
    null/nested/other), details, canonical values (dates: days; timestamps/times: raw ints in ``unit``),
    and for CSV the cell text."""

    name: str
    kind: str
    meta: dict
    values: list
    text: list | None = None


def _kind_of_arrow(t: pa.DataType) -> tuple[str, dict]:
    if pa.types.is_dictionary(t):
        return _kind_of_arrow(t.value_type)
    if pa.types.is_integer(t):
        return "int", {"bits": t.bit_width, "signed": pa.types.is_signed_integer(t)}
    if pa.types.is_floating(t):
        return "float", {"bits": t.bit_width}
    if pa.types.is_decimal(t):
        return "decimal", {"p": t.precision, "s": t.scale}
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string", {}
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)):
        return "binary", {}
    if pa.types.is_boolean(t):
        return "bool", {}
    if pa.types.is_date(t):
        return "date", {}
    if pa.types.is_timestamp(t):
        return "timestamp", {"unit": t.unit, "tz": t.tz}
    if pa.types.is_time(t):
        return "time", {"unit": t.unit}
    if pa.types.is_duration(t):
        return "duration", {}
    if pa.types.is_interval(t):
        return "interval", {}
    if pa.types.is_null(t):
        return "null", {}
    if pa.types.is_nested(t):
        return "nested", {}
    return "other", {"type": str(t)}


def _arrow_src(name: str, col: pa.ChunkedArray) -> Src:
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = t.value_type
    kind, meta = _kind_of_arrow(t)
    if kind == "date":
        raw = col.cast(pa.int32() if pa.types.is_date32(t) else pa.int64()).to_pylist()
        values = raw if pa.types.is_date32(t) else [None if v is None else v // 86_400_000 for v in raw]
    elif kind in ("timestamp", "time", "duration"):
        values = col.cast(pa.int32() if pa.types.is_time32(t) else pa.int64()).to_pylist()
    elif kind in ("interval", "nested", "other"):
        values = ["<value>" if v else None for v in col.is_valid().to_pylist()]
    elif kind == "float":
        values = [None if v is None else float(v) for v in col.to_pylist()]
    else:
        values = col.to_pylist()
    return Src(name, kind, meta, values)


def _avro_kind(a: Any) -> tuple[str, dict]:
    if isinstance(a, list):
        branches = [b for b in a if b != "null"]
        return ("null", {}) if not branches else _avro_kind(branches[0]) if len(branches) == 1 else ("other", {})
    if isinstance(a, str):
        return {"null": ("null", {}), "boolean": ("bool", {}), "int": ("int", {"bits": 32, "signed": True}),
                "long": ("int", {"bits": 64, "signed": True}), "float": ("float", {"bits": 32}),
                "double": ("float", {"bits": 64}), "bytes": ("binary", {}), "string": ("string", {})}.get(a, ("other", {}))
    logical = a.get("logicalType")
    if logical == "decimal":
        return "decimal", {"p": int(a["precision"]), "s": int(a.get("scale", 0))}
    if logical in ("timestamp-millis", "timestamp-micros"):
        return "timestamp", {"unit": "us", "tz": "UTC"}
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return "timestamp", {"unit": "us", "tz": None}
    if logical == "date":
        return "date", {}
    if logical in ("time-millis", "time-micros"):
        return "time", {"unit": "us"}
    base = a.get("type")
    if base in ("record", "array", "map"):
        return "nested", {}
    if base == "fixed":
        return "binary", {}
    if base == "enum":
        return "string", {}
    return _avro_kind(base)


def _avro_value(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if kind == "timestamp":
        return _us(v)
    if kind == "date":
        return (v - dt.date(1970, 1, 1)).days
    if kind == "time":
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if kind == "nested":
        return "<value>"
    if kind == "float":
        return float(v)
    return v


class Undecodable(Exception):
    """The oracle cannot decode the file: it must fail with one of ``codes`` (or any code if empty)."""

    def __init__(self, why: str, codes: set[str]):
        super().__init__(why)
        self.codes = codes


def decode(fmt: str, data: bytes) -> list[Src]:
    """The file's columns as the oracle reads them (never with obslake's readers)."""
    if fmt == "parquet":
        t = pq.ParquetFile(io.BytesIO(data)).read()  # not read_table: its dataset scan refuses duplicate names
        return [_arrow_src(n, c) for n, c in zip(t.column_names, t.columns)]
    if fmt in ("arrow", "arrow_stream"):
        reader = pa.ipc.open_file(io.BytesIO(data)) if fmt == "arrow" else pa.ipc.open_stream(io.BytesIO(data))
        t = reader.read_all()
        return [_arrow_src(n, c) for n, c in zip(t.column_names, t.columns)]
    if fmt == "avro":
        r = fastavro.reader(io.BytesIO(data))
        records = list(r)
        out = []
        for f in r.writer_schema["fields"]:
            kind, meta = _avro_kind(f["type"])
            out.append(Src(f["name"], kind, meta, [_avro_value(kind, rec[f["name"]]) for rec in records]))
        return out
    # CSV: the documented reading - UTF-8, header row, obslake's null cells, pyarrow's type inference
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Undecodable(f"not UTF-8: {exc}", {"FILE_ENCODING"}) from None
    parse = pacsv.ParseOptions(newlines_in_values=True)  # the contract: quoted newlines import fine
    read = pacsv.ReadOptions(block_size=1 << 26)
    convert = dict(null_values=CSV_NULLS, strings_can_be_null=True)
    try:
        typed = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse,
                               convert_options=pacsv.ConvertOptions(**convert))
        text = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse,
                              convert_options=pacsv.ConvertOptions(
                                  column_types={n: pa.string() for n in typed.column_names}, **convert))
    except pa.ArrowInvalid as exc:
        raise Undecodable(f"pyarrow cannot read it: {exc}", set()) from None
    out = []
    for i, name in enumerate(typed.column_names):
        col = typed.column(i)
        cells = text.column(i).to_pylist()
        if pa.types.is_null(col.type):  # all null (read as text by formats.read_batches: only nulls)
            src = Src(name, "null", {}, cells)
        elif pa.types.is_binary(col.type):  # not UTF-8 (excluded above); read as text by formats.read_batches
            src = Src(name, "string", {}, cells)
        else:
            src = _arrow_src(name, col)
        src.text = cells
        out.append(src)
    return out


# -- expected cells ----------------------------------------------------------------------------------
Cell = Any  # None or a tagged tuple: ("i", int) ("f", float) ("dec", Decimal) ("s", str) ("b", bytes)
#            ("bool", bool) ("date", days) ("ts", us, tz-aware) ("time", us)


def _float_eq(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def _ulps(a: float, b: float) -> int:
    ia, ib = (struct.unpack("<q", struct.pack("<d", x))[0] for x in (a, b))
    ia, ib = (x if x >= 0 else I64_MIN - x for x in (ia, ib))
    return abs(ia - ib)


class M:
    """A matcher: does the cell read back (in its row) hold the expected value?"""

    def ok(self, cell: Cell, row: dict) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Is(M):
    cell: Cell

    def ok(self, cell, row):
        a, b = self.cell, cell
        if a is None or b is None:
            return a is None and b is None
        if a[0] != b[0]:
            return False
        if a[0] == "f":
            return _float_eq(a[1], b[1])
        if a[0] == "ts":
            return a[1] == b[1] and (a[2] is None or a[2] == b[2])
        return a[1:] == b[1:]

    def __repr__(self):
        return "None" if self.cell is None else f"{self.cell[0]}:{_short(self.cell[1])}"


@dataclasses.dataclass(frozen=True)
class OneOf(M):
    options: tuple[M, ...]

    def ok(self, cell, row):
        return any(o.ok(cell, row) for o in self.options)

    def __repr__(self):
        return " | ".join(map(repr, self.options))


@dataclasses.dataclass(frozen=True)
class Near(M):
    """A double within ``ulps`` units in the last place (conversions the contract does not pin down)."""

    value: float
    ulps: int

    def ok(self, cell, row):
        return cell is not None and cell[0] == "f" and (_float_eq(cell[1], self.value) or (
            math.isfinite(cell[1]) and math.isfinite(self.value) and _ulps(cell[1], self.value) <= self.ulps))

    def __repr__(self):
        return f"f:~{self.value!r}(±{self.ulps}ulp)"


@dataclasses.dataclass(frozen=True)
class TsNear(M):
    """A timestamp (us) within ``tol`` of one of ``candidates``; ``tz`` checked when not None."""

    candidates: tuple[int, ...]
    tol: int = 0
    tz: bool | None = None

    def ok(self, cell, row):
        return (cell is not None and cell[0] == "ts" and any(abs(cell[1] - c) <= self.tol for c in self.candidates)
                and (self.tz is None or cell[2] == self.tz))

    def __repr__(self):
        return f"ts:{'/'.join(map(str, self.candidates))}" + (f"±{self.tol}" if self.tol else "")


class Ingested(M):
    """A null prediction timestamp: the ingest time."""

    def ok(self, cell, row):
        return cell is not None and cell[0] == "ts" and cell[1:2] == row["_ingested_at"][1:2]

    def __repr__(self):
        return "ts:<ingest time>"


class DateOfTs(M):
    """The partition column: the UTC date of the row's prediction timestamp."""

    def ok(self, cell, row):
        ts = row.get("prediction_timestamp")
        return cell is not None and ts is not None and cell == ("date", ts[1] // DAY_US)

    def __repr__(self):
        return "date:<of prediction_timestamp>"


@dataclasses.dataclass(frozen=True)
class Text(M):
    """A number/bool widened into a string column: the text must parse back to the same value."""

    kind: str
    value: Any

    def ok(self, cell, row):
        if cell is None or cell[0] != "s":
            return False
        s = cell[1].strip()
        try:
            if self.kind == "bool":
                return s.lower() in (("true", "1") if self.value else ("false", "0"))
            if self.kind == "date":  # README: a date into a string column is its ISO text
                return s == (dt.date(1970, 1, 1) + dt.timedelta(days=self.value)).isoformat()
            if self.kind == "int":
                return int(s) == self.value
            if self.kind == "decimal":
                return decimal.Decimal(s) == self.value
            if self.kind == "float32":
                return _float_eq(struct.unpack("<f", struct.pack("<f", float(s)))[0], self.value)
            return _float_eq(float(s), self.value)
        except (ValueError, decimal.InvalidOperation, OverflowError):
            return False

    def __repr__(self):
        return f"s:<text of {self.kind} {self.value!r}>"


class NotNull(M):
    def ok(self, cell, row):
        return cell is not None

    def __repr__(self):
        return "<any non-null>"


@dataclasses.dataclass
class Expect:
    """What the oracle concludes about one file."""

    n: int = 0
    fail: dict[str, str] = dataclasses.field(default_factory=dict)  # clear problem code -> first reason
    record_codes: set[str] = dataclasses.field(default_factory=set)
    open: list[str] = dataclasses.field(default_factory=list)  # why the verdict is left open
    columns: dict[str, list[M]] = dataclasses.field(default_factory=dict)  # stored column -> expected cells
    alt_codes: set[str] = dataclasses.field(default_factory=set)  # other acceptable codes of a clear problem
    events: list[str] = dataclasses.field(default_factory=list)  # for the statistics (conflicts, widenings)

    def problem(self, code: str, why: str, record: bool = False, also: tuple[str, ...] = ()) -> None:
        self.fail.setdefault(code, why)
        self.alt_codes.update(also)
        if record:
            self.record_codes.add(code)

    @property
    def verdict(self) -> str:
        return "fail" if self.fail else "either" if self.open else "import"

    def allowed_codes(self) -> set[str]:
        return set(self.fail) | self.alt_codes | ({"RECORD_ERRORS"} if self.record_codes else set())

    def summary(self) -> str:
        s = f"verdict={self.verdict}"
        if self.fail:
            s += " problems=" + "; ".join(f"{c}: {w}" for c, w in self.fail.items())
        if self.open:
            s += " open=" + "; ".join(self.open[:5])
        return s


def _is_bad_name(name: str) -> str | None:
    if name == "" or name.isspace():
        return "clear"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "clear"
    if any(127 < ord(c) < 160 or c in "\u2028\u2029" for c in name):
        return "open"
    return None


_NUM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NONFINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
                      r"(Z|[+-]\d{2}(?::?\d{2})?)?)?")


def parse_rfc3339(s: str) -> int | None:
    """Microseconds of RFC 3339 / ISO 8601 text (no offset = UTC; digits beyond us truncated), or None."""
    m = _RFC3339.fullmatch(s)
    if not m:
        return None
    y, mo, d, h, mi, sec, frac, off = m.groups()
    try:
        base = dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0), tzinfo=UTC)
    except ValueError:
        return None
    us = _us(base) + int((frac or "0")[:6].ljust(6, "0"))
    if off and off != "Z":
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        us -= sign * (int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60) * 1_000_000
    return us


def _ts_us_candidates(raw: int, unit: str) -> tuple[int, ...]:
    """A timestamp in ``unit`` as us: ns truncated (floor or toward zero: the contract says 'truncated')."""
    if unit == "ns":
        return (raw // 1000,) if raw >= 0 or raw % 1000 == 0 else (raw // 1000, raw // 1000 + 1)
    return (raw * UNIT_US[unit],)


def _family(kind: str, meta: dict) -> tuple:
    """The column's family after normalisation, as (family, detail)."""
    if kind == "int":
        wide = meta["bits"] == 64 or (meta["bits"] == 32 and not meta["signed"])
        return ("i", 64 if wide else 32)
    if kind == "float":
        return ("f", 64 if meta["bits"] == 64 else 32)
    if kind == "decimal":
        return ("dec", meta["p"], meta["s"])
    if kind == "timestamp":
        return ("ts", meta["tz"] is not None)
    return (kind,)


def _table_family(iceberg_type: str) -> tuple:
    t = iceberg_type.lower()
    m = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", t)
    if m:
        return ("dec", int(m.group(1)), int(m.group(2)))
    return {"int": ("i", 32), "long": ("i", 64), "float": ("f", 32), "double": ("f", 64), "string": ("string",),
            "binary": ("binary",), "boolean": ("bool",), "date": ("date",), "time": ("time",),
            "timestamp": ("ts", False), "timestamptz": ("ts", True)}.get(t, ("binary",) if t.startswith("fixed")
                                                                         else ("other", t))


_CLEAR_MISMATCH = {  # file family -> table families it clearly cannot go into (README: a type change is refused)
    "string": {"i", "f", "dec", "bool", "date", "ts", "time", "binary"},
    "i": {"bool", "date", "ts", "time", "binary"},
    "f": {"i", "bool", "date", "ts", "time", "binary"},
    "dec": {"bool", "date", "ts", "time", "binary"},
    "bool": {"i", "f", "dec", "date", "ts", "time", "binary"},
    "date": {"i", "f", "dec", "bool", "time", "binary"},
    "ts": {"i", "f", "dec", "bool", "time", "binary"},
    "binary": {"i", "f", "dec", "bool", "date", "ts", "time"},
}


def feature_expectation(c: Src, e: Expect, table_type: str | None, *, is_csv: bool = False,
                        is_tag: bool = False) -> list[M] | None:
    """Expected cells of a stored feature/tag column (None: values not checked); problems into ``e``.

    CSV (README "Expected types"): a column the table has, whose inferred type widens into the table's,
    is cast from its text to the table's type; a new feature (not a tag) inferred as integers is double.
    """
    kind, meta = c.kind, c.meta
    where = f"column {c.name!r}"
    if is_csv and kind in ("int", "float", "bool", "decimal") and table_type is not None \
            and _table_family(table_type)[0] == "string":
        e.events.append("CSV text into a string column")
        return [Is(None) if v is None else Is(("s", t)) for v, t in zip(c.values, c.text)]
    if is_csv and kind == "int" and not is_tag and (table_type is None or _table_family(table_type) == ("f", 64)):
        e.events.append("CSV whole numbers as double")
        out: list[M] = []
        for row, v in enumerate(c.values, 1):
            if v is not None and abs(v) >= 2**53:
                e.problem("VALUE_OUT_OF_RANGE", f"{where} row {row}: integer {v} is not exact as a double",
                          record=True)
            out.append(Is(None) if v is None else Is(("f", float(v))))
        return out
    if kind == "nested":
        e.problem("FEATURE_NESTED", f"{where} is nested")
        return None
    if kind in ("duration", "interval"):
        e.problem("TYPE_UNSUPPORTED", f"{where} is a {kind}")
        return None
    if kind == "decimal" and meta["p"] > 38:
        e.problem("TYPE_UNSUPPORTED", f"{where} is decimal({meta['p']}, {meta['s']}): precision over 38")
        return None
    if kind == "other":
        e.open.append(f"{where} has type {meta}")
        return None
    if kind == "time":
        e.open.append(f"{where} is a time of day (not in README's feature types)")
    cells: list[M] = []
    for row, v in enumerate(c.values, 1):
        if v is None:
            cells.append(Is(None))
        elif kind == "int":
            if v > I64_MAX:
                e.problem("VALUE_OUT_OF_RANGE", f"{where} row {row}: {v} > 2^63-1", record=True)
            cells.append(Is(("i", v)))
        elif kind == "float":
            cells.append(Is(("f", v)))
        elif kind == "decimal":
            cells.append(Is(("dec", v)))
        elif kind == "string":
            if len(v) > MAX_VALUE_CHARS:
                e.problem("VALUE_TOO_LONG", f"{where} row {row}: {len(v)} characters", record=True)
            cells.append(Is(("s", v)))
        elif kind == "binary":
            cells.append(Is(("b", v)))
        elif kind == "bool":
            cells.append(Is(("bool", v)))
        elif kind == "date":
            if not PY_DAYS[0] <= v <= PY_DAYS[1]:
                e.open.append(f"{where} row {row}: date beyond years 1..9999 ({v} days)")
            cells.append(Is(("date", v)))
        elif kind == "timestamp":
            cand = _ts_us_candidates(v, meta["unit"])
            if any(not I64_MIN <= u <= I64_MAX for u in cand):
                e.problem("VALUE_OUT_OF_RANGE", f"{where} row {row}: {v} {meta['unit']} overflows a us timestamp",
                          record=True)
            elif any(not PY_US[0] <= u <= PY_US[1] for u in cand):
                e.open.append(f"{where} row {row}: timestamp beyond years 1..9999")
            cells.append(TsNear(cand, 0, True if meta["tz"] is not None else None))
        elif kind == "time":
            cells.append(OneOf(tuple(Is(("time", u)) for u in _ts_us_candidates(v, meta["unit"]))))
        else:  # null column: all None, handled above
            cells.append(Is(None))
    if table_type is None:
        return cells
    # the table already has this column: the documented widenings, else a type conflict
    ff, tf = _family(kind, meta), _table_family(table_type)
    e.events.append("column meets an existing table column" + (" of the same type" if ff == tf else
                                                                " of another type"))
    if kind == "null":
        if tf[0] != "string":
            e.open.append(f"{where}: an all-null column meets table type {table_type}")
        return cells
    if ff == tf or (ff[0] == tf[0] == "i" and ff[1] <= tf[1]) or (ff[0] == tf[0] == "f" and ff[1] <= tf[1]):
        return cells
    if ff[0] == tf[0] == "dec" and ff[2] == tf[2] and ff[1] <= tf[1]:
        # a narrower decimal of the same scale into a wider one: Iceberg's own widening, every value exact
        # (found by this test: decimal(1, 0) 9 into decimal(2, 0) was imported, and rightly so)
        e.events.append("widening decimal")
        return cells
    if ff[0] == "i" and tf == ("f", 64):
        e.events.append("widening int -> double")
        out: list[M] = []
        for m, v in zip(cells, c.values):
            if v is not None and abs(v) > 2**53:
                e.open.append(f"{where}: integer {v} into a double column is not exact")
                out.append(Near(float(v), 1))
            else:
                out.append(Is(None) if v is None else Is(("f", float(v))))
        return out
    if ff[0] in ("i", "f", "dec", "bool", "date") and tf[0] == "string":
        e.events.append("widening number/bool/date -> string")
        k = "float32" if ff == ("f", 32) else {"i": "int", "f": "float", "dec": "decimal", "bool": "bool",
                                                 "date": "date"}[ff[0]]
        return [Is(None) if v is None else Text(k, v) for v in c.values]
    if tf[0] in _CLEAR_MISMATCH.get(ff[0], set()):
        e.events.append("type conflict with the table")
        e.problem("TYPE_MISMATCH", f"{where} is {kind} {meta} but the table has {table_type}")
        return None
    e.open.append(f"{where} ({kind} {meta}) meets table type {table_type}")
    return None


def _epoch_unit(values: list[float]) -> str:
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    mx = max(finite, default=0)
    return "s" if mx < 1e11 else "ms" if mx < 1e14 else "us" if mx < 1e17 else "ns"


def ts_expectation(c: Src, e: Expect, is_csv: bool) -> list[M]:
    """Expected prediction_timestamp cells; record problems into ``e``."""
    where = f"timestamp column {c.name!r}"
    kind = c.kind
    n = len(c.values)
    if is_csv and kind not in ("int", "float"):
        kind = "text"
    elif kind == "string":
        kind = "text"
    out: list[M] = []
    instants: list[int | None] = []  # us, for the range check
    if kind == "timestamp":
        for v in c.values:
            cand = None if v is None else _ts_us_candidates(v, c.meta["unit"])
            out.append(Ingested() if v is None else TsNear(cand, 0, True))
            instants.append(None if v is None else cand[0])
    elif kind == "date":
        for v in c.values:
            out.append(Ingested() if v is None else TsNear((v * DAY_US,), 0, True))
            instants.append(None if v is None else v * DAY_US)
    elif kind in ("int", "float", "decimal"):
        nums = [None if v is None else float(v) for v in c.values]
        unit = _epoch_unit(nums)
        factor = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}[unit]
        exact = kind == "int" and unit != "ns"
        for row, (v, x) in enumerate(zip(c.values, nums), 1):
            if x is None:
                out.append(Ingested())
                instants.append(None)
            elif not math.isfinite(x):
                e.problem("TS_INVALID", f"{where} row {row}: {x}", record=True)
                out.append(NotNull())
                instants.append(None)
            else:
                us = v * UNIT_US[unit] if exact else x * factor
                instants.append(int(us) if abs(us) < 1e30 else (I64_MAX if us > 0 else I64_MIN) * 1000)
                out.append(TsNear((int(us),), 0 if exact else 1, True) if abs(us) < 1e30 else NotNull())
    elif kind == "text":
        cells = c.text if c.text is not None else c.values
        for row, s in enumerate(cells, 1):
            if s is None:
                out.append(Ingested())
                instants.append(None)
                continue
            us = parse_rfc3339(s)
            if us is None:
                if s.strip().lower() in _NONFINITE:
                    e.problem("TS_INVALID", f"{where} row {row}: {s!r}", record=True)
                elif s.strip() == "" or any(ch.isdigit() for ch in s):
                    e.open.append(f"{where} row {row}: {s!r} is not a form the oracle parses")
                else:
                    e.problem("TS_PARSE", f"{where} row {row}: {s!r}", record=True)
                out.append(NotNull())
                instants.append(None)
            else:
                out.append(TsNear((us,), 0, True))
                instants.append(us)
    elif kind == "null":
        e.open.append(f"{where} is an all-null column of type null")
        return [Ingested()] * n
    else:
        e.problem("TYPE_MISMATCH", f"{where} is {kind}")
        return [NotNull()] * n
    now = _us(dt.datetime.now(UTC))
    for row, us in enumerate(instants, 1):
        if us is None:
            continue
        if us < now - PAST - DAY_US or us > now + FUTURE + DAY_US:
            e.problem("TS_OUT_OF_RANGE", f"{where} row {row}: {us} us", record=True)
        elif not (now - PAST + DAY_US <= us <= now + FUTURE - DAY_US):
            e.open.append(f"{where} row {row}: at the edge of the accepted window")
    return out


def score_expectation(c: Src, e: Expect, is_csv: bool) -> list[M]:
    where = f"score column {c.name!r}"
    kind = "text" if (is_csv or c.kind == "string") else c.kind
    if kind == "null":
        e.problem("SCORE_MISSING", f"{where} is all null (type null)", record=True, also=("TYPE_MISMATCH",))
        return [Is(None)] * len(c.values)
    if kind == "decimal" and c.meta["p"] > 38:
        e.open.append(f"{where} is decimal256({c.meta['p']})")
    elif kind not in ("int", "float", "decimal", "text"):
        e.problem("TYPE_MISMATCH", f"{where} is {kind}")
        return [NotNull()] * len(c.values)
    out: list[M] = []
    for row, v in enumerate(c.text if is_csv else c.values, 1):
        if v is None:
            e.problem("SCORE_MISSING", f"{where} row {row} is null", record=True)
            out.append(Is(None))
            continue
        if kind == "text":
            s = v.strip()
            if s.lower() in _NONFINITE:
                x = math.nan
            elif _NUM.fullmatch(s):
                x = float(s)
            elif not any(ch.isdigit() for ch in s):
                e.problem("SCORE_TYPE", f"{where} row {row}: {s!r} is not a number", record=True)
                out.append(Is(None))
                continue
            else:
                e.open.append(f"{where} row {row}: {s!r}")
                out.append(NotNull())
                continue
            m: M = Is(("f", x))
        elif kind == "int":
            x = float(v)
            if abs(v) > 2**53:
                e.open.append(f"{where} row {row}: integer {v} is not exact as a double")
            m = Near(x, 1) if abs(v) > 2**53 else Is(("f", x))
        elif kind == "decimal":
            x = float(v)
            m = Near(x, 4)
        else:
            x = v
            m = Is(("f", x))
        if not math.isfinite(x):
            e.problem("SCORE_NOT_FINITE", f"{where} row {row}: {x}", record=True)
        out.append(m)
    return out


def oracle(case: FileCase, data: bytes, table_cols: dict[str, str], uri: str) -> Expect:
    """The expected outcome of importing ``data`` (a file of ``case``) into a table with ``table_cols``."""
    e = Expect()
    try:
        src = decode(case.fmt, data)
    except Undecodable as exc:
        if exc.codes:
            for code in exc.codes:
                e.problem(code, str(exc))
        else:
            e.open.append(str(exc))
        return e
    is_csv = case.fmt == "csv"
    names = [c.name for c in src]
    e.n = len(src[0].values) if src else 0
    if e.n == 0:
        e.problem("FILE_EMPTY", "no data rows")
        return e
    first = {}
    for c in src:
        first.setdefault(c.name, c)
    for role in (ID, TS, LABEL, SCORE):
        if role not in first:
            e.problem("COLUMN_MISSING", f"no column {role!r}")
    claimed = {ID, TS, LABEL, SCORE, TAG}
    if case.mapping == "prefix":
        features = [n for n in names if n.startswith(FEATURE_PREFIX) and n not in claimed]
    elif case.mapping == "all":
        features = [n for n in names if n not in claimed]
    else:
        features = [n for n in names if n in case.listed and n not in claimed]
    stored = features + ([TAG] if TAG in first else [])
    # file-level: names. Duplicates ignoring case are DUPLICATE_COLUMN ("prediction_id" and "Prediction_ID",
    # the contract's example, where the second is not read at all); a group of columns none of which is read
    # (mapped or stored) is left open.
    read = set(stored) | {ID, TS, LABEL, SCORE}
    groups = collections.defaultdict(list)
    for n in names:
        groups[n.lower()].append(n)
    for group in groups.values():
        if len(group) > 1:
            if read & set(group):
                e.problem("DUPLICATE_COLUMN", f"columns {sorted(group)} are equal ignoring case")
            else:
                e.open.append(f"columns {sorted(group)} are equal ignoring case but none is read")
    folded = collections.Counter(n.casefold() for n in names)
    if any(folded[n.casefold()] > len(groups[n.lower()]) for n in names):
        e.open.append("names equal only under Unicode case folding")
    lower_table = {n.lower(): n for n in table_cols}
    for name in dict.fromkeys(stored):
        bad = _is_bad_name(name)
        if bad == "clear":
            e.problem("COLUMN_NAME_INVALID", f"stored column {name!r} is empty, blank or has control characters")
        elif bad == "open":
            e.open.append(f"stored column {name!r} has C1/line-separator characters")
        if name.lower() in RESERVED:
            e.problem("RESERVED_NAME", f"stored column {name!r} is a reserved name")
        elif name.lower() in MAYBE_RESERVED:
            e.open.append(f"stored column {name!r} is the name of a role this job does not map")
        if name.lower() in lower_table and lower_table[name.lower()] != name:
            e.open.append(f"stored column {name!r} differs only in case from table column {lower_table[name.lower()]!r}")
    # roles
    cols: dict[str, list[M]] = {}
    if ID in first:
        c = first[ID]
        kind = "string" if is_csv else c.kind
        if kind == "null":
            e.problem("ID_MISSING", "the id column is all null (type null)", record=True, also=("ID_TYPE",))
        elif kind not in ("string", "int"):
            e.problem("ID_TYPE", f"prediction ids are {kind}", also=("TYPE_MISMATCH",))
        else:
            ids = [None if v is None else str(v) for v in (c.text if is_csv else c.values)]
            seen: dict[str, int] = {}
            for row, s in enumerate(ids, 1):
                if s is None or s == "":
                    e.problem("ID_MISSING", f"row {row}", record=True)
                elif len(s) > MAX_ID_CHARS:
                    e.problem("ID_TOO_LONG", f"row {row}: {len(s)} characters", record=True)
                elif s.isspace():
                    e.open.append(f"id of row {row} is whitespace only")
                if s is not None and s != "":
                    if s in seen:
                        e.problem("ID_DUPLICATE", f"row {row} repeats row {seen[s]}", record=True)
                    seen.setdefault(s, row)
            cols["prediction_id"] = [Is(None) if s is None else Is(("s", s)) for s in ids]
    if TS in first:
        cols["prediction_timestamp"] = ts_expectation(first[TS], e, is_csv)
        cols["date"] = [DateOfTs()] * e.n
    if LABEL in first:
        c = first[LABEL]
        kind = "string" if is_csv else c.kind
        vals = c.text if is_csv else c.values
        if kind == "null":
            e.problem("LABEL_MISSING", "the label column is all null (type null)", record=True, also=("TYPE_MISMATCH",))
        elif kind in ("float", "nested"):
            e.problem("TYPE_MISMATCH", f"labels are {kind}")
        else:
            if kind not in ("string", "int", "bool"):
                e.open.append(f"labels are {kind}")
            labels: list[M] = []
            for row, v in enumerate(vals, 1):
                if v is None:
                    e.problem("LABEL_MISSING", f"row {row}", record=True)
                    labels.append(Is(None))
                elif kind == "string":
                    if len(v) > MAX_VALUE_CHARS:
                        e.problem("VALUE_TOO_LONG", f"label of row {row}: {len(v)} characters", record=True)
                    if v == "":
                        e.open.append(f"label of row {row} is an empty string")
                    labels.append(Is(("s", v)))
                elif kind == "int":
                    labels.append(Is(("s", str(v))))
                elif kind == "bool":
                    labels.append(OneOf((Is(("s", "true" if v else "false")), Is(("s", "True" if v else "False")))))
                else:
                    labels.append(NotNull())
            cols["prediction_label"] = labels
    if SCORE in first:
        cols["prediction_score"] = score_expectation(first[SCORE], e, is_csv)
    # features and tags
    for name in dict.fromkeys(stored):
        cells = feature_expectation(first[name], e, table_cols.get(name), is_csv=is_csv, is_tag=name == TAG)
        if cells is not None:
            cols[name] = cells
    cols["_source_file"] = [Is(("s", uri))] * e.n
    cols["_source_row"] = [Is(("i", r)) for r in range(1, e.n + 1)]
    e.columns = cols
    return e


# ====================================================================================================
# Running a scenario
# ====================================================================================================
class PropertyViolation(AssertionError):
    """The invariant does not hold; subclasses per kind of violation (Hypothesis reports each)."""


_VIOLATIONS: dict[tuple[str, str], type] = {}


def violation(kind: str, key: str, message: str) -> PropertyViolation:
    """A PropertyViolation of a class per (kind, key): Hypothesis tracks and shrinks each separately."""
    safe = re.sub(r"\W+", "_", key)[:60] or "x"
    cls = _VIOLATIONS.setdefault((kind, safe), type(f"{kind}__{safe}", (PropertyViolation,), {}))
    return cls(message)


def _cells(col: pa.ChunkedArray) -> list[Cell]:
    """Canonical cells of a column read back from the table."""
    t = col.type
    if pa.types.is_timestamp(t):
        raw = col.cast(pa.int64()).to_pylist()
        per = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": None}[t.unit]
        return [None if v is None else ("ts", v * per if per else v // 1000, t.tz is not None) for v in raw]
    if pa.types.is_date(t):
        return [None if v is None else ("date", v) for v in col.cast(pa.int32()).to_pylist()]
    if pa.types.is_time(t):
        raw = col.cast(pa.int32() if pa.types.is_time32(t) else pa.int64()).to_pylist()
        per = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": None}[t.unit]
        return [None if v is None else ("time", v * per if per else v // 1000) for v in raw]
    tag = ("bool" if pa.types.is_boolean(t) else "i" if pa.types.is_integer(t) else "f" if pa.types.is_floating(t)
           else "dec" if pa.types.is_decimal(t) else "s" if pa.types.is_string(t) or pa.types.is_large_string(t)
           else "b" if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
           else f"other:{t}")
    return [None if v is None else (tag, float(v) if tag == "f" else v) for v in col.to_pylist()]


@dataclasses.dataclass(frozen=True)
class TableState:
    exists: bool
    snapshots: tuple = ()
    current: int | None = None
    schema: str = ""
    columns: tuple = ()  # ((name, iceberg type), ...)
    location: str | None = None


class Runner:
    """Runs scenarios against one lake and a file:// store; keeps statistics."""

    def __init__(self, lake, make_job, root):
        from obslake.fabric.ddl import duckdb_connect_with_iceberg

        self.lake, self.make_job, self.root = lake, make_job, root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.store, _ = open_store(f"file://{self.data}/")
        self.catalog = lake.catalog
        self.ledger = lake.ledger
        self.duck = duckdb_connect_with_iceberg()
        self.scenarios = 0
        self.stats: collections.Counter = collections.Counter()
        self.started = time.monotonic()
        params = inspect.signature(validate_file).parameters
        self.validate_takes_schema = "table_schema" in params
        ann = str(params["table_schema"].annotation) if self.validate_takes_schema else ""
        self.validate_wants_arrow = "pa." in ann or "pyarrow" in ann

    # -- table state ------------------------------------------------------------------------------------
    def state(self, ident) -> TableState:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            t = self.catalog.load_table(ident)
        except NoSuchTableError:
            return TableState(False)
        schema = t.schema()
        return TableState(True, tuple(s.snapshot_id for s in t.snapshots()), t.metadata.current_snapshot_id,
                          f"{schema} (schema id {t.metadata.current_schema_id})",
                          tuple((f.name, str(f.field_type)) for f in schema.fields), t.metadata_location)

    def read_back(self, location: str, uri: str) -> tuple[pa.Table, int]:
        rows = self.duck.execute(f"SELECT * FROM iceberg_scan('{location}') WHERE _source_file = ? "
                                 "ORDER BY _source_row", [uri]).to_arrow_table()
        total = self.duck.execute(f"SELECT count(*) FROM iceberg_scan('{location}')").fetchone()[0]
        return rows, total

    def read_back_pyiceberg(self, ident, uri: str) -> pa.Table:
        from pyiceberg.expressions import EqualTo

        t = self.catalog.load_table(ident).scan(row_filter=EqualTo("_source_file", uri)).to_arrow()
        return t.sort_by("_source_row")

    # -- one scenario -----------------------------------------------------------------------------------
    def run(self, scenario: Scenario) -> None:
        __tracebackhide__ = True  # pytest: show the violation, not this harness
        self.scenarios += 1
        sid = self.scenarios
        model = {"space": "props", "name": f"m{sid}", "type": "score_categorical", "environment": "production"}
        history: list[str] = []
        imported_rows = 0
        for j, case in enumerate(scenario.files):
            try:
                data = case.to_bytes()
            except Exception:  # the writer cannot write this combination (not obslake's business)
                self.stats["writer could not write (rejected)"] += 1
                reject()
            try:
                job = self.make_job(self.store.uri(""), name=f"prop_{sid}", model=model, schema=case.job_schema())
            except Exception:  # a `features:` list the config refuses: a config matter, not a file one
                self.stats["job config refused (rejected)"] += 1
                reject()
            key = f"s{sid}/f{j}{case.ext}"
            info = self.store.write(key, data)
            uri = self.store.uri(key)
            imported_rows += self.check_file(case, job, info, uri, data, history, imported_rows)
            history.append(f"{self.data / key}")

    def check_file(self, case: FileCase, job, info, uri: str, data: bytes, history: list[str],
                   rows_before: int) -> int:
        """All checks for one file; returns the number of rows it added to the table."""
        __tracebackhide__ = True
        ident = job.table_identifier
        before = self.state(ident)
        expect = oracle(case, data, dict(before.columns), uri)
        self.stats[f"files {case.fmt}" + (f"/{case.writer}" if case.fmt == "csv" else "")] += 1
        self.stats[f"oracle verdict {expect.verdict}"] += 1
        for event in expect.events:
            self.stats[f"oracle: {event}"] += 1
        context = (f"\nfile: {self.data / info.key} ({case.fmt}, writer {case.writer}, features {case.mapping}"
                   f"{' ' + repr(case.listed) if case.mapping == 'list' else ''})\n"
                   f"earlier files of the scenario: {history or 'none'}\n"
                   f"table before: {before.schema if before.exists else 'absent'}\n"
                   f"oracle: {expect.summary()}")

        schema_arg = {}
        if self.validate_takes_schema:
            schema_arg["table_schema"] = None
            if before.exists:
                s = self.catalog.load_table(ident).schema()
                schema_arg["table_schema"] = s.as_arrow() if self.validate_wants_arrow else s
        try:
            report = validate_file(job, self.store, info, **schema_arg)
        except Exception as exc:
            exc.add_note(f"validate_file raised{context}")
            raise
        try:
            result = import_file(job, self.store, info, catalog=self.catalog, ledger=self.ledger)
        except Exception as exc:
            exc.add_note(f"import_file raised{context}\nvalidate said: {report.summary()[:1500]}")
            raise
        after = self.state(ident)
        context += (f"\nvalidate: {report.summary()[:1500]}\nimport: status={result.status} code={result.code} "
                    f"error={(result.error or '')[:1500]}")

        if report.status == "failed" and (not report.problems or not all(p.code for p in report.problems)):
            raise violation("DryRunFailedWithoutCode", report.status, f"a failed dry run without coded problems{context}")
        internal = [p for p in report.problems if p.code == INTERNAL]
        if internal:
            raise violation("ValidateInternalError", _exc_name(internal[0].message),
                            f"the dry run reported INTERNAL_ERROR: {internal[0]}{context}")
        if result.status not in ("imported", "failed"):
            raise violation("UnexpectedStatus", result.status, f"import status {result.status!r}{context}")
        if result.status == "failed":
            self.stats[f"failed {result.code}"] += 1
            if not result.code:
                raise violation("FailedWithoutCode", _exc_name(result.error or ""), f"no error code{context}")
            if result.code == INTERNAL:
                raise violation("InternalError", _exc_name(result.error or ""), f"INTERNAL_ERROR{context}")
            if (after.exists, after.snapshots, after.current, after.schema) != (
                    before.exists, before.snapshots, before.current, before.schema):
                what = ("created" if not before.exists else "schema" if after.schema != before.schema
                        else "snapshots")
                raise violation("TableChangedByFailedFile", what,
                                f"a failed file changed the table ({what})\ntable after: "
                                f"{after.schema if after.exists else 'absent'}\nsnapshots {before.snapshots} -> "
                                f"{after.snapshots}{context}")
            ledger = self.ledger.get(job.name, info)
            if not ledger or ledger.get("status") != "failed":
                raise violation("LedgerNotFailed", str(ledger and ledger.get("status")), f"ledger row {ledger}{context}")
            if expect.verdict == "import":
                raise violation("ValidFileRefused", result.code, f"a file the contract accepts failed{context}")
            if expect.verdict == "fail" and not expect.open:
                allowed = expect.allowed_codes()
                if result.code not in allowed:
                    raise violation("WrongCode", f"{result.code}_for_{min(expect.fail)}",
                                    f"code {result.code}, expected one of {sorted(allowed)}{context}")
                other = sorted({p.code for p in report.problems} - allowed)
                if other:
                    raise violation("WrongProblemCode", f"{other[0]}_for_{min(expect.fail)}",
                                    f"the dry run reports {other}, expected only {sorted(allowed)}{context}")
            added = 0
        else:
            self.stats["imported"] += 1
            if expect.verdict == "fail":
                raise violation("InvalidFileAccepted", min(expect.fail),
                                f"the contract refuses this file ({expect.summary()}) but it was imported{context}")
            self.compare(expect, ident, after, uri, rows_before, context)
            added = expect.n
        if report.ok != (result.status == "imported"):
            raise violation("DryRunDisagrees", f"validate_{report.status}_import_{result.status}",
                            f"the dry run said {report.status}, the import {result.status}{context}")
        return added

    def compare(self, expect: Expect, ident, after: TableState, uri: str, rows_before: int, context: str) -> None:
        __tracebackhide__ = True
        rows, total = self.read_back(after.location, uri)
        problems = self.mismatches(expect, rows)
        if problems:
            second = self.mismatches(expect, self.read_back_pyiceberg(ident, uri))
            if not second:
                self.stats["DuckDB disagreed, pyiceberg matched"] += 1
                return
            col, detail = problems[0]
            raise violation("WrongValue", col, "the table does not hold the file's values:\n  " +
                            "\n  ".join(f"{c}: {d}" for c, d in problems[:8]) + context)
        if total != rows_before + expect.n:
            raise violation("RowCount", "total", f"table has {total} rows, expected {rows_before + expect.n}{context}")

    def mismatches(self, expect: Expect, rows: pa.Table) -> list[tuple[str, str]]:
        if rows.num_rows != expect.n:
            return [("rows", f"{rows.num_rows} rows for the file, expected {expect.n}")]
        cells = {name: _cells(rows.column(name)) for name in rows.column_names}
        out = []
        for name, exp in expect.columns.items():
            if name not in cells:
                out.append((f"missing:{name}", f"column {name!r} is not in the table"))
                continue
            for i, m in enumerate(exp):
                row = {k: v[i] for k, v in cells.items()}
                if not m.ok(cells[name][i], row):
                    out.append((_col_key(name, expect), f"column {name!r} row {i + 1}: got "
                                f"{_short(cells[name][i])}, expected {m!r} (table type {rows.schema.field(name).type})"))
        for name, vals in cells.items():
            if name not in expect.columns and name != "_ingested_at" and any(v is not None for v in vals):
                out.append((f"unexpected:{name}", f"column {name!r} holds {list(map(_short, vals))[:4]} for this "
                            "file, which does not store that column"))
        return out

    def report(self) -> str:
        s = self.stats
        lines = [f"property test: {self.scenarios} scenarios, {sum(v for k, v in s.items() if k.startswith('files '))} "
                 f"files in {time.monotonic() - self.started:.1f}s (generation and shrinking)"]
        lines += [f"  {k}: {v}" for k, v in sorted(s.items()) if k.startswith("files ")]
        lines.append(f"  imported: {s['imported']}")
        lines += [f"  {k}: {v}" for k, v in sorted(s.items(), key=lambda kv: -kv[1]) if k.startswith("failed ")]
        lines += [f"  {k}: {v}" for k, v in sorted(s.items()) if not k.startswith(("files ", "failed ", "imported"))]
        return "\n".join(lines)


def _col_key(name: str, expect: Expect) -> str:
    role = {"prediction_id", "prediction_timestamp", "prediction_label", "prediction_score", "date", "_source_file",
            "_source_row"}
    return name if name in role else "feature"


def _exc_name(message: str) -> str:
    m = re.search(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Invalid|Implemented|Warning))\b", message)
    return m.group(1) if m else "unknown"


# ====================================================================================================
# The tests
# ====================================================================================================
SETTINGS = dict(deadline=None, derandomize=False, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


@pytest.fixture
def runner(lake, make_job, tmp_path):
    # obslake logs every failed file at ERROR (with tracebacks): thousands of lines in a failure report
    log = logging.getLogger("obslake")
    level = log.level
    log.setLevel(logging.CRITICAL)
    r = Runner(lake, make_job, tmp_path)
    try:
        yield r
    finally:
        log.setLevel(level)
        print("\n" + r.report())
        r.duck.close()


@pytest.mark.slow
@pytest.mark.timeout(max(600, 4 * EXAMPLES))
def test_random_files_import_exactly_or_fail_with_a_code(runner):
    phases = [Phase.generate] + ([Phase.shrink] if SHRINK else [])

    @settings(max_examples=EXAMPLES, phases=phases, **SETTINGS)
    @given(scenario=scenarios)
    def run(scenario):
        runner.run(scenario)

    run()


# -- the known crashers of issue #10 ----------------------------------------------------------------
def _base(n: int = 3, *, ts: Col | None = None, id_prefix: str = "k") -> list[Col]:
    """Valid role columns for ``n`` rows (timestamps yesterday at noon)."""
    us = [NOW_US - DAY_US + i * 60_000_000 for i in range(n)]
    return [Col(ID, pa.string(), tuple(f"{id_prefix}-{i}" for i in range(n))),
            ts or Col(TS, pa.timestamp("us", "UTC"), tuple(us)),
            Col(LABEL, pa.string(), tuple("ab"[i % 2] for i in range(n))),
            Col(SCORE, pa.float64(), tuple(i / n for i in range(n))),
            Col(TAG, pa.string(), ("eu",) * n)]


def _one(fmt: str, *extra: Col, ts: Col | None = None, **kw) -> Scenario:
    n = len(extra[0].values) if extra else len(ts.values) if ts else 3
    return Scenario((FileCase(fmt, tuple(_base(n, ts=ts) + list(extra)), **kw),))


_YESTERDAY_S = (NOW_US - DAY_US) // 1_000_000
CSV_EPOCH_1E300 = _one("csv", ts=Col(TS, pa.float64(), (float(_YESTERDAY_S), 1e300, float(_YESTERDAY_S + 60))))
PARQUET_TS_MS_YEAR_190000 = _one("parquet", ts=Col(TS, pa.timestamp("ms"), (5_933_000_000_000_000,)))
PARQUET_EPOCH_FLOAT_1E30 = _one("parquet", ts=Col(TS, pa.float64(), (1e30,)))
PARQUET_UINT64_MAX_FEATURE = _one("parquet", Col("feature_u", pa.uint64(), (2**64 - 1, 1, 0)))
PANDAS_INDEX_CSV_ALL = _one("csv", Col("feature_a", pa.float64(), (0.5, 1.5, 2.5)), writer="pandas_index",
                            mapping="all")
PANDAS_INDEX_CSV_PREFIX = _one("csv", Col("feature_a", pa.float64(), (0.5, 1.5, 2.5)), writer="pandas_index")
DECIMAL256_WIDE = _one("parquet", Col("feature_d", pa.decimal256(40, 2), (decimal.Decimal("12345678901234567890"
                                                                                          "123456789012345678.12"),
                                                                          None, decimal.Decimal("-1.5"))))
DECIMAL256_NARROW = _one("parquet", Col("feature_d", pa.decimal256(20, 2), (decimal.Decimal("1.25"), None,
                                                                            decimal.Decimal("-99.99"))))
DURATION_FEATURE = _one("parquet", Col("feature_wait", pa.duration("s"), (5, None, -1)))
KOLKATA_FEATURE = _one("parquet", Col("feature_seen", pa.timestamp("ns", "Asia/Kolkata"),
                                      (NOW_US * 1000 + 123, None, 0)))
# more from the contract
KOLKATA_TS_ROLE = _one("parquet", ts=Col(TS, pa.timestamp("ms", "Asia/Kolkata"),
                                         ((NOW_US - DAY_US) // 1000, (NOW_US - 2 * DAY_US) // 1000)))
TS_MS_YEAR_190000_FEATURE = _one("parquet", Col("feature_when", pa.timestamp("ms"), (5_933_000_000_000_000, None, 0)))
EPOCH_NS_INT = _one("parquet", ts=Col(TS, pa.int64(), ((NOW_US - DAY_US) * 1000 + 5, (NOW_US - DAY_US) * 1000 + 7)))
NULL_SCORE = Scenario((FileCase("parquet", tuple(_base(3)[:3] + [Col(SCORE, pa.float64(), (0.5, None, 0.25))])),))
CSV_NAN_TS = _one("csv", ts=Col(TS, pa.string(), (_ts_text(NOW_US - DAY_US, 0), "nan", _ts_text(NOW_US - DAY_US, 1))))
CASE_DUPLICATE_ID = _one("parquet", Col("Prediction_ID", pa.string(), ("x", "y", "z")))
# found by a 3,000-example run: CSV text of a ns timestamp into a table column of µs timestamps
NS_TEXT_INTO_TS_TAG = Scenario((
    FileCase("parquet", tuple(_base(3, id_prefix="a")[:4] + [Col(TAG, pa.timestamp("us", "UTC"),
                                                                (NOW_US - DAY_US, None, NOW_US - 2 * DAY_US))])),
    FileCase("csv", tuple(_base(3, id_prefix="b")[:4] + [Col(TAG, pa.timestamp("ns", "UTC"),
                                                            ((NOW_US - DAY_US) * 1000 + 789, None, 0))])),
))
# found by a 3,000-example run (an oracle gap): a date into an existing string column is its ISO text
DATE_INTO_STRING_TAG = Scenario((
    FileCase("parquet", tuple(_base(1, id_prefix="a"))),
    FileCase("parquet", tuple(_base(1, id_prefix="b")[:4] + [Col(TAG, pa.date64(), (0,))])),
))
# found by a 3,000-example run: ns-precision text of a timestamp outside the ns range (1677) is still text
# that parses (out of range, not unparseable)
CSV_TS_NS_MIN_TEXT = _one("csv", ts=Col(TS, pa.timestamp("ns", "UTC"), (-(2**63),)))
# found by a 3,000-example run: a CSV feature cell " 1" is the number 1, as pyarrow's CSV reader reads it
CSV_PADDED_WHOLE_NUMBER = _one("csv", Col("feature_", pa.string(), (None, None, " 1")))
TYPE_CONFLICT = Scenario((
    FileCase("parquet", tuple(_base(3, id_prefix="a") + [Col("feature_x", pa.float64(), (0.5, 1.5, 2.5))])),
    FileCase("csv", tuple(_base(3, id_prefix="b") + [Col("feature_x", pa.string(), ("x", "y", "z")),
                                                     Col("feature_new", pa.int64(), (1, 2, 3))])),
))


@pytest.mark.slow
def test_known_crashers_import_exactly_or_fail_with_a_code(runner):
    @settings(phases=[Phase.explicit], **SETTINGS)
    @example(scenario=CSV_EPOCH_1E300)
    @example(scenario=PARQUET_TS_MS_YEAR_190000)
    @example(scenario=PARQUET_EPOCH_FLOAT_1E30)
    @example(scenario=PARQUET_UINT64_MAX_FEATURE)
    @example(scenario=PANDAS_INDEX_CSV_ALL)
    @example(scenario=PANDAS_INDEX_CSV_PREFIX)
    @example(scenario=DECIMAL256_WIDE)
    @example(scenario=DECIMAL256_NARROW)
    @example(scenario=DURATION_FEATURE)
    @example(scenario=KOLKATA_FEATURE)
    @example(scenario=KOLKATA_TS_ROLE)
    @example(scenario=TS_MS_YEAR_190000_FEATURE)
    @example(scenario=EPOCH_NS_INT)
    @example(scenario=NULL_SCORE)
    @example(scenario=CSV_NAN_TS)
    @example(scenario=CASE_DUPLICATE_ID)
    @example(scenario=TYPE_CONFLICT)
    @example(scenario=NS_TEXT_INTO_TS_TAG)
    @example(scenario=DATE_INTO_STRING_TAG)
    @example(scenario=CSV_TS_NS_MIN_TEXT)
    @example(scenario=CSV_PADDED_WHOLE_NUMBER)
    @given(scenario=scenarios)
    def run(scenario):
        runner.run(scenario)

    run()


# -- the oracle itself ------------------------------------------------------------------------------
def test_oracle_reads_the_contract_the_way_it_is_written():
    """A few hand-checked verdicts, so a broken oracle fails here rather than blaming the product."""
    uri = "file:///x.parquet"

    def verdict(case, table_cols=None):
        return oracle(case, case.to_bytes(), table_cols or {}, uri)

    good = verdict(_one("parquet", Col("feature_a", pa.int8(), (1, None, -128))).files[0])
    assert good.verdict == "import", good.summary()
    assert good.columns["feature_a"] == [Is(("i", 1)), Is(None), Is(("i", -128))]
    assert verdict(PARQUET_UINT64_MAX_FEATURE.files[0]).fail.keys() == {"VALUE_OUT_OF_RANGE"}
    assert verdict(DURATION_FEATURE.files[0]).fail.keys() == {"TYPE_UNSUPPORTED"}
    assert verdict(DECIMAL256_WIDE.files[0]).fail.keys() == {"TYPE_UNSUPPORTED"}
    assert verdict(DECIMAL256_NARROW.files[0]).verdict == "import"
    assert verdict(PANDAS_INDEX_CSV_ALL.files[0]).fail.keys() == {"COLUMN_NAME_INVALID"}
    assert verdict(PANDAS_INDEX_CSV_PREFIX.files[0]).verdict == "import"
    assert verdict(CSV_EPOCH_1E300.files[0]).fail.keys() == {"TS_OUT_OF_RANGE"}
    assert verdict(PARQUET_TS_MS_YEAR_190000.files[0]).fail.keys() == {"TS_OUT_OF_RANGE"}
    assert verdict(PARQUET_EPOCH_FLOAT_1E30.files[0]).fail.keys() == {"TS_OUT_OF_RANGE"}
    assert verdict(NULL_SCORE.files[0]).fail.keys() == {"SCORE_MISSING"}
    assert verdict(CSV_NAN_TS.files[0]).fail.keys() == {"TS_INVALID"}
    assert verdict(CASE_DUPLICATE_ID.files[0]).fail.keys() == {"DUPLICATE_COLUMN"}
    k = verdict(KOLKATA_FEATURE.files[0])
    assert k.verdict == "import" and k.columns["feature_seen"][0] == TsNear((NOW_US,), 0, True), k.summary()
    assert verdict(EPOCH_NS_INT.files[0]).verdict == "import"
    conflict = verdict(TYPE_CONFLICT.files[1], {"feature_x": "double"})
    assert conflict.fail.keys() == {"TYPE_MISMATCH"}, conflict.summary()
    widen = verdict(_one("csv", Col("feature_x", pa.int64(), (1, 2, 3))).files[0], {"feature_x": "double"})
    assert widen.verdict == "import" and widen.columns["feature_x"][0] == Is(("f", 1.0)), widen.summary()
    # CSV: the oracle's values come from the bytes (pyarrow's inference), not from the table written
    csv = verdict(_one("csv", Col("feature_s", pa.string(), ("007", "NULL", "12"))).files[0])
    assert csv.columns["feature_s"] == [Is(("f", 7.0)), Is(None), Is(("f", 12.0))], csv.summary()  # CSV: doubles
    assert parse_rfc3339("2026-01-01T05:30:00+05:30") == _us(dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert parse_rfc3339("2026-01-01T00:00:00.123456789Z") == _us(dt.datetime(2026, 1, 1, tzinfo=UTC)) + 123456
