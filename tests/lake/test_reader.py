"""Delayed actuals: a second (``kind: actuals``) job, joined on read by prediction id.

Real moto S3 bucket, real Iceberg catalog (SQLite) and the real importer; actuals files as CSV and
Parquet, in both arrival orders, with overrides, orphans and re-imports.
"""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake_fixtures import inference_rows, to_bytes
from obslake.lake.discovery import find_new_files
from obslake.lake.importer import import_file
from obslake.lake.reader import (
    ACTUAL_INGESTED_AT,
    ENGINES,
    latest_actuals,
    latest_per_prediction,
    read_model,
    view_ddl,
    view_ddl_for,
)
from obslake.storage import open_store

PRED_PREFIX = "models/ctr/predictions/"
ACT_PREFIX = "models/ctr/actuals/"


@pytest.fixture
def s3(s3_client, s3_bucket):
    store, _ = open_store(f"s3://{s3_bucket}/models/ctr/", s3_client=s3_client)
    return store


@pytest.fixture
def jobs(s3, make_job):
    """(predictions job, actuals job) for the same model (tests.ctr, production, score_categorical)."""
    preds = make_job(s3.uri(PRED_PREFIX), name="ctr_predictions")
    acts = make_job(
        s3.uri(ACT_PREFIX), kind="actuals", name="ctr_actuals",
        schema={"prediction_id": "prediction_id", "actual_label": "actual_label", "features": []},
    )
    assert acts.table_identifier == ("tests", "ctr__production__actuals")
    assert acts.predictions_table_identifier == preds.table_identifier == ("tests", "ctr__production")
    return preds, acts


def _actuals(ids: list[str], labels: list[str | None]) -> pa.Table:
    return pa.table({"prediction_id": pa.array(ids, pa.string()), "actual_label": pa.array(labels, pa.string())})


def _import(lake, job, store, key, table, fmt):
    info = store.write(key, to_bytes(table, fmt))
    result = import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger)
    assert result.status == "imported", result.error
    assert result.rows == table.num_rows
    return info


def _labels(table: pa.Table) -> dict[str, str | None]:
    return dict(zip(table["prediction_id"].to_pylist(), table["actual_label"].to_pylist()))


def _next_second() -> None:
    """``_ingested_at`` has second precision: make the next import strictly later."""
    time.sleep(1.05 - time.time() % 1)


def _raw_actuals(lake, acts) -> pa.Table:
    return lake.catalog.load_table(acts.table_identifier).scan().to_arrow()


def test_actuals_after_predictions_fill_actual_label(lake, s3, jobs):
    preds, acts = jobs
    predictions = inference_rows(20, id_prefix="p")
    _import(lake, preds, s3, PRED_PREFIX + "2026/day.parquet", predictions, "parquet")
    before = read_model(lake.catalog, preds.table_identifier)
    assert before.num_rows == 20 and before[ACTUAL_INGESTED_AT].null_count == 20
    assert "actual_label" not in before.schema.names  # no actuals table yet, predictions map no actual

    uploaded = _actuals([f"p-{i}" for i in range(10)], ["click" if i % 3 else "skip" for i in range(10)])
    _import(lake, acts, s3, ACT_PREFIX + "2026/late.csv", uploaded, "csv")

    data = read_model(lake.catalog, preds.table_identifier)
    assert data.num_rows == 20
    assert _labels(data) == {**{f"p-{i}": None for i in range(20)}, **_labels(uploaded)}
    with_actual = data.filter(pc.is_valid(data[ACTUAL_INGESTED_AT]))
    assert sorted(with_actual["prediction_id"].to_pylist()) == sorted(uploaded["prediction_id"].to_pylist())
    raw = _raw_actuals(lake, acts)
    assert set(raw["_ingested_at"].to_pylist()) == set(with_actual[ACTUAL_INGESTED_AT].to_pylist())
    # the predictions' own columns are untouched, row for row
    assert data.column_names == [*before.column_names[:-1], "actual_label", ACTUAL_INGESTED_AT]
    for col in before.column_names[:-1]:
        assert data[col].equals(before[col]), col

    # filtered and projected reads; actual columns can be selected although predictions lack them
    paris = read_model(lake.catalog, "tests.ctr__production", row_filter="feature_city = 'paris'",
                       selected_fields=["prediction_id", "actual_label"])
    assert paris.column_names == ["prediction_id", "actual_label"]
    expected = {i for i in range(20) if i % 3 == 0}
    assert sorted(paris["prediction_id"].to_pylist()) == sorted(f"p-{i}" for i in expected)
    assert _labels(paris) == {f"p-{i}": _labels(data)[f"p-{i}"] for i in expected}


def test_actuals_before_predictions_wait_then_join(lake, s3, jobs):
    preds, acts = jobs
    uploaded = _actuals([f"p-{i}" for i in range(5, 15)], [f"label-{i}" for i in range(5, 15)])
    _import(lake, acts, s3, ACT_PREFIX + "early.parquet", uploaded, "parquet")

    # only actuals: kept, but they create no prediction rows
    waiting = latest_actuals(lake.catalog, preds.table_identifier)
    assert _labels(waiting) == _labels(uploaded)
    assert {"date", "_source_file", "_source_row", "_ingested_at", "prediction_timestamp"} <= set(waiting.column_names)
    assert waiting["_source_file"].to_pylist() == [s3.uri(ACT_PREFIX + "early.parquet")] * 10
    today = dt.datetime.now(dt.timezone.utc).date()
    assert all(abs((d - today).days) <= 1 for d in waiting["date"].to_pylist())  # unmapped ts -> ingest time
    empty = read_model(lake.catalog, preds.table_identifier)
    assert empty.num_rows == 0
    assert {"prediction_id", "actual_label", ACTUAL_INGESTED_AT} <= set(empty.column_names)

    predictions = inference_rows(10, id_prefix="p")  # p-0 .. p-9: p-5 .. p-9 have actuals waiting
    _import(lake, preds, s3, PRED_PREFIX + "on-time.csv", predictions, "csv")
    data = read_model(lake.catalog, preds.table_identifier)
    assert data.num_rows == 10
    assert _labels(data) == {f"p-{i}": (f"label-{i}" if i >= 5 else None) for i in range(10)}
    assert data[ACTUAL_INGESTED_AT].null_count == 5
    # the actuals table itself is unchanged by the join (nothing was rewritten)
    assert _raw_actuals(lake, acts).num_rows == 10


def test_later_actuals_file_overrides_earlier(lake, s3, jobs):
    preds, acts = jobs
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", inference_rows(10, id_prefix="p"), "parquet")
    first = _actuals([f"p-{i}" for i in range(8)], ["old"] * 8)
    # the later file's key sorts *before* the earlier one: _ingested_at must decide, not the name
    _import(lake, acts, s3, ACT_PREFIX + "z-first.csv", first, "csv")
    _next_second()
    second = _actuals([f"p-{i}" for i in range(4, 10)], ["new"] * 6)
    _import(lake, acts, s3, ACT_PREFIX + "a-second.parquet", second, "parquet")

    assert _raw_actuals(lake, acts).num_rows == 14  # append-only: both files are kept
    latest = latest_actuals(lake.catalog, preds.table_identifier)
    assert latest.num_rows == 10
    expected = {**{f"p-{i}": "old" for i in range(4)}, **{f"p-{i}": "new" for i in range(4, 10)}}
    assert _labels(latest) == expected
    assert _labels(read_model(lake.catalog, preds.table_identifier)) == expected


def test_orphan_actuals_create_no_prediction_rows(lake, s3, jobs):
    preds, acts = jobs
    predictions = inference_rows(6, id_prefix="p")
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", predictions, "parquet")
    uploaded = _actuals(["p-1", "p-3", "ghost-1", "ghost-2", "ghost-3"], ["a", "b", "c", "d", "e"])
    _import(lake, acts, s3, ACT_PREFIX + "mixed.csv", uploaded, "csv")

    data = read_model(lake.catalog, preds.table_identifier)
    assert data.num_rows == 6
    assert sorted(data["prediction_id"].to_pylist()) == sorted(predictions["prediction_id"].to_pylist())
    assert _labels(data) == {"p-0": None, "p-1": "a", "p-2": None, "p-3": "b", "p-4": None, "p-5": None}
    # the orphans wait in the actuals table and join when (if) their predictions land
    assert _labels(latest_actuals(lake.catalog, preds.table_identifier)) == _labels(uploaded)
    late = pa.Table.from_pylist([{**r, "prediction_id": "ghost-2"} for r in inference_rows(1).to_pylist()],
                                inference_rows(1).schema)
    _import(lake, preds, s3, PRED_PREFIX + "ghost.parquet", late, "parquet")
    data = read_model(lake.catalog, preds.table_identifier)
    assert data.num_rows == 7 and _labels(data)["ghost-2"] == "d"


def test_reimporting_an_actuals_file_is_exactly_once(lake, s3, jobs):
    preds, acts = jobs
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", inference_rows(12, id_prefix="p"), "parquet")
    uploaded = _actuals([f"p-{i}" for i in range(12)], [f"v1-{i}" for i in range(12)])
    info = _import(lake, acts, s3, ACT_PREFIX + "batch.csv", uploaded, "csv")
    table = lake.catalog.load_table(acts.table_identifier)
    snapshots = len(table.snapshots())

    again = import_file(acts, s3, info, catalog=lake.catalog, ledger=lake.ledger)
    assert again.status == "already-imported" and again.rows == 12
    assert len(lake.catalog.load_table(acts.table_identifier).snapshots()) == snapshots
    raw = _raw_actuals(lake, acts)
    assert raw.num_rows == 12
    assert sorted(raw["_source_row"].to_pylist()) == list(range(1, 13))
    assert find_new_files(acts, s3, ACT_PREFIX, lake.ledger)[0] == []
    assert lake.ledger.counts(acts.name)["succeeded"] == 1

    # a corrected version of the same file replaces its rows (new etag), still no duplicates
    corrected = _actuals([f"p-{i}" for i in range(12)], [f"v2-{i}" for i in range(12)])
    info2 = s3.write(ACT_PREFIX + "batch.csv", to_bytes(corrected, "csv"))
    assert [o.key for o in find_new_files(acts, s3, ACT_PREFIX, lake.ledger)[0]] == [ACT_PREFIX + "batch.csv"]
    result = import_file(acts, s3, info2, catalog=lake.catalog, ledger=lake.ledger)
    assert result.status == "imported" and result.replaced
    assert _raw_actuals(lake, acts).num_rows == 12
    assert _labels(read_model(lake.catalog, preds.table_identifier)) == _labels(corrected)


def test_predictions_own_actual_label_is_filled_not_replaced_by_nulls(lake, s3, make_job, jobs):
    _, acts = jobs
    preds = make_job(s3.uri(PRED_PREFIX), name="ctr_predictions",
                     schema={"prediction_id": "prediction_id", "timestamp": "prediction_ts",
                             "prediction_label": "predicted_label", "prediction_score": "predicted_score",
                             "actual_label": "actual_label", "features": {"prefix": "feature_"}})
    predictions = inference_rows(6, id_prefix="p").append_column(
        "actual_label", pa.array(["own-0", None, "own-2", None, "own-4", None], pa.string()))
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", predictions, "parquet")
    _import(lake, acts, s3, ACT_PREFIX + "a.csv", _actuals(["p-0", "p-1", "p-5"], ["late-0", "late-1", "late-5"]),
            "csv")
    data = read_model(lake.catalog, preds.table_identifier)
    assert _labels(data) == {"p-0": "late-0", "p-1": "late-1", "p-2": "own-2", "p-3": None, "p-4": "own-4",
                             "p-5": "late-5"}
    assert data.column_names.count("actual_label") == 1


def test_only_predictions_and_no_tables(lake, s3, jobs):
    from pyiceberg.exceptions import NoSuchTableError

    preds, _ = jobs
    with pytest.raises(NoSuchTableError):
        read_model(lake.catalog, preds.table_identifier)
    assert latest_actuals(lake.catalog, preds.table_identifier).num_rows == 0
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", inference_rows(3, id_prefix="p"), "parquet")
    data = read_model(lake.catalog, preds.table_identifier)
    assert data.num_rows == 3 and data[ACTUAL_INGESTED_AT].null_count == 3
    with pytest.raises(ValueError, match="actuals table"):
        read_model(lake.catalog, ("tests", "ctr__production__actuals"))


def test_latest_per_prediction_tie_breaks():
    ts = pa.scalar(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), pa.timestamp("us", tz="UTC")).as_py()
    later = ts + dt.timedelta(seconds=1)
    rows = [  # (id, ingested_at, source_file, source_row, label)
        ("a", ts, "s3://b/z.csv", 1, "a-old"),
        ("a", later, "s3://b/a.csv", 1, "a-later"),      # later ingest beats a greater file name
        ("b", ts, "s3://b/x.csv", 9, "b-x"),
        ("b", ts, "s3://b/y.csv", 1, "b-y"),            # same time: greater file name wins
        ("c", ts, "s3://b/x.csv", 2, "c-2"),
        ("c", ts, "s3://b/x.csv", 7, "c-7"),            # same file: greater row wins
        ("d", ts, "s3://b/x.csv", 3, "d-only"),
    ]
    table = pa.table({
        "prediction_id": [r[0] for r in rows],
        "_ingested_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        "_source_file": [r[2] for r in rows],
        "_source_row": pa.array([r[3] for r in rows], pa.int64()),
        "actual_label": [r[4] for r in rows],
        "actual_scores": pa.array([{"x": 1.0}] * len(rows), pa.map_(pa.string(), pa.float64())),
    })
    latest = latest_per_prediction(table)
    assert latest.schema == table.schema
    assert dict(zip(latest["prediction_id"].to_pylist(), latest["actual_label"].to_pylist())) == {
        "a": "a-later", "b": "b-y", "c": "c-7", "d": "d-only"}


def test_view_ddl_for_every_engine():
    for engine in (*ENGINES, "athena", "databricks"):
        sql = view_ddl("tests", "ctr__production", engine, ["actual_label", "actual_score"],
                       prediction_columns=["prediction_id", "prediction_timestamp", "actual_label", "date"])
        assert sql.startswith("CREATE OR REPLACE VIEW")
        assert "ctr__production__with_actuals" in sql and "ctr__production__actuals" in sql
        assert "ROW_NUMBER() OVER (PARTITION BY" in sql and "= 1" in sql
        assert "LEFT JOIN" in sql and "COALESCE(a." in sql
        q = "`" if engine in ("spark", "databricks", "bigquery") else '"'
        assert f"{q}_ingested_at{q} DESC NULLS LAST, {q}_source_file{q} DESC NULLS LAST, " \
               f"{q}_source_row{q} DESC NULLS LAST" in sql
        assert f"a.{q}actual_score{q}" in sql  # actual-only column added, not coalesced
    for engine, word in (("duckdb", "EXCLUDE"), ("snowflake", "EXCLUDE"), ("spark", "EXCEPT"), ("bigquery", "EXCEPT")):
        assert f"p.* {word} (" in view_ddl("tests", "ctr__production", engine)
    with pytest.raises(ValueError, match="prediction_columns"):
        view_ddl("tests", "ctr__production", "trino")
    with pytest.raises(ValueError, match="unknown engine"):
        view_ddl("tests", "ctr__production", "mysql")
    with pytest.raises(ValueError, match="cannot be quoted"):
        view_ddl("tests", 'x"; DROP TABLE y; --', "duckdb")


def test_duckdb_view_matches_read_model(lake, s3, make_job, jobs):
    duckdb = pytest.importorskip("duckdb")
    _, acts = jobs
    preds = make_job(s3.uri(PRED_PREFIX), name="ctr_predictions",
                     schema={"prediction_id": "prediction_id", "timestamp": "prediction_ts",
                             "prediction_label": "predicted_label", "prediction_score": "predicted_score",
                             "actual_label": "actual_label", "features": {"prefix": "feature_"}})
    predictions = inference_rows(30, id_prefix="p").append_column(
        "actual_label", pa.array([f"own-{i}" if i % 4 == 0 else None for i in range(30)], pa.string()))
    _import(lake, preds, s3, PRED_PREFIX + "p.parquet", predictions, "parquet")
    _import(lake, acts, s3, ACT_PREFIX + "b-first.parquet",
            _actuals([f"p-{i}" for i in range(0, 20, 2)] + ["ghost"], ["first"] * 11), "parquet")
    _next_second()
    _import(lake, acts, s3, ACT_PREFIX + "a-second.csv", _actuals([f"p-{i}" for i in range(0, 30, 3)],
                                                                   [f"second-{i}" for i in range(0, 30, 3)]), "csv")
    expected = read_model(lake.catalog, preds.table_identifier)
    assert expected.num_rows == 30

    con = duckdb.connect()
    con.execute('CREATE SCHEMA "tests"')
    for name in ("ctr__production", "ctr__production__actuals"):
        arrow_table = lake.catalog.load_table(("tests", name)).scan().to_arrow()  # noqa: F841 (duckdb scans it)
        con.execute(f'CREATE TABLE "tests"."{name}" AS SELECT * FROM arrow_table')
    for ddl in (view_ddl_for(lake.catalog, preds.table_identifier, "duckdb"),
                view_ddl("tests", "ctr__production", "duckdb", ["actual_label"])):
        con.execute(ddl)
        relation = con.sql('SELECT * FROM "tests"."ctr__production__with_actuals"')
        got = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
        if isinstance(got, pa.RecordBatchReader):
            got = got.read_all()
        assert sorted(got.column_names) == sorted(expected.column_names)
        got = got.sort_by("prediction_id")
        want = expected.sort_by("prediction_id")
        for col in want.column_names:
            assert got[col].to_pylist() == want[col].to_pylist(), col
    con.close()
