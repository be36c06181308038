"""The one Parquet write path (obslake.lake.iceberg): the same files as pyiceberg's writer, cheaper encoding,
split by identity partitions in one sort, background errors."""

from __future__ import annotations

import ast
import datetime as dt
import math
import io
import itertools
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import IdentityTransform

from obslake.exceptions import StorageUnavailableError

from lake_fixtures import inference_rows, to_bytes
from obslake.lake import iceberg
from obslake.lake.iceberg import (
    FILTER_PARTITIONS,
    _dictionary_columns,
    _leaf_paths,
    _partition_slices,
    iceberg_schema,
    write_data_files,
)
from obslake.lake.importer import _conform, ensure_table, import_file
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
    ours = write_data_files(table.metadata, table.io, pa.Table.from_batches(batches), uuid.uuid4(), itertools.count())
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

    monkeypatch.setattr(iceberg, "write_data_files", failing)
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


# -- the split by identity partitions: one sort, contiguous slices ---------------------------------------
def _table(tmp_path, schema: pa.Schema, fields: list[tuple[str, object]]):
    cat = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh")
    cat.create_namespace("ns")
    ischema = iceberg_schema(schema)
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
    files = write_data_files(table.metadata, table.io, rows.take(pa.array(list(reversed(range(30))))))
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


def test_one_encoding_choice_per_write_and_true_file_sizes(tmp_path):
    """The dictionary choice is made once over the rows of a call (not per file: a one-row partition would
    otherwise look "mostly distinct"), and each DataFile's size is the file's size on disk."""
    n = 2_000
    rows = pa.table({
        "id": pa.array([f"s{i:05d}" for i in range(n)]),  # distinct: plain everywhere
        "label": pa.array([["cat", "dog"][i % 2] for i in range(n)]),  # repetitive: dictionary everywhere
        "date": pa.array([dt.date(2026, 1, 1) if i else dt.date(2026, 1, 2) for i in range(n)], pa.date32()),
    })
    table = _table(tmp_path, rows.schema, [("date", IdentityTransform())])
    files = write_data_files(table.metadata, table.io, rows)
    assert sorted(f.record_count for f in files) == [1, n - 1]
    for f in files:
        path = f.file_path.removeprefix("file://")
        assert f.file_size_in_bytes == Path(path).stat().st_size
        meta = pq.ParquetFile(path).metadata
        enc = {meta.schema.column(i).path: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
        assert "RLE_DICTIONARY" in enc["label"] and "RLE_DICTIONARY" not in enc["id"], (f.record_count, enc)


def test_rows_of_other_types_take_pyicebergs_projection(tmp_path):
    """Rows whose types differ from the table's (int32 into a long column) are projected by pyiceberg, so the
    file holds the table's types; rows of the table's types take its schema as they are: both read back."""
    rows = _rows()
    table = _table(tmp_path, rows.schema.set(2, pa.field("hour", pa.int64())), [("date", IdentityTransform())])
    files = write_data_files(table.metadata, table.io, rows)  # hour is int32 here
    files += write_data_files(table.metadata, table.io, rows.set_column(2, "hour", rows["hour"].cast(pa.int64())))
    for f in files:
        schema = pq.read_schema(f.file_path.removeprefix("file://"))
        assert schema.field("hour").type == pa.int64() and schema.field("hour").metadata[b"PARQUET:field_id"]
    with table.transaction() as tx, tx.update_snapshot().fast_append() as app:
        for f in files:
            app.append_data_file(f)
    table.refresh()
    back = table.scan().to_arrow().sort_by("id")
    key = lambda h: (h is None, h)  # noqa: E731
    assert sorted(back["hour"].to_pylist(), key=key) == sorted(rows["hour"].to_pylist() * 2, key=key)
    assert back.num_rows == 2 * rows.num_rows


def test_unpartitioned_falls_back_to_pyiceberg(tmp_path):
    rows = _rows()
    table = _table(tmp_path, rows.schema, [])
    files = write_data_files(table.metadata, table.io, rows)
    assert len(files) == 1 and files[0].record_count == 30


def test_empty_rows_write_nothing(tmp_path):
    rows = _rows()
    table = _table(tmp_path, rows.schema, [("date", IdentityTransform())])
    assert write_data_files(table.metadata, table.io, rows.slice(0, 0)) == []


# -- the pyiceberg boundary -------------------------------------------------------------------------------
def _private_names_used(path: Path) -> set[str]:
    """Private names one module takes from elsewhere: ``from pyiceberg… import _x``, ``obj._x`` reads where
    ``obj`` is not ``self``/``cls`` and the module defines no ``_x`` itself, and ``_x`` methods overridden in
    subclasses of pyiceberg classes."""
    tree = ast.parse(path.read_text())
    from_pyiceberg = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                      and (n.module or "").startswith("pyiceberg") for a in n.names}
    overridden = {f.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                  and any(isinstance(b, ast.Name) and b.id in from_pyiceberg for b in c.bases)
                  for f in c.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_")
                  and not f.name.startswith("__")}
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
    found = set(overridden)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyiceberg"):
            found |= {a.name for a in node.names if a.name.startswith("_")}
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and node.attr not in own and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.add(node.attr)
    return found


def test_pyiceberg_private_apis_only_in_the_iceberg_module():
    """pyiceberg's private names (imported, or read off its objects) appear in lake/iceberg.py only."""
    import obslake

    root = Path(obslake.__file__).parent
    used = {str(p.relative_to(root)): _private_names_used(p) for p in root.rglob("*.py")}
    # the check sees the uses it allows
    assert {"_convert_schema_if_needed", "_table", "_dataframe_to_data_files", "_to_requested_schema",
            "_initialize_fs"} <= used.pop(
        "lake/iceberg.py")
    assert {path: sorted(names) for path, names in used.items() if names} == {}


def test_a_transaction_computes_each_metadata_state_once(lake, make_job, tmp_path, monkeypatch):
    """pyiceberg re-applies the staged updates and deep-copies the whole table metadata (every snapshot) on
    each access of Transaction.table_metadata, ~18 times a commit; obslake computes each state once."""
    import pyiceberg.table.update
    from pyiceberg.table.update import update_table_metadata

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(3):  # some history
        info = store.write(f"h{i}.parquet", to_bytes(inference_rows(10, id_prefix=f"h{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    tx = table.transaction()
    assert tx.table_metadata is tx.table_metadata  # one state, one object
    before = tx.table_metadata
    tx.set_properties({"obslake.test": "1"})
    assert tx.table_metadata is not before and tx.table_metadata.properties["obslake.test"] == "1"
    assert before.properties.get("obslake.test") is None  # the earlier state is unchanged (frozen models)

    calls = []
    monkeypatch.setattr(pyiceberg.table.update, "update_table_metadata",
                        lambda *a, **k: calls.append(1) or update_table_metadata(*a, **k))
    info = store.write("x.parquet", to_bytes(inference_rows(10, id_prefix="x"), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    assert 0 < len(calls) <= 6, len(calls)  # one per staged state (was about 18 per commit)
    assert lake.catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == 40


def test_staged_metadata_equals_pyicebergs_without_its_deep_copy(lake, make_job, tmp_path):
    """obslake's update_table_metadata gives exactly pyiceberg's result for the updates of a real commit (a
    new column, properties, an append), but shares the unchanged snapshots instead of deep-copying them."""
    from obslake.lake import iceberg

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(3):
        info = store.write(f"h{i}.parquet", to_bytes(inference_rows(10, id_prefix=f"h{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    wider = table.scan().to_arrow().slice(0, 5).append_column("feature_new", pa.array([1.0] * 5))
    tx = iceberg.begin(lake.catalog, job.table_identifier, table, wider.schema, lambda: {})
    tx.set_properties({"obslake.test": "1"})
    with tx.update_snapshot().fast_append() as append:
        for df in iceberg.write_data_files(tx.table_metadata, iceberg.transaction_io(tx), wider, uuid.uuid4(),
                                           itertools.count()):
            append.append_data_file(df)
    updates = tuple(tx._updates)
    assert len(updates) >= 4
    original = iceberg._PYICEBERG_UPDATE_TABLE_METADATA
    for location in (None, table.metadata_location):
        theirs = original(table.metadata, updates, metadata_location=location)
        ours = iceberg._update_table_metadata(table.metadata, updates, metadata_location=location)
        assert ours.model_dump() == theirs.model_dump()
        assert ours.snapshots[0] is table.metadata.snapshots[0]  # shared, not copied
        assert theirs.snapshots[0] is not table.metadata.snapshots[0]
    tx.commit_transaction()
    data = lake.catalog.load_table(job.table_identifier).scan().to_arrow()
    assert data.num_rows == 35 and data["feature_new"].null_count == 30


def test_each_immutable_metadata_version_is_parsed_once_per_process(lake, make_job, tmp_path, monkeypatch):
    """Loading a table (and the catalog's own load inside a commit) reuses the parsed form of a versioned
    metadata file; a file that can be rewritten in place (latest.metadata.json) is read every time."""
    import shutil

    from pyiceberg.table import StaticTable
    from pyiceberg.table.metadata import TableMetadataUtil

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    info = store.write("a.parquet", to_bytes(inference_rows(10, id_prefix="a"), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    parsed = []
    real = TableMetadataUtil.parse_raw
    monkeypatch.setattr(TableMetadataUtil, "parse_raw", staticmethod(lambda data: parsed.append(1) or real(data)))
    table = lake.catalog.load_table(job.table_identifier)
    lake.catalog.load_table(job.table_identifier)
    info = store.write("b.parquet", to_bytes(inference_rows(10, id_prefix="b"), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    after = lake.catalog.load_table(job.table_identifier)
    assert parsed == [] and after.metadata_location != table.metadata_location  # written here: never re-parsed
    assert after.scan().to_arrow().num_rows == 20
    latest = tmp_path / "latest.metadata.json"
    shutil.copy(after.metadata_location.removeprefix("file://"), latest)
    StaticTable.from_metadata(f"file://{latest}")
    shutil.copy(table.metadata_location.removeprefix("file://"), latest)  # rewritten in place
    assert StaticTable.from_metadata(f"file://{latest}").scan().to_arrow().num_rows == 10
    assert len(parsed) == 2


# -- bounded metadata ------------------------------------------------------------------------------------
def test_metadata_files_are_bounded_and_manifests_merge_as_the_table_grows(lake, make_job, tmp_path):
    """120 imports: at most 11 metadata.json files stay (the current one and 10 earlier), the current snapshot
    plans over fewer than 100 manifests, and a reader we did not write (DuckDB) reads every row."""
    import glob

    from fabric.fabric_helpers import duckdb_connection

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(120):
        info = store.write(f"f{i:03d}.parquet", to_bytes(inference_rows(5, id_prefix=f"f{i}-"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    metadata_dir = table.metadata_location.removeprefix("file://").rsplit("/", 1)[0]
    assert len(glob.glob(f"{metadata_dir}/*.metadata.json")) <= 11
    assert len(table.metadata.metadata_log) <= 10
    assert len(table.current_snapshot().manifests(table.io)) < 100  # merged (was one manifest per import)
    con = duckdb_connection()
    assert con.execute(f"SELECT count(*) FROM iceberg_scan('{table.metadata_location}')").fetchone()[0] == 600


def test_a_table_of_an_earlier_version_gets_the_bounded_metadata_properties_at_its_next_commit(lake, tmp_path):
    from obslake.lake.iceberg import DEFAULT_TABLE_PROPERTIES, begin

    schema = pa.schema([("id", pa.string())])
    lake.catalog.create_namespace("old")
    old = lake.catalog.create_table(("old", "t"), schema=schema, properties={"write.metadata.previous-versions-max": "3"})
    tx = begin(lake.catalog, ("old", "t"), old, schema, lambda: {})
    with tx.update_snapshot().merge_append() as append:
        for f in write_data_files(tx.table_metadata, old.io, pa.table({"id": ["a"]})):
            append.append_data_file(f)
    props = tx.commit_transaction().properties
    assert props["write.metadata.previous-versions-max"] == "3"  # the owner's choice stays
    assert all(props[k] == v for k, v in DEFAULT_TABLE_PROPERTIES.items() if k != "write.metadata.previous-versions-max")


def test_metadata_json_is_pyicebergs_byte_for_byte_and_reuses_snapshot_json(lake, make_job, tmp_path, monkeypatch):
    """The metadata file obslake writes is exactly what pyiceberg would write (snapshot summaries with
    obslake's properties, an overwrite, a schema change), while each snapshot is serialised once."""
    import json

    from pyiceberg.table.snapshots import Snapshot

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(6):
        info = store.write(f"m{i}.parquet", to_bytes(inference_rows(5, id_prefix=f"m{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    info = store.write("m0.parquet", to_bytes(inference_rows(3, id_prefix="again"), "parquet"))  # replaces m0
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    assert len(table.snapshots()) >= 7 and any(s.summary.operation.value != "append" for s in table.snapshots())
    for exclude_none in (True, False):
        assert iceberg.metadata_json(table.metadata, exclude_none=exclude_none) == \
            table.metadata.model_dump_json(exclude_none=exclude_none)
    on_disk = Path(table.metadata_location.removeprefix("file://")).read_text()
    assert json.loads(on_disk) == json.loads(table.metadata.model_dump_json(exclude_none=True))
    calls = []
    real = Snapshot.model_dump_json
    monkeypatch.setattr(Snapshot, "model_dump_json", lambda self, **kw: calls.append(1) or real(self, **kw))
    iceberg.metadata_json(table.metadata)
    assert calls == []  # every snapshot's JSON came from the cache
    empty = table.metadata.model_copy(update={"snapshots": []})
    assert iceberg.metadata_json(empty) == empty.model_dump_json(exclude_none=True)


def test_metadata_json_of_any_snapshot_list_is_pyicebergs(lake, make_job, tmp_path):
    """The joined JSON of the last list written is reused only for a list that extends it: lists that shrink
    at the front (expiry), skip a snapshot, reorder, or belong to another state are serialised in full."""
    import random

    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    for i in range(8):
        info = store.write(f"j{i}.parquet", to_bytes(inference_rows(3, id_prefix=f"j{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    metadata = lake.catalog.load_table(job.table_identifier).metadata
    snaps = list(metadata.snapshots)
    rng = random.Random(7)
    lists = [snaps[:k] for k in range(1, len(snaps) + 1)] + [snaps[k:] for k in range(len(snaps))]
    lists += [rng.sample(snaps, rng.randint(1, len(snaps))) for _ in range(40)]
    rng.shuffle(lists)
    for chosen in lists + [snaps[:3], snaps[:3] + snaps[5:6], snaps]:
        state = metadata.model_copy(update={"snapshots": chosen})
        for exclude_none in (True, False):
            assert iceberg.metadata_json(state, exclude_none=exclude_none) == state.model_dump_json(
                exclude_none=exclude_none)


def test_snapshot_lookup_by_id_is_pyicebergs(lake, make_job, tmp_path):
    """The indexed ``snapshot_by_id`` answers as pyiceberg's scan does: every id, an unknown id, the snapshot a
    new commit adds (a new list), and a list holding an id twice (the first wins, as in the scan)."""
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    info = store.write("k0.parquet", to_bytes(inference_rows(3, id_prefix="k0"), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    before = lake.catalog.load_table(job.table_identifier).metadata

    def scan(metadata, snapshot_id):
        return next((s for s in metadata.snapshots if s.snapshot_id == snapshot_id), None)

    for i in range(1, 4):
        info = store.write(f"k{i}.parquet", to_bytes(inference_rows(3, id_prefix=f"k{i}"), "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    after = lake.catalog.load_table(job.table_identifier).metadata
    for metadata in (before, after):
        for snap in after.snapshots:
            assert metadata.snapshot_by_id(snap.snapshot_id) is scan(metadata, snap.snapshot_id)
        assert metadata.snapshot_by_id(-1) is None
    assert after.snapshot_by_id(after.current_snapshot_id).snapshot_id == after.current_snapshot_id
    first, second = after.snapshots[0], after.snapshots[1]
    twice = after.model_copy(update={"snapshots": [first, second, second.model_copy(update={"parent_snapshot_id": 9})]})
    assert twice.snapshot_by_id(second.snapshot_id) is second


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_id_repeated_batches_later_fails_the_file_after_reading_it(lake, make_job, tmp_path, fmt):
    """Under abort_file the repeated-id check runs once at the end of the file: the file still fails with
    the row (and, for CSV, the physical line) of the repeat and of its first occurrence; nothing is
    committed and the data files already written are deleted."""
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    rows = inference_rows(60)
    ids = rows["prediction_id"].to_pylist()
    ids[47] = ids[3]  # row 48 repeats row 4, four batches later
    region = ["eu"] * 60
    region[10] = "multi\nline\nvalue"  # two line breaks inside a quoted CSV value before the repeat
    rows = rows.set_column(0, "prediction_id", pa.array(ids)).set_column(4, "region", pa.array(region))
    info = store.write(f"a.{fmt}", to_bytes(rows, fmt))
    result = import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=10, chunk_rows=10)
    assert result.status == "failed" and result.code == "ID_DUPLICATE", result
    assert "row 48" in result.error and "first seen in row 4" in result.error
    if fmt == "csv":
        assert "line 51" in result.error  # header + 48 rows + 2 line breaks inside the quoted value
    assert not lake.catalog.table_exists(job.table_identifier) or not lake.catalog.load_table(
        job.table_identifier
    ).scan().to_arrow().num_rows
    warehouse = Path(lake.settings.warehouse.removeprefix("file://"))
    assert not list(warehouse.rglob("*.parquet"))  # the chunks written before the end were deleted


# -- cutting a chunk into partitions: filtered for a few values, sorted for many ----------------------------
@settings(max_examples=60, deadline=None)
@given(days=st.lists(st.one_of(st.none(), st.integers(0, 40)), min_size=1, max_size=300),
       second=st.booleans())
def test_partition_slices_hold_each_value_once_in_order(days, second):
    """Every row lands in exactly one slice, each slice holds one partition value, the slices come in
    ascending order of the value (nulls last), whichever way the chunk is cut (few values are filtered,
    many are sorted; a second source column or a null forces the sort)."""
    rows = pa.table({"id": pa.array(range(len(days)), pa.int64()),
                     "date": pa.array([None if d is None else dt.date(2026, 1, 1) + dt.timedelta(days=d)
                                       for d in days], pa.date32()),
                     "h": pa.array([i % 2 for i in range(len(days))], pa.int32())})
    sources = ["date", "h"] if second else ["date"]
    slices = _partition_slices(rows, sources)
    keys = [tuple(s[c][0].as_py() for c in sources) for s in slices]
    for s, key in zip(slices, keys):
        assert all(tuple(s[c][i].as_py() for c in sources) == key for i in range(s.num_rows))
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys, key=lambda k: tuple((v is None, v) for v in k))
    assert sorted(i for s in slices for i in s["id"].to_pylist()) == list(range(len(days)))
    distinct = len({d for d in days})
    if not second and None not in days and 1 < distinct <= FILTER_PARTITIONS:
        assert all(s["id"].to_pylist() == sorted(s["id"].to_pylist()) for s in slices)  # file order kept


def test_latest_by_keeps_the_last_row_per_key_by_order_property():
    """latest_by against a plain-Python reference: one row per key, the greatest by ``order`` (null oldest,
    ties to the row that comes last), sorted by key; unique keys (its shortcut) and repeated keys alike."""
    import pyarrow as pa
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from obslake.lake.iceberg import latest_by

    row = st.tuples(st.sampled_from(["a", "b", "c", "é", ""]), st.sampled_from(["x", "y"]),
                    st.one_of(st.none(), st.integers(0, 3)), st.integers(-(2**63), 2**63 - 1))

    @settings(max_examples=200, deadline=None)
    @given(rows=st.lists(row, max_size=30), two_keys=st.booleans(), unique=st.booleans())
    def check(rows, two_keys, unique):
        if unique:  # distinct first keys: the shortcut
            rows = list({r[0]: r for r in rows}.values())
        t = pa.table({"k": [r[0] for r in rows], "k2": [r[1] for r in rows], "o": pa.array([r[2] for r in rows],
                      pa.int64()), "payload": [r[3] for r in rows]})
        keys = ["k", "k2"] if two_keys else ["k"]
        best: dict = {}
        for i, r in enumerate(rows):
            key = (r[0], r[1]) if two_keys else (r[0],)
            rank = (-1 if r[2] is None else r[2], i)
            if key not in best or rank >= best[key][0]:
                best[key] = (rank, r)
        want = [best[k][1] for k in sorted(best)]
        got = latest_by(t, keys, ["o"])
        assert got.schema == t.schema
        assert [(r["k"], r["k2"], r["o"], r["payload"]) for r in got.to_pylist()] == want

    check()
