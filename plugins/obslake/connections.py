"""Build object stores from Airflow Connections (the only module of the core that knows Airflow).

Airflow and provider imports happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os

from obslake.storage import ObjectStore, open_store, parse_uri

DEFAULT_CONN = {"s3": "aws_default", "gs": "google_cloud_default"}


def connection_uri(conn_id: str) -> str:
    """The URI of an Airflow connection (e.g. a Phoenix database), from Airflow's secrets."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).get_uri()


def store_for(uri: str, conn_id: str | None = None) -> tuple[ObjectStore, str]:
    """(store, prefix) for ``uri``, with credentials and endpoint from the Airflow connection.

    ``s3://``: ``S3Hook(aws_conn_id)`` (its ``endpoint_url``/``region_name`` extras are honoured).
    ``gs://``: ``GCSHook(gcp_conn_id)``; a connection extra ``api_endpoint`` (or the
    ``STORAGE_EMULATOR_HOST`` variable) selects an emulator with anonymous credentials.
    ``file://``: no connection.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return open_store(uri)
    conn_id = conn_id or DEFAULT_CONN[parsed.scheme]
    if parsed.scheme == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return open_store(uri, s3_client=S3Hook(aws_conn_id=conn_id).get_conn())
    from obslake.storage.gcs import make_gcs_client

    endpoint = None
    try:
        from airflow.sdk import BaseHook

        extra = BaseHook.get_connection(conn_id).extra_dejson
        endpoint = extra.get("api_endpoint")
    except Exception:  # no such connection: fall back to the environment / ADC
        extra = {}
    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:
        return open_store(uri, gcs_client=make_gcs_client(api_endpoint=endpoint, anonymous=True))
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return open_store(uri, gcs_client=GCSHook(gcp_conn_id=conn_id).get_conn())


def iceberg_storage_properties(storage: str, conn_id: str | None = None) -> dict[str, str]:
    """pyiceberg FileIO properties for writing ``storage`` with the Airflow connection's credentials.

    S3: the connection's (possibly assumed-role) credentials, region and ``endpoint_url``. GCS: an
    ``api_endpoint`` extra (emulator) or an OAuth2 token from ``GCSHook``. The values stay in the
    catalog's properties in this process; they are never written into table metadata.
    """
    from obslake.fabric.io import GCS_ENDPOINT, GCS_PROJECT, GCS_TOKEN

    parsed = parse_uri(storage)
    if parsed.scheme == "file":
        return {}
    conn_id = conn_id or DEFAULT_CONN[parsed.scheme]
    if parsed.scheme == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=conn_id)
        creds = hook.get_credentials()
        props = {"s3.region": hook.conn_region_name or "us-east-1", "s3.access-key-id": creds.access_key,
                 "s3.secret-access-key": creds.secret_key}
        if creds.token:
            props["s3.session-token"] = creds.token
        endpoint = hook.conn_config.get_service_endpoint_url("s3")
        if endpoint:
            props["s3.endpoint"] = endpoint
        return props
    try:
        from airflow.sdk import BaseHook

        endpoint = BaseHook.get_connection(conn_id).extra_dejson.get("api_endpoint")
    except Exception:
        endpoint = None
    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint:
        return {GCS_ENDPOINT: endpoint if "://" in endpoint else f"http://{endpoint}"}
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from google.auth.transport.requests import Request

    creds, project = GCSHook(gcp_conn_id=conn_id).get_credentials_and_project_id()
    creds.refresh(Request())
    return {GCS_TOKEN: creds.token, GCS_PROJECT: project or ""}
