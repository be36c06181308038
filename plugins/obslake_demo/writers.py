"""Sample-file writers for the demo, the tests and the benchmarks (not part of the product API).

:func:`write_table` writes a :class:`pyarrow.Table` in any format :mod:`obslake.formats` reads;
:func:`avro_schema_for_arrow` derives the Avro schema it writes Avro files with. The product only
reads these formats (:mod:`obslake.formats`).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, BinaryIO

import fastavro
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from obslake.formats import FORMATS

WRITE_FORMATS = (*FORMATS, "arrow_stream")
"""The formats :func:`write_table` writes: :data:`obslake.formats.FORMATS` plus the Arrow IPC stream format."""


def write_table(table: pa.Table, fmt: str, sink: BinaryIO | str) -> None:
    """Write a table in one of :data:`WRITE_FORMATS`.

    ``parquet`` uses ``pyarrow.parquet.write_table``; ``csv`` ``pyarrow.csv.write_csv`` (a path
    ending in ``.gz`` is gzip-compressed); ``arrow`` the IPC file format and ``arrow_stream`` the
    IPC stream format; ``avro`` ``fastavro.writer`` (deflate codec) with the schema from
    :func:`avro_schema_for_arrow`, one record batch in memory as Python objects at a time.

    Args:
        table: The data.
        fmt: One of :data:`WRITE_FORMATS`.
        sink: A path, or a writable binary file object (left open).

    Raises:
        ValueError: ``fmt`` is unknown, or the table has a type the format cannot hold (lists in
            CSV, non-string map keys in Avro); pyarrow/fastavro errors propagate as raised.

    Note:
        A failed write may leave a partial file at ``sink``; callers writing to shared locations
        should write to a temporary name and rename.
    """
    if fmt == "parquet":
        pq.write_table(table, sink)
    elif fmt == "csv":
        if isinstance(sink, str):
            with pa.output_stream(sink, compression="detect") as out:
                pacsv.write_csv(table, out)
        else:
            pacsv.write_csv(table, sink)
    elif fmt in ("arrow", "arrow_stream"):
        new_writer = pa.ipc.new_file if fmt == "arrow" else pa.ipc.new_stream
        # an IPC file holds one dictionary per field: unify the chunks' dictionaries (a stream may replace them)
        options = pa.ipc.IpcWriteOptions(unify_dictionaries=fmt == "arrow")
        with new_writer(sink, table.schema, options=options) as writer:
            writer.write_table(table)
    elif fmt == "avro":
        parsed = fastavro.parse_schema(avro_schema_for_arrow(table.schema))
        records = (row for batch in table.to_batches() for row in batch.to_pylist(maps_as_pydicts="strict"))
        if isinstance(sink, str):
            with open(sink, "wb") as out:
                fastavro.writer(out, parsed, records, codec="deflate")
        else:
            fastavro.writer(sink, parsed, records, codec="deflate")
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {WRITE_FORMATS}")


def avro_schema_for_arrow(schema: pa.Schema, name: str = "Row") -> dict[str, Any]:
    """Derive an Avro record schema that can hold the rows of an Arrow schema.

    Nullable fields (and nullable list items / map values) become ``["null", T]`` unions;
    timestamps become ``long`` with ``timestamp-millis``/``-micros`` (``local-timestamp-*`` without
    a time zone; seconds are written as millis, nanoseconds as micros), dates ``int``/``date``,
    decimals ``bytes``/``decimal``, structs records, lists arrays, maps maps and dictionary columns
    their value type.

    Args:
        schema: The Arrow schema.
        name: The Avro name of the top-level record.

    Returns:
        A JSON-able Avro schema for ``fastavro.parse_schema``.

    Raises:
        ValueError: A type has no Avro equivalent (e.g. a map with non-string keys, unsigned 64-bit).

    Note:
        Pure function of the schema.
    """
    names = itertools.count()

    def record_name(path: str) -> str:
        return re.sub(r"\W", "_", f"{name}_{path}") + f"_{next(names)}"

    def field_type(arrow_type: pa.DataType, nullable: bool, path: str) -> Any:
        avro = avro_type(arrow_type, path)
        return ["null", avro] if nullable and avro != "null" else avro

    def avro_type(t: pa.DataType, path: str) -> Any:
        if pa.types.is_dictionary(t):
            return avro_type(t.value_type, path)
        if pa.types.is_null(t):
            return "null"
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_int32(t):
            return "int"
        if pa.types.is_uint8(t) or pa.types.is_uint16(t):
            return "int"
        if pa.types.is_int64(t) or pa.types.is_uint32(t):
            return "long"
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "float"
        if pa.types.is_float64(t):
            return "double"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "bytes"
        if pa.types.is_fixed_size_binary(t):
            return {"type": "fixed", "name": record_name(path), "size": t.byte_width}
        if pa.types.is_timestamp(t):
            unit = "millis" if t.unit in ("s", "ms") else "micros"
            prefix = "timestamp" if t.tz is not None else "local-timestamp"
            return {"type": "long", "logicalType": f"{prefix}-{unit}"}
        if pa.types.is_date(t):
            return {"type": "int", "logicalType": "date"}
        if pa.types.is_time32(t):
            return {"type": "int", "logicalType": "time-millis"}
        if pa.types.is_time64(t):
            return {"type": "long", "logicalType": "time-micros"}
        if pa.types.is_decimal(t):
            return {"type": "bytes", "logicalType": "decimal", "precision": t.precision, "scale": t.scale}
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            item = t.value_field
            return {"type": "array", "items": field_type(item.type, item.nullable, f"{path}_item")}
        if pa.types.is_map(t):
            if not (pa.types.is_string(t.key_type) or pa.types.is_large_string(t.key_type)):
                raise ValueError(f"column {path!r}: Avro maps need string keys, not {t.key_type}")
            item = t.item_field
            return {"type": "map", "values": field_type(item.type, item.nullable, f"{path}_value")}
        if pa.types.is_struct(t):
            return {
                "type": "record",
                "name": record_name(path),
                "fields": [{"name": c.name, "type": field_type(c.type, c.nullable, f"{path}_{c.name}")} for c in t],
            }
        raise ValueError(f"column {path!r}: Arrow type {t} has no Avro equivalent")

    return {
        "type": "record",
        "name": name,
        "fields": [{"name": c.name, "type": field_type(c.type, c.nullable, c.name)} for c in schema],
    }
