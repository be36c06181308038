"""Local-directory backend of :class:`~obslake.storage.base.ObjectStore` (``file:///abs/path/``).

Used by the demo, tests and single-machine setups. The root directory plays the bucket (``bucket``
is ``""``); keys are ``/``-separated paths relative to it. The bucket "tags" live in
``<root>/.obslake-tags.json``.

Symbolic links are never followed out of the root: a link (or a linked directory) inside the root
whose real path lies outside it is skipped by :meth:`LocalStore.list` (with a warning) and refused by
``head``/``open``/``write``/``delete`` (:class:`~obslake.exceptions.StorageAccessError`). Links that
stay inside the root work as their targets.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator

from obslake.exceptions import (
    ConfigError,
    ObjectChangedError,
    ObslakeError,
    StorageAccessError,
    StorageUnavailableError,
    printable,
)
from obslake.storage.base import DEFAULT_BUFFER_SIZE, ObjectInfo, ObjectReader

TAGS_FILE = ".obslake-tags.json"
"""Name of the tags file in the root (never listed)."""

TEMP_PREFIX = ".obslake-tmp-"
"""Prefix of the temporary files of atomic writes (never listed)."""

log = logging.getLogger(__name__)


def _inside(path: str, root: str) -> bool:
    """True when the (real) ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
    uri = printable(uri)
    if isinstance(exc, FileNotFoundError):
        if etag is not None:
            return ObjectChangedError(f"{uri}: version {etag!r} is gone (the file was deleted)")
        return StorageAccessError(f"{uri}: no such file or directory")
    if isinstance(exc, PermissionError):
        return StorageAccessError(
            f"{uri}: permission denied; the worker's user needs read access ({printable(exc, 300)})"
        )
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)) or exc.errno in (
        errno.ENAMETOOLONG,
        errno.ELOOP,
    ):
        return StorageAccessError(f"{uri}: not a regular file ({printable(exc, 300)})")
    return StorageUnavailableError(f"{uri}: local I/O error ({printable(exc, 300)}); retry later")


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
            raise ConfigError(
                f"local storage root '{printable(root, 200)}' must be an absolute path (file:///abs/path/)"
            )
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
                f"{printable(self.uri(key))}: key '{printable(key)}' is not a relative path inside the root "
                f"{printable(self.root)}"
            )
        return os.path.join(self.root, *parts)

    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    def _outside(self, key: str, real: str) -> StorageAccessError:
        return StorageAccessError(
            f"{printable(self.uri(key))}: resolves (through a symbolic link) to {printable(real)}, outside the "
            f"root {printable(self.root)}; obslake never follows links out of a file:// root: copy the file "
            "into the root instead"
        )

    def _contained(self, key: str, path: str, real_root: str | None = None) -> str:
        """The real path of ``path`` (the file of ``key``); raises if it lies outside the root."""
        real = os.path.realpath(path)
        if not _inside(real, real_root or self._real_root()):
            raise self._outside(key, real)
        return real

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            bucket="",
            key=key,
            etag=local_etag(st),
            size=st.st_size,
            mtime=dt.datetime.fromtimestamp(st.st_mtime_ns // 1_000_000_000, tz=dt.UTC)
            + dt.timedelta(microseconds=(st.st_mtime_ns % 1_000_000_000) // 1000),
        )

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageAccessError(f"{printable(self.uri())}: root directory does not exist (or is not a directory)")

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

        real_root = self._real_root()
        # os.walk does not descend into linked directories, so below a start directory that is itself
        # inside the root only a file that is a link can lead out; otherwise every file is checked.
        start_inside = _inside(os.path.realpath(start), real_root)

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
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or not start_inside:
                    real = os.path.realpath(path)
                    if not _inside(real, real_root):
                        log.warning(
                            "%s: skipped: it resolves (through a symbolic link) to %s, outside the root "
                            "%s; obslake never follows links out of a file:// root",
                            printable(self.uri(key)),
                            printable(real),
                            printable(self.root),
                        )
                        continue
                    st = os.stat(path)
            except FileNotFoundError:
                continue  # deleted since the walk (or a dangling link)
            except OSError as exc:
                raise map_os_error(exc, self.uri(key)) from exc
            if stat.S_ISREG(st.st_mode):
                yield self._info(key, st)

    def head(self, key: str) -> ObjectInfo:
        """Return the current version of ``key``.

        Raises:
            StorageAccessError: no such file, not a regular file, or permission denied.
        """
        path = self._contained(key, self._path(key))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise map_os_error(exc, self.uri(key)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageAccessError(f"{printable(self.uri(key))}: not a regular file")
        return self._info(key, st)

    def open(self, key: str, *, etag: str | None = None) -> ObjectReader:
        """Open ``key`` as a seekable, buffered, read-only binary file.

        Args:
            key: The key.
            etag: The version to read (``"<mtime_ns>-<size>"``); ``None`` reads the current file.

        Raises:
            ObjectChangedError: the file was replaced or deleted since ``etag`` was listed.
            StorageAccessError: no such file, permission denied, or the key resolves through a
                symbolic link to a file outside the root.

        Note:
            The version is checked on the open descriptor, and since writes replace the file (new
            inode), the reader keeps reading that version even if the file is rewritten meanwhile.
            The resolved path is opened with ``O_NOFOLLOW`` and, where ``/proc`` exists, the path of
            the open descriptor is checked again, so a link swapped in meanwhile cannot lead out.
        """
        uri = self.uri(key)
        real_root = self._real_root()
        path = self._path(key)
        real = self._contained(key, path, real_root)
        try:
            raw = open(  # noqa: SIM115 - returned to the caller
                real,
                "rb",
                buffering=0,
                opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NOFOLLOW", 0)),
            )
        except OSError as exc:
            raise map_os_error(exc, uri, etag=etag) from exc
        raw.name = path  # the key's path, as before (not the link's target)
        try:
            try:
                opened = os.readlink(f"/proc/self/fd/{raw.fileno()}")
            except OSError:
                opened = None  # no /proc (macOS): the realpath check above stands
            if opened is not None and opened.startswith("/") and not _inside(opened, real_root):
                raise self._outside(key, opened)
            st = os.fstat(raw.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise StorageAccessError(f"{printable(uri)}: not a regular file")
            if etag is not None and local_etag(st) != etag:
                raise ObjectChangedError(
                    f"{printable(uri)}: version {etag!r} is no longer current (now {local_etag(st)!r}); the "
                    "next poll picks up the new version"
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
        self._contained(key, parent)
        try:
            os.makedirs(parent, exist_ok=True)
            self._contained(key, parent)
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
        self._contained(key, os.path.dirname(path))  # unlink removes a link itself, not its target
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
        path = self._contained(TAGS_FILE, os.path.join(self.root, TAGS_FILE))
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise map_os_error(exc, uri) from exc
        try:
            tags = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{printable(uri)}: not valid JSON ({printable(exc, 200)})") from exc
        if not isinstance(tags, dict):
            raise ConfigError(f"{printable(uri)}: must be a JSON object of tag names to values")
        return {str(k): str(v) for k, v in tags.items()}
