"""The same import DAG under the CeleryExecutor: Redis broker on 127.0.0.1, two Celery workers (separate processes,
two slots each), Postgres metadata DB and Postgres lake, a warehouse both workers reach. 20 files, one import task
each, spread over both workers: every row once, every file committed once."""

from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from deployed_helpers import PROJECT, lake_env

from bench.airflow_stack import AirflowStack, drop_database, migrate_template

FILES, ROWS = 20, 50
KEY_VARIABLE, KEY = "obslake_celery_key", "celery-ingestion-key-0123456789"
REDIS_DB = 7  # a database of the local Redis for this test's broker (flushed before use)


@pytest.mark.airflow
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_celery_workers_import_every_file_exactly_once(tmp_path):
    pytest.importorskip("airflow.providers.celery", reason="the Celery provider (test extra) is not installed")
    import redis

    from obslake.config import ImportJob
    from obslake.lake.catalog import CATALOG_NAME, LakeSettings
    from obslake.lake.importer import source_files

    src, include, dags = tmp_path / "src", tmp_path / "include", tmp_path / "dags"
    for d in (src, include / "import_jobs", dags):
        d.mkdir(parents=True)
    (src / ".obslake-tags.json").write_text(json.dumps({"arize-ingestion-key": KEY}))
    def write(f: int) -> None:
        ids = range(f * ROWS, (f + 1) * ROWS)
        pq.write_table(pa.table({
            "prediction_id": [f"p-{i}" for i in ids],
            "prediction_ts": pa.array([1_764_000_000_000_000 + i for i in ids], pa.timestamp("us", tz="UTC")),
            "feature_x": [float(i) for i in ids], "predicted_label": ["a"] * ROWS, "predicted_score": [0.5] * ROWS,
        }), src / f"f{f:02d}.parquet")

    write(0)
    job = {"name": "celery", "source": f"file://{src}/", "ingestion_key_variable": KEY_VARIABLE,
           "model": {"space": "cel", "name": "ctr", "type": "score_categorical", "environment": "production"},
           "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts",
                      "prediction_label": "predicted_label", "prediction_score": "predicted_score",
                      "features": {"prefix": "feature_"}},
           "formats": ["parquet"], "schedule": None, "deferrable": False, "retries": 1, "poll_interval": 1,
           "sensor_timeout": 60, "batch": {"max_files": 1}}  # one import task per file: spread over the workers
    (include / "import_jobs" / "celery.yaml").write_text(yaml.safe_dump(job))
    shutil.copy(PROJECT / "dags" / "import_jobs.py", dags / "import_jobs.py")

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    template = migrate_template(tmp_path)
    env, lake_db = lake_env(tmp_path, include, KEY_VARIABLE, KEY, "obslake_test_celery_lake")
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # Airflow's Celery settings plus the workers' warm start (README, "More than one machine")
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "obslake.celery_config.CELERY_CONFIG",
    })
    try:
        with AirflowStack(tmp_path / "airflow", template=template, parallelism=8, dags_folder=dags, env=env) as s:
            # results of Celery tasks in the metadata database (the stack's own)
            s.env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + s.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            s.start()
            workers = s.start_celery_workers(2, concurrency=2)
            s.wait_for_dag("obslake_import__celery")
            # the first run imports one file: it creates the table and its Airflow asset. (Airflow 3.3 creates an
            # asset on its first event, and when two tasks finishing together both create it, the execution API
            # fails the one whose insert loses, a unique violation, after its rows were committed: README, "Known
            # limits". Exactly-once across workers is what this test is about, in the second run.)
            first = s.trigger("obslake_import__celery", "celery_0")
            assert s.wait_for_run("obslake_import__celery", first, timeout=600) == "success", \
                s.failure_report("obslake_import__celery", first)
            for f in range(1, FILES):
                write(f)
            run_id = s.trigger("obslake_import__celery", "celery_1")
            state = s.wait_for_run("obslake_import__celery", run_id, timeout=600)
            assert state == "success", s.failure_report("obslake_import__celery", run_id)
            tis = [t for t in s.task_instances("obslake_import__celery", run_id) if t["task_id"] == "import_files"]
            assert len(tis) == FILES - 1 and all(t["state"] == "success" for t in tis)
            # each worker ran some of them (its log names the task instances it executed)
            ran = {w: len(re.findall(r"run_id=celery_1/task_id=import_files/",
                                     (s.home / f"{w}.log").read_text(errors="replace")))
                   for w in workers}
            assert all(n > 0 for n in ran.values()), (ran, s.diagnostics(tuple(workers)))
            # each worker imported the task modules once, before forking its pool (the warm start)
            warm = {w: len(re.findall(r"obslake preload: imported \d+ module", (s.home / f"{w}.log").read_text(
                errors="replace"))) for w in workers}
            assert all(n == 1 for n in warm.values()), (warm, s.diagnostics(tuple(workers)))

        from pyiceberg.catalog import load_catalog

        catalog = load_catalog(CATALOG_NAME, **LakeSettings.from_env({**os.environ, **env}).properties)
        try:
            table = catalog.load_table(ImportJob.model_validate(job).table_identifier)
            data = table.scan(selected_fields=("prediction_id",)).to_arrow()
            assert data.num_rows == FILES * ROWS and pc.count_distinct(data["prediction_id"]).as_py() == FILES * ROWS
            committed = [uri for snap in table.snapshots() for uri, _etag, _rows in source_files(snap.summary)]
            assert sorted(committed) == sorted(f"file://{src}/f{f:02d}.parquet" for f in range(FILES))  # once each
        finally:
            catalog.engine.dispose()
    finally:
        drop_database(lake_db)
        drop_database(template)
