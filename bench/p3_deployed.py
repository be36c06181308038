"""P3-deployed and P3-event: upload -> queryable in a real Airflow deployment.

One Airflow 3 deployment (``bench/airflow_stack.py``: api-server, dag-processor, scheduler with the
LocalExecutor, triggerer; Postgres metadata DB), the project's own ``dags/import_jobs.py``, a moto server in
its own process (S3 + SQS on loopback), the lake's catalog and ledger in a fresh Postgres database, a local
warehouse. Two jobs, each on its own bucket, both deferrable and ``@continuous`` (one run waiting at a time):

* ``p3poll``: discovery by listing, ``poll_interval`` 10 s (Arize's interval);
* ``p3event``: ``notifications`` (the bucket sends ``s3:ObjectCreated:*`` to an SQS queue; the trigger
  long-polls it, ``wait_seconds`` 5; the full listing every hour).

Per job: one warm-up upload (creates the table; not counted), then ``OBSLAKE_BENCH_P3_UPLOADS`` (default 10)
uploads of a 1,000-row Parquet file, one at a time: the bench waits until the job's current run has its
sensor deferred in the triggerer, waits a uniformly random 0-10 s more (so an upload falls anywhere in the
poll cycle), PUTs the file, and waits for its ledger row to turn ``succeeded`` (written right after the
Iceberg commit: from then on the rows are queryable). Latency = ledger ``finished_at`` - end of the PUT
(both on this machine's clock).

Per-stage breakdown (medians, from the task instances of the run that imported the file): detection and
sensor resume (PUT -> sensor end), ownership check, validation, import (validation end -> commit recorded).
Checked at the end: each table holds every uploaded file's rows exactly once (pyiceberg scan: rows and
distinct prediction ids).

Ratios: p50 / target (P3-deployed: 12 s with the 10 s poll; P3-event: 5 s); met when <= 1. The poll interval
is the baseline printed beside it (the latency floor of listing: an upload waits half a poll on average).

``OBSLAKE_PRELOAD=0`` in the environment turns the scheduler's warm start off in the deployment (to measure
what it saves).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from bench.airflow_stack import AirflowStack, create_database, drop_database, migrate_template, pg_connect, pg_uri, \
    unique_name
from bench.common import quick, report
from bench.p3_latency import ROWS, _parquet
from bench.p4_listing import start_moto, stop_moto

PROJECT = Path(__file__).resolve().parent.parent
UPLOADS = int(os.environ.get("OBSLAKE_BENCH_P3_UPLOADS") or (3 if quick() else 10))
POLL = 10.0
KEY_VARIABLE = "obslake_bench_key"
KEY = "bench-ingestion-key-p3"
QUEUE = "obslake-p3-events"
JOB = {
    "ingestion_key_variable": KEY_VARIABLE, "conn_id": "aws_default", "deferrable": True, "poll_interval": POLL,
    "sensor_timeout": 3600, "retries": 0, "formats": ["parquet"],
    "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts", "prediction_label": "predicted_label",
               "prediction_score": "predicted_score", "features": {"prefix": "feature_"}, "tags": ["region"]},
}
TARGETS = {"p3poll": 12.0, "p3event": 5.0}


def _job(name: str, bucket: str, **extra) -> dict:
    return {**JOB, "name": name, "source": f"s3://{bucket}/in/",
            "model": {"space": "bench", "name": name, "type": "score_categorical", "environment": "production"},
            **extra}


def _wait(what: str, check, timeout: float, stack: AirflowStack):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.diagnostics(('scheduler', 'triggerer'))}")
        stack.check_alive()
        time.sleep(0.1)


def _sensor_deferred(stack: AirflowStack, dag_id: str) -> bool:
    rows = stack.query("SELECT t.state FROM task_instance t JOIN dag_run r ON r.dag_id = t.dag_id AND "
                       "r.run_id = t.run_id WHERE t.dag_id = %s AND t.task_id = 'wait_for_new_files' AND "
                       "r.state = 'running' ORDER BY r.id DESC LIMIT 1", (dag_id,))
    return bool(rows) and rows[0][0] == "deferred"


def _ledger_finished(conn, job: str, key: str) -> dt.datetime | None:
    with conn.cursor() as cur:
        cur.execute("SELECT finished_at FROM obslake_import_ledger WHERE job = %s AND key = %s AND "
                    "status = 'succeeded'", (job, key))
        row = cur.fetchone()
    return row[0] if row else None


def _stages(stack: AirflowStack, dag_id: str, put_end: dt.datetime, finished: dt.datetime) -> dict[str, float]:
    """Seconds per stage, from the task instances of the run whose import started after the PUT."""
    rows = stack.query(
        "SELECT t.run_id, t.task_id, min(t.start_date), max(t.end_date) FROM task_instance t "
        "WHERE t.dag_id = %s AND t.run_id = (SELECT t2.run_id FROM task_instance t2 WHERE t2.dag_id = %s AND "
        "t2.task_id = 'import_files' AND t2.start_date > %s ORDER BY t2.start_date LIMIT 1) "
        "GROUP BY t.run_id, t.task_id", (dag_id, dag_id, put_end))
    by = {r[1]: (r[2], r[3]) for r in rows}
    sensor_end, verify_end, valid_end = (by.get(t, (None, None))[1] for t in (
        "wait_for_new_files", "verify_bucket_ownership", "validate_files"))
    if not (sensor_end and verify_end and valid_end):
        return {}
    return {"detect+resume": (sensor_end - put_end).total_seconds(),
            "ownership": (verify_end - sensor_end).total_seconds(),
            "validate": (valid_end - verify_end).total_seconds(),
            "import": (finished - valid_end).total_seconds()}


def _check_exactly_once(lake_env: dict[str, str], table: tuple[str, str], files: int) -> None:
    import pyarrow.compute as pc
    from pyiceberg.catalog import load_catalog

    from obslake.lake.catalog import CATALOG_NAME, LakeSettings

    catalog = load_catalog(CATALOG_NAME, **LakeSettings.from_env(lake_env).properties)
    try:
        ids = catalog.load_table(table).scan(selected_fields=("prediction_id",)).to_arrow()["prediction_id"]
        assert len(ids) == files * ROWS and pc.count_distinct(ids).as_py() == files * ROWS, (table, len(ids))
    finally:
        catalog.engine.dispose()


def main() -> None:
    from obslake.storage.s3 import make_s3_client

    scratch = Path(tempfile.mkdtemp(prefix="obslake-bench-p3d-", dir="/work" if os.access("/work", os.W_OK) else None))
    moto, endpoint = start_moto()
    template = migrate_template(scratch)
    lake_db = unique_name("obslake_bench_p3_lake")
    create_database(lake_db)
    include = scratch / "include"
    (include / "import_jobs").mkdir(parents=True)
    (scratch / "warehouse").mkdir()
    s3 = make_s3_client(endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    import boto3

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    buckets = {"p3poll": "obslake-bench-p3-poll", "p3event": "obslake-bench-p3-event"}
    for b in buckets.values():
        s3.create_bucket(Bucket=b)
        s3.put_bucket_tagging(Bucket=b, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": KEY}]})
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    s3.put_bucket_notification_configuration(Bucket=buckets["p3event"], NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{QUEUE}",
                                 "Events": ["s3:ObjectCreated:*"]}]})
    jobs = {"p3poll": _job("p3poll", buckets["p3poll"]),
            "p3event": _job("p3event", buckets["p3event"], notifications={
                "sqs_queue_url": queue_url, "wait_seconds": 5, "full_listing_interval": 3600})}
    for name, job in jobs.items():
        (include / "import_jobs" / f"{name}.yaml").write_text(yaml.safe_dump(job))
    lake_env = {"OBSLAKE_CATALOG_URI": pg_uri(lake_db), "OBSLAKE_STATE_URI": pg_uri(lake_db),
                "OBSLAKE_WAREHOUSE": f"file://{scratch / 'warehouse'}", "OBSLAKE_HOME": str(scratch / "home"),
                "OBSLAKE_INCLUDE_DIR": str(include)}
    if os.environ.get("OBSLAKE_PRELOAD"):  # e.g. 0: the scheduler's warm start off, to measure what it saves
        lake_env["OBSLAKE_PRELOAD"] = os.environ["OBSLAKE_PRELOAD"]
    # Airflow's own knobs given to this run (e.g. AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME) reach the deployment
    lake_env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__SCHEDULER__")})
    env = {**lake_env, f"AIRFLOW_VAR_{KEY_VARIABLE.upper()}": KEY,
           "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                                                   "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})}
    rng = random.Random(3)
    results: dict[str, list[float]] = {}
    stages: dict[str, list[dict[str, float]]] = {}
    ledger = None
    scheduler_cpu = ""
    try:
        with AirflowStack(scratch / "airflow", template=template, parallelism=4, dags_folder=PROJECT / "dags",
                          env=env) as stack:
            stack.start(triggerer=True)
            for name in jobs:
                stack.wait_for_dag(f"obslake_import__{name}")
            scheduler = psutil.Process(stack.procs["scheduler"].pid)
            cpu0, wall0 = sum(scheduler.cpu_times()[:2]), time.monotonic()
            for name, bucket in buckets.items():
                dag_id = f"obslake_import__{name}"
                lat, st = [], []
                for i in range(UPLOADS + 1):  # the first is the warm-up (creates the table)
                    _wait(f"{dag_id}'s sensor deferred", lambda: _sensor_deferred(stack, dag_id), 300, stack)
                    time.sleep(rng.uniform(0, POLL))
                    body, _ids = _parquet(f"{name}-{i}")
                    key = f"in/{i:03d}.parquet"
                    s3.put_object(Bucket=bucket, Key=key, Body=body)
                    put_end = dt.datetime.now(dt.UTC)
                    ledger = ledger or pg_connect(lake_db)  # (the ledger table exists once a DAG has run)
                    finished = _wait(f"{key} imported", lambda: _ledger_finished(ledger, name, key), 300, stack)
                    seconds = (finished - put_end).total_seconds()
                    if i == 0:
                        print(f"  [{name}] warm-up: {seconds:.1f}s", flush=True)
                        continue
                    lat.append(seconds)
                    st.append(_stages(stack, dag_id, put_end, finished))
                    print(f"  [{name}] upload {i}: {seconds:.1f}s  " + ", ".join(
                        f"{k} {v:.1f}s" for k, v in st[-1].items()), flush=True)
                results[name], stages[name] = lat, st
                _check_exactly_once(lake_env, ("bench", f"{name}__production"), UPLOADS + 1)
            # the scheduler's own process (not its executor's workers or their tasks): what its loop costs
            cpu, wall = sum(scheduler.cpu_times()[:2]) - cpu0, time.monotonic() - wall0
            scheduler_cpu = f"scheduler process CPU {cpu:.0f} s over {wall:.0f} s ({100 * cpu / wall:.0f} % of a core)"
            print(f"  {scheduler_cpu}", flush=True)
    finally:
        if ledger is not None:
            ledger.close()
        drop_database(lake_db)
        drop_database(template)
        stop_moto(moto)
    for name, lat in results.items():
        p50 = statistics.median(lat)
        p95 = sorted(lat)[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        breakdown = {k: statistics.median(s[k] for s in stages[name] if k in s)
                     for k in ("detect+resume", "ownership", "validate", "import") if any(k in s for s in stages[name])}
        target = TARGETS[name]
        report("p3_deployed" if name == "p3poll" else "p3_event", baseline="poll interval", baseline_value=POLL,
               ours="p50 upload->queryable", ours_value=p50, ratio=p50 / target, target=f"p50 <= {target:g}s",
               met=p50 <= target, unit="s", size=f"{UPLOADS} uploads x {ROWS:,} rows, deployed Airflow",
               note=f"{'listing every 10s' if name == 'p3poll' else 'S3 -> SQS notifications, long poll 5s'}; "
                    f"p50 {p50:.1f}s, p95 {p95:.1f}s, all: {', '.join(f'{x:.1f}' for x in lat)}; median stages: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in breakdown.items())
                    + f"; exactly once checked (rows and distinct ids); {scheduler_cpu}")


if __name__ == "__main__":
    main()
