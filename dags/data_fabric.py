"""Airflow DAG file: one obslake Data Fabric DAG per ``include/connectors/*.yaml``.

DAG ids are ``obslake_fabric__<connector name>``. Thin on purpose (fast parsing): it reads the YAML
and hands each connector to :func:`obslake.dag_factory.build_fabric_dags`; no provider SDK is imported
at module level. ``OBSLAKE_INCLUDE_DIR`` overrides where the YAML lives.
"""

import os
from pathlib import Path

from obslake.dag_factory import build_fabric_dags

_INCLUDE = Path(os.environ.get("OBSLAKE_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include")

globals().update(build_fabric_dags(_INCLUDE / "connectors"))
