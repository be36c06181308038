"""StorageCredentials: one vocabulary, translated once per library (clients, pyiceberg FileIO, delta-rs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obslake.exceptions import ConfigError
from obslake.storage.credentials import GCS_ENDPOINT, StorageCredentials, emulator_url

ENV = {"OBSLAKE_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1",
       "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok"}


def test_s3_from_env_to_every_library():
    creds = StorageCredentials.from_env("s3://bucket/prefix/", ENV)
    assert creds == StorageCredentials("s3", endpoint="http://127.0.0.1:9000", region="eu-west-1",
                                       access_key_id="AKIA", secret_access_key="s3cr3t", session_token="tok")
    assert creds.fileio_properties() == {"s3.region": "eu-west-1", "s3.endpoint": "http://127.0.0.1:9000",
                                         "s3.access-key-id": "AKIA", "s3.secret-access-key": "s3cr3t",
                                         "s3.session-token": "tok"}
    assert creds.delta_options() == {"AWS_REGION": "eu-west-1", "conditional_put": "etag",
                                     "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true",
                                     "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                                     "AWS_SESSION_TOKEN": "tok"}


def test_aws_itself_leaves_credentials_to_each_librarys_chain():
    creds = StorageCredentials.from_env("s3", {})
    assert creds.fileio_properties() == {"s3.region": "us-east-1"}
    # conditional puts make Delta commits safe; never the unsafe-rename mode
    assert creds.delta_options() == {"AWS_REGION": "us-east-1", "conditional_put": "etag"}
    https = StorageCredentials("s3", endpoint="https://minio.internal:9000")
    assert "AWS_ALLOW_HTTP" not in https.delta_options()


def test_gcs_emulator_is_anonymous_and_other_stores_need_no_delta_options():
    creds = StorageCredentials.from_env("gs://b/p", {"STORAGE_EMULATOR_HOST": "127.0.0.1:9023/"})
    assert creds.endpoint == "http://127.0.0.1:9023"
    assert creds.fileio_properties() == {GCS_ENDPOINT: "http://127.0.0.1:9023"}
    assert creds.delta_options() is None
    assert StorageCredentials("gs", gcs_token="t", gcs_project="p").fileio_properties() == {
        "obslake.gcs.token": "t", "obslake.gcs.project": "p"}
    assert StorageCredentials.from_env("file:///tmp/x/", {}).fileio_properties() == {}
    assert emulator_url("https://emu:1/") == "https://emu:1"


def test_unknown_scheme_and_secrets_kept_out_of_repr():
    with pytest.raises(ConfigError, match="ftp"):
        StorageCredentials("ftp")
    text = repr(StorageCredentials("s3", access_key_id="AKIA", secret_access_key="s3cr3t", session_token="tok",
                                   gcs_token="gtok"))
    assert "s3cr3t" not in text and "tok" not in text.replace("AKIA", "")


_value = st.none() | st.text(min_size=1, max_size=20)


@given(endpoint=_value, region=st.text(min_size=1, max_size=12), key=_value, secret=_value, token=_value)
def test_s3_fileio_properties_round_trip(endpoint, region, key, secret, token):
    creds = StorageCredentials("s3", endpoint=endpoint, region=region, access_key_id=key, secret_access_key=secret,
                               session_token=token)
    assert StorageCredentials.from_fileio_properties("s3", creds.fileio_properties()) == creds


@given(endpoint=_value, token=_value, project=_value)
def test_gcs_fileio_properties_round_trip(endpoint, token, project):
    creds = StorageCredentials("gs", endpoint=endpoint, gcs_token=None if endpoint else token,
                               gcs_project=None if endpoint else project)
    assert StorageCredentials.from_fileio_properties("gs", creds.fileio_properties()) == creds


def test_clients_reach_the_local_servers(moto_server, s3_bucket, gcs_server, gcs_bucket):
    s3 = StorageCredentials("s3", endpoint=moto_server, access_key_id="testing", secret_access_key="testing")
    assert s3_bucket in [b["Name"] for b in s3.s3_client().list_buckets()["Buckets"]]
    gcs = StorageCredentials.from_env("gs", {"STORAGE_EMULATOR_HOST": gcs_server})
    assert gcs.gcs_client().bucket(gcs_bucket).exists()
