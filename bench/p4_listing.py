"""P4: one sensor poll over a prefix of already-imported files vs a raw ``list_objects_v2``.

A moto S3 server on loopback holds N small objects under one prefix (N = 100,000; 2,000 with
OBSLAKE_BENCH_QUICK=1), every one recorded as succeeded in the ledger (``Ledger.mark_succeeded``,
SQLite state DB, as in the embedded default). Then, alternating, median of 3 each:

* baseline: a paginated ``list_objects_v2`` of the prefix (1,000 keys a page) with boto3, using the very
  client the sensor uses (built by ``store_for`` from the Airflow connection ``aws_default``), consuming
  every key;
* ours: one sensor poll, ``obslake.triggers.prefix._poll`` (what ``NewFilesTrigger`` runs per poll in a
  worker thread): ``find_new_files`` = list + ledger ``done_versions`` + diff; it must find 0 new files.

Target: ours / baseline <= 1.5.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import median_of, quick, report, timed

N_FULL = 100_000
N_QUICK = 2_000
PREFIX = "in/"
CREATE_BUDGET_S = 600.0  # stop creating objects after ~10 minutes and measure what exists


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process (its own GIL) on 127.0.0.1; (process, endpoint URL)."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _isolate() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="obslake-bench-p4-", dir="/work" if os.access("/work", os.W_OK) else None))
    env = {
        "OBSLAKE_HOME": str(scratch / "lake"), "AIRFLOW_HOME": str(scratch / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9",
    }
    os.environ.update(env)
    for k in ("AWS_PROFILE", "OBSLAKE_CATALOG_URI", "OBSLAKE_STATE_URI", "OBSLAKE_WAREHOUSE", "OBSLAKE_CATALOG_TYPE",
              "OBSLAKE_CATALOG_PROPERTIES", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(k, None)
    (scratch / "airflow").mkdir(parents=True)
    return scratch


def main() -> None:
    n_target = N_QUICK if quick() else N_FULL
    scratch = _isolate()
    # The ledger (SQLite) on tmpfs: 100k one-commit-each mark_succeeded calls on this disk run at ~60/s
    # (an fsync per commit). Reads are from the page cache either way.
    shm = Path(tempfile.mkdtemp(prefix="obslake-bench-p4-", dir="/dev/shm")) if os.path.isdir("/dev/shm") else scratch
    os.environ["OBSLAKE_STATE_URI"] = f"sqlite:///{shm / 'ledger.db'}"
    server, endpoint = start_moto()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})
    try:
        import boto3
        from botocore.config import Config

        from obslake.airflow_support import job_to_dict
        from obslake.config import ImportJob
        from obslake.lake.catalog import LakeSettings
        from obslake.lake.discovery import find_new_files
        from obslake.lake.ledger import Ledger
        from obslake.storage.base import ObjectInfo
        from obslake.triggers import prefix as trig

        bucket = "obslake-bench-p4"
        loader = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            config=Config(max_pool_connections=64, s3={"addressing_style": "path"},
                          retries={"mode": "standard", "max_attempts": 5}))
        loader.create_bucket(Bucket=bucket)
        job = ImportJob.model_validate({
            "name": "bench_p4", "source": f"s3://{bucket}/{PREFIX}", "conn_id": "aws_default",
            "model": {"space": "bench", "name": "p4", "type": "score_categorical", "environment": "production"},
            "ingestion_key_variable": "obslake_bench_key",
            "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts",
                       "prediction_label": "predicted_label", "prediction_score": "predicted_score",
                       "features": {"prefix": "feature_"}, "tags": ["region"]},
        })
        fingerprint = job.schema_.fingerprint()
        ledger = Ledger(LakeSettings.from_env().state_uri)

        # -- create the objects (parallel PUTs) and, concurrently, their ledger rows -----------------
        # (Ledger.mark_succeeded, one call per object, in one writer thread fed as PUTs complete)
        t0 = time.perf_counter()
        created: list[ObjectInfo] = []
        body = b"PAR1" + os.urandom(60) + b"PAR1"  # only the listing is measured; contents never read
        todo: queue.Queue = queue.Queue()
        marked = [0, 0.0]

        def put(i: int) -> ObjectInfo:
            key = f"{PREFIX}{i % 100:02d}/{i // 100 % 100:02d}/part-{i:07d}.parquet"
            resp = loader.put_object(Bucket=bucket, Key=key, Body=body)
            return ObjectInfo(bucket, key, resp["ETag"].strip('"'), len(body), dt.datetime.now(dt.timezone.utc))

        def mark() -> None:
            while (info := todo.get()) is not None:
                ledger.mark_succeeded(job.name, info, rows=100, table_name="bench.p4__production", snapshot_id=1,
                                      fingerprint=fingerprint)
                marked[0] += 1
            marked[1] = time.perf_counter() - t0

        writer = threading.Thread(target=mark, daemon=True)
        writer.start()
        step = 5_000
        with ThreadPoolExecutor(16) as pool:
            for start in range(0, n_target, step):
                if time.perf_counter() - t0 > CREATE_BUDGET_S * 0.8:
                    break
                for info in pool.map(put, range(start, min(n_target, start + step))):
                    created.append(info)
                    todo.put(info)
                print(f"  put {len(created):,} objects, ledger {marked[0]:,} rows ({time.perf_counter() - t0:.0f}s)",
                      flush=True)
        put_s = time.perf_counter() - t0
        todo.put(None)
        writer.join()
        ledger_s = marked[1]
        assert marked[0] == len(created)
        n = len(created)
        print(f"  created {n:,} objects in {put_s:.0f}s, ledger rows in {ledger_s:.0f}s", flush=True)

        # -- the two measurements, on the sensor's own (cached) client ------------------------------
        job_dict = job_to_dict(job)
        store, prefix = trig._cached_store(job.source, job.conn_id)
        client = store.client

        def raw_list() -> int:
            count = 0
            for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
                for obj in page.get("Contents", ()):
                    count += bool(obj["Key"])
            assert count == n, (count, n)
            return count

        def poll() -> None:
            files, total, _receipts = trig._poll(job_dict)
            assert files == [] and total == 0, (len(files), total)

        raw_list(), poll()  # warm-up: connection pool, ledger engine
        base_vals: list[float] = []
        ours_vals: list[float] = []

        def one_base() -> float:
            v = timed(raw_list)
            base_vals.append(v)
            return v

        def one_ours() -> float:
            v = timed(poll)
            ours_vals.append(v)
            return v

        for _ in range(3):  # alternate so drift hits both alike
            one_base()
            one_ours()
        base = sorted(base_vals)[1]
        ours = sorted(ours_vals)[1]
        # the parts of a poll, for the note
        done_s, _ = median_of(lambda: timed(lambda: ledger.done_versions(job.name, fingerprint)))
        fnf_s, _ = median_of(lambda: timed(lambda: find_new_files(job, store, prefix, Ledger(ledger.uri))))
        ratio = ours / base
        note = (f"{n:,} objects created (16 PUT threads {put_s:.0f}s; {n:,} Ledger.mark_succeeded calls concurrently, done at {ledger_s:.0f}s); "
                f"raw runs {', '.join(f'{v:.2f}' for v in base_vals)}s; poll runs "
                f"{', '.join(f'{v:.2f}' for v in ours_vals)}s; find_new_files alone {fnf_s:.2f}s, of which "
                f"Ledger.done_versions {done_s:.2f}s; moto_server in its own process (loopback), SQLite ledger on /dev/shm (tmpfs)"
                + ("" if n == n_target else f"; reduced from {n_target:,}: creation hit the time budget"))
        report("p4_listing", baseline="raw list_objects_v2 (boto3)", baseline_value=base,
               ours="sensor poll (_poll/find_new_files)", ours_value=ours, ratio=ratio, target="<= 1.5x",
               met=ratio <= 1.5, unit="s", size=f"{n:,} objects", note=note)
    finally:
        stop_moto(server)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
