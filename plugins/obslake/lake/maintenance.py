"""Lake upkeep: expire old snapshots, compact small data files, remove orphan files (Iceberg's own procedures).

One table at a time, each step logged with what it did (snapshots, files, bytes), idempotent (running it
twice does nothing more the second time) and planned before it acts (``dry_run`` stops after the plan):

* **expire snapshots** committed before ``now - retention`` (default 7 days). Never the current snapshot or
  another branch/tag head (pyiceberg protects them), and never one committed after the earliest start of an
  unfinished import attempt on the table (its crash check reads the snapshots since then: see
  :meth:`~obslake.lake.ledger.Ledger.mark_pending`).
* **compact** the small data files of each partition (below ``small_file_bytes``, at least ``min_files`` of
  them) into files of the target size (a change-log table, :data:`PROP_LATEST_BY`, to its latest row per
  key: every partition with more than one file): copy-on-write, one OVERWRITE commit per table that swaps exactly
  the files it read; a concurrent import only adds files, so a conflict refreshes and commits the same swap
  again (no row lost or doubled), and a concurrent compaction that removed one of the files aborts it.
* **drop manifests that only record deletions**: a compaction's (or any overwrite's) snapshot lists the
  files it removed in a manifest of DELETED entries, which pyiceberg's later overwrites carry along and
  which every reader plans through (DuckDB: 0.24 s for the 4,000 entries of one compaction, against 7 ms
  without). An empty append commits the same live files without it (as Iceberg's rewrite_manifests would).
* **remove orphan files** under the table's ``data/`` and ``metadata/`` folders that no snapshot (and no
  recent metadata file) references and that are older than ``orphan_age`` (default 3 days), so a file an
  import is writing right now is never touched. Files obslake keeps beside a Data Fabric table
  (``latest.metadata.json``, ``version-hint.text``, ``_delta_log/``) are not Iceberg's and are never
  candidates; of its ``v<N>.metadata.json`` copies (one per sync) the newest :data:`KEPT_COPIES` stay.

What bounds it: each step reads the table's metadata and, for orphans and compaction, its manifests and
file listing once; it runs daily, out of the import path, so imports never pay for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from obslake.exceptions import CommitConflictError, printable
from obslake.lake.iceberg import (
    commit_with_retry,
    latest_by,
    list_files,
    live_data_files,
    load_table,
    read_data_files,
    write_data_files,
)

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

# table properties that override the defaults per table (ALTER TABLE ... SET TBLPROPERTIES, or pyiceberg)
PROP_RETENTION = "obslake.maintenance.snapshot-retention-hours"
PROP_ORPHAN_AGE = "obslake.maintenance.orphan-age-hours"
PROP_SMALL_FILE = "obslake.maintenance.small-file-bytes"
PROP_DISABLED = "obslake.maintenance.disabled"
PROP_LATEST_BY = "obslake.maintenance.latest-by"
"""``"key1,key2;order1,order2"``: a change-log table (Data Fabric annotations) whose compaction keeps only the
latest row per key (the last by the order columns); keys never span partitions, so each partition with more
than one file is rewritten whole."""
NO_TABLE = "no such table yet"
"""``Report.skipped`` of a table that does not exist (e.g. a job's quarantine before its first bad row)."""
KEPT_COPIES = 10
"""``v<N>.metadata.json`` copies beside a Data Fabric table that the orphan step keeps (the newest)."""
_POINTER_COPY = re.compile(r"/metadata/v(\d+)\.metadata\.json$")
_PYICEBERG_METADATA = re.compile(r"(\d+-[0-9a-f-]{36}\.metadata\.json|snap-.*\.avro|[0-9a-f-]{36}-m\d+\.avro)$")


@dataclasses.dataclass(frozen=True)
class Policy:
    """How much history to keep and what counts as small (defaults, or a table's ``obslake.maintenance.*``)."""

    retention: dt.timedelta = dt.timedelta(days=7)
    orphan_age: dt.timedelta = dt.timedelta(days=3)
    small_file_bytes: int = 32 * 1024**2
    min_files: int = 4

    def for_table(self, properties: dict[str, str]) -> Policy:
        """This policy with a table's own ``obslake.maintenance.*`` properties applied."""
        out = self
        if PROP_RETENTION in properties:
            out = dataclasses.replace(out, retention=dt.timedelta(hours=float(properties[PROP_RETENTION])))
        if PROP_ORPHAN_AGE in properties:
            out = dataclasses.replace(out, orphan_age=dt.timedelta(hours=float(properties[PROP_ORPHAN_AGE])))
        if PROP_SMALL_FILE in properties:
            out = dataclasses.replace(out, small_file_bytes=int(properties[PROP_SMALL_FILE]))
        return out


@dataclasses.dataclass
class Report:
    """What one table's upkeep did (or, with ``dry_run``, would do)."""

    table: str
    dry_run: bool
    snapshots_expired: int = 0
    snapshots_kept: int = 0
    files_compacted: int = 0
    files_written: int = 0
    bytes_compacted: int = 0
    partitions_compacted: int = 0
    orphans_removed: int = 0
    orphan_bytes: int = 0
    orphans_failed: int = 0  # orphans that could not be deleted (logged each; e.g. no delete permission)
    manifests_dropped: int = 0  # manifests holding only deleted entries, left out of the current snapshot
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for XCom and the CLI."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One log line."""
        verb = "would" if self.dry_run else "did"
        if self.skipped:
            return f"{self.table}: skipped ({self.skipped})"
        return (
            f"{self.table}: {verb} expire {self.snapshots_expired} snapshot(s) (keeping {self.snapshots_kept}); "
            f"{verb} compact {self.files_compacted} file(s), {self.bytes_compacted:,} bytes in "
            f"{self.partitions_compacted} partition(s) into {self.files_written}; {verb} drop "
            f"{self.manifests_dropped} manifest(s) of deleted entries only; {verb} remove "
            f"{self.orphans_removed} orphan file(s), {self.orphan_bytes:,} bytes"
            + (f"; could not remove {self.orphans_failed} (see the warnings above)" if self.orphans_failed else "")
        )


def maintain(
    catalog: Catalog,
    ident: tuple[str, str],
    policy: Policy | None = None,
    *,
    dry_run: bool = False,
    protect_since: dt.datetime | None = None,
    now: dt.datetime | None = None,
    after_commit: Any = None,
    carry_properties: tuple[str, ...] = (),
) -> Report:
    """Expire, compact and remove orphans on one table (see the module docstring).

    Args:
        protect_since: the earliest start of an unfinished import attempt on this table (from the ledger);
            no snapshot committed since then is expired.
        now: the clock (tests).
        after_commit: called with the table after each commit (a Data Fabric table rewrites its
            ``latest.metadata.json`` and Delta log there).
        carry_properties: snapshot summary properties the compaction's snapshot copies from the current
            one (a Data Fabric table's sync cursor lives in the latest snapshot's summary).
    """
    now = now or dt.datetime.now(dt.UTC)
    table = load_table(catalog, ident)
    name = ".".join(ident)
    report = Report(name, dry_run)
    if table is None:
        report.skipped = NO_TABLE
        return report
    if table.properties.get(PROP_DISABLED, "").lower() == "true":
        report.skipped = f"{PROP_DISABLED}=true"
        return report
    policy = (policy or Policy()).for_table(table.properties)
    table = _expire(table, policy, report, now, protect_since, dry_run, after_commit)
    table = _compact(table, policy, report, dry_run, after_commit, carry_properties)
    table = _drop_deleted_manifests(table, report, dry_run, after_commit, carry_properties)
    _remove_orphans(table, policy, report, now, dry_run)
    log.info("%s", report.summary())
    return report


def _expire(
    table: Table,
    policy: Policy,
    report: Report,
    now: dt.datetime,
    protect_since: dt.datetime | None,
    dry_run: bool,
    after_commit: Any,
) -> Table:
    cutoff = now - policy.retention
    if protect_since is not None:
        from obslake.lake.importer import CLOCK_SKEW

        cutoff = min(cutoff, protect_since - CLOCK_SKEW)
    cutoff_ms = int(cutoff.timestamp() * 1000)
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    old = [s.snapshot_id for s in table.snapshots() if s.timestamp_ms < cutoff_ms and s.snapshot_id not in protected]
    report.snapshots_expired = len(old)
    report.snapshots_kept = len(table.snapshots()) - len(old)
    if dry_run or not old:
        return table
    table.maintenance.expire_snapshots().by_ids(old).commit()
    table = table.refresh()
    if after_commit is not None:
        after_commit(table)
    log.info("%s: expired %d snapshot(s) committed before %s", report.table, len(old), cutoff.isoformat())
    return table


def _compact(
    table: Table, policy: Policy, report: Report, dry_run: bool, after_commit: Any, carry: tuple[str, ...]
) -> Table:
    latest = _latest_by(table)
    by_partition: dict[Any, list[Any]] = defaultdict(list)
    for f in live_data_files(table):
        if (latest is not None or f.file_size_in_bytes < policy.small_file_bytes) and f.content == 0:
            by_partition[(f.spec_id, tuple(f.partition))].append(f)
    least = 2 if latest is not None else policy.min_files
    groups = [files for files in by_partition.values() if len(files) >= least]
    report.partitions_compacted = len(groups)
    report.files_compacted = sum(len(g) for g in groups)
    report.bytes_compacted = sum(f.file_size_in_bytes for g in groups for f in g)
    if dry_run or not groups:
        return table
    import itertools
    import uuid

    old = [f for g in groups for f in g]
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    new = []
    for files in groups:
        rows = read_data_files(table, files)
        if latest is not None:
            rows = latest_by(rows, *latest)
        new += write_data_files(table.metadata, table.io, rows, write_uuid, counter)
    report.files_written = len(new)
    old_paths = {f.file_path for f in old}

    def attempt(n: int) -> Table:
        from pyiceberg.exceptions import CommitFailedException, ValidationException

        current = table.refresh() if n else table
        props = _carried(current, "compaction", carry)
        if n and not old_paths <= {f.file_path for f in live_data_files(current)}:
            raise CommitConflictError(f"{report.table}: files being compacted were removed by another writer")
        try:
            with (
                current.transaction() as tx,
                tx.update_snapshot(snapshot_properties=props).overwrite() as ow,
            ):
                for f in old:
                    ow.delete_data_file(f)
                for f in new:
                    ow.append_data_file(f)
        except ValidationException as exc:
            # pyiceberg's overwrite refuses any file added to the partition since it began (serializable);
            # a compaction needs only the files it swaps to be live (checked above): refresh and swap again
            raise CommitFailedException(f"concurrent append: {exc}") from exc
        return current.refresh()

    table = commit_with_retry(attempt, what=f"{report.table} (compaction)")
    if after_commit is not None:
        after_commit(table)
    log.info("%s: compacted %d file(s) in %d partition(s) into %d", report.table, len(old), len(groups), len(new))
    return table


def _latest_by(table: Table) -> tuple[list[str], list[str]] | None:
    spec = table.properties.get(PROP_LATEST_BY)
    if not spec:
        return None
    keys, _, order = spec.partition(";")
    return [k for k in keys.split(",") if k], [o for o in order.split(",") if o]


def _carried(table: Table, marker: str, carry: tuple[str, ...]) -> dict[str, str]:
    snap = table.current_snapshot()
    summary = snap.summary if snap is not None else None
    props: dict[str, str] = {"obslake.maintenance": marker}
    for key in carry:
        value = summary.get(key) if summary is not None else None
        if value is not None:
            props[key] = str(value)
    return props


def _deleted_only(table: Table) -> list[Any]:
    snap = table.current_snapshot()
    if snap is None:
        return []
    return [m for m in snap.manifests(table.io) if not m.has_added_files() and not m.has_existing_files()]


def _drop_deleted_manifests(
    table: Table, report: Report, dry_run: bool, after_commit: Any, carry: tuple[str, ...]
) -> Table:
    dead = _deleted_only(table)
    report.manifests_dropped = len(dead)
    if dry_run or not dead:
        return table

    def attempt(n: int) -> Table:
        current = table.refresh() if n else table
        if not _deleted_only(current):  # a concurrent import's append already left them out
            return current
        # an append of no files: pyiceberg keeps only the manifests with added or existing entries
        with (
            current.transaction() as tx,
            tx.update_snapshot(snapshot_properties=_carried(current, "manifests", carry)).merge_append(),
        ):
            pass
        return current.refresh()

    table = commit_with_retry(attempt, what=f"{report.table} (manifests)")
    if after_commit is not None:
        after_commit(table)
    log.info("%s: dropped %d manifest(s) holding only deleted entries", report.table, len(dead))
    return table


def referenced_files(table: Table) -> set[str]:
    """Every file a snapshot of the table references: data files, manifests, manifest lists, metadata files."""
    io = table.io
    out = {table.metadata_location, *(m.metadata_file for m in table.metadata.metadata_log)}
    seen_manifests: set[str] = set()
    for snap in table.snapshots():
        out.add(snap.manifest_list)
        for manifest in snap.manifests(io):
            out.add(manifest.manifest_path)
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            out.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(io, discard_deleted=False))
    return out


def _remove_orphans(table: Table, policy: Policy, report: Report, now: dt.datetime, dry_run: bool) -> None:
    referenced = referenced_files(table)
    cutoff = now - policy.orphan_age
    location = table.location().rstrip("/")
    orphans = []
    copies: list[tuple[int, str, int]] = []  # Data Fabric's v<N>.metadata.json copies, old enough to go
    newest_copy = -1
    for folder in ("data", "metadata"):
        for path, size, mtime in list_files(table.io, f"{location}/{folder}"):
            copy = _POINTER_COPY.search(path) if folder == "metadata" else None
            if copy is not None:
                newest_copy = max(newest_copy, int(copy.group(1)))
            if path in referenced or mtime >= cutoff:
                continue
            if copy is not None:
                copies.append((int(copy.group(1)), path, size))
                continue
            if folder == "metadata" and not _PYICEBERG_METADATA.search(path):
                continue  # latest.metadata.json, version-hint.text: Data Fabric pointers
            orphans.append((path, size))
    # one copy per sync would pile up (8,760 a year for an hourly connector): keep the newest KEPT_COPIES,
    # as many as the metadata files Iceberg keeps, so a reader that just resolved version-hint.text finds it
    orphans += [(path, size) for number, path, size in copies if number <= newest_copy - KEPT_COPIES]
    if dry_run:
        report.orphans_removed = len(orphans)
        report.orphan_bytes = sum(size for _, size in orphans)
        return
    for path, size in orphans:
        try:
            table.io.delete(path)
        except FileNotFoundError:  # removed by a parallel run: idempotent
            pass
        except OSError as exc:
            report.orphans_failed += 1
            log.warning("%s: could not remove orphan %s: %s", report.table, printable(path), printable(exc, 300))
            continue
        report.orphans_removed += 1
        report.orphan_bytes += size
