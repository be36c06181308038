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


# -- the lake from an Airflow connection (type iceberg, the Apache Iceberg provider's) -------------------------
def _iceberg_connection(monkeypatch, conn_id: str = "iceberg_default", **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "iceberg", **fields}))


def test_the_lake_comes_from_the_iceberg_connection_mapped_as_the_providers_hook_maps_it(monkeypatch, tmp_path):
    from airflow.providers.apache.iceberg.hooks import iceberg as provider

    from obslake.hooks.obslake import lake_settings

    monkeypatch.setenv("OBSLAKE_CATALOG_URI", f"sqlite:///{tmp_path}/env.db")  # what must NOT be used
    for fields in (
        {"host": "https://catalog.example.com/api/", "login": "id", "password": "secret",
         "extra": {"warehouse": "s3://wh/", "s3.region": "eu-west-1"}},
        {"extra": {"type": "sql", "uri": f"sqlite:///{tmp_path}/c.db", "warehouse": f"file://{tmp_path}/wh"}},
        {"extra": {"type": "glue", "glue.region": "eu-west-1", "warehouse": "s3://wh/"}},
    ):
        _iceberg_connection(monkeypatch, **fields)
        seen: dict = {}
        monkeypatch.setattr(provider, "load_catalog", lambda name, **props: seen.update(props))
        provider.IcebergHook().catalog  # noqa: B018 - what the provider's hook hands pyiceberg
        settings, from_connection = lake_settings()
        assert from_connection
        ours = dict(settings.properties)
        ours.pop("init_catalog_tables", None)  # obslake's addition for a SQL catalog (it creates its tables)
        assert ours == seen, fields
    # a SQL catalog's database holds the ledger too, unless the connection names another
    assert lake_settings()[0].state_uri != f"sqlite:///{tmp_path}/c.db"  # (the glue connection is the last one)
    _iceberg_connection(monkeypatch, extra={"type": "sql", "uri": f"sqlite:///{tmp_path}/c.db"})
    assert lake_settings()[0].state_uri == f"sqlite:///{tmp_path}/c.db"
    _iceberg_connection(monkeypatch, extra={"type": "sql", "uri": f"sqlite:///{tmp_path}/c.db",
                                            "obslake.state-uri": f"sqlite:///{tmp_path}/s.db"})
    settings = lake_settings()[0]
    assert settings.state_uri == f"sqlite:///{tmp_path}/s.db" and "obslake.state-uri" not in settings.properties


def test_without_an_iceberg_connection_the_environment_is_the_default(monkeypatch, tmp_path):
    from obslake.hooks.obslake import lake_settings

    monkeypatch.delenv("AIRFLOW_CONN_ICEBERG_DEFAULT", raising=False)
    monkeypatch.setenv("OBSLAKE_CATALOG_URI", f"sqlite:///{tmp_path}/env.db")
    settings, from_connection = lake_settings()
    assert not from_connection and settings == LakeSettings.from_env()
    assert settings.properties["uri"] == f"sqlite:///{tmp_path}/env.db"


def test_a_lake_connection_imports_into_an_s3_warehouse_with_the_jobs_aws_connection(
        monkeypatch, moto_server, s3_client, s3_bucket, tmp_path):
    """The Iceberg connection names the catalog and an s3:// warehouse but no S3 credentials: the warehouse is
    written with the job's AWS connection (moto here), and the table's files land in that bucket."""
    import pyarrow as pa

    _aws_connection(monkeypatch, "job_s3", moto_server)
    _iceberg_connection(monkeypatch, extra={"type": "sql", "uri": f"sqlite:///{tmp_path}/lake.db",
                                            "warehouse": f"s3://{s3_bucket}/warehouse"})
    hook = ObslakeHook("job_s3")
    assert hook.settings.properties["warehouse"] == f"s3://{s3_bucket}/warehouse"
    assert hook.ledger.uri == f"sqlite:///{tmp_path}/lake.db"
    catalog = hook.catalog
    catalog.create_namespace("conn_ns")
    table = catalog.create_table(("conn_ns", "t"), schema=pa.schema([("x", pa.int64())]))
    table.append(pa.table({"x": [1, 2, 3]}))
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="warehouse/")["Contents"]]
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
    assert catalog.load_table(("conn_ns", "t")).scan().to_arrow()["x"].to_pylist() == [1, 2, 3]


def test_an_aws_connection_without_any_credentials_is_a_clear_config_error(monkeypatch, tmp_path):
    import pytest

    from obslake.exceptions import ConfigError

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata endpoint
    monkeypatch.setenv("AIRFLOW_CONN_BARE_AWS", json.dumps({"conn_type": "aws", "extra": {"region_name": "us-east-1"}}))
    with pytest.raises(ConfigError, match="gives no AWS credentials .* Fix:"):
        credentials_for("s3://some-bucket/x/", "bare_aws")
