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


# -- config and path attacks (issue #10) -----------------------------------------------------------
import os  # noqa: E402
import time  # noqa: E402

from obslake.config import (  # noqa: E402
    EXCERPT_CHARS,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    Connector,
    ImportJob,
    load_connectors,
    read_yaml,
)


def _job_text(name: str, source: str = "s3://bucket/models/ctr", space: str = "demo", model: str = "ctr",
              kind: str = "predictions", extra: str = "") -> str:
    schema = ("  prediction_id: id\n  timestamp: ts\n  actual_label: label\n" if kind == "actuals" else
              "  prediction_id: id\n  timestamp: ts\n  prediction_label: label\n")
    return (f"name: {name}\nsource: {source}\nkind: {kind}\n"
            f"model: {{space: '{space}', name: '{model}', type: binary_classification}}\n"
            f"ingestion_key_variable: obslake_ctr_key\nschema:\n{schema}{extra}")


def _no_control_chars(text: str) -> bool:
    return not any(ord(c) < 32 and c != "\n" or 127 <= ord(c) < 160 for c in text)


@pytest.mark.parametrize("shape", ["flow_list", "block_mapping", "flow_mapping"])
def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error(tmp_path, shape):
    n = 500
    body = {
        "flow_list": "x: " + "[" * n + "]" * n + "\n",
        "block_mapping": "".join("  " * i + f"k{i}:\n" for i in range(n)) + "  " * n + "v: 1\n",
        "flow_mapping": "x: " + "{a: " * n + "1" + "}" * n + "\n",
    }[shape]
    path = _write(tmp_path, "deep", "name: deep\n" + body)
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    assert time.monotonic() - started < 2
    assert str(path) in str(err.value) and f"more than {MAX_YAML_DEPTH} levels" in str(err.value)


def test_depth_limit_boundary(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("x: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\n")  # mapping + 31 lists
    read_yaml(ok)
    deep = tmp_path / "deep.yaml"
    deep.write_text("x: " + "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH + "\n")
    with pytest.raises(ConfigError, match="nested more than"):
        read_yaml(deep)


def test_huge_yaml_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as fh:
        fh.write("name: big\nx: ")
        fh.write("a" * (50 * 1024 * 1024))  # the 50 MB scalar took ~60 s to parse
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    assert time.monotonic() - started < 1
    assert str(path) in str(err.value) and "1 MiB" in str(err.value) and f"{os.path.getsize(path):,}" in str(err.value)
    just = tmp_path / "just.yaml"
    just.write_text("x: " + "a" * (MAX_YAML_BYTES - 4) + "\n")
    assert read_yaml(just)["x"].startswith("aaa")  # exactly at the limit: fine


def test_alias_expansion_and_self_reference_are_bounded(tmp_path):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcde", "bcdef"))
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} values once its aliases"):
        read_yaml(path)
    assert time.monotonic() - started < 2
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("a: &a [*a]\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        read_yaml(cycle)


def test_too_many_values_is_refused(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("x: [" + ",".join(["1"] * (MAX_YAML_NODES + 10)) + "]\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} values"):
        read_yaml(path)


def test_yaml_errors_quote_a_short_escaped_excerpt(tmp_path):
    secret_line = "source: [unclosed \x1b[31mRED\x1b[0m " + "y" * 100_000
    path = _write(tmp_path, "bad", "name: bad\n" + secret_line + "\n")
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg
    assert "\x1b" not in msg and "\\x1b" in msg
    assert len(msg) < len(str(path)) + 3 * EXCERPT_CHARS
    # a syntax error (not a bad character) far into a long line: the excerpt is around it, bounded
    path = _write(tmp_path, "long", "name: long\nsource: s3://bucket/" + "z" * 5000 + " : [\n")
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert "line 2, column" in msg and "near: ..." in msg and len(msg) < len(str(path)) + 3 * EXCERPT_CHARS
    assert _no_control_chars(msg)


def test_validation_messages_escape_and_bound_user_values(tmp_path):
    path = _write(tmp_path, "ctr", GOOD.format(name="ctr") + '"evil\\nINFO forged line": 1\nname2: ' + "N" * 10_000)
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert "evil\\nINFO forged line" in msg and "evil\nINFO" not in msg
    assert len(msg) < 2000
    long_name = _write(tmp_path, "n", GOOD.format(name="N" * 100_000))
    with pytest.raises(ConfigError) as err:
        load_import_job(long_name)
    assert "not a valid job name" in str(err.value) and len(str(err.value)) < 1000


def test_any_exception_while_loading_is_a_config_error_for_that_file(tmp_path, monkeypatch):
    _write(tmp_path, "good", GOOD.format(name="good"))
    _write(tmp_path, "boom", GOOD.format(name="boom"))
    real = ImportJob.model_validate.__func__

    def flaky(cls, data, *args, **kwargs):
        if data.get("name") == "boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(cls, data, *args, **kwargs)

    monkeypatch.setattr(ImportJob, "model_validate", classmethod(flaky))
    jobs, errors = load_import_jobs(tmp_path)
    assert [j.name for j in jobs] == ["good"]
    assert len(errors) == 1 and errors[0].path.name == "boom.yaml" and "nested too deeply" in str(errors[0])

    def broken(cls, data, *args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(ImportJob, "model_validate", classmethod(broken))
    with pytest.raises(ConfigError, match="KeyError.*report this file"):
        load_import_job(tmp_path / "good.yaml")


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    jobs, errors = load_import_jobs(tmp_path)  # opening a FIFO would block DAG parsing forever
    assert jobs == [] and "not a regular file" in str(errors[0])


# -- schema: <path> --------------------------------------------------------------------------------
def _schema_job(include, value: str):
    jobs_dir = include / "import_jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    text = GOOD.format(name="ctr").split("schema:")[0] + f"schema: {value}\n"
    path = jobs_dir / "ctr.yaml"
    path.write_text(text)
    return path


def test_schema_file_inside_include_loads(tmp_path):
    include = tmp_path / "include"
    (include / "schemas").mkdir(parents=True)
    (include / "schemas" / "ctr.json").write_text('{"prediction_id": "id", "timestamp": "ts", "prediction_label": "l"}')
    job = load_import_job(_schema_job(include, "schemas/ctr.json"))
    assert job.schema_.prediction_label == "l"
    # a link that stays inside include/ is fine
    (include / "schemas" / "link.json").symlink_to(include / "schemas" / "ctr.json")
    assert load_import_job(_schema_job(include, "schemas/link.json")).schema_.timestamp == "ts"


@pytest.mark.parametrize("value", ["/etc/hostname", "../../../../../../etc/hostname.json", "../outside.json",
                                   "schemas/../../outside.json", "link_out.json", "schemas/ctr.txt",
                                   "'~/x.json'"])
def test_schema_path_must_stay_inside_include(tmp_path, value):
    include = tmp_path / "include"
    (include / "schemas").mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text('{"prediction_id": "id", "timestamp": "ts", "prediction_label": "l"}')
    (include / "link_out.json").symlink_to(outside)
    (include / "schemas" / "ctr.txt").write_text("prediction_id: id\n")
    path = _schema_job(include, value)
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert str(path) in msg and "schema:" in msg and "relative to include/" in msg, msg


def test_schema_file_errors_are_bounded_too(tmp_path):
    include = tmp_path / "include"
    (include / "schemas").mkdir(parents=True)
    (include / "schemas" / "deep.json").write_text("[" * 600 + "]" * 600)
    with pytest.raises(ConfigError, match="schema: .*deep.json.*nested more than"):
        load_import_job(_schema_job(include, "schemas/deep.json"))
    (include / "schemas" / "secret.json").write_text('{"a": 1,\n "token": "s3cr3t-' + "x" * 5000 + '" oops}')
    with pytest.raises(ConfigError) as err:
        load_import_job(_schema_job(include, "schemas/secret.json"))
    assert len(str(err.value)) < 1000


# -- storage URIs ----------------------------------------------------------------------------------
BAD_SOURCES = [
    ("s3://../x/", "3-63"),
    ("s3://.../x/", "may only use"),
    ("s3://b/x/", "3-63"),
    ("s3://My-Bucket/x/", "lowercase"),
    ("s3://my_bucket/x/", "lowercase"),
    ("s3://a..b/x/", "'..'"),
    ("s3://-abc/x/", "start and end"),
    ("s3://abc-/x/", "start and end"),
    ("s3://192.168.5.4/x/", "IP address"),
    ("s3://" + "a" * 64 + "/x/", "3-63"),
    ("s3://xn--bucket/x/", "reserves"),
    ("s3://user@bucket:80/x/", "may only use"),
    ("gs://goog-bucket/x/", "goog"),
    ("gs://my-google-bucket/x/", "google"),
    ("gs://" + "a" * 64 + "/x/", "3-63"),
    ("gs://" + ".".join(["a" * 63] * 4) + "/x/", "222"),
    ("gs://ab..cd/x/", "dot-separated"),
    ("file:relative/x/", "file:///abs/path/"),
    ("file:/abs/x/", "three slashes"),
    ("file:///", "root directory"),
    ("file:///data/../etc/", "'..'"),
    ("file:///data/./x/", "'.'"),
    ("s3://bucket/a\nb/", "control characters"),
    ("s3://bucket/a#b/", "'#'"),
]


@pytest.mark.parametrize(("source", "expected"), BAD_SOURCES)
def test_job_source_must_be_a_valid_bucket_or_absolute_directory(tmp_path, source, expected):
    quoted = '"%s"' % source.replace("\n", "\\n")
    path = _write(tmp_path, "ctr", GOOD.format(name="ctr").replace("s3://bucket/models/ctr", quoted))
    with pytest.raises(ConfigError) as err:
        load_import_job(path)
    msg = str(err.value)
    assert str(path) in msg and "source" in msg and expected in msg, msg
    assert _no_control_chars(msg)


CONNECTOR = """
name: {name}
source: {{type: lake}}
projects: [rag-app]
storage: "{storage}"
namespace: ml
ingestion_key_variable: obslake_key
"""


@pytest.mark.parametrize(("storage", "expected"), BAD_SOURCES)
def test_connector_storage_must_be_a_valid_bucket_or_absolute_directory(tmp_path, storage, expected):
    path = tmp_path / "exp.yaml"
    path.write_text(CONNECTOR.format(name="exp", storage=storage.replace("\n", "\\n")))
    conns, errors = load_connectors(tmp_path)
    assert conns == [] and len(errors) == 1
    msg = str(errors[0])
    assert str(path) in msg and "storage" in msg and expected in msg, msg


@pytest.mark.parametrize("uri", ["s3://my.bucket-1/x", "s3://abc", "gs://my_bucket/x", "gs://a-b_c.d",
                                 "gs://" + ".".join(["a" * 60] * 3) + "/x", "file:///data/in",
                                 "file://localhost/data/in"])
def test_valid_storage_uris_are_accepted(uri, tmp_path):
    job = ImportJob.model_validate({**_job_dict(), "source": uri})
    assert job.source == uri.rstrip("/") + "/"
    conn = Connector.model_validate({"name": "c", "source": {"type": "lake"}, "projects": ["p"], "storage": uri,
                                     "namespace": "ml", "ingestion_key_variable": "k"})
    assert conn.storage == uri.rstrip("/")


def _job_dict(**kw):
    return {"name": "ctr", "source": "s3://bucket/x/", "ingestion_key_variable": "k",
            "model": {"space": "demo", "name": "ctr", "type": "binary_classification"},
            "schema": {"prediction_id": "id", "timestamp": "ts", "prediction_label": "label"}, **kw}


# -- table collisions and duplicate names ----------------------------------------------------------
def test_models_that_normalise_to_one_table_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(_job_text("a", space="team", model="click-thru-rate"))
    (tmp_path / "b.yaml").write_text(_job_text("b", "s3://bucket/other", space="Team", model="Click.Thru_Rate"))
    (tmp_path / "c.yaml").write_text(_job_text("c", "s3://bucket/third", model="unrelated"))
    jobs, errors = load_import_jobs(tmp_path)
    assert [j.name for j in jobs] == ["c"]
    by_file = {e.path.name: str(e) for e in errors}
    assert set(by_file) == {"a.yaml", "b.yaml"}
    assert "team.click_thru_rate__production" in by_file["a.yaml"] and "b.yaml" in by_file["a.yaml"]
    assert "a.yaml" in by_file["b.yaml"] and "'Team/Click.Thru_Rate'" in by_file["b.yaml"]


def test_spaces_that_normalise_to_one_namespace_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(_job_text("a", space="ml-team"))
    (tmp_path / "b.yaml").write_text(_job_text("b", "s3://bucket/b", space="ml.team"))
    jobs, errors = load_import_jobs(tmp_path)
    assert jobs == [] and {e.path.name for e in errors} == {"a.yaml", "b.yaml"}


def test_jobs_of_the_same_model_share_its_table(tmp_path):
    (tmp_path / "eu.yaml").write_text(_job_text("eu", "s3://bucket/eu", space="Team", model="CTR"))
    (tmp_path / "us.yaml").write_text(_job_text("us", "s3://bucket/us", space="Team", model="CTR"))
    (tmp_path / "acts.yaml").write_text(_job_text("acts", "s3://bucket/acts", space="Team", model="CTR",
                                                  kind="actuals"))
    jobs, errors = load_import_jobs(tmp_path)
    assert not errors and sorted(j.name for j in jobs) == ["acts", "eu", "us"]


def test_an_actuals_job_must_not_join_another_models_predictions(tmp_path):
    (tmp_path / "preds.yaml").write_text(_job_text("preds", space="team", model="ctr-v"))
    (tmp_path / "acts.yaml").write_text(_job_text("acts", "s3://bucket/a", space="team", model="ctr.v", kind="actuals"))
    jobs, errors = load_import_jobs(tmp_path)
    assert jobs == [] and len(errors) == 2


def test_trace_projects_that_normalise_to_one_table_are_refused(tmp_path):
    for name, project in (("a", "support-bot"), ("b", "support.bot")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nsource: s3://bucket/{name}\nkind: spans\ntrace_project: {project}\n"
            "ingestion_key_variable: k\n")
    jobs, errors = load_import_jobs(tmp_path)
    assert jobs == [] and "traces.support_bot__spans" in str(errors[0])


def test_one_job_name_in_two_files_is_refused(tmp_path):
    _write(tmp_path, "ctr", GOOD.format(name="ctr"))
    (tmp_path / "ctr.yml").write_text(textwrap.dedent(GOOD.format(name="ctr")))
    jobs, errors = load_import_jobs(tmp_path)
    assert jobs == [] and {e.path.name for e in errors} == {"ctr.yaml", "ctr.yml"}
    assert "also defined in" in str(errors[0])


def test_window_prefix_names_a_folder_per_data_interval_and_refuses_anything_else():
    import datetime as dt

    import pytest

    from obslake.config import ImportJob

    base = {"name": "w", "source": "s3://bkt/p/", "ingestion_key_variable": "k", "kind": "spans",
            "trace_project": "x"}
    job = ImportJob.model_validate({**base, "window_prefix": "dt={date}/h={hour}"})
    start = dt.datetime(2026, 11, 30, 5, tzinfo=dt.UTC)
    assert job.window_folder(start) == "dt=2026-11-30/h=05/"
    every = ImportJob.model_validate({**base, "window_prefix": "{year}/{month}/{day}/{date_nodash}"})
    assert every.window_folder(start) == "2026/11/30/20261130/"
    assert ImportJob.model_validate(base).window_folder(start) == ""  # no window: the whole source
    for bad in ("static/", "{nope}/", "../{date}", "/{date}", "{date!r}", "{date:>12}", "{date", "a}{date}",
                "{date}?x", "{0}/", "{date.year}"):
        with pytest.raises(ValueError, match="window_prefix"):
            ImportJob.model_validate({**base, "window_prefix": bad})
