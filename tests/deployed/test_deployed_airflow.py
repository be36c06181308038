"""obslake in a real Airflow deployment: api-server, dag-processor and scheduler (LocalExecutor) as processes on
loopback with a Postgres metadata DB (``bench/airflow_stack.py``), the lake in Postgres + a local warehouse.

One deployment (with a triggerer), what only real Airflow processes show: an import run with a refused file ends
failed after its good files are imported; the model table's asset event starts a downstream DAG scheduled on that
Asset; the obslake page refuses requests without a session; ``airflow backfill create`` on a connector makes
hour-wide runs, one sync at a time, and on a windowed import job imports each past folder once (again: nothing);
a deferrable sensor waits in the triggerer, survives the triggerer's kill -9 and imports the late file once; and
headless Chromium shows the refused file's error on the obslake page.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from deployed_helpers import PROJECT, lake_env

from bench.airflow_stack import AirflowStack, drop_database, migrate_template

KEY_VARIABLE, KEY = "obslake_deployed_key", "deployed-ingestion-key-0123456789"
PASSWORD = "viewer-password-0123"
JOB = {
    "name": "deployed", "ingestion_key_variable": KEY_VARIABLE,
    "model": {"space": "dep", "name": "ctr", "type": "score_categorical", "environment": "production"},
    "schema": {"prediction_id": "prediction_id", "timestamp": "prediction_ts", "prediction_label": "predicted_label",
               "prediction_score": "predicted_score", "features": {"prefix": "feature_"}},
    "formats": ["parquet"], "schedule": None, "deferrable": False, "retries": 0, "poll_interval": 1,
    "sensor_timeout": 60,
}
ASSET = "iceberg://lake/dep/ctr__production"
DOWNSTREAM = '''
import json, os
from pathlib import Path
from airflow.sdk import DAG, Asset, task

with DAG("after_import", schedule=[Asset("{asset}")], catchup=False):
    @task
    def record(triggering_asset_events=None):
        events = [e.extra for e in triggering_asset_events[Asset("{asset}")]]
        Path(os.environ["OBSLAKE_TEST_MARKER"]).write_text(json.dumps(events))
    record()
'''


def _connector(include: Path, name: str, storage: Path, **extra) -> None:
    """A Data Fabric connector over the lake's trace tables (project rag-app) into ``storage``."""
    conn = {"name": name, "source": {"type": "lake", "space": "traces"}, "projects": ["rag-app"],
            "storage": f"file://{storage}", "namespace": "ml", "ingestion_key_variable": KEY_VARIABLE, "retries": 0,
            **extra}
    (include / "connectors" / f"{name}.yaml").write_text(yaml.safe_dump(conn))


def _parquet(path: Path, start: int, n: int, drop_label: bool = False) -> None:
    ts = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    cols = {"prediction_id": [f"p-{i}" for i in range(start, start + n)],
            "prediction_ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
            "feature_x": [float(i) for i in range(n)], "predicted_label": ["a"] * n, "predicted_score": [0.5] * n}
    if drop_label:
        del cols["predicted_label"]
    pq.write_table(pa.table(cols), path)


def _ui_is_protected(port: int) -> None:
    """No session, or a forged one: refused (Airflow's own auth guards the plugin's routes)."""
    import urllib.error
    import urllib.request

    for headers, want in (({}, 401), ({"Cookie": "_token=forged"}, 403), ({"Authorization": "Bearer x.y.z"}, 403)):
        for path in ("/obslake/", "/obslake/jobs/deployed", "/obslake/api/status"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == want, (path, headers, err.value.code)


def _import_spans(env: dict, src: Path, n: int) -> dt.datetime:
    """Import ``n`` trace spans of project rag-app into the lake (as a ``kind: spans`` job would); the commit time."""
    import json as _json

    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.importer import import_file
    from obslake.lake.ledger import Ledger
    from obslake.storage import open_store

    start = dt.datetime(2026, 11, 20, 9, tzinfo=dt.timezone.utc)
    attrs = _json.dumps({"llm": {"model_name": "gpt-4o"}, "input": {"value": "q"}})
    pq.write_table(pa.table({
        "context.span_id": [f"s{i}" for i in range(n)], "context.trace_id": [f"t{i // 2}" for i in range(n)],
        "parent_id": [None] * n, "name": ["llm"] * n, "span_kind": ["LLM"] * n,
        "start_time": pa.array([start + dt.timedelta(minutes=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "end_time": pa.array([start + dt.timedelta(minutes=i, seconds=1) for i in range(n)],
                             pa.timestamp("us", tz="UTC")),
        "status_code": ["OK"] * n, "status_message": [""] * n, "attributes": [attrs] * n}), src / "spans.parquet")
    job = ImportJob.model_validate({"name": "dep_spans", "source": f"file://{src}/", "kind": "spans",
                                    "trace_project": "rag-app", "ingestion_key_variable": KEY_VARIABLE})
    settings = LakeSettings.from_env(env)
    store, _ = open_store(job.source)
    catalog = load_catalog(settings)
    result = import_file(job, store, store.head("spans.parquet"), catalog=catalog, ledger=Ledger(settings.state_uri))
    assert result.status == "imported", result
    snap = catalog.load_table(job.table_identifier).current_snapshot()
    return dt.datetime.fromtimestamp(snap.timestamp_ms / 1000, dt.timezone.utc)  # the commit time: the window


def _export_rows(location: Path) -> int:
    """Rows of an exported spans table, read by DuckDB from its latest.metadata.json (a reader we did not write)."""
    from obslake.fabric.ddl import duckdb_connect_with_iceberg

    con = duckdb_connect_with_iceberg()
    return con.execute(f"SELECT count(*) FROM iceberg_scan('{location}/metadata/latest.metadata.json')").fetchone()[0]


def _backfill_runs(s, dag_id: str, timeout: float = 300, task: str = "wait_for_new_files") -> list[tuple]:
    """Once every backfill of ``dag_id`` has completed: its backfill runs (run_id, state, start, end, the sensor's
    try number). (Airflow allows one running backfill per DAG; reprocessing re-runs the same runs.)"""
    deadline = time.monotonic() + timeout
    while True:
        open_backfills = s.query("SELECT count(*) FROM backfill WHERE dag_id = %s AND completed_at IS NULL",
                                 (dag_id,))[0][0]
        runs = s.query("SELECT r.run_id, r.state, r.data_interval_start, r.data_interval_end, t.try_number "
                       "FROM dag_run r JOIN task_instance t ON t.dag_id = r.dag_id AND t.run_id = r.run_id "
                       "AND t.task_id = %s WHERE r.dag_id = %s AND r.run_type = 'backfill' "
                       "ORDER BY r.data_interval_start", (task, dag_id))
        if (not open_backfills and runs and all(r[1] in ("success", "failed") for r in runs)) or (
                time.monotonic() > deadline):
            return runs
        s.check_alive()
        time.sleep(2)


def _scheduled_run_settled(s, dag_id: str, logical_date: dt.datetime, timeout: float = 120) -> None:
    """Wait until the connector's own (minutely) run of ``logical_date``, if the scheduler makes one, has finished:
    a backfill creates no run for a date whose run is queued or running (Airflow's rule), and takes a finished
    run over (cleared, run type backfill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [r[0] for r in s.query("SELECT state FROM dag_run WHERE dag_id = %s AND logical_date = %s",
                                        (dag_id, logical_date))]
        ended = logical_date + dt.timedelta(minutes=1)
        if all(st in ("success", "failed") for st in states) and (
                states or dt.datetime.now(dt.timezone.utc) > ended + dt.timedelta(seconds=30)):
            return
        s.check_alive()
        time.sleep(1)


def _ti_state(s, dag_id: str, run_id: str, task_id: str) -> str | None:
    rows = s.query("SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s",
                   (dag_id, run_id, task_id))
    return rows[0][0] if rows else None


def _table_figures(env: dict, ident: tuple[str, str]) -> tuple[int, int]:
    """(rows, snapshots) of a lake table, read here with pyiceberg (its own catalog, disposed after)."""
    from pyiceberg.catalog import load_catalog

    from obslake.lake.catalog import CATALOG_NAME, LakeSettings

    catalog = load_catalog(CATALOG_NAME, **LakeSettings.from_env(env).properties)
    try:
        table = catalog.load_table(ident)
        return table.scan(selected_fields=("prediction_id",)).to_arrow().num_rows, len(table.snapshots())
    finally:
        catalog.engine.dispose()


def _token(port: int) -> str:
    """A session of the user ``viewer`` (simple auth manager), as the login form gets it."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/token", method="POST",
                                 data=json.dumps({"username": "viewer", "password": PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def _ui_in_a_browser(port: int) -> None:
    """Headless Chromium with a viewer's session opens the obslake page and the job page and sees the refused file
    with its error, then Airflow's own UI with the nav entry; screenshots are kept as test artifacts."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        message = "chromium and chromedriver are not installed (./run test installs them with apt-get as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    artifacts = Path(os.environ.get("OBSLAKE_TEST_ARTIFACTS") or PROJECT / ".test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    base = f"http://127.0.0.1:{port}"
    try:
        driver.get(f"{base}/api/v2/version")  # any page of the origin, to set the session cookie on it
        driver.add_cookie({"name": "_token", "value": _token(port), "path": "/"})
        driver.get(f"{base}/obslake/")
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "table")))
        text = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(str(artifacts / "obslake-ui-jobs.png"))
        assert "deployed" in text and "bad.parquet" in text and "COLUMN_MISSING" in text, text
        assert "predicted_label" in text, text  # the located problem itself, shown without a click
        assert "obslake_fabric__dep" in text and "rag-app" in text, text  # the connectors table
        driver.find_element(By.LINK_TEXT, "deployed").click()
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "h2")))
        page = driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(str(artifacts / "obslake-ui-job.png"))
        assert "File history" in page and "a.parquet" in page and "succeeded" in page and "failed" in page, page
        # the nav entry: Airflow's own UI shows the page in its frame
        driver.get(f"{base}/plugin/obslake")
        frame = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
        assert "/obslake" in (frame.get_attribute("src") or ""), frame.get_attribute("src")
        driver.switch_to.frame(frame)
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "table")))
        assert "bad.parquet" in driver.find_element(By.TAG_NAME, "body").text
        driver.switch_to.default_content()
        driver.save_screenshot(str(artifacts / "obslake-ui-in-airflow.png"))
    finally:
        driver.quit()


@pytest.mark.airflow
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deployed_failures_assets_and_backfill(tmp_path):
    src, exports, include, dags = (tmp_path / n for n in ("src", "exports", "include", "dags"))
    for d in (src, exports, include / "import_jobs", include / "connectors", dags):
        d.mkdir(parents=True)
    for d in (src, exports):  # LocalStore's bucket tags: the ownership proof of a file:// "bucket"
        (d / ".obslake-tags.json").write_text(json.dumps({"arize-ingestion-key": KEY}))
    _parquet(src / "a.parquet", 0, 40)
    _parquet(src / "b.parquet", 40, 60)
    _parquet(src / "bad.parquet", 100, 5, drop_label=True)
    (include / "import_jobs" / "deployed.yaml").write_text(yaml.safe_dump({**JOB, "source": f"file://{src}/"}))
    # a windowed job: one folder per day; a backfill imports the past days' folders (and only those)
    windowed = tmp_path / "windowed"
    for day, start, n in (("2026-11-29", 1000, 20), ("2026-11-30", 2000, 30), ("2026-12-01", 3000, 7)):
        (windowed / f"dt={day}").mkdir(parents=True)
        _parquet(windowed / f"dt={day}" / "part.parquet", start, n)
    (windowed / ".obslake-tags.json").write_text(json.dumps({"arize-ingestion-key": KEY}))
    # a deferrable job whose folder is empty when its run starts: the sensor waits in the real triggerer
    deferred = tmp_path / "deferred"
    deferred.mkdir()
    (deferred / ".obslake-tags.json").write_text(json.dumps({"arize-ingestion-key": KEY}))
    (include / "import_jobs" / "deferred.yaml").write_text(yaml.safe_dump({
        **JOB, "name": "deferred", "source": f"file://{deferred}/", "deferrable": True, "sensor_timeout": 600,
        "model": {**JOB["model"], "name": "deferred"}}))
    (include / "import_jobs" / "windowed.yaml").write_text(yaml.safe_dump({
        **JOB, "name": "windowed", "source": f"file://{windowed}/", "window_prefix": "dt={date}/",
        "schedule": "@daily", "model": {**JOB["model"], "name": "win"}}))
    _connector(include, "dep", exports)
    # a connector with one-minute windows: a backfill of the minute in which trace spans were committed re-exports
    # exactly those (the lake source's windows are commit times; Airflow backfills only intervals that have ended)
    exports2, spans_src = tmp_path / "exports2", tmp_path / "spans"
    for d in (exports2, spans_src):
        d.mkdir()
        (d / ".obslake-tags.json").write_text(json.dumps({"arize-ingestion-key": KEY}))
    _connector(include, "minutely", exports2, schedule="* * * * *")
    for f in ("import_jobs.py", "data_fabric.py"):
        shutil.copy(PROJECT / "dags" / f, dags / f)
    (dags / "after_import.py").write_text(DOWNSTREAM.format(asset=ASSET))
    marker = tmp_path / "downstream.json"

    template = migrate_template(tmp_path)
    env, lake_db = lake_env(tmp_path, include, KEY_VARIABLE, KEY, "obslake_test_lake")
    env.update({
        "OBSLAKE_TEST_MARKER": str(marker),
        # real users, so that the obslake page's protection is the deployment's (not the all-admins mode)
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
    })
    (tmp_path / "passwords.json").write_text(json.dumps({"viewer": PASSWORD}))
    try:
        with AirflowStack(tmp_path / "airflow", template=template, parallelism=2, dags_folder=dags, env=env) as s:
            s.start(triggerer=True)
            for dag_id in ("obslake_import__deployed", "after_import", "obslake_fabric__dep", "obslake_import__windowed",
                           "obslake_import__deferred", "obslake_fabric__minutely"):
                s.wait_for_dag(dag_id)

            # 1. the refused file fails the run, in its last task, after the good files were imported
            run_id = s.trigger("obslake_import__deployed", "deployed_1")
            state = s.wait_for_run("obslake_import__deployed", run_id, timeout=300)
            states = {t["task_id"]: t["state"] for t in s.task_instances("obslake_import__deployed", run_id)}
            assert state == "failed", s.failure_report("obslake_import__deployed", run_id)
            assert states["import_files"] == "success" and states["report_failures"] == "failed", states
            log = s.task_log("obslake_import__deployed", run_id, "report_failures", -1, 1)
            assert log is not None and "bad.parquet" in log.read_text() and "COLUMN_MISSING" in log.read_text()

            # 2. the table's asset event runs the downstream DAG, with the import's figures
            deadline = time.monotonic() + 180
            while not marker.exists() and time.monotonic() < deadline:
                s.check_alive()
                time.sleep(1)
            assert marker.exists(), s.diagnostics(("scheduler",))
            [event] = json.loads(marker.read_text())
            assert event["rows"] == 100 and sorted(f.rsplit("/", 1)[-1] for f in event["files"]) == [
                "a.parquet", "b.parquet"]

            # 3. the obslake page is refused without a session
            _ui_is_protected(s.port)

            # 4. a backfill of a connector: one run per hour, each with its hour as data interval, re-exported
            s.cli("backfill", "create", "--dag-id", "obslake_fabric__dep", "--from-date", "2026-11-30T10:00:00+00:00",
                  "--to-date", "2026-11-30T11:00:00+00:00")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = s.query("SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run "
                               "WHERE dag_id = 'obslake_fabric__dep' AND run_type = 'backfill' ORDER BY 3")
                if len(runs) == 2 and all(r[1] in ("success", "failed") for r in runs):
                    break
                s.check_alive()
                time.sleep(2)
            assert [r[1] for r in runs] == ["success", "success"], (runs, s.diagnostics(("scheduler",)))
            starts = [r[2] for r in runs]
            assert [r[3] - r[2] for r in runs] == [dt.timedelta(hours=1)] * 2, runs
            assert [x.hour for x in starts] == [10, 11]
            spans = sorted(s.query("SELECT start_date, end_date FROM task_instance WHERE dag_id = 'obslake_fabric__dep' "
                                   "AND task_id = 'sync_project'"))
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two syncs at once
            for run_id, _state, start, end in runs:
                text = s.task_log("obslake_fabric__dep", run_id, "sync_project", 0, 1).read_text()
                events = [json.loads(line)["event"] for line in text.splitlines() if "re-exporting" in line]
                assert len(events) == 1 and events[0].startswith("backfill run: re-exporting the changes of "), events
                window = events[0].rsplit(" of ", 1)[1].split(" .. ")
                assert [dt.datetime.fromisoformat(w) for w in window] == [start, end], events

            # 5. a backfill of a windowed import job: each day's folder, once; the same backfill again changes nothing
            table = ("dep", "win__production")
            for attempt in (1, 2):
                args = ["backfill", "create", "--dag-id", "obslake_import__windowed",
                        "--from-date", "2026-11-29T00:00:00+00:00", "--to-date", "2026-11-30T00:00:00+00:00"]
                s.cli(*args, *(["--reprocess-behavior", "completed"] if attempt == 2 else []))
                runs = _backfill_runs(s, "obslake_import__windowed")
                assert [r[1] for r in runs] == ["success"] * 2, "\n".join(
                    s.failure_report("obslake_import__windowed", r[0]) for r in runs if r[1] != "success")
                assert [r[2].day for r in runs] == [29, 30] and [r[4] for r in runs] == [attempt] * 2, runs
                rows, snapshots = _table_figures(env, table)
                assert rows == 50, rows  # the 29th (20) and the 30th (30), not December's folder (7)
                if attempt == 1:
                    first_snapshots = snapshots
                else:
                    assert snapshots == first_snapshots  # nothing was imported again

            # 6. a connector backfill that holds spans: the minute of their commit, twice; the minute before: nothing
            committed = _import_spans(env, spans_src, 6)
            minute = committed.replace(second=0, microsecond=0)
            while dt.datetime.now(dt.timezone.utc) < minute + dt.timedelta(minutes=1, seconds=2):
                time.sleep(1)  # Airflow backfills only intervals that have ended
            for attempt, (start, want) in enumerate([(minute, 6), (minute, 6), (minute - dt.timedelta(minutes=1), 0)]):
                _scheduled_run_settled(s, "obslake_fabric__minutely", start)
                s.cli("backfill", "create", "--dag-id", "obslake_fabric__minutely", "--from-date", start.isoformat(),
                      "--to-date", start.isoformat(), "--reprocess-behavior", "completed")
                runs = {r[2]: r for r in _backfill_runs(s, "obslake_fabric__minutely", task="sync_project")}
                run = runs[start]
                assert run[1] == "success", s.failure_report("obslake_fabric__minutely", run[0])
                text = s.task_log("obslake_fabric__minutely", run[0], "sync_project", 0, run[4]).read_text()
                wrote = [json.loads(line)["event"] for line in text.splitlines() if "sync wrote" in line]
                assert len(wrote) == 1 and f"window sync wrote {want} span row(s)" in wrote[0] if want else (
                    "wrote 0 span row(s)" in wrote[0]), (attempt, wrote)
                assert _export_rows(exports2 / "ml" / "rag-app") == 6  # each span once, however often re-exported

            # 7. the deferrable sensor waits in the triggerer; the triggerer is killed mid-wait and restarted; the
            # file that then lands is imported once
            run_id = s.trigger("obslake_import__deferred", "deferred_1")
            deadline = time.monotonic() + 120
            while _ti_state(s, "obslake_import__deferred", run_id, "wait_for_new_files") != "deferred":
                assert time.monotonic() < deadline, s.diagnostics(("scheduler", "triggerer"))
                s.check_alive()
                time.sleep(1)
            s.kill("triggerer")
            s.start_triggerer()
            _parquet(deferred / "late.parquet", 5000, 25)
            state = s.wait_for_run("obslake_import__deferred", run_id, timeout=300)
            assert state == "success", s.failure_report("obslake_import__deferred", run_id)
            rows, snapshots = _table_figures(env, ("dep", "deferred__production"))
            assert (rows, snapshots) == (25, 1)

            # 8. the obslake page in a real browser: the failed file's error as a person sees it
            _ui_in_a_browser(s.port)
    finally:
        drop_database(lake_db)
        drop_database(template)
