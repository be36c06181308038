"""The Celery settings (obslake.celery_config): Airflow's own, and the warm start on ``worker_init``.

The deployed test (tests/deployed/test_celery.py) runs real ``airflow celery worker`` processes with these
settings and checks each worker's log for the warm start; here, in fresh interpreters, what the signal does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("airflow.providers.celery", reason="the Celery provider (test extra) is not installed")

SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    from celery.signals import worker_init
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
    from obslake import celery_config, preload
    importlib.reload(celery_config)  # imported twice (scheduler and worker read the option): connected once
    before = [m for m in preload.MODULES if m in sys.modules]
    replies = worker_init.send(sender=None)
    print(json.dumps({
        "same_settings": celery_config.CELERY_CONFIG == DEFAULT_CELERY_CONFIG,
        "handlers": len(replies),
        "imported": replies[0][1] if replies else None,
        "before": before,
        "loaded": [m for m in preload.MODULES if m in sys.modules],
    }))
""")


def _run(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_worker_init_imports_the_task_modules_once_with_airflows_settings():
    from obslake import preload

    got = _run(OBSLAKE_PRELOAD="1")
    assert got["same_settings"] and got["handlers"] == 1
    assert got["loaded"] == list(preload.MODULES)
    # (a module of the list that another one imported on the way is loaded but not counted)
    assert got["imported"] and set(got["imported"]) <= set(preload.MODULES) - set(got["before"])
    assert "pyiceberg.catalog.sql" in got["imported"]  # not loaded by the settings themselves


def test_the_warm_start_can_be_turned_off():
    got = _run(OBSLAKE_PRELOAD="0")
    assert got["handlers"] == 1 and got["imported"] == []
    assert "pyiceberg.catalog.sql" not in got["loaded"]
