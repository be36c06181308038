"""TraceMapper: span and annotation files (OpenInference names or ours) into the lake's trace tables."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from obslake.config import ImportJob
from obslake.exceptions import SchemaMismatchError
from obslake.schema.mapping import LINEAGE_COLUMNS, PARTITION_COLUMN, BatchMapper
from obslake.schema.traces import ANNOTATION_SCHEMA, SPAN_SCHEMA, TraceMapper, make_mapper

NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def _job(kind: str) -> ImportJob:
    return ImportJob.model_validate({"name": f"t_{kind}", "source": "file:///in/", "kind": kind,
                                     "trace_project": "rag-app", "ingestion_key_variable": "k"})


def test_openinference_span_columns_map_to_the_span_table():
    batch = pa.RecordBatch.from_pydict({
        "context.span_id": ["s1", "s2"], "context.trace_id": ["t1", "t1"], "parent_span_id": [None, "s1"],
        "name": ["llm", "tool"], "kind": ["LLM", "TOOL"], "start_time": pa.array([1_764_496_800, 1_764_496_801], pa.int64()),
        "attributes.llm.model_name": ["gpt", None],
    })
    mapper = make_mapper(_job("spans"), batch.schema, "file:///in/a.parquet", NOW, "parquet")
    assert isinstance(mapper, TraceMapper)
    out, problems = mapper.map(batch, 1)
    assert problems == []
    assert [f.name for f in out.schema][: len(SPAN_SCHEMA)] == SPAN_SCHEMA.names
    assert set(out.schema.names) >= {PARTITION_COLUMN, *LINEAGE_COLUMNS}
    rows = out.to_pylist()
    assert [r["span_id"] for r in rows] == ["s1", "s2"] and rows[1]["parent_id"] == "s1"
    assert rows[0]["start_time"] == dt.datetime.fromtimestamp(1_764_496_800, dt.UTC)  # epoch seconds
    assert json.loads(rows[0]["attributes"]) == {"llm": {"model_name": "gpt"}}  # flat keys nested, as Phoenix
    assert [r["_source_row"] for r in rows] == [1, 2]


def test_missing_ids_and_bad_timestamps_are_located():
    batch = pa.RecordBatch.from_pydict({"span_id": ["s1", ""], "trace_id": ["t", None], "name": ["a", "b"],
                                        "start_time": ["yesterday", "2026-11-30T10:00:00Z"]})
    out, problems = TraceMapper(_job("spans"), batch.schema, "file:///in/b.csv", NOW, "csv").map(batch, 10)
    located = {(p.code, p.row, p.column) for p in problems}
    assert located == {("ID_MISSING", 11, "span_id"), ("ID_MISSING", 11, "trace_id"), ("TS_PARSE", 10, "start_time")}


def test_a_file_without_required_columns_or_with_duplicates_is_refused():
    with pytest.raises(SchemaMismatchError, match="span_id") as missing:
        TraceMapper(_job("annotations"), pa.schema([("name", pa.string())]), "file:///in/c.csv", NOW)
    assert missing.value.code == "COLUMN_MISSING"
    dup = pa.schema([("span_id", pa.string()), ("name", pa.string()), ("name", pa.string())])
    with pytest.raises(SchemaMismatchError) as duplicate:
        TraceMapper(_job("annotations"), dup, "file:///in/d.csv", NOW)
    assert duplicate.value.code == "DUPLICATE_COLUMN"


def test_annotations_keep_their_result_fields():
    batch = pa.RecordBatch.from_pydict({"context.span_id": ["s1"], "annotation_name": ["hallucination"],
                                        "result.label": ["factual"], "result.score": [0.9],
                                        "annotator_kind": ["LLM"], "updated_at": ["2026-11-30T11:00:00Z"]})
    out, problems = TraceMapper(_job("annotations"), batch.schema, "file:///in/e.parquet", NOW).map(batch, 1)
    assert problems == []
    [row] = out.select(ANNOTATION_SCHEMA.names).to_pylist()
    assert row == {"span_id": "s1", "name": "hallucination", "label": "factual", "score": 0.9, "explanation": None,
                   "annotator_kind": "LLM", "identifier": "",
                   "updated_at": dt.datetime(2026, 11, 30, 11, tzinfo=dt.UTC)}


def test_model_jobs_get_the_model_mapper():
    job = ImportJob.model_validate({"name": "ctr", "source": "file:///in/", "ingestion_key_variable": "k",
                                    "model": {"space": "s", "name": "ctr", "type": "binary_classification"},
                                    "schema": {"prediction_id": "id", "prediction_label": "label"}})
    declared = pa.schema([("id", pa.string()), ("label", pa.string())])
    assert isinstance(make_mapper(job, declared, "file:///in/f.csv", NOW, "csv"), BatchMapper)


def test_epoch_numbers_no_timestamp_can_hold_are_located_not_a_crash():
    """1e300 or NaN in a span's start time: located coded problems for those rows, the others convert."""
    batch = pa.RecordBatch.from_pydict({"span_id": ["a", "b", "c"], "trace_id": ["t"] * 3, "name": ["x"] * 3,
                                        "start_time": pa.array([1.7e9, 1e300, float("nan")])})
    out, problems = TraceMapper(_job("spans"), batch.schema, "file:///in/g.parquet", NOW).map(batch, 1)
    assert {(p.code, p.row, p.column) for p in problems} == {("TS_OUT_OF_RANGE", 2, "start_time"),
                                                             ("TS_INVALID", 3, "start_time")}
    assert out.column("start_time")[0].as_py() == dt.datetime.fromtimestamp(1.7e9, dt.UTC)


def test_one_wild_epoch_value_does_not_change_the_unit_of_the_others():
    seconds = [1_764_496_800, 1_764_496_801, 1_764_496_802]
    batch = pa.RecordBatch.from_pydict({"span_id": ["a", "b", "c", "d"], "trace_id": ["t"] * 4, "name": ["x"] * 4,
                                        "start_time": pa.array([*seconds, 10**18], pa.int64())})
    out, _ = TraceMapper(_job("spans"), batch.schema, "file:///in/h.parquet", NOW).map(batch, 1)
    assert out.column("start_time").to_pylist()[:3] == [dt.datetime.fromtimestamp(s, dt.UTC) for s in seconds]


def test_nanosecond_integer_epochs_convert():
    """OpenTelemetry exports hold int64 nanoseconds (about 1.7e18, beyond float64's exact 2**53)."""
    ns = 1_764_496_800_123_456_000
    batch = pa.RecordBatch.from_pydict({"span_id": ["a"], "trace_id": ["t"], "name": ["x"],
                                        "start_time": pa.array([ns], pa.int64())})
    out, problems = TraceMapper(_job("spans"), batch.schema, "file:///in/i.parquet", NOW).map(batch, 1)
    assert problems == []
    assert out.column("start_time")[0].as_py() == dt.datetime(2025, 11, 30, 10, 0, 0, 123456, tzinfo=dt.UTC)
