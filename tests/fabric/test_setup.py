"""The writer-role set-up templates: rendered with the connector's real names, and enough for a real sync
and its upkeep.

The S3 policy is put to work on a moto server that enforces IAM (a separate process started with
``INITIAL_NO_AUTH_ACTION_COUNT``): a user holding only that policy runs the ownership check and a full
Data Fabric sync (Iceberg + Delta), an incremental one and the lake upkeep (expiry, orphan removal), read
back by DuckDB, and is refused outside the connector's prefix.
moto evaluates a policy's actions and resources, not its ``s3:prefix`` condition.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fabric_helpers import NOW, duckdb_connection, spans_table
from lake_fixtures import free_port, to_bytes
from obslake.cli import main
from obslake.config import Connector, ImportJob, load_connector
from obslake.exceptions import ConfigError
from obslake.fabric.setup import GCS_PERMISSIONS, S3_BUCKET_ACTIONS, S3_OBJECT_ACTIONS, writer_setup

ROOT = Path(__file__).resolve().parents[2]


def _connector(storage: str, **extra) -> Connector:
    return Connector.model_validate({"name": "prod_traces", "source": {"type": "lake"}, "projects": ["rag-app"],
                                     "storage": storage, "namespace": "ml-platform",
                                     "ingestion_key_variable": "prod_key", **extra})


def test_s3_policy_cli_and_terraform_name_the_connectors_bucket_and_prefix():
    files = {f.name: f.text for f in writer_setup(_connector("s3://acme-traces/exports/llm"), role="airflow-worker")}
    assert set(files) == {"s3-writer-policy.json", "s3-writer.sh", "s3-writer.tf"}
    policy = json.loads(files["s3-writer-policy.json"])
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert set(by_sid["ObslakeFabricObjects"]["Action"]) == set(S3_OBJECT_ACTIONS)
    assert by_sid["ObslakeFabricObjects"]["Resource"] == "arn:aws:s3:::acme-traces/exports/llm/ml-platform/*"
    assert by_sid["ObslakeFabricList"]["Condition"]["StringLike"]["s3:prefix"] == [
        "exports/llm/ml-platform", "exports/llm/ml-platform/*"]
    assert set(by_sid["ObslakeFabricBucket"]["Action"]) == set(S3_BUCKET_ACTIONS)
    every_action = {a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str)
                                                              else st["Action"])}
    # exactly what the issue lists (plus aborting a failed multipart upload), nothing broader
    assert every_action == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                            "s3:ListBucket", "s3:GetBucketLocation", "s3:GetBucketTagging"}
    cli = files["s3-writer.sh"]
    assert "aws s3api put-bucket-tagging --bucket acme-traces" in cli
    assert "Key=arize-ingestion-key,Value=$KEY" in cli and "airflow variables get prod_key" in cli
    assert "aws iam put-role-policy --role-name airflow-worker" in cli
    subprocess.run(["bash", "-n"], input=cli, text=True, check=True)  # the script parses
    tf = files["s3-writer.tf"]
    assert 'bucket = "acme-traces"' in tf and 'role   = "airflow-worker"' in tf
    assert '"arn:aws:s3:::acme-traces/exports/llm/ml-platform/*"' in tf and '"arize-ingestion-key" = var' in tf
    assert tf.count("{") == tf.count("}")


def test_gcs_role_commands_and_terraform():
    conn = _connector("gs://acme-traces/exports", tag_name="owner-key")
    files = {f.name: f.text for f in writer_setup(conn, gcp_project="acme-prod", service_account="af@x.iam")}
    assert set(files) == {"gcs-writer-role.yaml", "gcs-writer.sh", "gcs-writer.tf"}
    role = yaml.safe_load(files["gcs-writer-role.yaml"])
    assert role["includedPermissions"] == list(GCS_PERMISSIONS)
    assert set(GCS_PERMISSIONS) == {"storage.buckets.get", "storage.objects.get", "storage.objects.list",
                                    "storage.objects.create", "storage.objects.update", "storage.objects.delete"}
    cli = files["gcs-writer.sh"]
    assert "gcloud iam roles create obslakeFabricWriter --project=acme-prod" in cli
    assert f"--permissions={','.join(GCS_PERMISSIONS)}" in cli
    assert "add-iam-policy-binding gs://acme-traces" in cli and "--member=serviceAccount:af@x.iam" in cli
    assert "--role=projects/acme-prod/roles/obslakeFabricWriter" in cli
    assert 'gcloud storage buckets update gs://acme-traces --update-labels=owner-key="$KEY"' in cli
    subprocess.run(["bash", "-n"], input=cli, text=True, check=True)
    tf = files["gcs-writer.tf"]
    assert 'name     = "acme-traces"' in tf and '"owner-key" = var.ingestion_key' in tf
    assert 'member = "serviceAccount:af@x.iam"' in tf and tf.count("{") == tf.count("}")


def test_local_storage_needs_no_setup_unless_a_bucket_is_given(tmp_path):
    conn = _connector(f"file://{tmp_path}")
    with pytest.raises(ConfigError, match="--storage"):
        writer_setup(conn)
    assert [f.name for f in writer_setup(conn, storage="s3://b/p")][0] == "s3-writer-policy.json"


def test_include_holds_what_the_command_prints_for_the_example_connector(tmp_path, capsys):
    """include/setup/demo_traces/ is the command's output for include/connectors/demo_traces.yaml."""
    conn = load_connector(ROOT / "include" / "connectors" / "demo_traces.yaml")
    shipped = ROOT / "include" / "setup" / conn.name
    for storage in (None, "gs://obslake-demo/fabric"):
        for f in writer_setup(conn, storage=storage):
            assert (shipped / f.name).read_text() == f.text, f"{shipped / f.name} is stale: regenerate it"
    assert main(["--include", str(ROOT / "include"), "fabric", "setup", "demo_traces", "--role", "wr"]) == 0
    out = capsys.readouterr().out
    assert "aws iam put-role-policy --role-name wr" in out and "arn:aws:s3:::obslake-demo/fabric/ml-platform/*" in out
    assert main(["--include", str(ROOT / "include"), "fabric", "setup", "demo_traces", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s3-writer-policy.json", "s3-writer.sh", "s3-writer.tf"]


@pytest.fixture
def iam_moto():
    """A moto server in its own process (IAM enforcement is process-wide); enforce with :func:`_enforce_iam`."""
    import socket

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _enforce_iam(url: str) -> None:
    """From now on every request must be signed by a known user and allowed by its policies."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}), timeout=5)


@pytest.mark.slow
def test_a_user_with_only_the_s3_policy_can_check_ownership_and_sync_but_not_write_elsewhere(
        lake, s3_client, s3_bucket, iam_moto, monkeypatch):
    import boto3
    from botocore.exceptions import ClientError

    from obslake.fabric.export import PROP_CURSOR, PROP_SOURCE, PROP_WATERMARK, ProjectExporter
    from obslake.fabric.lake_source import LakeTraceSource
    from obslake.lake.catalog import load_catalog
    from obslake.lake.importer import import_file
    from obslake.lake.maintenance import Policy, maintain
    from obslake.ownership import verify_bucket_ownership
    from obslake.storage import open_store
    from obslake.storage.credentials import StorageCredentials
    from obslake.storage.s3 import make_s3_client

    # spans in the lake (the test's ordinary moto server)
    store, _ = open_store(f"s3://{s3_bucket}/", s3_client=s3_client)
    job = ImportJob.model_validate({"name": "trace_spans", "source": f"s3://{s3_bucket}/in/", "kind": "spans",
                                    "trace_project": "rag-app", "ingestion_key_variable": "k"})
    info = store.write("in/s.parquet", to_bytes(spans_table(
        [{"span_id": f"s{i}", "trace_id": f"t{i // 3}", "name": "llm", "start": NOW} for i in range(30)]), "parquet"))
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"

    # the customer's account: IAM enforced after the set-up calls
    conn = _connector("s3://customer-traces/exports")
    policy = next(f.text for f in writer_setup(conn) if f.name == "s3-writer-policy.json")
    admin = {"endpoint_url": iam_moto, "region_name": "us-east-1",
             "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    s3_admin, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
    s3_admin.create_bucket(Bucket="customer-traces")
    s3_admin.create_bucket(Bucket="someone-else")
    s3_admin.put_bucket_tagging(Bucket="customer-traces",
                                Tagging={"TagSet": [{"Key": "arize-ingestion-key", "Value": "secret-1"}]})
    iam.create_user(UserName="writer")  # a user: moto checks the policies of users and assumed roles
    iam.put_user_policy(UserName="writer", PolicyName="obslake-fabric", PolicyDocument=policy)
    key = iam.create_access_key(UserName="writer")["AccessKey"]
    _enforce_iam(iam_moto)
    with pytest.raises(ClientError):  # enforcement is on: unknown credentials are refused from here
        s3_admin.list_objects_v2(Bucket="customer-traces")

    monkeypatch.setenv("OBSLAKE_S3_ENDPOINT_URL", iam_moto)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):  # the dummy ones would be sent and refused
        monkeypatch.delenv(name, raising=False)
    writer = make_s3_client(endpoint_url=iam_moto, aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])
    customer, _ = open_store("s3://customer-traces/", s3_client=writer)
    verify_bucket_ownership(customer, "arize-ingestion-key", "secret-1", "Airflow Variable 'prod_key'")

    catalog = load_catalog(lake.settings, StorageCredentials.from_env(conn.storage))
    conn = _connector("s3://customer-traces/exports", formats=["iceberg", "delta"])
    exporter = ProjectExporter(conn, "rag-app", catalog)
    assert exporter.sync(LakeTraceSource(catalog, "traces")).rows == 30  # the full export
    info = store.write("in/late.parquet", to_bytes(spans_table(
        [{"span_id": "late", "trace_id": "t0", "name": "llm", "start": NOW}]), "parquet"))  # the lake's own server
    assert import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger).status == "imported"
    assert exporter.sync(LakeTraceSource(catalog, "traces")).rows == 4  # trace t0 again: the hour rewritten
    # the daily upkeep on the export: expiry, then orphan removal deletes the partition's earlier file
    report = maintain(catalog, exporter.identifier, Policy(retention=dt.timedelta(0), orphan_age=dt.timedelta(0)),
                      now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), after_commit=exporter.publish,
                      carry_properties=(PROP_CURSOR, PROP_WATERMARK, PROP_SOURCE))
    assert report.orphans_removed >= 1
    keys = [o["Key"] for o in writer.list_objects_v2(Bucket="customer-traces", Prefix="exports/ml-platform/")["Contents"]]
    assert any(k.endswith("metadata/latest.metadata.json") for k in keys)
    assert any("/_delta_log/" in k for k in keys)

    for call in (lambda: writer.put_object(Bucket="customer-traces", Key="exports/other/x", Body=b"x"),
                 lambda: writer.put_object(Bucket="someone-else", Key="exports/ml-platform/x", Body=b"x"),
                 lambda: writer.delete_object(Bucket="customer-traces", Key="exports/x")):
        with pytest.raises(ClientError, match="AccessDenied"):
            call()

    con = duckdb_connection()
    con.execute(f"""CREATE SECRET writer (TYPE S3, KEY_ID '{key["AccessKeyId"]}', SECRET '{key["SecretAccessKey"]}',
                    REGION 'us-east-1', ENDPOINT '{iam_moto.split("://")[1]}', URL_STYLE 'path', USE_SSL false)""")
    uri = "s3://customer-traces/exports/ml-platform/rag-app/metadata/latest.metadata.json"
    assert con.execute(f"SELECT count(*) FROM iceberg_scan('{uri}')").fetchone()[0] == 31
