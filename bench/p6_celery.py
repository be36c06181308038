"""P6 on Celery: the import DAG under the CeleryExecutor, one worker vs two (each with the same task slots).

The deployment, files, job and checks are P6's (``bench/p6_scale_out.py``: 200 Parquet files x 1,000 rows, the
project's own DAG with the default batch settings, Postgres metadata DB, Postgres catalog and ledger, every run
verified exactly-once: rows, distinct ids, each file in one snapshot, the ledger), with the CeleryExecutor: a
Redis broker on 127.0.0.1 (database 8, flushed per run), the Celery result backend in the metadata DB, and
``N`` ``airflow celery worker`` processes of ``OBSLAKE_BENCH_P6_CELERY_SLOTS`` (default 2) task slots each.

Baseline: one worker, files/s of the ``import_files`` tasks (first start to last end). Ours: two workers.
Ratio = ours / baseline (target >= 1.7). Also (information): the two workers against the in-process
``import_files`` loop over the same batches (Airflow's cost). Median of ``OBSLAKE_BENCH_P6_REPEATS`` (default
3) runs each, one and two workers interleaved.
"""

from __future__ import annotations

import os
import statistics

from bench.common import report
from bench.p6_scale_out import FILES, REPEATS, ROWS, TASK, compare, prepared

SLOTS = int(os.environ.get("OBSLAKE_BENCH_P6_CELERY_SLOTS") or 2)
WORKERS = (1, 2)


def main() -> None:
    with prepared() as (src, d, template):
        configs = {f"{w} worker(s)": {"parallelism": SLOTS, "workers": w} for w in WORKERS}
        by_label, local, plan, per_run = compare(src, d, template, configs)
        med = {w: by_label[f"{w} worker(s)"] for w in WORKERS}
        ratio = med[2] / med[1]
        size = f"{FILES} files x {ROWS} rows, CeleryExecutor (Redis broker), {SLOTS} slots per worker, Postgres"
        report("p6_celery", baseline=f"1 Celery worker x {SLOTS} slots", baseline_value=med[1],
               ours=f"2 Celery workers x {SLOTS} slots", ours_value=med[2], ratio=ratio, target=">= 1.7", met=ratio >= 1.7,
               unit="files/s", size=size,
               note=f"{plan}; median of {REPEATS} runs each; files/s = {FILES} / (last {TASK} end - first {TASK} "
                    f"start); every run verified exactly-once; {os.cpu_count()} cores; {per_run}")
        inproc = statistics.median(local)
        report("p6_celery_vs_inprocess", baseline="in-process import_files loop (same batches, Postgres catalog)",
               baseline_value=inproc, ours=f"deployed DAG, 2 Celery workers x {SLOTS} slots", ours_value=med[2],
               ratio=med[2] / inproc, target="(information: Airflow's cost)", met=None, unit="files/s", size=size,
               note=f"{plan}; in-process runs: " + ", ".join(f"{x:.2f}" for x in local) + " files/s")


if __name__ == "__main__":
    main()
