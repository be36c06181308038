"""ObslakeHook: what obslake's operators, sensors and triggers get from Airflow, in one place.

The only code of the package that reads Airflow Connections:

* :func:`credentials_for` turns a bucket's connection into
  :class:`~obslake.storage.credentials.StorageCredentials`, which translates them once per I/O library
  (pyiceberg FileIO properties, delta-rs options);
* :func:`store_for` gives the :class:`~obslake.storage.ObjectStore` of a URI, with every S3/GCS call
  through the provider's hook client (``S3Hook``, ``GCSHook``), so assumed roles and refreshed tokens
  work as in any Airflow task;
* :class:`ObslakeHook` bundles them with the lake: settings, catalog, ledger.

Provider imports happen inside the functions, so importing this module costs no more than ``airflow.sdk``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from obslake.storage import ObjectStore, open_store, parse_uri
from obslake.storage.credentials import StorageCredentials, emulator_url

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from obslake.config import ImportJob
    from obslake.lake.catalog import LakeSettings
    from obslake.lake.ledger import Ledger
    from obslake.storage.notifications import NotificationQueue

DEFAULT_CONN = {"s3": "aws_default", "gs": "google_cloud_default"}


def connection_uri(conn_id: str) -> str:
    """The URI of an Airflow connection (e.g. a Phoenix database), from Airflow's secrets."""
    return BaseHook.get_connection(conn_id).get_uri()


def _gcs_emulator(conn_id: str) -> str | None:
    """The ``api_endpoint`` extra of a GCS connection, or ``STORAGE_EMULATOR_HOST`` (an emulator: anonymous)."""
    endpoint = None
    try:
        endpoint = BaseHook.get_connection(conn_id).extra_dejson.get("api_endpoint")
    except Exception:  # noqa: BLE001 - no such connection: fall back to the environment / ADC
        endpoint = None
    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
    return emulator_url(endpoint) if endpoint else None


def credentials_for(uri: str, conn_id: str | None = None) -> StorageCredentials:
    """How to reach ``uri``'s bucket with the Airflow connection ``conn_id`` (default per scheme).

    S3: ``S3Hook`` credentials (possibly of an assumed role), region and ``endpoint_url``. GCS: an
    ``api_endpoint`` extra (emulator) or an OAuth2 token and project from ``GCSHook``. ``file://``: none.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return StorageCredentials("file")
    conn_id = conn_id or DEFAULT_CONN[parsed.scheme]
    if parsed.scheme == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=conn_id)
        try:
            creds = hook.get_credentials()
        except AttributeError as exc:  # boto3 found no credentials at all (the provider calls None.get_frozen_...)
            from obslake.exceptions import ConfigError

            raise ConfigError(
                f"the Airflow connection {conn_id!r} gives no AWS credentials for {uri} (no keys in it, no role, "
                "no environment or instance credentials). Fix: put the keys (login/password) or a role_arn in that "
                "connection"
            ) from exc
        return StorageCredentials(
            "s3",
            endpoint=hook.conn_config.get_service_endpoint_url("s3") or None,
            region=hook.conn_region_name or "us-east-1",
            access_key_id=creds.access_key,
            secret_access_key=creds.secret_key,
            session_token=creds.token or None,
        )
    endpoint = _gcs_emulator(conn_id)
    if endpoint:
        return StorageCredentials("gs", endpoint=endpoint)
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from google.auth.transport.requests import Request

    gcreds, project = GCSHook(gcp_conn_id=conn_id).get_credentials_and_project_id()
    gcreds.refresh(Request())
    return StorageCredentials("gs", gcs_token=gcreds.token, gcs_project=project or None)


def store_for(uri: str, conn_id: str | None = None) -> tuple[ObjectStore, str]:
    """(store, prefix) for ``uri``, its requests made by the provider hook's client.

    ``s3://``: ``S3Hook(aws_conn_id)`` (its ``endpoint_url``/``region_name`` extras are honoured).
    ``gs://``: ``GCSHook(gcp_conn_id)``; a connection extra ``api_endpoint`` (or the
    ``STORAGE_EMULATOR_HOST`` variable) selects an emulator with anonymous credentials.
    ``file://``: no connection.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return open_store(uri)
    conn_id = conn_id or DEFAULT_CONN[parsed.scheme]
    client: Any
    if parsed.scheme == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return open_store(uri, s3_client=S3Hook(aws_conn_id=conn_id).get_conn())
    endpoint = _gcs_emulator(conn_id)
    if endpoint:
        client = StorageCredentials("gs", endpoint=endpoint).gcs_client()
    else:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        client = GCSHook(gcp_conn_id=conn_id).get_conn()
    return open_store(uri, gcs_client=client)


def notification_queue(job: ImportJob) -> NotificationQueue | None:
    """Where an event-driven job (``notifications``) reads: its SQS queue through ``SqsHook``'s client (the
    connection's credentials, region and ``endpoint_url``), or its Pub/Sub subscription through ``PubSubHook``'s
    subscriber client (the connection's credentials; with ``PUBSUB_EMULATOR_HOST`` set, the emulator, without
    credentials); None for a job that only lists."""
    if job.notifications is None:
        return None
    from obslake.storage.notifications import PubsubSubscription, SqsQueue

    # the source's scheme fits the channel (ImportJob checks it): an s3:// job's queue, a gs:// job's subscription
    conn_id = job.notifications.conn_id or job.conn_id or DEFAULT_CONN[parse_uri(job.source).scheme]
    if job.notifications.pubsub_subscription is not None:
        if os.environ.get("PUBSUB_EMULATOR_HOST"):
            from google.cloud import pubsub_v1

            client = pubsub_v1.SubscriberClient()
        else:
            from airflow.providers.google.cloud.hooks.pubsub import PubSubHook

            client = PubSubHook(gcp_conn_id=conn_id).subscriber_client
        return PubsubSubscription(job.notifications.pubsub_subscription, client)
    from airflow.providers.amazon.aws.hooks.sqs import SqsHook

    return SqsQueue(job.notifications.channel, SqsHook(aws_conn_id=conn_id).get_conn())


OWNERSHIP_TTL_SECONDS = 300.0
"""How long a proven bucket ownership stands for the sensor and trigger of a process (the ownership task of each
run always checks afresh): polling every few seconds then reads the bucket's tags once per five minutes."""
_proven: dict[tuple[str, str, str], float] = {}
_proven_lock = threading.Lock()


def verify_ownership(
    store: ObjectStore, key_variable: str, tag_name: str, *, ttl: float = OWNERSHIP_TTL_SECONDS
) -> None:
    """Raise unless ``store``'s bucket carries ``tag_name`` = the key in the Airflow Variable ``key_variable``.

    A verdict of success is kept ``ttl`` seconds per (bucket, tag, key); a failure is never kept. The key's
    value never appears in a message (:func:`obslake.ownership.verify_bucket_ownership`).

    Raises:
        ConfigError: the Variable is not set. BucketOwnershipError: the tag is missing or different.
    """
    import hashlib

    from airflow.sdk import Variable

    from obslake.exceptions import ConfigError
    from obslake.ownership import verify_bucket_ownership

    key = Variable.get(key_variable, default=None)
    if not key:
        raise ConfigError(
            f"Airflow Variable {key_variable!r} (the job's ingestion key) is not set. Fix: "
            f"airflow variables set {key_variable} <your-ingestion-key>  (or store it in your secrets backend)"
        )
    proof = (store.uri(""), tag_name, hashlib.sha256(key.encode()).hexdigest())
    now = time.monotonic()
    with _proven_lock:
        if ttl > 0 and now - _proven.get(proof, -math.inf) < ttl:
            return
    verify_bucket_ownership(store, tag_name, key, f"Airflow Variable {key_variable!r}")
    with _proven_lock:
        _proven[proof] = now


LAKE_CONN_ID = "iceberg_default"
"""The Airflow connection (type ``iceberg``, the Apache Iceberg provider's) of the lake, when it exists."""


def lake_settings(conn_id: str | None = None) -> tuple[LakeSettings, bool]:
    """(where the lake is, whether it came from a connection).

    The Airflow connection ``conn_id`` (default ``OBSLAKE_LAKE_CONN_ID``, else ``iceberg_default``), read through
    the Iceberg provider's ``IcebergHook`` and mapped to pyiceberg catalog properties as that hook maps it (its
    extras, ``host`` → ``uri``, ``type`` default ``rest``, ``login:password`` → a REST ``credential``), plus
    the extra ``obslake.state-uri`` for the ledger; without such a connection, the ``OBSLAKE_*`` environment
    (the embedded default of the demo and the tests).
    """
    from obslake.lake.catalog import LakeSettings

    conn_id = conn_id or os.environ.get("OBSLAKE_LAKE_CONN_ID") or LAKE_CONN_ID
    try:
        from airflow.providers.apache.iceberg.hooks.iceberg import IcebergHook

        conn = IcebergHook(iceberg_conn_id=conn_id).get_connection(conn_id)
    except Exception:  # noqa: BLE001 - no such connection (AirflowNotFoundException): the environment
        return LakeSettings.from_env(), False
    props: dict[str, Any] = dict(conn.extra_dejson or {})
    if conn.host:
        props["uri"] = conn.host.rstrip("/")
    props.setdefault("type", "rest")
    if props["type"] == "rest" and conn.login and conn.password:
        props["credential"] = f"{conn.login}:{conn.password}"
    return LakeSettings.from_properties(props), True


class ObslakeHook(BaseHook):
    """The lake and one bucket, as the Airflow wrappers need them (one per task; cheap to build).

    Args:
        conn_id: the Airflow connection of the bucket (``aws_default`` / ``google_cloud_default`` by scheme
            when None).

    The lake's settings come from the Airflow connection ``iceberg_default`` when it exists, else from the
    ``OBSLAKE_*`` environment (:func:`lake_settings`); catalog and ledger are built on first use and cached by
    the process, as pyiceberg's catalogs are. A warehouse on ``s3://`` or ``gs://`` whose connection names no
    storage credentials (no ``s3.*`` / ``gcs.*`` extra) is written with this hook's bucket connection when that
    is of the warehouse's cloud, else with the cloud's default connection.
    """

    conn_name_attr = "conn_id"
    hook_name = "obslake"

    def __init__(self, conn_id: str | None = None):
        super().__init__()
        self.conn_id = conn_id

    @cached_property
    def _lake(self) -> tuple[LakeSettings, bool]:
        return lake_settings()

    @cached_property
    def settings(self) -> LakeSettings:
        """Where the catalog, the warehouse and the ledger are."""
        return self._lake[0]

    def _warehouse_credentials(self) -> StorageCredentials | None:
        """The warehouse bucket's credentials from an Airflow connection (see the class docstring), or None."""
        settings, from_connection = self._lake
        warehouse = settings.warehouse or ""
        scheme = warehouse.split("://", 1)[0]
        if not from_connection or scheme not in DEFAULT_CONN:
            return None
        if any(k.startswith(("s3.", "gcs.", "client.")) for k in settings.properties):
            return None  # the connection names them itself
        conn_id = self.conn_id
        if conn_id is not None:
            kind = BaseHook.get_connection(conn_id).conn_type or ""
            if ("aws" in kind) != (scheme == "s3"):
                conn_id = None  # the bucket's connection is of the other cloud
        return credentials_for(warehouse, conn_id)

    @cached_property
    def catalog(self) -> Catalog:
        """The lake's Iceberg catalog (model tables, trace tables)."""
        from obslake.lake.catalog import load_catalog

        return load_catalog(self.settings, self._warehouse_credentials())

    @cached_property
    def ledger(self) -> Ledger:
        """The import ledger."""
        from obslake.lake.ledger import Ledger

        return Ledger(self.settings.state_uri)

    def store(self, uri: str) -> tuple[ObjectStore, str]:
        """(store, prefix) of ``uri`` through this hook's connection (:func:`store_for`)."""
        return store_for(uri, self.conn_id)

    def export_catalog(self, uri: str) -> Catalog:
        """The lake's catalog with a FileIO that writes ``uri``'s bucket with this hook's connection."""
        from obslake.lake.catalog import load_catalog

        return load_catalog(self.settings, credentials_for(uri, self.conn_id))
