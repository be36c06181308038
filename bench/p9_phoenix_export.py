"""P9 from Phoenix - Data Fabric first (full) export of a Phoenix project on Postgres: rows/s and peak memory.

Data: N spans (``OBSLAKE_BENCH_P9P_SPANS``, default 10,000,000; 4 spans per trace, traces spread over 90 days,
the nested OpenInference attributes of P5/P9 as JSONB) and one LLM evaluation on every 10th span, in the
database of a real Phoenix server (20.26, the version the tests run): ``phoenix serve`` on a fresh Postgres
database creates its schema (its own migrations) and is stopped; the rows are then loaded into its tables
with ``COPY`` (Phoenix's indexes and constraints in place), as Phoenix would hold them after ingesting.

Ours: ``ProjectExporter.sync`` of the project from ``PhoenixSource`` (the connector's ``source: {type:
phoenix}``) into a fresh ``file://`` storage (spans table and annotations table), in a child process whose
peak RSS is read (``/usr/bin/time``).
Floor: the same source rows read from Postgres the fastest way there is (``COPY (SELECT the spans joined to
their traces) TO STDOUT`` as CSV, attributes as JSON text) and written by pyarrow's CSV reader to one Parquet
file with the same compression (zstd), in a child process too. rows/s = N / seconds; floor and ours
interleaved, ``OBSLAKE_BENCH_P9P_REPEATS`` times each (default 3); medians. Targets as P9: ours >= 0.5x the
floor, peak RSS <= 2 GB.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from bench import datagen
from bench.airflow_stack import create_database, drop_database, pg_connect, pg_uri
from bench.common import export_vs_floor, quick

N = int(os.environ.get("OBSLAKE_BENCH_P9P_SPANS", 200_000 if quick() else 10_000_000))
REPEATS = int(os.environ.get("OBSLAKE_BENCH_P9P_REPEATS", 1 if quick() else 3))
DAYS = 90
CHUNK = 1_000_000  # spans per COPY (a multiple of 4: whole traces)
ROOT = Path(__file__).resolve().parent.parent
TS = pa.timestamp("us", tz="UTC")

SPAN_COLUMNS = ("id, trace_rowid, span_id, parent_id, name, span_kind, start_time, end_time, attributes, events, "
                "status_code, status_message, cumulative_error_count, cumulative_llm_token_count_prompt, "
                "cumulative_llm_token_count_completion, llm_token_count_prompt, llm_token_count_completion")

FLOOR = """
import os, sys, psycopg2
import pyarrow as pa, pyarrow.csv as pcsv, pyarrow.parquet as pq
dsn, out = sys.argv[1], sys.argv[2]
sql = ("COPY (SELECT s.id, s.span_id, t.trace_id, s.parent_id, s.name, s.span_kind, "
       "s.start_time AT TIME ZONE 'UTC' AS start_time, s.end_time AT TIME ZONE 'UTC' AS end_time, s.status_code, "
       "s.status_message, s.attributes::text AS attributes, s.events::text AS events, s.cumulative_error_count, "
       "s.cumulative_llm_token_count_prompt, s.cumulative_llm_token_count_completion, "
       "t.start_time AT TIME ZONE 'UTC' AS trace_start_time, t.end_time AT TIME ZONE 'UTC' AS trace_end_time "
       "FROM spans s JOIN traces t ON t.id = s.trace_rowid JOIN projects p ON p.id = t.project_rowid "
       "WHERE p.name = 'big') TO STDOUT WITH (FORMAT csv, HEADER true)")
conn = psycopg2.connect(dsn)
with open(out + ".csv", "wb") as f, conn.cursor() as cur:
    cur.copy_expert(sql, f, size=1 << 20)
conn.close()
ts = pa.timestamp("us")
types = {"id": pa.int64(), "start_time": ts, "end_time": ts, "trace_start_time": ts, "trace_end_time": ts,
         "cumulative_error_count": pa.int64(), "cumulative_llm_token_count_prompt": pa.int64(),
         "cumulative_llm_token_count_completion": pa.int64()}
for c in ("span_id", "trace_id", "parent_id", "name", "span_kind", "status_code", "status_message", "attributes",
          "events"):
    types[c] = pa.string()
reader = pcsv.open_csv(out + ".csv", read_options=pcsv.ReadOptions(block_size=1 << 24),
                       convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                           quoted_strings_can_be_null=False))
rows = 0
with pq.ParquetWriter(out, reader.schema, compression="zstd") as w:
    for batch in reader:
        w.write_batch(batch)
        rows += batch.num_rows
os.remove(out + ".csv")
print(rows)
"""

OURS = """
import sys
from obslake.config import Connector
from obslake.fabric.export import ProjectExporter
from obslake.fabric.phoenix import PhoenixSource
from obslake.lake.catalog import LakeSettings, load_catalog
from obslake.storage.credentials import StorageCredentials
uri, storage = sys.argv[1], sys.argv[2]
conn = Connector.model_validate({"name": "bench", "source": {"type": "phoenix", "uri": uri}, "projects": ["big"],
                                 "storage": storage, "namespace": "ml", "ingestion_key_variable": "k"})
catalog = load_catalog(LakeSettings.from_env(), StorageCredentials.from_env(storage))
with PhoenixSource(uri) as source:
    r = ProjectExporter(conn, "big", catalog).sync(source)
assert r.mode == "full", r
print(r.annotation_rows, file=sys.stderr)
print(r.rows)
"""


def _copy(cur, table: str, columns: str, t: pa.Table) -> None:
    buf = io.BytesIO()
    pcsv.write_csv(t, buf, write_options=pcsv.WriteOptions(include_header=False))
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buf, size=1 << 20)


def load(db: str, rng: np.random.Generator) -> int:
    """Fill Phoenix's tables of database ``db`` with project ``big``: N spans, N/4 traces, N/10 annotations."""
    conn = pg_connect(db)
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    base_us = int((now - dt.timedelta(days=DAYS)).timestamp() * 1e6)
    annotated_at = now - dt.timedelta(days=1)
    step = DAYS * 86400 * 10**6 // max(1, N // 4)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO projects (name) VALUES ('big') RETURNING id")
            pid = cur.fetchone()[0]
            for lo in range(0, N, CHUNK):
                hi = min(N, lo + CHUNK)
                idx = np.arange(lo, hi)
                trace = idx // 4
                start = base_us + trace * step + (idx % 4) * 1000
                end = start + rng.integers(50_000, 5_000_000, hi - lo)
                tr = np.arange(lo // 4, (hi + 3) // 4)
                t_start = base_us + tr * step
                _copy(cur, "traces", "id, project_rowid, trace_id, start_time, end_time", pa.table({
                    "id": tr + 1, "project_rowid": np.full(len(tr), pid),
                    "trace_id": pa.array([f"{t:032x}" for t in tr.tolist()]),
                    "start_time": pa.array(t_start, pa.int64()).cast(TS),
                    "end_time": pa.array(t_start + 5_003_000, pa.int64()).cast(TS)}))
                sid = pa.array([f"{i:016x}" for i in idx.tolist()])
                parent = pa.array([None if i % 4 == 0 else f"{i - i % 4:016x}" for i in idx.tolist()], pa.string())
                kinds = pa.array(np.array(["CHAIN", "LLM", "RETRIEVER", "TOOL"])[idx % 4])
                tokens = rng.integers(10, 2000, hi - lo)
                attrs = pc.binary_join_element_wise(
                    '{"openinference": {"span": {"kind": "', kinds, '"}}, "llm": {"model_name": "gpt-4o", '
                    '"token_count": {"prompt": ', pa.array(tokens.astype(str)), ', "completion": 17, "total": ',
                    pa.array((tokens + 17).astype(str)), '}}, "input": {"value": "question about ', sid,
                    ' and some context text to make it realistic"}, "output": {"value": "answer for ', sid,
                    ' with a few words"}, "session": {"id": "sess-', pa.array((trace % 5000).astype(str)), '"}}', "")
                n = hi - lo
                _copy(cur, "spans", SPAN_COLUMNS, pa.table({
                    "id": idx + 1, "trace_rowid": trace + 1, "span_id": sid, "parent_id": parent, "name": kinds,
                    "span_kind": kinds, "start_time": pa.array(start, pa.int64()).cast(TS),
                    "end_time": pa.array(end, pa.int64()).cast(TS), "attributes": attrs,
                    "events": pa.array(["[]"] * n), "status_code": pa.array(["OK"] * n),
                    "status_message": pa.array([""] * n), "cumulative_error_count": np.zeros(n, np.int64),
                    "cumulative_llm_token_count_prompt": tokens, "cumulative_llm_token_count_completion":
                    np.full(n, 17), "llm_token_count_prompt": tokens, "llm_token_count_completion": np.full(n, 17)}))
                a = idx[idx % 10 == 0]
                m = len(a)
                _copy(cur, "span_annotations", "id, span_rowid, name, label, score, explanation, metadata, "
                      "annotator_kind, identifier, source, created_at, updated_at", pa.table({
                          "id": a // 10 + 1, "span_rowid": a + 1, "name": pa.array(["hallucination"] * m),
                          "label": pa.array(["factual"] * m), "score": np.linspace(0, 1, m),
                          "explanation": pa.array(["factual because of reasons"] * m),
                          "metadata": pa.array(["{}"] * m), "annotator_kind": pa.array(["LLM"] * m),
                          "identifier": pa.array([""] * m), "source": pa.array(["API"] * m),
                          "created_at": pa.array([annotated_at] * m, TS),
                          "updated_at": pa.array([annotated_at] * m, TS)}))
                print(f"  loaded {hi:,} spans", flush=True)
            for table in ("traces", "spans", "span_annotations"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            cur.execute("ANALYZE")
    finally:
        conn.close()
    return N // 10 + (1 if N % 10 else 0)


def main() -> None:
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fabric")]
    from phoenix_server import run_phoenix

    d = datagen.bench_dir()
    db = f"obslake_bench_phx_{secrets.token_hex(4)}"
    env = {**os.environ, "OBSLAKE_HOME": os.path.join(d, "home")}
    for k in ("OBSLAKE_CATALOG_URI", "OBSLAKE_STATE_URI", "OBSLAKE_WAREHOUSE", "OBSLAKE_CATALOG_TYPE",
              "OBSLAKE_CATALOG_PROPERTIES"):
        env.pop(k, None)
    create_database(db)
    try:
        uri = pg_uri(db)
        t0 = time.perf_counter()
        with run_phoenix(uri):  # Phoenix creates its schema (migrations) and is stopped again
            pass
        n_ann = load(db, np.random.default_rng(11))
        print(f"setup: Phoenix schema + {N:,} spans, {N // 4:,} traces, {n_ann:,} annotations loaded in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={db}"
        size = f"{N:,} spans, 90 days, Phoenix on Postgres" + ("" if N == 10_000_000 else
                                                               " (not the target's 10,000,000)")
        export_vs_floor("p9_phoenix_export", n=N, repeats=REPEATS, workdir=d, env=env, floor=FLOOR,
                        floor_args=(dsn,), ours=OURS, ours_args=lambda storage: (uri, storage),
                        baseline="COPY TO csv -> pyarrow -> one zstd Parquet",
                        ours_label="first sync, Phoenix source -> spans + annotations tables", size=size)
    finally:
        drop_database(db)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
