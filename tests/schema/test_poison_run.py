"""The poison run: one real ``dag.test()`` over a prefix that mixes every defect kind with good files.

Every good file must be imported, every bad one must fail alone with its code in the ledger, nothing
may stay pending, and a fresh good file must import in the next run (no defect poisons the table).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from corpus import BASE_SCHEMAS, defects, good_table
from corpus_production import production_defects
from lake_fixtures import own_bucket_for_airflow, to_bytes

PROJECT = Path(__file__).resolve().parents[2]
FORMATS = ("parquet", "csv", "avro", "arrow")


def _base_job_defects():
    """The defects of the corpora that a plain score_categorical job (no overrides) must reject."""
    found = [d for d in defects() if d.model_type == "score_categorical" and not d.schema_overrides
             and not d.job_overrides]
    found += [d for d in production_defects() if d.model_type == "score_categorical" and not d.schema_overrides
              and not d.job_overrides and not d.needs_table and not d.slow]
    return found


@pytest.fixture
def poison_job(tmp_path, monkeypatch, s3_client, s3_bucket, moto_server, lake, airflow_db):
    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_poison_key")
    jobs = tmp_path / "include" / "import_jobs"
    jobs.mkdir(parents=True)
    job = {"name": "poison", "source": f"s3://{s3_bucket}/in/", "ingestion_key_variable": "obslake_poison_key",
           "model": {"space": "tests", "name": "poison", "type": "score_categorical", "environment": "production"},
           "schema": BASE_SCHEMAS["score_categorical"], "poll_interval": 0.5, "sensor_timeout": 3,
           "max_files_per_run": 1000, "retries": 0}
    (jobs / "poison.yaml").write_text(yaml.safe_dump(job))
    monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(tmp_path / "include"))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["obslake_import__poison"]


@pytest.mark.airflow
@pytest.mark.slow
def test_one_run_over_every_defect_imports_every_good_file(poison_job, s3_client, s3_bucket, lake):
    bad = _base_job_defects()
    assert len(bad) >= 80, len(bad)
    good: dict[str, int] = {}
    for i in range(8):
        fmt = FORMATS[i % 4]
        key = f"in/good/{i:02d}/part-{i}.{fmt}"
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=to_bytes(good_table("score_categorical", 20,
                                                                                  id_prefix=f"g{i}-"), fmt))
        good[f"s3://{s3_bucket}/{key}"] = 20
    expected_codes: dict[str, str | None] = {}
    for d in bad:
        key = f"in/bad/{d.key.rsplit('/', 1)[-1]}"
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=d.data)
        expected_codes[key] = d.expected_code

    run = poison_job.test()
    table = lake.catalog.load_table(("tests", "poison__production")).scan().to_arrow()
    per_file = {f: table.filter(pc.equal(table["_source_file"], f)).num_rows for f in good}
    assert per_file == good  # every good file, exactly once

    rows = {r["key"]: r for r in lake.ledger.rows("poison")}
    assert not [k for k, r in rows.items() if r["status"] == "pending"], "nothing may stay pending"
    for key, code in expected_codes.items():
        r = rows[key]
        if code is None:  # a control that must import
            assert r["status"] == "succeeded", (key, r["error"])
            continue
        assert r["status"] == "failed", (key, r["status"])
        assert r["code"] == code, (key, r["code"], (r["error"] or "")[:300])
        assert r["code"] != "INTERNAL_ERROR"

    # the run shows the failures but the good files are in; a fresh good file imports next time
    fresh = "in/good/fresh/after.parquet"
    s3_client.put_object(Bucket=s3_bucket, Key=fresh, Body=to_bytes(good_table("score_categorical", 5,
                                                                             id_prefix="fresh-"), "parquet"))
    poison_job.test()
    table = lake.catalog.load_table(("tests", "poison__production")).scan().to_arrow()
    assert table.filter(pc.equal(table["_source_file"], f"s3://{s3_bucket}/{fresh}")).num_rows == 5
    assert table.num_rows == sum(good.values()) + 5 + sum(
        r["rows"] or 0 for k, r in rows.items() if k.startswith("in/bad/") and r["status"] == "succeeded")
    assert run is not None
