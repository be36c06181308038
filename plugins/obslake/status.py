"""Job status as plain data (for `obslake status` and the Airflow UI), from the import ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

from obslake.exceptions import printable
from obslake.lake.catalog import LakeSettings
from obslake.lake.ledger import Ledger


def job_status(job_name: str, *, ledger: Ledger | None = None, errors: int = 5) -> dict:
    """Counts per status, rows, bad rows, last import and the latest errors of one job.

    Each file key counts once, by its latest version: a file that failed and was then fixed (a new version
    imported) is succeeded, no longer a failure; its earlier versions are counted as ``earlier_versions``
    (``fixed``: of those, the failed versions of keys now succeeded) and stay in the ledger. The database
    aggregates (:meth:`~obslake.lake.ledger.Ledger.summary`): a job with a year of files costs one query, not
    a Python pass over its history.

    Returns:
        ``{"job", "files": {"pending", "succeeded", "failed"}, "rows", "bad_rows", "last_import",
        "earlier_versions", "fixed", "latest_errors": [{"file", "etag", "when", "error", "status", "code",
        "attempts"}]}`` — JSON-able except ``last_import`` and ``when`` (datetimes).
    """
    ledger = ledger or Ledger(LakeSettings.from_env().state_uri)
    summary = ledger.summary(job_name, errors)
    return {
        "job": job_name,
        "files": summary["files"],
        "rows": summary["rows"],
        "bad_rows": summary["bad_rows"],
        "last_import": summary["last_import"],
        "earlier_versions": summary["earlier_versions"],
        "fixed": summary["fixed"],
        "latest_errors": [
            {
                "file": f"{r['bucket']}/{r['key']}" if r["bucket"] else r["key"],
                "etag": r["etag"],
                "when": r["finished_at"],
                "error": r["error"] or "",
                "status": r["status"],
                "code": r.get("code"),
                "attempts": r["attempts"],
            }
            for r in summary["errors"]
        ],
    }


def format_status(status: dict, job_status_word: str = "") -> str:
    """A readable block: one summary table row, then each recent error with its located problems."""
    f = status["files"]
    last = status["last_import"]
    if isinstance(last, dt.datetime):
        last = last.strftime("%Y-%m-%d %H:%M:%S")
    head = ["job", "status", "pending", "succeeded", "failed", "rows", "bad rows", "last import"]
    row = [
        status["job"],
        job_status_word or "-",
        f["pending"],
        f["succeeded"],
        f["failed"],
        f"{status['rows']:,}",
        f"{status['bad_rows']:,}",
        last or "-",
    ]
    widths = [max(len(str(h)), len(str(v))) for h, v in zip(head, row, strict=True)]
    lines = [
        "  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)),
    ]
    if status.get("earlier_versions"):
        lines.append(
            f"{status['earlier_versions']} earlier version(s) of changed files kept in the ledger"
            f" ({status.get('fixed', 0)} failed, then fixed by a new version)"
        )
    if status["latest_errors"]:
        lines.append("latest errors:")
        for e in status["latest_errors"]:
            state = f"{e.get('status', 'failed')}, {e.get('attempts') or 1} attempt(s)"
            lines.append(f"  {printable(e['file'])} (etag {printable(e['etag'][:12])}, {state}):")
            lines.extend(f"    {printable(line)}" for line in e["error"].splitlines()[:8])
    return "\n".join(lines)


def run_summary(invalid: list[dict] | None, imported: list | None) -> dict:
    """The verdict of one import run: what its validation refused and what its import tasks committed.

    Args:
        invalid: the files the validation step refused (``{"file", "code", "error"}`` each).
        imported: the import tasks' results, one list per task (``ImportResult.to_dict()`` each).

    Returns:
        ``{"failed": [{"file", "code", "error"}], "imported": n, "rows": n, "already_imported": n}``.
    """
    results = [r for task in imported or [] if task for r in (task if isinstance(task, list) else [task]) if r]
    return {
        "failed": [dict(f) for f in invalid or []],
        "imported": sum(r.get("status") == "imported" for r in results),
        "rows": sum(r.get("rows") or 0 for r in results if r.get("status") == "imported"),
        "already_imported": sum(r.get("status") == "already-imported" for r in results),
    }


def format_run_summary(summary: dict, limit: int = 20) -> str:
    """``summary`` (of :func:`run_summary`) as the lines an alert shows: counts, then each refused file."""
    failed = summary["failed"]
    lines = [
        f"{summary['imported']} file(s) imported ({summary['rows']:,} rows), {summary['already_imported']} imported "
        f"before, {len(failed)} failed"
    ]
    for f in failed[:limit]:
        lines.append(f"FAILED {printable(f['file'])} [{printable(f.get('code') or '-')}]")
        lines.extend(f"    {printable(line)}" for line in str(f.get("error") or "").splitlines()[:12])
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more (obslake status <job>)")
    return "\n".join(lines)


def fabric_status(connector, catalog) -> list[dict]:
    """Per project of a Data Fabric connector: its tables, the last sync and the DuckDB DDL to read it.

    Args:
        connector: the connector (:class:`~obslake.config.Connector`).
        catalog: a catalog that reads the connector's bucket (``ObslakeHook.export_catalog``).

    Returns:
        ``[{"project", "table", "location", "last_sync", "watermark", "rows_last_sync", "rows", "mode",
        "formats", "annotations", "ddl", "error"}]``; a project whose tables cannot be read has ``error`` set
        (the others are still listed).
    """
    from obslake.fabric.ddl import ddl
    from obslake.fabric.export import PROP_ROWS, PROP_WATERMARK, ProjectExporter

    out = []
    for project in connector.projects:
        row: dict = {
            "project": project,
            "location": connector.project_location(project),
            "formats": list(connector.formats),
            "table": None,
            "last_sync": None,
            "watermark": None,
            "rows_last_sync": None,
            "rows": None,
            "annotations": [],
            "ddl": "",
            "error": None,
        }
        try:
            exporter = ProjectExporter(connector, project, catalog)
            row["table"] = ".".join(exporter.identifier)
            table = exporter.table()
            snap = table.current_snapshot() if table is not None else None
            if snap is not None:
                summary: Any = snap.summary or {}
                row["last_sync"] = dt.datetime.fromtimestamp(snap.timestamp_ms / 1000, dt.UTC)
                row["watermark"] = summary.get(PROP_WATERMARK) or None
                row["rows_last_sync"] = int(summary.get(PROP_ROWS) or 0)
                row["rows"] = int(summary.get("total-records") or 0)
            row["annotations"] = exporter.annotation_names()
            row["ddl"] = ddl(
                "duckdb",
                table_uri=connector.storage,
                namespace=connector.namespace,
                project=project,
                delta="delta" in connector.formats,
                annotations=row["annotations"],
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable project must not hide the others
            row["error"] = f"{type(exc).__name__}: {printable(exc, 500)}"
        out.append(row)
    return out
