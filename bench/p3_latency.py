"""P3: upload -> queryable latency through a running deferrable sensor loop.

A moto S3 server (own process, loopback) and the embedded lake (SQLite catalog + ledger, local
warehouse). One thread runs an asyncio event loop as the triggerer does: ``NewFilesTrigger(job,
poll_interval=10).run()`` (serialised and rebuilt, as Airflow stores it); when it yields, the files are
imported as the mapped ``import_file`` task does (``store_for`` + ``load_catalog`` + ``import_file``, in a
worker thread), and a new trigger is armed — continuously.

The main thread uploads a small Parquet file (1,000 rows, unique prediction ids) at a uniformly random
offset within the poll cycle (measured from the start of the last poll), then every 0.1 s refreshes the
Iceberg table and, on a new snapshot, scans it for the file's prediction ids. Latency = end of the
PUT -> first check that sees every id. One warm-up file (creates the table) is not counted.

Measured: trigger wait + poll (list + ledger diff) + event hand-off + import + commit + checker
granularity. NOT measured: Airflow scheduling of the resumed task, worker/task start-up, and the
``verify_bucket_ownership``/``validate_files`` tasks of the DAG.

Baseline: the poll cycle, measured (median time between consecutive poll starts); target p50 <= 1.5x
that (15 s at the default 10 s poll); ratio = p50 / (1.5 x poll cycle).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import random
import shutil
import statistics
import threading
import time

from bench.common import quick, report
from bench.p4_listing import _isolate, start_moto, stop_moto

ROWS = 1_000


def _parquet(tag: str) -> tuple[bytes, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    ids = [f"{tag}-{i}" for i in range(ROWS)]
    table = pa.table({
        "prediction_id": ids,
        "prediction_ts": pa.array([base + dt.timedelta(seconds=i) for i in range(ROWS)], pa.timestamp("us", tz="UTC")),
        "feature_x": pa.array([float(i) for i in range(ROWS)]),
        "feature_city": pa.array([["paris", "lima", "oslo"][i % 3] for i in range(ROWS)]),
        "region": pa.array(["eu"] * ROWS),
        "predicted_label": pa.array([["a", "b"][i % 2] for i in range(ROWS)]),
        "predicted_score": pa.array([i / ROWS for i in range(ROWS)]),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue(), ids


def main() -> None:
    poll_interval = 2.0 if quick() else 10.0
    n_uploads = 3 if quick() else 10
    scratch = _isolate()
    server, endpoint = start_moto()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})
    stop = threading.Event()
    loop_thread: threading.Thread | None = None
    try:
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.expressions import In

        from obslake.airflow_support import job_to_dict
        from obslake.config import ImportJob
        from obslake.hooks import store_for
        from obslake.lake.catalog import LakeSettings, load_catalog
        from obslake.lake.importer import import_file
        from obslake.lake.ledger import Ledger
        from obslake.storage.base import ObjectInfo
        from obslake.storage.s3 import make_s3_client
        from obslake.triggers import prefix as trig

        bucket = "obslake-bench-p3"
        client = make_s3_client(endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=bucket)
        job = ImportJob.model_validate({
            "name": "bench_p3", "source": f"s3://{bucket}/in/", "conn_id": "aws_default",
            "poll_interval": poll_interval,
            "model": {"space": "bench", "name": "p3", "type": "score_categorical", "environment": "production"},
            "ingestion_key_variable": "obslake_bench_key",
            "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts",
                       "prediction_label": "predicted_label", "prediction_score": "predicted_score",
                       "features": {"prefix": "feature_"}, "tags": ["region"]},
        })
        job_dict = job_to_dict(job)
        settings = LakeSettings.from_env()

        # Note when each poll starts (the trigger looks _poll up in its module at every poll).
        poll_starts: list[float] = []
        real_poll = trig._poll

        def recording_poll(*args):
            poll_starts.append(time.monotonic())
            return real_poll(*args)

        trig._poll = recording_poll
        imports: list[tuple[float, float]] = []  # (import started, import finished) per event
        failures: list[str] = []

        def run_import_tasks(files: list[dict]) -> None:  # as IcebergSyncOperator._import, once per mapped file
            started = time.monotonic()
            for f in files:
                store, _ = store_for(job.source, job.conn_id)
                result = import_file(job, store, ObjectInfo.from_dict(f), catalog=load_catalog(settings),
                                     ledger=Ledger(settings.state_uri))
                if result.status != "imported":
                    failures.append(f"{f['key']}: {result.status} {result.error}")
            imports.append((started, time.monotonic()))

        async def sensor_loop() -> None:
            while True:
                _, kwargs = trig.NewFilesTrigger(job_dict, poll_interval=poll_interval).serialize()
                trigger = trig.NewFilesTrigger(**json.loads(json.dumps(kwargs)))  # as the triggerer rebuilds it
                gen = trigger.run()
                event = await gen.__anext__()
                await gen.aclose()
                if event.payload["status"] != "success":
                    failures.append(str(event.payload))
                    return
                await asyncio.to_thread(run_import_tasks, event.payload["files"])

        async def triggerer() -> None:
            task = asyncio.create_task(sensor_loop())
            while not stop.is_set() and not task.done():
                await asyncio.sleep(0.05)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        loop_thread = threading.Thread(target=lambda: asyncio.run(triggerer()), name="triggerer", daemon=True)
        loop_thread.start()

        catalog = load_catalog(settings)
        ident = job.table_identifier
        state = {"table": None, "snap": None}

        def visible(ids: list[str]) -> bool:
            table = state["table"]
            if table is None:
                try:
                    table = state["table"] = catalog.load_table(ident)
                except NoSuchTableError:
                    return False
            else:
                table.refresh()
            snap = table.current_snapshot()
            if snap is None or snap.snapshot_id == state["snap"]:
                return False  # nothing new committed since the last (negative) scan
            state["snap"] = snap.snapshot_id
            found = table.scan(row_filter=In("prediction_id", set(ids)), selected_fields=("prediction_id",)).to_arrow()
            return found.num_rows == len(ids)

        def upload_and_wait(i: int, offset: float | None) -> tuple[float, float]:
            body, ids = _parquet(f"p3u{i}")
            if offset is not None:
                # the re-armed trigger's first poll (it starts right after the previous import finished)
                t_ref = imports[-1][1] if imports else time.monotonic()
                while not poll_starts or poll_starts[-1] < t_ref:
                    time.sleep(0.01)
                time.sleep(max(0.0, poll_starts[-1] + offset - time.monotonic()))
            client.put_object(Bucket=bucket, Key=f"in/2024/u{i:03d}.parquet", Body=body)
            t_put = time.monotonic()
            phase = t_put - max(s for s in poll_starts if s <= t_put) if poll_starts else float("nan")
            deadline = t_put + 20 * poll_interval + 60
            while True:
                if visible(ids):
                    return time.monotonic() - t_put, phase
                if failures or time.monotonic() > deadline:
                    raise RuntimeError(f"file {i} not queryable: {failures or 'timeout'}")
                time.sleep(0.1)

        warm, _ = upload_and_wait(0, None)  # creates the table; not counted
        print(f"  warm-up file (creates the table): {warm:.2f}s", flush=True)
        rng = random.Random(3)
        latencies: list[float] = []
        phases: list[float] = []
        for i in range(1, n_uploads + 1):
            lat, phase = upload_and_wait(i, rng.uniform(0.0, poll_interval))
            latencies.append(lat)
            phases.append(phase)
            print(f"  upload {i}: {phase:5.2f}s into the poll cycle -> queryable after {lat:.2f}s", flush=True)
        gaps = [b - a for a, b in zip(poll_starts, poll_starts[1:]) if b - a > poll_interval * 0.5]
        cycle = statistics.median(gaps)
        import_s = statistics.median(b - a for a, b in imports[1:])
        p50 = statistics.median(latencies)
        p95 = statistics.quantiles(latencies, n=20, method="inclusive")[18]
        target = 1.5 * cycle
        ratio = p50 / target
        note = (f"{n_uploads} uploads of {ROWS}-row Parquet at uniform offsets in the {poll_interval:g}s poll cycle; "
                f"latency p50 {p50:.2f}s, p95 {p95:.2f}s, min {min(latencies):.2f}s, max {max(latencies):.2f}s; "
                f"measured poll cycle {cycle:.2f}s; import_file (store_for+load_catalog+import+commit) median "
                f"{import_s:.2f}s; ratio = p50 / (1.5 x poll cycle). Measured: PUT done -> trigger poll -> event -> "
                f"import_file -> commit -> seen by a 0.1s refresh+scan. NOT measured: Airflow scheduling of the "
                f"resumed sensor and the mapped tasks, worker start-up, verify_bucket_ownership/validate_files")
        report("p3_latency", baseline="poll cycle (measured)", baseline_value=cycle,
               ours="upload->queryable p50", ours_value=p50, ratio=ratio,
               target=f"p50 <= 1.5x poll ({target:.1f} s)", met=ratio <= 1.0, unit="s",
               size=f"{n_uploads} uploads, poll {poll_interval:g}s", note=note)
    finally:
        stop.set()
        if loop_thread is not None:
            loop_thread.join(30)
        stop_moto(server)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
