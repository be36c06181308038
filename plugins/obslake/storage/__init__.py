"""Object storage: one protocol (:class:`ObjectStore`) over S3, GCS and local directories.

Use :func:`open_store` to get a store and a prefix from a URI::

    store, prefix = open_store("s3://bucket/models/ctr/v1/", s3_client=client)
    for info in store.list(prefix):
        with store.open(info.key, etag=info.etag) as f:
            ...
"""

from __future__ import annotations

import os
from typing import Any

from obslake.storage.base import ObjectInfo, ObjectReader, ObjectStore, StorageURI, parse_uri
from obslake.storage.credentials import StorageCredentials

__all__ = [
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "StorageCredentials",
    "StorageURI",
    "open_store",
    "parse_uri",
]


def open_store(uri: str, *, s3_client: Any = None, gcs_client: Any = None) -> tuple[ObjectStore, str]:
    """Return a store bound to the bucket (or root directory) of ``uri``, and the prefix within it.

    Args:
        uri: ``s3://bucket/prefix/``, ``gs://bucket/prefix/`` or ``file:///abs/path/``.
        s3_client: The boto3 S3 client to use. If ``None``, one is built from the environment
            (:meth:`~obslake.storage.credentials.StorageCredentials.from_env`: ``OBSLAKE_S3_ENDPOINT_URL``,
            ``AWS_DEFAULT_REGION`` (default ``us-east-1``), credentials from boto3's chain).
        gcs_client: The ``google.cloud.storage.Client`` to use. If ``None``, one is built from the
            environment: against ``STORAGE_EMULATOR_HOST`` (anonymously) when that is set, else Google
            with Application Default Credentials.

    Returns:
        ``(store, prefix)``. For ``file://`` URIs the root is the directory the URI names (when it
        ends in ``/`` or is an existing directory) and the prefix is ``""``; otherwise the root is
        its parent directory and the prefix the last path segment.

    Raises:
        UnsupportedURIError: the scheme is not s3, gs or file, or the bucket is missing.
        ConfigError: a ``file://`` URI is not absolute.
    """
    parsed = parse_uri(uri)
    if parsed.scheme == "s3":
        from obslake.storage.s3 import S3Store

        if s3_client is None:
            s3_client = StorageCredentials.from_env("s3").s3_client()
        return S3Store(parsed.bucket, s3_client), parsed.prefix
    if parsed.scheme == "gs":
        from obslake.storage.gcs import GCSStore

        if gcs_client is None:
            gcs_client = StorageCredentials.from_env("gs").gcs_client()
        return GCSStore(parsed.bucket, gcs_client), parsed.prefix

    from obslake.storage.local import LocalStore

    path = parsed.prefix
    if path.endswith("/") or os.path.isdir(path):
        return LocalStore(path), ""
    root, _, name = path.rpartition("/")
    return LocalStore(root or "/"), name
