"""P10 - Data Fabric attribute flattening: spans/s of ``obslake.fabric.flatten`` against the per-span
Python it replaced (issue #13, point 3: no per-span Python loop on the hot path).

Data: 1,000,000 spans (20,000 in quick mode) whose ``attributes`` are the nested OpenInference JSON of
P5 (span kind, model, token counts, input/output text, session id), in batches of 50,000 spans, the
exporter's batch size.

Baseline: the exporter's earlier code, kept here verbatim: ``json.loads`` of each span's attributes,
then for each of the 18 ``FLAT_ATTRIBUTES`` a dig by dotted key (flat, else nested) and the typed
column built with ``pa.array``. Ours: :func:`obslake.fabric.flatten.flatten` on the same batches
(DuckDB over the Arrow column). Both produce the same 18 typed columns; the benchmark asserts they are
equal on this data. Ratio = ours / baseline in spans/s, median of 3 runs each, interleaved. The issue
sets no figure for it: the ratio is information.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.common import quick, report

SPANS = 20_000 if quick() else int(os.environ.get("OBSLAKE_BENCH_P10_SPANS", 1_000_000))
BATCH = 50_000


def attributes(n: int, rng) -> pa.Array:
    idx = np.arange(n)
    sid = pa.array([f"s{i:010d}" for i in idx.tolist()])
    kinds = np.array(["CHAIN", "LLM", "RETRIEVER", "TOOL"])[idx % 4]
    tokens = rng.integers(10, 2000, n)
    return pc.binary_join_element_wise(
        '{"openinference": {"span": {"kind": "', pa.array(kinds), '"}}, "llm": {"model_name": "gpt-4o", '
        '"token_count": {"prompt": ', pa.array(tokens.astype(str)), ', "completion": 17, "total": ',
        pa.array((tokens + 17).astype(str)), '}}, "input": {"value": "question about ', sid,
        ' and some context text to make it realistic"}, "output": {"value": "answer for ', sid,
        ' with a few words"}, "session": {"id": "sess-', pa.array(((idx // 4) % 5000).astype(str)), '"}}', "")


def _dig(attrs: dict, key: str):
    if key in attrs:
        return attrs[key]
    node = attrs
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def python_flatten(column: pa.Array) -> dict[str, pa.Array]:
    """The exporter's per-span code before DuckDB (obslake 2026-12-02, fabric/export.py rows_for)."""
    from obslake.fabric.model import FLAT_ATTRIBUTES

    parsed = [json.loads(a) if a else {} for a in column.to_pylist()]
    cols = {}
    for key, typ in FLAT_ATTRIBUTES.items():
        values = []
        for attrs in parsed:
            v = _dig(attrs, key) if isinstance(attrs, dict) else None
            if isinstance(v, (dict, list)) or (v is not None and pa.types.is_string(typ) and not isinstance(v, str)):
                v = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
            if v is not None and pa.types.is_integer(typ):
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    v = None
            values.append(v)
        cols[f"attributes.{key}"] = pa.array(values, typ)
    return cols


def main() -> None:
    from obslake.fabric.flatten import flatten

    column = attributes(SPANS, np.random.default_rng(10))
    batches = [column.slice(off, BATCH) for off in range(0, SPANS, BATCH)]
    first = batches[0]
    want, got = python_flatten(first), flatten(first).columns
    assert want.keys() == got.keys() and all(want[k].equals(got[k]) for k in want), "the two disagree"

    def run(fn) -> float:
        t = time.perf_counter()
        for b in batches:
            fn(b)
        return SPANS / (time.perf_counter() - t)

    base_runs, ours_runs = [], []
    for _ in range(3):  # interleaved, so a change in the machine's load hits both alike
        base_runs.append(run(python_flatten))
        ours_runs.append(run(flatten))
    base, ours = statistics.median(base_runs), statistics.median(ours_runs)
    report("p10_flatten", baseline="per-span Python (json.loads + dig per key)", baseline_value=base,
           ours="fabric.flatten (DuckDB over the Arrow column)", ours_value=ours, ratio=ours / base,
           target="(information)", met=None, unit="spans/s",
           size=f"{SPANS:,} spans, nested OpenInference attributes, batches of {BATCH:,}",
           note=f"spans/s per run: python {[round(v) for v in base_runs]}, duckdb {[round(v) for v in ours_runs]}")


if __name__ == "__main__":
    main()
