"""Job YAML validation: good files load, bad ones name the file and every bad field."""

from __future__ import annotations

import textwrap

import pytest

from obslake.config import JobStatus, load_import_job, load_import_jobs
from obslake.exceptions import ConfigError

GOOD = """
name: {name}
source: s3://bucket/models/ctr
conn_id: aws_default
model: {{space: demo, name: ctr, type: binary_classification, environment: production, version: v3}}
ingestion_key_variable: obslake_ctr_key
schema:
  prediction_id: id
  timestamp: ts
  prediction_label: label
  features: [a, b]
  tags: {{prefix: "tag_"}}
"""


def _write(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_job_loads_with_defaults(tmp_path):
    job = load_import_job(_write(tmp_path, "ctr", GOOD.format(name="ctr")))
    assert job.source == "s3://bucket/models/ctr/"  # a trailing slash is added: a prefix, not a key prefix
    assert job.poll_interval == 10 and job.status is JobStatus.active and job.retries >= 2
    assert job.dag_id == "obslake_import__ctr"
    assert job.table_identifier == ("demo", "ctr__production")
    assert job.schema_.features.select(["a", "x", "b"]) == ["a", "b"]
    assert job.schema_.tags.select(["tag_1", "a", "tag_2"]) == ["tag_1", "tag_2"]
    assert job.tag_name == "arize-ingestion-key" and job.max_file_bytes == 1024**3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("source: s3://bucket/models/ctr", "source: ftp://bucket/x"), ["source", "ftp://bucket/x", "s3://bucket/prefix/"]),
        (("conn_id: aws_default", "conn_idd: aws_default"), ["conn_idd", "unknown field"]),
        (("environment: production", "environment: staging"), ["model.environment", "training"]),
        (("  prediction_label: label\n", ""), ["schema", "prediction_label"]),
        (("ingestion_key_variable: obslake_ctr_key", "ingestion_key_variable: 'abc def!'"), ["ingestion_key_variable", "never the key"]),
        (("  timestamp: ts", "  timestamp: id"), ["schema", "'id' is mapped to both"]),
        (("name: {name}", "name: Bad Name"), ["name", "not a valid job name"]),
    ],
)
def test_invalid_fields_are_named_with_the_file(tmp_path, change, expected):
    text = GOOD.replace(*change).replace("{name}", "ctr").replace("{{", "{").replace("}}", "}")
    path = _write(tmp_path, "ctr", text)
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_file_name_must_match_job_name(tmp_path):
    with pytest.raises(ConfigError, match="rename the file to ctr.yaml"):
        load_import_job(_write(tmp_path, "other", GOOD.format(name="ctr")))


def test_broken_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_import_job(_write(tmp_path, "a", "name: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_import_job(_write(tmp_path, "b", "- just\n- a list\n"))


def test_one_bad_file_does_not_hide_the_good_ones(tmp_path):
    _write(tmp_path, "good", GOOD.format(name="good"))
    _write(tmp_path, "bad", GOOD.format(name="bad").replace("model:", "modle:"))
    jobs, errors = load_import_jobs(tmp_path)
    assert [j.name for j in jobs] == ["good"]
    assert len(errors) == 1 and "bad.yaml" in str(errors[0]) and errors[0].path.name == "bad.yaml"


def test_shipped_example_jobs_are_valid():
    from obslake.config import default_include_dir

    jobs, errors = load_import_jobs(default_include_dir() / "import_jobs")
    assert jobs and not errors
