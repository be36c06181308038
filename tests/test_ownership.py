"""Bucket ownership: the tag/label must equal the key; errors give the fix and never the key."""

from __future__ import annotations

import json

import pytest

from obslake.exceptions import BucketOwnershipError
from obslake.ownership import verify_bucket_ownership
from obslake.storage import open_store

KEY = "s3cr3t-key-value-0123456789"


@pytest.fixture(params=["s3", "gs", "file"])
def tagged_store(request, tmp_path):
    """(store, set_tags) for each backend."""
    if request.param == "s3":
        client = request.getfixturevalue("s3_client")
        bucket = request.getfixturevalue("s3_bucket")
        store, _ = open_store(f"s3://{bucket}/p/", s3_client=client)

        def set_tags(tags):
            client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
    elif request.param == "gs":
        client = request.getfixturevalue("gcs_client")
        bucket = request.getfixturevalue("gcs_bucket")
        store, _ = open_store(f"gs://{bucket}/p/", gcs_client=client)

        def set_tags(tags):
            b = client.get_bucket(bucket)
            b.labels = tags
            b.patch()
    else:
        store, _ = open_store(f"file://{tmp_path}/")

        def set_tags(tags):
            (tmp_path / ".obslake-tags.json").write_text(json.dumps(tags))
    return store, set_tags


def test_matching_tag_passes(tagged_store):
    store, set_tags = tagged_store
    set_tags({"team": "ml", "arize-ingestion-key": KEY})
    verify_bucket_ownership(store, "arize-ingestion-key", KEY, "Airflow Variable 'k'")


def test_missing_tag_fails_with_fix_command_and_no_key(tagged_store):
    store, set_tags = tagged_store
    set_tags({"team": "ml"})
    with pytest.raises(BucketOwnershipError) as err:
        verify_bucket_ownership(store, "arize-ingestion-key", KEY, "Airflow Variable 'k'")
    msg = str(err.value)
    assert "has no" in msg and "arize-ingestion-key" in msg and store.uri("") in msg
    assert KEY not in msg
    fix = {"s3": "aws s3api put-bucket-tagging --bucket", "gs": "gcloud storage buckets update gs://",
           "file": ".obslake-tags.json"}[store.scheme]
    assert fix in msg


def test_wrong_tag_fails_without_revealing_either_value(tagged_store):
    store, set_tags = tagged_store
    set_tags({"arize-ingestion-key": "other-value-9876"})
    with pytest.raises(BucketOwnershipError) as err:
        verify_bucket_ownership(store, "arize-ingestion-key", KEY, "Airflow Variable 'k'")
    msg = str(err.value)
    assert "differs" in msg and KEY not in msg and "other-value-9876" not in msg
