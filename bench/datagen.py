"""Synthetic inference data for the benchmarks, generated in bounded-memory chunks.

Columns: prediction_id (string), prediction_ts (timestamp[us, UTC], within the last 3 days),
feature_0..feature_19 (float64), tag_0..tag_4 (string), predicted_label (string), predicted_score (float64).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

N_FEATURES = 20
N_TAGS = 5
TAGS = [np.array([f"t{j}-{v}" for v in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")])
        for j in range(N_TAGS)]
LABELS = np.array(["cat", "dog", "bird"])
CHUNK = 250_000


def bench_dir() -> str:
    """A fresh temp dir under /work (or $TMPDIR) for data files; the caller removes it."""
    base = "/work" if os.path.isdir("/work") and os.access("/work", os.W_OK) else None
    return tempfile.mkdtemp(prefix="obslake-bench-", dir=base)


def chunks(n_rows: int, seed: int = 7, chunk: int = CHUNK) -> Iterator[pa.Table]:
    """``n_rows`` inference rows as tables of at most ``chunk`` rows."""
    rng = np.random.default_rng(seed)
    now_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6)
    span_us = 3 * 86400 * 10**6
    for start in range(0, n_rows, chunk):
        n = min(chunk, n_rows - start)
        idx = pa.array(np.arange(start, start + n, dtype=np.int64))
        cols: dict[str, Any] = {
            "prediction_id": pc.binary_join_element_wise("pred", pc.cast(idx, pa.string()), "-"),
            "prediction_ts": pa.array(now_us - 60 * 10**6 - rng.integers(0, span_us, n), pa.timestamp("us", tz="UTC")),
        }
        for j in range(N_FEATURES):
            cols[f"feature_{j}"] = pa.array(rng.standard_normal(n))
        for j in range(N_TAGS):
            cols[f"tag_{j}"] = pa.array(TAGS[j][rng.integers(0, len(TAGS[j]), n)])
        cols["predicted_label"] = pa.array(LABELS[rng.integers(0, 3, n)])
        cols["predicted_score"] = pa.array(rng.random(n))
        yield pa.table(cols)


def schema() -> pa.Schema:
    return next(chunks(1)).schema


def write_parquet(path: str, n_rows: int, row_group: int = CHUNK) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, schema()) as w:
        for t in chunks(n_rows, chunk=row_group):
            w.write_table(t, row_group_size=row_group)


def write_csv(path: str, n_rows: int) -> None:
    import pyarrow.csv as pacsv

    with pacsv.CSVWriter(path, schema()) as w:
        for t in chunks(n_rows):
            w.write_table(t)


def write_avro(path: str, n_rows: int) -> None:
    import fastavro

    from obslake_demo.writers import avro_schema_for_arrow

    parsed = fastavro.parse_schema(avro_schema_for_arrow(schema()))
    records = (r for t in chunks(n_rows, chunk=50_000) for r in t.to_pylist())
    with open(path, "wb") as out:
        fastavro.writer(out, parsed, records, codec="deflate")


def job_dict(source: str, *, max_file_bytes: int = 64 * 1024**3) -> dict:
    """An ImportJob (score_categorical) for these columns."""
    return {
        "name": "bench_job",
        "source": source,
        "model": {"space": "bench", "name": "ctr", "type": "score_categorical", "environment": "production"},
        "ingestion_key_variable": "obslake_bench_key",
        "max_file_bytes": max_file_bytes,
        "schema": {
            "prediction_id": "prediction_id",
            "timestamp": "prediction_ts",
            "prediction_label": "predicted_label",
            "prediction_score": "predicted_score",
            "features": {"prefix": "feature_"},
            "tags": [f"tag_{j}" for j in range(N_TAGS)],
        },
    }


def run_import(data_dir: str, key: str, home: str) -> int:
    """``import_file`` of ``data_dir/key`` into a fresh lake at ``home``; the rows imported."""
    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_file
    from obslake.lake.ledger import Ledger
    from obslake.storage.local import LocalStore

    store = LocalStore(data_dir)
    job = ImportJob.model_validate(job_dict(store.uri()))
    settings = LakeSettings.from_env({"OBSLAKE_HOME": home})
    catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
    result = import_file(job, store, store.head(key), catalog=catalog, ledger=ledger)
    if result.status != "imported":
        raise RuntimeError(f"import failed: {result.error}")
    return result.rows
