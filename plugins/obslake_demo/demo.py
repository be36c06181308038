"""`obslake demo` (``./run demo``): a whole import on this machine, with nothing to configure.

1. Starts a real S3 endpoint on 127.0.0.1 (moto server) and creates a bucket tagged
   ``arize-ingestion-key``.
2. Uploads example click-through-rate inference files in nested date folders (Parquet, CSV, Avro,
   Arrow IPC) and one file with missing prediction ids.
3. Runs the import DAG of ``include/import_jobs/demo_ctr.yaml`` with ``dag.test()`` against an Airflow
   metadata DB, catalog and warehouse under ``.obslake-demo/``.
4. Changes one file and runs the DAG again: only that file is imported, its old rows are replaced.
5. Prints what landed: files and rows from the ledger, the Iceberg table and its partitions, a few rows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from obslake_demo.writers import write_table

KIT = Path(__file__).resolve().parent / "kit"
"""dags/ and include/: in a checkout, symlinks to the repository's own; in an installed wheel, their copies."""
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when running from a checkout
DAGS, INCLUDE = (KIT / "dags").resolve(), (KIT / "include").resolve()
BUCKET = "obslake-demo"
PREFIX = "click-thru-rate/production/v1/"
KEY_VARIABLE = "obslake_demo_ingestion_key"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inference_table(n: int, day: dt.date, seed: int, *, id_prefix: str = "") -> pa.Table:
    """``n`` realistic click-through-rate predictions on ``day`` (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    seconds = np.sort(rng.integers(0, 86_400, n))
    age = rng.integers(18, 80, n)
    position = rng.integers(1, 11, n)
    ctr_7d = np.round(rng.beta(2, 30, n), 5)
    category = rng.choice(["sports", "news", "shopping", "travel", "games"], n)
    logit = -2.5 + 8 * ctr_7d - 0.15 * position + rng.normal(0, 0.5, n)
    score = 1 / (1 + np.exp(-logit))
    clicked = rng.random(n) < score
    actual = np.where(clicked, "click", "no_click").astype(object)
    actual[rng.random(n) < 0.2] = None  # actuals not known yet for some rows
    return pa.table(
        {
            "prediction_id": [f"{id_prefix}{day:%Y%m%d}-{seed:03d}-{i:06d}" for i in range(n)],
            "prediction_ts": pa.array(
                [start + dt.timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", tz="UTC")
            ),
            "feature_age": pa.array(age, pa.int64()),
            "feature_ad_position": pa.array(position, pa.int64()),
            "feature_user_ctr_7d": pa.array(ctr_7d, pa.float64()),
            "feature_category": pa.array(category, pa.string()),
            "region": pa.array(rng.choice(["us-east", "us-west", "eu", "apac"], n), pa.string()),
            "device": pa.array(rng.choice(["ios", "android", "web"], n), pa.string()),
            "predicted_score": pa.array(np.round(score, 6), pa.float64()),
            "predicted_label": pa.array(np.where(score > 0.5, "click", "no_click"), pa.string()),
            "actual_label": pa.array(actual, pa.string()),
        }
    )


def demo_files(today: dt.date) -> dict[str, bytes]:
    """Key → bytes of the example files (nested folders, every format, one bad file)."""
    days = [today - dt.timedelta(days=d) for d in (3, 2, 1)]
    files: dict[str, tuple[pa.Table, str]] = {
        f"{days[0]:%Y/%m/%d}/part-000.parquet": (inference_table(4000, days[0], 1), "parquet"),
        f"{days[0]:%Y/%m/%d}/part-001.parquet": (inference_table(3500, days[0], 2), "parquet"),
        f"{days[1]:%Y/%m/%d}/predictions.csv": (inference_table(2500, days[1], 3), "csv"),
        f"{days[2]:%Y/%m/%d}/hourly/predictions.avro": (inference_table(2000, days[2], 4), "avro"),
        f"{days[2]:%Y/%m/%d}/hourly/predictions.arrow": (inference_table(1500, days[2], 5), "arrow"),
    }
    bad = inference_table(50, days[2], 6).to_pylist()
    for row in (7, 19):  # rows 7 and 19 have no prediction id
        bad[row - 1]["prediction_id"] = None
    files[f"{days[2]:%Y/%m/%d}/late/missing-ids.csv"] = (
        pa.Table.from_pylist(bad, inference_table(1, days[2], 6).schema),
        "csv",
    )
    out = {}
    for key, (table, fmt) in files.items():
        buf = io.BytesIO()
        write_table(table, fmt, buf)
        out[key] = buf.getvalue()
    out["README.txt"] = b"not an inference file: ignored by the importer\n"
    return out


def _say(msg: str) -> None:
    print(f"\n\033[1m== {msg}\033[0m", flush=True)


def run_demo(workdir: str | Path | None = None, *, keep: bool = False) -> int:
    """Run the whole demo; return a process exit code."""
    t0 = time.monotonic()
    # a checkout keeps its demo under the repository (.obslake-demo/, git-ignored); an installed wheel in the
    # current directory
    home = CHECKOUT if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "dags").is_dir() else Path.cwd()
    workdir = Path(workdir or home / ".obslake-demo").resolve()
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    (workdir / "airflow").mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    key = secrets.token_hex(16)
    env = {
        "OBSLAKE_HOME": str(workdir / "lake"),
        "OBSLAKE_INCLUDE_DIR": str(workdir / "include"),
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{workdir / 'airflow' / 'airflow.db'}",
        "AWS_ACCESS_KEY_ID": "demo-access-key",
        "AWS_SECRET_ACCESS_KEY": "demo-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "demo-access-key",
                "password": "demo-secret-key",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
        f"AIRFLOW_VAR_{KEY_VARIABLE.upper()}": key,
    }
    os.environ.update(env)
    # the shipped example is `status: paused` (it must not poll a bucket a deployment lacks): run an active copy
    for sub in ("import_jobs", "connectors"):
        (workdir / "include" / sub).mkdir(parents=True, exist_ok=True)
        for example in (INCLUDE / sub).glob("demo_*.yaml"):
            text = example.read_text().replace("status: paused", "status: active")
            (workdir / "include" / sub / example.name).write_text(text)
    os.environ["OBSLAKE_S3_ENDPOINT_URL"] = endpoint  # for `obslake fabric sync` and DuckDB below

    _say(f"starting a local S3 (moto server) on {endpoint}")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        return _demo_body(workdir, endpoint, key, t0)
    finally:
        server.stop()


def _demo_body(workdir: Path, endpoint: str, key: str, t0: float) -> int:
    from obslake.storage.s3 import S3Store, make_s3_client

    client = make_s3_client(endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": key}]})
    store = S3Store(BUCKET, client)
    today = dt.datetime.now(dt.UTC).date()
    files = demo_files(today)
    for k, data in files.items():
        store.write(PREFIX + k, data)
    print(f"bucket s3://{BUCKET} tagged arize-ingestion-key=<random key, also in Airflow Variable {KEY_VARIABLE}>")
    for k, data in sorted(files.items()):
        print(f"  uploaded s3://{BUCKET}/{PREFIX}{k}  ({len(data):,} bytes)")

    _say("creating the Airflow metadata DB (airflow db migrate)")
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    dag = _load_dag("obslake_import__demo_ctr")
    _say("run 1: dag.test() of obslake_import__demo_ctr (sensor → tag check → validate → import, mapped)")
    run1 = dag.test()
    print(f"run 1 finished: {getattr(run1, 'state', run1)}")
    _expect(workdir, succeeded=5, failed=1)

    changed = f"{(today - dt.timedelta(days=2)):%Y/%m/%d}/predictions.csv"
    buf = io.BytesIO()
    write_table(inference_table(2600, today - dt.timedelta(days=2), 3, id_prefix="v2-"), "csv", buf)
    store.write(PREFIX + changed, buf.getvalue())
    _say(f"run 2: {changed} was re-uploaded with new content (2,600 rows); only it is imported, replacing its rows")
    run2 = dag.test()
    print(f"run 2 finished: {getattr(run2, 'state', run2)}")
    _expect(workdir, succeeded=6, failed=1)

    _report(workdir)
    _fabric_demo(store, endpoint, today)
    _maintenance_demo(workdir)
    print(f"\ndemo finished in {time.monotonic() - t0:.1f}s; everything is under {workdir}")
    return 0


def trace_files(today: dt.date, seed: int = 7) -> tuple[pa.Table, pa.Table]:
    """Spans of 30 support-bot traces over the last days (chain → retriever + llm) and their annotations."""
    rng = np.random.default_rng(seed)
    spans: list[dict[str, object]] = []
    anns: list[dict[str, object]] = []
    start0 = dt.datetime.combine(today - dt.timedelta(days=3), dt.time(9), tzinfo=dt.UTC)
    for t in range(30):
        start = start0 + dt.timedelta(hours=int(t * 2.3), seconds=int(rng.integers(0, 3000)))
        tid, root = f"trace-{t:03d}", f"span-{t:03d}-0"
        q = ["reset my password", "refund an order", "change plan", "cancel subscription"][t % 4]
        for i, (name, kind, ms) in enumerate(
            (("support-chain", "CHAIN", 2400), ("retrieve-docs", "RETRIEVER", 300), ("answer", "LLM", 1800))
        ):
            attrs = {
                "openinference": {"span": {"kind": kind}},
                "input": {"value": q},
                "output": {"value": f"answer to {q!r}"},
                "session": {"id": f"session-{t % 7}"},
            }
            if kind == "LLM":
                p_tok, c_tok = int(rng.integers(200, 900)), int(rng.integers(50, 300))
                attrs["llm"] = {
                    "model_name": "gpt-4o-mini",
                    "token_count": {"prompt": p_tok, "completion": c_tok, "total": p_tok + c_tok},
                }
            spans.append(
                {
                    "context.span_id": f"span-{t:03d}-{i}",
                    "context.trace_id": tid,
                    "parent_id": None if i == 0 else root,
                    "name": name,
                    "span_kind": kind,
                    "start_time": start + dt.timedelta(milliseconds=100 * i),
                    "end_time": start + dt.timedelta(milliseconds=100 * i + ms),
                    "status_code": "OK",
                    "attributes": json.dumps(attrs),
                }
            )
        hallucinated = bool(rng.random() < 0.2)
        anns.append(
            {
                "span_id": f"span-{t:03d}-2",
                "name": "hallucination",
                "label": "hallucinated" if hallucinated else "factual",
                "score": float(hallucinated),
                "explanation": "compared with the retrieved documents",
                "annotator_kind": "LLM",
                "identifier": "",
                "updated_at": start + dt.timedelta(minutes=5),
            }
        )
        if t % 3 == 0:
            anns.append(
                {
                    "span_id": root,
                    "name": "user_feedback",
                    "label": "thumbs_up" if t % 2 else "thumbs_down",
                    "score": 1.0 if t % 2 else 0.0,
                    "explanation": None,
                    "annotator_kind": "HUMAN",
                    "identifier": f"user-{t % 5}",
                    "updated_at": start + dt.timedelta(minutes=20),
                }
            )
    return pa.Table.from_pylist(spans), pa.Table.from_pylist(anns)


def _fabric_demo(store, endpoint: str, today: dt.date) -> None:
    spans, anns = trace_files(today)
    for kind, table, fmt in (("spans", spans, "parquet"), ("annotations", anns, "csv")):
        buf = io.BytesIO()
        write_table(table, fmt, buf)
        store.write(f"traces/{kind}/2026-export/{kind}.{fmt}", buf.getvalue())
    _say("Data Fabric: tracing import jobs load 90 spans and their annotations into the lake's trace tables")
    for kind in ("spans", "annotations"):
        _load_dag(f"obslake_import__demo_trace_{kind}").test()
    fabric_dag = _load_dag("obslake_fabric__demo_traces")
    _say("Data Fabric run 1: obslake_fabric__demo_traces (tag check → permission probe → sync, Iceberg + Delta)")
    t = time.monotonic()
    fabric_dag.test()
    print(f"  run 1 took {time.monotonic() - t:.1f}s (the whole DAG run under dag.test(), Airflow overhead included)")
    _fabric_report("after run 1", endpoint, store)

    # three days later: a human re-labels an old answer, and a late child span arrives in an old trace
    buf = io.BytesIO()
    write_table(
        pa.Table.from_pylist(
            [
                {
                    "span_id": "span-000-2",
                    "name": "hallucination",
                    "label": "hallucinated",
                    "score": 1.0,
                    "explanation": "re-checked by a reviewer",
                    "annotator_kind": "LLM",
                    "identifier": "",
                    "updated_at": dt.datetime.now(dt.UTC),
                }
            ]
        ),
        "csv",
        buf,
    )
    store.write("traces/annotations/2026-export/correction.csv", buf.getvalue())
    import pyarrow.compute as pc

    late = spans.filter(pc.equal(spans["context.span_id"], "span-000-2"))
    late = late.set_column(late.schema.get_field_index("context.span_id"), "context.span_id", pa.array(["span-000-3"]))
    late = late.set_column(late.schema.get_field_index("name"), "name", pa.array(["late-tool-call"]))
    buf = io.BytesIO()
    write_table(late, "parquet", buf)
    store.write("traces/spans/2026-export/late.parquet", buf.getvalue())
    _say("Data Fabric run 2: an annotation changed on a 3-day-old span and a late child span arrived")
    for kind in ("spans", "annotations"):
        _load_dag(f"obslake_import__demo_trace_{kind}").test()
    t = time.monotonic()
    fabric_dag.test()
    print(f"  run 2 took {time.monotonic() - t:.1f}s")
    _fabric_report("after run 2", endpoint, store)


def _fabric_report(title: str, endpoint: str, store) -> None:
    import duckdb

    from obslake.config import load_connector

    conn = load_connector(Path(os.environ["OBSLAKE_INCLUDE_DIR"]) / "connectors" / "demo_traces.yaml")
    location = conn.project_location("support-bot")
    prefix = location.split("/", 3)[3]
    keys = sorted(o.key for o in store.list(prefix + "/"))
    data = [k for k in keys if "/data/" in k]
    print(
        f"  {title}: {location}/ holds {len(data)} Parquet file(s) in "
        f"{len({k.rsplit('/', 1)[0] for k in data})} partition folder(s), "
        f"{'a' if any('_delta_log/' in k for k in keys) else 'no'} _delta_log/, and "
        f"{', '.join(k.rsplit('/', 1)[1] for k in keys if k.endswith(('latest.metadata.json', 'version-hint.text')))}"
    )
    from obslake.fabric.ddl import ddl

    host = endpoint.split("://", 1)[1]
    # what `obslake fabric ddl demo_traces --engine duckdb` prints, with the demo's credentials filled in
    text = (
        ddl(
            "duckdb",
            table_uri=conn.storage,
            namespace=conn.namespace,
            project="support-bot",
            annotations=[("hallucination", "eval")],
        )
        .replace("<key_id>", "demo-access-key")
        .replace("<secret>", "demo-secret-key")
        .replace("<region>", "us-east-1")
        .replace("ENDPOINT '<endpoint>',", f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false,")
        .replace("<endpoint>", host)
    )
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(text)
    total, evals, tokens = con.execute(
        'SELECT count(*), count("eval.hallucination.label"), sum("attributes.llm.token_count.total") '
        "FROM support_bot_latest"
    ).fetchall()[0]
    versions = con.execute("SELECT count(*) FROM support_bot_annotations").fetchall()[0][0]
    print(
        f"  DuckDB, the view support_bot_latest of `obslake fabric ddl`: {total} spans, {evals} with "
        f"eval.hallucination, {tokens} LLM tokens; the annotations change log holds {versions} version(s)"
    )
    rows = con.execute(
        'SELECT span_id, name, date, hour, "eval.hallucination.label" AS hallucination, '
        '"eval.hallucination.explanation" AS why FROM support_bot_latest '
        "WHERE trace_id = 'trace-000' ORDER BY span_id"
    ).fetchall()
    for r in rows:
        print("   ", r)
    if "delta" in conn.formats:
        try:
            from deltalake import DeltaTable

            opts = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "demo-access-key",
                "AWS_SECRET_ACCESS_KEY": "demo-secret-key",
            }
            dtab = DeltaTable(location, storage_options=opts)
            notes = DeltaTable(conn.project_location("support-bot__annotations"), storage_options=opts)
            print(
                f"  deltalake reads the same files as Delta: version {dtab.version()}, "
                f"{dtab.to_pyarrow_table().num_rows} rows; annotations: {notes.to_pyarrow_table().num_rows} rows"
            )
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            print(f"  deltalake could not read the Delta log: {exc}")
    del duckdb


def _expect(workdir: Path, *, succeeded: int, failed: int) -> None:
    """Stop the demo loudly if the ledger does not show what the run should have done."""
    from obslake.lake.catalog import LakeSettings
    from obslake.lake.ledger import Ledger

    counts = Ledger(LakeSettings.from_env().state_uri).counts("demo_ctr")
    if counts["succeeded"] != succeeded or counts["failed"] != failed or counts["pending"]:
        raise SystemExit(
            f"demo: expected {succeeded} succeeded and {failed} failed file versions, the ledger has "
            f"{counts}; see the task logs above (AIRFLOW__LOGGING__LOGGING_LEVEL=INFO for more)"
        )


def _maintenance_demo(workdir: Path) -> None:
    """The daily lake upkeep, run once: the demo's model table keeps no snapshot history (its own table
    property), so the run shows expiry at work; the default keeps 7 days."""
    from obslake.config import load_import_job
    from obslake.lake.catalog import LakeSettings, load_catalog

    job = load_import_job(workdir / "include" / "import_jobs" / "demo_ctr.yaml")
    catalog = load_catalog(LakeSettings.from_env())
    table = catalog.load_table(job.table_identifier)
    before = len(table.snapshots())
    table.transaction().set_properties({"obslake.maintenance.snapshot-retention-hours": "0"}).commit_transaction()
    _say("lake upkeep: dag.test() of obslake_maintenance (expire snapshots, compact small files, remove orphans)")
    run = _load_dag("obslake_maintenance").test()
    after = catalog.load_table(job.table_identifier)
    print(f"maintenance run finished: {getattr(run, 'state', run)}")
    print(
        f"  {'.'.join(job.table_identifier)}: {before} snapshots -> {len(after.snapshots())} (this table keeps no "
        f"snapshot history: obslake.maintenance.snapshot-retention-hours=0), "
        f"{after.scan().to_arrow().num_rows:,} rows, metadata files kept: at most 11"
    )


def _load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.dags[dag_id]


def _report(workdir: Path) -> None:
    import pyarrow.compute as pc

    from obslake.config import load_import_job
    from obslake.lake.catalog import LakeSettings, load_catalog
    from obslake.lake.ledger import Ledger

    job = load_import_job(workdir / "include" / "import_jobs" / "demo_ctr.yaml")
    settings = LakeSettings.from_env()
    ledger = Ledger(settings.state_uri)
    _say("ledger (one row per file version)")
    for r in ledger.rows(job.name):
        err = (
            f"  error: {r['error'].splitlines()[1].strip() if r['error'] and len(r['error'].splitlines()) > 1 else r['error']}"
            if r["status"] == "failed"
            else ""
        )
        print(
            f"  {r['status']:<9} rows={r['rows'] if r['rows'] is not None else '-':<6} etag={r['etag'][:10]}  s3://{r['bucket']}/{r['key']}{err}"
        )
    table = load_catalog(settings).load_table(job.table_identifier)
    data = table.scan().to_arrow()
    _say(f"Iceberg table {'.'.join(job.table_identifier)}: {data.num_rows:,} rows, {len(table.snapshots())} snapshots")
    print(f"  metadata: {table.metadata_location}")
    per_file = data.group_by("_source_file").aggregate([("prediction_id", "count")]).sort_by("_source_file")
    for f, n in zip(per_file["_source_file"].to_pylist(), per_file["prediction_id_count"].to_pylist(), strict=True):
        print(f"  {n:>6,} rows from {f}")
    ids = data["prediction_id"]
    print(f"  distinct prediction ids: {pc.count_distinct(ids).as_py():,} (= rows: no duplicates)")
    parts = sorted({Path(t.file.file_path).parent.name for t in table.scan().plan_files()})
    print(f"  partitions (Hive-style folders under {table.location()}/data/): {', '.join(parts)}")
    _say("a few rows")
    cols = [
        "prediction_id",
        "prediction_timestamp",
        "prediction_label",
        "prediction_score",
        "actual_label",
        "feature_age",
        "region",
        "date",
        "_source_row",
    ]
    print(
        data.select(cols).slice(0, 5).to_pandas().to_string(index=False)
        if _has_pandas()
        else data.select(cols).slice(0, 5)
    )


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401

        return True
    except ImportError:
        return False
