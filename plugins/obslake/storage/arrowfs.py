"""A pyarrow filesystem over obslake's GCS store, for pyiceberg's FileIO (:class:`obslake.lake.iceberg.StoreFileIO`).

pyarrow's native GCS filesystem cannot be pointed at an emulator anonymously (it would look for
Google credentials on the network); going through :class:`~obslake.storage.gcs.GCSStore` instead,
tests and production run the same code path. Only a missing object reads as "not found"; any other
storage error (access denied, GCS unavailable) propagates as the store raised it.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from obslake.storage.credentials import StorageCredentials


def _is_not_found(exc: BaseException) -> bool:
    """True if a store error was caused by a missing object (GCS 404), not by access or availability."""
    from google.api_core.exceptions import NotFound

    return isinstance(exc, NotFound) or isinstance(exc.__cause__, NotFound)


class _StoreHandler(pafs.FileSystemHandler):
    """pyarrow filesystem over a bucket store; paths are ``bucket/key``."""

    def __init__(self, client: Any):
        self.client = client

    def _store(self, path: str):
        from obslake.storage.gcs import GCSStore

        bucket, _, key = path.partition("/")
        return GCSStore(bucket, self.client), key

    def __eq__(self, other):
        return isinstance(other, _StoreHandler) and other.client is self.client

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "obslake-gcs"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        out = []
        for path in paths:
            store, key = self._store(path)
            try:
                info = store.head(key)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise  # access denied, GCS unavailable: never "not found" (that would recreate or skip files)
                out.append(pafs.FileInfo(path, pafs.FileType.NotFound))
            else:
                out.append(pafs.FileInfo(path, pafs.FileType.File, size=info.size))
        return out

    def get_file_info_selector(self, selector):
        store, key = self._store(selector.base_dir.rstrip("/"))
        prefix = key.rstrip("/") + "/" if key else ""
        return [
            pafs.FileInfo(f"{store.bucket}/{o.key}", pafs.FileType.File, size=o.size, mtime=o.mtime)
            for o in store.list(prefix)
        ]

    def create_dir(self, path, recursive):
        pass  # object stores have no directories

    def delete_dir(self, path):
        store, key = self._store(path)
        for o in list(store.list(key.rstrip("/") + "/")):
            store.delete(o.key)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.delete_dir(path)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete a whole bucket")

    def delete_file(self, path):
        store, key = self._store(path)
        store.delete(key)

    def move(self, src, dest):
        self.copy_file(src, dest)
        self.delete_file(src)

    def copy_file(self, src, dest):
        s, skey = self._store(src)
        d, dkey = self._store(dest)
        with s.open(skey) as f:
            d.write(dkey, f.read())

    def open_input_stream(self, path):
        store, key = self._store(path)
        return pa.PythonFile(store.open(key), mode="r")

    def open_input_file(self, path):
        return self.open_input_stream(path)

    def open_output_stream(self, path, metadata):
        store, key = self._store(path)
        return pa.PythonFile(_UploadOnClose(store, key), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError("append is not supported on object storage")


class _UploadOnClose(io.RawIOBase):
    """Spool writes to a temporary file (bounded memory) and upload on close."""

    def __init__(self, store, key: str):
        import tempfile

        self.store, self.key = store, key
        self.buf = tempfile.SpooledTemporaryFile(max_size=64 * 1024**2)  # noqa: SIM115 - closed by close()

    def writable(self):
        return True

    def write(self, b):
        return self.buf.write(b)

    def close(self):
        if not self.closed:
            self.buf.seek(0)
            self.store.write(self.key, self.buf.read())
            self.buf.close()
        super().close()


@lru_cache(maxsize=16)
def gcs_filesystem(credentials: StorageCredentials) -> pafs.PyFileSystem:
    """A pyarrow filesystem (paths ``bucket/key``) over GCS reached with ``credentials`` (cached per credentials)."""
    return pafs.PyFileSystem(_StoreHandler(credentials.gcs_client()))
