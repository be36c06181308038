"""Catalogs whose FileIO writes a connector's storage (the customer's bucket).

* ``s3://``: pyiceberg's own PyArrow FileIO with ``s3.*`` properties (endpoint, region, credentials).
* ``gs://``: :class:`StoreFileIO`, a ``PyArrowFileIO`` whose filesystem for ``gs`` is a
  ``pyarrow.fs.PyFileSystem`` over obslake's :class:`~obslake.storage.gcs.GCSStore` — pyarrow's
  native GCS filesystem cannot be pointed at an emulator anonymously (it would look for Google
  credentials on the network), and this way tests and production run the same code path.
* ``file://``: local files.

Credentials are never written into table metadata: they live in the catalog's properties only.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
from pyiceberg.io.pyarrow import PyArrowFileIO

from obslake.lake.catalog import CATALOG_NAME, LakeSettings, retry_on_ddl_race

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

GCS_ENDPOINT = "obslake.gcs.endpoint"  # an emulator URL: anonymous access
GCS_TOKEN = "obslake.gcs.token"  # an OAuth2 access token (from the Airflow connection)
GCS_PROJECT = "obslake.gcs.project"


class _StoreHandler(pafs.FileSystemHandler):
    """pyarrow filesystem over a bucket store; paths are ``bucket/key``."""

    def __init__(self, client: Any):
        self.client = client

    def _store(self, path: str):
        from obslake.storage.gcs import GCSStore

        bucket, _, key = path.partition("/")
        return GCSStore(bucket, self.client), key

    def __eq__(self, other):  # noqa: D105
        return isinstance(other, _StoreHandler) and other.client is self.client

    def __ne__(self, other):  # noqa: D105
        return not self == other

    def get_type_name(self):  # noqa: D102
        return "obslake-gcs"

    def normalize_path(self, path):  # noqa: D102
        return path

    def get_file_info(self, paths):  # noqa: D102
        out = []
        for path in paths:
            store, key = self._store(path)
            try:
                info = store.head(key)
                out.append(pafs.FileInfo(path, pafs.FileType.File, size=info.size))
            except Exception:
                out.append(pafs.FileInfo(path, pafs.FileType.NotFound))
        return out

    def get_file_info_selector(self, selector):  # noqa: D102
        store, key = self._store(selector.base_dir.rstrip("/"))
        prefix = key.rstrip("/") + "/" if key else ""
        return [pafs.FileInfo(f"{store.bucket}/{o.key}", pafs.FileType.File, size=o.size) for o in store.list(prefix)]

    def create_dir(self, path, recursive):  # noqa: D102
        pass  # object stores have no directories

    def delete_dir(self, path):  # noqa: D102
        store, key = self._store(path)
        for o in list(store.list(key.rstrip("/") + "/")):
            store.delete(o.key)

    def delete_dir_contents(self, path, missing_dir_ok=False):  # noqa: D102
        self.delete_dir(path)

    def delete_root_dir_contents(self):  # noqa: D102
        raise OSError("refusing to delete a whole bucket")

    def delete_file(self, path):  # noqa: D102
        store, key = self._store(path)
        store.delete(key)

    def move(self, src, dest):  # noqa: D102
        self.copy_file(src, dest)
        self.delete_file(src)

    def copy_file(self, src, dest):  # noqa: D102
        s, skey = self._store(src)
        d, dkey = self._store(dest)
        with s.open(skey) as f:
            d.write(dkey, f.read())

    def open_input_stream(self, path):  # noqa: D102
        store, key = self._store(path)
        return pa.PythonFile(store.open(key), mode="r")

    def open_input_file(self, path):  # noqa: D102
        return self.open_input_stream(path)

    def open_output_stream(self, path, metadata):  # noqa: D102
        store, key = self._store(path)
        return pa.PythonFile(_UploadOnClose(store, key), mode="w")

    def open_append_stream(self, path, metadata):  # noqa: D102
        raise OSError("append is not supported on object storage")


class _UploadOnClose(io.RawIOBase):
    """Spool writes to a temporary file (bounded memory) and upload on close."""

    def __init__(self, store, key: str):
        import tempfile

        self.store, self.key = store, key
        self.buf = tempfile.SpooledTemporaryFile(max_size=64 * 1024**2)

    def writable(self):  # noqa: D102
        return True

    def write(self, b):  # noqa: D102
        return self.buf.write(b)

    def close(self):  # noqa: D102
        if not self.closed:
            self.buf.seek(0)
            self.store.write(self.key, self.buf.read())
            self.buf.close()
        super().close()


class StoreFileIO(PyArrowFileIO):
    """PyArrowFileIO whose ``gs://`` filesystem goes through obslake's GCS store (see module docstring)."""

    # PyArrowFileIO binds ``fs_by_scheme = lru_cache(self._initialize_fs)`` per instance: override the latter
    def _initialize_fs(self, scheme: str, netloc: str | None = None):  # noqa: D102
        if scheme in ("gs", "gcs"):
            return _gcs_fs(self.properties.get(GCS_ENDPOINT), self.properties.get(GCS_TOKEN),
                           self.properties.get(GCS_PROJECT))
        return super()._initialize_fs(scheme, netloc)


@lru_cache(maxsize=16)
def _gcs_fs(endpoint: str | None, token: str | None, project: str | None) -> pafs.PyFileSystem:
    from obslake.storage.gcs import make_gcs_client

    if endpoint:
        client = make_gcs_client(api_endpoint=endpoint, anonymous=True)
    elif token:
        from google.oauth2.credentials import Credentials

        client = make_gcs_client(credentials=Credentials(token), project=project or "obslake")
    else:
        client = make_gcs_client(project=project) if project else make_gcs_client()
    return pafs.PyFileSystem(_StoreHandler(client))


def storage_properties_from_env(storage: str) -> dict[str, str]:
    """FileIO properties for a storage URI from the environment (tests, CLI, demo).

    S3: ``OBSLAKE_S3_ENDPOINT_URL``, ``AWS_DEFAULT_REGION`` and the ``AWS_*`` credentials; GCS:
    ``STORAGE_EMULATOR_HOST`` (anonymous emulator) or Application Default Credentials.
    """
    if storage.startswith("s3://"):
        props = {"s3.region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if os.environ.get("OBSLAKE_S3_ENDPOINT_URL"):
            props["s3.endpoint"] = os.environ["OBSLAKE_S3_ENDPOINT_URL"]
        for env, key in (("AWS_ACCESS_KEY_ID", "s3.access-key-id"), ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
                         ("AWS_SESSION_TOKEN", "s3.session-token")):
            if os.environ.get(env):
                props[key] = os.environ[env]
        return props
    if storage.startswith("gs://"):
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        return {GCS_ENDPOINT: host if "://" in host else f"http://{host}"} if host else {}
    return {}


def fabric_catalog(storage_props: dict[str, str], settings: LakeSettings | None = None) -> "Catalog":
    """The obslake catalog (SQL/REST/Glue as configured) with a FileIO for the connector's storage."""
    settings = settings or LakeSettings.from_env()
    return _fabric_catalog(settings, tuple(sorted(storage_props.items())))


@lru_cache(maxsize=16)
def _fabric_catalog(settings: LakeSettings, storage_props: tuple) -> "Catalog":
    from pyiceberg.catalog import load_catalog

    props = {**settings.properties, **dict(storage_props), "py-io-impl": "obslake.fabric.io.StoreFileIO"}
    return retry_on_ddl_race(lambda: load_catalog(CATALOG_NAME, **props))

