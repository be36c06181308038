"""The bad-input corpus (tests/schema/corpus.py) on a real S3 server (moto) and a real catalog (SQLite).

Every defective file must be reported by ``validate_file`` with exactly its code and location, and
fail ``import_file`` without committing anything, while a good file next to it imports. Plus
``on_error: skip_rows`` (quarantine, thresholds), "Fix Schema" and the CLI dry run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from corpus import BASE_SCHEMAS, Defect, defects, good_table
from lake_fixtures import to_bytes
from obslake.exceptions import CommitConflictError
from obslake.lake import importer
from obslake.lake.discovery import find_new_files
from obslake.lake.importer import PROP_SOURCE_FILE, import_file
from obslake.schema.validate import validate_file
from obslake.storage import open_store

DEFECTS = defects()
GOOD_ROWS = 20
PREFIX = "models/ctr/"


@pytest.fixture
def s3(s3_client, s3_bucket):
    store, _ = open_store(f"s3://{s3_bucket}/{PREFIX}", s3_client=s3_client)
    return store


def _job(make_job, store, d: Defect, **overrides):
    model = {"space": "tests", "name": "ctr", "type": d.model_type, "environment": "production"}
    return make_job(store.uri(PREFIX), model=model, schema=d.schema(), **{**d.job_overrides, **overrides})


def _table(lake, job):
    return lake.catalog.load_table(job.table_identifier)


def _mentions(table, uri: str) -> bool:
    return any(s.summary is not None and s.summary.get(PROP_SOURCE_FILE) == uri for s in table.snapshots())


def test_corpus_is_large_and_distinct():
    assert len(DEFECTS) >= 30
    assert len({d.name for d in DEFECTS}) == len({d.key for d in DEFECTS}) == len(DEFECTS)
    assert len({d.data for d in DEFECTS if d.data}) == len([d for d in DEFECTS if d.data])
    assert [d.name for d in DEFECTS if d.expected_code is None] == ["csv_bom_control"]


@pytest.mark.parametrize("d", DEFECTS, ids=[d.name for d in DEFECTS])
def test_defect_is_located_and_nothing_is_half_written(d: Defect, lake, s3, make_job):
    job = _job(make_job, s3, d)
    good = s3.write(f"{PREFIX}good/good.parquet", to_bytes(good_table(d.base, GOOD_ROWS, id_prefix="good"), "parquet"))
    bad = s3.write(d.key, d.data)
    uri = s3.uri(d.key)

    # validation: batches of 3 rows, so the bad row (row 4) is located across a batch boundary
    report = validate_file(job, s3, bad, batch_rows=3)
    if d.expected_code is None:
        assert report.status == "ok" and not report.problems, report.summary()
    else:
        assert report.status == "failed", report.summary()
        assert {p.code for p in report.problems} == {d.expected_code}, report.summary()
        p = report.problems[0]
        assert (p.file, p.row, p.line, p.column) == (uri, d.expected_row, d.expected_line, d.expected_column), str(p)
        assert p.fix.strip() and p.message.strip()
        if d.expected_value is not None:
            assert p.value == d.expected_value and len(p.value) <= 80
        text = report.summary()
        assert f"[{d.expected_code}]" in text and uri in text
        if d.expected_row is not None:
            assert f"row {d.expected_row}" in text
        if d.expected_column is not None:
            assert repr(d.expected_column) in text

    # the good file imports; the defective one fails without leaving anything in the table
    assert validate_file(job, s3, good).status == "ok"
    ok = import_file(job, s3, good, catalog=lake.catalog, ledger=lake.ledger)
    assert (ok.status, ok.rows) == ("imported", GOOD_ROWS), ok.error
    snapshots = len(_table(lake, job).snapshots())
    # small batches and chunks: data files are written before the bad row is met, and never committed
    result = import_file(job, s3, bad, catalog=lake.catalog, ledger=lake.ledger, batch_rows=2, chunk_rows=2)
    table = _table(lake, job)
    data = table.scan().to_arrow()
    if d.expected_code is None:
        assert (result.status, result.rows) == ("imported", 10), result.error
        assert data.num_rows == GOOD_ROWS + 10
        return
    assert result.status == "failed" and result.error
    if result.code == "RECORD_ERRORS":
        assert f"[{d.expected_code}]" in result.error
    else:
        assert result.code == d.expected_code, result.error
    assert data.num_rows == GOOD_ROWS
    assert set(data["_source_file"].to_pylist()) == {s3.uri(good.key)}
    if result.code == "RECORD_ERRORS" and d.expected_row > 2:  # rows 1-2 were staged as a data file, not committed
        written = list(Path(table.location().removeprefix("file://")).glob("data/**/*.parquet"))
        assert len(written) > len(list(table.scan().plan_files()))
    assert len(table.snapshots()) == snapshots and not _mentions(table, uri)
    assert lake.ledger.get(job.name, bad)["status"] == "failed"
    # a failed version is not offered again under the same schema
    assert find_new_files(job, s3, PREFIX, lake.ledger)[0] == []


# -- on_error: skip_rows ----------------------------------------------------------------------------
SC = next(d for d in DEFECTS if d.model_type == "score_categorical" and not d.job_overrides and not d.schema_overrides)
BAD_AT = {5: "ID_MISSING", 20: "SCORE_NOT_FINITE", 40: "LABEL_MISSING"}  # 1-based data rows


def _three_bad_rows(n: int = 50, id_prefix: str = "s") -> pa.Table:
    rows = good_table("score_categorical", n, id_prefix=id_prefix).to_pylist()
    rows[4]["prediction_id"] = None
    rows[19]["predicted_score"] = math.nan
    rows[39]["predicted_label"] = None
    return pa.Table.from_pylist(rows, good_table("score_categorical", 1).schema)


def _quarantine(lake, job) -> pa.Table:
    return lake.catalog.load_table(job.quarantine_table_identifier).scan().to_arrow()


def test_skip_rows_imports_good_rows_and_quarantines_bad_ones_exactly_once(lake, s3, make_job, monkeypatch):
    job = _job(make_job, s3, SC, on_error="skip_rows")
    table_50 = _three_bad_rows()
    info = s3.write(f"{PREFIX}skip/a.parquet", to_bytes(table_50, "parquet"))
    report = validate_file(job, s3, info, batch_rows=7)
    assert (report.status, report.rows, report.bad_rows) == ("partial", 50, 3)
    assert {(p.row, p.code) for p in report.problems} == set(BAD_AT.items())

    r = import_file(job, s3, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=7)
    assert (r.status, r.rows, r.bad_rows) == ("imported", 47, 3), r.error
    data = _table(lake, job).scan().to_arrow()
    assert data.num_rows == 47 and not set(data["_source_row"].to_pylist()) & set(BAD_AT)
    q = _quarantine(lake, job).sort_by("_source_row")
    assert q["_source_row"].to_pylist() == sorted(BAD_AT)
    assert q["error_codes"].to_pylist() == [BAD_AT[r] for r in sorted(BAD_AT)]
    assert set(q["_source_file"].to_pylist()) == {s3.uri(info.key)} and set(q["_source_etag"].to_pylist()) == {info.etag}
    records = [json.loads(x) for x in q["record"].to_pylist()]
    originals = table_50.to_pylist()
    for rec, row in zip(records, sorted(BAD_AT)):
        assert set(rec) == set(table_50.schema.names)
        assert rec["prediction_id"] == originals[row - 1]["prediction_id"]
        assert rec["region"] == "eu" and rec["feature_city"] == originals[row - 1]["feature_city"]
    assert math.isnan(records[1]["predicted_score"])
    for err, row in zip(q["errors"].to_pylist(), sorted(BAD_AT)):
        assert f"row {row}" in err and f"[{BAD_AT[row]}]" in err

    # a re-import of the same version adds nothing anywhere
    again = import_file(job, s3, info, catalog=lake.catalog, ledger=lake.ledger)
    assert again.status == "already-imported"
    assert _table(lake, job).scan().to_arrow().num_rows == 47 and _quarantine(lake, job).num_rows == 3

    # a transient failure after the quarantine commit, then the retry: still one copy of each bad row
    info_b = s3.write(f"{PREFIX}skip/b.parquet", to_bytes(_three_bad_rows(id_prefix="t"), "parquet"))
    real_commit = importer._commit

    def conflict(*args, **kwargs):
        raise CommitConflictError("injected: commit kept conflicting")

    monkeypatch.setattr(importer, "_commit", conflict)
    with pytest.raises(CommitConflictError):
        import_file(job, s3, info_b, catalog=lake.catalog, ledger=lake.ledger)
    assert lake.ledger.get(job.name, info_b)["status"] == "pending"
    monkeypatch.setattr(importer, "_commit", real_commit)
    r = import_file(job, s3, info_b, catalog=lake.catalog, ledger=lake.ledger)
    assert (r.status, r.rows, r.bad_rows) == ("imported", 47, 3), r.error
    q = _quarantine(lake, job)
    assert q.num_rows == 6
    b_rows = q.filter(pc.equal(q["_source_file"], s3.uri(info_b.key)))
    assert sorted(b_rows["_source_row"].to_pylist()) == sorted(BAD_AT)
    assert _table(lake, job).scan().to_arrow().num_rows == 94


@pytest.mark.parametrize("limits", [{"max_bad_rows": 2}, {"max_bad_fraction": 0.05}], ids=["rows", "fraction"])
def test_skip_rows_above_the_thresholds_fails_the_file(lake, s3, make_job, limits):
    job = _job(make_job, s3, SC, on_error="skip_rows", **limits)
    good = s3.write(f"{PREFIX}good.parquet", to_bytes(good_table("score_categorical", GOOD_ROWS, id_prefix="g"),
                                                     "parquet"))
    assert import_file(job, s3, good, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    info = s3.write(f"{PREFIX}skip/too_many.parquet", to_bytes(_three_bad_rows(), "parquet"))
    report = validate_file(job, s3, info)
    assert (report.status, report.bad_rows) == ("failed", 3)
    r = import_file(job, s3, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=7, chunk_rows=7)
    assert (r.status, r.code) == ("failed", "TOO_MANY_BAD_ROWS"), r.error
    table = _table(lake, job)
    assert table.scan().to_arrow().num_rows == GOOD_ROWS and not _mentions(table, s3.uri(info.key))
    try:
        q = _quarantine(lake, job)
    except Exception:  # no quarantine table at all: nothing was kept either
        q = None
    assert q is None or q.num_rows == 0
    assert lake.ledger.get(job.name, info)["status"] == "failed"


# -- Fix Schema -------------------------------------------------------------------------------------
def test_fix_schema_offers_a_failed_file_again_only_after_the_mapping_changes(lake, s3, make_job):
    job = _job(make_job, s3, SC)
    good = s3.write(f"{PREFIX}good.parquet", to_bytes(good_table("score_categorical", GOOD_ROWS, id_prefix="g"),
                                                     "parquet"))
    t = good_table("score_categorical", 10, id_prefix="r")
    renamed = t.rename_columns(["score" if n == "predicted_score" else n for n in t.schema.names])
    bad = s3.write(f"{PREFIX}renamed.csv", to_bytes(renamed, "csv"))
    assert [o.key for o in find_new_files(job, s3, PREFIX, lake.ledger)[0]] == [good.key, bad.key]
    report = validate_file(job, s3, bad)
    assert [(p.code, p.column) for p in report.problems] == [("COLUMN_MISSING", "predicted_score")]
    assert import_file(job, s3, good, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    r = import_file(job, s3, bad, catalog=lake.catalog, ledger=lake.ledger)
    assert (r.status, r.code) == ("failed", "COLUMN_MISSING")
    # not offered again while the schema is unchanged (also by a job equal in all but unrelated fields)
    assert find_new_files(job, s3, PREFIX, lake.ledger)[0] == []
    assert find_new_files(_job(make_job, s3, SC, poll_interval=30), s3, PREFIX, lake.ledger)[0] == []
    # Fix Schema: map the renamed column; the fingerprint changes and the failed file is offered again
    fixed = make_job(s3.uri(PREFIX), schema={**BASE_SCHEMAS["score_categorical"], "prediction_score": "score"})
    assert fixed.schema_.fingerprint() != job.schema_.fingerprint()
    offered = find_new_files(fixed, s3, PREFIX, lake.ledger)[0]
    assert [o.key for o in offered] == [bad.key]  # the succeeded good file is not
    assert validate_file(fixed, s3, offered[0]).status == "ok"
    r = import_file(fixed, s3, offered[0], catalog=lake.catalog, ledger=lake.ledger)
    assert (r.status, r.rows) == ("imported", 10), r.error
    assert _table(lake, fixed).scan().to_arrow().num_rows == GOOD_ROWS + 10
    assert find_new_files(fixed, s3, PREFIX, lake.ledger)[0] == []


# -- CLI dry run ------------------------------------------------------------------------------------
CLI_DEFECTS = ["null_id", "csv_ragged", "score_text_csv", "missing_mapped_column", "empty_avro"]


def test_cli_dry_run_prints_each_problem_with_code_and_location(lake, tmp_path, make_job, capsys):
    from obslake.cli import main

    data = tmp_path / "data"
    chosen = [d for d in DEFECTS if d.name in CLI_DEFECTS]
    for d in chosen:
        path = data / d.key.rsplit("/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(d.data)
    (data / "good.parquet").write_bytes(to_bytes(good_table("score_categorical", GOOD_ROWS), "parquet"))
    jobs = tmp_path / "include" / "import_jobs"
    jobs.mkdir(parents=True)
    job = make_job(f"file://{data}/", name="bad_files")
    (jobs / "bad_files.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json", by_alias=True)))

    code = main(["--include", str(tmp_path / "include"), "dry-run", "bad_files"])
    out = capsys.readouterr().out
    assert code == 1, out
    problem_lines = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(problem_lines) == len(chosen), out
    for d in chosen:
        name = d.key.rsplit("/", 1)[1]
        [line] = [ln for ln in problem_lines if f"/{name}" in ln]
        assert line.startswith(f"  [{d.expected_code}] file://{data}/{name}"), line
        if d.expected_row is not None:
            assert f"row {d.expected_row}" in line
        if d.expected_line is not None:
            assert f"(line {d.expected_line})" in line
        if d.expected_column is not None:
            assert f"column {d.expected_column!r}" in line
        assert "Fix: " in line
        assert f"{name}: FAILED" in out
    assert "good.parquet: OK (20 rows read)" in out
    assert f"1 file(s) valid, {len(chosen)} failed (nothing was written)" in out


@pytest.mark.parametrize("message, fix", [
    ("s3://b/k.csv: columns are missing: prediction_label -> 'x'. Fix the job's `schema:` mapping.",
     "fix the job's `schema:` mapping"),
    ("s3://b/k.csv: a bad thing. Fix: do this.", "do this"),
])
def test_a_problem_says_its_fix_once(message, fix):
    """An error that names its own fix gives it as the problem's fix; the message does not repeat it."""
    from obslake.exceptions import SchemaMismatchError
    from obslake.schema.validate import file_problem

    problem = file_problem("s3://b/k.csv", SchemaMismatchError(message, code="COLUMN_MISSING", column="x"))
    assert problem.fix == fix and str(problem).count("Fix") == 1 and str(problem).endswith(f"Fix: {fix}")
    plain = file_problem("s3://b/k.csv", SchemaMismatchError("s3://b/k.csv: no fix named", code="COLUMN_MISSING"))
    assert plain.message == "no fix named" and "schema" in plain.fix
