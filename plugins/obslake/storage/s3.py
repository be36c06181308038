"""Amazon S3 (and S3-compatible: MinIO, moto) backend of :class:`~obslake.storage.base.ObjectStore`.

The store wraps an injected boto3 S3 client, so callers decide credentials, endpoint and retries
(:func:`make_s3_client` builds a suitable one). ``boto3``/``botocore`` are imported lazily: importing
this module costs nothing when S3 is not used.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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

# Error codes S3 (and compatible servers) answer with, by what obslake does about them.
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_REDIRECT_CODES = frozenset(
    {"PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


def make_s3_client(
    endpoint_url: str | None = None,
    region_name: str = "us-east-1",
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    max_attempts: int = 5,
) -> Any:
    """Build a boto3 S3 client with obslake's retry and timeout policy.

    Args:
        endpoint_url: An S3-compatible endpoint (MinIO, moto: ``http://127.0.0.1:5000``); ``None``
            for AWS itself. A custom endpoint also switches to path-style addressing.
        region_name: The bucket region (AWS signs requests per region).
        aws_access_key_id: Explicit credentials; when all are ``None`` boto3's default chain is used
            (environment, profile, instance/role credentials).
        aws_secret_access_key: See ``aws_access_key_id``.
        aws_session_token: Optional session token of temporary credentials.
        connect_timeout: Seconds to wait for a TCP connection.
        read_timeout: Seconds to wait for a response (or for the next bytes of a body).
        max_attempts: Total attempts per request in botocore's ``standard`` retry mode (which
            retries throttling, 5xx and connection errors with exponential backoff).

    Returns:
        A ``botocore.client.S3`` instance, from its own boto3 session (safe to use from one thread
        per client; boto3 clients are thread-safe for requests).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    session = boto3.session.Session(
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        region_name=region_name,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def map_s3_error(exc: BaseException, uri: str, permission: str, *, etag: str | None = None) -> ObslakeError | None:
    """Translate a boto3/botocore (or socket) error into an :mod:`obslake.exceptions` error.

    Args:
        exc: The exception raised by the client.
        uri: The full URI of the object or bucket concerned (named in the message).
        permission: The IAM action the call needs (``s3:GetObject``...), named for access errors.
        etag: The version being read, if pinned: then a missing key or a failed ``If-Match`` means
            the object changed, not that access is wrong.

    Returns:
        The mapped error, or ``None`` when ``exc`` is not a storage error (programming errors are
        left alone).
    """
    from botocore import exceptions as bce

    uri = printable(uri)  # keys are user data: a newline in one must not forge log lines
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {}) or {}
        code = printable(error.get("Code", ""), 100)
        message = printable(error.get("Message") or "", 500)
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in _CHANGED_CODES or status == 412:
            return ObjectChangedError(
                f"{uri}: version {etag!r} is no longer current (If-Match failed: the object was "
                "rewritten); the next poll picks up the new version"
            )
        if etag is not None and code in _MISSING_KEY_CODES:
            return ObjectChangedError(f"{uri}: version {etag!r} is gone (the object was deleted after it was listed)")
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return StorageUnavailableError(
                f"{uri}: S3 answered {code or status} ({message or 'server error'}); retry later"
            )
        if code == "NoSuchBucket":
            return StorageAccessError(
                f"{uri}: bucket does not exist (NoSuchBucket); check the bucket name, account and "
                f"region (the call needs {permission})"
            )
        if code in _MISSING_KEY_CODES:
            return StorageAccessError(
                f"{uri}: no such key (or no such bucket) [{code}]; a missing object also shows up as "
                f"403 without s3:ListBucket, so check that and {permission}"
            )
        if code in _REDIRECT_CODES or status == 301:
            return StorageAccessError(
                f"{uri}: the bucket is in another region or behind another endpoint ({code}: "
                f"{message}); set the region/endpoint of the connection"
            )
        if code == "InvalidObjectState":
            return StorageAccessError(
                f"{uri}: the object is archived (InvalidObjectState: Glacier/Deep Archive storage "
                "class); restore it before reading"
            )
        if code in _CREDENTIAL_CODES:
            return StorageAccessError(
                f"{uri}: the AWS credentials were rejected ({code}: {message}); fix or renew them"
            )
        if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem", "403") or status == 403:
            return StorageAccessError(
                f"{uri}: access denied ({code or status}); the credentials likely lack {permission}"
            )
        return StorageAccessError(
            f"{uri}: S3 rejected the request ({code or status}: {message}); it needs {permission}"
        )
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.NoRegionError)):
        return StorageAccessError(
            f"{uri}: no usable AWS credentials/region ({printable(exc, 500)}); {permission} needed"
        )
    if isinstance(exc, bce.ParamValidationError):
        return StorageAccessError(f"{uri}: invalid request parameters ({printable(exc, 500)})")
    if isinstance(exc, (bce.BotoCoreError, OSError)):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
        # ResponseStreamingError, IncompleteReadError, raw socket errors...
        return StorageUnavailableError(
            f"{uri}: S3 did not answer ({type(exc).__name__}: {printable(exc, 500)}); retry later"
        )
    return None


def _quote(etag: str) -> str:
    """HTTP entity tags are quoted on the wire; ObjectInfo keeps them bare."""
    return etag if etag.startswith('"') or etag.startswith('W/"') else f'"{etag}"'


def _strip(etag: str) -> str:
    return etag.strip('"')


class S3Store:
    """An :class:`~obslake.storage.base.ObjectStore` over one S3 bucket.

    Args:
        bucket: The bucket name.
        client: A boto3 S3 client (see :func:`make_s3_client`).
        buffer_size: Read buffer of the files :meth:`open` returns (one ranged ``GetObject`` each).

    Note:
        Every call maps its errors: access denied, no such bucket or key to
        :class:`~obslake.exceptions.StorageAccessError` (the message names the URI and the IAM action
        likely missing); connection errors, timeouts, throttling and 5xx (after the client's own
        retries) to :class:`~obslake.exceptions.StorageUnavailableError`; a failed ``If-Match`` while
        reading to :class:`~obslake.exceptions.ObjectChangedError`.
    """

    scheme = "s3"

    def __init__(self, bucket: str, client: Any, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        self.bucket = bucket
        self.client = client
        self.buffer_size = buffer_size

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r})"

    @contextlib.contextmanager
    def _errors(self, uri: str, permission: str, *, etag: str | None = None) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = map_s3_error(exc, uri, permission, etag=etag)
            if mapped is None:
                raise
            raise mapped from exc

    def uri(self, key: str = "") -> str:
        """The full URI of ``key`` (``s3://bucket/key``)."""
        return f"s3://{self.bucket}/{key}"

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Yield every object under ``prefix`` recursively, in key order, ``page_size`` per request.

        Uses the ``ListObjectsV2`` paginator without a delimiter. Keys ending in ``/`` (the empty
        "folder" markers consoles create) are skipped.

        Note:
            Errors surface while iterating; a failure on page *n* comes after the objects of pages
            1..n-1 were yielded. Needs ``s3:ListBucket``.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(self.uri(prefix), "s3:ListBucket"):
            pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
            for page in pages:
                for obj in page.get("Contents", ()) or ():
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    yield ObjectInfo(
                        bucket=self.bucket,
                        key=key,
                        etag=_strip(obj["ETag"]),
                        size=int(obj["Size"]),
                        mtime=to_utc(obj["LastModified"]),
                    )

    def head(self, key: str) -> ObjectInfo:
        """Return the current version of ``key`` (``HeadObject``; needs ``s3:GetObject``).

        Raises:
            StorageAccessError: the object or bucket does not exist or access is denied.
            StorageUnavailableError: S3 did not answer.
        """
        with self._errors(self.uri(key), "s3:GetObject"):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        return self._info(key, resp)

    def _info(self, key: str, resp: dict) -> ObjectInfo:
        return ObjectInfo(
            bucket=self.bucket,
            key=key,
            etag=_strip(resp["ETag"]),
            size=int(resp["ContentLength"]),
            mtime=to_utc(resp["LastModified"]),
        )

    def open(self, key: str, *, etag: str | None = None) -> ObjectReader:
        """Open ``key`` as a seekable, buffered, read-only binary file.

        One ``HeadObject`` (with ``If-Match`` when ``etag`` is given) pins the version and its size;
        every buffer fill is then a ranged ``GetObject`` with ``If-Match`` on that version, so the
        bytes returned always belong to one version.

        Args:
            key: The object key.
            etag: The version to read (as listed); ``None`` reads the current version.

        Raises:
            ObjectChangedError: ``etag`` is not (or, during the read, no longer) the current version.
            StorageAccessError: no such object/bucket or ``s3:GetObject`` denied.
            StorageUnavailableError: S3 did not answer.

        Note:
            Reads are consistent even without ``etag``: if the object is rewritten after ``open``,
            the next buffer fill raises :class:`~obslake.exceptions.ObjectChangedError` instead of
            mixing bytes of two versions.
        """
        uri = self.uri(key)
        kwargs = {"IfMatch": _quote(etag)} if etag else {}
        with self._errors(uri, "s3:GetObject", etag=etag):
            resp = self.client.head_object(Bucket=self.bucket, Key=key, **kwargs)
        pinned = resp["ETag"]
        size = int(resp["ContentLength"])

        def fetch(start: int, end: int) -> bytes:
            with self._errors(uri, "s3:GetObject", etag=_strip(pinned)):
                part = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}", IfMatch=pinned)
                body = part["Body"]
                try:
                    return body.read()
                finally:
                    body.close()

        return ObjectReader(RangedRawReader(fetch, size, uri), buffer_size=self.buffer_size)

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Create or replace ``key`` with ``data`` (``PutObject``; needs ``s3:PutObject``).

        Returns:
            The new version (etag from the ``PutObject`` answer; size and mtime from a ``HeadObject``).
        """
        uri = self.uri(key)
        with self._errors(uri, "s3:PutObject"):
            put = self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        etag = _strip(put["ETag"])
        with self._errors(uri, "s3:GetObject"):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        info = self._info(key, resp)
        if info.etag != etag:  # rewritten again in between: report what we wrote
            info = ObjectInfo(self.bucket, key, etag, len(data), dt.datetime.now(dt.UTC))
        return info

    def delete(self, key: str) -> None:
        """Delete ``key`` (``DeleteObject``; needs ``s3:DeleteObject``); no error if already gone."""
        with self._errors(self.uri(key), "s3:DeleteObject"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def get_bucket_tags(self) -> dict[str, str]:
        """The bucket's tags (``GetBucketTagging``; needs ``s3:GetBucketTagging``).

        Returns:
            ``{key: value}``; ``{}`` when the bucket has no tag set (``NoSuchTagSet``).
        """
        uri = self.uri()
        try:
            resp = self.client.get_bucket_tagging(Bucket=self.bucket)
        except Exception as exc:
            response = getattr(exc, "response", None)
            error = response.get("Error") or {} if isinstance(response, dict) else {}
            if error.get("Code") == "NoSuchTagSet":
                return {}
            mapped = map_s3_error(exc, uri, "s3:GetBucketTagging")
            if mapped is None:
                raise
            raise mapped from exc
        return {tag["Key"]: tag["Value"] for tag in resp.get("TagSet", ())}
