"""Airflow DAG file: ``obslake_maintenance``, the daily lake upkeep of every table obslake writes.

Thin like the others: it reads the job and connector YAML and hands them to
:func:`obslake.dag_factory.build_maintenance_dags`. ``OBSLAKE_MAINTENANCE_SCHEDULE`` (default ``@daily``)
sets when it runs; ``OBSLAKE_INCLUDE_DIR`` where the YAML lives.
"""

import os
from pathlib import Path

from obslake.dag_factory import build_maintenance_dags

_INCLUDE = Path(os.environ.get("OBSLAKE_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include")

globals().update(build_maintenance_dags(_INCLUDE, os.environ.get("OBSLAKE_MAINTENANCE_SCHEDULE") or "@daily"))
