"""Build one Airflow DAG per import job. Airflow is imported inside the functions only."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

from obslake.config import ImportJob, JobStatus, load_import_jobs

log = logging.getLogger(__name__)
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def build_import_dag(job: ImportJob) -> Any:
    """The DAG ``obslake_import__<job>``: wait for new files → verify bucket → validate → import (mapped)."""
    from airflow.configuration import conf
    from airflow.sdk import DAG

    from obslake.airflow_support import job_to_dict
    from obslake.operators.iceberg_sync import IcebergSyncOperator
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
        schedule=job.schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=job.status == JobStatus.paused,
        tags=["obslake", "import", f"model:{job.model.name}" if job.model else f"traces:{job.trace_project}",
              *job.tags],
        default_args={
            "retries": job.retries,
            "retry_delay": dt.timedelta(seconds=30),
            "retry_exponential_backoff": True,
            "owner": "obslake",
        },
        doc_md=(
            f"### obslake import job `{job.name}`\n\nWatches `{job.source}` (formats: {', '.join(job.formats)}) "
            f"every {job.poll_interval:g}s and imports each new file version exactly once into the Iceberg "
            f"table `{'.'.join(job.table_identifier)}`. Pause the DAG to pause the job; run "
            f"`obslake status {job.name}` for file counts and errors."
        ),
    ) as dag:
        files = S3KeyPrefixSensor(task_id="wait_for_new_files", job=job_dict, deferrable=deferrable)
        verify = TagVerifyOperator(
            task_id="verify_bucket_ownership", source=job.source, conn_id=job.conn_id,
            key_variable=job.ingestion_key_variable, tag_name=job.tag_name,
        )
        valid = SchemaValidateOperator(task_id="validate_files", job=job_dict, files=files.output)
        imported = IcebergSyncOperator.partial(task_id="import_file", job=job_dict).expand(file=valid.output)
        files >> verify >> valid >> imported
    return dag


def build_config_error_dag(path_stem: str, message: str, prefix: str = "obslake_import__") -> Any:
    """A one-task DAG that fails with a config error, so a bad YAML is visible in the UI, not silent."""
    from airflow.sdk import DAG

    from obslake.operators.config_error import ConfigErrorOperator

    with DAG(
        dag_id=f"{prefix}{path_stem}", schedule=None, start_date=START, catchup=False,
        tags=["obslake", prefix.split("_")[1], "config-error"], is_paused_upon_creation=False,
        doc_md=f"### Invalid {'connector' if 'fabric' in prefix else 'import job'} config\n\n```\n{message}\n```",
    ) as dag:
        ConfigErrorOperator(task_id="invalid_job_config", message=message)
    return dag


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
            dags[item.dag_id] = build_config_error_dag(
                item.name, f"cannot build the DAG of {what} {item.name!r}: {exc!r}", prefix=prefix)
    for err in errors:
        stem = re.sub(r"[^a-z0-9_-]", "_", Path(err.path).stem.lower())
        log.error("%s", err)
        if f"{prefix}{stem}" not in dags:
            dags[f"{prefix}{stem}"] = build_config_error_dag(stem, str(err), prefix=prefix)
    return dags


def build_import_dags(directory: str | Path) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every job YAML in ``directory`` (deleted jobs get no DAG)."""
    jobs, errors = load_import_jobs(directory)
    return _build_all(jobs, errors, build_import_dag, "obslake_import__", "import job")


def build_fabric_dag(connector) -> Any:
    """The DAG ``obslake_fabric__<connector>``: verify bucket → permission probe → sync each project (mapped)."""
    from airflow.sdk import DAG

    from obslake.operators.iceberg_sync import IcebergSyncOperator
    from obslake.operators.storage_probe import StorageProbeOperator
    from obslake.operators.tag_verify import TagVerifyOperator

    with DAG(
        dag_id=connector.dag_id,
        description=f"Data Fabric: {connector.source.type} projects {', '.join(connector.projects)} -> {connector.root}/",
        schedule=connector.schedule,
        start_date=START,
        catchup=connector.catchup,
        max_active_runs=1,
        is_paused_upon_creation=connector.status == JobStatus.paused,
        tags=["obslake", "data-fabric", *connector.tags],
        default_args={"retries": connector.retries, "retry_delay": dt.timedelta(minutes=2),
                      "retry_exponential_backoff": True, "owner": "obslake"},
        doc_md=(
            f"### obslake Data Fabric connector `{connector.name}`\n\nExports the traces, evaluations and "
            f"annotations of {', '.join(f'`{p}`' for p in connector.projects)} as Iceberg tables"
            f"{' (+ Delta)' if 'delta' in connector.formats else ''} to `{connector.root}/<project>/`. Each run "
            "exports what changed since the last; `airflow backfill create` re-exports a past window."
        ),
    ) as dag:
        verify = TagVerifyOperator(task_id="verify_bucket_ownership", source=connector.storage + "/",
                                   conn_id=connector.conn_id, key_variable=connector.ingestion_key_variable,
                                   tag_name=connector.tag_name)
        probe = StorageProbeOperator(task_id="probe_permissions", uri=connector.root, conn_id=connector.conn_id)
        sync = IcebergSyncOperator.partial(task_id="sync_project", mode="fabric",
                                           connector=connector.model_dump(mode="json")).expand(
            project=list(connector.projects))
        verify >> probe >> sync
    return dag


def build_fabric_dags(directory: str | Path) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every connector YAML (deleted connectors get none; bad ones a config-error DAG)."""
    from obslake.config import load_connectors

    connectors, errors = load_connectors(directory)
    return _build_all(connectors, errors, build_fabric_dag, "obslake_fabric__", "connector")
