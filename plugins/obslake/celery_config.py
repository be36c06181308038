"""Celery settings for an obslake deployment: Airflow's own, plus the warm start of task processes.

Point ``[celery] celery_config_options`` at :data:`CELERY_CONFIG` in the scheduler's and every worker's
environment (``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=obslake.celery_config.CELERY_CONFIG``). The settings
are the Celery provider's ``DEFAULT_CELERY_CONFIG`` unchanged (broker, result backend, queues and timeouts
still come from ``[celery]``); what this module adds is a handler of Celery's ``worker_init`` signal, sent in
an ``airflow celery worker``'s main process before it forks its pool: it imports what obslake's tasks import
(:mod:`obslake.preload`), so each pool process, and each task process the pool forks, starts with pyarrow,
pyiceberg, SQLAlchemy, boto3 and obslake loaded instead of importing them per task (the LocalExecutor gets
the same from the scheduler: :mod:`obslake.plugin`). ``OBSLAKE_PRELOAD=0`` in a worker's environment turns
it off. A user who has Celery settings of their own merges them: ``{**CELERY_CONFIG, ...}``.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


def warm_start(**_: Any) -> list[str]:
    """``worker_init`` handler: import the task modules in the worker's main process (unless
    ``OBSLAKE_PRELOAD=0``). Returns the modules imported now. Never raises (a module that cannot be
    imported only loses its warm start)."""
    from obslake import preload

    if os.environ.get("OBSLAKE_PRELOAD", "1") == "0":
        return []
    return preload.preload()


# weak=False: the module-level function lives as long as the module; dispatch_uid: connected once however
# often the module is imported (the executor in the scheduler imports it too, where the signal never fires)
worker_init.connect(warm_start, weak=False, dispatch_uid="obslake.celery_config.warm_start")
