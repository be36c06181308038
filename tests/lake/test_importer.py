"""Exactly-once imports into Iceberg, on a real S3 server (moto) and real catalogs (SQLite, Postgres)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake_fixtures import inference_rows, to_bytes
from obslake.lake.discovery import find_new_files
from obslake.lake.importer import PROP_SOURCE_ETAG, PROP_SOURCE_FILE, import_file
from obslake.storage import open_store

WORKER = Path(__file__).with_name("import_worker.py")


@pytest.fixture
def s3(s3_client, s3_bucket):
    store, _ = open_store(f"s3://{s3_bucket}/models/ctr/", s3_client=s3_client)
    return store


def _put(store, key, table, fmt):
    return store.write(key, to_bytes(table, fmt))


def _scan(lake, job):
    return lake.catalog.load_table(job.table_identifier).scan().to_arrow()


def _worker(lake, moto_server, job, infos, *, fault=None, chunk_rows=None, batch=False):
    env = {**os.environ, **lake.env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("OBSLAKE_FAULT_AT", None)
    if fault:
        env["OBSLAKE_FAULT_AT"] = fault
    payload = {"job": job.model_dump(mode="json", by_alias=True), "endpoint": moto_server,
               "infos": [i.to_dict() for i in infos]}
    if chunk_rows:
        payload["chunk_rows"] = chunk_rows
    if batch:
        payload["batch"] = True
    return subprocess.run([sys.executable, str(WORKER), json.dumps(payload)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_nested_files_in_every_format_land_once(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    tables = {
        "models/ctr/2024/a.parquet": (inference_rows(300, id_prefix="pq"), "parquet"),
        "models/ctr/2024/05/b.csv": (inference_rows(200, id_prefix="csv"), "csv"),
        "models/ctr/2024/05/06/c.avro": (inference_rows(150, id_prefix="avro"), "avro"),
        "models/ctr/x/y/z/d.arrow": (inference_rows(100, id_prefix="arrow"), "arrow"),
    }
    for key, (t, fmt) in tables.items():
        _put(s3, key, t, fmt)
    s3.write("models/ctr/notes.txt", b"ignored")
    new, total = find_new_files(job, s3, "models/ctr/", lake.ledger)
    assert sorted(o.key for o in new) == sorted(tables) and total == 4
    results = [import_file(job, s3, o, catalog=lake.catalog, ledger=lake.ledger) for o in new]
    assert [r.status for r in results] == ["imported"] * 4
    data = _scan(lake, job)
    assert data.num_rows == 750
    assert pc.count_distinct(data["prediction_id"]).as_py() == 750
    for key, (t, _) in tables.items():
        rows = data.filter(pc.equal(data["_source_file"], s3.uri(key)))
        assert rows.num_rows == t.num_rows
        assert sorted(rows["_source_row"].to_pylist()) == list(range(1, t.num_rows + 1))
        assert sorted(rows["prediction_id"].to_pylist()) == sorted(t["prediction_id"].to_pylist())
    assert data.schema.field("prediction_timestamp").type == pa.timestamp("us", tz="UTC")
    assert {"feature_x", "feature_city", "region", "date", "_ingested_at"} <= set(data.schema.names)
    table = lake.catalog.load_table(job.table_identifier)
    files = [t.file.file_path for t in table.scan().plan_files()]
    assert files and all("/data/date=" in f for f in files), files
    props = [s.summary.get(PROP_SOURCE_FILE) for s in table.snapshots()]
    assert sorted(p for p in props if p) == sorted(s3.uri(k) for k in tables)
    # a second poll finds nothing new, and importing again appends nothing
    assert find_new_files(job, s3, "models/ctr/", lake.ledger)[0] == []
    snaps = len(table.snapshots())
    again = import_file(job, s3, new[0], catalog=lake.catalog, ledger=lake.ledger)
    assert again.status == "already-imported"
    assert len(lake.catalog.load_table(job.table_identifier).snapshots()) == snaps
    assert _scan(lake, job).num_rows == 750


def test_changed_file_replaces_its_rows_in_one_commit(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    other = _put(s3, "models/ctr/other.parquet", inference_rows(50, id_prefix="other"), "parquet")
    v1 = _put(s3, "models/ctr/day.csv", inference_rows(100, id_prefix="v1"), "csv")
    for info in (other, v1):
        import_file(job, s3, info, catalog=lake.catalog, ledger=lake.ledger)
    table = lake.catalog.load_table(job.table_identifier)
    log_before = len(table.metadata.metadata_log)
    v2 = _put(s3, "models/ctr/day.csv", inference_rows(70, id_prefix="v2"), "csv")
    assert v2.etag != v1.etag
    assert [o.key for o in find_new_files(job, s3, "models/ctr/", lake.ledger)[0]] == ["models/ctr/day.csv"]
    result = import_file(job, s3, v2, catalog=lake.catalog, ledger=lake.ledger)
    assert result.status == "imported" and result.replaced and result.rows == 70
    table = lake.catalog.load_table(job.table_identifier)
    assert len(table.metadata.metadata_log) == log_before + 1, "replace must be one atomic commit"
    data = table.scan().to_arrow()
    day = data.filter(pc.equal(data["_source_file"], s3.uri("models/ctr/day.csv")))
    assert sorted(day["prediction_id"].to_pylist()) == sorted(f"v2-{i}" for i in range(70))
    assert data.num_rows == 120


@pytest.mark.parametrize("fault", ["during-read", "after-write", "after-commit"])
def test_kill_9_at_each_stage_then_retry_is_exactly_once(lake, s3, make_job, moto_server, fault):
    job = make_job(s3.uri("models/ctr/"))
    info = _put(s3, "models/ctr/big.parquet", inference_rows(5000, id_prefix="k"), "parquet")
    crashed = _worker(lake, moto_server, job, [info], fault=fault, chunk_rows=1000)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    row = lake.ledger.get(job.name, info)
    assert row["status"] == "pending"
    committed = fault == "after-commit"
    if committed:
        assert _scan(lake, job).num_rows == 5000
    retry = _worker(lake, moto_server, job, [info])
    assert retry.returncode == 0, retry.stderr[-2000:]
    result = json.loads(retry.stdout.strip().splitlines()[-1])
    assert result["status"] == ("already-imported" if committed else "imported")
    data = _scan(lake, job)
    assert data.num_rows == 5000
    assert pc.count_distinct(data["prediction_id"]).as_py() == 5000
    row = lake.ledger.get(job.name, info)
    assert row["status"] == "succeeded" and row["rows"] == 5000 and row["attempts"] == 2


def test_bad_file_fails_with_location_and_others_import(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    good = _put(s3, "models/ctr/good.parquet", inference_rows(40, id_prefix="g"), "parquet")
    bad_rows = inference_rows(10, id_prefix="b").to_pylist()
    bad_rows[3]["prediction_id"] = None
    bad = _put(s3, "models/ctr/bad.parquet", pa.Table.from_pylist(bad_rows, inference_rows(1).schema), "parquet")
    missing = _put(s3, "models/ctr/missing.csv", inference_rows(5).drop_columns(["predicted_label"]), "csv")
    results = {r.uri.rsplit("/", 1)[1]: r for r in
               (import_file(job, s3, i, catalog=lake.catalog, ledger=lake.ledger) for i in (bad, good, missing))}
    assert results["good.parquet"].status == "imported"
    assert results["bad.parquet"].status == "failed"
    assert "row 4" in results["bad.parquet"].error and "'prediction_id'" in results["bad.parquet"].error
    assert results["missing.csv"].status == "failed" and "predicted_label" in results["missing.csv"].error
    assert _scan(lake, job).num_rows == 40
    assert lake.ledger.get(job.name, bad)["status"] == "failed"
    assert lake.ledger.counts(job.name) == {"pending": 0, "succeeded": 1, "failed": 2}
    # failed versions are not offered again until they change
    assert find_new_files(job, s3, "models/ctr/", lake.ledger)[0] == []


def test_new_columns_evolve_the_table_and_type_changes_are_refused(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    import_file(job, s3, _put(s3, "models/ctr/a.parquet", inference_rows(10, id_prefix="a"), "parquet"),
                catalog=lake.catalog, ledger=lake.ledger)
    wider = inference_rows(10, id_prefix="w").append_column("feature_new", pa.array([1.5] * 10))
    r = import_file(job, s3, _put(s3, "models/ctr/b.parquet", wider, "parquet"), catalog=lake.catalog,
                    ledger=lake.ledger)
    assert r.status == "imported"
    data = _scan(lake, job)
    assert data.num_rows == 20 and data["feature_new"].null_count == 10
    changed = inference_rows(10, id_prefix="c").set_column(2, "feature_x", pa.array(["x"] * 10))
    r = import_file(job, s3, _put(s3, "models/ctr/c.parquet", changed, "parquet"), catalog=lake.catalog,
                    ledger=lake.ledger)
    assert r.status == "failed" and "feature_x" in r.error and "double" in r.error


def _import_many(lake, job, store, infos):
    return [import_file(job, store, i, catalog=lake.catalog, ledger=lake.ledger) for i in infos]


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_concurrent_writer_processes_on_postgres_lose_nothing(pg_lake, s3, make_job, moto_server):
    job = make_job(s3.uri("models/ctr/"))
    infos = [_put(s3, f"models/ctr/w{i}/part.parquet", inference_rows(200, start=i * 200, id_prefix="w"), "parquet")
             for i in range(16)]
    with ThreadPoolExecutor(8) as pool:  # 8 OS processes, 2 files each, all committing to one table
        procs = list(pool.map(lambda chunk: _worker(pg_lake, moto_server, job, chunk),
                              [infos[i::8] for i in range(8)]))
    for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(line) for p in procs for line in p.stdout.strip().splitlines()]
    assert sorted(r["status"] for r in results) == ["imported"] * 16
    data = _scan(pg_lake, job)
    assert data.num_rows == 3200
    assert pc.count_distinct(data["prediction_id"]).as_py() == 3200
    table = pg_lake.catalog.load_table(job.table_identifier)
    committed = [s.summary.get(PROP_SOURCE_FILE) for s in table.snapshots() if s.summary.get(PROP_SOURCE_FILE)]
    assert sorted(committed) == sorted(s3.uri(i.key) for i in infos)
    assert pg_lake.ledger.counts(job.name)["succeeded"] == 16


def test_gcs_files_import_through_the_same_code(lake, gcs_client, gcs_bucket, make_job):
    store, prefix = open_store(f"gs://{gcs_bucket}/models/ctr/", gcs_client=gcs_client)
    job = make_job(f"gs://{gcs_bucket}/models/ctr/")
    _put(store, "models/ctr/a/b/c.parquet", inference_rows(120, id_prefix="gcs"), "parquet")
    _put(store, "models/ctr/a/d.csv", inference_rows(80, id_prefix="gcs-csv"), "csv")
    new, _ = find_new_files(job, store, prefix, lake.ledger)
    assert sorted(o.key for o in new) == ["models/ctr/a/b/c.parquet", "models/ctr/a/d.csv"]
    assert all(o.etag.isdigit() for o in new)  # GCS generation numbers
    results = [import_file(job, store, o, catalog=lake.catalog, ledger=lake.ledger) for o in new]
    assert [r.status for r in results] == ["imported", "imported"]
    data = _scan(lake, job)
    assert data.num_rows == 200
    assert set(data["_source_file"].to_pylist()) == {f"gs://{gcs_bucket}/models/ctr/a/b/c.parquet",
                                                     f"gs://{gcs_bucket}/models/ctr/a/d.csv"}
    assert find_new_files(job, store, prefix, lake.ledger)[0] == []


@pytest.mark.slow
def test_discovery_over_1050_files_across_pages_is_capped_and_then_empty(lake, s3, s3_client, make_job):
    job = make_job(s3.uri("models/ctr/"), max_files_per_run=400)
    body = to_bytes(inference_rows(3), "csv")
    keys = [f"models/ctr/{i % 7}/{i % 13}/f{i:05d}.csv" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        infos = list(pool.map(lambda k: s3.write(k, body), keys))
    seen: set[str] = set()
    while True:
        batch, total = find_new_files(job, s3, "models/ctr/", lake.ledger)
        if not batch:
            break
        assert len(batch) <= 400 and total == 1050 - len(seen)
        assert not seen & {o.key for o in batch}, "a file was offered twice"
        for o in batch:  # what a successful import records
            lake.ledger.mark_succeeded(job.name, o, rows=3, table_name="t", snapshot_id=None)
        seen |= {o.key for o in batch}
    assert seen == set(keys) and len(infos) == 1050


# -- exactly once at a cost that does not grow with the table's history ------------------------------------
def _pending_again(lake, job, info, since):
    """What a crash between the commit and the ledger update leaves: the row pending since ``since``."""
    import sqlalchemy as sa

    from obslake.lake.ledger import ledger_table as t

    with lake.ledger.engine.begin() as conn:
        conn.execute(t.update().where(t.c.job == job.name, t.c.key == info.key, t.c.etag == info.etag)
                     .values(status="pending", pending_since=since, finished_at=None))


def test_the_crash_check_reads_only_snapshots_since_the_attempt_began(lake, s3, make_job):
    import datetime as dt

    from obslake.lake.importer import find_committed

    job = make_job(s3.uri("models/ctr/"))
    infos = [_put(s3, f"models/ctr/f{i}.parquet", inference_rows(20, id_prefix=f"f{i}"), "parquet") for i in range(3)]
    for info in infos:
        assert import_file(job, s3, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    first, uri = infos[0], s3.uri(infos[0].key)
    committed_at = dt.datetime.fromtimestamp(table.snapshots()[0].timestamp_ms / 1000, dt.UTC)
    assert find_committed(table, uri, first.etag, committed_at).snapshot_id == table.snapshots()[0].snapshot_id
    # an attempt that began after the commit (beyond the clock-skew margin) never reads that far back
    read = []
    real = table.snapshot_by_id
    table.snapshot_by_id = lambda sid: read.append(sid) or real(sid)
    assert find_committed(table, uri, first.etag, committed_at + dt.timedelta(hours=1)) is None
    assert read == [table.metadata.current_snapshot_id]  # the current one only: already older than the window

    # a crash after the commit: the retry finds its commit among the recent snapshots and repairs the ledger
    _pending_again(lake, job, first, committed_at)
    again = import_file(job, s3, first, catalog=lake.catalog, ledger=lake.ledger)
    assert (again.status, again.rows) == ("already-imported", 20)
    assert lake.ledger.get(job.name, first)["status"] == "succeeded"
    assert _scan(lake, job).num_rows == 60


def test_a_changed_file_replaces_its_rows_after_the_first_versions_snapshot_expired(lake, s3, make_job):
    import datetime as dt

    job = make_job(s3.uri("models/ctr/"))
    v1 = _put(s3, "models/ctr/day.parquet", inference_rows(30, id_prefix="v1"), "parquet")
    assert import_file(job, s3, v1, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    other = _put(s3, "models/ctr/other.parquet", inference_rows(10, id_prefix="o"), "parquet")
    assert import_file(job, s3, other, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    table = lake.catalog.load_table(job.table_identifier)
    table.maintenance.expire_snapshots().older_than(dt.datetime.now(dt.UTC)).commit()  # all but the current
    table = lake.catalog.load_table(job.table_identifier)
    assert [s.summary.get(PROP_SOURCE_FILE) for s in table.snapshots()] == [s3.uri(other.key)]  # v1's is gone
    v2 = _put(s3, "models/ctr/day.parquet", inference_rows(25, id_prefix="v2"), "parquet")
    assert v2.etag != v1.etag
    result = import_file(job, s3, v2, catalog=lake.catalog, ledger=lake.ledger)
    assert (result.status, result.replaced) == ("imported", True)
    ids = _scan(lake, job)["prediction_id"].to_pylist()
    assert len(ids) == 35 and not any(i.startswith("v1") for i in ids)  # v1's rows replaced, never kept beside


# -- batches of small files ---------------------------------------------------------------------------
def _batch(lake, job, store, infos):
    from obslake.lake.importer import import_files

    return import_files(job, store, infos, catalog=lake.catalog, ledger=lake.ledger)


class _Interfering:
    """A store that runs ``on_open(key)`` before opening a file (a concurrent writer, a failing read)."""

    def __init__(self, store, on_open):
        self._store, self._on_open = store, on_open

    def __getattr__(self, name):
        return getattr(self._store, name)

    def open(self, key, **kwargs):
        self._on_open(key)
        return self._store.open(key, **kwargs)


def test_small_files_are_committed_together_with_each_files_lineage(lake, s3, make_job):
    from obslake.lake.importer import source_files

    job = make_job(s3.uri("models/ctr/"))
    fmts = ["parquet", "csv", "avro", "arrow"]
    infos = [_put(s3, f"models/ctr/d{i % 3}/f{i}.{fmts[i % 4]}", inference_rows(10 + i, id_prefix=f"f{i}"), fmts[i % 4])
             for i in range(9)]
    results = _batch(lake, job, s3, infos)
    assert [(r.status, r.rows) for r in results] == [("imported", 10 + i) for i in range(9)]
    table = lake.catalog.load_table(job.table_identifier)
    first, batch = table.snapshots()  # the table's first file creates it alone, the other eight: one commit
    assert source_files(first.summary) == [(s3.uri(infos[0].key), infos[0].etag, 10)]
    assert source_files(batch.summary) == [(s3.uri(i.key), i.etag, 10 + n) for n, i in enumerate(infos) if n]
    for n, info in enumerate(infos):
        row = lake.ledger.get(job.name, info)
        want = first if n == 0 else batch
        assert (row["status"], row["rows"], row["snapshot_id"]) == ("succeeded", 10 + n, want.snapshot_id)
    data = _scan(lake, job)
    per_file = dict(zip(*data.group_by("_source_file").aggregate([("prediction_id", "count_distinct")])
                        .select(["_source_file", "prediction_id_count_distinct"]).to_pydict().values()))
    assert per_file == {s3.uri(i.key): 10 + n for n, i in enumerate(infos)}  # each row keeps its own file
    assert data.num_rows == sum(10 + i for i in range(9))
    again = _batch(lake, job, s3, infos)
    assert {r.status for r in again} == {"already-imported"}
    assert len(lake.catalog.load_table(job.table_identifier).snapshots()) == 2  # nothing committed again


def test_a_bad_file_in_a_batch_fails_alone_and_changes_nothing(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    seed = _put(s3, "models/ctr/seed.parquet", inference_rows(5, id_prefix="seed"), "parquet")
    assert import_file(job, s3, seed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    bad_rows = inference_rows(10, id_prefix="bad").to_pylist()
    bad_rows[3]["prediction_id"] = None
    wider_bad = pa.Table.from_pylist(bad_rows, inference_rows(1).schema).append_column(
        "feature_never", pa.array([1.0] * 10))
    files = {
        "g1": _put(s3, "models/ctr/g1.parquet", inference_rows(20, id_prefix="g1"), "parquet"),
        "bad": _put(s3, "models/ctr/bad.parquet", pa.Table.from_pylist(bad_rows, inference_rows(1).schema), "parquet"),
        "garbage": s3.write("models/ctr/garbage.parquet", b"PAR1 not parquet at all"),
        "wider_bad": _put(s3, "models/ctr/wider_bad.csv", wider_bad, "csv"),
        "empty": s3.write("models/ctr/empty.csv", (",".join(inference_rows(1).column_names) + "\n").encode()),
        "g2": _put(s3, "models/ctr/g2.avro", inference_rows(30, id_prefix="g2"), "avro"),
    }
    results = {r.uri.rsplit("/", 1)[1].split(".")[0]: r for r in _batch(lake, job, s3, list(files.values()))}
    assert {k: (r.status, r.code) for k, r in results.items()} == {
        "g1": ("imported", None), "g2": ("imported", None), "bad": ("failed", "ID_MISSING"),
        "garbage": ("failed", "FILE_CORRUPT"), "wider_bad": ("failed", "ID_MISSING"), "empty": ("failed", "FILE_EMPTY")}
    assert "row 4" in results["bad"].error
    table = lake.catalog.load_table(job.table_identifier)
    assert "feature_never" not in table.schema().column_names  # a failed file's new column never lands
    assert results["g1"].snapshot_id == results["g2"].snapshot_id == table.current_snapshot().snapshot_id
    ids = _scan(lake, job)["prediction_id"].to_pylist()
    assert len(ids) == 55 and not any(i.startswith("bad") for i in ids)
    assert lake.ledger.counts(job.name) == {"pending": 0, "succeeded": 3, "failed": 4}


def test_files_that_add_columns_or_replace_a_version_are_committed_alone(lake, s3, make_job):
    from obslake.lake.importer import source_files

    job = make_job(s3.uri("models/ctr/"))
    v1 = _put(s3, "models/ctr/day.parquet", inference_rows(30, id_prefix="v1"), "parquet")
    assert import_file(job, s3, v1, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    wider = inference_rows(10, id_prefix="w").append_column("feature_new", pa.array([2.5] * 10))
    batch = [_put(s3, "models/ctr/a.parquet", inference_rows(10, id_prefix="a"), "parquet"),
             _put(s3, "models/ctr/wide.parquet", wider, "parquet"),
             _put(s3, "models/ctr/day.parquet", inference_rows(25, id_prefix="v2"), "parquet"),
             _put(s3, "models/ctr/b.parquet", inference_rows(10, id_prefix="b"), "parquet")]
    results = _batch(lake, job, s3, batch)
    assert [(r.status, r.replaced) for r in results] == [("imported", False), ("imported", False),
                                                          ("imported", True), ("imported", False)]
    table = lake.catalog.load_table(job.table_identifier)
    committed = [[uri.rsplit("/", 1)[1] for uri, _, _ in source_files(s.summary)] for s in table.snapshots()]
    assert [c for c in committed if c] == [["day.parquet"], ["a.parquet", "b.parquet"], ["wide.parquet"],
                                           ["day.parquet"]]
    data = _scan(lake, job)
    ids = data["prediction_id"].to_pylist()
    assert len(ids) == 55 and not any(i.startswith("v1") for i in ids)
    assert data.filter(pc.starts_with(data["prediction_id"], "w"))["feature_new"].to_pylist() == [2.5] * 10
    # handed over by the batch, not tried twice: one attempt each in the ledger (obslake status shows it)
    assert [lake.ledger.get(job.name, info)["attempts"] for info in batch] == [1, 1, 1, 1]


def test_a_batch_commit_conflict_retries_without_duplicates(lake, s3, make_job):
    job = make_job(s3.uri("models/ctr/"))
    seed = _put(s3, "models/ctr/seed.parquet", inference_rows(5, id_prefix="seed"), "parquet")
    assert import_file(job, s3, seed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    infos = [_put(s3, f"models/ctr/f{i}.parquet", inference_rows(10, id_prefix=f"f{i}"), "parquet") for i in range(4)]
    pending = [_put(s3, "models/ctr/rival.parquet", inference_rows(7, id_prefix="r"), "parquet")]

    def rival_commits(key):  # another worker commits while the batch reads its files
        if pending and key == infos[-1].key:
            assert import_file(job, s3, pending.pop(), catalog=lake.catalog, ledger=lake.ledger).status == "imported"

    results = _batch(lake, job, _Interfering(s3, rival_commits), infos)
    assert {r.status for r in results} == {"imported"} and not pending
    data = _scan(lake, job)
    assert data.num_rows == 5 + 40 + 7 and pc.count_distinct(data["prediction_id"]).as_py() == 52
    assert len({lake.ledger.get(job.name, i)["snapshot_id"] for i in infos}) == 1


def test_a_transient_error_leaves_one_file_pending_and_the_others_commit(lake, s3, make_job):
    from obslake.exceptions import TransientError

    job = make_job(s3.uri("models/ctr/"))
    seed = _put(s3, "models/ctr/seed.parquet", inference_rows(5, id_prefix="seed"), "parquet")
    assert import_file(job, s3, seed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    infos = [_put(s3, f"models/ctr/f{i}.parquet", inference_rows(10, id_prefix=f"f{i}"), "parquet") for i in range(4)]
    flaky = {infos[1].key}

    def network_down(key):
        if key in flaky:
            raise ConnectionError("connection reset by peer")

    with pytest.raises(TransientError, match=r"1 of 4 file\(s\) hit a transient error(.|\n)*f1\.parquet"):
        _batch(lake, job, _Interfering(s3, network_down), infos)
    assert _scan(lake, job).num_rows == 5 + 30
    row = lake.ledger.get(job.name, infos[1])
    assert row["status"] == "pending" and "connection reset" in row["error"]
    flaky.clear()  # the task's retry
    results = _batch(lake, job, s3, infos)
    assert [r.status for r in results] == ["already-imported", "imported", "already-imported", "already-imported"]
    assert _scan(lake, job).num_rows == 45 and lake.ledger.counts(job.name)["succeeded"] == 5


@pytest.mark.parametrize("fault", ["batch-after-write", "batch-after-commit"])
def test_kill_9_in_a_batch_then_retry_is_exactly_once(lake, s3, make_job, moto_server, fault):
    job = make_job(s3.uri("models/ctr/"))
    seed = _put(s3, "models/ctr/seed.parquet", inference_rows(5, id_prefix="seed"), "parquet")
    assert import_file(job, s3, seed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    infos = [_put(s3, f"models/ctr/f{i}.parquet", inference_rows(100, id_prefix=f"f{i}"), "parquet")
             for i in range(5)]
    crashed = _worker(lake, moto_server, job, infos, fault=fault, batch=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    committed = fault == "batch-after-commit"
    assert _scan(lake, job).num_rows == 5 + (500 if committed else 0)
    assert {lake.ledger.get(job.name, i)["status"] for i in infos} == {"pending"}
    retry = _worker(lake, moto_server, job, infos, batch=True)
    assert retry.returncode == 0, retry.stderr[-2000:]
    results = [json.loads(line) for line in retry.stdout.strip().splitlines()]
    assert [r["status"] for r in results] == ["already-imported" if committed else "imported"] * 5
    data = _scan(lake, job)
    assert data.num_rows == 505 and pc.count_distinct(data["prediction_id"]).as_py() == 505
    assert {(lake.ledger.get(job.name, i)["status"], lake.ledger.get(job.name, i)["rows"]) for i in infos} == {
        ("succeeded", 100)}


_KINDS = ("parquet", "csv", "avro", "bad", "garbage", "empty", "wider", "wider_bad", "repeat")


def _property_file(store, n: int, kind: str, made: list):
    """File ``n`` of kind ``kind`` under ``store``; (info, rows it must add or None if it must fail)."""
    if kind == "repeat":  # the previous file again (a retried mapping lists a version twice)
        return made[-1] if made else _property_file(store, n, "parquet", made)
    rows = inference_rows(3 + n % 5, id_prefix=f"n{n}")
    if kind in ("bad", "wider_bad"):
        pylist = rows.to_pylist()
        pylist[-1]["prediction_id"] = None
        rows = pa.Table.from_pylist(pylist, rows.schema)
    if kind in ("wider", "wider_bad"):
        rows = rows.append_column("feature_new", pa.array([0.5] * rows.num_rows))
    if kind == "garbage":
        return store.write(f"f{n}.parquet", b"PAR1 garbage"), None
    if kind == "empty":
        return store.write(f"f{n}.csv", (",".join(rows.column_names) + "\n").encode()), None
    fmt = {"csv": "csv", "avro": "avro"}.get(kind, "parquet")
    info = store.write(f"f{n}.{fmt}", to_bytes(rows, fmt))
    return info, (None if kind in ("bad", "wider_bad") else rows.num_rows)


@pytest.mark.slow
def test_batches_of_any_mix_import_every_good_file_exactly_once(make_job, tmp_path_factory):
    """Hypothesis: any mix of good, bad, wider (new column) and repeated files, split into batches of any size and
    imported with a rerun or not: each good file's rows exactly once, each bad file failed with nothing of it
    in the table (not even its new column), the ledger agreeing."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_files, plan_batches
    from obslake.lake.ledger import Ledger
    from obslake.storage.local import LocalStore

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=12), max_files=st.integers(1, 6),
           rerun=st.booleans())
    @example(kinds=["parquet", "csv", "repeat", "wider_bad", "avro"], max_files=5, rerun=False)
    def check(kinds, max_files, rerun):
        d = tmp_path_factory.mktemp("batch")
        store = LocalStore(str(d / "in"))
        settings_ = LakeSettings.from_env({"OBSLAKE_HOME": str(d / "lake")})
        catalog, ledger = load_catalog(settings_), Ledger(settings_.state_uri)
        job = make_job(store.uri())
        made, listed = [], []
        for n, kind in enumerate(kinds):
            info, rows = _property_file(store, n, kind, made)
            listed.append(info)
            if kind != "repeat" or not made:
                made.append((info, rows))
        for _ in range(2 if rerun else 1):
            for batch in plan_batches(listed, max_files, 10**9, 10**9):
                import_files(job, store, batch, catalog=catalog, ledger=ledger)
        good = {store.uri(i.key): rows for i, rows in made if rows is not None}
        failed = [i for i, rows in made if rows is None]
        table = catalog.load_table(job.table_identifier) if good else None
        data = table.scan().to_arrow() if table is not None else None
        counts = {}
        if data is not None:
            counts = dict(zip(*data.group_by("_source_file").aggregate([("prediction_id", "count")])
                              .select(["_source_file", "prediction_id_count"]).to_pydict().values()))
        assert counts == good
        if data is not None:
            assert pc.count_distinct(data["prediction_id"]).as_py() == data.num_rows
            wider_good = any(k == "wider" for k in kinds)
            assert ("feature_new" in table.schema().column_names) == wider_good
        assert ledger.counts(job.name) == {"pending": 0, "succeeded": len(good), "failed": len(failed)}
        for info in failed:
            assert ledger.get(job.name, info)["code"] in ("ID_MISSING", "FILE_CORRUPT", "FILE_EMPTY")

    check()


def test_plan_batches_keeps_every_file_once_within_the_limits():
    """Hypothesis: any sizes and limits: each file in exactly one batch, small files in their order, no batch
    over max_files, none over max_bytes unless it is one file, every large file alone."""
    import datetime as dt

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from obslake.lake.importer import plan_batches
    from obslake.storage.base import ObjectInfo

    @settings(max_examples=300, deadline=None)
    @given(sizes=st.lists(st.integers(0, 1000), max_size=60), max_files=st.integers(1, 10),
           max_bytes=st.integers(1, 3000), large=st.integers(0, 1200))
    def check(sizes, max_files, max_bytes, large):
        files = [ObjectInfo("b", f"k{i}", f"e{i}", size, dt.datetime(2026, 1, 1)) for i, size in enumerate(sizes)]
        batches = plan_batches(files, max_files, max_bytes, large)
        assert sorted(f.key for b in batches for f in b) == sorted(f.key for f in files)
        small = [f.key for b in batches for f in b if not (len(b) == 1 and (f.size > large or max_files == 1))]
        assert small == [f.key for f in files if f.size <= large and max_files > 1 and f.key in small]
        for b in batches:
            assert b and len(b) <= max_files
            assert len(b) == 1 or sum(f.size for f in b) <= max_bytes
            assert len(b) == 1 or all(f.size <= large for f in b)

    check()


def test_a_file_committed_by_another_worker_during_the_batch_is_never_committed_twice(lake, s3, make_job):
    """While a batch reads its files, another worker imports one of them alone (a zombie task, an overlapping
    retry): the batch's commit conflicts, sees that file committed, and its files go alone: none lost, none
    twice, the ledger repaired from the other worker's snapshot."""
    job = make_job(s3.uri("models/ctr/"))
    seed = _put(s3, "models/ctr/seed.parquet", inference_rows(5, id_prefix="seed"), "parquet")
    assert import_file(job, s3, seed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    infos = [_put(s3, f"models/ctr/f{i}.parquet", inference_rows(10, id_prefix=f"f{i}"), "parquet") for i in range(4)]
    rival = [infos[0]]

    def another_worker(key):
        if rival and key == infos[-1].key:
            assert import_file(job, s3, rival.pop(), catalog=lake.catalog, ledger=lake.ledger).status == "imported"

    results = _batch(lake, job, _Interfering(s3, another_worker), infos)
    assert [r.status for r in results] == ["already-imported", "imported", "imported", "imported"]
    data = _scan(lake, job)
    assert data.num_rows == 45 and pc.count_distinct(data["prediction_id"]).as_py() == 45
    assert {lake.ledger.get(job.name, i)["status"] for i in infos} == {"succeeded"}
