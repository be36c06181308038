"""Build obslake's DAGs from your own DAGs folder, with one import.

In a file of your DAGs folder (e.g. ``dags/obslake_dags.py``; Airflow's safe-mode discovery parses only files
that mention "airflow" and "dag", hence the comment)::

    # Airflow DAGs of obslake
    from obslake.dags import all_dags

    globals().update(all_dags("/opt/airflow/include"))  # include/import_jobs/*.yaml, include/connectors/*.yaml

or one kind at a time: ``import_dags(include)``, ``fabric_dags(include)``, ``maintenance_dags(include)``. Each
returns ``{dag_id: DAG}``; a YAML file that does not validate becomes a one-task DAG that fails with the reason,
and never hides the other DAGs. Airflow is imported only when the DAGs are built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _include(include: str | Path | None) -> Path:
    if include is not None:
        return Path(include)
    if os.environ.get("OBSLAKE_INCLUDE_DIR"):
        return Path(os.environ["OBSLAKE_INCLUDE_DIR"])
    raise ValueError("where are the YAML files? pass include=... or set OBSLAKE_INCLUDE_DIR")


def import_dags(include: str | Path | None = None, *, on_failure_callback: Any = None) -> dict[str, Any]:
    """One import DAG per ``<include>/import_jobs/*.yaml`` (``obslake_import__<job>``)."""
    from obslake.dag_factory import build_import_dags

    return build_import_dags(_include(include) / "import_jobs", on_failure_callback)


def fabric_dags(include: str | Path | None = None, *, on_failure_callback: Any = None) -> dict[str, Any]:
    """One Data Fabric DAG per ``<include>/connectors/*.yaml`` (``obslake_fabric__<connector>``)."""
    from obslake.dag_factory import build_fabric_dags

    return build_fabric_dags(_include(include) / "connectors", on_failure_callback)


def maintenance_dags(
    include: str | Path | None = None, schedule: str = "@daily", *, on_failure_callback: Any = None
) -> dict[str, Any]:
    """The lake upkeep DAG ``obslake_maintenance`` over every table of those jobs and connectors."""
    from obslake.dag_factory import build_maintenance_dags

    return build_maintenance_dags(_include(include), schedule, on_failure_callback)


def all_dags(include: str | Path | None = None, *, on_failure_callback: Any = None) -> dict[str, Any]:
    """All of them: imports, Data Fabric, upkeep. ``on_failure_callback``: the DAGs' own (Airflow's DAG-level
    callback, called once per failed run: your pager, your chat)."""
    cb = on_failure_callback
    return {
        **import_dags(include, on_failure_callback=cb),
        **fabric_dags(include, on_failure_callback=cb),
        **maintenance_dags(include, on_failure_callback=cb),
    }
