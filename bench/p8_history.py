"""P8 - history growth: does the cost of one import stay flat as a table's history grows?

10,000 Parquet files of 200 rows are imported into ONE table one after another, through ``import_file``
(what the DAG's import task runs), batching off (batching is not built yet). The lake upkeep runs as the
daily ``obslake_maintenance`` DAG would, compressed into the benchmark's time: every
``OBSLAKE_BENCH_P8_UPKEEP_EVERY`` files (default 1,000) ``maintain()`` expires the snapshots older than the
last upkeep (retention = the time since then) and compacts small files.

Ratio: median per-file time of the last 100 files / of files 100-200 (target <= 1.3x). Also printed: the
curve (median ms per 500 files), the current ``metadata.json`` size (target <= 1 MB), and DuckDB
``count(*)`` (planning + scan) at the end vs at 100 files (target <= 1.5x).

``OBSLAKE_BENCH_P8_FILES`` overrides the file count (say so when reporting it).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import time

from bench import datagen
from bench.common import quick, report

FILES = 300 if quick() else int(os.environ.get("OBSLAKE_BENCH_P8_FILES", 10_000))
UPKEEP_EVERY = 100 if quick() else int(os.environ.get("OBSLAKE_BENCH_P8_UPKEEP_EVERY", 1_000))
ROWS = 200


def _duck_count_seconds(metadata_location: str) -> float:
    import glob

    import duckdb

    con = duckdb.connect()
    for pkg in ("duckdb_extension_avro", "duckdb_extension_iceberg"):
        mod = __import__(pkg)
        path = glob.glob(os.path.join(os.path.dirname(mod.__file__), "extensions", f"v{duckdb.__version__}",
                                      "*.duckdb_extension"))[0]
        con.execute(f"LOAD '{path}'")
    values = []
    for _ in range(3):
        t = time.perf_counter()
        con.execute(f"SELECT count(*) FROM iceberg_scan('{metadata_location}')").fetchone()
        values.append(time.perf_counter() - t)
    return statistics.median(values)


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_file
    from obslake.lake.ledger import Ledger
    from obslake.lake.maintenance import Policy, maintain
    from obslake.storage.local import LocalStore

    d = datagen.bench_dir()
    try:
        os.makedirs(os.path.join(d, "in"))
        store = LocalStore(os.path.join(d, "in"))
        job = ImportJob.model_validate(datagen.job_dict(store.uri()))
        settings = LakeSettings.from_env({"OBSLAKE_HOME": os.path.join(d, "lake")})
        catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
        template = next(datagen.chunks(ROWS, chunk=ROWS))
        ids = template.schema.get_field_index("prediction_id")
        times: list[float] = []
        duck_100 = None
        last_upkeep = dt.datetime.now(dt.UTC)
        upkeeps = []
        for i in range(FILES):
            rows = template.set_column(ids, "prediction_id", pa.array([f"f{i}-{r}" for r in range(ROWS)]))
            path = os.path.join(store.root, f"f{i:05d}.parquet")
            pq.write_table(rows, path)
            info = store.head(f"f{i:05d}.parquet")
            t = time.perf_counter()
            result = import_file(job, store, info, catalog=catalog, ledger=ledger)
            times.append(time.perf_counter() - t)
            assert result.status == "imported", result.error
            os.remove(path)
            if i + 1 == 100:
                duck_100 = _duck_count_seconds(catalog.load_table(job.table_identifier).metadata_location)
            if (i + 1) % UPKEEP_EVERY == 0:
                now = dt.datetime.now(dt.UTC)
                t = time.perf_counter()
                r = maintain(catalog, job.table_identifier, Policy(retention=now - last_upkeep), now=now)
                upkeeps.append(time.perf_counter() - t)
                last_upkeep = now
                print(f"  upkeep at {i + 1}: {r.summary()} ({upkeeps[-1]:.1f}s)", flush=True)
            if (i + 1) % (100 if quick() else 500) == 0:
                print(f"  files {i + 1}: median of the last 100 = {statistics.median(times[-100:]) * 1000:.0f} ms",
                      flush=True)
        table = catalog.load_table(job.table_identifier)
        metadata_bytes = os.path.getsize(table.metadata_location.removeprefix("file://"))
        duck_end = _duck_count_seconds(table.metadata_location)
        base = statistics.median(times[100:200])
        ours = statistics.median(times[-100:])
        note = (f"per-file median ms of files 100-200 {base * 1000:.0f}, last 100 {ours * 1000:.0f}; "
                f"metadata.json {metadata_bytes / 1e6:.2f} MB (target <= 1 MB); DuckDB count(*) "
                f"{duck_100:.3f}s at 100 files, {duck_end:.3f}s at {FILES:,} ({duck_end / duck_100:.2f}x, target "
                f"<= 1.5x); upkeep every {UPKEEP_EVERY} files ({', '.join(f'{u:.1f}' for u in upkeeps)}s); "
                f"snapshots at the end {len(table.snapshots())}; batching off (not built)"
                + ("" if FILES == 10_000 else f"; {FILES:,} files, not the target's 10,000"))
        report("p8_history", baseline="import_file per file, files 100-200 (median)", baseline_value=base,
               ours=f"import_file per file, last 100 of {FILES:,} (median)", ours_value=ours, ratio=ours / base,
               target="<= 1.3x", met=ours / base <= 1.3, unit="s", size=f"{FILES:,} files x {ROWS} rows, one table",
               note=note)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
