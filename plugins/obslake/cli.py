"""The ``obslake`` command.

obslake demo                 run the end-to-end demo (local S3 on loopback, import, report)
obslake validate-config      check every job YAML under include/ and print the errors
obslake dry-run JOB [FILE]   validate new files (or one file/key) of a job without writing
obslake status [JOB]         files pending/succeeded/failed, rows, last import, latest errors
obslake schema-doc           the model-type and expected-type tables
obslake fabric ddl CONNECTOR query DDL (BigQuery, Databricks, Snowflake, Athena, DuckDB) with real paths
obslake fabric sync CONNECTOR run a connector's sync now, outside Airflow
obslake maintenance TABLE    lake upkeep of one table: expire, compact, remove orphans (--dry-run)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from obslake.config import default_include_dir, load_import_job, load_import_jobs
from obslake.exceptions import ObslakeError, printable


def _jobs_dir(args) -> Path:
    return Path(args.include) / "import_jobs" if args.include else default_include_dir() / "import_jobs"


def _find_job(args, name: str):
    path = _jobs_dir(args)
    for candidate in (path / f"{name}.yaml", path / f"{name}.yml"):
        if candidate.exists():
            return load_import_job(candidate)
    raise ObslakeError(f"no job named {name!r} in {path} (expected {path / (name + '.yaml')})")


def _store(job):
    from obslake.storage import open_store

    try:
        from obslake.hooks import store_for

        return store_for(job.source, job.conn_id)
    except ImportError:
        return open_store(job.source)


def _key_of(store, job, file: str) -> str:
    """The store key of ``file``: a key as is, or a full URI of an object in the job's bucket/directory.

    For ``file://`` jobs the store's root is the job's source directory, so a full
    ``file:///abs/path/x.csv`` becomes the path relative to it (and must lie inside it).
    """
    if "://" not in file:
        return file
    import posixpath

    from obslake.exceptions import printable
    from obslake.storage.base import parse_uri

    parsed = parse_uri(file)
    if parsed.scheme != store.scheme or parsed.bucket != store.bucket:
        where = "directory" if store.scheme == "file" else "bucket"
        raise ObslakeError(
            f"{printable(file, 300)} is not in the job's {where} ({job.source}); give a key or a URI under it"
        )
    if store.scheme != "file":
        return parsed.prefix
    root = posixpath.normpath(store.root).rstrip("/") + "/"
    path = posixpath.normpath(parsed.prefix)
    if not path.startswith(root):
        raise ObslakeError(f"{printable(file, 300)} is not under the job's source {job.source}; give a file below it")
    return path[len(root) :]


def cmd_validate_config(args) -> int:
    """Every import job and every Data Fabric connector under include/: ok, or INVALID with the reason."""
    from obslake.config import load_connectors

    jobs, errors = load_import_jobs(_jobs_dir(args))
    for job in jobs:
        print(f"ok      {job.name}: {job.source} -> {'.'.join(job.table_identifier)} ({job.status.value})")
    connectors, conn_errors = load_connectors(_jobs_dir(args).parent / "connectors")
    for conn in connectors:
        print(f"ok      connector {conn.name}: {conn.source.type} {', '.join(conn.projects)} -> {conn.root}/ "
              f"({conn.status.value})")  # fmt: skip
    for err in (*errors, *conn_errors):
        print(f"INVALID {err}")
    return 1 if errors or conn_errors else 0


def cmd_dry_run(args) -> int:
    from obslake.schema.validate import validate_file

    job = _find_job(args, args.job)
    store, prefix = _store(job)
    if args.file:
        infos = [store.head(_key_of(store, job, args.file))]
    else:
        from obslake.lake.discovery import find_new_files
        from obslake.lake.ledger import Ledger

        infos, _ = find_new_files(job, store, prefix, Ledger(_lake().state_uri))
        if not infos:
            print(f"{job.name}: no new files under {job.source}")
            return 0
    from obslake.exceptions import TransientError
    from obslake.lake.catalog import load_catalog, table_arrow_schema

    table_schema = table_arrow_schema(load_catalog(_lake()), job.table_identifier)
    failed = retry = 0
    for info in infos:
        try:
            report = validate_file(job, store, info, table_schema=table_schema)
        except TransientError as exc:  # this file only: the others are still checked
            retry += 1
            print(f"{printable(store.uri(info.key))}: NOT CHECKED ({printable(exc, 500)}); try again")
            continue
        print("\n".join(printable(line) for line in report.summary().splitlines()))
        failed += not report.ok
    checked = len(infos) - retry
    print(
        f"\n{checked - failed} file(s) valid, {failed} failed{f', {retry} not checked' if retry else ''} "
        "(nothing was written)"
    )
    return 1 if failed or retry else 0


def _lake():
    """Where the lake is, as the DAGs' tasks see it: the Airflow connection ``iceberg_default`` (or
    ``OBSLAKE_LAKE_CONN_ID``) when it exists, else the ``OBSLAKE_*`` environment."""
    from obslake.hooks.obslake import lake_settings

    return lake_settings()[0]


def cmd_status(args) -> int:
    from obslake.lake.ledger import Ledger
    from obslake.status import format_status, job_status

    jobs, _ = load_import_jobs(_jobs_dir(args))
    known = {j.name: j for j in jobs}
    names = [args.job] if args.job else list(known)
    if not names:
        print(f"no jobs in {_jobs_dir(args)}")
    for name in names:
        job = known.get(name)
        ledger = Ledger(_lake().state_uri)
        print(format_status(job_status(name, ledger=ledger), job.status.value if job else "not in include/"))
        print()
    return 0


def cmd_schema_doc(args) -> int:
    from obslake.schema.model_types import markdown_tables

    print(markdown_tables())
    return 0


def _connector(args):
    from obslake.config import load_connector

    base = Path(args.include) if args.include else default_include_dir()
    for candidate in (base / "connectors" / f"{args.connector}.yaml", base / "connectors" / f"{args.connector}.yml"):
        if candidate.exists():
            return load_connector(candidate)
    raise ObslakeError(f"no connector named {args.connector!r} in {base / 'connectors'}")


def cmd_fabric_ddl(args) -> int:
    from obslake.fabric.ddl import ddl

    conn = _connector(args)
    engines = [args.engine] if args.engine else ["bigquery", "databricks", "snowflake", "athena", "duckdb"]
    given = []
    for item in args.annotation or ():
        name, _, kind = item.rpartition(":")
        if not name or kind not in ("eval", "annotation"):
            raise ObslakeError(f"--annotation {item!r}: expected NAME:eval or NAME:annotation")
        given.append((name, kind))
    for project in conn.projects:
        pairs = list(given)
        if not args.no_lake:
            try:
                from obslake.fabric.export import ProjectExporter
                from obslake.lake.catalog import load_catalog
                from obslake.storage.credentials import StorageCredentials

                catalog = load_catalog(storage=StorageCredentials.from_env(conn.storage))
                pairs += ProjectExporter(conn, project, catalog).annotation_names()
            except Exception as exc:  # noqa: BLE001 - the DDL is useful without the names: say why they are missing
                print(f"-- could not read {project}'s annotation names from the lake ({printable(exc, 200)}):")
                print("-- the view lists only those given with --annotation NAME:KIND")
        for engine in engines:
            print(f"-- ===== {engine}: {conn.name} / {project} =====")
            print(
                ddl(
                    engine,
                    table_uri=conn.storage,
                    namespace=conn.namespace,
                    project=project,
                    delta="delta" in conn.formats,
                    annotations=pairs,
                )
            )
            print()
    return 0


def cmd_fabric_setup(args) -> int:
    """Print (or ``--write``) the writer role's set-up for a connector's bucket: IAM/role, CLI, Terraform."""
    from obslake.fabric.setup import writer_setup

    conn = _connector(args)
    given = {"role": args.role, "gcp_project": args.gcp_project, "service_account": args.service_account}
    files = writer_setup(conn, storage=args.storage, **{k: v for k, v in given.items() if v})
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / f.name).write_text(f.text)
            print(f"wrote {out / f.name}: {f.title}")
        return 0
    for f in files:
        print(f"# ===== {f.name}: {f.title} =====")
        print(f.text)
    return 0


def cmd_fabric_sync(args) -> int:
    """Run a connector's sync outside Airflow (storage credentials from the environment)."""
    from obslake.fabric.export import ProjectExporter
    from obslake.fabric.sources import make_source
    from obslake.lake.catalog import load_catalog
    from obslake.storage.credentials import StorageCredentials

    conn = _connector(args)
    catalog = load_catalog(storage=StorageCredentials.from_env(conn.storage))
    from obslake.hooks import connection_uri

    source = make_source(conn.source, catalog, connection_uri)
    for project in [args.project] if args.project else conn.projects:
        r = ProjectExporter(conn, project, catalog).sync(source)
        print(
            f"{project}: {r.mode}: {r.rows} span row(s) in {r.partitions} partition(s) -> {r.location}, "
            f"{r.annotation_rows} annotation row(s) (watermark {r.watermark}, {r.seconds:.2f}s)"
        )
    return 0


def cmd_maintenance(args) -> int:
    """Lake upkeep of one table now (what the ``obslake_maintenance`` DAG does daily); ``--dry-run`` only plans."""
    import datetime as dt

    from obslake.lake.catalog import load_catalog
    from obslake.lake.iceberg import load_table
    from obslake.lake.ledger import Ledger
    from obslake.lake.maintenance import Policy, maintain
    from obslake.storage.credentials import StorageCredentials

    ident = tuple(args.table.split(".", 1))
    if len(ident) != 2:
        raise ObslakeError(f"table {args.table!r}: give it as namespace.name (e.g. ctr_space.ctr__production)")
    settings = _lake()
    catalog = load_catalog(settings)
    table = load_table(catalog, ident)
    if table is None:
        raise ObslakeError(f"no table {args.table} in the catalog")
    scheme = table.location().split("://", 1)[0]
    if scheme in ("s3", "gs"):  # a table in a bucket (Data Fabric): credentials from the environment
        catalog = load_catalog(settings, StorageCredentials.from_env(scheme))
    policy = Policy()
    if args.retention_hours is not None:
        policy = Policy(retention=dt.timedelta(hours=args.retention_hours))
    report = maintain(
        catalog,
        ident,
        policy,
        dry_run=args.dry_run,
        protect_since=Ledger(settings.state_uri).oldest_pending_since(),
    )
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="obslake", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--include", help="the include/ directory (default: $OBSLAKE_INCLUDE_DIR or ./include)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo on a local S3 (moto) on 127.0.0.1")
    demo.add_argument("--workdir", help="where the demo's lake and Airflow home go (default .obslake-demo/)")
    sub.add_parser("validate-config", help="check every job YAML")
    dry = sub.add_parser("dry-run", help="validate files of a job without writing")
    dry.add_argument("job")
    dry.add_argument("file", nargs="?", help="a key under the bucket or a full URI (default: all new files)")
    st = sub.add_parser("status", help="job status: file counts, rows, errors")
    st.add_argument("job", nargs="?")
    sub.add_parser("schema-doc", help="print the model-type and expected-type tables (as in the README)")
    fab = sub.add_parser("fabric", help="Data Fabric: query DDL, manual sync").add_subparsers(
        dest="fabric_cmd", required=True
    )
    d = fab.add_parser("ddl", help="CREATE statements for BigQuery, Databricks, Snowflake, Athena, DuckDB")
    d.add_argument("connector")
    d.add_argument("--engine", choices=["bigquery", "databricks", "snowflake", "athena", "duckdb"])
    d.add_argument(
        "--annotation",
        action="append",
        metavar="NAME:KIND",
        help="a column group of the latest view (KIND eval or annotation), besides those read from the lake",
    )
    d.add_argument("--no-lake", action="store_true", help="do not read annotation names from the exported tables")
    mt = sub.add_parser("maintenance", help="lake upkeep of one table: expire, compact, remove orphans")
    mt.add_argument("table", help="namespace.name")
    mt.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")
    mt.add_argument("--retention-hours", type=float, help="keep snapshots this young (default 7 days)")
    su = fab.add_parser("setup", help="the writer role's set-up: IAM policy / GCS role, CLI commands, Terraform")
    su.add_argument("connector")
    su.add_argument("--role", help="AWS IAM role the Airflow workers run as (default obslake-fabric-writer)")
    su.add_argument(
        "--gcp-project", help="GCP project that gets the custom role (default: a <gcp_project> placeholder)"
    )
    su.add_argument("--service-account", help="the workers' GCP service account (default ROLE@PROJECT.iam...)")
    su.add_argument("--storage", help="render for this s3:// or gs:// bucket/prefix instead of the connector's")
    su.add_argument("--write", metavar="DIR", help="write the files into DIR instead of printing them")
    sy = fab.add_parser("sync", help="sync a connector now, outside Airflow")
    sy.add_argument("connector")
    sy.add_argument("--project")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.cmd == "demo":
            try:  # the demo kit is a separate package (not the product): imported only here, only for `demo`
                from obslake_demo.demo import run_demo
            except ImportError as exc:
                print(
                    f"error: `obslake demo` needs the demo kit (package obslake_demo, plugins/obslake_demo in the "
                    f"source tree) and the `local` extra; in the source tree run ./run demo, or pip install "
                    f"'.[local]' ({type(exc).__name__}: {exc})",
                    file=sys.stderr,
                )
                return 2
            return run_demo(args.workdir)
        if args.cmd == "fabric":
            return {"ddl": cmd_fabric_ddl, "setup": cmd_fabric_setup, "sync": cmd_fabric_sync}[args.fabric_cmd](args)
        return {
            "validate-config": cmd_validate_config,
            "dry-run": cmd_dry_run,
            "status": cmd_status,
            "schema-doc": cmd_schema_doc,
            "maintenance": cmd_maintenance,
        }[args.cmd](args)
    except ObslakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
