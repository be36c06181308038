"""One in-memory DuckDB connection per thread, for vectorised work over Arrow data (hashing ids, parsing JSON).

Opening a DuckDB connection costs about 9 ms, as much as a whole small-file import's commit, so it is
opened once per thread and reused. A connection serves one thread at a time; each thread gets its own.
Callers register their Arrow data under a name of their own, query it and unregister it (:func:`query`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow as pa

_local = threading.local()


def connection() -> Any:
    """This thread's DuckDB connection (in memory), opened on first use (and again in a forked child)."""
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        import duckdb

        _local.con, _local.pid = duckdb.connect(), pid
    return _local.con


def query(sql: str, **tables: pa.Table) -> pa.Table:
    """Run ``sql`` on this thread's connection, with each Arrow table of ``tables`` visible under its
    keyword name; the names are unregistered afterwards, whatever happens."""
    con = connection()
    for name, table in tables.items():
        con.register(name, table)
    try:
        return con.execute(sql).to_arrow_table()
    finally:
        for name in tables:
            con.unregister(name)
