"""Build one Airflow DAG per import job. Airflow is imported inside the functions only."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from pathlib import Path
from typing import Any

from obslake.config import ImportJob, JobStatus, load_import_jobs
from obslake.exceptions import ConfigError, printable

log = logging.getLogger(__name__)
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
MAX_STEM = 200  # Airflow dag ids are at most 250 characters
MAX_MESSAGE = 8000  # a config-error DAG's message (a validation error lists at most 20 problems)


def _code(text: str) -> str:
    """``text`` as a Markdown code span that no backtick inside can close early."""
    text = printable(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _code_block(text: str) -> str:
    """``text`` as a fenced Markdown code block that no line of it can close (or inject Markdown/HTML)."""
    lines = [printable(line) for line in str(text).splitlines()] or [""]
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", "\n".join(lines))), default=0) + 1)
    return f"{fence}text\n" + "\n".join(lines) + f"\n{fence}"


def _stem(path: Path) -> str:
    """A dag-id-safe name for a YAML file (the config-error DAG of a file that did not validate)."""
    return re.sub(r"[^a-z0-9_-]", "_", path.stem.lower())[:MAX_STEM] or "_"


def import_schedule(job: ImportJob) -> Any:
    """A job paused in YAML: none (a paused job costs nothing: no run starts to skip at once). A job with a
    ``window_prefix``: its cron schedule (default ``@daily``) as a data-interval timetable, each run importing
    its interval's folder (so ``airflow backfill create`` imports past windows). Otherwise the job's schedule."""
    from airflow.sdk import CronDataIntervalTimetable

    if job.status == JobStatus.paused:
        return None
    if job.window_prefix:
        cron = job.schedule if job.schedule and job.schedule not in ("@continuous", "@once") else "@daily"
        return CronDataIntervalTimetable(cron, timezone="UTC")
    return job.schedule


def build_import_dag(job: ImportJob, on_failure_callback: Any = None) -> Any:
    """The DAG ``obslake_import__<job>``: wait for new files → verify bucket → validate → import (mapped over
    batches of small files, a large file alone) → report (fails the run if a file was refused).

    A job paused in its YAML gets no schedule (a paused job costs nothing: no run starts to skip at once)."""
    from airflow.configuration import conf
    from airflow.sdk import DAG, AssetAlias

    from obslake.airflow_support import import_alias, job_to_dict
    from obslake.operators.iceberg_sync import IcebergImportOperator
    from obslake.operators.import_report import ImportReportOperator
    from obslake.operators.schema_validate import SchemaValidateOperator
    from obslake.operators.tag_verify import TagVerifyOperator
    from obslake.sensors.prefix import S3KeyPrefixSensor

    deferrable = job.deferrable
    if deferrable is None:
        deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
    job_dict = job_to_dict(job)
    with DAG(
        dag_id=job.dag_id,
        description=f"Import {job.source} into {'.'.join(job.table_identifier)} (obslake)",
        schedule=import_schedule(job),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        on_failure_callback=on_failure_callback,
        is_paused_upon_creation=job.status == JobStatus.paused,
        tags=[
            "obslake",
            "import",
            f"model:{job.model.name}" if job.model else f"traces:{job.trace_project}",
            *job.tags,
        ],
        default_args={
            "retries": job.retries,
            "retry_delay": dt.timedelta(seconds=30),
            "retry_exponential_backoff": True,
            "owner": "obslake",
        },
        doc_md=(
            f"### obslake import job `{job.name}`\n\nWatches {_code(job.source)} (formats: {', '.join(job.formats)}) "
            f"every {job.poll_interval:g}s and imports each new file version exactly once into the Iceberg "
            f"table `{'.'.join(job.table_identifier)}`. Pause the DAG to pause the job; run "
            f"`obslake status {job.name}` for file counts and errors."
        ),
    ) as dag:
        files = S3KeyPrefixSensor(task_id="wait_for_new_files", job=job_dict, deferrable=deferrable)
        verify = TagVerifyOperator(
            task_id="verify_bucket_ownership",
            source=job.source,
            conn_id=job.conn_id,
            key_variable=job.ingestion_key_variable,
            tag_name=job.tag_name,
        )
        valid = SchemaValidateOperator(task_id="validate_files", job=job_dict, files=files.output)
        imported = IcebergImportOperator.partial(
            task_id="import_files", job=job_dict, outlets=[AssetAlias(import_alias(job.name))]
        ).expand(files=valid.output)
        report = ImportReportOperator(
            task_id="report_failures", validate_task_id="validate_files", import_task_id="import_files"
        )
        files >> verify >> valid >> imported >> report
        valid >> report
    return dag


def build_config_error_dag(path_stem: str, message: str, prefix: str = "obslake_import__") -> Any:
    """A one-task DAG that fails with a config error, so a bad YAML is visible in the UI, not silent: scheduled
    ``@once``, it runs and fails as soon as the scheduler sees it (a failed run, alerts as usual).

    The message is shown in the DAG's doc as a code block (control characters escaped, a fence no
    line can close), so a YAML excerpt in it can neither forge log lines nor inject Markdown.
    """
    from airflow.sdk import DAG

    from obslake.operators.config_error import ConfigErrorOperator

    message = str(message)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "\n... (cut)"
    with DAG(
        dag_id=f"{prefix}{path_stem}",
        schedule="@once",  # runs (and fails) once as soon as it appears: red in the UI, alerts fire
        start_date=START,
        catchup=False,
        tags=["obslake", prefix.split("_")[1], "config-error"],
        is_paused_upon_creation=False,
        doc_md=f"### Invalid {'connector' if 'fabric' in prefix else 'import job'} config\n\n{_code_block(message)}",
    ) as dag:
        ConfigErrorOperator(task_id="invalid_job_config", message=message)
    return dag


def _error_dag(dags: dict[str, Any], stem: str, message: str, prefix: str) -> None:
    """Add a config-error DAG; if even that fails, log it: the other DAGs must still load."""
    try:
        dags[f"{prefix}{stem}"] = build_config_error_dag(stem, message, prefix=prefix)
    except Exception:
        log.exception("cannot build the config-error DAG %s%s", prefix, stem)


def _build_all(items: list, errors: list, build, prefix: str, what: str) -> dict[str, Any]:
    """``{dag_id: DAG}``: deleted items get none; an item whose DAG cannot be built, or a YAML that does
    not validate, gets a one-task config-error DAG, so one problem never hides the other DAGs."""
    dags: dict[str, Any] = {}
    for item in items:
        if item.status == JobStatus.deleted:
            log.info("%s %s is deleted: no DAG (its data stays)", what, item.name)
            continue
        try:
            dags[item.dag_id] = build(item)
        except Exception as exc:
            log.exception("%s %s: cannot build its DAG", what, item.name)
            _error_dag(
                dags,
                item.name,
                f"cannot build the DAG of {what} {item.name!r}: {type(exc).__name__}: {printable(exc, 500)}",
                prefix,
            )
    for err in errors:
        stem = _stem(Path(getattr(err, "path", None) or "unknown"))
        # debug, not error: every task process of every DAG of this file parses it again, and an ERROR line in
        # all their logs would bury real errors; the config-error DAG below runs once and fails with the message
        log.debug("%s", printable(err, MAX_MESSAGE))
        if f"{prefix}{stem}" not in dags:
            _error_dag(dags, stem, str(err), prefix)
    return dags


def _load_all(load, directory: str | Path, what: str) -> tuple[list, list]:
    """``load(directory)``; should it ever raise (it handles each file itself), one error instead."""
    try:
        return load(directory)
    except Exception as exc:
        log.exception("cannot load the %s YAML files in %s", what, directory)
        err = ConfigError(
            f"{printable(directory, 300)}: cannot load the {what} YAML files "
            f"({type(exc).__name__}: {printable(exc, 500)})"
        )
        err.path = Path("config_error")  # type: ignore[attr-defined]
        return [], [err]


def build_import_dags(directory: str | Path, on_failure_callback: Any = None) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every job YAML in ``directory`` (deleted jobs get no DAG).

    Never raises for anything a YAML file holds: each bad file gets its config-error DAG and every
    good file its DAG.
    """
    jobs, errors = _load_all(load_import_jobs, directory, "import job")
    build = functools.partial(build_import_dag, on_failure_callback=on_failure_callback)
    return _build_all(jobs, errors, build, "obslake_import__", "import job")


def fabric_schedule(connector) -> Any:
    """The connector's schedule as Airflow should run it: a cron schedule (``@hourly``, ``0 * * * *``) as a
    data-interval timetable, so a backfill run covers the hour (or day) before its logical date rather than
    Airflow 3's default zero-width interval (``create_cron_data_intervals=False``); no schedule when the
    connector is paused in its YAML (a paused connector costs nothing)."""
    from airflow.sdk import CronDataIntervalTimetable

    if connector.status == JobStatus.paused:
        return None
    if connector.schedule in ("@once", "@continuous") or not connector.schedule:
        return connector.schedule
    return CronDataIntervalTimetable(connector.schedule, timezone="UTC")


def build_fabric_dag(connector, on_failure_callback: Any = None) -> Any:
    """The DAG ``obslake_fabric__<connector>``: verify bucket → permission probe → sync each project (mapped)."""
    from airflow.sdk import DAG, AssetAlias

    from obslake.airflow_support import fabric_alias
    from obslake.operators.iceberg_sync import IcebergExportOperator
    from obslake.operators.storage_probe import StorageProbeOperator
    from obslake.operators.tag_verify import TagVerifyOperator

    with DAG(
        dag_id=connector.dag_id,
        description=f"Data Fabric: {connector.source.type} projects {', '.join(connector.projects)} -> {connector.root}/",
        schedule=fabric_schedule(connector),
        start_date=START,
        catchup=connector.catchup,
        max_active_runs=1,
        on_failure_callback=on_failure_callback,
        is_paused_upon_creation=connector.status == JobStatus.paused,
        tags=["obslake", "data-fabric", *connector.tags],
        default_args={
            "retries": connector.retries,
            "retry_delay": dt.timedelta(minutes=2),
            "retry_exponential_backoff": True,
            "owner": "obslake",
        },
        doc_md=(
            f"### obslake Data Fabric connector `{connector.name}`\n\nExports the traces, evaluations and "
            f"annotations of {', '.join(f'`{p}`' for p in connector.projects)} as Iceberg tables"
            f"{' (+ Delta)' if 'delta' in connector.formats else ''} to `{connector.root}/<project>/`. Each run "
            "exports what changed since the last; `airflow backfill create` re-exports a past window."
        ),
    ) as dag:
        verify = TagVerifyOperator(
            task_id="verify_bucket_ownership",
            source=connector.storage + "/",
            conn_id=connector.conn_id,
            key_variable=connector.ingestion_key_variable,
            tag_name=connector.tag_name,
        )
        probe = StorageProbeOperator(task_id="probe_permissions", uri=connector.root, conn_id=connector.conn_id)
        sync = IcebergExportOperator.partial(
            task_id="sync_project",
            connector=connector.model_dump(mode="json"),
            outlets=[AssetAlias(fabric_alias(connector.name))],
            # one sync of the connector at a time, across runs: backfill runs (which do not obey the DAG's
            # max_active_runs) and a scheduled run never commit to the same tables concurrently
            max_active_tis_per_dag=1,
        ).expand(project=list(connector.projects))
        verify >> probe >> sync
    return dag


def build_fabric_dags(directory: str | Path, on_failure_callback: Any = None) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every connector YAML (deleted connectors get none; bad ones a config-error DAG)."""
    from obslake.config import load_connectors

    connectors, errors = _load_all(load_connectors, directory, "connector")
    build = functools.partial(build_fabric_dag, on_failure_callback=on_failure_callback)
    return _build_all(connectors, errors, build, "obslake_fabric__", "connector")


MAINTENANCE_DAG_ID = "obslake_maintenance"


def maintenance_targets(jobs: list[ImportJob], connectors: list[Any]) -> list[dict[str, Any]]:
    """What ``obslake_maintenance`` maintains: the import jobs' tables (model or trace, and quarantine) in the
    lake's catalog as one target, and each Data Fabric connector's project tables as one target each."""
    tables = sorted({t for job in jobs for t in (job.table_identifier, job.quarantine_table_identifier)})
    targets: list[dict[str, Any]] = []
    if tables:
        targets.append({"kind": "lake", "tables": [list(t) for t in tables], "jobs": sorted(j.name for j in jobs)})
    targets += [{"kind": "fabric", "connector": c.model_dump(mode="json")} for c in connectors]
    return targets


def build_maintenance_dag(
    jobs: list[ImportJob], connectors: list[Any], schedule: str = "@daily", on_failure_callback: Any = None
) -> Any:
    """The DAG ``obslake_maintenance``: lake upkeep (expire snapshots, compact small files, remove orphans) of
    every table obslake writes, one mapped task per target; per-table settings are table properties
    (``obslake.maintenance.*``, see :mod:`obslake.lake.maintenance`)."""
    from airflow.sdk import DAG

    from obslake.operators.maintenance import MaintenanceOperator

    with DAG(
        dag_id=MAINTENANCE_DAG_ID,
        description="obslake lake upkeep: expire snapshots, compact small files, remove orphan files",
        schedule=schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        on_failure_callback=on_failure_callback,
        tags=["obslake", "maintenance"],
        default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5), "owner": "obslake"},
        doc_md=(
            "### obslake lake upkeep\n\nFor every model, trace and quarantine table of the import jobs and every "
            "Data Fabric project table: expire snapshots older than 7 days (never one an unfinished import may "
            "need), compact small data files per partition, remove orphan files older than 3 days. Per table: "
            "`obslake.maintenance.snapshot-retention-hours`, `.orphan-age-hours`, `.small-file-bytes`, "
            "`.disabled`. `obslake maintenance TABLE --dry-run` shows what a run would do."
        ),
    ) as dag:
        targets = maintenance_targets(jobs, connectors)
        if targets:
            MaintenanceOperator.partial(task_id="maintain").expand(target=targets)
    return dag


def build_maintenance_dags(
    include_dir: str | Path, schedule: str = "@daily", on_failure_callback: Any = None
) -> dict[str, Any]:
    """``{"obslake_maintenance": DAG}`` for the jobs and connectors under ``include_dir`` (bad YAML is reported
    by the import and fabric DAG files; its tables are simply not maintained until it is fixed)."""
    from obslake.config import load_connectors

    jobs, _ = _load_all(load_import_jobs, Path(include_dir) / "import_jobs", "job")
    connectors, _ = _load_all(load_connectors, Path(include_dir) / "connectors", "connector")
    return {MAINTENANCE_DAG_ID: build_maintenance_dag(jobs, connectors, schedule, on_failure_callback)}
