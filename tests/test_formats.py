"""Tests of obslake.formats: streaming readers, schema reads and FileFormatError mapping.

The sample files come from the demo kit's writer (``obslake_demo.writers``, tested in
``tests/obslake_demo/test_writers.py``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import gzip
import io
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pytest

from obslake import formats
from obslake.exceptions import FileFormatError, StorageUnavailableError, TerminalError
from obslake.formats import format_for_key, read_batches, read_schema
from obslake_demo.writers import write_table

EXT = {
    "parquet": ".parquet",
    "csv": ".csv",
    "csv.gz": ".csv.gz",
    "avro": ".avro",
    "arrow": ".arrow",
    "arrow_stream": ".arrows",
}
READ_FMT = {"arrow_stream": "arrow", "csv.gz": "csv"}
ALL_VARIANTS = ["parquet", "csv", "csv.gz", "avro", "arrow", "arrow_stream"]


def inference_table(n: int, seed: int = 0) -> pa.Table:
    """A model-inference log: ids, UTC timestamps, 5 features, 2 tags, a late label, a score, an embedding."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-05-01T00:00:00", "us")
    label = rng.integers(0, 2, n)
    label_mask = rng.random(n) < 0.3
    region = rng.choice(np.array(["eu", "us", "NA", "apac"]), n)
    region_mask = rng.random(n) < 0.1
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(rng.standard_normal(n * 4).astype(np.float32)), 4
    ).cast(pa.list_(pa.float32()))
    return pa.table(
        {
            "prediction_id": pa.array([f"pred-{i:09d}" for i in range(n)]),
            "timestamp": pa.array(start + np.arange(n) * np.timedelta64(1_234_567, "us")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            **{f"feature_{i}": pa.array(rng.standard_normal(n)) for i in range(5)},
            "model_version": pa.array(rng.choice(np.array(["v1.2.0", "v1.3.0-rc1"]), n)),
            "region": pa.array(region, mask=region_mask),
            "label": pa.array(label, type=pa.int64(), mask=label_mask),
            "score": pa.array(rng.random(n).astype(np.float32)),
            "embedding": embedding,
        }
    )


def csv_comparable(table: pa.Table) -> pa.Table:
    """CSV cannot hold lists."""
    return table.drop_columns(["embedding"])


def write(tmp_path: Path, table: pa.Table, variant: str, name: str = "data") -> Path:
    path = tmp_path / f"{name}{EXT[variant]}"
    fmt = "csv" if variant == "csv.gz" else variant
    write_table(csv_comparable(table) if fmt == "csv" else table, fmt, str(path))
    return path


def read_all(path: Path, fmt: str, **kwargs: Any) -> tuple[pa.Table, list[pa.RecordBatch]]:
    with open(path, "rb") as f:
        schema = read_schema(f, fmt, source=f"file://{path}")
        batches = list(read_batches(f, fmt, source=f"file://{path}", **kwargs))
    for batch in batches:
        assert batch.schema.equals(schema), "every batch has the schema read_schema reported"
    return pa.Table.from_batches(batches, schema=schema), batches


def expect_format_error(data: bytes, fmt: str, name: str, *, schema_too: bool = True) -> str:
    """Assert both entry points raise FileFormatError naming the source; return the message."""
    source = f"s3://bucket/incoming/{name}"
    with pytest.raises(FileFormatError) as excinfo:
        list(read_batches(io.BytesIO(data), fmt, source=source))
    assert source in str(excinfo.value)
    assert isinstance(excinfo.value, TerminalError)
    if schema_too:
        with pytest.raises(FileFormatError, match="s3://bucket/incoming/"):
            read_schema(io.BytesIO(data), fmt, source=source)
    return str(excinfo.value)


@pytest.fixture(scope="module")
def small_table() -> pa.Table:
    return inference_table(3_000)


@pytest.fixture(scope="module")
def big_table() -> pa.Table:
    return inference_table(200_000, seed=1)


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_round_trip(tmp_path: Path, small_table: pa.Table, variant: str) -> None:
    path = write(tmp_path, small_table, variant)
    fmt = READ_FMT.get(variant, variant)
    assert format_for_key(path.name) == fmt
    got, _ = read_all(path, fmt)
    if fmt == "csv":
        expected = csv_comparable(small_table)
        # CSV carries no types: timestamps are inferred as timestamp[ns, UTC], float32 as float64.
        assert got.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
        assert got.schema.field("label").type == pa.int64()
        got = got.cast(expected.schema)
    else:
        expected = small_table
    assert got.equals(expected), f"{variant}: values differ after the round trip"
    # Nulls survive (also in CSV, where "" is null and "NA" stays a string).
    assert got.column("label").null_count == small_table.column("label").null_count > 0
    assert "NA" in got.column("region").to_pylist()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_streams_in_several_batches(tmp_path: Path, big_table: pa.Table, variant: str, monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_SIZE", 1 << 20)  # several CSV blocks, not one 16 MiB block
    table = big_table if variant != "avro" else big_table.slice(0, 50_000)  # fastavro is pure-Python slow
    path = write(tmp_path, table, variant)
    fmt = READ_FMT.get(variant, variant)
    got, batches = read_all(path, fmt, batch_rows=10_000)
    assert got.num_rows == table.num_rows
    assert len(batches) >= table.num_rows // 10_000
    assert max(b.num_rows for b in batches) <= 10_000
    assert got.column("prediction_id").equals(table.column("prediction_id"))


def test_csv_bom_is_skipped() -> None:
    data = b"\xef\xbb\xbfprediction_id,score\np1,0.5\np2,0.25\n"
    source = "gs://b/bom.csv"
    assert read_schema(io.BytesIO(data), "csv", source=source).names == ["prediction_id", "score"]
    (batch,) = read_batches(io.BytesIO(data), "csv", source=source)
    assert batch.to_pydict() == {"prediction_id": ["p1", "p2"], "score": [0.5, 0.25]}


def test_csv_column_empty_in_first_block_reads_as_string(monkeypatch) -> None:
    """A label that arrives late must not fail with 'conversion error to null'."""
    monkeypatch.setattr(formats, "CSV_BLOCK_SIZE", 1 << 14)
    lines = [b"prediction_id,label"] + [b"p%d," % i for i in range(5_000)] + [b"late,1", b""]
    data = b"\n".join(lines)
    source = "file:///tmp/late.csv"
    assert read_schema(io.BytesIO(data), "csv", source=source).field("label").type == pa.string()
    table = pa.Table.from_batches(list(read_batches(io.BytesIO(data), "csv", source=source)))
    assert table.num_rows == 5_001
    assert table.column("label").null_count == 5_000
    assert table.column("label")[-1].as_py() == "1"


def test_csv_gz_leaves_the_callers_file_open(tmp_path: Path, small_table: pa.Table) -> None:
    path = write(tmp_path, small_table, "csv.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with open(path, "rb") as f:
        assert sum(b.num_rows for b in read_batches(f, "csv", source="s3://b/x.csv.gz")) == 3_000
        gc.collect()
        assert not f.closed


# --------------------------------------------------------------------------------------------------
# Avro schema mapping
# --------------------------------------------------------------------------------------------------


def test_avro_logical_and_complex_types() -> None:
    schema = {
        "type": "record",
        "name": "Inference",
        "namespace": "com.example",
        "fields": [
            {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "ts_us", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {
                "name": "amount",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
            },
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "attrs", "type": {"type": "map", "values": "string"}},
            {
                "name": "point",
                "type": {"type": "record", "name": "Point", "fields": [{"name": "x", "type": "double"}]},
            },
            {"name": "other_point", "type": ["null", "Point"]},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "ok", "type": "boolean"},
            {"name": "raw", "type": "bytes"},
            {"name": "n", "type": "int"},
        ],
    }
    when = dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=dt.timezone.utc)
    record = {
        "ts_ms": when,
        "ts_us": None,
        "day": dt.date(2024, 5, 1),
        "amount": decimal.Decimal("12.34"),
        "kind": "B",
        "attrs": {"k": "v"},
        "point": {"x": 1.5},
        "other_point": {"x": 2.5},
        "tags": ["a", "b"],
        "ok": True,
        "raw": b"\x00\x01",
        "n": 7,
    }
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [record, {**record, "other_point": None, "ts_us": when}])
    data = buf.getvalue()
    arrow_schema = read_schema(io.BytesIO(data), "avro", source="s3://b/x.avro")
    assert arrow_schema.field("ts_ms").type == pa.timestamp("ms", tz="UTC")
    assert not arrow_schema.field("ts_ms").nullable
    assert arrow_schema.field("ts_us").type == pa.timestamp("us", tz="UTC")
    assert arrow_schema.field("ts_us").nullable
    assert arrow_schema.field("day").type == pa.date32()
    assert arrow_schema.field("amount").type == pa.decimal128(10, 2)
    assert arrow_schema.field("kind").type == pa.string()
    non_null_value = pa.field("value", pa.string(), nullable=False)
    assert arrow_schema.field("attrs").type == pa.map_(pa.string(), non_null_value)
    assert arrow_schema.field("point").type == arrow_schema.field("other_point").type
    assert arrow_schema.field("other_point").nullable
    assert arrow_schema.field("tags").type.value_type == pa.string()
    assert arrow_schema.field("n").type == pa.int32()
    (batch,) = read_batches(io.BytesIO(data), "avro", source="s3://b/x.avro")
    rows = batch.to_pylist(maps_as_pydicts="strict")
    assert rows[0] == record
    assert rows[1]["other_point"] is None and rows[1]["ts_us"] == when


def test_avro_union_of_several_types_is_a_format_error() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "v", "type": ["null", "string", "long"]}]}
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [{"v": "x"}])
    message = expect_format_error(buf.getvalue(), "avro", "union.avro")
    assert "'v'" in message and "union" in message


# --------------------------------------------------------------------------------------------------
# Cheap schema reads
# --------------------------------------------------------------------------------------------------


class CountingFile(io.BytesIO):
    """BytesIO that counts the bytes read through it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


@pytest.mark.parametrize("variant", ["parquet", "avro", "arrow", "arrow_stream"])
def test_read_schema_reads_little(tmp_path: Path, big_table: pa.Table, variant: str) -> None:
    table = big_table.slice(0, 20_000)
    path = write(tmp_path, table, variant)
    data = path.read_bytes()
    f = CountingFile(data)
    schema = read_schema(f, READ_FMT.get(variant, variant), source="s3://b/k")
    assert schema.names == table.schema.names
    assert f.bytes_read < len(data) // 10, f"{variant}: read {f.bytes_read} of {len(data)} bytes"


def test_read_schema_csv_infers_from_first_block() -> None:
    data = b"id,x,ts,flag\na,1,2024-05-01T00:00:00Z,true\nb,2,2024-05-01T00:00:01Z,false\n"
    schema = read_schema(io.BytesIO(data), "csv", source="s3://b/x.csv")
    assert schema.types == [pa.string(), pa.int64(), pa.timestamp("s", tz="UTC"), pa.bool_()]


# --------------------------------------------------------------------------------------------------
# Extension mapping
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "allowed", "expected"),
    [
        ("a/b/part-0.parquet", None, "parquet"),
        ("a/b/PART-0.PQ", None, "parquet"),
        ("x.csv", None, "csv"),
        ("x.CSV.GZ", None, "csv"),
        ("x.avro", None, "avro"),
        ("x.arrow", None, "arrow"),
        ("x.feather", None, "arrow"),
        ("x.ipc", None, "arrow"),
        ("x.arrows", None, "arrow"),
        ("x.json", None, None),
        ("x.parquet.gz", None, None),
        ("x.gz", None, None),
        ("parquet", None, None),
        ("dir.parquet/_SUCCESS", None, None),
        ("x.csv", ["parquet", "avro"], None),
        ("x.csv", ["CSV"], "csv"),
        ("x.parquet", [], None),
    ],
)
def test_format_for_key(key: str, allowed: list[str] | None, expected: str | None) -> None:
    assert format_for_key(key, allowed) == expected


# --------------------------------------------------------------------------------------------------
# FileFormatError, never a raw pyarrow/fastavro exception
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_empty_file(fmt: str) -> None:
    assert "is empty (0 bytes)" in expect_format_error(b"", fmt, f"empty.{fmt}")


def test_truncated_parquet(tmp_path: Path, small_table: pa.Table) -> None:
    data = write(tmp_path, small_table, "parquet").read_bytes()
    message = expect_format_error(data[:-100], "parquet", "cut.parquet")
    assert "truncated" in message and "write_table" in message


def test_parquet_with_corrupt_data_pages(tmp_path: Path, small_table: pa.Table) -> None:
    data = bytearray(write(tmp_path, small_table, "parquet").read_bytes())
    data[4 : len(data) // 2] = b"\x07" * (len(data) // 2 - 4)  # footer intact, pages garbage
    expect_format_error(bytes(data), "parquet", "pages.parquet", schema_too=False)


def test_garbage_named_parquet() -> None:
    message = expect_format_error(b"this is not parquet at all\n" * 20, "parquet", "garbage.parquet")
    assert "not a Parquet file (bad magic bytes" in message


@pytest.mark.parametrize("cut", [10, 2_000, -50])
def test_truncated_avro(tmp_path: Path, small_table: pa.Table, cut: int) -> None:
    data = write(tmp_path, small_table, "avro").read_bytes()
    expect_format_error(data[:cut], "avro", "cut.avro", schema_too=0 < cut < 100)


def test_garbage_avro() -> None:
    assert "not an Avro object container file" in expect_format_error(b"PAR1garbage", "avro", "x.avro")


def test_truncated_arrow_file(tmp_path: Path, small_table: pa.Table) -> None:
    data = write(tmp_path, small_table, "arrow").read_bytes()
    assert "truncated Arrow IPC file" in expect_format_error(data[: len(data) // 2], "arrow", "cut.arrow")


def test_truncated_arrow_stream(tmp_path: Path, small_table: pa.Table) -> None:
    data = write(tmp_path, small_table, "arrow_stream").read_bytes()
    expect_format_error(data[: len(data) // 2], "arrow", "cut.arrows", schema_too=False)
    expect_format_error(data[:7], "arrow", "cut.arrows")


def test_garbage_arrow() -> None:
    expect_format_error(b"\x00garbage bytes that are no IPC stream" * 5, "arrow", "x.arrow")


def test_csv_ragged_rows_in_first_block() -> None:
    message = expect_format_error(b"a,b,c\n1,2,3\n4,5\n", "csv", "ragged.csv")
    assert "line 3:" in message and "Expected 3 columns, got 2" in message


def test_csv_ragged_row_in_later_block_gives_line(monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_SIZE", 1 << 14)
    data = b"a,b\n" + b"1,2\n" * 20_000 + b"3\n"
    message = expect_format_error(data, "csv", "ragged.csv", schema_too=False)
    assert "line 20002:" in message


def test_csv_invalid_utf8_in_first_block() -> None:
    message = expect_format_error(b"id,name\n1,caf\xe9\n", "csv", "latin1.csv")
    assert "'name'" in message and "UTF8" in message


def test_csv_invalid_utf8_in_later_block(monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_SIZE", 1 << 14)
    data = b"id,name\n" + b"1,cafe\n" * 10_000 + b"2,caf\xe9\n"
    message = expect_format_error(data, "csv", "latin1.csv", schema_too=False)
    assert "'name'" in message and "UTF8" in message and "rows were read" in message


def test_csv_value_not_fitting_inferred_type(monkeypatch) -> None:
    monkeypatch.setattr(formats, "CSV_BLOCK_SIZE", 1 << 14)
    data = b"id,label\n" + b"a,1\n" * 10_000 + b"b,maybe\n"
    message = expect_format_error(data, "csv", "types.csv", schema_too=False)
    assert "column 'label' (#1), line 10002:" in message and "'maybe'" in message
    assert "after" in message and "rows were read" in message


def test_truncated_csv_gz(tmp_path: Path, small_table: pa.Table) -> None:
    data = write(tmp_path, small_table, "csv.gz").read_bytes()
    expect_format_error(data[:-30], "csv", "cut.csv.gz", schema_too=False)
    assert "no header row" in expect_format_error(gzip.compress(b""), "csv", "empty.csv.gz")


def test_storage_errors_pass_through(tmp_path: Path, small_table: pa.Table) -> None:
    """An error from the file object itself is not re-labelled as a format error."""
    data = write(tmp_path, small_table, "parquet").read_bytes()

    class Flaky(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise StorageUnavailableError("s3 timed out")
            return super().read(size)

        readinto = None  # type: ignore[assignment]

    with pytest.raises(StorageUnavailableError):
        list(read_batches(Flaky(data), "parquet", source="s3://b/x.parquet"))


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_schema(io.BytesIO(b"x"), "json", source="s3://b/x.json")
    with pytest.raises(ValueError, match="batch_rows"):
        read_batches(io.BytesIO(b"x"), "csv", source="s3://b/x.csv", batch_rows=0)
