"""The import DAGs: integrity (parse, tags, retries, life cycle) and real runs with dag.test()."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from lake_fixtures import asset_events, inference_rows, own_bucket_for_airflow, to_bytes
from obslake.lake.importer import source_files

PROJECT = Path(__file__).resolve().parents[2]
HEAVY = ("boto3", "botocore", "pyiceberg", "pyarrow", "fastavro", "google.cloud", "airflow.providers.amazon",
         "airflow.providers.google", "sqlalchemy.dialects.postgresql")


def _bag(include: Path | None = None, monkeypatch=None):
    from airflow.dag_processing.dagbag import DagBag

    if include is not None:
        monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(include))
    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_repo_dags_parse_without_errors_and_carry_tags_and_retries(monkeypatch):
    monkeypatch.delenv("OBSLAKE_INCLUDE_DIR", raising=False)
    bag = _bag()
    assert bag.import_errors == {}
    assert bag.dags, "include/import_jobs/ ships at least one example job"
    assert {"obslake_import__demo_ctr", "obslake_fabric__demo_traces", "obslake_maintenance"} <= set(bag.dags)
    for dag_id, dag in bag.dags.items():
        assert dag_id.startswith(("obslake_import__", "obslake_fabric__")) or dag_id == "obslake_maintenance"
        assert "obslake" in dag.tags
        assert dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.retries >= 2, (dag_id, task.task_id)
        if dag_id.startswith("obslake_import__"):
            assert "import" in dag.tags
            assert [t.task_id for t in dag.topological_sort()] == [
                "wait_for_new_files", "verify_bucket_ownership", "validate_files", "import_files", "report_failures"]


def _job_yaml(name: str, source: str, status: str = "active", extra: str = "") -> str:
    return textwrap.dedent(f"""
        name: {name}
        source: {source}
        model: {{space: tests, name: {name}, type: score_categorical, environment: production}}
        ingestion_key_variable: obslake_test_key
        schema:
          prediction_id: prediction_id
          timestamp: prediction_ts
          prediction_label: predicted_label
          prediction_score: predicted_score
          features: {{prefix: "feature_"}}
          tags: [region]
          # pyarrow writes whole-number doubles to CSV as "100", which reads as integers: declared, every
          # format agrees whichever file is imported first (mapped tasks run in any order)
          column_types: {{feature_x: double}}
        status: {status}
    """) + textwrap.dedent(extra)


def test_life_cycle_statuses_and_config_errors(tmp_path, monkeypatch):
    jobs = tmp_path / "import_jobs"
    jobs.mkdir()
    (jobs / "live.yaml").write_text(_job_yaml("live", "s3://bkt/live/"))
    (jobs / "resting.yaml").write_text(_job_yaml("resting", "s3://bkt/resting/", "paused"))
    (jobs / "gone.yaml").write_text(_job_yaml("gone", "s3://bkt/gone/", "deleted"))
    (jobs / "broken.yaml").write_text(_job_yaml("broken", "ftp://nope/"))
    bag = _bag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    assert set(bag.dags) == {"obslake_import__live", "obslake_import__resting", "obslake_import__broken",
                             "obslake_maintenance"}
    assert bag.dags["obslake_import__live"].is_paused_upon_creation is False
    assert bag.dags["obslake_import__resting"].is_paused_upon_creation is True
    broken = bag.dags["obslake_import__broken"]
    assert "config-error" in broken.tags
    assert type(broken.timetable).__name__ == "OnceTimetable"  # runs and fails once by itself: red, alerting
    assert "ftp://nope/" in broken.get_task("invalid_job_config").message


def test_hostile_yaml_files_never_remove_the_other_dags(tmp_path, monkeypatch):
    """500-level nesting, a 50 MB scalar, an alias bomb and a syntax error full of control characters
    and Markdown, next to good jobs: the good DAGs are there, each bad file has its config-error DAG,
    nothing is an import error, and parsing stays far below Airflow's 30 s DAG-file timeout."""
    jobs = tmp_path / "import_jobs"
    jobs.mkdir()
    (jobs / "good_a.yaml").write_text(_job_yaml("good_a", "s3://bkt/a/"))
    (jobs / "good_b.yaml").write_text(_job_yaml("good_b", "file:///data/b/"))
    (jobs / "deep_list.yaml").write_text("name: deep_list\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    (jobs / "deep_map.yaml").write_text("name: deep_map\n" + "".join(" " * i + f"k{i}:\n" for i in range(600))
                                        + " " * 600 + "v: 1\n")
    with open(jobs / "huge.yaml", "w") as fh:
        fh.write("name: huge\nx: " + "a" * (50 * 1024 * 1024) + "\n")
    (jobs / "bomb.yaml").write_text("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh")))
    (jobs / "fence.yaml").write_text("name: fence\nsource: ```\n\n# <script>alert(1)</script> ```` \x1b[2J "
                                     + "z" * 10_000 + "\n")
    (jobs / "bad_bucket.yaml").write_text(_job_yaml("bad_bucket", "s3://../etc/"))
    (jobs / "clash_a.yaml").write_text(_job_yaml("clash_a", "s3://bkt/c/").replace("name: clash_a,", "name: Clash,"))
    (jobs / "clash_b.yaml").write_text(_job_yaml("clash_b", "s3://bkt/d/").replace("name: clash_b,", "name: clash,"))
    conns = tmp_path / "connectors"
    conns.mkdir()
    (conns / "deep.yaml").write_text("name: deep\nsource: " + "{a: " * 800 + "1" + "}" * 800 + "\n")
    (conns / "rel.yaml").write_text("name: rel\nsource: {type: lake}\nprojects: [p]\nstorage: file:relative/x\n"
                                    "namespace: ml\ningestion_key_variable: k\n")
    started = time.monotonic()
    bag = _bag(tmp_path, monkeypatch)
    elapsed = time.monotonic() - started
    assert bag.import_errors == {}
    assert elapsed < 10, f"parsing the DAG files took {elapsed:.1f}s"
    errors = {f"obslake_import__{n}" for n in ("deep_list", "deep_map", "huge", "bomb", "fence", "bad_bucket",
                                               "clash_a", "clash_b")}
    assert {"obslake_import__good_a", "obslake_import__good_b"} | errors <= set(bag.dags)
    for dag_id in errors | {"obslake_fabric__deep", "obslake_fabric__rel"}:
        assert "config-error" in bag.dags[dag_id].tags, dag_id
    assert "config-error" not in bag.dags["obslake_import__good_a"].tags
    assert "nested more than" in bag.dags["obslake_import__deep_list"].get_task("invalid_job_config").message
    assert "1 MiB" in bag.dags["obslake_import__huge"].get_task("invalid_job_config").message
    assert "3-63" in bag.dags["obslake_import__bad_bucket"].get_task("invalid_job_config").message
    assert "tests.clash__production" in bag.dags["obslake_import__clash_a"].get_task("invalid_job_config").message
    assert "file:///abs/path/" in bag.dags["obslake_fabric__rel"].get_task("invalid_job_config").message
    fence = bag.dags["obslake_import__fence"]
    message = fence.get_task("invalid_job_config").message
    assert "\x1b" not in message and len(message) < 1000
    doc = fence.doc_md
    assert "\x1b" not in doc
    opening = doc.split("\n")[2]  # "### title", "", then the fence
    assert opening.startswith("````") and doc.rstrip().endswith("\n" + opening.removesuffix("text"))
    assert "````" in doc.split(opening, 1)[1]  # the YAML's own backticks stay inside the block


def test_dag_file_imports_no_provider_sdk_at_top_level(tmp_path):
    probe = textwrap.dedent(f"""
        import datetime, json, runpy, sys
        HEAVY = {HEAVY!r}
        def heavy():
            return {{m for m in sys.modules if m.startswith(HEAVY)}}
        from airflow.sdk import DAG, BaseOperator
        with DAG("baseline", schedule=None, start_date=datetime.datetime(2024, 1, 1)):
            BaseOperator(task_id="t")
        base = heavy()
        runpy.run_path({str(PROJECT / 'dags' / 'import_jobs.py')!r})
        runpy.run_path({str(PROJECT / 'dags' / 'data_fabric.py')!r})
        print(json.dumps(sorted(heavy() - base)))
    """)
    env = {**os.environ, "OBSLAKE_INCLUDE_DIR": str(PROJECT / "include")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- real runs --------------------------------------------------------------------------------------
@pytest.fixture
def s3_job(tmp_path, monkeypatch, s3_client, s3_bucket, moto_server, lake, airflow_db):
    """A job on a moto bucket tagged with the right key, with its Airflow connection and Variable."""
    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")
    jobs = tmp_path / "include" / "import_jobs"
    jobs.mkdir(parents=True)

    def make(name="e2e", extra="poll_interval: 0.5\nsensor_timeout: 3\n"):
        (jobs / f"{name}.yaml").write_text(_job_yaml(name, f"s3://{s3_bucket}/in/", extra=extra))
        return _bag(tmp_path / "include", monkeypatch).dags[f"obslake_import__{name}"]

    return make


def _xcom(run, task_id: str, key: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id,
                                                 key=key).one()
        return XComModel.deserialize_value(row)


def _states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(getattr(ti.state, "value", ti.state)))
    return out


@pytest.mark.airflow
@pytest.mark.slow
def test_dag_run_imports_each_file_once_in_batches(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job()
    for i, fmt in enumerate(["parquet", "csv", "avro"]):
        s3_client.put_object(Bucket=s3_bucket, Key=f"in/2024/0{i}/part.{fmt}",
                             Body=to_bytes(inference_rows(100, start=100 * i), fmt))
    bad = inference_rows(10, start=900).drop_columns(["predicted_label"])
    s3_client.put_object(Bucket=s3_bucket, Key="in/bad/missing-label.parquet", Body=to_bytes(bad, "parquet"))
    run = dag.test()
    states = _states(run)
    # the good files are imported, and the refused one makes the run fail (alerts fire), in its last task
    assert str(run.state) == "failed", states
    assert states["import_files"] == ["success"]  # the three small valid files: one batch, one mapped task
    assert states["report_failures"] == ["failed"]
    summary = _xcom(run, "report_failures", "summary")
    assert summary["imported"] == 3 and summary["rows"] == 300
    [refused] = summary["failed"]
    assert refused["file"].endswith("in/bad/missing-label.parquet") and refused["code"]
    assert "predicted_label" in refused["error"]
    table = lake.catalog.load_table(("tests", "e2e__production"))
    # the table's first file creates it alone; the other two are committed together
    assert [len(source_files(s.summary)) for s in table.snapshots()] == [1, 2]
    data = table.scan().to_arrow()
    assert data.num_rows == 300 and pc.count_distinct(data["prediction_id"]).as_py() == 300
    # the model table is an Asset: one event (rows, files, snapshot) for the batch that landed
    [event] = asset_events("iceberg://lake/tests/e2e__production")
    assert event["rows"] == 300 and len(event["files"]) == 3 and event["job"] == "e2e"
    assert event["snapshot_id"] == table.current_snapshot().snapshot_id
    counts = lake.ledger.counts("e2e")
    assert counts == {"pending": 0, "succeeded": 3, "failed": 1}
    failed = [r for r in lake.ledger.rows("e2e") if r["status"] == "failed"][0]
    assert failed["key"] == "in/bad/missing-label.parquet" and "predicted_label" in failed["error"]

    # the same DAG again: nothing new, the sensor times out softly, nothing is appended
    started = time.monotonic()
    run2 = dag.test()
    assert _states(run2)["wait_for_new_files"] == ["skipped"]
    assert len(asset_events("iceberg://lake/tests/e2e__production")) == 1  # nothing landed: no event
    assert time.monotonic() - started < 60
    assert lake.catalog.load_table(("tests", "e2e__production")).scan().to_arrow().num_rows == 300


@pytest.mark.airflow
@pytest.mark.slow
def test_wrong_tag_fails_the_run_before_any_object_is_read(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job()
    s3_client.put_object(Bucket=s3_bucket, Key="in/a.parquet", Body=to_bytes(inference_rows(10), "parquet"))
    s3_client.put_bucket_tagging(Bucket=s3_bucket, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": "x"}]})
    run = dag.test()
    states = _states(run)
    assert str(run.state) == "failed"
    # the sensor proves ownership before its first listing, so it is the one that fails
    assert states["wait_for_new_files"] == ["failed"]
    assert states["verify_bucket_ownership"] == ["upstream_failed"]
    assert states["validate_files"] == ["upstream_failed"]
    assert lake.ledger.rows("e2e") == []  # nothing was read, validated or imported


@pytest.mark.airflow
@pytest.mark.slow
def test_missing_bucket_fails_the_sensor_instead_of_skipping(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job()
    s3_client.delete_bucket(Bucket=s3_bucket)
    run = dag.test()
    assert str(run.state) == "failed"
    assert _states(run)["wait_for_new_files"] == ["failed"]


@pytest.mark.airflow
@pytest.mark.slow
def test_yaml_paused_job_reads_nothing_even_if_the_dag_runs(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job("resting", extra="poll_interval: 0.5\nsensor_timeout: 3\nstatus: paused\n")
    s3_client.put_object(Bucket=s3_bucket, Key="in/a.parquet", Body=to_bytes(inference_rows(10), "parquet"))
    assert type(dag.timetable).__name__ == "NullTimetable"  # paused in YAML: no scheduled run at all
    run = dag.test()
    assert _states(run)["wait_for_new_files"] == ["skipped"]
    assert lake.ledger.rows("resting") == []


@pytest.mark.airflow
@pytest.mark.slow
def test_a_run_whose_every_file_is_refused_fails_in_its_report(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job()
    bad = inference_rows(10, start=900).drop_columns(["predicted_label"])
    s3_client.put_object(Bucket=s3_bucket, Key="in/only/bad.parquet", Body=to_bytes(bad, "parquet"))
    run = dag.test()
    states = _states(run)
    assert str(run.state) == "failed" and states["report_failures"] == ["failed"], states
    assert states["validate_files"] == ["success"] and states["import_files"] == ["skipped"]
    [refused] = _xcom(run, "report_failures", "summary")["failed"]
    assert refused["file"].endswith("in/only/bad.parquet") and "predicted_label" in refused["error"]


@pytest.mark.airflow
@pytest.mark.slow
def test_deferrable_sensor_run(s3_job, s3_client, s3_bucket, lake):
    dag = s3_job("deferred", extra="poll_interval: 0.5\nsensor_timeout: 30\ndeferrable: true\n")
    s3_client.put_object(Bucket=s3_bucket, Key="in/x/y.parquet", Body=to_bytes(inference_rows(25), "parquet"))
    run = dag.test()
    assert str(run.state) == "success", _states(run)
    assert lake.ledger.counts("deferred")["succeeded"] == 1


def test_trigger_waits_without_blocking_the_event_loop_then_fires(s3_client, s3_bucket, moto_server, lake,
                                                                  monkeypatch, make_job):
    from obslake.airflow_support import job_to_dict
    from obslake.triggers.prefix import NewFilesTrigger

    own_bucket_for_airflow(monkeypatch, s3_client, s3_bucket, moto_server, "obslake_test_key")
    job = make_job(f"s3://{s3_bucket}/in/", conn_id="aws_default", poll_interval=0.2)
    trigger = NewFilesTrigger(job=job_to_dict(job), poll_interval=0.2)
    path, kwargs = trigger.serialize()
    assert path == "obslake.triggers.prefix.NewFilesTrigger"
    trigger = NewFilesTrigger(**json.loads(json.dumps(kwargs)))

    body = to_bytes(inference_rows(5), "csv")  # built outside the loop: the test itself must not block it

    async def measure(trig, upload: bool):
        gaps: list[float] = []

        async def ticker():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        gen = trig.run().__aiter__()
        first = asyncio.create_task(gen.__anext__())
        await asyncio.sleep(1.0)
        assert not first.done(), "no files yet: the trigger must keep waiting"
        event = None
        if upload:
            await asyncio.to_thread(s3_client.put_object, Bucket=s3_bucket, Key="in/late/f.csv", Body=body)
            event = await asyncio.wait_for(first, 20)
        else:
            first.cancel()
        tick.cancel()
        return event, gaps

    # The first poll of a (source, connection) in a triggerer process builds the S3 client: botocore
    # parses its JSON service models holding the GIL (a one-time 0.3-0.9 s here, as for the Amazon
    # provider's own triggers). Every poll after that must leave the event loop free.
    _, warm_gaps = asyncio.run(measure(trigger, upload=False))
    assert max(warm_gaps) < 2.0, f"first poll blocked the loop for {max(warm_gaps):.2f}s"
    event, gaps = asyncio.run(measure(NewFilesTrigger(**kwargs), upload=True))
    assert event.payload["status"] == "success"
    assert [f["key"] for f in event.payload["files"]] == ["in/late/f.csv"]
    assert max(gaps) < 0.25, f"a steady-state poll blocked the event loop for {max(gaps):.2f}s"
