"""P8 - history growth: does the cost of one import stay flat as a table's history grows?

10,000 Parquet files of 200 rows are imported into ONE table one after another through ``import_files`` (what
the DAG's import task runs), twice: batching off (``batch.max_files: 1``, each file its own call and
commit, as one task per file would) and batching on (the default batch settings: 50 files per call and
commit). The lake upkeep runs as the daily ``obslake_maintenance`` DAG would, compressed into the
benchmark's time: every ``OBSLAKE_BENCH_P8_UPKEEP_EVERY`` files (default 1,000) ``maintain()`` expires the
snapshots older than the last upkeep (retention = the time since then) and compacts small files.

Ratio: median per-file time of the last 100 files / of files 100-200 (target <= 1.3x); with batching a
file's time is its batch's time / the files in it. Also printed (information, not the target): the same
first 200 files imported into a fresh table right after the run, and the last 100 against its files
100-200: the machine's speed can drift over a run of half an hour, and this baseline is measured at the
same moment as the last files. Also printed: the curve (median ms per file every 500
files), the current ``metadata.json`` size (target <= 1 MB), and DuckDB ``count(*)`` (planning + scan)
after the last upkeep vs at 100 files (target <= 1.5x).

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


def run(mode: str, max_files: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_files, plan_batches
    from obslake.lake.ledger import Ledger
    from obslake.lake.maintenance import Policy, maintain
    from obslake.storage.local import LocalStore

    d = datagen.bench_dir()
    try:
        os.makedirs(os.path.join(d, "in"))
        store = LocalStore(os.path.join(d, "in"))
        job = ImportJob.model_validate({**datagen.job_dict(store.uri()), "batch": {"max_files": max_files}})
        settings = LakeSettings.from_env({"OBSLAKE_HOME": os.path.join(d, "lake")})
        catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
        template = next(datagen.chunks(ROWS, chunk=ROWS))
        ids = template.schema.get_field_index("prediction_id")
        times: list[float] = []
        duck_100 = None
        last_upkeep = dt.datetime.now(dt.UTC)
        upkeeps = []
        step = job.batch.max_files

        def import_step(prefix: str, first: int, last: int, catalog: object, ledger: Ledger) -> list[float]:
            """Write files ``first`` to ``last`` - 1, import them as one batch, delete them; per-file seconds."""
            infos = []
            for i in range(first, last):
                rows = template.set_column(ids, "prediction_id", pa.array([f"{prefix}{i}-{r}" for r in range(ROWS)]))
                pq.write_table(rows, os.path.join(store.root, f"{prefix}{i:05d}.parquet"))
                infos.append(store.head(f"{prefix}{i:05d}.parquet"))
            [batch] = plan_batches(infos, job.batch.max_files, job.batch.max_bytes, job.batch.large_file_bytes)
            t = time.perf_counter()
            results = import_files(job, store, batch, catalog=catalog, ledger=ledger)
            took = [(time.perf_counter() - t) / len(batch)] * len(batch)
            assert [r.status for r in results] == ["imported"] * len(batch), [r.error for r in results]
            for info in infos:
                os.remove(os.path.join(store.root, info.key))
            return took

        for start in range(0, FILES, step):
            times += import_step("f", start, min(start + step, FILES), catalog, ledger)
            done = len(times)
            if duck_100 is None and done >= 100:
                duck_100 = _duck_count_seconds(catalog.load_table(job.table_identifier).metadata_location)
            if done % UPKEEP_EVERY == 0:
                now = dt.datetime.now(dt.UTC)
                t = time.perf_counter()
                r = maintain(catalog, job.table_identifier, Policy(retention=now - last_upkeep), now=now)
                upkeeps.append(time.perf_counter() - t)
                last_upkeep = now
                print(f"  [{mode}] upkeep at {done}: {r.summary()} ({upkeeps[-1]:.1f}s)", flush=True)
            if done % (100 if quick() else 500) == 0:
                print(f"  [{mode}] files {done}: median ms per file of the last 100 = "
                      f"{statistics.median(times[-100:]) * 1000:.1f}", flush=True)
        # the same 200 first files into a fresh table, now: files 100-200 at the end of the run, so that a
        # drift of the machine's speed over the run is told apart from the cost of the history
        fresh_settings = LakeSettings.from_env({"OBSLAKE_HOME": os.path.join(d, "fresh")})
        fresh_catalog, fresh_ledger = load_catalog(fresh_settings), Ledger(fresh_settings.state_uri)
        fresh: list[float] = []
        for start in range(0, min(200, FILES), step):
            fresh += import_step("g", start, min(start + step, 200), fresh_catalog, fresh_ledger)
        fresh_base = statistics.median(fresh[100:200]) if len(fresh) >= 200 else float("nan")
        table = catalog.load_table(job.table_identifier)
        metadata_bytes = os.path.getsize(table.metadata_location.removeprefix("file://"))
        duck_end = _duck_count_seconds(table.metadata_location)
        base = statistics.median(times[100:200])
        ours = statistics.median(times[-100:])
        curve = ", ".join(f"{n}: {statistics.median(times[n - 100:n]) * 1000:.0f}"
                          for n in range(500, FILES + 1, 500))
        note = (f"{mode}; per-file median ms of files 100-200 {base * 1000:.1f}, last 100 {ours * 1000:.1f}; "
                f"curve (ms per file, median of the 100 before) {curve}; metadata.json {metadata_bytes / 1e6:.2f} MB "
                f"(target <= 1 MB); DuckDB count(*) {duck_100:.3f}s at 100 files, {duck_end:.3f}s at {FILES:,} "
                f"after upkeep ({duck_end / duck_100:.2f}x, target <= 1.5x); upkeep every {UPKEEP_EVERY} files "
                f"({', '.join(f'{u:.1f}' for u in upkeeps)}s); snapshots at the end {len(table.snapshots())}; "
                f"a fresh table's files 100-200 imported after the run: {fresh_base * 1000:.1f} ms per file "
                f"(last 100 / that = {ours / fresh_base:.3f}x: the history's cost without the machine's drift)"
                + ("" if FILES == 10_000 else f"; {FILES:,} files, not the target's 10,000"))
        name = "p8_history" if max_files == 1 else "p8_history_batched"
        report(name, baseline=f"{mode}: per file, files 100-200 (median)", baseline_value=base,
               ours=f"{mode}: per file, last 100 of {FILES:,} (median)", ours_value=ours, ratio=ours / base,
               target="<= 1.3x", met=ours / base <= 1.3 and metadata_bytes <= 1e6 and duck_end / duck_100 <= 1.5,
               unit="s", size=f"{FILES:,} files x {ROWS} rows, one table", note=note)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def batch_sizes() -> None:
    """How the batch size sets the in-process cost per file (what the default ``batch.max_files`` is chosen
    from): 400 files of 200 rows and 200 files of 5,000 rows, into a fresh table per size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from obslake.config import DEFAULT_BATCH_FILES, ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_files
    from obslake.lake.ledger import Ledger
    from obslake.storage.local import LocalStore

    sizes = (1, 10, 25, DEFAULT_BATCH_FILES, 100, 200)
    for rows_per, n in ((200, 40 if quick() else 400), (5_000, 20 if quick() else 200)):
        per_s: dict[int, float] = {}
        for size in sizes:
            d = datagen.bench_dir()
            try:
                os.makedirs(os.path.join(d, "in"))
                store = LocalStore(os.path.join(d, "in"))
                job = ImportJob.model_validate({**datagen.job_dict(store.uri()), "batch": {"max_files": size}})
                settings = LakeSettings.from_env({"OBSLAKE_HOME": os.path.join(d, "lake")})
                catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
                template = next(datagen.chunks(rows_per, chunk=rows_per))
                ids = template.schema.get_field_index("prediction_id")
                infos = []
                for i in range(n):
                    rows = template.set_column(ids, "prediction_id", pa.array([f"f{i}-{r}" for r in range(rows_per)]))
                    pq.write_table(rows, os.path.join(store.root, f"f{i:05d}.parquet"))
                    infos.append(store.head(f"f{i:05d}.parquet"))
                import_files(job, store, infos[:1], catalog=catalog, ledger=ledger)  # creates the table
                t = time.perf_counter()
                for k in range(1, n, size):
                    import_files(job, store, infos[k:k + size], catalog=catalog, ledger=ledger)
                per_s[size] = (n - 1) / (time.perf_counter() - t)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        report(f"p8_batch_sizes_{rows_per}_rows", baseline="files/s, 1 file per commit", baseline_value=per_s[1],
               ours=f"files/s, {DEFAULT_BATCH_FILES} files per commit (the default)",
               ours_value=per_s[DEFAULT_BATCH_FILES], ratio=per_s[DEFAULT_BATCH_FILES] / per_s[1],
               target="(information: the default's choice)", met=None, unit="files/s",
               size=f"{n} files x {rows_per} rows, in-process import_files",
               note="files/s by batch.max_files: " + ", ".join(f"{k}: {v:.1f}" for k, v in per_s.items()))


def main() -> None:
    from obslake.config import DEFAULT_BATCH_FILES

    run("batching off (1 file per commit)", 1)
    run(f"batching on ({DEFAULT_BATCH_FILES} files per commit)", DEFAULT_BATCH_FILES)
    batch_sizes()


if __name__ == "__main__":
    main()
