"""The Delta log over a pyiceberg table: same Parquet files, exact same rows, copy-on-write removes."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DateType, DoubleType, IntegerType, LongType, NestedField, StringType, TimestamptzType

from obslake.storage.credentials import StorageCredentials
from obslake.fabric.delta import (
    DataFileInfo,
    DeltaLogError,
    delta_column_name,
    files_from_iceberg,
    identity_partition_columns,
    sync_delta_log,
    sync_from_iceberg,
)

UTC = dt.timezone.utc
SCHEMA = Schema(
    NestedField(1, "span_id", StringType(), required=False),
    NestedField(2, "start_time", TimestamptzType(), required=False),
    NestedField(3, "eval.hallucination.label", StringType(), required=False),
    NestedField(4, "attributes.llm.model_name", StringType(), required=False),
    NestedField(5, "attributes.llm.token_count.total", LongType(), required=False),
    NestedField(6, "date", DateType(), required=False),
    NestedField(7, "hour", IntegerType(), required=False),
)
SPEC = PartitionSpec(
    PartitionField(6, 1000, IdentityTransform(), "date"),
    PartitionField(7, 1001, IdentityTransform(), "hour"),
)


def rows(table, spans: list[tuple[str, dt.datetime, str | None]], **extra) -> pa.Table:
    """Arrow rows in the table's current schema: (span_id, start_time, label) + constant extra columns."""
    data = {
        "span_id": [s for s, _, _ in spans],
        "start_time": [t for _, t, _ in spans],
        "eval.hallucination.label": [label for _, _, label in spans],
        "attributes.llm.model_name": ["gpt-4o"] * len(spans),
        "attributes.llm.token_count.total": [15 * (i + 1) for i in range(len(spans))],
        "date": [t.date() for _, t, _ in spans],
        "hour": [t.hour for _, t, _ in spans],
    }
    for name, value in extra.items():
        data[name] = [value] * len(spans)
    return pa.Table.from_pydict(data).cast(table.schema().as_arrow())


def make_table(catalog: SqlCatalog, location: str):
    catalog.create_namespace_if_not_exists("fabric")
    return catalog.create_table(f"fabric.p_{uuid.uuid4().hex[:8]}", SCHEMA, partition_spec=SPEC, location=location)


def local_catalog(tmp_path) -> SqlCatalog:
    return SqlCatalog("t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")


def delta_rows(location: str, storage_options=None, version: int | None = None) -> pa.Table:
    table = DeltaTable(location, storage_options=storage_options, version=version)
    return table.to_pyarrow_table()


def assert_same_rows(iceberg_table, location: str, storage_options=None) -> None:
    """The Delta read equals the Iceberg scan: same columns (Delta names), same values, same row count."""
    expected = iceberg_table.scan().to_arrow()
    expected = expected.rename_columns([delta_column_name(n) for n in expected.column_names])
    actual = delta_rows(location, storage_options)
    assert sorted(actual.column_names) == sorted(expected.column_names)
    actual = actual.select(expected.column_names)
    actual = actual.cast(pa.schema([pa.field(f.name, f.type) for f in expected.schema]))
    assert actual.num_rows == expected.num_rows
    order = [("span_id", "ascending")]
    assert actual.sort_by(order).to_pylist() == expected.sort_by(order).to_pylist()


def delta_paths(location: str, storage_options=None) -> set[str]:
    from urllib.parse import unquote

    actions = pa.table(DeltaTable(location, storage_options=storage_options).get_add_actions())
    return {unquote(p) for p in actions.column("path").to_pylist()}


T1 = dt.datetime(2024, 1, 1, 5, 10, tzinfo=UTC)
T2 = dt.datetime(2024, 1, 1, 6, 20, tzinfo=UTC)
T3 = dt.datetime(2024, 1, 2, 7, 30, tzinfo=UTC)


def test_files_from_iceberg_partition_values_and_relative_paths(tmp_path):
    location = f"file://{tmp_path}/tables/proj"
    table = make_table(local_catalog(tmp_path), location)
    assert files_from_iceberg(table) == []
    table.append(rows(table, [("a", T1, "x"), ("b", T1, None), ("c", T2, "z"), ("d", T3, "y")]))
    files = sorted(files_from_iceberg(table), key=lambda f: f.path)
    assert [f.partition_values for f in files] == [
        {"date": "2024-01-01", "hour": "5"}, {"date": "2024-01-01", "hour": "6"}, {"date": "2024-01-02", "hour": "7"}]
    assert [f.num_records for f in files] == [2, 1, 1]
    for f in files:
        folder = f"data/date={f.partition_values['date']}/hour={f.partition_values['hour']}/"
        assert f.path.startswith(folder) and f.path.endswith(".parquet")
        assert (tmp_path / "tables" / "proj" / f.path).stat().st_size == f.size
        assert f.modification_time_ms == table.current_snapshot().timestamp_ms
    assert identity_partition_columns(table) == ["date", "hour"]


def test_sync_mirrors_appends_rewrites_and_added_columns(tmp_path):
    location = f"file://{tmp_path}/tables/proj"
    table = make_table(local_catalog(tmp_path), location)
    table.append(rows(table, [("a", T1, "x"), ("b", T1, None), ("c", T2, "z"), ("d", T3, "y")]))

    version = sync_delta_log(location, table.schema().as_arrow(), ["date", "hour"], files_from_iceberg(table))
    assert version == 0
    assert_same_rows(table, location)
    assert DeltaTable(location).metadata().partition_columns == ["date", "hour"]
    # Dotted Iceberg names are the Parquet names pyiceberg wrote (no column mapping needed).
    assert "eval_x2Ehallucination_x2Elabel" in DeltaTable(location).schema().to_arrow().names
    first_files = {f.path for f in files_from_iceberg(table)}
    assert delta_paths(location) == first_files
    assert not (tmp_path / "tables" / "proj" / "_delta_log" / "00000000000000000001.json").exists()

    # No change: no commit.
    assert sync_delta_log(location, table.schema().as_arrow(), ["date", "hour"], files_from_iceberg(table)) is None
    assert DeltaTable(location).version() == 0

    # Copy-on-write rewrite of partition (2024-01-01, 5) with a new column, plus an append elsewhere.
    with table.update_schema() as update:
        update.add_column(("eval.correctness.score",), DoubleType())
    table.dynamic_partition_overwrite(
        rows(table, [("a", T1, "x2"), ("b", T1, "y2"), ("e", T1, "new")], **{"eval.correctness.score": 0.5}))
    table.append(rows(table, [("f", T3, None)], **{"eval.correctness.score": 1.0}))
    files_now = files_from_iceberg(table)
    replaced = {p for p in first_files if "hour=5/" in p}
    assert replaced and not replaced & {f.path for f in files_now}

    version = sync_delta_log(location, table.schema().as_arrow(), ["date", "hour"], files_now)
    # Schema commit (metadata only) + one commit with all adds and removes.
    assert version == 2
    assert_same_rows(table, location)
    assert "eval_x2Ecorrectness_x2Escore" in DeltaTable(location).schema().to_arrow().names
    assert delta_paths(location) == {f.path for f in files_now}
    log_entry = (tmp_path / "tables" / "proj" / "_delta_log" / "00000000000000000002.json").read_text()
    assert log_entry.count('"remove"') == len(replaced) and log_entry.count('"add"') == 2

    # History kept: version 0 still reads the old rows (Iceberg has not expired those files).
    old = delta_rows(location, version=0)
    assert old.num_rows == 4
    assert sorted(old.column("eval_x2Ehallucination_x2Elabel").to_pylist(), key=str) == sorted(["x", None, "z", "y"], key=str)
    assert [h["version"] for h in DeltaTable(location).history()] == [2, 1, 0]
    assert pc.sum(delta_rows(location).column("eval_x2Ecorrectness_x2Escore")).as_py() == 2.5

    assert sync_from_iceberg(table) is None
    assert DeltaTable(location).version() == 2


def test_missed_syncs_are_repaired_by_the_next_one(tmp_path):
    """A crash after Iceberg commits (Delta never told) is repaired: the log is made equal, not replayed."""
    location = str(tmp_path / "tables" / "proj")  # plain local path works too
    table = make_table(local_catalog(tmp_path), location)
    table.append(rows(table, [("a", T1, "x")]))
    assert sync_from_iceberg(table) == 0
    # Three Iceberg commits, no Delta sync in between (the "crash" window).
    table.append(rows(table, [("b", T2, "y")]))
    table.dynamic_partition_overwrite(rows(table, [("a", T1, "x3"), ("c", T1, None)]))
    table.delete("span_id = 'b'")  # copy-on-write delete of a whole file
    assert sync_from_iceberg(table) == 1
    assert_same_rows(table, location)
    assert delta_rows(location).num_rows == 2
    assert sync_from_iceberg(table) is None


def test_schema_only_change_commits_metadata(tmp_path):
    location = f"file://{tmp_path}/t"
    table = make_table(local_catalog(tmp_path), location)
    table.append(rows(table, [("a", T1, "x")]))
    assert sync_from_iceberg(table) == 0
    with table.update_schema() as update:
        update.add_column(("annotation.note.label",), StringType())
    assert sync_from_iceberg(table) == 1
    assert_same_rows(table, location)
    assert sync_from_iceberg(table) is None


def test_first_sync_of_an_empty_table_and_rejections(tmp_path):
    location = f"file://{tmp_path}/t"
    table = make_table(local_catalog(tmp_path), location)
    assert sync_from_iceberg(table) == 0
    assert delta_rows(location).num_rows == 0
    schema = table.schema().as_arrow()
    with pytest.raises(DeltaLogError, match="partitioned by"):
        sync_delta_log(location, schema, ["date"], [])
    changed = schema.set(schema.get_field_index("hour"), pa.field("hour", pa.int64()))
    with pytest.raises(DeltaLogError, match="hour"):
        sync_delta_log(location, changed, ["date", "hour"], [])
    dup = DataFileInfo("data/x.parquet", 1, {"date": "2024-01-01", "hour": "5"}, 1, 0)
    with pytest.raises(DeltaLogError, match="twice"):
        sync_delta_log(location, schema, ["date", "hour"], [dup, dup])
    assert DeltaTable(location).version() == 0


def test_sync_on_s3(tmp_path, moto_server, s3_client, s3_bucket):
    catalog = SqlCatalog(
        "s3", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"s3://{s3_bucket}/warehouse",
        **{"s3.endpoint": moto_server, "s3.access-key-id": "testing", "s3.secret-access-key": "testing",
           "s3.region": "us-east-1"},
    )
    location = f"s3://{s3_bucket}/fabric/proj"
    options = StorageCredentials("s3", endpoint=moto_server, access_key_id="testing",
                                 secret_access_key="testing").delta_options()
    table = make_table(catalog, location)
    table.append(rows(table, [("a", T1, "x"), ("b", T2, None), ("c", T3, "z")]))
    assert sync_from_iceberg(table, options) == 0
    assert_same_rows(table, location, options)

    with table.update_schema() as update:
        update.add_column(("eval.correctness.score",), DoubleType())
    table.dynamic_partition_overwrite(rows(table, [("b", T2, "y"), ("d", T2, "w")], **{"eval.correctness.score": 0.25}))
    assert sync_from_iceberg(table, options) == 2
    assert_same_rows(table, location, options)
    assert delta_paths(location, options) == {f.path for f in files_from_iceberg(table)}
    assert sync_from_iceberg(table, options) is None

    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="fabric/proj/")["Contents"]}
    assert {f"fabric/proj/_delta_log/{v:020d}.json" for v in range(3)} <= keys
    # Same Parquet files, no second copy: every data object is an Iceberg data file.
    data_keys = {k for k in keys if k.endswith(".parquet")}
    all_iceberg = {f"fabric/proj/{f.path}" for f in files_from_iceberg(table)}
    assert all_iceberg <= data_keys and all(k.startswith("fabric/proj/data/") for k in data_keys)
