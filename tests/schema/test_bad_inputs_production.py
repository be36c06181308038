"""The production bad-input corpus (tests/schema/corpus_production.py) on moto S3 and a SQLite catalog.

For every defective file (issue #10's error-code contract):

1. ``validate_file`` (the dry run) never raises and reports exactly the expected code, at exactly the
   expected row, line and column (and value, where the corpus gives one);
2. ``import_file`` fails the file with that code (``ImportResult.code``; record problems may come
   as ``RECORD_ERRORS`` listing ``[CODE]``, as the existing corpus accepts), marks the ledger row
   ``failed`` and leaves the Iceberg table *exactly* as it was: same metadata file, snapshot ids,
   schema id, schemas, field ids, names and types. Both as the first file of a fresh job (the table
   must not exist afterwards) and after a good file;
3. a good file imported after the bad one still imports (the table is not poisoned).

Every control must pass the dry run, import (first file of a fresh job, and into an existing table),
and read back value for value.
"""

from __future__ import annotations

import io
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from corpus import defects as base_defects
from corpus_production import CSV_BLOCK, GOOD_ROWS, ProdDefect, production_defects
from lake_fixtures import to_bytes
from obslake.lake.importer import PROP_SOURCE_FILE, import_file
from obslake.schema.validate import validate_file
from obslake.storage import open_store

DEFECTS = production_defects()
FAILING = [d for d in DEFECTS if d.expected_code is not None]
CONTROLS = [d for d in DEFECTS if d.expected_code is None]
PREFIX = "models/ctr/"
FILE_LEVEL_WITH_LINE = {"CSV_RAGGED"}  # file-level codes that still carry a CSV row/line


def _params(items: list[ProdDefect]) -> list:
    return [pytest.param(d, id=d.name, marks=[pytest.mark.slow] if d.slow else []) for d in items]


@pytest.fixture(scope="module")
def _bucket(moto_server):
    """One bucket on the moto server for the module (a boto3 client per test costs more than the test)."""
    from obslake.storage.s3 import make_s3_client

    client = make_s3_client(endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    name = f"obslake-prod-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
def s3(_bucket):
    """A store on the module's bucket; each test works under its own fresh root prefix (:func:`root`)."""
    client, name = _bucket
    store, _ = open_store(f"s3://{name}/", s3_client=client)
    return store


@pytest.fixture
def root() -> str:
    """This test's prefix in the shared bucket: it sees only its own objects."""
    return f"run-{uuid.uuid4().hex[:12]}/"


def _job(make_job, store, root: str, d: ProdDefect, **overrides):
    model = {"space": "tests", "name": "ctr", "type": d.model_type, "environment": "production"}
    return make_job(store.uri(root + PREFIX), model=model, schema=d.schema(), **{**d.job_overrides, **overrides})


def _validate(job, store, info, d: ProdDefect, table=None):
    """The dry run; with ``table``, given the table's Arrow schema, as SchemaValidateOperator does."""
    if table is None:
        return validate_file(job, store, info, batch_rows=d.batch_rows)
    return validate_file(job, store, info, batch_rows=d.batch_rows, table_schema=table.schema().as_arrow())


def _import_rows(d: ProdDefect) -> int:
    """Import batch/chunk size: 2 rows for small files (data files are staged before the bad row)."""
    return 2 if d.batch_rows <= 3 else d.batch_rows


def _import(catalog, ledger, job, store, info, d: ProdDefect):
    n = _import_rows(d)
    return import_file(job, store, info, catalog=catalog, ledger=ledger, batch_rows=n, chunk_rows=n)


def _state(table) -> dict:
    """Everything a failed import must leave exactly as it was."""
    md = table.metadata
    return {
        "metadata_location": table.metadata_location,
        "snapshots": [s.snapshot_id for s in table.snapshots()],
        "current_snapshot": md.current_snapshot_id,
        "schema_id": md.current_schema_id,
        "schemas": [s.schema_id for s in md.schemas],
        "fields": [(f.field_id, f.name, str(f.field_type), f.required) for f in table.schema().fields],
        "last_column_id": md.last_column_id,
    }


def _total_records(table) -> int:
    """Rows in the table's current snapshot (from its summary: no scan)."""
    return int(table.current_snapshot().summary["total-records"])


def _mentions(table, uri: str) -> bool:
    return any(s.summary is not None and s.summary.get(PROP_SOURCE_FILE) == uri for s in table.snapshots())


def _is_record_level(d: ProdDefect) -> bool:
    return d.expected_row is not None and d.expected_code not in FILE_LEVEL_WITH_LINE


def _assert_reported(d: ProdDefect, report, uri: str) -> None:
    text = report.summary()
    assert report.status == "failed", text
    assert {p.code for p in report.problems} == {d.expected_code}, text
    p = report.problems[0]
    assert (p.file, p.row, p.line, p.column) == (uri, d.expected_row, d.expected_line, d.expected_column), repr(p)
    assert p.fix.strip() and p.message.strip(), repr(p)
    if d.expected_value is not None:
        assert p.value == d.expected_value, repr(p)
    if d.fix_mentions is not None:
        assert d.fix_mentions in p.fix, repr(p)
    if _is_record_level(d) and d.single_row:
        assert {q.row for q in report.problems} == {d.expected_row}, text
        assert report.bad_rows == 1, text
    assert f"[{d.expected_code}]" in text and uri in text


def _assert_failed(d: ProdDefect, result) -> None:
    assert result.status == "failed", (result.status, result.error)
    assert result.error and result.code, result
    if result.code == "RECORD_ERRORS" and _is_record_level(d):
        assert f"[{d.expected_code}]" in result.error, result.error
    else:
        assert result.code == d.expected_code, result.error


# -- the corpus itself --------------------------------------------------------------------------------
def test_production_corpus_is_large_new_and_distinct():
    from obslake.formats import CSV_BLOCK_SIZE

    assert CSV_BLOCK == CSV_BLOCK_SIZE
    assert len(FAILING) >= 45 and len(CONTROLS) >= 10
    assert len({d.name for d in DEFECTS}) == len({d.key for d in DEFECTS}) == len(DEFECTS)
    assert len({d.data for d in DEFECTS}) == len(DEFECTS)
    old = base_defects()
    assert not {d.name for d in DEFECTS} & {d.name for d in old}
    assert not {d.key for d in DEFECTS} & {d.key for d in old}
    assert not {d.data for d in DEFECTS} & {d.data for d in old}


UNREADABLE = {"FILE_CORRUPT", "FILE_ENCODING", "FILE_EMPTY", "FILE_TOO_LARGE", "ROW_TOO_LARGE"}
T = pa.types
TYPE_CLAIMS = {  # defect -> (column, what its type in the file is)
    "parquet_uint64_max_feature": ("feature_u", lambda t: t == pa.uint64()),
    "arrow_ts_feature_year_300000": ("feature_when", lambda t: t == pa.timestamp("s", tz="UTC")),
    "arrow_ts_role_seconds_year_9999": ("prediction_ts", lambda t: t == pa.timestamp("s", tz="UTC")),
    "parquet_float_epoch_1e30": ("prediction_ts", T.is_float64),
    "arrow_interval_feature": ("feature_period", lambda t: t == pa.month_day_nano_interval()),
    "arrow_dense_union_feature": ("feature_any", lambda t: T.is_union(t) and t.mode == "dense"),
    "arrow_sparse_union_feature": ("feature_any", lambda t: T.is_union(t) and t.mode == "sparse"),
    "arrow_ts_role_duration": ("prediction_ts", T.is_duration),
    "arrow_empty_struct_feature": ("feature_meta", lambda t: T.is_struct(t) and t.num_fields == 0),
    "arrow_struct_nested_50_feature": ("feature_deep", lambda t: str(t).count("struct<") == 50),
    "arrow_fixed_shape_tensor_feature": ("feature_img", lambda t: isinstance(t, pa.FixedShapeTensorType)),
    "arrow_list_view_feature": ("feature_tags", T.is_list_view),
    "table_has_double_file_has_string": ("feature_x", T.is_string),
    "table_has_int64_file_has_double": ("feature_n", T.is_float64),
    "table_has_double_file_has_timestamp": ("feature_x", T.is_timestamp),
    "arrow_run_end_encoded_feature": ("feature_level", T.is_run_end_encoded),
    "arrow_string_view_features": ("feature_view", T.is_string_view),
    "arrow_json_extension_feature": ("feature_doc", lambda t: isinstance(t, pa.JsonType)),
    "arrow_decimal32_decimal64_features": ("feature_d32", T.is_decimal32),
    "arrow_convertible_types": ("feature_half", T.is_float16),
    "parquet_non_utc_timestamp_features": ("feature_local", lambda t: t.tz == "Asia/Kolkata"),
    "arrow_time32s_and_year_9999_0001_features": ("feature_clock", lambda t: t == pa.time32("s")),
    "parquet_embedding_large_list_float64": ("emb", T.is_large_list),
    "arrow_embedding_fixed_size_list": ("emb", T.is_fixed_size_list),
}


@pytest.mark.parametrize("d", DEFECTS, ids=[d.name for d in DEFECTS])
def test_production_bytes_are_what_they_claim(d: ProdDefect):
    """The bytes, read with pyarrow / fastavro / duckdb directly, are the defect they claim to be."""
    import csv
    import gzip

    import fastavro

    if d.verify is not None:
        d.verify(d.data)
    if d.expected_code in UNREADABLE or d.name == "parquet_bytes_named_csv":
        return
    names: list[str]
    if d.fmt == "parquet":
        table = pq.read_table(io.BytesIO(d.data))
        names, rows = table.schema.names, table.num_rows
        if d.expected_code is None:  # a second reader agrees
            import tempfile

            import duckdb

            with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
                tmp.write(d.data)
                tmp.flush()
                assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp.name}')").fetchone()[0] == d.rows
    elif d.fmt in ("arrow", "arrows"):
        reader = pa.ipc.open_file(io.BytesIO(d.data)) if d.data[:6] == b"ARROW1" else \
            pa.ipc.open_stream(io.BytesIO(d.data))
        table = reader.read_all()
        names, rows = table.schema.names, table.num_rows
    elif d.fmt == "avro":
        reader = fastavro.reader(io.BytesIO(d.data))
        names = [f["name"] for f in reader.writer_schema["fields"]]
        rows = sum(1 for _ in reader)
    else:
        raw = gzip.decompress(d.data) if d.data[:2] == b"\x1f\x8b" else d.data
        text = raw.decode("utf-8-sig")
        csv.field_size_limit(1 << 30)
        parsed = list(csv.reader(io.StringIO(text, newline="")))
        parsed = [r for r in parsed if r]  # blank lines
        names, rows = parsed[0], len(parsed) - 1
        if d.expected_code not in ("CSV_RAGGED", "COLUMN_MISSING"):
            assert {len(r) for r in parsed} == {len(names)}, "every CSV row has the header's field count"
    if d.name in TYPE_CLAIMS:
        column, is_claimed_type = TYPE_CLAIMS[d.name]
        assert is_claimed_type(table.schema.field(column).type), table.schema.field(column)
    if d.expected_code is None:
        assert rows == d.rows
        for c in d.absent:
            assert c in names  # in the file, but must not be stored
    elif d.expected_code == "COLUMN_MISSING":
        assert d.expected_column not in names
    elif d.expected_column is not None:
        assert d.expected_column in names, names
    if d.expected_code == "DUPLICATE_COLUMN":
        assert len(set(names)) == len(names)  # not exactly equal: equal ignoring case / normalisation
    if d.expected_row is not None and d.expected_code != "CSV_RAGGED":
        assert rows >= d.expected_row


# -- defects ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", _params(FAILING))
def test_bad_file_is_located_and_leaves_the_table_exactly_unchanged(d: ProdDefect, lake, s3, root, make_job):
    job = _job(make_job, s3, root, d)
    catalog, ledger = lake.catalog, lake.ledger
    bad = s3.write(root + d.key, d.data)
    uri = s3.uri(bad.key)
    good = s3.write(f"{root}{PREFIX}good/1.parquet", to_bytes(d.good_table("good1"), "parquet"))

    if not d.needs_table:
        # (1) the dry run locates the defect and never raises
        started = time.monotonic()
        report = _validate(job, s3, bad, d)
        seconds = time.monotonic() - started
        _assert_reported(d, report, uri)
        if d.max_seconds is not None:
            assert seconds <= d.max_seconds, f"the dry run took {seconds:.1f} s (at most {d.max_seconds} s)"
        # (2) as the first file of a fresh job: fails with the code and creates nothing
        result = _import(catalog, ledger, job, s3, bad, d)
        _assert_failed(d, result)
        assert not catalog.table_exists(job.table_identifier), "a failed first file created the table"
        assert ledger.get(job.name, bad)["status"] == "failed"

    ok = import_file(job, s3, good, catalog=catalog, ledger=ledger)
    assert (ok.status, ok.rows) == ("imported", GOOD_ROWS), ok.error
    table = catalog.load_table(job.table_identifier)
    before = _state(table)
    if d.needs_table:
        # (1) the dry run, given the table's schema, sees the conflict
        _assert_reported(d, _validate(job, s3, bad, d, table=table), uri)

    # (2) after a good file: fails with the code, the table exactly unchanged
    result = _import(catalog, ledger, job, s3, bad, d)
    _assert_failed(d, result)
    table = catalog.load_table(job.table_identifier)
    assert _state(table) == before, "a failed file changed the table (snapshot, schema or metadata)"
    assert _total_records(table) == GOOD_ROWS and not _mentions(table, uri)
    assert ledger.get(job.name, bad)["status"] == "failed"

    # (3) no poisoning: the next good file imports
    good2 = s3.write(f"{root}{PREFIX}good/2.parquet", to_bytes(d.good_table("good2"), "parquet"))
    ok = import_file(job, s3, good2, catalog=catalog, ledger=ledger)
    assert (ok.status, ok.rows) == ("imported", GOOD_ROWS), ok.error
    table = catalog.load_table(job.table_identifier)
    assert _total_records(table) == 2 * GOOD_ROWS
    assert _state(table)["fields"] == before["fields"]


# -- controls ---------------------------------------------------------------------------------------
def _check_imported(lake, job, uri: str, d: ProdDefect) -> None:
    table = lake.catalog.load_table(job.table_identifier)
    data = table.scan().to_arrow()
    mine = data.filter(pc.equal(data["_source_file"], uri)).sort_by("_source_row")
    assert mine.num_rows == d.rows
    assert mine["_source_row"].to_pylist() == list(range(1, d.rows + 1))
    names = table.schema().as_arrow().names
    for c in d.absent:
        assert c not in names, f"unselected column {c!r} was stored"
    if d.check is not None:
        d.check(mine)


@pytest.mark.parametrize("d", _params(CONTROLS))
def test_control_imports_with_exact_values(d: ProdDefect, lake, s3, root, make_job):
    job = _job(make_job, s3, root, d)
    catalog, ledger = lake.catalog, lake.ledger
    info = s3.write(root + d.key, d.data)
    copy = s3.write(root + d.key.replace("/prod/", "/prod-copy/"), d.data)
    good = s3.write(f"{root}{PREFIX}good/1.parquet", to_bytes(d.good_table("good1"), "parquet"))

    report = _validate(job, s3, info, d)
    assert report.status == "ok" and not report.problems, report.summary()
    assert report.rows == d.rows, report.summary()

    if not d.needs_table:  # the first file of a fresh job creates the table from it
        r = _import(catalog, ledger, job, s3, info, d)
        assert (r.status, r.rows) == ("imported", d.rows), r.error
        _check_imported(lake, job, s3.uri(info.key), d)

    ok = import_file(job, s3, good, catalog=catalog, ledger=ledger)
    assert (ok.status, ok.rows) == ("imported", GOOD_ROWS), ok.error
    if d.needs_table:
        table = catalog.load_table(job.table_identifier)
        report = _validate(job, s3, info, d, table=table)
        assert report.status == "ok" and not report.problems, report.summary()

    r = _import(catalog, ledger, job, s3, copy, d)  # into an existing table (schema evolution, type conversion)
    assert (r.status, r.rows) == ("imported", d.rows), r.error
    _check_imported(lake, job, s3.uri(copy.key), d)
    total = GOOD_ROWS + d.rows * (1 if d.needs_table else 2)
    assert catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == total
