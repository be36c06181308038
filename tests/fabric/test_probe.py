"""The permission probe (fabric/probe.py): write, list, read and delete a marker, on real S3 (moto), GCS
(emulator) and local stores; a failing step names itself and the permission to grant (PERMISSION_MISSING)."""

from __future__ import annotations

import re
import uuid

import pytest

from lake_fixtures import free_port
from obslake.exceptions import StorageAccessError, StorageUnavailableError, TerminalError
from obslake.fabric.probe import probe_storage
from obslake.storage import open_store

MARKER = re.compile(r"_obslake_probe/[0-9a-f]{32}\.txt$")


def test_s3_probe_writes_lists_reads_and_deletes_its_marker(s3_client, s3_bucket):
    s3_client.put_object(Bucket=s3_bucket, Key="exports/ml/keep.parquet", Body=b"data")
    store, prefix = open_store(f"s3://{s3_bucket}/exports/ml/", s3_client=s3_client)
    uri = probe_storage(store, prefix)
    assert uri.startswith(f"s3://{s3_bucket}/exports/ml/_obslake_probe/") and MARKER.search(uri)
    left = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert left == ["exports/ml/keep.parquet"]  # the marker is gone, nothing else touched
    # each probe uses a fresh marker
    assert probe_storage(store, prefix) != uri


@pytest.mark.parametrize("prefix", ["exports/ml", "/exports/ml/", "exports/ml//"])
def test_the_prefix_is_normalised(s3_client, s3_bucket, prefix):
    store, _ = open_store(f"s3://{s3_bucket}/", s3_client=s3_client)
    uri = probe_storage(store, prefix)
    assert uri.startswith(f"s3://{s3_bucket}/exports/ml/_obslake_probe/"), uri


def test_gcs_probe(gcs_client, gcs_bucket):
    store, prefix = open_store(f"gs://{gcs_bucket}/fabric/", gcs_client=gcs_client)
    uri = probe_storage(store, prefix)
    assert uri.startswith(f"gs://{gcs_bucket}/fabric/_obslake_probe/")
    assert list(gcs_client.list_blobs(gcs_bucket)) == []


def test_local_probe_at_the_root_leaves_nothing_behind(tmp_path):
    store, prefix = open_store(f"file://{tmp_path}/")
    uri = probe_storage(store, prefix)
    assert uri.startswith(f"file://{tmp_path}/_obslake_probe/")  # no leading '/' in the key
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(("scheme", "permission"), [("s3", "s3:PutObject"), ("gs", "storage.objects.create")])
def test_a_missing_bucket_fails_at_the_write_step_naming_the_permission(request, scheme, permission):
    bucket = f"obslake-missing-{uuid.uuid4().hex[:12]}"
    if scheme == "s3":
        store, prefix = open_store(f"s3://{bucket}/exports/ns/", s3_client=request.getfixturevalue("s3_client"))
    else:
        store, prefix = open_store(f"gs://{bucket}/exports/ns/", gcs_client=request.getfixturevalue("gcs_client"))
    with pytest.raises(StorageAccessError) as err:
        probe_storage(store, prefix)
    exc = err.value
    assert exc.code == "PERMISSION_MISSING" and isinstance(exc, TerminalError)
    message = str(exc)
    assert message.startswith(f"permission probe: cannot write {scheme}://{bucket}/exports/ns/_obslake_probe/")
    assert f"grant {permission} on {scheme}://{bucket}/exports/ns/ to the Airflow worker's identity" in message
    assert isinstance(exc.__cause__, StorageAccessError)  # the store's own error, kept as the cause


def test_a_store_that_does_not_list_what_was_written_is_reported(tmp_path):
    """Listing that misses the marker (a missing list permission on some stores, or a lagging listing)."""
    store, prefix = open_store(f"file://{tmp_path}/")

    class NotListing(type(store)):
        def list(self, prefix="", *, page_size=1000):
            return iter(())

    blind = NotListing(str(tmp_path))
    with pytest.raises(StorageAccessError, match=r"was written but is not listed; check read \(directory\)") as err:
        probe_storage(blind, prefix)
    assert err.value.code == "PERMISSION_MISSING"


def test_different_bytes_read_back_are_reported(tmp_path):
    store, prefix = open_store(f"file://{tmp_path}/")

    class Garbling(type(store)):
        def write(self, key, data):
            return super().write(key, data[::-1])

    with pytest.raises(StorageAccessError, match="read back different bytes") as err:
        probe_storage(Garbling(str(tmp_path)), prefix)
    assert err.value.code == "PERMISSION_MISSING"


def test_an_unreachable_endpoint_stays_a_transient_error():
    from obslake.storage.s3 import make_s3_client

    client = make_s3_client(
        f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        connect_timeout=1,
        read_timeout=1,
        max_attempts=1,
    )
    store, prefix = open_store("s3://probe-bucket/exports/", s3_client=client)
    with pytest.raises(StorageUnavailableError):
        probe_storage(store, prefix)
