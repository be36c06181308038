"""Google Cloud Storage backend of :class:`~obslake.storage.base.ObjectStore`.

The store wraps an injected :class:`google.cloud.storage.Client` (:func:`make_gcs_client` builds one,
also for the local emulator). ``google.*`` is imported lazily.

Versions are GCS *generations*: :attr:`ObjectInfo.etag` is ``str(generation)``, and reads pin it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from obslake.exceptions import (
    ObjectChangedError,
    ObslakeError,
    StorageAccessError,
    StorageUnavailableError,
    printable,
)
from obslake.storage.base import (
    DEFAULT_BUFFER_SIZE,
    ObjectInfo,
    ObjectReader,
    RangedRawReader,
    to_utc,
)

DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
"""(connect, read) timeout in seconds of every request."""

_LIBRARY_DEFAULT: Any = object()


def make_gcs_client(
    api_endpoint: str | None = None,
    project: str = "obslake-local",
    anonymous: bool = False,
    credentials: Any = None,
) -> Any:
    """Build a :class:`google.cloud.storage.Client`.

    Args:
        api_endpoint: A custom endpoint (the emulator: ``http://127.0.0.1:9023``). Implies anonymous
            credentials; ``None`` talks to Google.
        project: The project (only used to create or list buckets).
        anonymous: Use :class:`google.auth.credentials.AnonymousCredentials` (public buckets).
        credentials: Explicit credentials; ``None`` uses Application Default Credentials unless
            ``anonymous`` or ``api_endpoint`` is given.

    Returns:
        The client. Its requests retry throttling, 5xx and connection errors (the library's default
        retry on idempotent calls).
    """
    from google.cloud import storage

    client_options = None
    if api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
        client_options = {"api_endpoint": api_endpoint.rstrip("/")}
    elif anonymous:
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    return storage.Client(project=project, credentials=credentials, client_options=client_options)


def map_gcs_error(exc: BaseException, uri: str, permission: str, *, pinned: bool = False) -> ObslakeError | None:
    """Translate a google-cloud-storage (or transport) error into an :mod:`obslake.exceptions` error.

    Args:
        exc: The exception raised by the client.
        uri: The full URI concerned (named in the message).
        permission: The IAM permission the call needs (``storage.objects.get``...).
        pinned: A generation is being read: a 404 or failed precondition means the object changed.

    Returns:
        The mapped error, or ``None`` when ``exc`` is not a storage error.
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as gauth

    uri = printable(uri)  # keys are user data: a newline in one must not forge log lines

    if isinstance(exc, gexc.PreconditionFailed):
        return ObjectChangedError(
            f"{uri}: the generation being read is no longer current (precondition failed); the next "
            "poll picks up the new version"
        )
    if isinstance(exc, gexc.NotFound):
        if pinned:
            return ObjectChangedError(f"{uri}: the generation being read is gone (the object was rewritten or deleted)")
        return StorageAccessError(
            f"{uri}: not found (no such bucket or object); check the name, and that the credentials have {permission}"
        )
    if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
        return StorageAccessError(f"{uri}: access denied ({exc.code}); the credentials likely lack {permission}")
    if isinstance(exc, (gexc.TooManyRequests, gexc.ServerError, gexc.RetryError)):
        return StorageUnavailableError(f"{uri}: GCS is unavailable ({printable(exc, 500)}); retry later")
    if isinstance(exc, gexc.GoogleAPICallError):
        return StorageAccessError(f"{uri}: GCS rejected the request ({printable(exc, 500)}); it needs {permission}")
    if isinstance(exc, (gauth.DefaultCredentialsError, gauth.RefreshError)):
        return StorageAccessError(f"{uri}: no usable Google credentials ({printable(exc, 500)}); {permission} needed")
    if isinstance(exc, gauth.TransportError):
        return StorageUnavailableError(f"{uri}: GCS did not answer ({printable(exc, 500)}); retry later")
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a google-cloud-storage dependency
        requests = None  # type: ignore[assignment]
    if requests is not None and isinstance(exc, requests.exceptions.RequestException):
        return StorageUnavailableError(
            f"{uri}: GCS did not answer ({type(exc).__name__}: {printable(exc, 500)}); retry later"
        )
    if isinstance(exc, (OSError, gexc.GoogleAPIError)):
        return StorageUnavailableError(
            f"{uri}: GCS did not answer ({type(exc).__name__}: {printable(exc, 500)}); retry later"
        )
    return None


class GCSStore:
    """An :class:`~obslake.storage.base.ObjectStore` over one GCS bucket.

    Args:
        bucket: The bucket name.
        client: A :class:`google.cloud.storage.Client` (see :func:`make_gcs_client`).
        buffer_size: Read buffer of the files :meth:`open` returns (one ranged download each).
        timeout: Timeout of every request, seconds or ``(connect, read)``.
        retry: A ``google.api_core.retry.Retry`` for the idempotent calls (list, get, download,
            delete); ``None`` disables retries; by default the library's ``DEFAULT_RETRY``. Uploads
            keep the library's own policy (retried only when made conditional).

    Note:
        Every call maps its errors: 401/403/404 to :class:`~obslake.exceptions.StorageAccessError`
        (the message names the URI and the IAM permission likely missing), 429/5xx/connection errors
        and timeouts to :class:`~obslake.exceptions.StorageUnavailableError`, a vanished or changed
        generation while reading to :class:`~obslake.exceptions.ObjectChangedError`.
    """

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        client: Any,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        retry: Any = _LIBRARY_DEFAULT,
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.buffer_size = buffer_size
        self.timeout = timeout
        if retry is _LIBRARY_DEFAULT:
            from google.cloud.storage.retry import DEFAULT_RETRY

            retry = DEFAULT_RETRY
        self.retry = retry
        self._bucket = client.bucket(bucket)

    def __repr__(self) -> str:
        return f"GCSStore({self.bucket!r})"

    @contextlib.contextmanager
    def _errors(self, uri: str, permission: str, *, pinned: bool = False) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = map_gcs_error(exc, uri, permission, pinned=pinned)
            if mapped is None:
                raise
            raise mapped from exc

    def uri(self, key: str = "") -> str:
        """The full URI of ``key`` (``gs://bucket/key``)."""
        return f"gs://{self.bucket}/{key}"

    def _info(self, blob: Any) -> ObjectInfo:
        mtime = blob.updated or blob.time_created
        return ObjectInfo(
            bucket=self.bucket,
            key=blob.name,
            etag=str(blob.generation),
            size=int(blob.size or 0),
            mtime=to_utc(mtime),
        )

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object under ``prefix`` recursively, in key order, ``page_size`` per request.

        Uses ``client.list_blobs`` (which follows ``nextPageToken``) without a delimiter; names
        ending in ``/`` (folder placeholders) are skipped.

        Note:
            Errors surface while iterating, after the objects of the pages already fetched. Needs
            ``storage.objects.list``.
        """
        with self._errors(self.uri(prefix), "storage.objects.list"):
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=prefix or None,
                page_size=page_size,
                timeout=self.timeout,
                retry=self.retry,
            )
            for blob in blobs:
                if blob.name.endswith("/"):
                    continue
                yield self._info(blob)

    def head(self, key: str) -> ObjectInfo:
        """Return the current generation of ``key`` (needs ``storage.objects.get``).

        Raises:
            StorageAccessError: no such object or bucket, or access denied.
            StorageUnavailableError: GCS did not answer.
        """
        blob = self._bucket.blob(key)
        with self._errors(self.uri(key), "storage.objects.get"):
            blob.reload(timeout=self.timeout, retry=self.retry)
        return self._info(blob)

    def open(self, key: str, *, etag: str | None = None) -> ObjectReader:
        """Open ``key`` as a seekable, buffered, read-only binary file.

        The object's metadata is fetched for the pinned generation (``etag``, or the current one),
        and every buffer fill is a ranged download of that generation with ``ifGenerationMatch``, so
        all bytes come from one version.

        Args:
            key: The object name.
            etag: The generation to read (as listed); ``None`` reads the current generation.

        Raises:
            ObjectChangedError: that generation is gone or no longer the live one.
            StorageAccessError: no such object or bucket, or ``storage.objects.get`` denied.
            StorageUnavailableError: GCS did not answer.
            ValueError: ``etag`` is not a GCS generation (an integer).

        Note:
            On a bucket with object versioning an older generation stays readable, and is read. The
            returned generation is also compared with the one asked for, so a server that ignores
            the ``generation`` parameter still yields ``ObjectChangedError`` rather than other bytes.
        """
        uri = self.uri(key)
        wanted = None
        if etag is not None:
            try:
                wanted = int(etag)
            except ValueError:
                raise ValueError(f"{printable(uri)}: etag {etag!r} is not a GCS generation") from None
        blob = self._bucket.blob(key, generation=wanted)
        with self._errors(uri, "storage.objects.get", pinned=wanted is not None):
            blob.reload(timeout=self.timeout, retry=self.retry)
        generation = int(blob.generation)
        if wanted is not None and generation != wanted:
            raise ObjectChangedError(
                f"{printable(uri)}: generation {wanted} is no longer current (now {generation}); the next poll "
                "picks up the new version"
            )
        size = int(blob.size or 0)
        pinned = self._bucket.blob(key, generation=generation)

        def fetch(start: int, end: int) -> bytes:
            with self._errors(uri, "storage.objects.get", pinned=True):
                return pinned.download_as_bytes(
                    start=start,
                    end=end,
                    raw_download=True,
                    checksum=None,
                    if_generation_match=generation,
                    timeout=self.timeout,
                    retry=self.retry,
                )

        return ObjectReader(RangedRawReader(fetch, size, uri), buffer_size=self.buffer_size)

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Create or replace ``key`` (needs ``storage.objects.create``, and ``.delete`` to replace).

        Returns:
            The new generation, from the upload's answer.
        """
        blob = self._bucket.blob(key)
        with self._errors(self.uri(key), "storage.objects.create"):
            blob.upload_from_string(data, content_type="application/octet-stream", timeout=self.timeout)
        return self._info(blob)

    def delete(self, key: str) -> None:
        """Delete ``key`` (needs ``storage.objects.delete``).

        Note:
            A 404 is taken as "already gone" and ignored; GCS answers 404 for a missing bucket too,
            so deleting from a nonexistent bucket is silent as well.
        """
        from google.api_core.exceptions import NotFound

        blob = self._bucket.blob(key)
        with self._errors(self.uri(key), "storage.objects.delete"):
            try:
                blob.delete(timeout=self.timeout, retry=self.retry)
            except NotFound:
                pass

    def get_bucket_tags(self) -> dict[str, str]:
        """The bucket's labels (needs ``storage.buckets.get``); ``{}`` when it has none."""
        with self._errors(self.uri(), "storage.buckets.get"):
            bucket = self.client.get_bucket(self.bucket, timeout=self.timeout, retry=self.retry)
        return {str(k): str(v) for k, v in (bucket.labels or {}).items()}
