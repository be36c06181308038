"""PhoenixSource against a real Phoenix 20.26 server (spans over OTLP, annotations over REST).

One session-scoped server; every test uses its own Phoenix project, so tests never see each other's
spans. The change-capture scenario runs as one test because each step starts from the previous cursor;
it runs against Phoenix on SQLite and on Postgres.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obslake.fabric.model import ANNOTATION_SCHEMA, SPAN_SCHEMA, TraceSource
from obslake.fabric.phoenix import PhoenixSource
from phoenix_server import (  # noqa: F401  (phoenix_server is the fixture)
    PhoenixServer,
    annotate,
    annotate_document,
    annotate_trace,
    new_span_id,
    new_trace_id,
    phoenix_pg_server,
    phoenix_server,
    send_spans,
)

pytestmark = [pytest.mark.slow, pytest.mark.phoenix]

UTC = dt.timezone.utc
OVERLAP = dt.timedelta(seconds=30)
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # event times: long before the ingest times


def collect(changes) -> tuple[pa.Table, pa.Table, list]:
    """All batches of a Changes (checking each batch's annotations belong to its spans)."""
    batches = list(changes.batches)
    for b in batches:
        assert b.spans.schema == SPAN_SCHEMA and b.annotations.schema == ANNOTATION_SCHEMA
        assert set(b.annotations["span_id"].to_pylist()) <= set(b.spans["span_id"].to_pylist())
    spans = pa.concat_tables([b.spans for b in batches]) if batches else SPAN_SCHEMA.empty_table()
    anns = pa.concat_tables([b.annotations for b in batches]) if batches else ANNOTATION_SCHEMA.empty_table()
    assert len(set(spans["span_id"].to_pylist())) == spans.num_rows, "a span was returned twice in one call"
    return spans, anns, batches


def by_id(spans: pa.Table) -> dict[str, dict]:
    return {r["span_id"]: r for r in spans.to_pylist()}


def ann_set(anns: pa.Table, span_id: str | None = None) -> set[tuple]:
    return {(a["span_id"], a["name"], a["label"], a["score"], a["explanation"], a["annotator_kind"], a["identifier"])
            for a in anns.to_pylist() if span_id is None or a["span_id"] == span_id}


def next_second() -> None:
    """Sleep past the next whole second (Phoenix on SQLite stores updated_at to the second)."""
    now = time.time()
    time.sleep(1.02 - (now - int(now)))


def db_updated_at(server: PhoenixServer, name: str, span_id: str) -> str:
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT a.updated_at FROM span_annotations a JOIN spans s ON s.id = a.span_rowid "
            "WHERE a.name = ? AND s.span_id = ?", (name, span_id)).fetchone()[0]


def three_span_trace(project: str, base_url: str) -> dict[str, str]:
    tid = new_trace_id()
    root, retrieve, llm = new_span_id(), new_span_id(), new_span_id()
    send_spans(base_url, project, [
        {"name": "agent", "trace_id": tid, "span_id": root, "kind": "CHAIN", "input": "What is Iceberg?",
         "output": "A table format.", "start": T0, "end": T0 + dt.timedelta(seconds=3),
         "attributes": {"session.id": "s-1", "user.id": "u-1"}},
        {"name": "retrieve", "trace_id": tid, "span_id": retrieve, "parent_id": root, "kind": "RETRIEVER",
         "status": "ERROR", "status_message": "index timeout",
         "attributes": {"retrieval.documents.0.document.id": "doc-1", "retrieval.documents.0.document.content": "x",
                        "retrieval.documents.1.document.id": "doc-2", "retrieval.documents.1.document.content": "y"},
         "start": T0 + dt.timedelta(milliseconds=100), "end": T0 + dt.timedelta(milliseconds=900)},
        {"name": "ChatCompletion", "trace_id": tid, "span_id": llm, "parent_id": root, "kind": "LLM",
         "model": "gpt-4o-mini", "prompt_tokens": 10, "completion_tokens": 5, "input": "prompt", "output": "answer",
         "start": T0 + dt.timedelta(seconds=1), "end": T0 + dt.timedelta(seconds=2, milliseconds=500),
         "events": [{"name": "first_token", "time": T0 + dt.timedelta(seconds=1, milliseconds=200),
                     "attributes": {"n": 1}}]},
    ])
    return {"trace": tid, "root": root, "retrieve": retrieve, "llm": llm}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_change_capture(backend: str, request: pytest.FixtureRequest):
    srv: PhoenixServer = request.getfixturevalue("phoenix_server" if backend == "sqlite" else "phoenix_pg_server")
    project = f"{srv.project}-cdc"
    ids = three_span_trace(project, srv.base_url)
    other_tid = new_trace_id()
    other = send_spans(srv.base_url, project, [
        {"name": "other", "trace_id": other_tid, "kind": "LLM", "prompt_tokens": 1, "completion_tokens": 1,
         "start": T0 - dt.timedelta(hours=1), "end": T0 - dt.timedelta(hours=1) + dt.timedelta(seconds=1)}])[0]
    root, retrieve, llm = ids["root"], ids["retrieve"], ids["llm"]
    annotate(srv.base_url, llm, "correctness", "correct", 1.0, "matches the docs", "LLM")
    annotate(srv.base_url, root, "helpfulness", "helpful", 0.8, None, "HUMAN", identifier="alice")
    annotate(srv.base_url, root, "helpfulness", "unhelpful", 0.1, "too short", "HUMAN", identifier="bob")
    annotate(srv.base_url, retrieve, "latency_ok", None, 0.0, None, "CODE")
    annotate_trace(srv.base_url, ids["trace"], "resolved", "yes", 1.0, "user said thanks", "HUMAN")
    annotate_document(srv.base_url, retrieve, 1, "relevance", "relevant", 0.9, None, "LLM")

    src = PhoenixSource(srv.db_uri)
    assert isinstance(src, TraceSource)
    assert project in src.list_projects()

    # 1. first call: the whole history, in batches, with every annotation --------------------------------
    c1 = src.changes(project, None, overlap=OVERLAP, batch_spans=2)
    spans, anns, batches = collect(c1)
    assert len(batches) == 2 and [b.spans.num_rows for b in batches] == [2, 2]
    rows = by_id(spans)
    assert set(rows) == {root, retrieve, llm, other["span_id"]}
    r, rt, lm = rows[root], rows[retrieve], rows[llm]
    assert (r["trace_id"], r["parent_id"], r["name"], r["span_kind"], r["status_code"]) == (
        ids["trace"], None, "agent", "CHAIN", "OK")
    assert (rt["parent_id"], rt["span_kind"], rt["status_code"], rt["status_message"]) == (
        root, "RETRIEVER", "ERROR", "index timeout")
    assert [d["document"]["id"] for d in json.loads(rt["attributes"])["retrieval"]["documents"]] == ["doc-1", "doc-2"]
    assert (lm["parent_id"], lm["span_kind"], lm["start_time"], lm["end_time"]) == (
        root, "LLM", T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=2, milliseconds=500))
    assert (r["cumulative_error_count"], r["cumulative_llm_token_count_prompt"],
            r["cumulative_llm_token_count_completion"]) == (1, 10, 5)
    assert (lm["cumulative_error_count"], lm["cumulative_llm_token_count_prompt"]) == (0, 10)
    assert (r["trace_start_time"], r["trace_end_time"]) == (T0, T0 + dt.timedelta(seconds=3))
    attrs = json.loads(lm["attributes"])
    assert attrs["llm"]["model_name"] == "gpt-4o-mini"
    assert attrs["llm"]["token_count"] == {"prompt": 10, "completion": 5, "total": 15}
    assert attrs["openinference"]["span"]["kind"] == "LLM" and attrs["input"]["value"] == "prompt"
    assert json.loads(r["attributes"])["session"]["id"] == "s-1"
    assert [e["name"] for e in json.loads(lm["events"])] == ["first_token"]
    assert json.loads(r["events"]) == []
    assert ann_set(anns) == {
        (llm, "correctness", "correct", 1.0, "matches the docs", "LLM", ""),
        (root, "helpfulness", "helpful", 0.8, None, "HUMAN", "alice"),
        (root, "helpfulness", "unhelpful", 0.1, "too short", "HUMAN", "bob"),
        (retrieve, "latency_ok", None, 0.0, None, "CODE", ""),
        (root, "trace.resolved", "yes", 1.0, "user said thanks", "HUMAN", ""),
        (retrieve, "document.1.relevance", "relevant", 0.9, None, "LLM", ""),
    }
    ann_times = anns["updated_at"].to_pylist()
    # changed_at: the latest of the trace's end time and the span's annotation times (ingest: today)
    assert lm["changed_at"] == max(a["updated_at"] for a in anns.to_pylist() if a["span_id"] == llm)
    assert rows[other["span_id"]]["changed_at"] == rows[other["span_id"]]["trace_end_time"]
    assert c1.high_watermark == max(ann_times)
    assert c1.cursor["span_id_max"] >= 4
    assert dt.datetime.fromisoformat(c1.cursor["annotation_updated_at"]) >= max(ann_times)  # the read time
    json.dumps(c1.cursor)  # JSON-able

    # 2. a late child: every span of its trace again (new cumulative counts, trace end), nothing else ----
    late_end = T0 + dt.timedelta(seconds=20)
    late = send_spans(srv.base_url, project, [
        {"name": "late-llm", "trace_id": ids["trace"], "parent_id": root, "kind": "LLM", "prompt_tokens": 7,
         "completion_tokens": 3, "status": "ERROR", "status_message": "rate limited",
         "start": T0 + dt.timedelta(seconds=2), "end": late_end}])[0]
    c2 = src.changes(project, c1.cursor, overlap=OVERLAP, batch_spans=50_000)
    spans, anns, batches = collect(c2)
    assert [b.spans_changed for b in batches] == [True]  # the trace's rows changed
    rows = by_id(spans)
    assert set(rows) == {root, retrieve, llm, late["span_id"]}
    assert (rows[root]["cumulative_error_count"], rows[root]["cumulative_llm_token_count_prompt"],
            rows[root]["cumulative_llm_token_count_completion"]) == (2, 17, 8)
    assert {r["trace_end_time"] for r in rows.values()} == {late_end}
    assert rows[late["span_id"]]["changed_at"] == late_end  # no annotations: the trace's end time
    assert len(ann_set(anns)) == 6  # all annotations of the re-exported spans
    assert c2.cursor["span_id_max"] > c1.cursor["span_id_max"]
    assert c2.high_watermark == c1.high_watermark  # the late end time is older than the annotations

    # 3. an updated annotation (same name, span, identifier): that span, with the new label ---------------
    next_second()
    annotate(srv.base_url, llm, "correctness", "incorrect", 0.0, "contradicts the docs", "LLM")
    c3 = src.changes(project, c2.cursor, overlap=OVERLAP)
    spans, anns, batches = collect(c3)
    assert [b.spans_changed for b in batches] == [False]  # only its annotation changed: the span is not rewritten
    assert c3.live_annotation_keys is None and c3.live_trace_ids is None  # nothing deleted: no key listing
    assert spans["span_id"].to_pylist() == [llm]
    assert ann_set(anns) == {(llm, "correctness", "incorrect", 0.0, "contradicts the docs", "LLM", "")}
    assert c3.high_watermark == spans["changed_at"][0].as_py() == anns["updated_at"][0].as_py() > c2.high_watermark

    # 4. no changes: no spans, and the cursor stays put -------------------------------------------------
    c4 = src.changes(project, c3.cursor, overlap=OVERLAP)
    spans, anns, batches = collect(c4)
    assert spans.num_rows == 0 and batches == []
    assert c4.cursor["span_id_max"] == c3.cursor["span_id_max"]
    assert c4.high_watermark == c3.high_watermark

    # 5. a trace annotation update: the root span, with the trace annotation, nothing else -------------
    next_second()
    annotate_trace(srv.base_url, ids["trace"], "resolved", "no", 0.0, "reopened", "HUMAN")
    spans, anns, _ = collect(src.changes(project, c4.cursor, overlap=OVERLAP))
    assert spans["span_id"].to_pylist() == [root]
    assert (root, "trace.resolved", "no", 0.0, "reopened", "HUMAN", "") in ann_set(anns)

    # the source cannot write (SQLite: mode=ro + query_only; Postgres: read-only transactions)
    with pytest.raises(sa.exc.DBAPIError):
        with src.engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE obslake_probe (x INTEGER)")
    src.close()


def test_same_second_annotations_overlap(phoenix_server: PhoenixServer):
    """Annotations written in the second of the cursor, after the read, are still found (overlap)."""
    srv = phoenix_server
    project = f"{srv.project}-overlap"
    tid = new_trace_id()
    a, b = new_span_id(), new_span_id()
    send_spans(srv.base_url, project, [
        {"name": "a", "trace_id": tid, "span_id": a, "start": T0, "end": T0 + dt.timedelta(seconds=1)},
        {"name": "b", "trace_id": tid, "span_id": b, "parent_id": a, "kind": "LLM",
         "start": T0, "end": T0 + dt.timedelta(seconds=1)}])
    src = PhoenixSource(srv.db_uri)
    c = src.changes(project, None, overlap=OVERLAP)
    assert collect(c)[0].num_rows == 2
    cursor = c.cursor  # the spans, no annotations yet

    # two annotations updated in the same second both appear
    next_second()
    annotate(srv.base_url, a, "tone", "calm", 0.5, None, "LLM")
    annotate(srv.base_url, b, "tone", "angry", 0.2, None, "LLM")
    c = src.changes(project, cursor, overlap=OVERLAP)
    spans, anns, _ = collect(c)
    assert set(spans["span_id"].to_pylist()) == {a, b}
    assert ann_set(anns) == {(a, "tone", "calm", 0.5, None, "LLM", ""), (b, "tone", "angry", 0.2, None, "LLM", "")}
    cursor = c.cursor

    # a sync reads at second S; then, still in S, another annotation is written: the next sync finds it
    for attempt in range(3):
        next_second()
        annotate(srv.base_url, a, "tone", f"calm-{attempt}", 0.6, None, "LLM")
        c = src.changes(project, cursor, overlap=OVERLAP)
        spans, anns, _ = collect(c)
        assert spans["span_id"].to_pylist() == [a]
        annotate(srv.base_url, b, "tone", f"angry-{attempt}", 0.3, None, "LLM")
        same_second = db_updated_at(srv, "tone", a) == db_updated_at(srv, "tone", b)
        c = src.changes(project, c.cursor, overlap=OVERLAP)
        spans, anns, _ = collect(c)
        assert b in spans["span_id"].to_pylist(), "an annotation written in the cursor's second was missed"
        assert (b, "tone", f"angry-{attempt}", 0.3, None, "LLM", "") in ann_set(anns)
        cursor = c.cursor
        if same_second:
            break
    else:
        pytest.fail("could not write two annotations in the same second in 3 attempts")
    # and then nothing is left
    assert collect(src.changes(project, cursor, overlap=OVERLAP))[0].num_rows == 0
    src.close()


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_read_only_on_a_copy_taken_while_the_server_runs(phoenix_server: PhoenixServer, tmp_path: Path):
    """A hot copy (SQLite backup of the live WAL database) is read without being locked or modified."""
    srv = phoenix_server
    project = f"{srv.project}-copy"
    ids = three_span_trace(project, srv.base_url)
    annotate(srv.base_url, ids["llm"], "correctness", "correct", 1.0, None, "LLM")

    copy = tmp_path / "phoenix.db"
    live = sqlite3.connect(f"file:{srv.db_path}?mode=ro", uri=True)
    with sqlite3.connect(copy) as dest:
        live.backup(dest)  # while the server runs
    live.close()
    before = _sha(copy)

    src = PhoenixSource(f"sqlite:///{copy}")  # a plain URI is opened read only
    assert "mode=ro" in str(src.engine.url)
    changes = src.changes(project, None, overlap=OVERLAP, batch_spans=1)
    first = next(changes.batches)  # the source now holds an open read on the file
    assert first.spans.num_rows == 1
    assert _sha(copy) == before, "reading modified the database file"

    # not locked: a writer (no busy timeout) commits while the read is open
    writer = sqlite3.connect(copy, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE span_annotations SET label = 'edited' WHERE name = 'correctness'")
    writer.commit()
    rest = list(changes.batches)
    assert sum(b.spans.num_rows for b in rest) == 2

    # and the source itself cannot write
    with pytest.raises(sa.exc.OperationalError, match="readonly|read-only|query_only"):
        with src.engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE obslake_probe (x INTEGER)")
    src.close()

    # overlap: an annotation committed late, with updated_at before the cursor, is found in the window
    cursor = changes.cursor
    read_at = dt.datetime.fromisoformat(cursor["annotation_updated_at"])  # when that sync read
    stale = (read_at - dt.timedelta(seconds=5)).strftime("%Y-%m-%d %H:%M:%S")
    rowid = writer.execute("SELECT id FROM spans WHERE span_id = ?", (ids["retrieve"],)).fetchone()[0]
    writer.execute("INSERT INTO span_annotations (span_rowid, name, label, score, explanation, metadata, "
                   "annotator_kind, created_at, updated_at, identifier, source) "
                   "VALUES (?, 'late', 'x', 1.0, NULL, '{}', 'HUMAN', ?, ?, '', 'API')", (rowid, stale, stale))
    writer.commit()
    writer.close()
    src = PhoenixSource(f"sqlite:///{copy}")
    without = collect(src.changes(project, cursor, overlap=dt.timedelta(0)))[0]
    within = collect(src.changes(project, cursor, overlap=dt.timedelta(seconds=10)))
    # (the label the writer edited above is a change too: its span is in both)
    assert without["span_id"].to_pylist() == [ids["llm"]]
    assert set(within[0]["span_id"].to_pylist()) == {ids["retrieve"], ids["llm"]}
    assert ("late", "x", "HUMAN") in {(a["name"], a["label"], a["annotator_kind"]) for a in within[1].to_pylist()}

    # a backfill window (traces that ended in it): the whole trace, the window cursor handed back as is
    window = {"window": [T0.isoformat(), (T0 + dt.timedelta(minutes=1)).isoformat()]}
    backfill = src.changes(project, window, overlap=OVERLAP)
    assert set(collect(backfill)[0]["span_id"].to_pylist()) == {ids["root"], ids["retrieve"], ids["llm"]}
    assert backfill.cursor == window
    src.close()


def test_unknown_project(phoenix_server: PhoenixServer):
    """A project Phoenix does not hold (yet): no batches, and the next call starts from the beginning."""
    src = PhoenixSource(phoenix_server.db_uri)
    c = src.changes("no-such-project", None, overlap=OVERLAP)
    assert list(c.batches) == [] and c.high_watermark is None and c.cursor == {}
    src.close()


# -- Postgres: span rows through COPY read by Arrow, the same as row by row --------------------------------------
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_NASTY = st.sampled_from(["", " ", ",", '"', '""', "\n", "\r\n", "a,b", 'say "hi"', "\\N", "NULL", "é😀", "\\"])
_WORDS = st.one_of(_NASTY, _TEXT)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False,
                                                                                width=32), _WORDS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_WORDS, inner, max_size=3)),
    max_leaves=8,
)
# whole microseconds from before 1970 to after 2038 (Phoenix stores timestamptz)
_TIME = st.integers(-2 * 10**15, 4 * 10**15).map(lambda us: dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(
    microseconds=us))
_SPAN = st.fixed_dictionaries({
    "name": _WORDS, "kind": _WORDS, "start": _TIME, "duration_us": st.integers(0, 10**10),
    "status": st.sampled_from(["OK", "ERROR", "UNSET"]), "message": _WORDS,
    "attributes": st.dictionaries(_WORDS, _JSON, max_size=4), "events": st.lists(st.dictionaries(_WORDS, _JSON,
                                                                                                  max_size=2), max_size=2),
    "root": st.booleans(), "errors": st.integers(0, 2**31 - 1), "prompt": st.integers(0, 2**31 - 1),
})


@pytest.mark.postgres
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spans=st.lists(_SPAN, min_size=1, max_size=6))
def test_copy_rows_equal_the_row_by_row_read(phoenix_pg_server: PhoenixServer, spans: list[dict]):
    """Text with commas, quotes, line breaks, backslashes, "NULL", empty vs absent values, any JSON, times
    outside 1970-2038 to the microsecond: what Postgres' COPY gives Arrow's CSV reader is what the rows give."""
    engine = sa.create_engine(phoenix_pg_server.pg_uri)
    project = f"copy-{new_trace_id()[:12]}"
    try:
        with engine.begin() as c:
            pid = c.execute(sa.text("INSERT INTO projects (name) VALUES (:n) RETURNING id"), {"n": project}).scalar()
            start = min(s["start"] for s in spans)
            trace = c.execute(sa.text(
                "INSERT INTO traces (project_rowid, trace_id, start_time, end_time) VALUES (:p, :t, :s, :e) "
                "RETURNING id"), {"p": pid, "t": new_trace_id(), "s": start, "e": start + dt.timedelta(hours=1)}).scalar()
            for s in spans:
                c.execute(sa.text(
                    "INSERT INTO spans (trace_rowid, span_id, parent_id, name, span_kind, start_time, end_time, attributes,"
                    " events, status_code, status_message, cumulative_error_count, cumulative_llm_token_count_prompt,"
                    " cumulative_llm_token_count_completion, llm_token_count_prompt, llm_token_count_completion)"
                    " VALUES (:tr, :sid, :parent, :name, :kind, :start, :end, CAST(:attrs AS JSONB), CAST(:events AS JSONB),"
                    " :status, :message, :errors, :prompt, 0, NULL, NULL)"),
                    {"tr": trace, "sid": new_span_id(), "parent": None if s["root"] else s["name"], "name": s["name"],
                     "kind": s["kind"], "start": s["start"], "end": s["start"] + dt.timedelta(microseconds=s["duration_us"]),
                     "attrs": json.dumps(s["attributes"]), "events": json.dumps(s["events"]), "status": s["status"],
                     "message": s["message"], "errors": s["errors"], "prompt": s["prompt"]})
        got = {}
        for copy_rows in (True, False):
            source = PhoenixSource(phoenix_pg_server.db_uri)
            source.copy_rows = copy_rows
            with source:
                spans_read, _anns, _ = collect(source.changes(project, None, overlap=OVERLAP))
            got[copy_rows] = spans_read.sort_by("span_id")
        assert got[True].num_rows == len(spans)
        assert got[True].equals(got[False]), (got[True].to_pylist(), got[False].to_pylist())
        with engine.connect() as c:  # and both are what Postgres holds (jsonb's own text of the JSON)
            stored = dict(c.execute(sa.text(
                "SELECT s.span_id, s.attributes::text || s.events::text || s.status_message FROM spans s "
                "JOIN traces t ON t.id = s.trace_rowid WHERE t.project_rowid = :p"), {"p": pid}).all())
        assert {r["span_id"]: r["attributes"] + r["events"] + r["status_message"]
                for r in got[True].to_pylist()} == stored
    finally:
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM projects WHERE name = :n"), {"n": project})
        engine.dispose()


@pytest.mark.postgres
def test_copy_chunks_read_ahead_equal_the_row_by_row_read(phoenix_pg_server: PhoenixServer, monkeypatch):
    """Many COPY chunks (2 traces each here), the next one fetched on a second connection while the current one
    is handed on: the same spans and annotations as the row-by-row read, and a consumer that stops after one
    batch leaves no connection checked out and no COPY running."""
    from obslake.fabric import phoenix

    monkeypatch.setattr(phoenix, "COPY_CHUNK", 2)
    engine = sa.create_engine(phoenix_pg_server.pg_uri)
    project = f"ahead-{new_trace_id()[:12]}"
    start = dt.datetime(2026, 11, 1, tzinfo=UTC)
    try:
        with engine.begin() as c:
            pid = c.execute(sa.text("INSERT INTO projects (name) VALUES (:n) RETURNING id"), {"n": project}).scalar()
            for t in range(7):
                trace = c.execute(sa.text(
                    "INSERT INTO traces (project_rowid, trace_id, start_time, end_time) VALUES (:p, :t, :s, :e) "
                    "RETURNING id"), {"p": pid, "t": new_trace_id(), "s": start, "e": start + dt.timedelta(minutes=t)}
                ).scalar()
                for s in range(3):
                    span = c.execute(sa.text(
                        "INSERT INTO spans (trace_rowid, span_id, parent_id, name, span_kind, start_time, end_time,"
                        " attributes, events, status_code, status_message, cumulative_error_count,"
                        " cumulative_llm_token_count_prompt, cumulative_llm_token_count_completion)"
                        " VALUES (:tr, :sid, :parent, :name, 'LLM', :st, :st, CAST(:attrs AS JSONB), '[]', 'OK', '',"
                        " 0, 0, 0) RETURNING id"),
                        {"tr": trace, "sid": new_span_id(), "parent": None if s == 0 else "root", "name": f"s{t}.{s}",
                         "st": start + dt.timedelta(hours=t, seconds=s),
                         "attrs": json.dumps({"llm": {"model_name": f"m{t}"}})}).scalar()
                    if s == 1:
                        c.execute(sa.text(
                            "INSERT INTO span_annotations (span_rowid, name, label, score, explanation, metadata,"
                            " annotator_kind, identifier, source) VALUES (:s, 'q', :l, 0.5, '', '{}', 'LLM', '', 'API')"),
                            {"s": span, "l": f"l{t}"})
        got = {}
        for copy_rows in (True, False):
            source = PhoenixSource(phoenix_pg_server.db_uri)
            source.copy_rows = copy_rows
            with source:
                spans, anns, batches = collect(source.changes(project, None, overlap=OVERLAP, batch_spans=4))
            got[copy_rows] = (spans.sort_by("span_id"), anns.sort_by("span_id"))
            assert len(batches) >= 5
        assert got[True][0].num_rows == 21 and got[True][1].num_rows == 7
        assert got[True][0].equals(got[False][0]) and got[True][1].equals(got[False][1])

        source = PhoenixSource(phoenix_pg_server.db_uri)
        with source:
            batches = source.changes(project, None, overlap=OVERLAP, batch_spans=4).batches
            assert next(batches).spans.num_rows == 4
            batches.close()  # the consumer gives up: the read-ahead COPY ends, its connection goes back
            assert source.engine.pool.checkedout() == 0
    finally:
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM projects WHERE name = :n"), {"n": project})
        engine.dispose()
