"""A second, adversarial corpus of input files: what production data really looks like (issue #10).

Every :class:`ProdDefect` is a file built in memory, byte for byte, with the error code and location
obslake must report for it (the error-code contract of issue #10), or ``expected_code=None`` for a
control that must import with exactly the values read back. None of these kinds is in
:mod:`corpus` (tests/schema/corpus.py); the two corpora are disjoint by name, key and bytes.

They come from three kinds of author:

* a sloppy data scientist: pandas' default ``df.to_csv(path)`` (unnamed index column), a trailing comma
  in an Excel header, UTF-16 "Unicode text" exports, semicolon CSVs, Spark's header-less CSV and
  INT96 timestamps, ``NaN`` where a timestamp should be, local-time timestamps, decimals, nulls;
* an attacker: epochs of 1e300, uint64 2^64-1, year 190000, column names with NUL, newlines and ANSI
  escapes, Unicode homoglyphs and NFC/NFD twins of a column, gzip that inflates past the size limit,
  a 70 MiB cell, corrupt pages behind a valid footer, unions, intervals, 200 levels of nesting;
* a valid but unusual producer (the controls): quoted newlines across a CSV block boundary, a first
  row larger than the CSV block, dictionary deltas in an Arrow stream, mixed Parquet codecs, Avro
  decimal/enum/fixed, run-end encoding, time zones other than UTC.

Rows are 1-based data rows; for CSV the physical line is ``row + 1`` unless ``line`` says otherwise
(a quoted value spanning lines shifts the lines after it: the contract's line is the physical one).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import gzip
import io
import math
import struct
import unicodedata
from typing import Any, Callable
from zoneinfo import ZoneInfo

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus import BAD, BAD_ROW, BASE_SCHEMAS, Defect, _csv, _set, _with, good_table
from lake_fixtures import to_bytes

__all__ = ["BASE_SCHEMAS", "ProdDefect", "production_defects", "by_name", "GOOD_ROWS", "CSV_BLOCK"]

GOOD_ROWS = 20
CSV_BLOCK = 4 << 20  # obslake.formats.CSV_BLOCK_SIZE (asserted equal in the tests)
ROW_LIMIT = 64 << 20  # obslake's CSV row limit (the contract)
UTC = dt.timezone.utc
Check = Callable[[pa.Table], None]


EXTRA_SCHEMAS: dict[str, dict[str, Any]] = {
    "multi_class": {
        "prediction_id": "prediction_id",
        "timestamp": "prediction_ts",
        "prediction_scores": "scores",  # one map<string, double> column
        "features": {"prefix": "feature_"},
        "tags": ["region"],
    },
}


@dataclasses.dataclass(frozen=True)
class ProdDefect(Defect):
    """A :class:`corpus.Defect` with what the production corpus needs on top.

    ``line``: the expected CSV line when it is not ``row + 1`` (``...`` = the default rule).
    ``needs_table``: the file is bad only relative to the table the good file created first (a type
    conflict), or (controls) it is meant to go into such a table; there is no "first file of a fresh job"
    variant then. ``good``: the good file's data for this job (default ``good_table(base, GOOD_ROWS)``).
    ``check``: controls: value-exact checks on the rows imported from the file (sorted by ``_source_row``).
    ``rows``: controls: the number of rows the file must import. ``absent``: columns the table must
    not have after the import (dropped, unselected columns). ``single_row``: a record defect has
    exactly one bad row, so every problem must be on ``expected_row``. ``fix_mentions``: text the
    problem's fix must contain. ``batch_rows``: the dry run's batch size (small: the bad row is met
    across a batch boundary). ``verify``: checks, with pyarrow/fastavro/duckdb directly, that the
    bytes are what the defect claims (run by the corpus self-test, not by obslake). ``max_seconds``: the
    dry run must take at most this long (a generous bound on work that must stay linear in the file).
    """

    line: Any = ...
    needs_table: bool = False
    good: pa.Table | None = None
    check: Check | None = None
    rows: int | None = None
    absent: tuple[str, ...] = ()
    single_row: bool = True
    fix_mentions: str | None = None
    batch_rows: int = 3
    slow: bool = False
    verify: Callable[[bytes], None] | None = None
    max_seconds: float | None = None

    def schema(self) -> dict[str, Any]:
        """The job's ``schema:`` block (also for the model types :data:`EXTRA_SCHEMAS` adds)."""
        out = {**{**BASE_SCHEMAS, **EXTRA_SCHEMAS}[self.model_type], **self.schema_overrides}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def expected_line(self) -> int | None:
        if self.line is not ...:
            return self.line
        return super().expected_line

    def good_table(self, id_prefix: str) -> pa.Table:
        """The good file of this defect's job, with ids under ``id_prefix``."""
        if self.good is None:
            return good_table(self.base, GOOD_ROWS, id_prefix=id_prefix)
        ids = [f"{id_prefix}-{i}" for i in range(self.good.num_rows)]
        return _with(self.good, "prediction_id", ids)


# -- helpers ---------------------------------------------------------------------------------------
def _base(id_prefix: str, n: int = 10) -> pa.Table:
    return good_table("score_categorical", n, id_prefix=id_prefix)


def _put(table: pa.Table, column: str, arr: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``table`` with ``column`` replaced by the array ``arr`` (of any type)."""
    return table.set_column(table.schema.get_field_index(column), column, arr)


def _times(t: pa.Table) -> list[dt.datetime]:
    return t.column("prediction_ts").to_pylist()


def _epochs(t: pa.Table) -> list[int]:
    return [int(v.timestamp()) for v in _times(t)]


def _write_csv(header: list[str], rows: list[list[str]], *, delimiter: str = ",", newline: str = "\n",
               quoting: int = csv.QUOTE_MINIMAL) -> str:
    out = io.StringIO()
    w = csv.writer(out, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def _cells(t: pa.Table) -> tuple[list[str], list[list[str]]]:
    """``t`` as CSV header and cells (as :func:`corpus._csv` writes them)."""
    text = _csv(t).decode()
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _parquet(t: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf, **kwargs)
    return buf.getvalue()


def _ipc_file(t: pa.Table | pa.RecordBatch, **options) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_file(buf, t.schema, options=pa.ipc.IpcWriteOptions(**options) if options else None) as w:
        w.write(t) if isinstance(t, pa.RecordBatch) else w.write_table(t)
    return buf.getvalue()


def _avro(schema: dict, records: list[dict], codec: str = "null") -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, codec=codec)
    return buf.getvalue()


def _avro_schema(t: pa.Table) -> dict:
    from obslake_demo.writers import avro_schema_for_arrow

    return avro_schema_for_arrow(t.schema)


def _records(t: pa.Table) -> list[dict]:
    return t.to_pylist()


def _rows_of(data: pa.Table, column: str) -> list:
    return data.column(column).to_pylist()


def _same_instants(got: list, want: list) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g is not None and g.utcoffset() == dt.timedelta(0), g  # stored in UTC
        assert g == w, (g, w)  # the same instant


def _expect_type(data: pa.Table, column: str, want: pa.DataType) -> None:
    got = data.schema.field(column).type
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(got) and want.tz == "UTC":
        assert got.unit == want.unit and got.tz in ("UTC", "+00:00", "Etc/UTC"), f"{column}: stored as {got}"
        return
    assert got == want, f"{column}: stored as {got}, expected {want}"


def _check_base(t: pa.Table) -> Check:
    """Checks that the base columns of ``t`` came back exactly."""
    ids, times = t.column("prediction_id").to_pylist(), _times(t)
    labels, scores = t.column("predicted_label").to_pylist(), t.column("predicted_score").to_pylist()

    def check(data: pa.Table) -> None:
        assert _rows_of(data, "prediction_id") == ids
        _same_instants(_rows_of(data, "prediction_timestamp"), times)
        assert _rows_of(data, "prediction_label") == labels
        assert _rows_of(data, "prediction_score") == scores

    return check


def _both(*checks: Check) -> Check:
    def check(data: pa.Table) -> None:
        for c in checks:
            c(data)

    return check


def _raises(fn: Callable[[], Any], *types: type[BaseException]) -> None:
    try:
        fn()
    except types or (Exception,):
        return
    raise AssertionError("the bytes were expected not to read")


def _read_csv_text(data: bytes, encoding: str = "utf-8") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(encoding), newline="")))


def _deep_struct(depth: int) -> tuple[pa.DataType, Any]:
    t: pa.DataType = pa.float64()
    v: Any = 1.5
    for _ in range(depth):
        t, v = pa.struct([("a", t)]), {"a": v}
    return t, v


_ENTRIES = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.float64())])
_MAP = pa.map_(pa.string(), pa.float64())


def _multiclass_table(id_prefix: str, n: int = 10) -> pa.Table:
    """A valid multi-class table: the base columns with ``scores`` map<string, double> (no label/score)."""
    t = good_table("score_categorical", n, id_prefix=id_prefix).drop_columns(["predicted_label", "predicted_score"])
    scores = [[("cat", 0.25 * (i % 4)), ("dog", 1 - 0.25 * (i % 4))] for i in range(n)]
    return t.append_column("scores", pa.array(scores, _MAP))


def _multiclass(id_prefix: str, null_key_row: int) -> bytes:
    """An Arrow IPC file whose ``scores`` map has a null key in one row: invalid Arrow data.

    pyarrow cannot build such a map, so the file is written as list<entries: struct<key not null, value>>
    and the Arrow type tag of the column is patched from List (12) to Map (17), in the schema message and
    in the footer: the buffers of a list of entries and of a map are laid out identically.
    """
    t = _multiclass_table(id_prefix)
    list_type = pa.list_(pa.field("entries", _ENTRIES, nullable=False))

    def as_list(keys: list) -> bytearray:
        flat = t.column("scores").combine_chunks()
        entries = pa.StructArray.from_arrays([pa.array(keys, pa.string()), flat.items], fields=list(_ENTRIES))
        arr = pa.ListArray.from_arrays(flat.offsets, entries, type=list_type)
        return bytearray(_ipc_file(_put(t, "scores", arr)))

    keys = t.column("scores").combine_chunks().keys.to_pylist()
    valid_list, valid_map = as_list(keys), bytearray(_ipc_file(t))
    assert len(valid_list) == len(valid_map)
    tags = [i for i in range(len(valid_map)) if valid_list[i] != valid_map[i]]
    assert len(tags) == 2 and all((valid_list[i], valid_map[i]) == (12, 17) for i in tags), tags
    keys[2 * null_key_row] = None
    out = as_list(keys)
    # find the tags by the bytes before them (the footer moved: the key array has a validity bitmap now)
    hits = sorted({i + 24 for tag in tags for i in range(len(out) - 24)
                   if bytes(out[i: i + 24]) == bytes(valid_list[tag - 24: tag])})
    assert len(hits) == 2 and all(out[i] == 12 for i in hits), hits
    for i in hits:
        out[i] = 17
    return bytes(out)


def _map_null_keys_rejected(data: bytes) -> None:
    reader = pa.ipc.open_file(io.BytesIO(data))
    assert reader.schema.field("scores").type == _MAP
    _raises(lambda: reader.get_batch(0), pa.ArrowInvalid)  # "Map array keys array should have no nulls"


def _year_seconds(year: int) -> int:
    """Epoch seconds of January 1st of a year beyond what ``datetime`` holds (proleptic Gregorian)."""
    days = 0
    for y in range(1970, year):
        days += 366 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 365
    return days * 86400


# -- the corpus -------------------------------------------------------------------------------------
def production_defects() -> list[ProdDefect]:
    """Every defect and control of the production corpus (names, keys and bytes are unique)."""
    sc = "score_categorical"
    out: list[ProdDefect] = []
    all_features = {"features": None}  # every unclaimed column is a feature (Arize's default)

    def add(name: str, ext: str, data: bytes, code: str | None, row: int | None = None, column: str | None = None,
            *, model_type: str = sc, schema: dict | None = None, value: str | None = None, job: dict | None = None,
            variant: str | None = None, **extra: Any) -> None:
        out.append(ProdDefect(name, f"models/ctr/prod/{name}.{ext}", data, model_type, schema or {}, code, row,
                              column, value, job or {}, variant, **extra))

    # == 1. values that overflowed into an uncaught exception ======================================
    t = _base("ovf")
    ep = _epochs(t)
    header, rows = _cells(t)
    ts_col = header.index("prediction_ts")
    for i, row in enumerate(rows):
        row[ts_col] = str(ep[i])
    rows[BAD][ts_col] = "1e300"
    add("csv_epoch_1e300", "csv", _write_csv(header, rows).encode(), "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts",
        value="1e300")

    t = _base("y190k")
    ms = [int(v.timestamp() * 1000) for v in _times(t)]
    ms[BAD] = _year_seconds(190_000) * 1000  # fits a microsecond timestamp, not a Python datetime (year <= 9999)
    y190k = _put(t, "prediction_ts", pa.array(ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")))

    def verify_ms(data: bytes) -> None:
        col = pq.read_table(io.BytesIO(data)).column("prediction_ts")
        assert col.type == pa.timestamp("ms", tz="UTC") and col.cast(pa.int64())[BAD].as_py() == ms[BAD]

    add("parquet_ts_ms_year_190000", "parquet", _parquet(y190k), "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts",
        verify=verify_ms)

    t = _base("e30")
    floats = [v.timestamp() for v in _times(t)]
    floats[BAD] = 1e30
    add("parquet_float_epoch_1e30", "parquet", _parquet(_with(t, "prediction_ts", floats, pa.float64())),
        "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts")

    t = _base("u64")
    u = list(range(10))
    u[BAD] = 2**64 - 1

    def verify_u64(data: bytes) -> None:
        col = pq.read_table(io.BytesIO(data)).column("feature_u")
        assert col.type == pa.uint64() and col[BAD].as_py() == 2**64 - 1

    add("parquet_uint64_max_feature", "parquet", _parquet(t.append_column("feature_u", pa.array(u, pa.uint64()))),
        "VALUE_OUT_OF_RANGE", BAD_ROW, "feature_u", value=str(2**64 - 1), verify=verify_u64)

    t = _base("y300k")
    secs = _epochs(t)
    secs[BAD] = _year_seconds(300_000)  # seconds fit; microseconds overflow int64
    assert secs[BAD] * 1_000_000 > 2**63
    when = pa.array(secs, pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    add("arrow_ts_feature_year_300000", "arrow", _ipc_file(t.append_column("feature_when", when)),
        "VALUE_OUT_OF_RANGE", BAD_ROW, "feature_when")

    t = _base("y9999")
    y9999 = _set(t, "prediction_ts", BAD, dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    y9999 = _put(y9999, "prediction_ts", y9999.column("prediction_ts").cast(pa.timestamp("s", tz="UTC")))
    add("arrow_ts_role_seconds_year_9999", "arrow", _ipc_file(y9999), "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts")

    t = _base("neg")
    neg = _epochs(t)
    neg[BAD] = -1_700_000_000
    def verify_neg(data: bytes) -> None:
        reader = fastavro.reader(io.BytesIO(data))
        [field] = [f for f in reader.writer_schema["fields"] if f["name"] == "prediction_ts"]
        assert field["type"] in ("long", ["null", "long"]) and list(reader)[BAD]["prediction_ts"] == neg[BAD]

    add("avro_ts_role_negative_epoch", "avro", to_bytes(_with(t, "prediction_ts", neg, pa.int64()), "avro"),
        "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts", value="-1700000000", verify=verify_neg)

    # == 2. empty and unprintable column names ======================================================
    fix = "index=False"
    t = _base("tc")
    header, rows = _cells(t)
    trailing = _write_csv(header + [""], [r + [""] for r in rows]).encode()  # Excel: a trailing comma everywhere
    assert trailing.splitlines()[0].endswith(b"predicted_score,")
    add("csv_header_trailing_comma", "csv", trailing, "COLUMN_NAME_INVALID", None, "", schema=all_features,
        fix_mentions=fix)

    t = _base("eh")
    header, rows = _cells(t)
    header[header.index("feature_city")] = ""
    add("csv_empty_header_cell", "csv", _write_csv(header, rows).encode(), "COLUMN_NAME_INVALID", None, "",
        schema=all_features, fix_mentions=fix)

    t = _base("pd")
    pandas_csv = t.to_pandas().to_csv().encode()  # index=True: the default
    assert pandas_csv.startswith(b",prediction_id,")
    add("pandas_to_csv_default_index", "csv", pandas_csv, "COLUMN_NAME_INVALID", None, "", schema=all_features,
        fix_mentions=fix)

    t = _base("pe")
    add("parquet_empty_column_name", "parquet", _parquet(t.append_column("", pa.array(range(10)))),
        "COLUMN_NAME_INVALID", None, "", schema=all_features, fix_mentions=fix)

    t = _base("ae0")
    add("arrow_empty_column_name", "arrow", _ipc_file(t.append_column("", pa.array([f"v{i}" for i in range(10)]))),
        "COLUMN_NAME_INVALID", None, "", schema=all_features, fix_mentions=fix)

    t = _base("ws")
    add("arrow_whitespace_column_name", "arrow", _ipc_file(t.append_column("   ", pa.array([1.5] * 10))),
        "COLUMN_NAME_INVALID", None, "   ", schema=all_features, fix_mentions=fix)

    t = _base("ae")
    empty_avro_schema = _avro_schema(t)
    empty_avro_schema["fields"].append({"name": "", "type": "long"})
    add("avro_empty_field_name", "avro",
        _avro(empty_avro_schema, [{**r, "": i} for i, r in enumerate(_records(t))]),
        "COLUMN_NAME_INVALID", None, "", schema=all_features, fix_mentions=fix)

    t = _base("nl")
    add("parquet_newline_in_column_name", "parquet",
        _parquet(t.append_column("feature_a\nb", pa.array([2.5] * 10))), "COLUMN_NAME_INVALID", None,
        "feature_a\nb", fix_mentions=fix)

    t = _base("nul")
    header, rows = _cells(t.append_column("feature_n", pa.array(range(10))))
    header[-1] = "feature_\x00n"
    add("csv_nul_in_header_name", "csv", _write_csv(header, rows).encode(), "COLUMN_NAME_INVALID", None,
        "feature_\x00n", fix_mentions=fix)

    t = _base("ansi")
    add("arrow_ansi_escape_in_column_name", "arrow",
        _ipc_file(t.append_column("feature_\x1b[31mred", pa.array(["r"] * 10))), "COLUMN_NAME_INVALID", None,
        "feature_\x1b[31mred", fix_mentions=fix)

    # == 3. names equal ignoring case / normalisation, reserved names in another case ===============
    t = _base("cid")
    add("parquet_case_duplicate_id", "parquet",
        _parquet(t.append_column("Prediction_ID", t.column("prediction_id"))), "DUPLICATE_COLUMN", None,
        "Prediction_ID")

    t = _base("cfx")
    add("avro_case_duplicate_feature", "avro",
        to_bytes(t.append_column("feature_X", pa.array([9.5] * 10)), "avro"), "DUPLICATE_COLUMN", None, "feature_X")

    t = _base("nfd")
    nfc, nfd = unicodedata.normalize("NFC", "feature_café"), unicodedata.normalize("NFD", "feature_café")
    assert nfc != nfd and len(nfd) == len(nfc) + 1
    header, rows = _cells(t.append_column(nfc, pa.array(["x"] * 10)).append_column(nfd, pa.array(["y"] * 10)))
    add("csv_nfc_nfd_duplicate_column", "csv", _write_csv(header, rows).encode(), "DUPLICATE_COLUMN", None, nfd)

    t = _base("dt")
    add("csv_tag_named_Date", "csv", _csv(t.append_column("Date", pa.array(["2024-01-01"] * 10))),
        "RESERVED_NAME", None, "Date", schema={"tags": ["region", "Date"]})

    t = _base("sf")
    add("parquet_feature_SOURCE_FILE", "parquet",
        _parquet(t.append_column("_SOURCE_FILE", pa.array(["s3://elsewhere/x.csv"] * 10))), "RESERVED_NAME",
        None, "_SOURCE_FILE", schema=all_features)

    t = _base("pt")
    add("avro_tag_Prediction_Timestamp", "avro",
        to_bytes(t.append_column("Prediction_Timestamp", pa.array(["noon"] * 10)), "avro"), "RESERVED_NAME", None,
        "Prediction_Timestamp", schema={"tags": ["region", "Prediction_Timestamp"]})

    t = _base("mv")
    add("arrow_feature_Model_Version", "arrow", _ipc_file(t.append_column("Model_Version", pa.array(["v2"] * 10))),
        "RESERVED_NAME", None, "Model_Version", schema=all_features)

    t = _base("hg")
    homoglyph = "prediction_\u0456d"  # CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I
    assert homoglyph != "prediction_id" and unicodedata.normalize("NFKC", homoglyph) != "prediction_id"
    add("parquet_homoglyph_id_column", "parquet",
        _parquet(t.rename_columns([homoglyph if n == "prediction_id" else n for n in t.schema.names])),
        "COLUMN_MISSING", None, "prediction_id")

    # == 4. Arrow types Iceberg cannot store (the dry run must say so, not the import crash) ========
    t = _base("d256")
    big = pa.array([decimal.Decimal(f"{i}123456789012345678901234567890123456789012345.67") for i in range(10)],
                   pa.decimal256(50, 2))

    def verify_d256(data: bytes) -> None:
        assert pq.read_table(io.BytesIO(data)).schema.field("feature_big").type == pa.decimal256(50, 2)

    add("parquet_decimal256_precision_50", "parquet", _parquet(t.append_column("feature_big", big)),
        "TYPE_UNSUPPORTED", None, "feature_big", verify=verify_d256)

    t = _base("dur")
    dur = pa.array([i * 250 for i in range(10)], pa.duration("ms"))

    def verify_dur(data: bytes) -> None:
        assert pq.read_table(io.BytesIO(data)).schema.field("feature_latency").type == pa.duration("ms")

    add("parquet_duration_feature", "parquet", _parquet(t.append_column("feature_latency", dur)),
        "TYPE_UNSUPPORTED", None, "feature_latency", verify=verify_dur)

    t = _base("mdn")
    mdn = pa.array([pa.MonthDayNano([1, i, 0]) for i in range(10)], pa.month_day_nano_interval())
    add("arrow_interval_feature", "arrow", _ipc_file(t.append_column("feature_period", mdn)), "TYPE_UNSUPPORTED",
        None, "feature_period")

    t = _base("du")
    types = pa.array([i % 2 for i in range(10)], pa.int8())
    offsets = pa.array([i // 2 for i in range(10)], pa.int32())
    dense = pa.UnionArray.from_dense(types, offsets, [pa.array([1.5] * 5), pa.array(["s"] * 5)],
                                     ["num", "text"])
    add("arrow_dense_union_feature", "arrow", _ipc_file(t.append_column("feature_any", dense)), "TYPE_UNSUPPORTED",
        None, "feature_any")

    t = _base("su")
    sparse = pa.UnionArray.from_sparse(types, [pa.array([2.5] * 10), pa.array(["t"] * 10)], ["num", "text"])
    add("arrow_sparse_union_feature", "arrow", _ipc_file(t.append_column("feature_any", sparse)),
        "TYPE_UNSUPPORTED", None, "feature_any")

    t = _base("au")
    union_schema = _avro_schema(t)
    union_schema["fields"].append({"name": "feature_any", "type": ["null", "string", "long", "double", "boolean"]})
    union_values = ["a", 1, 2.5, True, None, "b", 3, 4.5, False, "c"]
    add("avro_union_of_many_types_feature", "avro",
        _avro(union_schema, [{**r, "feature_any": v} for r, v in zip(_records(t), union_values)]),
        "TYPE_UNSUPPORTED", None, "feature_any")

    t = _base("tsdur")
    add("arrow_ts_role_duration", "arrow",
        _ipc_file(_put(t, "prediction_ts", pa.array(_epochs(t), pa.int64()).cast(pa.duration("s")))),
        "TYPE_MISMATCH", None, "prediction_ts")

    t = _base("es")
    add("arrow_empty_struct_feature", "arrow",
        _ipc_file(t.append_column("feature_meta", pa.array([{}] * 10, pa.struct([])))), "FEATURE_NESTED", None,
        "feature_meta")

    t = _base("d50")
    deep50_type, deep50 = _deep_struct(50)
    add("arrow_struct_nested_50_feature", "arrow",
        _ipc_file(t.append_column("feature_deep", pa.array([deep50] * 10, deep50_type))), "FEATURE_NESTED", None,
        "feature_deep")

    t = _base("d200")
    deep200_type, deep200 = _deep_struct(200)
    deep200_bytes = _parquet(t.append_column("feature_deep", pa.array([deep200] * 10, deep200_type)))

    def verify_deep200(data: bytes) -> None:
        assert data[:4] == data[-4:] == b"PAR1"
        _raises(lambda: pq.ParquetFile(io.BytesIO(data)).schema_arrow)  # past pyarrow's nesting limits

    add("parquet_struct_nested_200", "parquet", deep200_bytes, "FILE_CORRUPT", verify=verify_deep200)

    t = _base("fst")
    tensor_type = pa.fixed_shape_tensor(pa.float32(), [2, 2])
    storage = pa.array([[float(i)] * 4 for i in range(10)], pa.list_(pa.float32(), 4))
    add("arrow_fixed_shape_tensor_feature", "arrow",
        _ipc_file(t.append_column("feature_img", pa.ExtensionArray.from_storage(tensor_type, storage))),
        "FEATURE_NESTED", None, "feature_img")

    t = _base("lv")
    list_view = pa.ListViewArray.from_arrays(pa.array(range(10), pa.int32()), pa.array([1] * 10, pa.int32()),
                                             pa.array([f"tag{i}" for i in range(10)]))
    add("arrow_list_view_feature", "arrow", _ipc_file(t.append_column("feature_tags", list_view)), "FEATURE_NESTED",
        None, "feature_tags")

    # == 5. the file's types against the table's (needs the table the good file made) ===============
    t = _base("tsd")
    add("table_has_double_file_has_string", "parquet",
        _parquet(_with(t, "feature_x", [f"{i}.5" for i in range(10)], pa.string())), "TYPE_MISMATCH", None,
        "feature_x", needs_table=True)

    g = good_table(sc, GOOD_ROWS).append_column("feature_n", pa.array(range(GOOD_ROWS), pa.int64()))
    t = _base("tdi").append_column("feature_n", pa.array([i + 0.5 for i in range(10)]))
    add("table_has_int64_file_has_double", "parquet", _parquet(t), "TYPE_MISMATCH", None, "feature_n",
        needs_table=True, good=g)

    t = _base("tts")
    add("table_has_double_file_has_timestamp", "arrow",
        _ipc_file(_with(t, "feature_x", _times(t), pa.timestamp("us", tz="UTC"))), "TYPE_MISMATCH", None,
        "feature_x", needs_table=True)

    t = _base("evc").append_column("feature_extra", pa.array(["new"] * 10))
    add("new_column_and_table_type_conflict", "parquet",
        _parquet(_with(t, "feature_x", [str(i) for i in range(10)], pa.string())), "TYPE_MISMATCH", None,
        "feature_x", needs_table=True)

    t = _base("evr").append_column("feature_extra", pa.array(["new"] * 10))
    add("new_column_then_null_id", "parquet", _parquet(_set(t, "prediction_id", BAD, None)), "ID_MISSING",
        BAD_ROW, "prediction_id")

    # == 6. size limits ==============================================================================
    t = good_table(sc, 3000, id_prefix="gzbomb")
    raw = _csv(t)
    bomb = gzip.compress(raw, 9)
    limit = 100_000
    assert len(bomb) < limit < len(raw), (len(bomb), len(raw))
    add("csv_gz_inflates_over_max_file_bytes", "csv.gz", bomb, "FILE_TOO_LARGE", job={"max_file_bytes": limit})

    t = _base("huge")
    header, rows = _cells(t)
    header.append("debug_blob")  # not a feature: never stored, but the row must still be read
    for r in rows:
        r.append("x")
    rows[BAD][-1] = "@BLOB@"
    row_bytes = _write_csv(header, rows).encode().replace(b"@BLOB@", b"B" * (70 << 20))  # (csv.writer is slow)
    assert len(row_bytes.splitlines()[BAD_ROW]) > ROW_LIMIT
    add("csv_row_70mib", "csv", row_bytes, "ROW_TOO_LARGE", slow=True)

    # == 7. text that is not UTF-8 ===================================================================
    text = _csv(_base("u16")).decode()

    def verify_text(encoding: str) -> Callable[[bytes], None]:
        def verify(data: bytes) -> None:
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            assert _read_csv_text(raw, encoding)[1][0] == "u16-0"

        return verify

    utf16 = text.encode("utf-16")
    assert utf16[:2] == b"\xff\xfe"
    add("csv_utf16le_bom", "csv", utf16, "FILE_ENCODING", verify=verify_text("utf-16"))
    add("csv_utf16be_bom", "csv", b"\xfe\xff" + text.encode("utf-16-be"), "FILE_ENCODING",
        verify=verify_text("utf-16"))
    utf32 = text.encode("utf-32")
    assert utf32[:4] == b"\xff\xfe\x00\x00"
    add("csv_utf32le_bom", "csv", utf32, "FILE_ENCODING", verify=verify_text("utf-32"))
    add("csv_utf32be_bom", "csv", b"\x00\x00\xfe\xff" + text.encode("utf-32-be"), "FILE_ENCODING",
        verify=verify_text("utf-32"))
    add("csv_utf16le_without_bom", "csv", text.encode("utf-16-le"), "FILE_ENCODING",
        verify=verify_text("utf-16-le"))
    add("csv_gz_utf16", "csv.gz", gzip.compress(text.encode("utf-16"), mtime=0), "FILE_ENCODING",
        verify=verify_text("utf-16"))
    t = _base("l1")
    header, rows = _cells(t.append_column("feature_cité", pa.array(["x"] * 10)))
    latin1 = _write_csv(header, rows).encode("latin-1")
    _raises(lambda: latin1.decode("utf-8"), UnicodeDecodeError)
    add("csv_latin1_header", "csv", latin1, "FILE_ENCODING", line=1)

    # == 8. NaN / inf timestamps: TS_INVALID in every format =========================================
    for name, cell in (("csv_epoch_nan_cell", "nan"), ("csv_epoch_inf_cell", "inf")):
        t = _base(f"e{cell}")
        header, rows = _cells(t)
        for i, r in enumerate(rows):
            r[ts_col] = str(_epochs(t)[i])
        rows[BAD][ts_col] = cell
        add(name, "csv", _write_csv(header, rows).encode(), "TS_INVALID", BAD_ROW, "prediction_ts", value=cell)

    t = _base("isonan")
    add("csv_iso_ts_NaN_cell", "csv", _csv(t, {(BAD, "prediction_ts"): "NaN"}), "TS_INVALID", BAD_ROW,
        "prediction_ts", value="NaN")

    t = _base("ninf")
    floats = [v.timestamp() for v in _times(t)]
    floats[BAD] = -math.inf
    add("arrow_float_epoch_neg_inf", "arrow", _ipc_file(_with(t, "prediction_ts", floats, pa.float64())),
        "TS_INVALID", BAD_ROW, "prediction_ts")

    t = _base("ainf")
    floats = [v.timestamp() for v in _times(t)]
    floats[BAD] = math.inf
    add("avro_double_epoch_inf", "avro", to_bytes(_with(t, "prediction_ts", floats, pa.float64()), "avro"),
        "TS_INVALID", BAD_ROW, "prediction_ts")

    # == 9. score_categorical without its required score =============================================
    t = _base("snull")
    add("parquet_score_null", "parquet", _parquet(_set(t, "predicted_score", BAD, None)), "SCORE_MISSING",
        BAD_ROW, "predicted_score")
    t = _base("sempty")
    add("csv_score_empty", "csv", _csv(t, {(BAD, "predicted_score"): ""}), "SCORE_MISSING", BAD_ROW,
        "predicted_score")
    t = _base("sblank")
    add("csv_score_whitespace", "csv", _csv(t, {(BAD, "predicted_score"): "   "}), "SCORE_MISSING", BAD_ROW,
        "predicted_score")

    # == 10. corrupt bytes behind a valid footer, and the wrong format ===============================
    t = _base("crc")
    clean = _parquet(t, compression="none", use_dictionary=False, write_page_checksum=True)
    needle = struct.pack("<d", float(BAD))  # feature_x of the bad row, PLAIN-encoded in its data page
    assert clean.count(needle) == 1
    flipped = clean.replace(needle, struct.pack("<d", BAD + 0.5))

    def verify_crc(data: bytes) -> None:
        silent = pq.read_table(io.BytesIO(data))  # without verification the changed value reads fine...
        assert silent.column("feature_x")[BAD].as_py() == BAD + 0.5
        import tempfile

        import duckdb

        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:  # (duckdb too: silent corruption)
            tmp.write(data)
            tmp.flush()
            got = duckdb.sql(f"SELECT feature_x FROM read_parquet('{tmp.name}')").fetchall()
        assert got[BAD] == (BAD + 0.5,)
        _raises(lambda: pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True).read())  # ...not with

    add("parquet_page_crc_mismatch", "parquet", flipped, "FILE_CORRUPT", verify=verify_crc)

    t = _base("zpg")
    clean = _parquet(t, compression="zstd", use_dictionary=False)
    meta = pq.ParquetFile(io.BytesIO(clean)).metadata.row_group(0)
    chunk = meta.column(t.schema.get_field_index("feature_city"))
    start = chunk.data_page_offset
    end = start + chunk.total_compressed_size
    garbled = bytearray(clean)
    for i in range(end - 12, end - 4):  # the tail of the zstd frame of the page (past the page header)
        garbled[i] ^= 0x5A
    garbled = bytes(garbled)

    def verify_garbled(data: bytes) -> None:
        assert pq.ParquetFile(io.BytesIO(data)).metadata.num_rows == 10  # footer intact
        _raises(lambda: pq.read_table(io.BytesIO(data)))

    add("parquet_garbled_zstd_page", "parquet", garbled, "FILE_CORRUPT", verify=verify_garbled)

    add("parquet_bytes_named_csv", "csv", _parquet(_base("pnc")), "FILE_CORRUPT")

    # == 11. CSV structure =============================================================================
    t = _base("semi")
    header, rows = _cells(t)
    semicolons = _write_csv(header, rows, delimiter=";").encode()
    assert b"," not in semicolons
    add("csv_semicolon_separated", "csv", semicolons, "COLUMN_MISSING", None, "prediction_id")

    t = _base("nohdr").slice(1)
    add("csv_without_header_spark", "csv", b"\n".join(_csv(t).splitlines()[1:]) + b"\n", "COLUMN_MISSING", None,
        "prediction_id")

    t = _base("quote")
    lines = _csv(t).decode().splitlines()
    assert ",paris," in lines[BAD_ROW]
    lines[BAD_ROW] = lines[BAD_ROW].replace(",paris,", ',"paris,')  # a quote opened and never closed
    add("csv_unterminated_quote", "csv", ("\n".join(lines) + "\n").encode(), "CSV_RAGGED", BAD_ROW)

    t = _set(_base("qnlb"), "feature_city", 1, "lima\nperu")
    quoted_then_bad = _csv(t, {(BAD, "predicted_score"): "high"})
    assert quoted_then_bad.decode().splitlines()[5].endswith(",high")  # physical line 6 = data row 4
    add("csv_quoted_newline_then_bad_score", "csv", quoted_then_bad, "SCORE_TYPE", BAD_ROW, "predicted_score",
        value="high", line=BAD_ROW + 2)

    header, _ = _cells(_base("bomh"))
    add("csv_bom_header_only_crlf", "csv", b"\xef\xbb\xbf" + _write_csv(header, [], newline="\r\n").encode(),
        "FILE_EMPTY")
    add("csv_bom_only", "csv", b"\xef\xbb\xbf", "FILE_EMPTY")

    t = _base("hint").append_column("feature_n", pa.array(range(10), pa.int64()))
    add("csv_declared_int64_huge_int", "csv", _csv(t, {(BAD, "feature_n"): "99999999999999999999"}),
        "CAST_FAILED", BAD_ROW, "feature_n", value="99999999999999999999",
        schema={"column_types": {"feature_n": "int64"}})

    # == 12. files without rows or without columns ====================================================
    t = _base("ss")
    buf = io.BytesIO()
    pa.ipc.new_stream(buf, t.schema).close()
    add("arrow_stream_schema_only", "arrows", buf.getvalue(), "FILE_EMPTY")
    add("avro_no_records", "avro", _avro(_avro_schema(_base("anr")), []), "FILE_EMPTY")
    buf = io.BytesIO()
    pq.ParquetWriter(buf, _base("zrg").schema).close()
    zero_rg = buf.getvalue()
    assert pq.ParquetFile(io.BytesIO(zero_rg)).num_row_groups == 0
    add("parquet_zero_row_groups", "parquet", zero_rg, "FILE_EMPTY")
    no_columns = pa.RecordBatch.from_struct_array(pa.array([{}] * 5, pa.struct([])))
    assert (no_columns.num_columns, no_columns.num_rows) == (0, 5)
    add("arrow_rows_without_columns", "arrow", _ipc_file(no_columns), "COLUMN_MISSING", None, "prediction_id")

    # == 13. wide and hostile Arrow data ================================================================
    t = _base("wide")
    cols = {n: t.column(n) for n in t.schema.names}
    for i in range(10_000):
        cols[f"feature_c{i}"] = pa.array([float(i)] * 10)
    cols["feature_C5000"] = pa.array([0.5] * 10)  # the 10,001st column: feature_c5000 in another case
    add("parquet_10k_columns_case_duplicate", "parquet", _parquet(pa.table(cols)), "DUPLICATE_COLUMN", None,
        "feature_C5000", max_seconds=5.0, slow=True)  # a name check quadratic in the columns takes ~10 s here

    mc = _multiclass("mcnull", null_key_row=BAD)
    add("arrow_multiclass_scores_map_null_keys", "arrow", mc, "FILE_CORRUPT", model_type="multi_class",
        good=_multiclass_table("good", GOOD_ROWS), verify=_map_null_keys_rejected)

    # == controls: valid files that must import, values exact ========================================
    _controls(add, sc)

    names = [d.name for d in out]
    assert len(set(names)) == len(names), "defect names must be unique"
    return out


def _controls(add: Callable[..., None], sc: str) -> None:
    # -- CSV: quoted newlines across the 4 MiB block boundary ----------------------------------------
    n = 4800
    t = good_table(sc, n, id_prefix="qnl")
    t = _with(t, "prediction_ts", [dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=30, seconds=i)
                                   for i in range(n)], pa.timestamp("us", tz="UTC"))
    notes = [("\n".join(f"note {i} line {k}, with a comma" for k in range(30)))[: 900 + i % 50] for i in range(n)]
    t = t.append_column("feature_note", pa.array(notes))
    data = _csv(t)
    cut = data.rfind(b"\n", 0, CSV_BLOCK)  # where a newline-based block split would cut
    assert data.count(b'"', 0, cut) % 2 == 1, "the last newline of the first block is inside a quoted value"
    assert data.count(b'"', 0, CSV_BLOCK) % 2 == 1 and b"\n" in data[CSV_BLOCK: data.find(b'"', CSV_BLOCK)]
    add("csv_quoted_newlines_across_block", "csv", data, None, batch_rows=65_536, rows=n,
        check=_both(_check_base(t), lambda d: _notes_equal(d, notes)))

    t = _set(_set(_base("qns"), "feature_city", 1, "lima\nperu"), "feature_city", 6, "two\r\nlines, \"quoted\"")
    add("csv_quoted_newlines_small", "csv", _csv(t), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_city", t.column("feature_city").to_pylist())))

    # -- CSV: a first data row larger than the block (plain and gzip) ---------------------------------
    t = _base("wide")
    header, rows = _cells(t)
    header.append("debug_blob")  # not selected by the feature prefix: read, then dropped
    for r in rows:
        r.append("small")
    rows[0][-1] = "@BLOB@"
    wide = _write_csv(header, rows).encode().replace(b"@BLOB@", b"W" * (5 << 20))
    assert len(wide.splitlines()[1]) > CSV_BLOCK
    add("csv_first_row_over_block", "csv", wide, None, rows=10, absent=("debug_blob",),
        check=_both(_check_base(t), _column_equal("feature_city", t.column("feature_city").to_pylist())))
    t = _base("widegz")
    header, rows = _cells(t)
    header.append("debug_blob")
    for r in rows:
        r.append("small")
    rows[0][-1] = "@BLOB@"
    wide_gz = gzip.compress(_write_csv(header, rows).encode().replace(b"@BLOB@", b"G" * (5 << 20)), 6, mtime=0)
    add("csv_gz_first_row_over_block", "csv.gz", wide_gz, None,
        rows=10, absent=("debug_blob",), check=_check_base(t))

    # -- time zones other than UTC: the same instant, stored in UTC -----------------------------------
    t = _base("tz")
    kolkata = [v.astimezone(ZoneInfo("Asia/Kolkata")) for v in _times(t)]
    offset = dt.timezone(dt.timedelta(hours=5, minutes=30))
    fixed = [v.astimezone(offset) - dt.timedelta(days=400) for v in _times(t)]
    t = (t.append_column("feature_local", pa.array(kolkata, pa.timestamp("us", tz="Asia/Kolkata")))
         .append_column("feature_fixed", pa.array(fixed, pa.timestamp("ms", tz="+05:30"))))
    role_ny = t.column("prediction_ts").cast(pa.timestamp("us", tz="America/New_York"))
    t_ny = _put(t, "prediction_ts", role_ny)
    assert t_ny.schema.field("feature_local").type.tz == "Asia/Kolkata"

    def tz_check(d: pa.Table) -> None:
        _same_instants(_rows_of(d, "feature_local"), kolkata)
        _same_instants(_rows_of(d, "feature_fixed"), fixed)
        _expect_type(d, "feature_local", pa.timestamp("us", tz="UTC"))

    add("parquet_non_utc_timestamp_features", "parquet", _parquet(t_ny), None, rows=10,
        check=_both(_check_base(t), tz_check))

    t = _base("off")
    header, rows = _cells(t)
    zones = [offset, dt.timezone(dt.timedelta(hours=-8)), UTC, dt.timezone(dt.timedelta(hours=13, minutes=45))]
    for i, v in enumerate(_times(t)):
        rows[i][header.index("prediction_ts")] = v.astimezone(zones[i % 4]).isoformat()  # ...T05:30:00+05:30
    assert "+05:30" in rows[0][1] and "-08:00" in rows[1][1] and "+13:45" in rows[3][1]
    add("csv_ts_with_mixed_offsets", "csv", _write_csv(header, rows).encode(), None, rows=10, check=_check_base(t))

    # -- decimals, dates, times, extreme timestamps ---------------------------------------------------
    t = _base("dec")
    decs = [decimal.Decimal(f"{i}23456789012345678.9{i}") for i in range(10)]
    assert all(len(d.as_tuple().digits) <= 20 for d in decs)
    t = t.append_column("feature_amount", pa.array(decs, pa.decimal256(20, 2)))

    def dec_check(d: pa.Table) -> None:
        assert _rows_of(d, "feature_amount") == decs
        _expect_type(d, "feature_amount", pa.decimal128(20, 2))

    add("parquet_decimal256_p20_feature", "parquet", _parquet(t), None, rows=10,
        check=_both(_check_base(t), dec_check), verify=_type_is("feature_amount", pa.decimal256(20, 2)))

    t = _base("d64")
    days = [dt.date(2000 + i, 2, 29 if i % 4 == 0 else 28) for i in range(10)]
    t = t.append_column("feature_day", pa.array(days, pa.date64()))
    add("arrow_date64_feature", "arrow", _ipc_file(t), None, rows=10,  # (Parquet would store it as date32)
        verify=lambda data: _ipc_type_is(data, "feature_day", pa.date64()),
        check=_both(_check_base(t), _column_equal("feature_day", days), _typed("feature_day", pa.date32())))

    t = _base("tsx")
    clock = [dt.time(i, 59, 58) for i in range(10)]
    far = [dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(1, 1, 1, tzinfo=UTC),
           dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(1900, 3, 1, 12, tzinfo=UTC)] + [
        dt.datetime(2000 + i, 1, 1, tzinfo=UTC) for i in range(6)]
    t = (t.append_column("feature_clock", pa.array(clock, pa.time32("s")))
         .append_column("feature_far", pa.array(far, pa.timestamp("s", tz="UTC"))))
    add("arrow_time32s_and_year_9999_0001_features", "arrow", _ipc_file(t), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_clock", clock), lambda d: _same_instants(
            _rows_of(d, "feature_far"), far), _typed("feature_clock", pa.time64("us"))))

    # -- Arrow IPC: dictionary deltas in a stream; other convertible Arrow types ---------------------
    t = _base("delta")
    cities = [f"city{i // 2}" for i in range(10)]  # the dictionary grows every batch: deltas
    buf = io.BytesIO()
    city = t.schema.get_field_index("feature_city")
    schema = t.schema.set(city, pa.field("feature_city", pa.dictionary(pa.int32(), pa.string())))
    with pa.ipc.new_stream(buf, schema, options=pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)) as w:
        for lo in range(0, 10, 2):
            dictionary = pa.array(sorted(set(cities[: lo + 2])))
            idx = pa.array([dictionary.to_pylist().index(c) for c in cities[lo: lo + 2]], pa.int32())
            arrays = [t.column(i).slice(lo, 2).combine_chunks() for i in range(t.num_columns)]
            arrays[city] = pa.DictionaryArray.from_arrays(idx, dictionary)
            w.write_batch(pa.record_batch(arrays, schema=schema))
    stream = buf.getvalue()

    def verify_delta(data: bytes) -> None:
        reader = pa.ipc.open_stream(io.BytesIO(data))
        assert reader.read_all().column("feature_city").to_pylist() == cities
        assert reader.stats.num_dictionary_deltas >= 3, reader.stats

    add("arrow_stream_dictionary_deltas", "arrows", stream, None, rows=10, verify=verify_delta,
        check=_both(_check_base(t), _column_equal("feature_city", cities)))

    t = _base("conv")
    f16 = np.array([0.5 * i for i in range(10)], np.float16)
    conv = (t.append_column("feature_half", pa.array(f16))
            .append_column("feature_u32", pa.array([2**32 - 1 - i for i in range(10)], pa.uint32()))
            .append_column("feature_large", pa.array([f"l{i}" for i in range(10)], pa.large_string()))
            .append_column("feature_code", pa.array([i % 3 for i in range(10)], pa.int64()).dictionary_encode()))
    assert pa.types.is_dictionary(conv.schema.field("feature_code").type)

    def conv_check(d: pa.Table) -> None:
        assert _rows_of(d, "feature_half") == [float(x) for x in f16]
        assert _rows_of(d, "feature_u32") == [2**32 - 1 - i for i in range(10)]
        assert _rows_of(d, "feature_large") == [f"l{i}" for i in range(10)]
        assert _rows_of(d, "feature_code") == [i % 3 for i in range(10)]
        _expect_type(d, "feature_u32", pa.int64())

    add("arrow_convertible_types", "arrow", _ipc_file(conv, compression="zstd"), None, rows=10,
        check=_both(_check_base(t), conv_check))

    t = good_table("embedding", 10, id_prefix="emb")
    vectors = [[0.5 * i, 0.25, -0.125, 2.0] for i in range(10)]
    emb = _put(t, "emb", pa.array(vectors, pa.large_list(pa.float64())))
    add("parquet_embedding_large_list_float64", "parquet", _parquet(emb), None, rows=10,
        schema={"embedding_features": {"image": {"vector": "emb"}}}, variant="embedding",
        verify=_type_is("emb", pa.large_list(pa.float64())),
        check=_both(_check_base(t), _column_equal("embedding__image__vector", vectors)))
    fixed_vectors = _put(good_table("embedding", 10, id_prefix="embf"), "emb",
                 pa.array(vectors, pa.list_(pa.float32(), 4)))
    add("arrow_embedding_fixed_size_list", "arrow", _ipc_file(fixed_vectors), None, rows=10,
        schema={"embedding_features": {"image": {"vector": "emb"}}}, variant="embedding",
        check=_column_equal("embedding__image__vector", vectors))

    t = _base("view")
    views = [f"v{i}" * (i + 1) for i in range(10)]  # short (inline) and long (out-of-line) views
    blobs = [bytes([i]) * (3 * i) for i in range(10)]
    t_view = (t.append_column("feature_view", pa.array(views, pa.string_view()))
              .append_column("feature_blob", pa.array(blobs, pa.binary_view())))
    t_view = _put(t_view, "feature_city", t.column("feature_city").cast(pa.string_view()))
    add("arrow_string_view_features", "arrow", _ipc_file(t_view), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_view", views), _column_equal("feature_blob", blobs),
                    _column_equal("feature_city", t.column("feature_city").to_pylist())))

    t = _base("json")
    docs = [f'{{"k": {i}, "tags": ["a", "b"]}}' for i in range(10)]
    add("arrow_json_extension_feature", "arrow", _ipc_file(t.append_column("feature_doc", pa.array(docs, pa.json_()))),
        None, rows=10, check=_both(_check_base(t), _column_equal("feature_doc", docs)))

    t = _base("d3264")
    d32 = [decimal.Decimal(f"{i}.25") for i in range(10)]
    d64 = [decimal.Decimal(f"{i}234567890123.456") for i in range(10)]
    small_decimals = (t.append_column("feature_d32", pa.array(d32, pa.decimal32(9, 2)))
                      .append_column("feature_d64", pa.array(d64, pa.decimal64(18, 3))))
    add("arrow_decimal32_decimal64_features", "arrow", _ipc_file(small_decimals), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_d32", d32), _column_equal("feature_d64", d64),
                    _typed("feature_d32", pa.decimal128(9, 2)), _typed("feature_d64", pa.decimal128(18, 3))))

    t = _base("ree")
    ree = pa.RunEndEncodedArray.from_arrays(pa.array([3, 7, 10], pa.int32()), pa.array([0.25, 0.5, 0.75]))
    add("arrow_run_end_encoded_feature", "arrow", _ipc_file(t.append_column("feature_level", ree)), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_level", [0.25] * 3 + [0.5] * 4 + [0.75] * 3)))

    # -- Parquet: one codec per column, an empty row group first, data page v2, Spark INT96 -----------
    t = _base("codec")
    buf = io.BytesIO()
    codecs = {"prediction_id": "zstd", "prediction_ts": "brotli", "feature_x": "lz4", "feature_city": "gzip",
              "region": "snappy", "predicted_label": "zstd", "predicted_score": "brotli"}
    with pq.ParquetWriter(buf, t.schema, compression=codecs, data_page_version="2.0") as w:
        w.write_table(t.slice(0, 0))
        w.write_table(t.slice(0, 6))
        w.write_table(t.slice(6))
    mixed = buf.getvalue()

    def verify_codecs(data: bytes) -> None:
        md = pq.ParquetFile(io.BytesIO(data)).metadata
        seen = {md.row_group(1).column(i).compression for i in range(md.num_columns)}
        assert {"ZSTD", "BROTLI", "LZ4", "GZIP", "SNAPPY"} <= seen, seen
        assert md.row_group(0).num_rows == 0 and md.num_row_groups == 3

    add("parquet_mixed_codecs_and_empty_row_group", "parquet", mixed, None, rows=10, verify=verify_codecs,
        check=_both(_check_base(t), _column_equal("feature_city", t.column("feature_city").to_pylist())))

    t = _base("int96")
    naive = t.column("prediction_ts").cast(pa.timestamp("us")).cast(pa.timestamp("ns"))
    spark = _parquet(_put(t, "prediction_ts", naive), use_deprecated_int96_timestamps=True)
    add("parquet_spark_int96_timestamps", "parquet", spark, None, rows=10, check=_check_base(t),
        verify=lambda data: _int96(data))

    # -- Avro: decimal bytes, enum, fixed -------------------------------------------------------------
    t = _base("avx")
    schema = _avro_schema(t)
    schema["fields"] += [
        {"name": "feature_price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "feature_color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "feature_tag4", "type": {"type": "fixed", "name": "Tag4", "size": 4}},
    ]
    prices = [decimal.Decimal(f"{i}9.9{i}") for i in range(10)]
    colors = [["RED", "GREEN", "BLUE"][i % 3] for i in range(10)]
    tags = [bytes([i, 0, 255, i]) for i in range(10)]
    records = [{**r, "feature_price": p, "feature_color": c, "feature_tag4": g}
               for r, p, c, g in zip(_records(t), prices, colors, tags)]
    add("avro_decimal_enum_fixed_features", "avro", _avro(schema, records, codec="deflate"), None, rows=10,
        check=_both(_check_base(t), _column_equal("feature_price", prices), _column_equal("feature_color", colors),
                    _column_equal("feature_tag4", tags)))

    # -- CSV dialects and cells from the wild ---------------------------------------------------------
    t = _base("xl")
    header, rows = _cells(t)
    text = _write_csv(header, rows, newline="\r\n", quoting=csv.QUOTE_ALL)
    lines = text.split("\r\n")
    mixed_nl = "\r\n".join(lines[:4]) + "\r\n" + "\n".join(lines[4:8]) + "\n" + "\r".join(lines[8:10]) + "\r" + \
        "\r\n".join(lines[10:]).rstrip("\r\n")
    excel = b"\xef\xbb\xbf" + mixed_nl.encode() + b"\r\n\r\n\n"  # BOM; CRLF, LF and CR; blank lines at the end
    assert excel.count(b"\r\n") and excel.count(b"\r") > excel.count(b"\r\n")
    add("csv_excel_bom_mixed_newlines_quoted", "csv", excel, None, rows=10,
        check=_both(_check_base(t), _column_equal("region", ["eu"] * 10)))

    t = _base("tcp")
    header, rows = _cells(t)
    add("csv_trailing_comma_prefix_features", "csv", _write_csv(header + [""], [r + [""] for r in rows]).encode(),
        None, rows=10, absent=("",), check=_check_base(t))

    t = _base("odd")
    header, rows = _cells(t)
    header += ["feature_n", "feature_word"]
    ints = ["-0", "+5", "7", "-12", "0", "3", "+0", "8", "9", "10"]
    words = ["NA", "NaN", "N/A", "None", "nan", "-", "#N/A", "n/a", "NULL ", "-0"]
    for r, i, w in zip(rows, ints, words):
        r += [i, w]
    rows[2][header.index("predicted_score")] = "-0"
    scores = t.column("predicted_score").to_pylist()
    scores[2] = -0.0
    add("csv_signed_zero_and_na_strings", "csv", _write_csv(header, rows).encode(), None, rows=10,
        check=_both(_column_equal("feature_n", [int(x) for x in ints]), _column_equal("feature_word", words),
                    _column_equal("prediction_score", scores)))

    t = _set(_base("nulb"), "feature_city", 5, "par\x00is")
    add("csv_nul_byte_in_value", "csv", _csv(t), None, rows=10,
        check=_column_equal("feature_city", t.column("feature_city").to_pylist()))

    t1, t2 = _base("mm").slice(0, 6), _base("mm").slice(6)
    member2 = b"".join(line + b"\n" for line in _csv(t2).splitlines()[1:])
    multi = gzip.compress(_csv(t1), mtime=0) + gzip.compress(member2, mtime=0)
    assert gzip.decompress(multi).count(b"\n") == 11
    add("csv_gz_multi_member", "csv.gz", multi, None, rows=10, check=_check_base(_base("mm")))

    t = _base("dot")
    add("parquet_dotted_column_name", "parquet", _parquet(t.append_column("feature_a.b", pa.array([0.125] * 10))),
        None, rows=10, check=_both(_check_base(t), _column_equal("feature_a.b", [0.125] * 10)))

    # -- widening into the table's existing types ------------------------------------------------------
    g = (good_table(sc, GOOD_ROWS).append_column("feature_i", pa.array(range(GOOD_ROWS), pa.int64()))
         .append_column("feature_f", pa.array([0.5] * GOOD_ROWS, pa.float64()))
         .append_column("feature_code", pa.array(["a"] * GOOD_ROWS)))
    t = _base("wid")
    t = (_with(t, "feature_x", [i * 1000 for i in range(10)], pa.int64())
         .append_column("feature_i", pa.array(range(10), pa.int32()))
         .append_column("feature_f", pa.array([0.25 * i for i in range(10)], pa.float32()))
         .append_column("feature_code", pa.array([100 + i for i in range(10)], pa.int64())))

    def widened(d: pa.Table) -> None:
        assert _rows_of(d, "feature_x") == [float(i * 1000) for i in range(10)]
        assert _rows_of(d, "feature_i") == list(range(10))
        assert _rows_of(d, "feature_f") == [0.25 * i for i in range(10)]
        assert _rows_of(d, "feature_code") == [str(100 + i) for i in range(10)]
        _expect_type(d, "feature_x", pa.float64())

    add("table_widening_int_float_to_string", "parquet", _parquet(t), None, rows=10, needs_table=True, good=g,
        check=_both(_check_base(t), widened))


def _notes_equal(d: pa.Table, notes: list[str]) -> None:
    got = _rows_of(d, "feature_note")
    assert len(got) == len(notes)
    bad = [i for i, (a, b) in enumerate(zip(got, notes)) if a != b]
    assert not bad, f"{len(bad)} notes differ, first at row {bad[0] + 1}: {got[bad[0]]!r:.80} != {notes[bad[0]]!r:.80}"


def _column_equal(column: str, want: list) -> Check:
    def check(d: pa.Table) -> None:
        assert column in d.column_names, f"{column!r} not stored; the table has {d.column_names}"
        got = _rows_of(d, column)
        assert got == want, f"{column}: {got!r:.300} != {want!r:.300}"
        # -0.0 == 0.0: the sign of a signed zero is checked separately
        for g, w in zip(got, want):
            if isinstance(w, float) and w == 0:
                assert math.copysign(1, g) == math.copysign(1, w), (column, g, w)

    return check


def _typed(column: str, want: pa.DataType) -> Check:
    return lambda d: _expect_type(d, column, want)


def _type_is(column: str, want: pa.DataType) -> Callable[[bytes], None]:
    def verify(data: bytes) -> None:
        assert pq.read_table(io.BytesIO(data)).schema.field(column).type == want

    return verify


def _ipc_type_is(data: bytes, column: str, want: pa.DataType) -> None:
    assert pa.ipc.open_file(io.BytesIO(data)).schema.field(column).type == want


def _int96(data: bytes) -> None:
    pf = pq.ParquetFile(io.BytesIO(data))
    assert pf.schema.column(pf.schema_arrow.get_field_index("prediction_ts")).physical_type == "INT96"


def by_name() -> dict[str, ProdDefect]:
    return {d.name: d for d in production_defects()}
