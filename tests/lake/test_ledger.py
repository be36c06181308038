"""The import ledger (lake/ledger.py) on a real state database: SQLite, and Postgres (marked ``postgres``).

Status transitions of one file version (pending -> retry -> failed/succeeded), attempt counting, idempotent
re-marking, the "done" set discovery uses (with the Fix-Schema fingerprint rule), what status reports read,
concurrent first attempts, and the additive migration of a ledger created by an older obslake.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import sqlalchemy as sa

from obslake.lake.ledger import DONE, FileStatus, Ledger, ledger_table
from obslake.storage.base import ObjectInfo

JOB = "ledger_job"
T0 = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def _obj(key: str = "in/a.parquet", etag: str = "e1", bucket: str = "bkt", size: int = 123) -> ObjectInfo:
    return ObjectInfo(bucket=bucket, key=key, etag=etag, size=size, mtime=T0)


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive UTC datetimes back, Postgres aware ones (in the session's time zone)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _vid(obj: ObjectInfo) -> tuple[str, str, str]:
    return (obj.bucket, obj.key, obj.etag)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_uri(request, tmp_path) -> str:
    """A fresh, empty state database: a SQLite file, or a new Postgres database (dropped afterwards)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_lake").settings.state_uri


@pytest.fixture
def ledger(state_uri) -> Ledger:
    return Ledger(state_uri)


def test_a_first_attempt_creates_a_pending_row_that_is_not_done(ledger):
    obj = _obj(size=4567)
    before = dt.datetime.now(dt.UTC)
    ledger.mark_pending(JOB, obj)
    row = ledger.get(JOB, obj)
    assert row is not None
    assert (row["status"], row["attempts"], row["bytes"]) == ("pending", 1, 4567)
    assert row["error"] is None and row["code"] is None and row["finished_at"] is None
    assert row["first_seen"] == row["started_at"]
    assert before - dt.timedelta(seconds=5) <= _utc(row["started_at"]) <= dt.datetime.now(dt.UTC)
    assert ledger.counts(JOB) == {"pending": 1, "succeeded": 0, "failed": 0}
    assert ledger.done_versions(JOB) == set()  # a run that died mid-import is offered again
    assert ledger.get(JOB, _obj(etag="other")) is None


def test_transient_failures_keep_the_version_pending_and_count_attempts_until_it_succeeds(ledger):
    obj = _obj()
    ledger.mark_pending(JOB, obj)
    ledger.mark_retry(JOB, obj, error="S3 did not answer")
    row = ledger.get(JOB, obj)
    assert (row["status"], row["attempts"], row["code"]) == ("pending", 1, "RETRYING")
    assert row["error"] == "attempt failed, will retry: S3 did not answer"
    assert row["finished_at"] is not None
    assert ledger.done_versions(JOB) == set()

    ledger.mark_pending(JOB, obj)
    ledger.mark_retry(JOB, obj, error="catalog locked", code="CATALOG_BUSY")
    row = ledger.get(JOB, obj)
    assert (row["attempts"], row["code"], row["error"]) == (
        2,
        "CATALOG_BUSY",
        "attempt failed, will retry: catalog locked",
    )

    ledger.mark_pending(JOB, obj)
    ledger.mark_succeeded(
        JOB, obj, rows=300, table_name="tests.ctr", snapshot_id=987654321012, bad_rows=2, fingerprint="fp-a"
    )
    row = ledger.get(JOB, obj)
    assert row["status"] == "succeeded" and row["attempts"] == 3
    assert (row["rows"], row["table_name"], row["snapshot_id"], row["bad_rows"], row["schema_fingerprint"]) == (
        300,
        "tests.ctr",
        987654321012,
        2,
        "fp-a",
    )
    # the last transient error and its code are cleared: status must not list a succeeded file as an error
    assert row["error"] is None and row["code"] is None
    assert row["finished_at"] >= row["started_at"] >= row["first_seen"]
    assert ledger.counts(JOB) == {"pending": 0, "succeeded": 1, "failed": 0}
    assert ledger.done_versions(JOB) == {_vid(obj)}


def test_a_success_note_is_kept_in_the_error_column(ledger):
    obj = _obj()
    ledger.mark_succeeded(JOB, obj, rows=0, table_name="tests.ctr", snapshot_id=None, note="already committed")
    row = ledger.get(JOB, obj)
    assert (row["status"], row["rows"], row["snapshot_id"], row["error"]) == ("succeeded", 0, None, "already committed")


def test_a_failure_is_done_only_under_the_schema_it_failed_with(ledger):
    failed, succeeded = _obj("in/bad.csv"), _obj("in/good.csv")
    ledger.mark_pending(JOB, failed)
    ledger.mark_failed(JOB, failed, error="[TYPE_MISMATCH] column x", fingerprint="fp-old", code="TYPE_MISMATCH")
    ledger.mark_succeeded(JOB, succeeded, rows=1, table_name="t", snapshot_id=1, fingerprint="fp-old")
    row = ledger.get(JOB, failed)
    assert (row["status"], row["code"], row["schema_fingerprint"], row["attempts"]) == (
        "failed",
        "TYPE_MISMATCH",
        "fp-old",
        1,
    )

    assert ledger.done_versions(JOB) == {_vid(failed), _vid(succeeded)}
    assert ledger.done_versions(JOB, "fp-old") == {_vid(failed), _vid(succeeded)}
    # "Fix Schema": under a new mapping the failed file is validated again; a succeeded one never is
    assert ledger.done_versions(JOB, "fp-new") == {_vid(succeeded)}


def test_versions_are_told_apart_by_job_bucket_key_and_etag(ledger):
    base = _obj()
    ledger.mark_succeeded(JOB, base, rows=1, table_name="t", snapshot_id=1)
    others = [_obj(etag="e2"), _obj(key="in/b.parquet"), _obj(bucket="bkt2")]
    for other in others:
        assert ledger.get(JOB, other) is None
    ledger.mark_pending(JOB, others[0])  # the same key rewritten: a new version with its own row
    assert ledger.get(JOB, base)["status"] == "succeeded"
    assert ledger.get(JOB, others[0])["status"] == "pending"
    assert ledger.done_versions(JOB) == {_vid(base)}
    assert ledger.done_versions("another_job") == set()
    assert ledger.counts("another_job") == {"pending": 0, "succeeded": 0, "failed": 0}
    assert ledger.rows("another_job") == []


def test_marking_the_same_outcome_twice_keeps_one_row(ledger):
    obj = _obj()
    for _ in range(2):
        ledger.mark_succeeded(JOB, obj, rows=10, table_name="t", snapshot_id=5)
    [row] = ledger.rows(JOB)
    assert (row["status"], row["rows"], row["attempts"]) == ("succeeded", 10, 1)
    for _ in range(2):
        ledger.mark_failed(JOB, obj, error="boom", code="FILE_CORRUPT")
    [row] = ledger.rows(JOB)
    assert (row["status"], row["code"], row["attempts"]) == ("failed", "FILE_CORRUPT", 1)
    assert ledger.counts(JOB) == {"pending": 0, "succeeded": 0, "failed": 1}


def test_outcomes_recorded_without_an_attempt_create_the_row(ledger):
    """The dry run (validate task) records failures and transient errors before any import attempt."""
    failed, retried = _obj("in/f.csv", size=7), _obj("in/r.csv", size=9)
    ledger.mark_failed(JOB, failed, error="x" * 25_000, code="FILE_EMPTY", fingerprint="fp")
    row = ledger.get(JOB, failed)
    assert (row["status"], row["attempts"], row["bytes"], row["code"]) == ("failed", 1, 7, "FILE_EMPTY")
    assert len(row["error"]) == 20_000  # bounded
    assert row["first_seen"] == row["started_at"] == row["finished_at"]

    ledger.mark_retry(JOB, retried, error="y" * 25_000)
    row = ledger.get(JOB, retried)
    assert (row["status"], row["attempts"], row["bytes"], row["code"]) == ("pending", 1, 9, "RETRYING")
    assert row["error"].startswith("attempt failed, will retry: yyy") and len(row["error"]) == 20_000
    ledger.mark_pending(JOB, retried)
    assert ledger.get(JOB, retried)["attempts"] == 2


def test_rows_and_counts_are_what_status_reports_read(ledger):
    objs = {k: _obj(f"in/{k}.csv") for k in ("c", "a", "b", "d")}
    ledger.mark_pending(JOB, objs["a"])
    ledger.mark_retry(JOB, objs["a"], error="timeout")
    ledger.mark_failed(JOB, objs["b"], error="[ID_MISSING] row 3", code="ID_MISSING")
    ledger.mark_succeeded(JOB, objs["c"], rows=30, table_name="tests.ctr", snapshot_id=1, bad_rows=1)
    ledger.mark_pending(JOB, objs["d"])
    ledger.mark_succeeded("other", objs["a"], rows=1, table_name="t", snapshot_id=1)

    rows = ledger.rows(JOB)
    assert [r["key"] for r in rows] == ["in/a.csv", "in/b.csv", "in/c.csv", "in/d.csv"]  # ordered by key
    assert {c.name for c in ledger_table.columns} <= set(rows[0])
    by_key = {r["key"]: r for r in rows}
    assert (by_key["in/a.csv"]["status"], by_key["in/a.csv"]["code"]) == ("pending", "RETRYING")
    assert (by_key["in/b.csv"]["status"], by_key["in/b.csv"]["code"]) == ("failed", "ID_MISSING")
    assert (by_key["in/c.csv"]["rows"], by_key["in/c.csv"]["bad_rows"]) == (30, 1)
    assert by_key["in/d.csv"]["error"] is None
    assert ledger.counts(JOB) == {"pending": 2, "succeeded": 1, "failed": 1}
    assert set(DONE) == {FileStatus.succeeded.value, FileStatus.failed.value}


def test_concurrent_first_attempts_on_one_version_make_one_row_and_count_every_attempt(ledger):
    obj = _obj("in/raced.parquet")
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def attempt():
        try:
            barrier.wait(10)
            ledger.mark_pending(JOB, obj)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    [row] = ledger.rows(JOB)
    assert (row["status"], row["attempts"]) == ("pending", n)


def test_a_ledger_created_by_an_older_version_gains_the_new_columns(state_uri):
    """The first ledger had no ``bad_rows``, ``schema_fingerprint`` or ``code`` nor its indexes: they are added
    in place."""
    old = sa.MetaData()
    old_table = sa.Table(
        "obslake_import_ledger",
        old,
        sa.Column("job", sa.String(128), primary_key=True),
        sa.Column("bucket", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("etag", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("table_name", sa.String(512)),
        sa.Column("snapshot_id", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    engine = sa.create_engine(state_uri)
    try:
        old.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                old_table.insert(),
                [
                    {
                        "job": JOB,
                        "bucket": "bkt",
                        "key": "in/old-bad.csv",
                        "etag": "e1",
                        "status": "failed",
                        "rows": None,
                        "error": "bad",
                        "attempts": 1,
                        "first_seen": T0,
                    },
                    {
                        "job": JOB,
                        "bucket": "bkt",
                        "key": "in/old-good.csv",
                        "etag": "e1",
                        "status": "succeeded",
                        "rows": 5,
                        "error": None,
                        "attempts": 1,
                        "first_seen": T0,
                    },
                ],
            )
    finally:
        engine.dispose()

    ledger = Ledger(state_uri)
    have = {c["name"] for c in sa.inspect(ledger.engine).get_columns("obslake_import_ledger")}
    assert {"bad_rows", "schema_fingerprint", "code"} <= have
    indexes = {i["name"] for i in sa.inspect(ledger.engine).get_indexes("obslake_import_ledger")}
    assert {"ix_obslake_ledger_job_status", "ix_obslake_ledger_job_first_seen"} <= indexes  # added in place too
    assert [r["key"] for r in ledger.recent(JOB, 1)] in (["in/old-bad.csv"], ["in/old-good.csv"])
    bad, good = _obj("in/old-bad.csv"), _obj("in/old-good.csv")
    row = ledger.get(JOB, bad)
    assert (row["status"], row["code"], row["schema_fingerprint"]) == ("failed", None, None)
    assert ledger.done_versions(JOB) == {_vid(bad), _vid(good)}
    # a failure recorded before fingerprints existed is validated once more under the current schema
    assert ledger.done_versions(JOB, "fp-now") == {_vid(good)}
    ledger.mark_pending(JOB, bad)
    ledger.mark_failed(JOB, bad, error="still bad", fingerprint="fp-now", code="TYPE_MISMATCH")
    assert ledger.get(JOB, bad)["attempts"] == 2
    assert ledger.done_versions(JOB, "fp-now") == {_vid(bad), _vid(good)}


def test_mark_pending_says_since_when_an_unrecorded_commit_is_possible(ledger):
    """The bounded crash check: None for a first attempt; the start of the unfinished attempts otherwise."""
    obj = _obj(key="in/crash.parquet")
    assert ledger.mark_pending(JOB, obj) is None  # new: nothing of this version can have committed
    first = _utc(ledger.get(JOB, obj)["pending_since"])
    ledger.mark_retry(JOB, obj, error="catalog down")
    again = ledger.mark_pending(JOB, obj)  # the earlier attempt may have committed before it died
    assert again is not None and _utc(again) == first
    assert ledger.mark_pending(JOB, obj) == again  # kept across attempts: the window never shrinks
    ledger.mark_failed(JOB, obj, error="bad file", code="ID_MISSING")
    assert ledger.get(JOB, obj)["pending_since"] is None
    assert ledger.mark_pending(JOB, obj) is None  # a failed attempt never commits: a fresh start


def test_has_other_version_reads_the_ledger_not_the_table(ledger):
    v1, v2 = _obj(key="in/day.csv", etag="v1"), _obj(key="in/day.csv", etag="v2")
    assert not ledger.has_other_version(JOB, v2)
    ledger.mark_pending(JOB, v1)  # an unfinished attempt on v1 may have committed: v2 must replace it
    assert ledger.has_other_version(JOB, v2)
    ledger.mark_failed(JOB, v1, error="bad", code="ID_MISSING")  # a failed v1 never committed
    assert not ledger.has_other_version(JOB, v2)
    ledger.mark_succeeded(JOB, v1, rows=3, table_name="t", snapshot_id=1)
    assert ledger.has_other_version(JOB, v2)
    assert not ledger.has_other_version(JOB, _obj(key="in/other.csv", etag="v9"))
    assert not ledger.has_other_version("another_job", v2)


def test_a_new_attempt_after_a_failure_clears_the_old_error_a_retry_keeps_its_own(ledger):
    obj = _obj(key="in/fixed.csv")
    ledger.mark_pending(JOB, obj)
    ledger.mark_failed(JOB, obj, error="[TYPE_MISMATCH] column x", code="TYPE_MISMATCH")
    ledger.mark_pending(JOB, obj)  # the schema was fixed: validated and imported again
    row = ledger.get(JOB, obj)
    assert (row["status"], row["error"], row["code"]) == ("pending", None, None)
    ledger.mark_retry(JOB, obj, error="catalog down")
    ledger.mark_pending(JOB, obj)  # a transient error stays visible while the file is retried
    row = ledger.get(JOB, obj)
    assert row["status"] == "pending" and "catalog down" in row["error"] and row["code"] == "RETRYING"


@pytest.mark.postgres
def test_a_retry_error_is_kept_when_another_worker_creates_the_row_first(pg_lake):
    """mark_retry finds no row, another worker inserts it (its first attempt), then our insert collides:
    the transient error must still be recorded on the row, not dropped. (On SQLite one writer locks the
    whole database, so the race cannot happen there.)"""
    state_uri = pg_lake.settings.state_uri
    ledger = Ledger(state_uri)
    obj = _obj("in/raced.parquet")
    rival = Ledger(state_uri)  # its own engine: another worker
    fired = []

    @sa.event.listens_for(ledger.engine, "before_cursor_execute")
    def rival_inserts_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT") and not fired:
            fired.append(statement)
            threading.Thread(target=rival.mark_pending, args=(JOB, obj)).start()
            for _ in range(200):  # wait until the rival's row is committed (its own connection)
                if rival.get(JOB, obj) is not None:
                    break
                threading.Event().wait(0.02)

    ledger.mark_retry(JOB, obj, error="S3 did not answer")
    assert fired
    row = ledger.get(JOB, obj)
    assert (row["status"], row["code"]) == ("pending", "RETRYING")
    assert "S3 did not answer" in row["error"] and row["attempts"] == 1


# -- the status summary, aggregated by the database, against the Python pass over every row it replaced -------
def _reference_summary(rows: list[dict], errors: int) -> dict:
    """What ``obslake status`` computed from every ledger row of a job before the database aggregated it."""
    def latest(rs):
        out: dict = {}
        for r in sorted(rs, key=lambda r: (r["key"], _utc(r["first_seen"]), r["etag"])):
            out[(r["bucket"], r["key"])] = r
        return list(out.values())

    current = latest(rows)
    earlier = [r for r in rows if not any(r is c for c in current)]
    done = latest([r for r in rows if r["status"] == "succeeded" and r["finished_at"]])
    succeeded = {(r["bucket"], r["key"]) for r in current if r["status"] == "succeeded"}
    failing = sorted((r for r in current if r["status"] == "failed" or (r["status"] == "pending" and r["error"])),
                     key=lambda r: (_utc(r["finished_at"] or r["first_seen"])), reverse=True)
    files = {"pending": 0, "succeeded": 0, "failed": 0}
    for r in current:
        files[r["status"]] += 1
    return {"files": files, "rows": sum(r["rows"] or 0 for r in done), "bad_rows": sum(r["bad_rows"] or 0 for r in done),
            "last_import": max((_utc(r["finished_at"]) for r in done), default=None), "earlier_versions": len(earlier),
            "fixed": sum(r["status"] == "failed" and (r["bucket"], r["key"]) in succeeded for r in earlier),
            "errors": [(r["key"], r["etag"]) for r in failing[:errors]]}


_VERSION = st.fixed_dictionaries({
    "key": st.sampled_from(["a.csv", "b.csv", "d/c.csv", "e.csv"]),
    "status": st.sampled_from(["pending", "succeeded", "failed"]),
    "rows": st.one_of(st.none(), st.integers(0, 10**6)),
    "bad_rows": st.one_of(st.none(), st.integers(0, 50)),
    "error": st.sampled_from([None, "", "boom"]),
    "finished": st.booleans(),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(_VERSION, max_size=14), errors=st.integers(1, 4))
def test_the_status_summary_is_the_pass_over_every_row(ledger, versions, errors):
    """Random histories (several versions of a key, each status, errors or none, finished or not): the summary
    the database aggregates equals the Python pass over every row, and the history is newest first."""
    import uuid

    job = f"summary_{uuid.uuid4().hex[:8]}"
    rows = []
    for i, v in enumerate(versions):  # every version seen at its own second, so "latest" has one answer
        seen = T0 + dt.timedelta(seconds=i)
        rows.append({"job": job, "bucket": "bkt", "key": v["key"], "etag": f"e{i:02d}", "status": v["status"],
                     "rows": v["rows"], "bad_rows": v["bad_rows"], "error": v["error"], "attempts": 1,
                     "first_seen": seen, "finished_at": seen + dt.timedelta(minutes=i % 3) if v["finished"] else None})
    if rows:
        with ledger.engine.begin() as conn:
            conn.execute(ledger_table.insert(), rows)
    got = ledger.summary(job, errors)
    want = _reference_summary(rows, errors)
    assert {**got, "last_import": got["last_import"] and _utc(got["last_import"]),
            "errors": [(r["key"], r["etag"]) for r in got["errors"]]} == want
    assert [r["etag"] for r in ledger.recent(job, 5)] == [r["etag"] for r in rows[::-1][:5]]
