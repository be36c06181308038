"""P6 - scale-out: the import DAG under Airflow's LocalExecutor with parallelism 1 vs 2.

A real Airflow 3 deployment per run (``bench/airflow_stack.py``): a fresh Postgres metadata database
(a copy of one ``airflow db migrate``-d template), a fresh ``AIRFLOW_HOME``, then ``airflow api-server``,
``airflow dag-processor`` and ``airflow scheduler`` (``AIRFLOW__CORE__EXECUTOR=LocalExecutor``,
``AIRFLOW__CORE__PARALLELISM`` = 1 or 2) as subprocesses. The Iceberg SQL catalog and the import ledger
live in a fresh Postgres database per run too (``OBSLAKE_CATALOG_URI`` = ``OBSLAKE_STATE_URI``), the
warehouse in a fresh local directory.

The DAGs are the project's own ``dags/import_jobs.py`` (``[core] dags_folder`` = ``dags/``), reading
ONE job YAML from the bench's ``OBSLAKE_INCLUDE_DIR``: a ``file://`` source holding 200 Parquet files
of 1,000 rows (20 x 200 in quick mode), bucket "tag" ``arize-ingestion-key`` in ``.obslake-tags.json``
equal to the Airflow Variable given as ``AIRFLOW_VAR_OBSLAKE_BENCH_KEY``; ``schedule: null`` (one
triggered run), ``deferrable: false`` (no triggerer), ``retries: 0`` (a failure shows, it is not
hidden by a retry), the default ``batch`` settings. The run ``obslake_import__bench_scale``:
wait_for_new_files -> verify_bucket_ownership -> validate_files -> import_files (mapped, one task per batch
of small files; all commits go to the same table and race).

Measured: files/s of the ``import_files`` mapped tasks = files / (max(end_date) - min(start_date)) of
their task instances in the metadata DB. That window includes everything Airflow does between those
tasks (queueing, LocalExecutor hand-off, task process start, DAG parse in the task, Execution API
calls), and the table's creation by the first import. Excluded: component start-up, DAG parsing,
triggering and scheduling before the first import task, the sensor, the ownership check and the
validation (the whole run's duration is printed for information).

Checked after each run (assert): the run succeeded, all import_files task instances succeeded at their
first try, the table holds files x rows rows with as many distinct prediction ids, the snapshots of its
current lineage name exactly the source files (``obslake.source-file`` / ``obslake.source-files``), each
once (no lost or duplicated commit), and the ledger has every file ``succeeded`` after a single attempt.

Baseline: parallelism 1, files/s. Ours: parallelism 2, files/s. Ratio = ours / baseline (target >= 1.6).
Also measured (``p6_airflow_overhead``): the same files imported in-process, one process, no Airflow, by the
same batches through ``import_files`` into a fresh Postgres catalog (what the import tasks do, minus
Airflow): files/s of the deployed DAG at parallelism 1 / in-process files/s is Airflow's cost as a ratio.
Median of 3 runs per parallelism (1 in quick mode), p=1 and p=2 interleaved. ``OBSLAKE_BENCH_P6_FILES`` /
``OBSLAKE_BENCH_P6_REPEATS`` override the file count / repeats (for a shorter run; the README figure uses
the defaults). Needs the asyncpg driver (Airflow 3 opens an async engine on a Postgres metadata DB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench import datagen
from bench.airflow_stack import AirflowStack, create_database, drop_database, migrate_template, pg_connect, pg_uri, \
    unique_name
from bench.common import quick, report

FILES = int(os.environ.get("OBSLAKE_BENCH_P6_FILES") or (20 if quick() else 200))
ROWS = 200 if quick() else 1_000
REPEATS = int(os.environ.get("OBSLAKE_BENCH_P6_REPEATS") or (1 if quick() else 3))
PARALLELISM = (1, 2)
PROJECT = Path(__file__).resolve().parent.parent
JOB_NAME = "bench_scale"
DAG_ID = f"obslake_import__{JOB_NAME}"
KEY_VARIABLE = "obslake_bench_key"
KEY = "bench-ingestion-key-0123456789"
TABLE = ("bench", "ctr__production")
TASK = "import_files"
RUN_TIMEOUT = 300 + 15 * FILES  # seconds from trigger to the end of the run: generous on a busy machine
JOB = {
    "name": JOB_NAME, "source": "", "ingestion_key_variable": KEY_VARIABLE, "status": "active",
    "model": {"space": "bench", "name": "ctr", "type": "score_categorical", "environment": "production"},
    "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts", "prediction_label": "predicted_label",
               "prediction_score": "predicted_score", "features": {"prefix": "feature_"}, "tags": ["region"]},
    "formats": ["parquet"], "schedule": None, "deferrable": False, "retries": 0, "poll_interval": 1,
    "sensor_timeout": 300, "max_files_per_run": 1000,
}


def make_files(src: str) -> None:
    """FILES Parquet files of ROWS rows (distinct prediction ids) and the bucket's ownership tag."""
    import datetime as dt

    base = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    for f in range(FILES):
        ids = range(f * ROWS, (f + 1) * ROWS)
        pq.write_table(pa.table({
            "prediction_id": [f"p-{i}" for i in ids],
            "prediction_ts": pa.array([base + dt.timedelta(seconds=i % 86000) for i in ids], pa.timestamp("us", tz="UTC")),
            "feature_x": [float(i) for i in ids], "feature_city": [["paris", "lima", "oslo"][i % 3] for i in ids],
            "region": ["eu"] * ROWS, "predicted_label": [["a", "b"][i % 2] for i in ids],
            "predicted_score": [(i % 100) / 100 for i in ids]}), os.path.join(src, f"f{f:04d}.parquet"))
    with open(os.path.join(src, ".obslake-tags.json"), "w") as fh:  # LocalStore's bucket tags
        json.dump({"arize-ingestion-key": KEY}, fh)


_SRC: list[str] = []


def batches() -> list:
    """The batches the validate step plans for the bench's files (the job's default batch settings)."""
    from obslake.config import ImportJob
    from obslake.lake.importer import plan_batches
    from obslake.storage.local import LocalStore

    store = LocalStore(_SRC[0])
    job = ImportJob.model_validate({**JOB, "source": store.uri()})
    infos = sorted((store.head(k) for k in os.listdir(_SRC[0]) if k.endswith(".parquet")), key=lambda i: i.key)
    return plan_batches(infos, job.batch.max_files, job.batch.max_bytes, job.batch.large_file_bytes)


def in_process(src: str, d: Path, n: int) -> float:
    """files/s of the same batches imported in this process through ``import_files`` (no Airflow), into a
    fresh Postgres catalog + ledger and a fresh warehouse, as the import tasks do; checked exactly-once."""
    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_files
    from obslake.lake.ledger import Ledger
    from obslake.storage.local import LocalStore

    lake_db = unique_name("obslake_bench_inproc")
    create_database(lake_db)
    work = d / f"inproc-{n}"
    (work / "warehouse").mkdir(parents=True)
    lake_env = {"OBSLAKE_CATALOG_URI": pg_uri(lake_db), "OBSLAKE_STATE_URI": pg_uri(lake_db),
                "OBSLAKE_WAREHOUSE": f"file://{work / 'warehouse'}", "OBSLAKE_HOME": str(work / "home")}
    try:
        settings = LakeSettings.from_env(lake_env)
        catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
        store = LocalStore(src)
        job = ImportJob.model_validate({**JOB, "source": store.uri()})
        t = time.monotonic()
        for batch in batches():
            import_files(job, store, batch, catalog=catalog, ledger=ledger)
        secs = time.monotonic() - t
        ledger.engine.dispose()
        engine = getattr(catalog, "engine", None)
        if engine is not None:
            engine.dispose()
        verify(lake_env, src, 1)
        print(f"  in-process #{n + 1}: {FILES / secs:.2f} files/s ({len(batches())} import_files calls in "
              f"{secs:.1f}s); verified: exactly once", flush=True)
        return FILES / secs
    finally:
        drop_database(lake_db)


def write_job(include: Path, src: str) -> None:
    (include / "import_jobs").mkdir(parents=True, exist_ok=True)
    (include / "import_jobs" / f"{JOB_NAME}.yaml").write_text(yaml.safe_dump({**JOB, "source": f"file://{src}/"}))


CELERY_REDIS_DB = 8  # a database of the local Redis for the Celery runs' broker (flushed before each run)


def run_once(src: str, d: Path, template: str, parallelism: int, n: int, workers: int = 0) -> dict:
    """One Airflow deployment, one triggered run; returns its figures (after checking exactly-once).

    ``workers`` > 0: the CeleryExecutor (Redis broker on 127.0.0.1) with that many worker processes of
    ``parallelism`` task slots each, instead of the LocalExecutor with ``parallelism`` slots."""
    work = d / (f"celery{workers}x{parallelism}-{n}" if workers else f"p{parallelism}-{n}")
    include, warehouse = work / "include", work / "warehouse"
    warehouse.mkdir(parents=True)
    write_job(include, src)
    lake_db = unique_name("obslake_bench_lake")
    create_database(lake_db)
    lake_env = {"OBSLAKE_CATALOG_URI": pg_uri(lake_db), "OBSLAKE_STATE_URI": pg_uri(lake_db),
                "OBSLAKE_WAREHOUSE": f"file://{warehouse}", "OBSLAKE_HOME": str(work / "obslake-home"),
                "OBSLAKE_INCLUDE_DIR": str(include)}
    env = {**lake_env, f"AIRFLOW_VAR_{KEY_VARIABLE.upper()}": KEY}
    if workers:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=CELERY_REDIS_DB).flushdb()
        env.update({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{CELERY_REDIS_DB}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(parallelism),
                    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "obslake.celery_config.CELERY_CONFIG"})
    slots = parallelism * max(workers, 1)
    try:
        with AirflowStack(work / "airflow", template=template, parallelism=slots, dags_folder=PROJECT / "dags",
                          env=env) as stack:
            t0 = time.monotonic()
            if workers:
                stack.env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            stack.start()
            if workers:
                stack.start_celery_workers(workers, concurrency=parallelism)
            stack.wait_for_dag(DAG_ID)
            t_ready = time.monotonic()
            run_id = stack.trigger(DAG_ID, f"bench_p{parallelism}_{n}")
            state = stack.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT, watch_task=TASK)
            if state != "success":
                raise AssertionError(f"run {run_id} (parallelism {parallelism}) ended {state}\n"
                                     f"{stack.failure_report(DAG_ID, run_id)}")
            tis = [t for t in stack.task_instances(DAG_ID, run_id) if t["task_id"] == TASK]
            bad = [t for t in tis if t["state"] != "success" or t["try_number"] != 1]
            if len(tis) != len(batches()) or bad:
                raise AssertionError(f"{len(tis)} {TASK} task instances (want {len(batches())}), not successful at "
                                     f"the first try: {bad[:10]}\n{stack.failure_report(DAG_ID, run_id)}")
            first, last = min(t["start_date"] for t in tis), max(t["end_date"] for t in tis)
            span = (last - first).total_seconds()
            task_secs = [(t["end_date"] - t["start_date"]).total_seconds() for t in tis]
            queued, started, ended = stack.run_times(DAG_ID, run_id)
            run_secs = (ended - (queued or started)).total_seconds()
            lead = (first - (queued or started)).total_seconds()
            setup = t_ready - t0
            logs = (stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}").glob(f"task_id={TASK}/*/*.log")
            conflicts = sum(p.read_text(errors="replace").count("commit conflict") for p in logs)
        verify(lake_env, src, slots)
        out = {"files_per_s": FILES / span, "span": span, "run": run_secs, "lead": lead, "setup": setup,
               "task_median": statistics.median(task_secs), "conflicts": conflicts, "tasks": len(tis)}
        print(f"  {f'{workers} Celery worker(s) x {parallelism} slots' if workers else f'parallelism {parallelism}'}"
              f" #{n + 1}: {out['files_per_s']:.2f} files/s ({FILES} files in {len(tis)} "
              f"{TASK} tasks "
              f"in {span:.1f}s, median task {out['task_median']:.2f}s, {conflicts} commit conflict(s) retried in "
              f"the tasks); whole run {run_secs:.1f}s ({lead:.1f}s before the first import); stack start + parse "
              f"{setup:.0f}s; verified: exactly once", flush=True)
        return out
    finally:
        drop_database(lake_db)


def verify(lake_env: dict[str, str], src: str, parallelism: int) -> None:
    """Exactly once: rows, distinct ids, one lineage snapshot per source file, ledger all succeeded."""
    import pyarrow.compute as pc
    from pyiceberg.catalog import load_catalog

    from obslake.lake.catalog import CATALOG_NAME, LakeSettings
    from obslake.lake.importer import source_files

    settings = LakeSettings.from_env(lake_env)
    catalog = load_catalog(CATALOG_NAME, **settings.properties)  # not obslake's per-process cache: disposed below
    try:
        table = catalog.load_table(TABLE)
        data = table.scan(selected_fields=("prediction_id",)).to_arrow()
        assert data.num_rows == FILES * ROWS, f"{data.num_rows} rows, want {FILES * ROWS}"
        distinct = pc.count_distinct(data["prediction_id"]).as_py()
        assert distinct == FILES * ROWS, f"{distinct} distinct prediction ids, want {FILES * ROWS}"
        lineage, snap = [], table.current_snapshot()
        while snap is not None:
            lineage.append(snap)
            snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
        committed = [uri for s in lineage for uri, _etag, _rows in source_files(s.summary)]
        want = {f"file://{src}/{k}" for k in os.listdir(src) if k.endswith(".parquet")}
        dupes = sorted({f for f in committed if committed.count(f) > 1})
        assert not dupes, f"committed more than once: {dupes[:10]}"
        assert set(committed) == want, (f"lost: {sorted(want - set(committed))[:10]}, "
                                        f"unexpected: {sorted(set(committed) - want)[:10]}")
        # the table's first file is committed alone, then the rest of its batch; with parallelism > 1 each task
        # that starts before the table exists does so (the data checks above are what exactly-once means)
        least = len(batches()) + 1
        assert least <= len(table.snapshots()) <= least + parallelism - 1, (
            f"{len(table.snapshots())} snapshots, want {least} to {least + parallelism - 1}")
    finally:
        engine = getattr(catalog, "engine", None)
        if engine is not None:
            engine.dispose()
    conn = pg_connect(settings.state_uri.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status, attempts, count(*), sum(rows) FROM obslake_import_ledger WHERE job = %s "
                        "GROUP BY 1, 2", (JOB_NAME,))
            ledger = cur.fetchall()
    finally:
        conn.close()
    assert ledger == [("succeeded", 1, FILES, FILES * ROWS)], f"ledger (status, attempts, files, rows): {ledger}"


@contextlib.contextmanager
def prepared() -> Iterator[tuple[str, Path, str]]:
    """(source folder with the files, bench folder, migrated template metadata DB); all removed after."""
    d = Path(datagen.bench_dir())
    template = None
    try:
        src = str(d / "src")
        os.makedirs(src)
        make_files(src)
        _SRC.append(src)
        t = time.monotonic()
        template = migrate_template(d)
        print(f"airflow db migrate (template metadata DB): {time.monotonic() - t:.0f}s", flush=True)
        yield src, d, template
    finally:
        if template:
            drop_database(template)
        shutil.rmtree(d, ignore_errors=True)


def compare(src: str, d: Path, template: str, configs: dict[str, dict]) -> tuple[dict[str, float], list[float], str,
                                                                                str]:
    """Each configuration (``run_once`` keyword arguments, by label) ``REPEATS`` times, interleaved so that a
    change in the machine's load hits all alike, then the in-process loop as often. Returns (median files/s by
    label, in-process files/s per run, the batch plan, every run's figures as text)."""
    runs: dict[str, list[dict]] = {label: [] for label in configs}
    for n in range(REPEATS):
        for label, kwargs in configs.items():
            runs[label].append(run_once(src, d, template, n=n, **kwargs))
    local = [in_process(src, d, n) for n in range(REPEATS)]
    med = {label: statistics.median(r["files_per_s"] for r in runs[label]) for label in configs}
    plan = f"{FILES} files in {len(batches())} batches (default batch settings)"
    per_run = "; ".join(
        f"{label}: " + ", ".join(f"{r['files_per_s']:.2f} files/s ({r['span']:.0f}s, run {r['run']:.0f}s, "
                                 f"{r['conflicts']} conflicts)" for r in runs[label]) for label in configs)
    return med, local, plan, per_run


def main() -> None:
    with prepared() as (src, d, template):
        configs = {f"p={p}": {"parallelism": p} for p in PARALLELISM}
        by_label, local, plan, per_run = compare(src, d, template, configs)
        med = {p: by_label[f"p={p}"] for p in PARALLELISM}
        ratio = med[2] / med[1]
        report("p6_scale_out", baseline="Airflow LocalExecutor parallelism 1", baseline_value=med[1],
               ours="Airflow LocalExecutor parallelism 2", ours_value=med[2], ratio=ratio, target=">= 1.6",
               met=ratio >= 1.6, unit="files/s",
               size=f"{FILES} files x {ROWS} rows, Airflow LocalExecutor, Postgres metadata DB + Postgres catalog",
               note=f"{plan}; median of {REPEATS} runs per parallelism; files/s = {FILES} / (last {TASK} end - "
                    f"first {TASK} start); every run verified exactly-once (rows, distinct ids, each file in one "
                    f"snapshot, ledger); {os.cpu_count()} cores; {per_run}")
        inproc = statistics.median(local)
        report("p6_airflow_overhead", baseline="in-process import_files loop (same batches, Postgres catalog)",
               baseline_value=inproc, ours="deployed DAG, LocalExecutor parallelism 1", ours_value=med[1],
               ratio=med[1] / inproc, target="(information: Airflow's cost)", met=None, unit="files/s",
               size=f"{FILES} files x {ROWS} rows", note=f"{plan}; median of {REPEATS}; in-process runs: "
               + ", ".join(f"{x:.2f}" for x in local) + " files/s")


if __name__ == "__main__":
    main()
