"""Warm start for task processes: the scheduler imports what obslake's tasks import, before it forks.

Every task of a LocalExecutor deployment runs in a process forked from a worker that the scheduler forked
when it started; a module imported in the scheduler before then is already loaded in every task. An import
task otherwise spends about a second importing pyarrow, pyiceberg, SQLAlchemy, DuckDB, boto3 and obslake
before it reads its first byte (measured in a fresh process: 0.7 s of imports, 0.4 s of catalog imports),
and each of the four tasks on an import's path pays it.

:func:`preload` imports :data:`MODULES`. They open no connection or file; the only threads they start are
Arrow's allocator's (jemalloc's background thread, which jemalloc's own fork handlers take care of, and
one of Arrow's, whose pools are re-created after a fork). DuckDB, whose import starts a thread of its own,
is left out. Tasks forked afterwards were tested doing Arrow, Parquet, DuckDB and Iceberg work side by side.
The scheduler's resident memory grows by what the modules take (shared, copy-on-write, with the workers it
forks). ``OBSLAKE_PRELOAD=0`` turns it off.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MODULES = (
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.parquet",
    "pyarrow.ipc",
    "fastavro",
    "sqlalchemy",
    "psycopg2",
    "boto3",
    "pyiceberg.catalog.sql",
    "pyiceberg.io.pyarrow",
    "pyiceberg.table",
    "obslake.config",
    "obslake.dag_factory",
    "obslake.hooks.obslake",
    "obslake.lake.catalog",
    "obslake.lake.discovery",
    "obslake.lake.importer",
    "obslake.schema.validate",
    "obslake.storage.s3",
)


def wanted(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True in an ``airflow scheduler`` process (whose LocalExecutor workers fork the tasks), unless
    ``OBSLAKE_PRELOAD=0``."""
    args = sys.argv if argv is None else argv
    env = os.environ if environ is None else environ
    return env.get("OBSLAKE_PRELOAD", "1") != "0" and args[1:2] == ["scheduler"]


def preload(modules: tuple[str, ...] = MODULES) -> list[str]:
    """Import ``modules``; those that could not be imported are logged and skipped (never raises). Returns the
    ones imported now (not loaded before)."""
    started, new = time.monotonic(), []
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            new.append(name)
        except Exception as exc:  # noqa: BLE001 - an optional module missing only loses the warm start
            log.warning("obslake preload: could not import %s: %s", name, exc)
    log.info(
        "obslake preload: imported %d module(s) for the task processes in %.2fs", len(new), time.monotonic() - started
    )
    return new
