"""Trace source over an Arize Phoenix database (SQLite or PostgreSQL), read only.

Phoenix (verified on 20.26, ``phoenix/db/models.py``) keeps traces in ``projects``, ``traces``
(``project_rowid``, ``trace_id``, ``start_time``, ``end_time``) and ``spans`` (``trace_rowid``,
``span_id``, ``parent_id``, …, ``cumulative_*``), and annotations in ``span_annotations``,
``trace_annotations`` and ``document_annotations`` (upserted on name + span/trace [+ document
position] + ``identifier``, with ``updated_at``). Spans and traces carry no insertion or update time.

Change capture, per project:

* **New spans** are found by the integer ``spans.id`` (insertion order): every trace that received a
  span with ``id > span_id_max`` is exported whole, since a late child changed its ancestors'
  ``cumulative_*`` columns and the trace's end time.
* **Annotation changes** are found by ``updated_at >= annotation_updated_at - overlap`` in the three
  annotation tables, where ``annotation_updated_at`` is the database's clock when the previous sync
  read (``CURRENT_TIMESTAMP``): Phoenix stamps ``updated_at`` before its commit (to the second on
  SQLite; on receipt for queued writes), so the window re-reads ``overlap`` before it. To keep a sync
  without changes empty, the cursor also holds fingerprints of the newest annotations it covered
  (``annotations_seen``: at most 128, 8 bytes each): those are skipped; anything else in the window
  (a same-second write, a late commit) is exported.
* Trace annotations go onto the trace's root span (the earliest-starting span without a parent) as
  ``trace.<name>``; document annotations onto their span as ``document.<position>.<name>``.

``changed_at`` is the latest of the trace's ``end_time`` (Phoenix has no insertion time; a late span
usually moves it) and the ``updated_at`` of the span's exported annotations. ``high_watermark`` is the
largest ``changed_at`` exported so far (kept in the cursor, so it never goes back).

Note:
    The cursor is ``{"span_id_max": int, "annotation_updated_at": ISO | None, "annotations_seen": {…},
    "high_watermark": ISO | None}``; ``None`` or a cursor without ``span_id_max`` exports the whole
    history, ``{"window": [start, end]}`` re-exports the traces that ended and the spans whose
    annotations were updated in ``[start, end)`` (backfill; the cursor is returned unchanged).
    Spans are read per batch (``batch_spans``); the planning step holds the row ids of the changed
    traces and spans in memory. On Postgres (psycopg2) the span rows of 10,000 traces at a time come
    through ``COPY (SELECT …) TO STDOUT`` as CSV (times as integer microseconds, JSON as jsonb's text),
    spooled to a temporary file past 64 MB and read back by pyarrow's CSV reader in 16 MB blocks: no
    Python object per span (``copy_rows = False`` reads row by row, as on SQLite).
    Deletes: the cursor keeps ``[rows, max id]`` of ``traces`` and the three annotation tables (one
    ``count(*)`` each per sync); a table with fewer rows than before plus those inserted since lost
    some, and then the project's current annotation keys or trace ids are listed in full
    (:attr:`~obslake.fabric.model.Changes.live_annotation_keys` / ``live_trace_ids``) for the exporter
    to compare (a delete in another project of the same database triggers the listing too; it finds
    nothing). A row committed late with a lower id (several writers on Postgres) can hide a delete
    from the count until the next one.
    ``spans.id`` is a safe cursor because Phoenix inserts spans from one writer; several Phoenix
    servers writing one Postgres database could commit a lower id after a higher one.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from obslake.exceptions import ConfigError, TraceSourceUnavailableError, UnsupportedTraceSourceError
from obslake.fabric.model import ANNOTATION_SCHEMA, SPAN_SCHEMA, TS, ChangeBatch, Changes

log = logging.getLogger(__name__)

UTC = dt.UTC
TRACE_CHUNK = 500  # traces per span query
COPY_CHUNK = 10_000  # traces (or single spans) per COPY on Postgres
TRACE_PREFIX = "trace."
SEEN_CAP = 128  # annotation fingerprints kept in the cursor (it is stored with every export)
DELETABLE = ("traces", "span_annotations", "document_annotations", "trace_annotations")


class _Ts(sa.types.TypeDecorator):
    """Phoenix's ``UtcTimeStamp``: naive UTC text on SQLite, ``timestamptz`` on Postgres → aware UTC."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if dialect.name == "sqlite":
            # Phoenix writes "YYYY-MM-DD HH:MM:SS" (CURRENT_TIMESTAMP) or with ".ffffff"; compare as text
            # in the same shape ("…:42" < "…:42.000000" as text).
            fmt = "%Y-%m-%d %H:%M:%S.%f" if value.microsecond else "%Y-%m-%d %H:%M:%S"
            return value.replace(tzinfo=None).strftime(fmt)
        return value

    def process_result_value(self, value, dialect):
        return _utc(value)


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class _JsonText(sa.types.TypeDecorator):
    """A JSON column as JSON text: SQLite's stored text as is, Postgres JSONB serialised."""

    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _tables(schema: str | None) -> dict[str, sa.Table]:
    md = sa.MetaData(schema=schema)

    def annotation_columns() -> list[sa.Column]:
        return [
            sa.Column("name", sa.String),
            sa.Column("label", sa.String),
            sa.Column("score", sa.Float),
            sa.Column("explanation", sa.String),
            sa.Column("annotator_kind", sa.String),
            sa.Column("identifier", sa.String),
            sa.Column("updated_at", _Ts),
        ]

    return {
        "projects": sa.Table(
            "projects", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String)
        ),
        "traces": sa.Table(
            "traces",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("project_rowid", sa.Integer),
            sa.Column("trace_id", sa.String),
            sa.Column("start_time", _Ts),
            sa.Column("end_time", _Ts),
        ),
        "spans": sa.Table(
            "spans",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("trace_rowid", sa.Integer),
            sa.Column("span_id", sa.String),
            sa.Column("parent_id", sa.String),
            sa.Column("name", sa.String),
            sa.Column("span_kind", sa.String),
            sa.Column("start_time", _Ts),
            sa.Column("end_time", _Ts),
            sa.Column("attributes", _JsonText),
            sa.Column("events", _JsonText),
            sa.Column("status_code", sa.String),
            sa.Column("status_message", sa.String),
            sa.Column("cumulative_error_count", sa.BigInteger),
            sa.Column("cumulative_llm_token_count_prompt", sa.BigInteger),
            sa.Column("cumulative_llm_token_count_completion", sa.BigInteger),
        ),
        "span_annotations": sa.Table(
            "span_annotations",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("span_rowid", sa.Integer),
            *annotation_columns(),
        ),
        "trace_annotations": sa.Table(
            "trace_annotations",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("trace_rowid", sa.Integer),
            *annotation_columns(),
        ),
        "document_annotations": sa.Table(
            "document_annotations",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("span_rowid", sa.Integer),
            sa.Column("document_position", sa.Integer),
            *annotation_columns(),
        ),
    }


# the span rows a sync reads (PhoenixSource._span_select), in its order
_ROWS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("trace_rowid", pa.int64()),
        *[(f.name, f.type) for f in SPAN_SCHEMA if f.name != "changed_at"],
    ]
)
_TIME_COLUMNS = frozenset(f.name for f in _ROWS_SCHEMA if f.type == TS)
# as COPY writes them: the times as integer microseconds since the epoch (exact, no time zone to parse)
_ROWS_CSV_TYPES = {f.name: pa.int64() if f.name in _TIME_COLUMNS else f.type for f in _ROWS_SCHEMA}


def read_only_url(db_uri: str) -> sa.URL:
    """The URI with read-only access forced for SQLite (``file:…?mode=ro&uri=true``).

    Raises:
        ConfigError: not a SQLite or PostgreSQL URI, or an in-memory SQLite database.
    """
    try:
        url = make_url(db_uri)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"not a SQLAlchemy database URI: {exc}") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url
    if backend != "sqlite":
        raise ConfigError(f"a Phoenix database is SQLite or PostgreSQL, not {backend!r}")
    database = url.database or ""
    if database in ("", ":memory:"):
        raise ConfigError("a Phoenix SQLite URI needs the database file, e.g. sqlite:////data/phoenix.db")
    if not database.startswith("file:"):
        database = f"file:{database}"
    return url.set(database=database, query={**url.query, "mode": "ro", "uri": "true"})


@dataclasses.dataclass
class _Ann:
    """One annotation as read while planning (enough to find its span and fingerprint it)."""

    table: str
    id: int
    span_rowid: int | None  # None for trace annotations
    trace_rowid: int
    updated_at: dt.datetime
    fingerprint: int


class _Seen:
    """Fingerprints of the newest annotations a sync covered: every one updated in ``[since, until]``.

    Kept in the cursor (8 bytes each, base64) so that re-reading the overlap window does not export
    them again; at most :data:`SEEN_CAP`, whole seconds only: older ones in the window are re-exported.
    """

    def __init__(self, since: dt.datetime | None, until: dt.datetime | None, fingerprints: set[int]):
        self.since, self.until, self.fingerprints = since, until, fingerprints

    def covers(self, ann: _Ann) -> bool:
        return (
            self.since is not None
            and self.until is not None
            and self.since <= ann.updated_at <= self.until
            and ann.fingerprint in self.fingerprints
        )

    @classmethod
    def of(cls, anns: list[_Ann], start: dt.datetime, end: dt.datetime) -> _Seen:
        window = sorted((a for a in anns if start <= a.updated_at <= end), key=lambda a: a.updated_at, reverse=True)
        kept: list[_Ann] = []
        since: dt.datetime | None = None
        for i, a in enumerate(window):
            if i >= SEEN_CAP and a.updated_at != window[i - 1].updated_at:
                break  # keep whole timestamps: ``since`` must cover every annotation at or after it
            kept.append(a)
            since = a.updated_at
        if since is not None and len(kept) > SEEN_CAP:  # one timestamp holds too many: keep those after it only
            kept = [a for a in kept if a.updated_at > since]
            since = min((a.updated_at for a in kept), default=None)
        if since is not None and len(kept) == len(window):
            since = start  # the whole window is covered
        return cls(since, end if kept else None, {a.fingerprint for a in kept})

    def to_json(self) -> dict:
        raw = b"".join(f.to_bytes(8, "big") for f in sorted(self.fingerprints))
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "fingerprints": base64.b64encode(raw).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> _Seen:
        try:
            raw = base64.b64decode(data["fingerprints"])
            fps = {int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw) - 7, 8)}
            return cls(_utc(data["since"]), _utc(data["until"]), fps)
        except (TypeError, KeyError, ValueError, AttributeError):
            return cls(None, None, set())


def _fingerprint(table: str, row: Any) -> int:
    key = json.dumps(
        [
            table,
            row.id,
            getattr(row, "document_position", None),
            row.name,
            row.label,
            None if row.score is None else repr(float(row.score)),
            row.explanation,
            row.annotator_kind,
            row.identifier or "",
            row.updated_at.isoformat() if row.updated_at else None,
        ]
    )
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _chunks(seq: Sequence[int], n: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class PhoenixSource:
    """Changes of an Arize Phoenix database's projects (see the module docstring).

    Args:
        db_uri: SQLAlchemy URI of Phoenix's database: ``sqlite:////path/phoenix.db`` (opened read only,
            as ``sqlite:///file:/path/phoenix.db?mode=ro&uri=true``) or ``postgresql://…`` (every
            transaction is ``READ ONLY``).
        name: the source's name (recorded with each export).
        schema: the Postgres schema Phoenix uses (``PHOENIX_SQL_DATABASE_SCHEMA``), if any.
    """

    def __init__(self, db_uri: str, name: str = "phoenix", *, schema: str | None = None):
        self.name = name
        self.url = read_only_url(db_uri)
        self.dialect = self.url.get_backend_name()
        self.t = _tables(schema)
        self._engine: sa.Engine | None = None
        self._checked = False
        # SQLite's old default limit on bound parameters is 999
        self._in_chunk = 900 if self.dialect == "sqlite" else 10_000
        # Postgres through psycopg2: span rows by COPY … TO STDOUT read by Arrow (False: row by row, as on SQLite)
        self.copy_rows = True

    def __repr__(self) -> str:
        return f"PhoenixSource({self.url.render_as_string(hide_password=True)!r})"

    # -- connection ------------------------------------------------------------------------------
    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            kwargs: dict[str, Any] = {}
            if self.dialect == "sqlite":
                kwargs["connect_args"] = {"timeout": 30}
            else:
                kwargs["pool_pre_ping"] = True
            engine = sa.create_engine(self.url, **kwargs)
            dialect = self.dialect

            @sa.event.listens_for(engine, "connect")
            def _read_only(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                try:
                    if dialect == "sqlite":
                        cur.execute("PRAGMA query_only = ON")
                    else:
                        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                finally:
                    cur.close()
                if dialect != "sqlite":
                    dbapi_conn.commit()

            self._engine = engine
        return self._engine

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> PhoenixSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise TraceSourceUnavailableError(f"{self!r}: {exc.orig or exc}") from exc

    def _check_schema(self, conn: sa.Connection) -> None:
        if self._checked:
            return
        insp = sa.inspect(conn)
        missing = []
        for table in self.t.values():
            try:
                have = {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}
            except sa.exc.NoSuchTableError:
                have = set()
            missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
        if missing:
            raise UnsupportedTraceSourceError(
                f"{self!r} is not a Phoenix database this version reads (missing {', '.join(missing[:8])})"
            )
        self._checked = True

    def _connect(self) -> sa.Connection:
        conn = self._guard(self.engine.connect)
        try:
            self._guard(lambda: self._check_schema(conn))
        except BaseException:
            conn.close()
            raise
        return conn

    # -- TraceSource -----------------------------------------------------------------------------
    def list_projects(self) -> list[str]:
        """Phoenix project names, sorted."""
        with self._connect() as conn:
            p = self.t["projects"]
            return sorted(self._guard(lambda: list(conn.scalars(sa.select(p.c.name)))))

    def changes(
        self, project: str, cursor: dict | None, *, overlap: dt.timedelta, batch_spans: int = 50_000
    ) -> Changes:
        """See :class:`~obslake.fabric.model.TraceSource` and the module docstring."""
        if batch_spans < 1:
            raise ValueError("batch_spans must be at least 1")
        overlap = max(overlap, dt.timedelta(0))
        with self._connect() as conn:
            plan = self._guard(lambda: self._plan(conn, project, cursor, overlap))
            changes = Changes(iter(()), plan.cursor, plan.previous_watermark)
            pid = plan.project_rowid
            if pid is None:
                return changes
            if plan.deleted & {"span_annotations", "document_annotations", "trace_annotations"}:
                changes.live_annotation_keys = self._guard(lambda: self.live_annotation_keys(conn, pid))
            if "traces" in plan.deleted:
                changes.live_trace_ids = self._guard(lambda: self.live_trace_ids(conn, pid))
        changes.batches = self._stream(plan, batch_spans, changes)
        return changes

    # -- planning --------------------------------------------------------------------------------
    def _plan(self, conn: sa.Connection, project: str, cursor: dict | None, overlap: dt.timedelta) -> _Plan:
        t = self.t
        state: dict = dict(cursor) if cursor else {}  # a copy; empty without a cursor
        window = state.get("window")
        incremental = bool(state) and not window and state.get("span_id_max") is not None
        previous = _utc(state.get("high_watermark")) if incremental else None
        pid = conn.scalar(sa.select(t["projects"].c.id).where(t["projects"].c.name == project))
        if pid is None:
            log.info("%r: no project %r (yet)", self, project)
            return _Plan(None, state, previous)

        if window:
            start, end = (_utc(w) for w in window)
            if start is None or end is None:
                raise ValueError(f"{self!r}: a window cursor needs [start, end] timestamps, got {window!r}")
            tr = t["traces"]
            traces = array(
                "q",
                sorted(
                    conn.scalars(
                        sa.select(tr.c.id).where(tr.c.project_rowid == pid, tr.c.end_time >= start, tr.c.end_time < end)
                    )
                ),
            )
            anns = [a for a in self._annotations(conn, pid, start) if a.updated_at < end]
            spans = self._spans_for(conn, anns, set(traces))
            return _Plan(pid, state, None, traces=traces, spans=spans)

        # the database's clock before reading: every annotation committed before it is seen now, one
        # committed later has updated_at >= read_at - overlap (Phoenix sets it at most that long before)
        read_at = _utc(conn.scalar(sa.select(sa.func.current_timestamp())))
        if read_at is None:
            raise UnsupportedTraceSourceError(f"{self!r}: the database returned no CURRENT_TIMESTAMP")
        span_max = conn.scalar(sa.select(sa.func.max(t["spans"].c.id))) or 0
        counts = self._counts(conn)
        if not incremental:
            anns = list(self._annotations(conn, pid, read_at - overlap))
            return _Plan(pid, self._cursor(span_max, read_at, anns, overlap, None, counts), None, all_traces=True)
        deleted = self._deleted_in(conn, state.get("counts"), counts)

        old_max = int(state["span_id_max"])
        span_max = max(span_max, old_max)
        old_read = _utc(state.get("annotation_updated_at"))
        if old_read is not None:
            read_at = max(read_at, old_read)
        sp, tr = t["spans"], t["traces"]
        traces = array(
            "q",
            sorted(
                conn.scalars(
                    sa.select(sp.c.trace_rowid)
                    .distinct()
                    .join(tr, tr.c.id == sp.c.trace_rowid)
                    .where(sp.c.id > old_max, sp.c.id <= span_max, tr.c.project_rowid == pid)
                )
            ),
        )
        anns = list(self._annotations(conn, pid, None if old_read is None else old_read - overlap))
        seen = _Seen.from_json(state.get("annotations_seen"))
        changed = [a for a in anns if not seen.covers(a)]
        spans = self._spans_for(conn, changed, set(traces))
        log.info(
            "%r %s: %d trace(s) with new spans, %d of %d windowed annotation(s) changed%s",
            self,
            project,
            len(traces),
            len(changed),
            len(anns),
            f"; rows deleted from {', '.join(sorted(deleted))}: comparing the project's keys" if deleted else "",
        )
        return _Plan(
            pid,
            self._cursor(span_max, read_at, anns, overlap, previous, counts),
            previous,
            traces=traces,
            spans=spans,
            deleted=frozenset(deleted),
        )

    def _counts(self, conn: sa.Connection) -> dict[str, list[int]]:
        """``[rows, max id]`` of the traces and annotation tables (all projects: one index read each)."""
        out = {}
        for name in DELETABLE:
            tab = self.t[name]
            n, top = conn.execute(sa.select(sa.func.count(), sa.func.max(tab.c.id)).select_from(tab)).one()
            out[name] = [int(n or 0), int(top or 0)]
        return out

    def _deleted_in(self, conn: sa.Connection, before: Any, now: dict[str, list[int]]) -> set[str]:
        """The tables that lost rows since ``before`` (the previous sync's :meth:`_counts`): fewer rows now
        than then plus those inserted since (ids are only ever allocated upwards)."""
        if not isinstance(before, dict):
            return set()  # a cursor of an earlier version: from the next sync on
        lost = set()
        for name, (n, _top) in now.items():
            if name not in before:
                continue
            was, was_top = before[name]
            tab = self.t[name]
            added = conn.scalar(sa.select(sa.func.count()).select_from(tab).where(tab.c.id > was_top)) or 0
            if n < was + added:
                lost.add(name)
        return lost

    def live_annotation_keys(self, conn: sa.Connection, pid: int) -> pa.Table:
        """``(span_id, name, identifier)`` of every annotation of the project, named as they are exported."""
        t, tr, sp = self.t, self.t["traces"], self.t["spans"]
        span_ids: list[str] = []
        names: list[str] = []
        idents: list[str] = []
        for name in ("span_annotations", "document_annotations"):
            a = t[name]
            extra = [a.c.document_position] if name == "document_annotations" else []
            stmt = (
                sa.select(sp.c.span_id, a.c.name, a.c.identifier, *extra)
                .select_from(a.join(sp, sp.c.id == a.c.span_rowid).join(tr, tr.c.id == sp.c.trace_rowid))
                .where(tr.c.project_rowid == pid)
            )
            for r in conn.execution_options(yield_per=10_000).execute(stmt):
                span_ids.append(r.span_id)
                names.append(f"document.{r.document_position}.{r.name}" if extra else r.name)
                idents.append(r.identifier or "")
        ta = t["trace_annotations"]
        rows = list(
            conn.execute(
                sa.select(ta.c.trace_rowid, ta.c.name, ta.c.identifier)
                .select_from(ta.join(tr, tr.c.id == ta.c.trace_rowid))
                .where(tr.c.project_rowid == pid)
            )
        )
        roots = self._roots(conn, sorted({r.trace_rowid for r in rows}))
        root_ids: dict[int, str] = {}
        for chunk in _chunks(sorted(set(roots.values())), self._in_chunk):
            root_ids.update(conn.execute(sa.select(sp.c.id, sp.c.span_id).where(self._among(sp.c.id, chunk))).tuples())
        for r in rows:
            root = roots.get(r.trace_rowid)
            if root is not None:
                span_ids.append(root_ids[root])
                names.append(TRACE_PREFIX + r.name)
                idents.append(r.identifier or "")
        return pa.table(
            {"span_id": pa.array(span_ids, pa.string()), "name": pa.array(names, pa.string()),
             "identifier": pa.array(idents, pa.string())}
        )  # fmt: skip

    def live_trace_ids(self, conn: sa.Connection, pid: int) -> pa.Array:
        """The trace id of every trace of the project."""
        tr = self.t["traces"]
        stmt = sa.select(tr.c.trace_id).where(tr.c.project_rowid == pid)
        return pa.array(list(conn.execution_options(yield_per=10_000).scalars(stmt)), pa.string())

    @staticmethod
    def _cursor(
        span_max: int,
        read_at: dt.datetime,
        anns: list[_Ann],
        overlap: dt.timedelta,
        previous: dt.datetime | None,
        counts: dict[str, list[int]],
    ) -> dict:
        until = max([read_at] + [a.updated_at for a in anns])
        return {
            "span_id_max": int(span_max),
            "annotation_updated_at": read_at.isoformat(),
            "annotations_seen": _Seen.of(anns, read_at - overlap, until).to_json(),
            "high_watermark": previous.isoformat() if previous else None,
            "counts": counts,
        }

    def _annotations(self, conn: sa.Connection, pid: int, since: dt.datetime | None) -> Iterator[_Ann]:
        """Every annotation of the project's spans and traces with ``updated_at >= since``."""
        t, tr, sp = self.t, self.t["traces"], self.t["spans"]
        for name in ("span_annotations", "document_annotations", "trace_annotations"):
            a = t[name]
            cols = [
                a.c.id,
                a.c.name,
                a.c.label,
                a.c.score,
                a.c.explanation,
                a.c.annotator_kind,
                a.c.identifier,
                a.c.updated_at,
            ]
            if name == "trace_annotations":
                stmt = sa.select(*cols, sa.null().label("span_rowid"), a.c.trace_rowid).select_from(
                    a.join(tr, tr.c.id == a.c.trace_rowid)
                )
            else:
                extra = [a.c.document_position] if name == "document_annotations" else []
                stmt = sa.select(*cols, *extra, a.c.span_rowid, sp.c.trace_rowid).select_from(
                    a.join(sp, sp.c.id == a.c.span_rowid).join(tr, tr.c.id == sp.c.trace_rowid)
                )
            stmt = stmt.where(tr.c.project_rowid == pid)
            if since is not None:
                stmt = stmt.where(a.c.updated_at >= since)
            for row in conn.execute(stmt):
                yield _Ann(name, row.id, row.span_rowid, row.trace_rowid, row.updated_at, _fingerprint(name, row))

    def _among(self, col: Any, ids: Sequence[int]) -> Any:
        """``col`` is one of ``ids`` (integer row ids): on Postgres ``col = ANY(<one array parameter>)``, which
        costs one bound value however many ids (an ``IN`` of 10,000 ids is rendered, sent and parsed as 10,000
        parameters: about 20 ms a query, profiled); elsewhere ``IN``."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            return col == sa.any_(sa.bindparam(None, list(ids), type_=ARRAY(sa.BigInteger)))
        return col.in_(list(ids))

    def _spans_for(self, conn: sa.Connection, anns: Iterable[_Ann], skip_traces: set[int]) -> array:
        """Row ids of the spans that carry ``anns`` (trace annotations: the root span), minus ``skip_traces``."""
        rowids: set[int] = set()
        root_traces: set[int] = set()
        for a in anns:
            if a.trace_rowid in skip_traces:
                continue
            if a.span_rowid is None:
                root_traces.add(a.trace_rowid)
            else:
                rowids.add(a.span_rowid)
        if root_traces:
            rowids |= set(self._roots(conn, sorted(root_traces)).values())
        return array("q", sorted(rowids))

    def _roots(self, conn: sa.Connection, trace_rowids: Sequence[int]) -> dict[int, int]:
        """trace row id → row id of its root span (the earliest-starting span without a parent)."""
        sp = self.t["spans"]
        best: dict[int, tuple[dt.datetime, int]] = {}
        for chunk in _chunks(trace_rowids, self._in_chunk):
            for r in conn.execute(
                sa.select(sp.c.id, sp.c.trace_rowid, sp.c.start_time).where(
                    self._among(sp.c.trace_rowid, chunk), sp.c.parent_id.is_(None)
                )
            ):
                key = (r.start_time, r.id)
                if r.trace_rowid not in best or key < best[r.trace_rowid]:
                    best[r.trace_rowid] = key
        return {tr: key[1] for tr, key in best.items()}

    # -- streaming -------------------------------------------------------------------------------
    def _span_select(self, epoch_us: bool = False) -> sa.Select:
        """The columns of :data:`_ROWS_SCHEMA`; ``epoch_us``: the times as integer microseconds (Postgres)."""
        sp, tr = self.t["spans"], self.t["traces"]

        def time(col: Any, name: str) -> Any:
            if not epoch_us:
                return col.label(name)
            return sa.cast(sa.func.round(sa.extract("epoch", col) * 1_000_000), sa.BigInteger).label(name)

        return sa.select(
            sp.c.id,
            sp.c.trace_rowid,
            sp.c.span_id,
            tr.c.trace_id,
            sp.c.parent_id,
            sp.c.name,
            sp.c.span_kind,
            time(sp.c.start_time, "start_time"),
            time(sp.c.end_time, "end_time"),
            sp.c.status_code,
            sp.c.status_message,
            # the JSON as text from the database (Postgres: jsonb's text form), never parsed and re-serialised here
            sa.cast(sp.c.attributes, sa.Text).label("attributes"),
            sa.cast(sp.c.events, sa.Text).label("events"),
            sp.c.cumulative_error_count,
            sp.c.cumulative_llm_token_count_prompt,
            sp.c.cumulative_llm_token_count_completion,
            time(tr.c.start_time, "trace_start_time"),
            time(tr.c.end_time, "trace_end_time"),
        ).select_from(sp.join(tr, tr.c.id == sp.c.trace_rowid))

    def _trace_chunks(self, conn: sa.Connection, plan: _Plan, size: int) -> Iterator[Sequence[int]]:
        if not plan.all_traces:
            yield from _chunks(plan.traces, size)
            return
        tr = self.t["traces"]
        last = 0
        while True:
            chunk = list(
                conn.scalars(
                    sa.select(tr.c.id)
                    .where(tr.c.project_rowid == plan.project_rowid, tr.c.id > last)
                    .order_by(tr.c.id)
                    .limit(size)
                )
            )
            if not chunk:
                return
            yield chunk
            last = chunk[-1]

    def _span_queries(
        self, conn: sa.Connection, plan: _Plan, traces: bool, size: int, epoch_us: bool = False
    ) -> Iterator[sa.Select]:
        """One query per ``size`` traces of the plan (``traces``: their rows may have changed), else per
        ``size`` of its single spans (only their annotations changed)."""
        sp = self.t["spans"]
        base = self._span_select(epoch_us)
        if traces:
            for chunk in self._trace_chunks(conn, plan, size):
                yield base.where(sp.c.trace_rowid.in_(list(chunk))).order_by(sp.c.trace_rowid, sp.c.id)
            return
        for chunk in _chunks(plan.spans, size):
            yield base.where(sp.c.id.in_(list(chunk))).order_by(sp.c.id)

    def _span_tables(self, conn: sa.Connection, plan: _Plan, traces: bool) -> Iterator[pa.Table]:
        """The plan's span rows as Arrow tables of :data:`_ROWS_SCHEMA` (in bounded pieces)."""
        raw = conn.connection.dbapi_connection
        if self.copy_rows and self.dialect == "postgresql" and raw is not None:
            cur = raw.cursor()
            copies = hasattr(cur, "copy_expert")  # psycopg2: the rows as CSV through COPY, parsed by Arrow
            cur.close()
            if copies:
                yield from self._copied(conn, plan, traces)
                return
        for stmt in self._span_queries(conn, plan, traces, TRACE_CHUNK if traces else self._in_chunk):
            result = conn.execution_options(yield_per=1000).execute(stmt)
            names = list(result.keys())
            while rows := result.fetchmany(10_000):
                yield _rows_table(names, rows)

    def _copied(self, conn: sa.Connection, plan: _Plan, traces: bool) -> Iterator[pa.Table]:
        """The plan's span rows through one ``COPY (…) TO STDOUT`` per :data:`COPY_CHUNK` traces, each read back
        by pyarrow's CSV reader (no Python object per row). The next chunk's COPY runs on a second connection,
        in a thread, while this chunk's rows are handed on: Postgres produces the next rows while the exporter
        flattens and writes these (at most two chunks spooled at a time; the queries that pick each chunk's
        traces stay on ``conn``)."""
        sqls = (
            str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            for stmt in self._span_queries(conn, plan, traces, COPY_CHUNK, epoch_us=True)
        )
        side = self._guard(self.engine.raw_connection)
        pool = ThreadPoolExecutor(1, thread_name_prefix="obslake-copy")
        ahead: Future[Any] | None = None
        try:
            sql = next(sqls, None)
            ahead = pool.submit(self._copy_spool, side, sql) if sql is not None else None
            while ahead is not None:
                spool, ahead = ahead.result(), None
                try:
                    sql = next(sqls, None)
                    ahead = pool.submit(self._copy_spool, side, sql) if sql is not None else None
                    if spool is not None:
                        yield from self._read_spool(spool)
                finally:
                    if spool is not None:
                        spool.close()
        finally:
            if ahead is not None:  # given up (an error, or the consumer stopped): the COPY in flight ends first
                wait([ahead])
                if ahead.exception() is None and ahead.result() is not None:
                    ahead.result().close()
            pool.shutdown(wait=True)
            side.close()

    def _copy_spool(self, raw: Any, sql: str) -> Any:
        """``COPY (sql) TO STDOUT`` as CSV into a temporary file (in memory up to 64 MB); None if no rows."""
        dbapi = self.engine.dialect.dbapi
        spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - handed to the caller, who closes it
        try:
            cur = raw.cursor()
            try:
                cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", spool, size=1 << 20)
            finally:
                cur.close()
        except (dbapi.OperationalError, dbapi.InterfaceError) as exc:  # type: ignore[union-attr]
            spool.close()
            raise TraceSourceUnavailableError(f"{self!r}: {exc}") from exc
        except BaseException:
            spool.close()
            raise
        if not spool.tell():
            spool.close()
            return None
        spool.seek(0)
        return spool

    @staticmethod
    def _read_spool(spool: Any) -> Iterator[pa.Table]:
        """A COPY's CSV, block by block, as tables of :data:`_ROWS_SCHEMA`."""
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            spool,
            read_options=pcsv.ReadOptions(block_size=16 << 20),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            # COPY writes NULL as an unquoted empty field and quotes an empty string: only the former is
            # null (never text such as NULL, NaN or N/A, which pyarrow would take for null by default)
            convert_options=pcsv.ConvertOptions(
                column_types=_ROWS_CSV_TYPES,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            t = pa.Table.from_batches([batch])
            yield pa.table(
                [t[f.name].cast(f.type) if f.name in _TIME_COLUMNS else t[f.name] for f in _ROWS_SCHEMA],
                schema=_ROWS_SCHEMA,
            )

    def _stream(self, plan: _Plan, batch_spans: int, changes: Changes) -> Iterator[ChangeBatch]:
        high = plan.previous_watermark
        emitted = 0
        with self._connect() as conn:
            # a full export of a project without document annotations (most: they are retrieval evaluations)
            # skips their query per batch; one added after this check is after the plan's cursor too, so the next
            # sync sends it. Only for a full export: the check's cost grows with the database (at worst its
            # document annotations), a full export's already does; an incremental sync's queries stay per change.
            documents = not plan.all_traces or self._guard(
                lambda: self._has_document_annotations(conn, plan.project_rowid)
            )
            for traces in (True, False):
                pending: list[pa.Table] = []
                it = self._span_tables(conn, plan, traces)
                while True:
                    table = self._guard(lambda: next(it, None))  # noqa: B023 (called at once, in this iteration)
                    if table is not None and table.num_rows:
                        pending.append(table)
                    size = sum(t.num_rows for t in pending)
                    while size and (table is None or size >= batch_spans):
                        rows = pa.concat_tables(pending).combine_chunks()
                        head, rest = rows.slice(0, batch_spans), rows.slice(batch_spans)
                        pending = [rest] if rest.num_rows else []
                        size = rest.num_rows
                        batch = self._guard(functools.partial(self._batch, conn, head, documents))
                        batch.spans_changed = traces
                        mark = pc.max(batch.spans["changed_at"]).as_py()
                        if mark is not None and (high is None or mark > high):
                            high = mark
                        emitted += head.num_rows
                        changes.high_watermark = high
                        if plan.cursor.get("span_id_max") is not None:
                            plan.cursor["high_watermark"] = high.isoformat() if high else None
                        yield batch
                    if table is None:
                        break
        log.info("%r: exported %d span(s), high watermark %s", self, emitted, high)

    def _has_document_annotations(self, conn: sa.Connection, pid: int | None) -> bool:
        """Whether any span of project ``pid`` has a document annotation (one query per full export)."""
        da, sp, tr = self.t["document_annotations"], self.t["spans"], self.t["traces"]
        found = sa.exists(
            sa.select(da.c.id)
            .select_from(da.join(sp, sp.c.id == da.c.span_rowid).join(tr, tr.c.id == sp.c.trace_rowid))
            .where(tr.c.project_rowid == pid)
        )
        return bool(conn.scalar(sa.select(found)))

    def _batch(self, conn: sa.Connection, rows: pa.Table, documents: bool = True) -> ChangeBatch:
        t = self.t
        span_ids = rows["span_id"].to_pylist()
        span_of = dict(zip(rows["id"].to_pylist(), span_ids, strict=True))
        rowids = list(span_of)
        ann: list[dict[str, Any]] = []

        def add(span_rowid: int, name: str, a: Any) -> None:
            ann.append(
                {
                    "span_id": span_of[span_rowid],
                    "name": name,
                    "label": a.label,
                    "score": None if a.score is None else float(a.score),
                    "explanation": a.explanation,
                    "annotator_kind": a.annotator_kind,
                    "identifier": a.identifier or "",
                    "updated_at": a.updated_at,
                }
            )

        sa_t, da_t, ta_t = t["span_annotations"], t["document_annotations"], t["trace_annotations"]

        def cols(a: Any) -> list[Any]:
            return [a.c.name, a.c.label, a.c.score, a.c.explanation, a.c.annotator_kind, a.c.identifier, a.c.updated_at]

        for chunk in _chunks(rowids, self._in_chunk):
            for a in conn.execute(
                sa.select(sa_t.c.span_rowid, *cols(sa_t))
                .where(self._among(sa_t.c.span_rowid, chunk))
                .order_by(sa_t.c.id)
            ):
                add(a.span_rowid, a.name, a)
            if not documents:
                continue
            for a in conn.execute(
                sa.select(da_t.c.span_rowid, da_t.c.document_position, *cols(da_t))
                .where(self._among(da_t.c.span_rowid, chunk))
                .order_by(da_t.c.id)
            ):
                add(a.span_rowid, f"document.{a.document_position}.{a.name}", a)
        parentless = sorted(set(pc.filter(rows["trace_rowid"], pc.is_null(rows["parent_id"])).to_pylist()))
        annotated: list[int] = []
        for chunk in _chunks(parentless, self._in_chunk):
            annotated += conn.scalars(
                sa.select(ta_t.c.trace_rowid).distinct().where(self._among(ta_t.c.trace_rowid, chunk))
            )
        roots = {tr: root for tr, root in self._roots(conn, sorted(annotated)).items() if root in span_of}
        for chunk in _chunks(sorted(roots), self._in_chunk):
            for a in conn.execute(
                sa.select(ta_t.c.trace_rowid, *cols(ta_t))
                .where(self._among(ta_t.c.trace_rowid, chunk))
                .order_by(ta_t.c.id)
            ):
                add(roots[a.trace_rowid], TRACE_PREFIX + a.name, a)

        latest: dict[str, dt.datetime] = {}
        for entry in ann:
            if entry["updated_at"] is not None and (
                entry["span_id"] not in latest or entry["updated_at"] > latest[entry["span_id"]]
            ):
                latest[entry["span_id"]] = entry["updated_at"]
        # changed_at: the later of the trace's end and the span's newest annotation
        newest = pa.array([latest.get(s) for s in span_ids], TS)
        as_int = pa.int64()  # (max_element_wise has no kernel for zoned timestamps)
        changed = pc.max_element_wise(rows["trace_end_time"].cast(as_int), newest.cast(as_int), skip_nulls=True).cast(
            TS
        )
        spans = pa.table([changed if f.name == "changed_at" else rows[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)
        return ChangeBatch(spans, pa.Table.from_pylist(ann, schema=ANNOTATION_SCHEMA))


def _rows_table(names: Sequence[str], rows: Sequence[Any]) -> pa.Table:
    """Rows of :meth:`PhoenixSource._span_select` (columns ``names``) as a table of :data:`_ROWS_SCHEMA`."""
    columns = dict(zip(names, zip(*rows, strict=True), strict=True))
    return pa.table([pa.array(columns[f.name], f.type) for f in _ROWS_SCHEMA], schema=_ROWS_SCHEMA)


@dataclasses.dataclass
class _Plan:
    """What one ``changes`` call exports: whole traces (row ids, or all of the project) and single spans."""

    project_rowid: int | None
    cursor: dict
    previous_watermark: dt.datetime | None
    traces: array = dataclasses.field(default_factory=lambda: array("q"))
    spans: array = dataclasses.field(default_factory=lambda: array("q"))
    all_traces: bool = False
    deleted: frozenset[str] = frozenset()  # tables that lost rows since the previous sync
