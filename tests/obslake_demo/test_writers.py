"""Tests of the demo kit's sample-file writers (``obslake_demo.writers``).

The round trips through the product's readers are in ``tests/test_formats.py``; these pin what the
writer itself promises: the format names, the file flavours, the derived Avro schema and its errors.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
from pathlib import Path

import fastavro
import pyarrow as pa
import pytest

from obslake.formats import FORMATS
from obslake_demo.writers import WRITE_FORMATS, avro_schema_for_arrow, write_table


@pytest.fixture
def table() -> pa.Table:
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    return pa.table({
        "prediction_id": pa.array(["p1", "p2", None]),
        "ts": pa.array([when, when, None], pa.timestamp("us", tz="UTC")),
        "score": pa.array([0.5, 0.25, 1.0], pa.float64()),
    })


def test_write_formats_are_the_read_formats_plus_the_arrow_stream() -> None:
    assert WRITE_FORMATS == FORMATS + ("arrow_stream",)


def test_unknown_format_is_a_value_error(table: pa.Table) -> None:
    with pytest.raises(ValueError, match="unknown format 'orc'"):
        write_table(table, "orc", io.BytesIO())


def test_arrow_is_the_ipc_file_and_arrow_stream_the_ipc_stream(table: pa.Table) -> None:
    as_file, as_stream = io.BytesIO(), io.BytesIO()
    write_table(table, "arrow", as_file)
    write_table(table, "arrow_stream", as_stream)
    assert as_file.getvalue()[:6] == b"ARROW1" and as_stream.getvalue()[:6] != b"ARROW1"
    assert pa.ipc.open_file(pa.BufferReader(as_file.getvalue())).read_all().equals(table)
    assert pa.ipc.open_stream(pa.BufferReader(as_stream.getvalue())).read_all().equals(table)


def test_csv_to_a_gz_path_is_gzip_and_a_file_object_is_left_open(tmp_path: Path, table: pa.Table) -> None:
    write_table(table, "csv", str(tmp_path / "x.csv.gz"))
    write_table(table, "csv", str(tmp_path / "x.csv"))
    assert gzip.decompress((tmp_path / "x.csv.gz").read_bytes()) == (tmp_path / "x.csv").read_bytes()
    sink = io.BytesIO()
    write_table(table, "csv", sink)
    assert not sink.closed and sink.getvalue() == (tmp_path / "x.csv").read_bytes()


def test_avro_rows_are_the_table_rows(table: pa.Table) -> None:
    buf = io.BytesIO()
    write_table(table, "avro", buf)
    buf.seek(0)
    reader = fastavro.reader(buf)
    assert reader.codec == "deflate"
    assert list(reader) == table.to_pylist()


def test_avro_schema_for_arrow() -> None:
    schema = pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ns")),
        pa.field("tags", pa.list_(pa.field("item", pa.string(), nullable=False))),
        pa.field("attrs", pa.map_(pa.string(), pa.int32())),
    ])
    fields = {f["name"]: f["type"] for f in avro_schema_for_arrow(schema, name="Inference")["fields"]}
    assert fields["id"] == "string"
    assert fields["ts"] == ["null", {"type": "long", "logicalType": "local-timestamp-micros"}]
    assert fields["tags"] == ["null", {"type": "array", "items": "string"}]
    assert fields["attrs"] == ["null", {"type": "map", "values": ["null", "int"]}]
    fastavro.parse_schema(avro_schema_for_arrow(schema))  # a valid Avro schema


@pytest.mark.parametrize("arrow_type", [pa.map_(pa.int64(), pa.string()), pa.uint64()])
def test_avro_schema_for_arrow_without_an_avro_equivalent(arrow_type: pa.DataType) -> None:
    with pytest.raises(ValueError, match="column 'x'"):
        avro_schema_for_arrow(pa.schema([pa.field("x", arrow_type)]))
