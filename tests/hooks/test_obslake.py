"""ObslakeHook and the connection translators: an Airflow connection → stores, FileIO properties, Delta options."""

from __future__ import annotations

import json

from lake_fixtures import aws_connection
from obslake.hooks import ObslakeHook, credentials_for, store_for
from obslake.lake.catalog import LakeSettings
from obslake.storage.credentials import StorageCredentials


def _aws_connection(monkeypatch, conn_id: str, endpoint: str) -> None:
    aws_connection(monkeypatch, endpoint, conn_id, region="eu-central-1")


def test_s3_connection_gives_one_set_of_credentials_for_every_library(monkeypatch, moto_server, s3_client, s3_bucket):
    _aws_connection(monkeypatch, "lake_s3", moto_server)
    creds = credentials_for(f"s3://{s3_bucket}/p/", "lake_s3")
    assert creds == StorageCredentials("s3", endpoint=moto_server, region="eu-central-1", access_key_id="testing",
                                       secret_access_key="testing")
    assert creds.fileio_properties()["s3.endpoint"] == moto_server
    assert creds.delta_options()["conditional_put"] == "etag"
    # the store goes through S3Hook's client: it reads what boto3 wrote
    s3_client.put_object(Bucket=s3_bucket, Key="p/a.csv", Body=b"x\n1\n")
    store, prefix = store_for(f"s3://{s3_bucket}/p/", "lake_s3")
    assert prefix == "p/" and [o.key for o in store.list(prefix)] == ["p/a.csv"]


def test_gcs_connection_with_an_emulator_endpoint(monkeypatch, gcs_server, gcs_client, gcs_bucket):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_GCS", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"api_endpoint": gcs_server}}))
    assert credentials_for(f"gs://{gcs_bucket}/x/", "lake_gcs") == StorageCredentials("gs", endpoint=gcs_server)
    gcs_client.bucket(gcs_bucket).blob("x/a.csv").upload_from_string(b"x\n1\n")
    store, prefix = store_for(f"gs://{gcs_bucket}/x/", "lake_gcs")
    assert [o.key for o in store.list(prefix)] == ["x/a.csv"]


def test_file_uris_need_no_connection(tmp_path):
    assert credentials_for(f"file://{tmp_path}/") == StorageCredentials("file")
    store, prefix = store_for(f"file://{tmp_path}/")
    assert (store.scheme, prefix) == ("file", "")


def test_hook_gives_the_lake_and_an_export_catalog_for_a_bucket(lake, monkeypatch, moto_server, s3_bucket):
    _aws_connection(monkeypatch, "lake_s3", moto_server)
    hook = ObslakeHook("lake_s3")
    assert hook.settings == LakeSettings.from_env() == lake.settings
    assert hook.catalog is hook.catalog  # built once per hook (and cached per process)
    assert hook.ledger.uri == lake.settings.state_uri
    export = hook.export_catalog(f"s3://{s3_bucket}/fabric")
    assert export is not hook.catalog
    assert export.properties["s3.endpoint"] == moto_server
    assert export.properties["py-io-impl"] == "obslake.lake.iceberg.StoreFileIO"
    assert "s3.endpoint" not in hook.catalog.properties  # the lake's own catalog keeps its own FileIO
