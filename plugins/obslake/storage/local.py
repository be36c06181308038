"""Local-directory backend of :class:`~obslake.storage.base.ObjectStore` (``file:///abs/path/``).

Used by the demo, tests and single-machine setups. The root directory plays the bucket (``bucket``
is ``""``); keys are ``/``-separated paths relative to it. The bucket "tags" live in
``<root>/.obslake-tags.json``.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import stat
import tempfile
from typing import Iterator

from obslake.exceptions import (
    ConfigError,
    ObjectChangedError,
    ObslakeError,
    StorageAccessError,
    StorageUnavailableError,
)
from obslake.storage.base import DEFAULT_BUFFER_SIZE, ObjectInfo, ObjectReader

TAGS_FILE = ".obslake-tags.json"
"""Name of the tags file in the root (never listed)."""

TEMP_PREFIX = ".obslake-tmp-"
"""Prefix of the temporary files of atomic writes (never listed)."""


def local_etag(st: os.stat_result) -> str:
    """The version identifier of a local file: ``"<st_mtime_ns>-<st_size>"``."""
    return f"{st.st_mtime_ns}-{st.st_size}"


def map_os_error(exc: OSError, uri: str, *, etag: str | None = None) -> ObslakeError:
    """Translate an :class:`OSError` into an :mod:`obslake.exceptions` error.

    Args:
        exc: The error.
        uri: The ``file://`` URI concerned.
        etag: The version being read, if pinned (then a missing file means it changed).
    """
    if isinstance(exc, FileNotFoundError):
        if etag is not None:
            return ObjectChangedError(f"{uri}: version {etag!r} is gone (the file was deleted)")
        return StorageAccessError(f"{uri}: no such file or directory")
    if isinstance(exc, PermissionError):
        return StorageAccessError(f"{uri}: permission denied; the worker's user needs read access ({exc})")
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)) or exc.errno in (
        errno.ENAMETOOLONG,
        errno.ELOOP,
    ):
        return StorageAccessError(f"{uri}: not a regular file ({exc})")
    return StorageUnavailableError(f"{uri}: local I/O error ({exc}); retry later")


class LocalStore:
    """An :class:`~obslake.storage.base.ObjectStore` over a local directory.

    Args:
        root: Absolute path of the root directory (the "bucket").
        buffer_size: Read buffer of the files :meth:`open` returns.

    Note:
        A missing file or root maps to :class:`~obslake.exceptions.StorageAccessError`, a permission
        error too; other I/O errors to :class:`~obslake.exceptions.StorageUnavailableError`. Writes
        are atomic (temporary file, ``fsync``, ``os.replace``): readers see the old or the new file,
        never a partial one.
    """

    scheme = "file"
    bucket = ""

    def __init__(self, root: str, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        if not os.path.isabs(root):
            raise ConfigError(f"local storage root {root!r} must be an absolute path (file:///abs/path/)")
        self.root = os.path.normpath(root)
        self.buffer_size = buffer_size

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def uri(self, key: str = "") -> str:
        """The full URI of ``key`` (``file:///root/key``)."""
        return f"file://{self.root.rstrip('/')}/{key}"

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageAccessError(
                f"{self.uri(key)}: key {key!r} is not a relative path inside the root {self.root}"
            )
        return os.path.join(self.root, *parts)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            bucket="",
            key=key,
            etag=local_etag(st),
            size=st.st_size,
            mtime=dt.datetime.fromtimestamp(st.st_mtime_ns // 1_000_000_000, tz=dt.timezone.utc)
            + dt.timedelta(microseconds=(st.st_mtime_ns % 1_000_000_000) // 1000),
        )

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageAccessError(f"{self.uri()}: root directory does not exist (or is not a directory)")

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every file under ``prefix`` recursively, in key order.

        The directory tree is walked once (from the deepest directory the prefix names), keys are
        sorted, then each file is ``stat``-ed as it is yielded. ``page_size`` is accepted for the
        protocol and ignored. The tags file and temporary files of writes in progress are skipped.

        Raises:
            StorageAccessError: the root does not exist or cannot be read.
        """
        del page_size
        self._check_root()
        base = prefix.rpartition("/")[0]
        try:
            start = self._path(base) if base else self.root
        except StorageAccessError:
            return  # no key can live under a prefix like "a//" or "../"
        if not os.path.isdir(start):
            return

        def on_error(exc: OSError) -> None:
            raise map_os_error(exc, self.uri(prefix)) from exc

        found: list[tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=on_error):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in filenames:
                if name.startswith(TEMP_PREFIX) or (not rel_dir and name == TAGS_FILE):
                    continue
                key = rel_dir + name
                if key.startswith(prefix):
                    found.append((key, os.path.join(dirpath, name)))
        found.sort()
        for key, path in found:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # deleted since the walk
            except OSError as exc:
                raise map_os_error(exc, self.uri(key)) from exc
            if stat.S_ISREG(st.st_mode):
                yield self._info(key, st)

    def head(self, key: str) -> ObjectInfo:
        """Return the current version of ``key``.

        Raises:
            StorageAccessError: no such file, not a regular file, or permission denied.
        """
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise map_os_error(exc, self.uri(key)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageAccessError(f"{self.uri(key)}: not a regular file")
        return self._info(key, st)

    def open(self, key: str, *, etag: str | None = None) -> ObjectReader:
        """Open ``key`` as a seekable, buffered, read-only binary file.

        Args:
            key: The key.
            etag: The version to read (``"<mtime_ns>-<size>"``); ``None`` reads the current file.

        Raises:
            ObjectChangedError: the file was replaced or deleted since ``etag`` was listed.
            StorageAccessError: no such file, or permission denied.

        Note:
            The version is checked on the open descriptor, and since writes replace the file (new
            inode), the reader keeps reading that version even if the file is rewritten meanwhile.
        """
        uri = self.uri(key)
        path = self._path(key)
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
        except OSError as exc:
            raise map_os_error(exc, uri, etag=etag) from exc
        try:
            st = os.fstat(raw.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise StorageAccessError(f"{uri}: not a regular file")
            if etag is not None and local_etag(st) != etag:
                raise ObjectChangedError(
                    f"{uri}: version {etag!r} is no longer current (now {local_etag(st)!r}); the next "
                    "poll picks up the new version"
                )
        except BaseException:
            raw.close()
            raise
        return ObjectReader(raw, buffer_size=self.buffer_size)

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Create or replace ``key`` atomically; parent directories are created as needed.

        Returns:
            The new version. It always differs from the replaced one: if the clock did not move
            (same ``mtime_ns``) and the size is equal, the new file's mtime is bumped by 1 ns.

        Raises:
            StorageAccessError: permission denied (or the key is not a valid relative path).
            StorageUnavailableError: another I/O error (disk full...).
        """
        uri = self.uri(key)
        path = self._path(key)
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            try:
                old: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                old = None
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=TEMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, stat.S_IMODE(old.st_mode) if old is not None else 0o644)
                st = os.stat(tmp)
                if old is not None and st.st_size == old.st_size and st.st_mtime_ns <= old.st_mtime_ns:
                    os.utime(tmp, ns=(st.st_atime_ns, old.st_mtime_ns + 1))
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            self._fsync_dir(parent)
            st = os.stat(path)
        except OSError as exc:
            raise map_os_error(exc, uri) from exc
        return self._info(key, st)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        try:
            dir_fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        """Delete ``key`` (no error if already gone) and the directories it leaves empty."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise map_os_error(exc, self.uri(key)) from exc
        parent = os.path.dirname(path)
        while parent != self.root and parent.startswith(self.root + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def get_bucket_tags(self) -> dict[str, str]:
        """The tags in ``<root>/.obslake-tags.json`` (a JSON object); ``{}`` when there is none.

        Raises:
            StorageAccessError: the root does not exist or the file cannot be read.
            ConfigError: the file is not a JSON object.
        """
        self._check_root()
        uri = self.uri(TAGS_FILE)
        try:
            with open(os.path.join(self.root, TAGS_FILE), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise map_os_error(exc, uri) from exc
        try:
            tags = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{uri}: not valid JSON ({exc})") from exc
        if not isinstance(tags, dict):
            raise ConfigError(f"{uri}: must be a JSON object of tag names to values")
        return {str(k): str(v) for k, v in tags.items()}
