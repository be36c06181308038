"""The obslake page in the Airflow UI: an Airflow 3.1+ plugin (a FastAPI app under ``/obslake`` and a nav entry).

Pages (server-rendered HTML, every value escaped), each refused without a valid Airflow session (the core
``requires_access_dag("GET")`` dependency: the user must be allowed to read DAGs):

* ``/obslake/``: the import jobs (status, files pending / succeeded / failed, rows, last import, the latest
  errors with their file/row/column, a link to the DAG) and the Data Fabric connectors (per project: table,
  last sync, watermark, rows, formats, the DuckDB DDL to copy);
* ``/obslake/jobs/<name>``: one job's file history (the newest 500 ledger rows) with every error in full;
* ``/obslake/api/status``: the same data as JSON.

The data comes from the YAML under ``OBSLAKE_INCLUDE_DIR`` (default: ``include/`` beside the DAGs folder), the
ledger and the connectors' tables, read when a page is asked for (nothing runs in the background).
Registered through the ``airflow.plugins`` entry point (``pip install obslake``) or a plugins folder.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/obslake"
HISTORY_ROWS = 500


def include_dir() -> Path:
    """Where the job and connector YAML are: ``OBSLAKE_INCLUDE_DIR``, else ``include/`` beside the DAGs folder."""
    if os.environ.get("OBSLAKE_INCLUDE_DIR"):
        return Path(os.environ["OBSLAKE_INCLUDE_DIR"])
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")).resolve().parent / "include"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return _e(value or "-")


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2433}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #dde2ea;padding:.4rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f9}.failed{color:#b42318;font-weight:600}.ok{color:#067647}.num{text-align:right}
pre{white-space:pre-wrap;margin:.2rem 0;font-size:.82rem;background:#fbfbfd;padding:.4rem;border-radius:4px}
details summary{cursor:pointer;color:#175cd3}.muted{color:#667085}
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def _status_data() -> dict:
    """Jobs and connectors as plain data (what the pages and ``/api/status`` show)."""
    from obslake.config import load_connectors, load_import_jobs
    from obslake.hooks.obslake import ObslakeHook, lake_settings
    from obslake.lake.ledger import Ledger
    from obslake.status import fabric_status, job_status

    root = include_dir()
    jobs, job_errors = load_import_jobs(root / "import_jobs")
    connectors, conn_errors = load_connectors(root / "connectors")
    ledger = Ledger(lake_settings()[0].state_uri)
    out: dict = {
        "include": str(root),
        "jobs": [],
        "connectors": [],
        "config_errors": [str(e) for e in (*job_errors, *conn_errors)],
    }
    for job in jobs:
        status = job_status(job.name, ledger=ledger, errors=5)
        out["jobs"].append(
            {
                **status,
                "status": job.status.value,
                "dag_id": job.dag_id,
                "source": job.source,
                "table": ".".join(job.table_identifier),
            }
        )
    for conn in connectors:
        try:
            projects = fabric_status(conn, ObslakeHook(conn.conn_id).export_catalog(conn.storage))
        except Exception as exc:  # noqa: BLE001 - a connector whose bucket cannot be reached still shows
            projects = [{"project": p, "error": f"{type(exc).__name__}: {exc}"} for p in conn.projects]
        out["connectors"].append(
            {
                "name": conn.name,
                "dag_id": conn.dag_id,
                "status": conn.status.value,
                "source": conn.source.type,
                "storage": conn.storage,
                "projects": projects,
            }
        )
    return out


def _jobs_html(jobs: list[dict]) -> str:
    if not jobs:
        return "<p class='muted'>No import jobs (add YAML under include/import_jobs/).</p>"
    rows = []
    for j in jobs:
        f = j["files"]
        errors = "".join(  # the newest error open: its located problems show without a click
            f"<details{' open' if i == 0 else ''}><summary class='failed'>{_e(e['file'])} "
            f"[{_e(e.get('code') or e['status'])}]</summary><pre>{_e(e['error'])}</pre></details>"
            for i, e in enumerate(j["latest_errors"])
        )
        rows.append(
            f"<tr><td><a href='{URL_PREFIX}/jobs/{_e(j['job'])}'>{_e(j['job'])}</a><br>"
            f"<span class='muted'>{_e(j['source'])} → {_e(j['table'])}</span></td>"
            f"<td>{_e(j['status'])}</td><td class='num'>{f['pending']}</td><td class='num ok'>{f['succeeded']}</td>"
            f"<td class='num{' failed' if f['failed'] else ''}'>{f['failed']}</td><td class='num'>{j['rows']:,}</td>"
            f"<td>{_when(j['last_import'])}</td><td>{errors or '-'}</td>"
            f"<td><a target='_top' href='/dags/{_e(j['dag_id'])}'>{_e(j['dag_id'])}</a></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("job", "status", "pending", "succeeded", "failed", "rows", "last import", "latest errors", "DAG")
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _connectors_html(connectors: list[dict]) -> str:
    if not connectors:
        return "<p class='muted'>No Data Fabric connectors (add YAML under include/connectors/).</p>"
    rows = []
    for c in connectors:
        for p in c["projects"]:
            if p.get("error"):
                detail = f"<td colspan='5' class='failed'>cannot read: {_e(p['error'])}</td>"
            else:
                ddl = f"<details><summary>DuckDB DDL</summary><pre>{_e(p['ddl'])}</pre></details>" if p["ddl"] else ""
                total = "-" if p["rows"] is None else f"{p['rows']:,}"
                detail = (
                    f"<td>{_e(p['table'])}<br><span class='muted'>{_e(p['location'])}</span></td>"
                    f"<td>{_when(p['last_sync'])}</td><td>{_e(p['watermark'] or '-')}</td>"
                    f"<td class='num'>{total}</td>"
                    f"<td>{_e(', '.join(p['formats']))}{ddl}</td>"
                )
            rows.append(
                f"<tr><td>{_e(c['name'])}<br><span class='muted'>{_e(c['source'])} source, {_e(c['status'])}</span></td>"
                f"<td>{_e(p['project'])}</td>{detail}"
                f"<td><a target='_top' href='/dags/{_e(c['dag_id'])}'>{_e(c['dag_id'])}</a></td></tr>"
            )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("connector", "project", "table", "last sync", "watermark", "rows", "formats / DDL", "DAG")
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def create_app():
    """The FastAPI app mounted at ``/obslake`` (every route requires a session allowed to read DAGs)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="obslake", dependencies=[Depends(requires_access_dag("GET"))])

    @app.get("/", response_class=HTMLResponse)
    def overview() -> str:
        data = _status_data()
        problems = "".join(f"<pre class='failed'>{_e(e)}</pre>" for e in data["config_errors"])
        return _page(
            "obslake",
            f"<p class='muted'>YAML from {_e(data['include'])}</p>{problems}"
            f"<h2>Import jobs</h2>{_jobs_html(data['jobs'])}"
            f"<h2>Data Fabric connectors</h2>{_connectors_html(data['connectors'])}",
        )

    @app.get("/jobs/{name}", response_class=HTMLResponse)
    def job_page(name: str) -> str:
        from obslake.config import load_import_jobs
        from obslake.hooks.obslake import lake_settings
        from obslake.lake.ledger import Ledger
        from obslake.status import job_status

        jobs, _ = load_import_jobs(include_dir() / "import_jobs")
        job = next((j for j in jobs if j.name == name), None)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no import job {name!r}")
        ledger = Ledger(lake_settings()[0].state_uri)
        status = job_status(name, ledger=ledger)
        history = ledger.recent(name, HISTORY_ROWS)

        def error_cell(r: dict) -> str:
            return f"<pre>{_e(r['error'])}</pre>" if r["error"] else ""

        rows = "".join(
            f"<tr><td>{_e(r['key'])}<br><span class='muted'>etag {_e((r['etag'] or '')[:12])}</span></td>"
            f"<td class='{'failed' if r['status'] == 'failed' else 'ok' if r['status'] == 'succeeded' else ''}'>"
            f"{_e(r['status'])}</td><td>{_e(r.get('code') or '')}</td><td class='num'>{_e(r['rows'] or 0)}</td>"
            f"<td>{_when(r['first_seen'])}</td><td>{_when(r['finished_at'])}</td>"
            f"<td>{error_cell(r)}</td></tr>"
            for r in history
        )
        f = status["files"]
        head = "".join(f"<th>{h}</th>" for h in ("file", "status", "code", "rows", "first seen", "finished", "error"))
        return _page(
            f"obslake job {name}",
            f"<p><a href='{URL_PREFIX}/'>all jobs</a> · <a target='_top' href='/dags/{_e(job.dag_id)}'>"
            f"{_e(job.dag_id)}</a></p><p>{_e(job.source)} → {_e('.'.join(job.table_identifier))}: "
            f"{f['succeeded']} succeeded, <span class='{'failed' if f['failed'] else ''}'>{f['failed']} failed</span>, "
            f"{f['pending']} pending; {status['rows']:,} rows</p>"
            f"<h2>File history (newest {HISTORY_ROWS})</h2><table><tr>{head}</tr>{rows}</table>",
        )

    @app.get("/api/status")
    def api_status() -> dict:
        import json

        return json.loads(json.dumps(_status_data(), default=str))

    return app


class _LazyApp:
    """An ASGI app that builds :func:`create_app` on its first request. Every Airflow process loads the plugins
    (each task process too, for macros), and building the app imports Airflow's API security module (~0.9 s
    here): only the api-server, which serves the page, pays for it."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


class _WarmStart:
    """A listener: when the scheduler's job starts (before its executor forks the workers that fork the tasks),
    import what obslake's tasks import (:mod:`obslake.preload`)."""

    @hookimpl
    def on_starting(self, component: Any) -> None:
        from obslake import preload

        if type(component).__name__ == "Job" and preload.wanted():
            preload.preload()


class ObslakePlugin(AirflowPlugin):
    """obslake's page: the FastAPI app under ``/obslake`` and an ``obslake`` entry in the UI's navigation; the
    scheduler's warm start for task processes."""

    name = "obslake"
    listeners = [_WarmStart()]  # noqa: RUF012
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "obslake"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {"name": "obslake", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "obslake"}
    ]
