"""Lake upkeep (lake/maintenance.py) on real catalogs and files: expire, compact, remove orphans.

Every step is checked by a reader we did not write (DuckDB ``iceberg_scan``): the same rows before and after,
never a lost or doubled one, also with an import committing while compaction and expiry run (Postgres catalog)
and after a kill -9 in the middle of a compaction.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fabric.fabric_helpers import duckdb_connection
from lake_fixtures import inference_rows, to_bytes
from obslake.lake.importer import import_file
from obslake.lake.maintenance import Policy, maintain, referenced_files
from obslake.storage.local import LocalStore

NOW_POLICY = Policy(retention=dt.timedelta(0), orphan_age=dt.timedelta(0), min_files=4)
LATER = dt.timedelta(seconds=5)  # "now" a little ahead: every snapshot and file so far is older than it


def _import(lake, job, store, n, prefix="f", rows=10):
    for i in range(n):
        info = store.write(f"{prefix}{i:03d}.parquet", to_bytes(inference_rows(rows, id_prefix=f"{prefix}{i}"),
                                                                 "parquet"))
        assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"


def _duck_ids(table) -> list[str]:
    con = duckdb_connection()
    return sorted(r[0] for r in con.execute(
        f"SELECT prediction_id FROM iceberg_scan('{table.metadata_location}')").fetchall())


def _exists(uri: str) -> bool:
    return os.path.exists(uri.removeprefix("file://"))


@pytest.fixture
def filled(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    _import(lake, job, store, 12)
    return lake, job, store


def test_dry_run_plans_and_changes_nothing(filled):
    lake, job, _ = filled
    table = lake.catalog.load_table(job.table_identifier)
    report = maintain(lake.catalog, job.table_identifier, NOW_POLICY, dry_run=True,
                      now=dt.datetime.now(dt.UTC) + LATER)
    assert report.dry_run and report.snapshots_expired == 11 and report.snapshots_kept == 1
    assert report.files_compacted == 12 and report.partitions_compacted == 1
    after = lake.catalog.load_table(job.table_identifier)
    assert after.metadata_location == table.metadata_location  # nothing committed
    assert "would expire 11 snapshot(s)" in report.summary()


def test_each_step_keeps_every_row_and_a_second_run_does_nothing(filled):
    lake, job, _ = filled
    before = _duck_ids(lake.catalog.load_table(job.table_identifier))
    assert len(before) == 120
    report = maintain(lake.catalog, job.table_identifier, NOW_POLICY, now=dt.datetime.now(dt.UTC) + LATER)
    assert (report.snapshots_expired, report.files_compacted, report.files_written) == (11, 12, 1)
    table = lake.catalog.load_table(job.table_identifier)
    assert _duck_ids(table) == before  # DuckDB reads the same rows after expiry, compaction and cleanup
    assert len(table.current_snapshot().manifests(table.io)) >= 1
    assert report.orphans_removed >= 11  # the manifest lists of the 11 expired snapshots
    # the next run: the compaction's snapshot expires (it still listed the 12 small files as deleted), so the
    # small files become orphans; nothing is left to compact
    again = maintain(lake.catalog, job.table_identifier, NOW_POLICY, now=dt.datetime.now(dt.UTC) + LATER)
    assert (again.files_compacted, again.files_written) == (0, 0) and again.orphans_removed >= 12
    third = maintain(lake.catalog, job.table_identifier, NOW_POLICY, now=dt.datetime.now(dt.UTC) + LATER)
    assert (third.snapshots_expired, third.files_compacted, third.orphans_removed) == (0, 0, 0)
    assert _duck_ids(lake.catalog.load_table(job.table_identifier)) == before


def test_compaction_carries_the_summary_properties_it_is_asked_to(filled):
    """A Data Fabric table keeps its sync cursor in the latest snapshot's summary: compaction copies it."""
    lake, job, _ = filled
    maintain(lake.catalog, job.table_identifier, Policy(min_files=4), carry_properties=("obslake.job", "absent"))
    table = lake.catalog.load_table(job.table_identifier)
    tidy = table.current_snapshot()
    compaction = table.snapshot_by_id(tidy.parent_snapshot_id)
    assert (compaction.summary.get("obslake.maintenance"), tidy.summary.get("obslake.maintenance")) == (
        "compaction", "manifests")
    for snap in (compaction, tidy):
        assert snap.summary.get("obslake.job") == job.name and snap.summary.get("absent") is None
        assert snap.summary.get("obslake.source-file") is None  # never an import's: its crash check reads those


def test_manifests_of_deleted_entries_only_are_dropped(filled):
    """A compaction's snapshot lists the files it replaced as DELETED entries; every reader would plan
    through them until the next append. The upkeep commits the same live files without them."""
    lake, job, store = filled
    before = _duck_ids(lake.catalog.load_table(job.table_identifier))
    planned = maintain(lake.catalog, job.table_identifier, Policy(min_files=4), dry_run=True)
    assert planned.manifests_dropped == 0  # nothing compacted yet, nothing deleted
    report = maintain(lake.catalog, job.table_identifier, Policy(min_files=4))
    assert report.files_compacted == 12 and report.manifests_dropped == 1
    table = lake.catalog.load_table(job.table_identifier)
    compaction = table.snapshot_by_id(table.current_snapshot().parent_snapshot_id)
    assert any(m.deleted_files_count == 12 for m in compaction.manifests(table.io))
    manifests = table.current_snapshot().manifests(table.io)
    assert manifests and all(m.has_added_files() or m.has_existing_files() for m in manifests)
    assert sum(m.deleted_files_count or 0 for m in manifests) == 0
    assert _duck_ids(table) == before
    con = duckdb_connection()
    entries = con.execute(f"SELECT count(*) FROM iceberg_metadata('{table.metadata_location}')").fetchone()[0]
    assert entries == 1  # DuckDB plans over the one live file only
    again = maintain(lake.catalog, job.table_identifier, Policy(min_files=4))
    assert (again.files_compacted, again.manifests_dropped) == (0, 0)
    assert lake.catalog.load_table(job.table_identifier).metadata_location == table.metadata_location
    _import(lake, job, store, 1, prefix="g")  # imports go on as usual afterwards
    assert len(_duck_ids(lake.catalog.load_table(job.table_identifier))) == len(before) + 10


def test_orphan_removal_never_deletes_a_file_a_snapshot_references(filled, tmp_path):
    lake, job, _ = filled
    table = lake.catalog.load_table(job.table_identifier)
    stray = Path(table.location().removeprefix("file://")) / "data" / "stray-from-a-crashed-import.parquet"
    stray.write_bytes(b"PAR1")
    young = maintain(lake.catalog, job.table_identifier, Policy(min_files=100))
    assert young.orphans_removed == 0 and stray.exists()  # younger than 3 days: maybe an import writing it
    report = maintain(lake.catalog, job.table_identifier, Policy(orphan_age=dt.timedelta(0), min_files=100),
                      now=dt.datetime.now(dt.UTC) + LATER)
    assert report.snapshots_expired == 0 and report.orphans_removed == 1 and not stray.exists()
    table = lake.catalog.load_table(job.table_identifier)
    assert all(_exists(f) for f in referenced_files(table))  # every snapshot's files are all still there
    assert len(table.snapshots()) == 12 and len(_duck_ids(table)) == 120


def test_snapshots_an_unfinished_import_may_need_are_kept(filled):
    lake, job, _ = filled
    table = lake.catalog.load_table(job.table_identifier)
    oldest = dt.datetime.fromtimestamp(table.snapshots()[0].timestamp_ms / 1000, dt.UTC)
    report = maintain(lake.catalog, job.table_identifier, NOW_POLICY, dry_run=True,
                      now=dt.datetime.now(dt.UTC) + LATER, protect_since=oldest + dt.timedelta(minutes=10))
    assert report.snapshots_expired == 0  # within the clock-skew margin of the pending attempt's start


def test_disabled_by_table_property(filled):
    lake, job, _ = filled
    lake.catalog.load_table(job.table_identifier).transaction().set_properties(
        {"obslake.maintenance.disabled": "true"}).commit_transaction()
    report = maintain(lake.catalog, job.table_identifier, NOW_POLICY)
    assert report.skipped and report.snapshots_expired == 0


@pytest.mark.postgres
@pytest.mark.slow
def test_an_import_committing_during_compaction_and_expiry_loses_and_doubles_nothing(pg_lake, make_job, tmp_path):
    lake = pg_lake
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    _import(lake, job, store, 8, prefix="a")
    errors: list[BaseException] = []

    def importing():
        try:
            _import(lake, job, store, 12, prefix="b")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=importing)
    worker.start()
    policy = Policy(retention=dt.timedelta(0), orphan_age=dt.timedelta(hours=1), min_files=2)
    runs = 0
    while worker.is_alive() or runs < 2:
        maintain(lake.catalog, job.table_identifier, policy, now=dt.datetime.now(dt.UTC) + LATER)
        runs += 1
    worker.join()
    assert errors == []
    ids = _duck_ids(lake.catalog.load_table(job.table_identifier))
    assert len(ids) == len(set(ids)) == 200  # 20 files x 10 rows, each exactly once


@pytest.mark.slow
def test_kill_9_during_compaction_leaves_the_table_unchanged_then_a_rerun_compacts(filled):
    lake, job, _ = filled
    before = lake.catalog.load_table(job.table_identifier)
    code = (
        "import datetime as dt, os, signal\n"
        "from obslake.lake import maintenance\n"
        "from obslake.lake.catalog import load_catalog\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # the compacted files are written, nothing committed\n"
        "maintenance.commit_with_retry = die\n"
        f"maintenance.maintain(load_catalog(), {job.table_identifier!r}, maintenance.Policy(min_files=4))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **lake.env}, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    table = lake.catalog.load_table(job.table_identifier)
    assert table.metadata_location == before.metadata_location  # unchanged: never half compacted
    assert len(_duck_ids(table)) == 120
    report = maintain(lake.catalog, job.table_identifier, Policy(min_files=4, orphan_age=dt.timedelta(0)),
                      now=dt.datetime.now(dt.UTC) + LATER)
    assert report.files_compacted == 12 and report.orphans_removed >= 1  # the killed run's written files
    assert _duck_ids(lake.catalog.load_table(job.table_identifier)) == _duck_ids(before)
