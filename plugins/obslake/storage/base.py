"""The one storage protocol obslake reads and writes buckets through.

A store is bound to one bucket (or, for ``file://``, one root directory). Keys are always
``/``-separated and relative to the bucket, never starting with ``/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, cast, runtime_checkable
from urllib.parse import urlparse

from obslake.exceptions import ObjectChangedError, UnsupportedURIError, printable

SCHEMES = ("s3", "gs", "file")


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as listed: enough to decide whether it is new and to read exactly that version.

    ``etag`` is the S3 ETag (quotes stripped), the GCS generation (as a string), or for local files
    ``"<mtime_ns>-<size>"``. Together with (bucket, key) it identifies one version of a file.
    """

    bucket: str
    key: str
    etag: str
    size: int
    mtime: dt.datetime  # timezone-aware UTC

    def to_dict(self) -> dict:
        """Plain JSON-able form (for XCom and trigger events)."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "mtime": self.mtime.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ObjectInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            bucket=d["bucket"],
            key=d["key"],
            etag=d["etag"],
            size=int(d["size"]),
            mtime=dt.datetime.fromisoformat(d["mtime"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StorageURI:
    """A parsed ``scheme://bucket/prefix`` (for ``file://``, bucket is ``""`` and prefix the path)."""

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}"


def parse_uri(uri: str) -> StorageURI:
    """Parse ``s3://bucket/prefix/``, ``gs://bucket/prefix/`` or ``file:///abs/path/``.

    Raises:
        UnsupportedURIError: the scheme is not one of s3, gs, file, or the bucket is missing.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsupportedURIError(
            f"unsupported storage URI {uri!r}: use s3://bucket/prefix/, gs://bucket/prefix/ or file:///path/"
        )
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedURIError(f"file URI {uri!r} must be absolute: file:///abs/path/")
        return StorageURI("file", "", parsed.path)
    if not parsed.netloc:
        raise UnsupportedURIError(f"storage URI {uri!r} has no bucket: use {scheme}://bucket/prefix/")
    return StorageURI(scheme, parsed.netloc, parsed.path.lstrip("/"))


_S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_name_problem(scheme: str, bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 (``scheme="s3"``) or GCS (``"gs"``) bucket name, or ``None``.

    S3 (AWS "general purpose bucket naming rules"): 3-63 characters; lowercase letters, digits, '.'
    and '-'; starts and ends with a letter or digit; no '..'; not an IPv4 address; not the reserved
    prefixes ``xn--``, ``sthree-``, ``amzn-s3-demo-`` or suffixes ``-s3alias``, ``--ol-s3``, ``.mrap``,
    ``--x-s3``, ``--table-s3``. GCS: 3-63 characters (up to 222 when it has dots, each dot-separated
    part at most 63); lowercase letters, digits, '-', '_' and '.'; starts and ends with a letter or
    digit; not an IPv4 address; does not start with ``goog`` or contain ``google``/``g00gle``.
    """
    shown = printable(bucket, 80)
    if scheme == "s3":
        if not 3 <= len(bucket) <= 63:
            return f"S3 bucket name '{shown}' must be 3-63 characters long"
        if not _S3_BUCKET_RE.fullmatch(bucket):
            return (
                f"S3 bucket name '{shown}' may only use lowercase letters, digits, '.' and '-', and must "
                "start and end with a letter or digit"
            )
        if ".." in bucket:
            return f"S3 bucket name '{shown}' must not contain '..'"
        if _IPV4_RE.fullmatch(bucket):
            return f"S3 bucket name '{shown}' must not be an IP address"
        for reserved in _S3_RESERVED_PREFIXES:
            if bucket.startswith(reserved):
                return f"S3 bucket name '{shown}' starts with {reserved!r}, a prefix AWS reserves"
        for reserved in _S3_RESERVED_SUFFIXES:
            if bucket.endswith(reserved):
                return f"S3 bucket name '{shown}' ends with {reserved!r}, a suffix AWS reserves"
        return None
    if scheme == "gs":
        parts = bucket.split(".")
        if not 3 <= len(bucket) <= (222 if len(parts) > 1 else 63):
            return f"GCS bucket name '{shown}' must be 3-63 characters long (up to 222 with dots)"
        if not _GCS_BUCKET_RE.fullmatch(bucket):
            return (
                f"GCS bucket name '{shown}' may only use lowercase letters, digits, '-', '_' and '.', and "
                "must start and end with a letter or digit"
            )
        if any(not 1 <= len(p) <= 63 for p in parts):
            return f"GCS bucket name '{shown}': each dot-separated part must be 1-63 characters (no '..')"
        if _IPV4_RE.fullmatch(bucket):
            return f"GCS bucket name '{shown}' must not be an IP address"
        if bucket.startswith("goog") or "google" in bucket or "g00gle" in bucket:
            return f"GCS bucket name '{shown}' must not start with 'goog' or contain 'google'"
        return None
    return None


def _has_control(text: str) -> bool:
    return printable(text) != text


def check_storage_uri(uri: str) -> StorageURI:
    """Parse a configured storage URI (a job's ``source``, a connector's ``storage``) strictly.

    On top of :func:`parse_uri`: the bucket must be a valid S3/GCS bucket name
    (:func:`bucket_name_problem`); a ``file://`` URI must be written ``file:///abs/path`` (absolute,
    no ``.``/``..`` or empty segments) and must not be the root directory ``/`` itself; no part may
    contain control characters.

    Raises:
        UnsupportedURIError: the URI breaks one of these rules (the message says how to fix it).
    """
    if not isinstance(uri, str):
        raise UnsupportedURIError(f"a storage URI must be a string, got {type(uri).__name__}")
    shown = printable(uri, 200)
    if _has_control(uri):
        raise UnsupportedURIError(f"storage URI '{shown}' contains control characters; remove them")
    parsed = parse_uri(uri)
    if "?" in uri or "#" in uri:
        raise UnsupportedURIError(
            f"storage URI '{shown}' contains '?' or '#', which URI parsing would cut off; use a prefix without them"
        )
    if parsed.scheme == "file":
        if not re.match(r"(?i)file://(localhost)?/", uri):
            raise UnsupportedURIError(
                f"file URI '{shown}' must be written file:///abs/path/ (three slashes, an absolute path); a "
                "relative path would resolve against the worker's current directory"
            )
        segments = parsed.prefix.strip("/").split("/")
        if parsed.prefix.strip("/") == "":
            raise UnsupportedURIError(
                f"file URI '{shown}' names the root directory '/'; point it at a directory of its own, "
                "e.g. file:///data/obslake/"
            )
        if any(seg in ("", ".", "..") for seg in segments):
            raise UnsupportedURIError(
                f"file URI '{shown}' has an empty, '.' or '..' path segment; write the plain absolute path "
                "(e.g. file:///data/in/)"
            )
        return parsed
    problem = bucket_name_problem(parsed.scheme, parsed.bucket)
    if problem:
        raise UnsupportedURIError(f"storage URI '{shown}': {problem}; use {parsed.scheme}://<bucket>/<prefix>/")
    return parsed


@runtime_checkable
class ObjectStore(Protocol):
    """What every backend (S3, GCS, local) provides.

    Note:
        Errors are mapped to :mod:`obslake.exceptions`: access denied / no such bucket to
        :class:`~obslake.exceptions.StorageAccessError` (terminal), timeouts and 5xx to
        :class:`~obslake.exceptions.StorageUnavailableError` (transient).
    """

    scheme: str
    bucket: str

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object under ``prefix`` recursively, paginated, in key order."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Return the current version of one object (raises StorageAccessError if absent)."""
        ...

    def open(self, key: str, *, etag: str | None = None) -> BinaryIO:
        """Open an object for streaming, seekable binary reads.

        With ``etag`` given, read exactly that version (S3 ``IfMatch``, GCS ``generation``) and raise
        :class:`~obslake.exceptions.ObjectChangedError` if it is gone or changed.
        """
        ...

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Write (create or replace) an object and return its new version."""
        ...

    def delete(self, key: str) -> None:
        """Delete an object (no error if it is already gone)."""
        ...

    def get_bucket_tags(self) -> dict[str, str]:
        """S3 bucket tags, GCS bucket labels, or for local stores the ``.obslake-tags.json`` file."""
        ...

    def uri(self, key: str = "") -> str:
        """The full URI of ``key`` (``s3://bucket/key``)."""
        ...


# --------------------------------------------------------------------------------------------------
# Helpers shared by the backends.
# --------------------------------------------------------------------------------------------------

DEFAULT_BUFFER_SIZE = 8 * 1024 * 1024
"""Read buffer of :class:`ObjectReader` (one ranged request fills at most this much)."""

READALL_CHUNK = 64 * 1024 * 1024
"""Largest single ranged request :meth:`RangedRawReader.readall` makes."""


def to_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as a timezone-aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class RangedRawReader(io.RawIOBase):
    """A seekable, read-only raw stream over an object, fetched by byte ranges on demand.

    Every :meth:`readinto` is one call of ``fetch(start, end)`` (``end`` inclusive, always within the
    object). Wrap it in :class:`ObjectReader` so that small reads are served from a buffer.

    Args:
        fetch: Returns the bytes ``[start, end]`` of exactly the version being read. It must raise an
            :mod:`obslake.exceptions` error (already mapped) when the request fails.
        size: The object's size in bytes (from the ``HEAD`` that pinned the version).
        name: The object's URI, used as ``name`` and in error messages.

    Note:
        A range coming back empty before the known end of the object means the object was truncated
        or replaced under the reader: that raises :class:`~obslake.exceptions.ObjectChangedError`.
    """

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, name: str) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = int(size)
        self._pos = 0
        self.name = name

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._size

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed object reader {self.name}")

    def readable(self) -> bool:
        """Always true while open."""
        self._check_open()
        return True

    def seekable(self) -> bool:
        """Always true while open."""
        self._check_open()
        return True

    def writable(self) -> bool:
        """Always false: object readers are read-only."""
        self._check_open()
        return False

    def tell(self) -> int:
        """Current position in bytes from the start of the object."""
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` relative to ``whence`` (no request is made); return the new position.

        Raises:
            ValueError: the reader is closed, ``whence`` is invalid or the position would be negative.
        """
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if target < 0:
            raise ValueError(f"negative seek position {target} in {self.name}")
        self._pos = target
        return target

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the current position with one ranged request; return the byte count.

        Returns 0 at (or past) the end of the object without making a request.
        """
        self._check_open()
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or len(view) == 0:
            return 0
        wanted = min(len(view), self._size - self._pos)
        data = self._fetch(self._pos, self._pos + wanted - 1)
        got = min(len(data), wanted)
        if got == 0:
            raise ObjectChangedError(
                f"{printable(self.name)}: object ended at byte {self._pos}, before its listed size {self._size}; "
                "it was truncated or replaced while being read"
            )
        view[:got] = data[:got]
        self._pos += got
        return got

    def readall(self) -> bytes:
        """Read from the current position to the end in as few requests as possible."""
        self._check_open()
        chunks: list[bytes] = []
        while self._pos < self._size:
            end = min(self._size, self._pos + READALL_CHUNK) - 1
            data = self._fetch(self._pos, end)
            if not data:
                raise ObjectChangedError(
                    f"{printable(self.name)}: object ended at byte {self._pos}, before its listed size "
                    f"{self._size}; it was truncated or replaced while being read"
                )
            data = data[: end - self._pos + 1]
            chunks.append(data)
            self._pos += len(data)
        return b"".join(chunks)


class ObjectReader(io.BufferedReader):
    """The buffered, seekable, read-only binary file every :meth:`ObjectStore.open` returns.

    A plain :class:`io.BufferedReader` (so ``pyarrow``, ``csv``, ``json`` and ``gzip`` accept it) that
    also knows the object's :attr:`size`.
    """

    def __init__(self, raw: io.RawIOBase, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(raw, buffer_size=buffer_size)

    @property
    def size(self) -> int:
        """The object's size in bytes (of the version being read)."""
        raw_size = getattr(self.raw, "size", None)
        if isinstance(raw_size, int):
            return raw_size
        # typeshed types BufferedReader.raw as a minimal protocol without fileno(); ours is always the
        # io.RawIOBase given to __init__
        return os.fstat(cast(io.RawIOBase, self.raw).fileno()).st_size
