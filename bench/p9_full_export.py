"""P9 - Data Fabric first (full) export: rows/s against a floor, and peak memory.

Data: N spans (``OBSLAKE_BENCH_P9_SPANS``, default 10,000,000; 4 spans per trace, 90 days, nested
OpenInference attributes as JSON, the generator of P5) and an LLM evaluation on every 10th span, imported
into an embedded lake (SQLite catalog, local warehouse) by ``kind: spans`` / ``kind: annotations`` jobs.

Ours: ``ProjectExporter.sync`` of the project from the lake source into a fresh ``file://`` storage (the
spans table and the annotations table), in a child process whose peak RSS is read (``/usr/bin/time``).
Floor: pyarrow reading the same source rows (the lake span table's Parquet files, streamed) and writing
them to one Parquet file with the same compression (zstd), in a child process too. rows/s = N / seconds;
floor and ours interleaved, 3 times each; medians. Targets: ours >= 0.5x the floor, peak RSS <= 2 GB.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time

N = int(os.environ.get("OBSLAKE_BENCH_P9_SPANS", 200_000 if os.environ.get("OBSLAKE_BENCH_QUICK") else 10_000_000))
os.environ["OBSLAKE_BENCH_P5_SPANS"] = str(N)  # the generator spreads the traces over 90 days by N

import numpy as np  # noqa: E402

from bench import datagen  # noqa: E402
from bench import p5_fabric_incremental as gen  # noqa: E402
from bench.common import export_vs_floor  # noqa: E402

REPEATS = 3

FLOOR = """
import glob, sys
import pyarrow.dataset as ds, pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
source = ds.dataset(files, format="parquet")
rows = 0
with pq.ParquetWriter(sys.argv[2], source.schema, compression="zstd") as out:
    for batch in source.to_batches(batch_size=65536):
        out.write_batch(batch)
        rows += batch.num_rows
print(rows)
"""

OURS = """
import sys
from obslake.config import Connector
from obslake.fabric.export import ProjectExporter
from obslake.fabric.lake_source import LakeTraceSource
from obslake.lake.catalog import LakeSettings, load_catalog
from obslake.storage.credentials import StorageCredentials
storage = sys.argv[1]
conn = Connector.model_validate({"name": "bench", "source": {"type": "lake"}, "projects": ["big"],
                                 "storage": storage, "namespace": "ml", "ingestion_key_variable": "k"})
catalog = load_catalog(LakeSettings.from_env(), StorageCredentials.from_env(storage))
r = ProjectExporter(conn, "big", catalog).sync(LakeTraceSource(catalog, "traces"))
assert r.mode == "full", r
print(r.annotation_rows, file=sys.stderr)
print(r.rows)
"""


def main() -> None:
    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_file
    from obslake.lake.ledger import Ledger
    from obslake.storage import open_store

    d = datagen.bench_dir()
    env = {**os.environ, "OBSLAKE_HOME": os.path.join(d, "home")}
    for k in ("OBSLAKE_CATALOG_URI", "OBSLAKE_STATE_URI", "OBSLAKE_WAREHOUSE", "OBSLAKE_CATALOG_TYPE",
              "OBSLAKE_CATALOG_PROPERTIES"):
        env.pop(k, None)
    try:
        src = os.path.join(d, "in")
        for k in ("spans", "annotations"):
            os.makedirs(os.path.join(src, k))
        settings = LakeSettings.from_env(env)
        catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
        store, _ = open_store(f"file://{src}/")
        jobs = {k: ImportJob.model_validate({"name": f"trace_{k}", "source": f"file://{src}/{k}/", "kind": k,
                                             "trace_project": "big", "ingestion_key_variable": "k",
                                             "max_file_bytes": 50 * 1024**3})
                for k in ("spans", "annotations")}
        rng = np.random.default_rng(9)
        now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
        base_us = int((now - dt.timedelta(days=gen.DAYS)).timestamp() * 1e6)
        t0 = time.perf_counter()
        for i, lo in enumerate(range(0, N, gen.FILE_SPANS)):
            key = f"spans/s{i}.parquet"
            gen.span_file(os.path.join(src, key), lo, min(N, lo + gen.FILE_SPANS), base_us, rng)
            assert import_file(jobs["spans"], store, store.head(key), catalog=catalog, ledger=ledger).status == "imported"
            os.remove(os.path.join(src, key))
        gen.ann_file(os.path.join(src, "annotations/a0.parquet"), np.arange(0, N, 10), "factual", now)
        assert import_file(jobs["annotations"], store, store.head("annotations/a0.parquet"), catalog=catalog,
                           ledger=ledger).status == "imported"
        print(f"setup: {N:,} spans + {N // 10:,} annotations imported in {time.perf_counter() - t0:.0f}s", flush=True)
        spans_dir = catalog.load_table(("traces", "big__spans")).location().removeprefix("file://") + "/data"
        size = f"{N:,} spans, 90 days" + ("" if N == 10_000_000 else " (not the target's 10,000,000)")
        export_vs_floor("p9_full_export", n=N, repeats=REPEATS, workdir=d, env=env, floor=FLOOR,
                        floor_args=(spans_dir,), ours=OURS, ours_args=lambda storage: (storage,),
                        baseline="pyarrow: the lake's span files -> one zstd Parquet",
                        ours_label="first sync, lake source -> spans + annotations tables", size=size)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
