"""Build object stores from Airflow Connections (the only module of the core that knows Airflow).

Airflow and provider imports happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os

from obslake.storage import ObjectStore, open_store, parse_uri

DEFAULT_CONN = {"s3": "aws_default", "gs": "google_cloud_default"}


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
