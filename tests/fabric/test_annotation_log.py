"""The annotations change log against a reference model: whatever sequence of annotation upserts and
deletes a source goes through, over several syncs and an upkeep compaction, the latest view (the DuckDB
DDL of `obslake fabric ddl`, executed) shows exactly what the source has now (Hypothesis)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obslake.config import Connector
from obslake.fabric.ddl import ddl
from obslake.fabric.export import ProjectExporter
from obslake.fabric.model import ANNOTATION_SCHEMA, SPAN_SCHEMA, ChangeBatch, Changes
from obslake.lake.catalog import LakeSettings, load_catalog
from obslake.lake.maintenance import Policy, maintain

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
SPANS = [f"s{i}" for i in range(4)]
NAMES = ["qa", "tone.check", "it's"]
IDENTS = ["", "alice"]

op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(SPANS), st.sampled_from(NAMES), st.sampled_from(IDENTS),
              st.sampled_from(["LLM", "CODE", "HUMAN"]), st.sampled_from(["good", "bad", None])),
    st.tuples(st.just("del"), st.sampled_from(SPANS), st.sampled_from(NAMES), st.sampled_from(IDENTS)),
)


class Source:
    """A source like Phoenix: the spans touched by a sync come with ALL their current annotations; after
    a delete it lists every live key."""

    name = "model"

    def __init__(self):
        self.current: dict[tuple[str, str, str], dict] = {}
        self.pending: tuple[set[str], bool] = (set(SPANS), False)
        self.first = True

    def list_projects(self):
        return ["p"]

    def changes(self, project, cursor, *, overlap, batch_spans=50_000):
        touched, deleted = self.pending
        spans = pa.Table.from_pylist([
            {"span_id": s, "trace_id": f"t{s}", "name": "llm", "start_time": T0 - dt.timedelta(days=i * 30),
             "end_time": T0, "attributes": "{}", "changed_at": T0} for i, s in enumerate(SPANS) if s in touched],
            SPAN_SCHEMA)
        notes = pa.Table.from_pylist([{"span_id": k[0], "name": k[1], "identifier": k[2], **v}
                                      for k, v in self.current.items() if k[0] in touched], ANNOTATION_SCHEMA)
        live = None
        if deleted:
            keys = list(self.current)
            live = pa.table({"span_id": [k[0] for k in keys], "name": [k[1] for k in keys],
                             "identifier": [k[2] for k in keys]},
                            schema=pa.schema([("span_id", pa.string()), ("name", pa.string()),
                                              ("identifier", pa.string())]))
        changed, self.first = self.first, False
        return Changes(iter([ChangeBatch(spans, notes, changed)] if spans.num_rows else []),
                       {"n": (cursor or {}).get("n", 0) + 1}, T0, live_annotation_keys=live)


def expected_view(current: dict) -> dict[tuple[str, str, str], str | None]:
    """(span, group, name) -> label of the most recently updated live annotation of that name and kind."""
    best: dict[tuple[str, str, str], dict] = {}
    for (span, name, _ident), v in current.items():
        group = "eval" if v["annotator_kind"] in ("LLM", "CODE") else "annotation"
        key = (span, group, name)
        if key not in best or v["updated_at"] > best[key]["updated_at"]:
            best[key] = v
    return {k: v["label"] for k, v in best.items()}


@pytest.mark.slow
@given(syncs=st.lists(st.lists(op, min_size=1, max_size=6), min_size=1, max_size=3), compact=st.booleans())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_latest_view_matches_a_reference_model(tmp_path_factory, syncs, compact):
    from obslake.fabric.ddl import column_segment

    tmp = tmp_path_factory.mktemp("log")
    conn = Connector.model_validate({"name": "m", "source": {"type": "lake"}, "projects": ["p"],
                                     "storage": f"file://{tmp / 'storage'}", "namespace": "ns",
                                     "ingestion_key_variable": "k"})
    catalog = load_catalog(LakeSettings.from_env({"OBSLAKE_HOME": str(tmp / "lake")}))
    exporter = ProjectExporter(conn, "p", catalog)
    source = Source()
    exporter.sync(source)  # the spans, no annotations yet
    clock = T0
    for ops in syncs:
        touched, deleted = set(), False
        for o in ops:
            clock += dt.timedelta(seconds=1)
            key = (o[1], o[2], o[3])
            if o[0] == "set":
                source.current[key] = {"label": o[5], "score": 1.0, "explanation": None, "annotator_kind": o[4],
                                       "updated_at": clock}
            elif key in source.current:
                del source.current[key]
                deleted = True
            touched.add(o[1])
        source.pending = (touched, deleted)
        exporter.sync(source)
    if compact:
        maintain(catalog, exporter.annotations_identifier, Policy(retention=dt.timedelta(0)),
                 now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), after_commit=exporter.publish_annotations)
    pairs = sorted({(name, "eval" if kind in ("LLM", "CODE") else "annotation")
                    for (_, name, _), v in source.current.items() for kind in [v["annotator_kind"]]}
                   | set(exporter.annotation_names()))
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(ddl("duckdb", table_uri=conn.storage, namespace="ns", project="p", annotations=pairs))
    cur = con.execute("SELECT * FROM p_latest ORDER BY span_id")
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    assert [r["span_id"] for r in rows] == SPANS
    want = expected_view(source.current)
    for r in rows:
        for name, group in pairs:
            col = f"{group}.{column_segment(name)}.label"
            assert r[col] == want.get((r["span_id"], group, name)), (r["span_id"], col)
