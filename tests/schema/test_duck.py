"""The per-thread DuckDB connection (schema/duck.py): reused in a thread, never shared between threads."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from obslake.schema.duck import connection, query


def test_one_connection_per_thread_reused():
    assert connection() is connection()
    seen = []
    t = threading.Thread(target=lambda: seen.append(connection()))
    t.start()
    t.join()
    assert seen[0] is not connection()


def test_query_sees_its_tables_and_unregisters_them_even_on_error():
    out = query("SELECT sum(x) AS s FROM numbers", numbers=pa.table({"x": [1, 2, 3]}))
    assert out.column("s").to_pylist() == [6]
    with pytest.raises(Exception, match="(?i)numbers2|binder"):
        query("SELECT nope FROM numbers2", numbers2=pa.table({"x": [1]}))
    names = {r[0] for r in connection().execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert not names & {"numbers", "numbers2"}


def test_threads_query_at_once_without_mixing_their_data():
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                got = query("SELECT max(x) AS m FROM t", t=pa.table({"x": [i] * 100}))
                assert got.column("m").to_pylist() == [i]
            results[i] = True
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
