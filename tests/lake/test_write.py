"""write_data_files: one sort, contiguous slices, one or more files per identity partition."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import assign_fresh_schema_ids
from pyiceberg.transforms import IdentityTransform

from obslake.lake.write import write_data_files


def _table(tmp_path, schema: pa.Schema, fields: list[tuple[str, object]]):
    cat = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh")
    cat.create_namespace("ns")
    ischema = assign_fresh_schema_ids(cat._convert_schema_if_needed(schema))
    spec = PartitionSpec(*[PartitionField(source_id=ischema.find_field(name).field_id, field_id=1000 + i,
                                          transform=tr, name=f"{name}_p" if not isinstance(tr, IdentityTransform) else name)
                           for i, (name, tr) in enumerate(fields)])
    return cat.create_table(("ns", "t"), schema=ischema, partition_spec=spec)


def _rows() -> pa.Table:
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=i % 3) for i in range(30)]
    return pa.table({
        "id": pa.array([f"s{i:03d}" for i in range(30)]),
        "date": pa.array(days, pa.date32()),
        "hour": pa.array([None if i == 7 else i % 2 for i in range(30)], pa.int32()),
        "ts": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i) for i in range(30)],
                       pa.timestamp("us", tz="UTC")),
    })


def test_one_file_per_partition_and_every_row_back(tmp_path):
    rows = _rows()
    table = _table(tmp_path, rows.schema, [("date", IdentityTransform()), ("hour", IdentityTransform())])
    files = write_data_files(table, rows.take(pa.array(list(reversed(range(30))))))
    # 3 days x hours {0, 1} = 6 partitions, plus (2026-01-02, null) for row 7
    assert len(files) == 7
    assert sum(f.record_count for f in files) == 30
    with table.transaction() as tx, tx.update_snapshot().fast_append() as app:
        for f in files:
            app.append_data_file(f)
    table.refresh()
    back = table.scan().to_arrow().sort_by("id")
    assert back.to_pylist() == rows.sort_by("id").to_pylist()
    # every file holds only rows of the partition it is registered under
    for f in files:
        got = table.scan(row_filter=f"date = '{dt.date(1970, 1, 1) + dt.timedelta(days=f.partition[0])}'"
                         if isinstance(f.partition[0], int) else f"date = '{f.partition[0]}'").to_arrow()
        part = got.filter(pc.is_null(got["hour"])) if f.partition[1] is None else got.filter(
            pc.equal(got["hour"], f.partition[1]))
        assert part.num_rows == f.record_count


def test_unpartitioned_falls_back_to_pyiceberg(tmp_path):
    rows = _rows()
    table = _table(tmp_path, rows.schema, [])
    files = write_data_files(table, rows)
    assert len(files) == 1 and files[0].record_count == 30


def test_empty_rows_write_nothing(tmp_path):
    rows = _rows()
    table = _table(tmp_path, rows.schema, [("date", IdentityTransform())])
    assert write_data_files(table, rows.slice(0, 0)) == []
