"""The importer's data-file writer: the same files as pyiceberg's writer, cheaper encoding, background errors."""

from __future__ import annotations

import datetime as dt
import math
import io
import itertools
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obslake.exceptions import StorageUnavailableError

from lake_fixtures import inference_rows, to_bytes
from obslake.lake import importer
from obslake.lake.importer import _conform, _dictionary_columns, _leaf_paths, _write_chunk, ensure_table, import_file
from obslake.storage.local import LocalStore

STATS = ("record_count", "value_counts", "null_value_counts", "nan_value_counts", "lower_bounds", "upper_bounds",
         "partition", "content", "file_format", "sort_order_id", "equality_ids", "key_metadata")


def _mapped(n: int) -> pa.Table:
    """Rows as the mapper makes them: three days (partitions), unique ids, float features, lineage."""
    start = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=3)
    ts = pa.array([start + dt.timedelta(seconds=i * 3 * 86400 // n) for i in range(n)], pa.timestamp("us", tz="UTC"))
    return pa.table({
        "prediction_id": [f"id-{i}" for i in range(n)],
        "prediction_timestamp": ts,
        "prediction_label": [["cat", "dog"][i % 2] for i in range(n)],
        "prediction_score": [i / n for i in range(n)],
        "feature_x": [math.sin(i) for i in range(n)],
        "feature_flag": [float(i % 2) for i in range(n)],
        "tag_region": pa.array([None if i % 5 == 0 else ["eu", "us"][i % 2] for i in range(n)]),
        "embedding__e__vector": pa.array([[float(i), 1.0] for i in range(n)], pa.list_(pa.float32())),
        "date": ts.cast(pa.date32()),
        "_source_file": pa.repeat(pa.scalar("file:///in/a.parquet"), n),
        "_source_row": pa.array(range(1, n + 1), pa.int64()),
        "_ingested_at": pa.repeat(pa.scalar(dt.datetime.now(dt.timezone.utc), pa.timestamp("us", tz="UTC")), n),
    })


def test_data_files_match_pyicebergs(lake, make_job):
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    mapped = _mapped(30_000)
    table = ensure_table(lake.catalog, make_job("file:///in/"), mapped.schema)
    target = table.schema().as_arrow()
    batches = [_conform(b, target, "u") for b in mapped.to_batches(7_000)]
    ours = _write_chunk(table.metadata, table.io, batches, uuid.uuid4(), itertools.count())
    theirs = list(_dataframe_to_data_files(table_metadata=table.metadata, df=pa.Table.from_batches(batches),
                                           io=table.io, write_uuid=uuid.uuid4(), counter=itertools.count()))
    assert len(ours) == len(theirs) >= 3
    for a, b in zip(sorted(ours, key=lambda d: d.partition[0]), sorted(theirs, key=lambda d: d.partition[0])):
        for name in STATS:
            assert getattr(a, name) == getattr(b, name), name
        ta, tb = (pq.read_table(d.file_path.removeprefix("file://")) for d in (a, b))
        assert ta.equals(tb) and ta.schema.equals(tb.schema, check_metadata=True)  # field ids included
        assert a.file_size_in_bytes <= b.file_size_in_bytes
    # mostly-distinct primitive columns are written plain, repetitive ones with a dictionary
    meta = pq.ParquetFile(ours[0].file_path.removeprefix("file://")).metadata
    encodings = {meta.schema.column(i).path: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    for plain in ("prediction_id", "prediction_timestamp", "prediction_score", "feature_x", "_source_row"):
        assert "RLE_DICTIONARY" not in encodings[plain], plain
    for dictionary in ("prediction_label", "feature_flag", "tag_region", "date", "_source_file", "_ingested_at",
                       "embedding__e__vector.list.element"):
        assert "RLE_DICTIONARY" in encodings[dictionary], dictionary


def test_leaf_paths_are_parquets():
    t = pa.table({
        "a.b": [1, 2],
        "v": pa.array([[1.0], [2.0]], pa.list_(pa.float32())),
        "m": pa.array([[("x", 1.0)], [("y", 2.0)]], pa.map_(pa.string(), pa.float64())),
        "s": pa.array([{"p": 1, "q": [1]}, {"p": 2, "q": []}]),
        "f": pa.array([[1, 2], [3, 4]], pa.list_(pa.int32(), 2)),
        "ll": pa.array([[[1.0, 2.0]], []], pa.large_list(pa.list_(pa.float64()))),
    })
    buf = io.BytesIO()
    pq.write_table(t, buf)
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    assert [p for f in t.schema for p in _leaf_paths(f.name, f.type)] == [
        meta.schema.column(i).path for i in range(meta.num_columns)]


def test_dictionary_columns_of_odd_types():
    t = pa.table({"u": pa.array([uuid.uuid4().bytes for _ in range(4)], pa.uuid()), "n": pa.nulls(4),
                  "d": pa.array([1, 2, 3, 4], pa.int64())})
    assert _dictionary_columns(t) == ["u", "n"]  # no hash kernel for uuid: keep the dictionary default


def test_a_failed_background_write_fails_the_import(lake, make_job, tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    info = store.write("a.parquet", to_bytes(inference_rows(50), "parquet"))
    calls = []

    def failing(*args):
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(importer, "_write_chunk", failing)
    with pytest.raises(StorageUnavailableError, match="disk full"):  # the warehouse's OSError: transient
        import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=10, chunk_rows=10)
    assert calls == [1]  # the error stops the import at the next chunk
    row = lake.ledger.get(job.name, info)
    assert row["status"] == "pending" and "disk full" in row["error"]  # transient: retried, the error shown
    monkeypatch.undo()
    result = import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=10, chunk_rows=10)
    assert (result.status, result.rows) == ("imported", 50)
    data = lake.catalog.load_table(job.table_identifier).scan().to_arrow()
    assert sorted(data["_source_row"].to_pylist()) == list(range(1, 51))
