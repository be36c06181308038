"""Job status as plain data and as a table."""

from __future__ import annotations

import pyarrow as pa

from lake_fixtures import inference_rows, to_bytes
from obslake.lake.importer import import_file
from obslake.status import format_status, job_status
from obslake.storage import open_store


def test_status_counts_rows_and_latest_errors(lake, s3_client, s3_bucket, make_job):
    store, _ = open_store(f"s3://{s3_bucket}/m/", s3_client=s3_client)
    job = make_job(f"s3://{s3_bucket}/m/")
    good = store.write("m/a.parquet", to_bytes(inference_rows(30, id_prefix="a"), "parquet"))
    rows = inference_rows(5, id_prefix="b").to_pylist()
    rows[2]["prediction_id"] = ""
    bad = store.write("m/b.parquet", to_bytes(pa.Table.from_pylist(rows, inference_rows(1).schema), "parquet"))
    for info in (good, bad):
        import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger)
    status = job_status(job.name, ledger=lake.ledger)
    assert status["files"] == {"pending": 0, "succeeded": 1, "failed": 1}
    assert status["rows"] == 30 and status["last_import"] is not None
    assert len(status["latest_errors"]) == 1
    err = status["latest_errors"][0]
    assert err["file"] == f"{s3_bucket}/m/b.parquet" and "[ID_MISSING]" in err["error"] and "row 3" in err["error"]
    text = format_status(status, "active")
    assert "succeeded" in text and "30" in text and "m/b.parquet" in text and "row 3" in text


def test_a_file_failing_transiently_shows_its_last_error_and_attempts(lake, s3_client, s3_bucket, make_job,
                                                                       monkeypatch):
    import pytest
    import sqlalchemy as sa

    from obslake.exceptions import TransientError
    from obslake.lake import importer

    store, _ = open_store(f"s3://{s3_bucket}/m/", s3_client=s3_client)
    job = make_job(f"s3://{s3_bucket}/m/")
    info = store.write("m/flaky.parquet", to_bytes(inference_rows(10, id_prefix="f"), "parquet"))

    def catalog_down(*args, **kwargs):  # the catalog database does not answer
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("could not connect to server: Connection refused"))

    monkeypatch.setattr(importer, "load_table", catalog_down)
    for _ in range(3):
        with pytest.raises(TransientError, match="Connection refused"):
            import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger)
    status = job_status(job.name, ledger=lake.ledger)
    assert status["files"]["pending"] == 1
    [err] = status["latest_errors"]
    assert err["status"] == "pending" and err["attempts"] == 3 and "Connection refused" in err["error"]
    text = format_status(status, "active")
    assert "pending, 3 attempt(s)" in text and "Connection refused" in text

    monkeypatch.undo()
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    status = job_status(job.name, ledger=lake.ledger)
    assert status["files"] == {"pending": 0, "succeeded": 1, "failed": 0} and not status["latest_errors"]


def test_a_fixed_file_is_no_longer_a_failure_and_its_history_stays(lake, s3_client, s3_bucket, make_job):
    store, _ = open_store(f"s3://{s3_bucket}/m/", s3_client=s3_client)
    job = make_job(f"s3://{s3_bucket}/m/")
    rows = inference_rows(5, id_prefix="c").to_pylist()
    rows[1]["prediction_id"] = ""
    bad = store.write("m/c.parquet", to_bytes(pa.Table.from_pylist(rows, inference_rows(1).schema), "parquet"))
    assert import_file(job, store, bad, catalog=lake.catalog, ledger=lake.ledger).status == "failed"
    before = job_status(job.name, ledger=lake.ledger)
    assert before["files"] == {"pending": 0, "succeeded": 0, "failed": 1} and before["latest_errors"]

    fixed = store.write("m/c.parquet", to_bytes(inference_rows(7, id_prefix="c"), "parquet"))  # same key, new etag
    assert import_file(job, store, fixed, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    after = job_status(job.name, ledger=lake.ledger)
    assert after["files"] == {"pending": 0, "succeeded": 1, "failed": 0}
    assert after["latest_errors"] == [] and after["rows"] == 7
    assert after["earlier_versions"] == 1 and after["fixed"] == 1
    assert len(lake.ledger.rows(job.name)) == 2  # the failed version's row (its error) is kept
    assert "1 failed, then fixed" in format_status(after, "active")

    # a newer version that fails: the key is failed again, and the rows in the table are still the fixed ones
    rows = inference_rows(3, id_prefix="c").to_pylist()
    rows[0]["prediction_id"] = ""
    worse = store.write("m/c.parquet", to_bytes(pa.Table.from_pylist(rows, inference_rows(1).schema), "parquet"))
    assert import_file(job, store, worse, catalog=lake.catalog, ledger=lake.ledger).status == "failed"
    last = job_status(job.name, ledger=lake.ledger)
    assert last["files"]["failed"] == 1 and last["files"]["succeeded"] == 0 and last["rows"] == 7
    assert last["latest_errors"][0]["etag"] == worse.etag
