"""Airflow DAG file: one obslake import DAG per ``include/import_jobs/*.yaml``.

DAG ids are ``obslake_import__<job name>``. This file stays thin so that parsing is fast: it reads the
YAML and hands each job to :func:`obslake.dag_factory.build_import_dags`; no provider SDK is imported
at module level. ``OBSLAKE_INCLUDE_DIR`` overrides where the YAML lives.
"""

import os
from pathlib import Path

from obslake.dag_factory import build_import_dags

_INCLUDE = Path(os.environ.get("OBSLAKE_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include")

globals().update(build_import_dags(_INCLUDE / "import_jobs"))
