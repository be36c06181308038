"""What the deployed-Airflow tests share: the lake every component of a stack uses (a fresh Postgres database
for catalog and ledger, a local warehouse), and the path to the harness (bench/airflow_stack.py)."""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))  # bench.airflow_stack: the one harness, shared with the benchmarks

from bench.airflow_stack import create_database, pg_uri, unique_name  # noqa: E402


def lake_env(tmp_path: Path, include: Path, key_variable: str, key: str, prefix: str) -> tuple[dict[str, str], str]:
    """(environment of every Airflow component, lake database name): the lake's catalog and ledger in a new
    Postgres database (drop it after), its warehouse under ``tmp_path``, the YAML in ``include``, the ingestion
    key as the Airflow Variable ``key_variable``."""
    lake_db = unique_name(prefix)
    create_database(lake_db)
    env = {"OBSLAKE_CATALOG_URI": pg_uri(lake_db), "OBSLAKE_STATE_URI": pg_uri(lake_db),
           "OBSLAKE_WAREHOUSE": f"file://{tmp_path / 'warehouse'}", "OBSLAKE_HOME": str(tmp_path / "home"),
           "OBSLAKE_INCLUDE_DIR": str(include), f"AIRFLOW_VAR_{key_variable.upper()}": key}
    (tmp_path / "warehouse").mkdir(parents=True, exist_ok=True)
    return env, lake_db
