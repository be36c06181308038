"""How to reach one bucket, said once and translated for each I/O library obslake uses.

:class:`StorageCredentials` is the one vocabulary: scheme, region, endpoint and credentials. It is
built from an Airflow connection (:func:`obslake.hooks.credentials_for`, the only place that reads
connections) or from the environment (:meth:`StorageCredentials.from_env`: CLI, demo, tests), and
translated here, and only here, into

* a boto3 / google-cloud-storage client (:meth:`~StorageCredentials.s3_client`, :meth:`~StorageCredentials.gcs_client`),
* pyiceberg FileIO properties (:meth:`~StorageCredentials.fileio_properties`), and back
  (:meth:`~StorageCredentials.from_fileio_properties`, for a table's own FileIO),
* delta-rs ``storage_options`` (:meth:`~StorageCredentials.delta_options`).

Delta commit safety on S3: delta-rs commits ``_delta_log/<version>.json`` with a conditional put
(``PutObject`` with ``If-None-Match: *``), which S3 has supported since 2024 and moto supports; so two
writers can never both write version N, and no ``AWS_S3_ALLOW_UNSAFE_RENAME`` and no DynamoDB lock is
needed. ``conditional_put`` is set explicitly so a change of the library default cannot turn it off.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from obslake.exceptions import ConfigError

# pyiceberg FileIO property names (pyiceberg.io) and obslake's own for its GCS FileIO (obslake.lake.fileio)
S3_ENDPOINT = "s3.endpoint"
S3_REGION = "s3.region"
S3_ACCESS_KEY_ID = "s3.access-key-id"
S3_SECRET_ACCESS_KEY = "s3.secret-access-key"
S3_SESSION_TOKEN = "s3.session-token"
GCS_ENDPOINT = "obslake.gcs.endpoint"  # an emulator URL: anonymous access
GCS_TOKEN = "obslake.gcs.token"  # an OAuth2 access token (from the Airflow connection)
GCS_PROJECT = "obslake.gcs.project"
DEFAULT_REGION = "us-east-1"


def emulator_url(endpoint: str) -> str:
    """``host:port`` or a full URL (``STORAGE_EMULATOR_HOST`` may be either) as a URL without a trailing '/'."""
    endpoint = endpoint.strip().rstrip("/")
    return endpoint if "://" in endpoint else f"http://{endpoint}"


@dataclasses.dataclass(frozen=True)
class StorageCredentials:
    """Where one bucket's storage answers and with which credentials.

    Attributes:
        scheme: ``s3``, ``gs`` or ``file``.
        endpoint: an S3-compatible endpoint (MinIO, moto) or a GCS emulator URL; None for AWS / Google.
            A GCS endpoint means anonymous access (emulators).
        region: the S3 region.
        access_key_id, secret_access_key, session_token: explicit S3 credentials; None leaves each
            library to its default chain (environment, profile, instance role).
        gcs_token: an OAuth2 access token for GCS; None uses Application Default Credentials.
        gcs_project: the GCS project (bucket listing and creation only).
    """

    scheme: str
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    gcs_token: str | None = dataclasses.field(default=None, repr=False)
    gcs_project: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("s3", "gs", "file"):
            raise ConfigError(f"storage scheme {self.scheme!r}: expected s3, gs or file")

    # -- sources -------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, uri_or_scheme: str, env: dict[str, str] | None = None) -> StorageCredentials:
        """From the environment (CLI, demo, tests): ``OBSLAKE_S3_ENDPOINT_URL``, ``AWS_DEFAULT_REGION`` and
        the ``AWS_*`` credentials for S3; ``STORAGE_EMULATOR_HOST`` and ``GOOGLE_CLOUD_PROJECT`` for GCS."""
        env = dict(os.environ if env is None else env)
        scheme = uri_or_scheme.split("://", 1)[0] if "://" in uri_or_scheme else uri_or_scheme
        if scheme == "s3":
            return cls(
                "s3",
                endpoint=env.get("OBSLAKE_S3_ENDPOINT_URL") or None,
                region=env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
                access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
                secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
                session_token=env.get("AWS_SESSION_TOKEN") or None,
            )
        if scheme in ("gs", "gcs"):
            host = env.get("STORAGE_EMULATOR_HOST")
            return cls(
                "gs", endpoint=emulator_url(host) if host else None, gcs_project=env.get("GOOGLE_CLOUD_PROJECT") or None
            )
        return cls("file")

    @classmethod
    def from_fileio_properties(cls, scheme: str, props: dict[str, str]) -> StorageCredentials:
        """The inverse of :meth:`fileio_properties` (a table's FileIO knows how it reached its storage)."""
        if scheme == "s3":
            return cls(
                "s3",
                endpoint=props.get(S3_ENDPOINT),
                region=props.get(S3_REGION) or DEFAULT_REGION,
                access_key_id=props.get(S3_ACCESS_KEY_ID),
                secret_access_key=props.get(S3_SECRET_ACCESS_KEY),
                session_token=props.get(S3_SESSION_TOKEN),
            )
        if scheme in ("gs", "gcs"):
            return cls(
                "gs",
                endpoint=props.get(GCS_ENDPOINT),
                gcs_token=props.get(GCS_TOKEN),
                gcs_project=props.get(GCS_PROJECT),
            )
        return cls("file")

    # -- translations ----------------------------------------------------------------------------------
    def fileio_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (kept in the catalog's properties, never written into table metadata)."""
        if self.scheme == "s3":
            props = {S3_REGION: self.region}
            for key, value in (
                (S3_ENDPOINT, self.endpoint),
                (S3_ACCESS_KEY_ID, self.access_key_id),
                (S3_SECRET_ACCESS_KEY, self.secret_access_key),
                (S3_SESSION_TOKEN, self.session_token),
            ):
                if value:
                    props[key] = value
            return props
        if self.scheme == "gs":
            if self.endpoint:
                return {GCS_ENDPOINT: self.endpoint}
            props = {GCS_TOKEN: self.gcs_token} if self.gcs_token else {}
            if self.gcs_project:
                props[GCS_PROJECT] = self.gcs_project
            return props
        return {}

    def delta_options(self) -> dict[str, str] | None:
        """delta-rs ``storage_options`` (None for local files and GCS, which need none from us here).

        S3 commits use conditional puts (see the module docstring); an ``http://`` endpoint sets
        ``AWS_ALLOW_HTTP``.
        """
        if self.scheme != "s3":
            return None
        options = {"AWS_REGION": self.region, "conditional_put": "etag"}
        if self.endpoint:
            options["AWS_ENDPOINT_URL"] = self.endpoint
            if self.endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        if self.access_key_id:
            options["AWS_ACCESS_KEY_ID"] = self.access_key_id
            options["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key or ""
        if self.session_token:
            options["AWS_SESSION_TOKEN"] = self.session_token
        return options

    def s3_client(self) -> Any:
        """A boto3 S3 client with obslake's retry and timeout policy (:func:`obslake.storage.s3.make_s3_client`)."""
        from obslake.storage.s3 import make_s3_client

        return make_s3_client(
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
        )

    def gcs_client(self) -> Any:
        """A ``google.cloud.storage.Client``: anonymous against an emulator endpoint, else a token or ADC."""
        from obslake.storage.gcs import make_gcs_client

        if self.endpoint:
            return make_gcs_client(api_endpoint=self.endpoint, anonymous=True)
        project = self.gcs_project or "obslake-local"
        if self.gcs_token:
            from google.oauth2.credentials import Credentials

            return make_gcs_client(credentials=Credentials(self.gcs_token), project=project)
        return make_gcs_client(project=project)
