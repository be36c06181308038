"""The in-file duplicate-id check (``_DuplicateIds``) against a brute-force reference.

Many batches of varied sizes, with nulls, repeats inside a batch and across batches, so that the
sorted runs are merged over several levels and the bitmap is rebuilt larger several times.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from obslake.schema.mapping import MAX_PROBLEMS, _DuplicateIds


def _reference(batches: list[list[str | None]]) -> list[list[tuple[int, int]]]:
    """For each batch: (index in batch, first row of that id) of every repeated id, in row order."""
    seen: dict[str, int] = {}
    out, row = [], 1
    for values in batches:
        found = []
        for i, v in enumerate(values):
            if v is None:
                continue
            if v in seen:
                found.append((i, seen[v]))
            else:
                seen[v] = row + i
        out.append(found[:MAX_PROBLEMS])
        row += len(values)
    return out


@pytest.mark.parametrize("duckdb_from", [0, 10**9], ids=["duckdb-hash", "pandas-hash"])
@pytest.mark.parametrize("seed", range(6))
def test_repeats_are_found_with_their_first_row(seed: int, duckdb_from: int, monkeypatch):
    monkeypatch.setattr(_DuplicateIds, "DUCKDB_FROM", duckdb_from)
    rng = np.random.default_rng(seed)
    universe = int(rng.integers(2_000, 400_000))  # small universes repeat a lot, large ones rarely
    batches = []
    for _ in range(int(rng.integers(60, 140))):
        n = int(rng.choice([0, 1, 7, int(rng.integers(1, 4_000))]))
        batches.append([None if rng.random() < 0.01 else f"id-{v}" for v in rng.integers(0, universe, n)])
    dups, row = _DuplicateIds(), 1
    for values, expected in zip(batches, _reference(batches)):
        assert dups.check(pa.array(values, pa.string()), row) == expected
        row += len(values)
    assert len(dups.runs) < 16  # merged, not one run per batch
    assert dups.by_duckdb is (duckdb_from == 0)


def test_a_file_of_distinct_ids_has_no_repeats_and_few_runs():
    dups, row = _DuplicateIds(), 1
    for b in range(200):
        ids = pa.array([f"pred-{b}-{i}" for i in range(2_000)], pa.string())
        assert dups.check(ids, row) == []
        row += len(ids)
    assert sum(len(h) for h, _, _ in dups.runs) == 400_000
    assert len(dups.runs) <= 3 * 4  # at most FANOUT - 1 runs per level
    assert len(dups.bits) * 8 >= 16 * 400_000  # >= 16 bitmap bits per id


def test_at_most_max_problems_per_batch_the_first_rows():
    dups = _DuplicateIds()
    ids = pa.array([f"x-{i % 50}" for i in range(1_000)], pa.string())
    found = dups.check(ids, 1)
    assert found == [(i, i % 50 + 1) for i in range(50, 50 + MAX_PROBLEMS)]
    again = dups.check(pa.array(["x-7", "new", "x-7", None], pa.string()), 1_001)
    assert again == [(0, 8), (2, 8)]


@pytest.mark.parametrize("duckdb_from", [0, 10**9], ids=["duckdb-hash", "pandas-hash"])
@pytest.mark.parametrize("seed", range(6))
def test_deferred_finds_the_same_repeats_at_the_end(seed: int, duckdb_from: int, monkeypatch):
    """Deferred (abort_file imports): nothing per batch; finish() gives every repeat of the file, in row
    order, as (row, first row of that id): the per-batch answers, flattened, up to MAX_PROBLEMS."""
    monkeypatch.setattr(_DuplicateIds, "DUCKDB_FROM", duckdb_from)
    rng = np.random.default_rng(100 + seed)
    universe = int(rng.integers(2_000, 400_000))
    batches = []
    for _ in range(int(rng.integers(20, 80))):
        n = int(rng.choice([0, 1, 7, int(rng.integers(1, 4_000))]))
        batches.append([None if rng.random() < 0.01 else f"id-{v}" for v in rng.integers(0, universe, n)])
    if seed == 0:  # one file without any repeat
        batches = [[f"u-{b}-{i}" for i in range(len(v))] for b, v in enumerate(batches)]
    dups, row, expected = _DuplicateIds(deferred=True), 1, []
    for values, found in zip(batches, _reference(batches)):
        assert dups.check(pa.array(values, pa.string()), row) == []
        expected += [(row + i, first) for i, first in found]
        row += len(values)
    expected = sorted(expected)[:MAX_PROBLEMS]
    assert dups.finish() == expected
    assert dups.by_duckdb is (duckdb_from == 0 if any(batches) else None)
    assert seed != 0 or expected == []
    assert dups.finish() == []  # the state is handed over once
