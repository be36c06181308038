"""P1 - import throughput per format (rows/s), against a pyarrow/fastavro read -> Parquet (zstd) floor.

Data: ~5M synthetic inference rows (prediction id, timestamp, 20 float64 features, 5 string tags,
label, score) as Parquet (~1 GB, 250k-row row groups) and CSV (~2.5 GB); Avro uses 1M rows (its
Python writer/reader make 5M rows too slow for the time box) - the floor and ours read the SAME file.

Floor: read the file in batches (pyarrow ``iter_batches`` / ``open_csv``; ``fastavro.reader`` ->
``RecordBatch.from_pylist`` for Avro) and write the same rows as one local Parquet file with the SAME
encodings and compression the import writes (``obslake.lake.iceberg.parquet_write_options`` for the
tables obslake creates: zstd, dictionary encoding only for the columns the import dictionary-encodes,
the same page and row-group sizes), in chunks of the import's size. pyarrow's defaults would
dictionary-encode every column, a slower floor than the import's own encoding choice.
Ours: ``import_file`` from a ``file://`` LocalStore into a fresh SQLite catalog + local warehouse
(mapping, validation, Iceberg data files, commit). Each repeat uses a fresh lake.

One uncounted warm-up run of each, then 3 runs of each, floor and ours interleaved; medians.

``OBSLAKE_BENCH_P1_ROWS`` / ``OBSLAKE_BENCH_P1_AVRO_ROWS`` override the row counts (to iterate on a
smaller file while profiling; the README table uses the defaults). ``OBSLAKE_BENCH_P1_FORMATS`` (e.g.
``parquet,csv``) runs only some formats.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench import datagen
from bench.common import quick, report, timed

ROWS = 20_000 if quick() else int(os.environ.get("OBSLAKE_BENCH_P1_ROWS", 5_000_000))
AVRO_ROWS = 5_000 if quick() else int(os.environ.get("OBSLAKE_BENCH_P1_AVRO_ROWS", 1_000_000))
OVERRIDDEN = bool(os.environ.get("OBSLAKE_BENCH_P1_ROWS") or os.environ.get("OBSLAKE_BENCH_P1_AVRO_ROWS"))
BATCH = 65_536


def floor_batches(path: str, fmt: str):
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH)
    elif fmt == "csv":
        with pacsv.open_csv(path) as r:
            yield from r
    else:
        import fastavro

        schema = None
        with open(path, "rb") as f:
            buf = []
            for rec in fastavro.reader(f):
                buf.append(rec)
                if len(buf) == BATCH:
                    b = pa.RecordBatch.from_pylist(buf, schema=schema)
                    schema = b.schema
                    yield b
                    buf = []
            if buf:
                yield pa.RecordBatch.from_pylist(buf, schema=schema)


def floor(path: str, fmt: str, out: str) -> int:
    from obslake.lake.iceberg import CHUNK_BYTES, CHUNK_ROWS, DEFAULT_TABLE_PROPERTIES, parquet_write_options

    rows = 0
    writer, row_group_size = None, 0
    chunk: list[pa.RecordBatch] = []

    def flush() -> None:
        nonlocal writer, row_group_size
        table = pa.Table.from_batches(chunk)
        if writer is None:
            options, row_group_size = parquet_write_options(DEFAULT_TABLE_PROPERTIES, table)
            writer = pq.ParquetWriter(out, table.schema, **options)
        writer.write_table(table, row_group_size=row_group_size)
        chunk.clear()

    for b in floor_batches(path, fmt):
        chunk.append(b)
        rows += b.num_rows
        if sum(c.num_rows for c in chunk) >= CHUNK_ROWS or sum(c.nbytes for c in chunk) >= CHUNK_BYTES:
            flush()
    if chunk:
        flush()
    writer.close()
    os.remove(out)
    return rows


def main() -> None:
    d = datagen.bench_dir()
    try:
        files = {"parquet": ("data.parquet", ROWS, datagen.write_parquet),
                 "csv": ("data.csv", ROWS, datagen.write_csv),
                 "avro": ("data.avro", AVRO_ROWS, datagen.write_avro)}
        only = os.environ.get("OBSLAKE_BENCH_P1_FORMATS")
        if only:
            files = {fmt: v for fmt, v in files.items() if fmt in only.split(",")}
        for fmt, (key, n, write) in files.items():
            t = time.perf_counter()
            write(os.path.join(d, key), n)
            print(f"generated {key}: {n:,} rows, {os.path.getsize(os.path.join(d, key)) / 1e6:,.0f} MB "
                  f"in {time.perf_counter() - t:.1f}s", flush=True)
        for fmt, (key, n, _) in files.items():
            path = os.path.join(d, key)
            size_mb = os.path.getsize(path) / 1e6

            def run_floor() -> float:
                rows = [0]
                s = timed(lambda: rows.__setitem__(0, floor(path, fmt, os.path.join(d, "floor.parquet"))))
                assert rows[0] == n, rows[0]
                return n / s

            lakes = iter(range(100))

            def run_ours() -> float:
                home = os.path.join(d, f"lake-{fmt}-{next(lakes)}")
                rows = [0]
                s = timed(lambda: rows.__setitem__(0, datagen.run_import(d, key, home)))
                shutil.rmtree(home, ignore_errors=True)
                assert rows[0] == n, rows[0]
                return n / s

            t = time.perf_counter()
            # warm-up, not counted: the first run pays the process's module imports (about 1 s of obslake,
            # pyiceberg, SQLAlchemy, DuckDB), which the floor, run in a process that has pyarrow loaded,
            # never pays. It also tells whether 3 repeats fit.
            first = run_ours()
            run_floor()
            repeats, note = 3, ""
            if n / first > 240:
                repeats, note = 1, f"one run of ours took {n / first:.0f}s (>4 min): 1 repeat"
            bvals, ours_vals = [], []
            for _ in range(repeats):  # interleaved, so a drift of the machine's speed hits both alike
                bvals.append(run_floor())
                ours_vals.append(run_ours())
            base, ours = statistics.median(bvals), statistics.median(ours_vals)
            print(f"{fmt}: floor runs {[round(v) for v in bvals]} rows/s, ours {[round(v) for v in ours_vals]} "
                  f"rows/s ({time.perf_counter() - t:.0f}s)", flush=True)
            if fmt == "avro" and not quick():
                note = (note + "; " if note else "") + f"Avro file has {n:,} rows (fastavro is slow), same file for both"
            if OVERRIDDEN and not quick():
                note = (note + "; " if note else "") + "row count overridden (OBSLAKE_BENCH_P1_*ROWS), not the README size"
            report(f"p1_throughput_{fmt}",
                   baseline=f"{'fastavro' if fmt == 'avro' else 'pyarrow'} read -> parquet, the import's encodings",
                   baseline_value=base, ours="import_file (file:// -> sqlite catalog)", ours_value=ours,
                   ratio=ours / base, target=">= 0.90x", met=ours / base >= 0.90, unit="rows/s",
                   size=f"{n:,} rows, {size_mb:,.0f} MB {fmt}", note=note)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
