"""Job status as plain data (for `obslake status` and the Airflow UI), from the import ledger."""

from __future__ import annotations

import datetime as dt

from obslake.exceptions import printable
from obslake.lake.catalog import LakeSettings
from obslake.lake.ledger import Ledger


def job_status(job_name: str, *, ledger: Ledger | None = None, errors: int = 5) -> dict:
    """Counts per status, rows, bad rows, last import and the latest errors of one job.

    Returns:
        ``{"job", "files": {"pending", "succeeded", "failed"}, "rows", "bad_rows", "last_import",
        "latest_errors": [{"file", "etag", "when", "error"}]}`` — JSON-able except ``last_import``
        and ``when`` (datetimes).
    """
    ledger = ledger or Ledger(LakeSettings.from_env().state_uri)
    rows = ledger.rows(job_name)
    files = {"pending": 0, "succeeded": 0, "failed": 0}
    for r in rows:
        files[r["status"]] = files.get(r["status"], 0) + 1
    done = [r for r in rows if r["status"] == "succeeded" and r["finished_at"]]
    # failed files, and pending ones whose last attempt failed transiently (never "pending" with nothing)
    failed = sorted(
        (r for r in rows if r["status"] == "failed" or (r["status"] == "pending" and r["error"])),
        key=lambda r: r["finished_at"] or r["first_seen"],
        reverse=True,
    )
    return {
        "job": job_name,
        "files": files,
        "rows": sum(r["rows"] or 0 for r in done),
        "bad_rows": sum(r["bad_rows"] or 0 for r in done),
        "last_import": max((r["finished_at"] for r in done), default=None),
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
            for r in failed[:errors]
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
    if status["latest_errors"]:
        lines.append("latest errors:")
        for e in status["latest_errors"]:
            state = f"{e.get('status', 'failed')}, {e.get('attempts') or 1} attempt(s)"
            lines.append(f"  {printable(e['file'])} (etag {printable(e['etag'][:12])}, {state}):")
            lines.extend(f"    {printable(line)}" for line in e["error"].splitlines()[:8])
    return "\n".join(lines)
