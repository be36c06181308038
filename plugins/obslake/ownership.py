"""Prove a bucket belongs to the caller: its tag (S3) or label (GCS) must equal the job's key.

The key's value never appears in a log line or an error message.
"""

from __future__ import annotations

import hmac
import logging
import shlex

from obslake.exceptions import BucketOwnershipError
from obslake.storage.base import ObjectStore

log = logging.getLogger(__name__)


def fix_command(store: ObjectStore, tag_name: str) -> str:
    """The exact command that sets the tag/label (with a placeholder for the key)."""
    if store.scheme == "s3":
        return (
            f"aws s3api put-bucket-tagging --bucket {shlex.quote(store.bucket)} --tagging "
            f"'TagSet=[{{Key={tag_name},Value=<your-ingestion-key>}}]'  "
            "(this replaces the bucket's tag set: include its other tags too; see "
            f"`aws s3api get-bucket-tagging --bucket {shlex.quote(store.bucket)}`)"
        )
    if store.scheme == "gs":
        return (
            f"gcloud storage buckets update gs://{store.bucket} --update-labels={tag_name}=<your-ingestion-key>  "
            "(GCS label values allow only lowercase letters, digits, '_' and '-')"
        )
    return f'write {{"{tag_name}": "<your-ingestion-key>"}} to {store.uri(".obslake-tags.json")}'


def verify_bucket_ownership(store: ObjectStore, tag_name: str, expected_key: str, key_source: str) -> None:
    """Raise unless the bucket's ``tag_name`` tag/label equals ``expected_key``.

    Args:
        store: the bucket.
        tag_name: e.g. ``arize-ingestion-key``.
        expected_key: the job's key (from an Airflow Variable or secret backend).
        key_source: where the key came from, for the message (e.g. "Airflow Variable 'x'").

    Raises:
        BucketOwnershipError: tag missing or different; the message has the fix command, not the key.
        StorageAccessError: the tags cannot be read (missing s3:GetBucketTagging / storage.buckets.get).
    """
    what = "label" if store.scheme == "gs" else "tag"
    bucket = store.uri("")
    tags = store.get_bucket_tags()
    actual = tags.get(tag_name)
    if actual is None:
        raise BucketOwnershipError(
            f"bucket {bucket} has no {what} {tag_name!r}, so obslake cannot prove it belongs to this job. "
            f"Nothing was read. Fix: {fix_command(store, tag_name)} with the key stored in {key_source}."
        )
    if not hmac.compare_digest(actual.encode(), expected_key.encode()):
        raise BucketOwnershipError(
            f"bucket {bucket} has a {what} {tag_name!r} whose value differs from the key in {key_source}. "
            f"Nothing was read. Fix: set the {what} to the job's key: {fix_command(store, tag_name)}, or correct "
            f"{key_source} if the bucket's value is the right one."
        )
    log.info("bucket %s: %s %r matches %s", bucket, what, tag_name, key_source)
