"""The ``obslake`` command: validate-config and dry-run against a file:// job (no Airflow, no lake)."""

from __future__ import annotations

import textwrap

import pytest

from lake_fixtures import inference_rows, to_bytes
from obslake.cli import main


def _job(include, name, source, model="ctr", space="tests"):
    jobs = include / "import_jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / f"{name}.yaml").write_text(textwrap.dedent(f"""
        name: {name}
        source: {source}
        model: {{space: '{space}', name: '{model}', type: score_categorical, environment: production}}
        ingestion_key_variable: obslake_test_key
        schema:
          prediction_id: prediction_id
          timestamp: prediction_ts
          prediction_label: predicted_label
          prediction_score: predicted_score
          features: {{prefix: "feature_"}}
          tags: [region]
    """))


@pytest.fixture
def local_job(tmp_path):
    data = tmp_path / "data" / "in"
    (data / "2024").mkdir(parents=True)
    (data / "2024" / "a.csv").write_bytes(to_bytes(inference_rows(5), "csv"))
    (tmp_path / "data" / "elsewhere.csv").write_bytes(to_bytes(inference_rows(5), "csv"))
    include = tmp_path / "include"
    _job(include, "local", f"file://{data}/")
    return include, data


def test_dry_run_accepts_a_full_file_uri_as_the_help_says(local_job, capsys):
    include, data = local_job
    assert main(["--include", str(include), "dry-run", "local", f"file://{data}/2024/a.csv"]) == 0
    out = capsys.readouterr().out
    assert "a.csv: OK (5 rows read)" in out and "1 file(s) valid" in out
    # the key relative to the job's directory works as before
    assert main(["--include", str(include), "dry-run", "local", "2024/a.csv"]) == 0


def test_dry_run_refuses_a_uri_outside_the_job(local_job, capsys):
    include, data = local_job
    for uri in (f"file://{data.parent}/elsewhere.csv", f"file://{data}/../elsewhere.csv", "s3://bucket/in/a.csv"):
        assert main(["--include", str(include), "dry-run", "local", uri]) == 2
        assert "not " in capsys.readouterr().err


def test_validate_config_reports_collisions_and_attacks(tmp_path, capsys):
    include = tmp_path / "include"
    _job(include, "a", "s3://bucket/a/", space="team", model="click-thru-rate")
    _job(include, "b", "s3://bucket/b/", space="Team", model="Click.Thru_Rate")
    _job(include, "c", "s3://bucket/c/", model="fine")
    _job(include, "d", "file:relative/x/", model="other")
    (include / "import_jobs" / "e.yaml").write_text("name: e\nx: " + "[" * 600 + "]" * 600 + "\n")
    assert main(["--include", str(include), "validate-config"]) == 1
    out = capsys.readouterr().out
    assert "ok      c:" in out
    invalid = [line for line in out.splitlines() if line.startswith("INVALID")]
    assert len(invalid) == 4, out
    assert "team.click_thru_rate__production" in out and "file:///abs/path/" in out and "nested more than" in out


def test_validate_config_on_the_shipped_jobs(capsys):
    assert main(["validate-config"]) == 0
    out = capsys.readouterr().out
    assert "ok      demo_ctr" in out and "ok      connector demo_traces" in out


def test_validate_config_checks_connectors_too(tmp_path, capsys):
    include = tmp_path / "include"
    (include / "import_jobs").mkdir(parents=True)
    (include / "connectors").mkdir()
    (include / "connectors" / "bad.yaml").write_text("name: bad\nsource: {type: lake}\nprojects: []\n")
    assert main(["--include", str(include), "validate-config"]) == 1
    assert "INVALID" in capsys.readouterr().out
