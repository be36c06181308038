"""The three ObjectStore backends against real (local, loopback) servers: moto S3, the GCS emulator and
a temporary directory.

Emulator limits (gcp-storage-emulator, checked in its source): ``objects.list`` ignores ``maxResults``
and ``pageToken`` (everything comes back in one page), and object GET/download ignore ``generation``
and ``ifGenerationMatch``. So GCS pagination is only exercised on the client side, and a GCS object
rewritten *during* a read cannot be detected against the emulator (the stale-etag check at ``open``
still works: the store compares the generation the server returns with the one asked for).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import io
import json
import math
import os
import random
import uuid
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake_fixtures import free_port
from obslake.exceptions import (
    ObjectChangedError,
    StorageAccessError,
    StorageUnavailableError,
    UnsupportedURIError,
)
from obslake.storage import ObjectInfo, ObjectReader, ObjectStore, open_store, parse_uri
from obslake.storage.gcs import GCSStore, make_gcs_client, map_gcs_error
from obslake.storage.local import TAGS_FILE, TEMP_PREFIX, LocalStore
from obslake.storage.s3 import S3Store, make_s3_client, map_s3_error

BACKENDS = ("s3", "gs", "file")

MANY = 1050  # more than one default page (1000)


def unique_bucket_name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path) -> Callable[..., ObjectStore]:
    """Factory: a store on a fresh bucket (or directory) of the backend asked for."""

    def make(backend: str, **kwargs: Any) -> ObjectStore:
        if backend == "s3":
            bucket, client = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_client")
            return S3Store(bucket, client, **kwargs)
        if backend == "gs":
            bucket, client = request.getfixturevalue("gcs_bucket"), request.getfixturevalue("gcs_client")
            return GCSStore(bucket, client, **kwargs)
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
        return LocalStore(str(root), **kwargs)

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, make_store: Callable[..., ObjectStore]) -> ObjectStore:
    return make_store(backend)


def set_tags(store: ObjectStore, tags: dict[str, str]) -> None:
    """Tag the store's bucket the backend's native way (not through obslake)."""
    if isinstance(store, S3Store):
        store.client.put_bucket_tagging(
            Bucket=store.bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}
        )
    elif isinstance(store, GCSStore):
        bucket = store.client.get_bucket(store.bucket)
        bucket.labels = tags
        bucket.patch()
    else:
        with open(os.path.join(store.root, TAGS_FILE), "w") as fh:
            json.dump(tags, fh)


def populate(store: ObjectStore, keys: list[str], data: bytes = b"x") -> None:
    """Write ``keys`` through the backend's native client, in parallel where it helps."""
    if isinstance(store, S3Store):
        def put(key: str) -> None:
            store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
    elif isinstance(store, GCSStore):
        bucket = store.client.bucket(store.bucket)

        def put(key: str) -> None:
            bucket.blob(key).upload_from_string(data)
    else:
        def put(key: str) -> None:
            store.write(key, data)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, keys))


MANY_KEYS = sorted(
    [f"many/{i // 100:02d}/{i:05d}.json" for i in range(MANY)] + ["other/a.json", "manx.json"]
)


@pytest.fixture(scope="module")
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ObjectStore]]:
    """Per backend, once per module: a bucket holding :data:`MANY_KEYS` (1,052 objects)."""
    cache: dict[str, ObjectStore] = {}

    def get(backend: str) -> ObjectStore:
        if backend not in cache:
            if backend == "s3":
                endpoint = request.getfixturevalue("moto_server")
                client = make_s3_client(endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
                name = unique_bucket_name("obslake-many")
                client.create_bucket(Bucket=name)
                store: ObjectStore = S3Store(name, client)
            elif backend == "gs":
                client = make_gcs_client(api_endpoint=request.getfixturevalue("gcs_server"))
                name = unique_bucket_name("obslake-many")
                client.create_bucket(name)
                store = GCSStore(name, client)
            else:
                store = LocalStore(str(tmp_path_factory.mktemp("many")))
            populate(store, MANY_KEYS)
            cache[backend] = store
        return cache[backend]

    yield get


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


def test_stores_satisfy_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    assert store.scheme in ("s3", "gs", "file")


def test_nested_prefixes_listed_recursively(store: ObjectStore) -> None:
    keys = ["a/b/c/1.csv", "a/b/2.csv", "a/3.csv", "a.csv", "b/4.csv", "ab/5.csv"]
    written = {key: store.write(key, key.encode()) for key in keys}

    everything = list(store.list())
    assert [i.key for i in everything] == sorted(keys)
    assert [i.key for i in store.list("a/")] == ["a/3.csv", "a/b/2.csv", "a/b/c/1.csv"]
    assert [i.key for i in store.list("a/b/")] == ["a/b/2.csv", "a/b/c/1.csv"]
    assert [i.key for i in store.list("a")] == ["a.csv", "a/3.csv", "a/b/2.csv", "a/b/c/1.csv", "ab/5.csv"]
    assert list(store.list("nothing/here/")) == []

    for info in everything:
        assert info.bucket == store.bucket
        assert info.size == len(info.key)
        assert info.etag and '"' not in info.etag
        assert info.mtime.tzinfo is not None and info.mtime.utcoffset() == dt.timedelta(0)
        assert abs(info.mtime - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
        assert info == written[info.key] == store.head(info.key)
        assert ObjectInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


@pytest.mark.slow
@pytest.mark.parametrize("page_size", [100, 1000])
def test_many_objects_listed_across_pages(backend: str, page_size: int, populated) -> None:
    store = populated(backend)
    calls: list[dict] = []
    if isinstance(store, S3Store):
        # A client of its own, to count the ListObjectsV2 requests the paginator makes.
        client = make_s3_client(store.client.meta.endpoint_url, aws_access_key_id="testing",
                                aws_secret_access_key="testing")
        client.meta.events.register("before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params))
        store = S3Store(store.bucket, client)

    listed = [info.key for info in store.list("many/", page_size=page_size)]
    expected = [k for k in MANY_KEYS if k.startswith("many/")]
    assert len(listed) == MANY
    assert len(set(listed)) == MANY  # nothing repeated
    assert listed == expected  # nothing missing, in key order
    if isinstance(store, S3Store):  # really paginated, page_size per request
        assert len(calls) == math.ceil(MANY / page_size)
        assert {c["query_string"]["max-keys"] for c in calls} == {page_size}
        assert all("delimiter" not in c["query_string"] for c in calls)
    assert [i.key for i in store.list(page_size=page_size)] == MANY_KEYS


@pytest.mark.slow
def test_default_page_size_lists_everything(backend: str, populated) -> None:
    store = populated(backend)
    listed = list(store.list())
    assert [i.key for i in listed] == MANY_KEYS
    assert len({(i.key, i.etag) for i in listed}) == len(MANY_KEYS)


# --------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------


def test_etag_changes_when_rewritten(store: ObjectStore) -> None:
    first = store.write("v/file.json", b'{"v": 1}')
    second = store.write("v/file.json", b'{"v": 2}')  # same size
    assert first.etag != second.etag
    assert store.head("v/file.json").etag == second.etag
    [listed] = store.list("v/")
    assert listed.etag == second.etag
    with store.open("v/file.json", etag=second.etag) as f:
        assert f.read() == b'{"v": 2}'


def test_open_with_stale_etag_raises(store: ObjectStore) -> None:
    old = store.write("v/file.json", b"old contents")
    store.write("v/file.json", b"new contents")
    with pytest.raises(ObjectChangedError) as err:
        store.open("v/file.json", etag=old.etag)
    assert store.uri("v/file.json") in str(err.value)


def test_open_with_etag_of_deleted_object_raises(store: ObjectStore) -> None:
    info = store.write("gone.json", b"{}")
    store.delete("gone.json")
    store.delete("gone.json")  # idempotent
    with pytest.raises(ObjectChangedError):
        store.open("gone.json", etag=info.etag)
    with pytest.raises(StorageAccessError) as err:
        store.open("gone.json")
    assert store.uri("gone.json") in str(err.value)
    assert list(store.list()) == []


def test_s3_rewrite_during_read_is_detected(make_store) -> None:
    store = make_store("s3", buffer_size=1024)
    store.write("k.bin", b"a" * 4096)
    with store.open("k.bin") as f:  # pins the current etag
        assert f.read(10) == b"a" * 10
        store.write("k.bin", b"b" * 4096)
        f.seek(2048)
        with pytest.raises(ObjectChangedError) as err:
            f.read(10)
    assert "s3://" in str(err.value) and "k.bin" in str(err.value)


def test_local_reader_keeps_its_version_across_rewrite(make_store) -> None:
    store = make_store("file")
    info = store.write("k.bin", b"a" * 4096)
    with store.open("k.bin", etag=info.etag) as f:
        store.write("k.bin", b"b" * 4096)
        assert f.read() == b"a" * 4096  # atomic replace: the open file is the old inode
    assert not [n for n in os.listdir(store.root) if n.startswith(TEMP_PREFIX)]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def test_seek_and_read_ranges(backend: str, make_store) -> None:
    store = make_store(backend, buffer_size=64 * 1024)  # small buffer: reads cross its boundary
    data = random.Random(7).randbytes(300_000)
    info = store.write("blob.bin", data)

    with store.open("blob.bin", etag=info.etag) as f:
        assert isinstance(f, io.BufferedReader) and isinstance(f, ObjectReader)
        assert f.readable() and f.seekable() and not f.writable()
        assert f.size == len(data) == info.size
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        assert f.seek(60_000) == 60_000
        assert f.read(10_000) == data[60_000:70_000]  # crosses the 64 KiB buffer boundary
        assert f.seek(-5, io.SEEK_CUR) == 69_995
        assert f.read(5) == data[69_995:70_000]
        assert f.seek(-100, io.SEEK_END) == len(data) - 100
        assert f.read() == data[-100:]
        assert f.read() == b""
        assert f.seek(len(data) + 10) == len(data) + 10
        assert f.read(10) == b""
        f.seek(100_000)
        assert f.read(150_000) == data[100_000:250_000]  # larger than the buffer
        buf = bytearray(1000)
        f.seek(1)
        assert f.readinto(buf) == 1000 and bytes(buf) == data[1:1001]
        with pytest.raises((ValueError, OSError)):
            f.seek(-1)
        f.seek(0)
        assert f.read() == data
    assert f.closed


def test_empty_object(store: ObjectStore) -> None:
    info = store.write("empty.bin", b"")
    assert info.size == 0
    with store.open("empty.bin", etag=info.etag) as f:
        assert f.size == 0
        assert f.read() == b""
        assert f.seek(0, io.SEEK_END) == 0


def test_parquet_read_through_open(store: ObjectStore) -> None:
    n = 20_000
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "score": pa.array([i / 7 for i in range(n)], pa.float64()),
            "label": pa.array([f"row-{i % 97}" for i in range(n)], pa.string()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=5_000)
    info = store.write("data/part-0.parquet", sink.getvalue())

    with store.open("data/part-0.parquet", etag=info.etag) as f:
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_rows == n
        assert pf.metadata.num_row_groups == 4
        assert pf.read_row_group(2, columns=["id"]).column("id").to_pylist() == list(range(10_000, 15_000))
        assert pf.read().equals(table)
    with store.open("data/part-0.parquet") as f:
        assert pq.read_table(f, columns=["label"]).column("label").equals(table.column("label"))


# --------------------------------------------------------------------------------------------------
# Tags and labels
# --------------------------------------------------------------------------------------------------


def test_bucket_tags_read_back(store: ObjectStore) -> None:
    tags = {"obslake-ingestion-key": "ctr-prod-v1", "team": "ml"}
    set_tags(store, tags)
    assert store.get_bucket_tags() == tags


def test_missing_tags_are_empty(store: ObjectStore) -> None:
    assert store.get_bucket_tags() == {}


def test_local_tags_file_not_listed(make_store) -> None:
    store = make_store("file")
    set_tags(store, {"k": "v"})
    store.write("x.json", b"{}")
    assert [i.key for i in store.list()] == ["x.json"]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def missing_bucket_store(backend: str, request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    name = unique_bucket_name("obslake-missing")
    if backend == "s3":
        return S3Store(name, request.getfixturevalue("s3_client"))
    if backend == "gs":
        return GCSStore(name, request.getfixturevalue("gcs_client"))
    return LocalStore(str(tmp_path / "does-not-exist"))


PERMISSIONS = {
    "s3": {"list": "s3:ListBucket", "head": "s3:GetObject", "tags": "s3:GetBucketTagging"},
    "gs": {"list": "storage.objects.list", "head": "storage.objects.get", "tags": "storage.buckets.get"},
    "file": {},
}


def test_nonexistent_bucket_is_access_error(backend: str, missing_bucket_store: ObjectStore) -> None:
    store = missing_bucket_store
    perms = PERMISSIONS[backend]
    calls = {
        "list": lambda: list(store.list("in/")),
        "head": lambda: store.head("in/x.csv"),
        "open": lambda: store.open("in/x.csv"),
        "tags": store.get_bucket_tags,
    }
    for op, call in calls.items():
        with pytest.raises(StorageAccessError) as err:
            call()
        message = str(err.value)
        assert store.uri() in message, (op, message)
        if op in perms:
            assert perms[op] in message, (op, message)
    if backend == "s3":
        with pytest.raises(StorageAccessError, match="NoSuchBucket"):
            list(store.list())


def test_missing_key_is_access_error(store: ObjectStore) -> None:
    with pytest.raises(StorageAccessError) as err:
        store.head("no/such/key.csv")
    assert store.uri("no/such/key.csv") in str(err.value)


@pytest.mark.parametrize("backend", ["s3", "gs"])
def test_unreachable_endpoint_is_unavailable(backend: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if backend == "s3":
        client = make_s3_client(endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                                connect_timeout=1, read_timeout=1, max_attempts=1)
        store: ObjectStore = S3Store("some-bucket", client)
    else:
        store = GCSStore("some-bucket", make_gcs_client(api_endpoint=endpoint), retry=None, timeout=1)
    for call in (lambda: list(store.list()), lambda: store.head("k"), store.get_bucket_tags):
        with pytest.raises(StorageUnavailableError) as err:
            call()
        assert store.uri() in str(err.value)


def _client_error(code: str, status: int, op: str = "GetObject"):
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@pytest.mark.parametrize(
    ("code", "status", "etag", "expected"),
    [
        ("AccessDenied", 403, None, StorageAccessError),
        ("403", 403, None, StorageAccessError),
        ("NoSuchBucket", 404, None, StorageAccessError),
        ("NoSuchKey", 404, None, StorageAccessError),
        ("NoSuchKey", 404, "abc", ObjectChangedError),
        ("PreconditionFailed", 412, "abc", ObjectChangedError),
        ("412", 412, "abc", ObjectChangedError),
        ("SlowDown", 503, None, StorageUnavailableError),
        ("InternalError", 500, None, StorageUnavailableError),
        ("ServiceUnavailable", 503, None, StorageUnavailableError),
        ("Throttling", 400, None, StorageUnavailableError),
        ("RequestTimeout", 400, None, StorageUnavailableError),
    ],
)
def test_s3_error_mapping(code: str, status: int, etag: str | None, expected: type) -> None:
    mapped = map_s3_error(_client_error(code, status), "s3://bkt/k.csv", "s3:GetObject", etag=etag)
    assert isinstance(mapped, expected)
    assert "s3://bkt/k.csv" in str(mapped)
    if code in ("AccessDenied", "403"):
        assert "s3:GetObject" in str(mapped)


def test_s3_transport_errors_are_unavailable() -> None:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    for exc in (
        EndpointConnectionError(endpoint_url="http://x"),
        ConnectTimeoutError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
    ):
        assert isinstance(map_s3_error(exc, "s3://b/k", "s3:GetObject"), StorageUnavailableError)
    assert map_s3_error(KeyError("x"), "s3://b/k", "s3:GetObject") is None


def test_gcs_error_mapping() -> None:
    from google.api_core import exceptions as gexc

    cases = [
        (gexc.Forbidden("denied"), False, StorageAccessError),
        (gexc.Unauthorized("who"), False, StorageAccessError),
        (gexc.NotFound("nope"), False, StorageAccessError),
        (gexc.NotFound("gone"), True, ObjectChangedError),
        (gexc.PreconditionFailed("changed"), True, ObjectChangedError),
        (gexc.TooManyRequests("slow down"), False, StorageUnavailableError),
        (gexc.ServiceUnavailable("down"), False, StorageUnavailableError),
        (gexc.InternalServerError("oops"), False, StorageUnavailableError),
    ]
    for exc, pinned, expected in cases:
        mapped = map_gcs_error(exc, "gs://bkt/k.csv", "storage.objects.get", pinned=pinned)
        assert isinstance(mapped, expected), exc
        assert "gs://bkt/k.csv" in str(mapped)
        if expected is StorageAccessError:
            assert "storage.objects.get" in str(mapped)


def test_local_key_cannot_escape_root(make_store) -> None:
    store = make_store("file")
    for key in ("../outside.txt", "/abs.txt", "a//b.txt"):
        with pytest.raises(StorageAccessError):
            store.write(key, b"x")
    assert list(store.list("../")) == []


# --------------------------------------------------------------------------------------------------
# open_store
# --------------------------------------------------------------------------------------------------


def test_open_store_with_clients(s3_client, s3_bucket, gcs_client, gcs_bucket) -> None:
    store, prefix = open_store(f"s3://{s3_bucket}/models/ctr/v1/", s3_client=s3_client)
    assert isinstance(store, S3Store) and store.bucket == s3_bucket and prefix == "models/ctr/v1/"
    store.write(prefix + "a.csv", b"x")
    assert [i.key for i in store.list(prefix)] == ["models/ctr/v1/a.csv"]
    assert store.uri("k") == f"s3://{s3_bucket}/k"

    store, prefix = open_store(f"gs://{gcs_bucket}/p/", gcs_client=gcs_client)
    assert isinstance(store, GCSStore) and store.bucket == gcs_bucket and prefix == "p/"
    assert store.uri("k") == f"gs://{gcs_bucket}/k"


def test_open_store_from_environment(monkeypatch, moto_server, s3_client, s3_bucket, gcs_server,
                                     gcs_client, gcs_bucket) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="in/a.csv", Body=b"1")
    gcs_client.bucket(gcs_bucket).blob("in/b.csv").upload_from_string(b"2")
    monkeypatch.setenv("OBSLAKE_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.removeprefix("http://"))

    store, prefix = open_store(f"s3://{s3_bucket}/in/")
    assert [i.key for i in store.list(prefix)] == ["in/a.csv"]
    store, prefix = open_store(f"gs://{gcs_bucket}/in/")
    assert [i.key for i in store.list(prefix)] == ["in/b.csv"]


def test_open_store_local(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(b"1")
    store, prefix = open_store(f"file://{tmp_path}/in/")
    assert isinstance(store, LocalStore) and store.bucket == "" and prefix == ""
    assert [i.key for i in store.list(prefix)] == ["a.csv"]
    assert store.uri("a.csv") == f"file://{tmp_path}/in/a.csv"
    assert parse_uri(store.uri("a.csv")).prefix == f"{tmp_path}/in/a.csv"

    store, prefix = open_store(f"file://{tmp_path}/in/a")
    assert store.root == f"{tmp_path}/in" and prefix == "a"
    assert [i.key for i in store.list(prefix)] == ["a.csv"]

    with pytest.raises(UnsupportedURIError):
        open_store("ftp://host/path/")


# --------------------------------------------------------------------------------------------------
# Path attacks: symbolic links out of a file:// root, control characters in keys (issue #10)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def linked_root(tmp_path):
    """A root holding a regular file, links out of the root (to a tmp file, /etc/hostname, a directory
    outside) and links that stay inside it."""
    root = tmp_path / "root"
    (root / "in" / "sub").mkdir(parents=True)
    (root / "in" / "ok.csv").write_bytes(b"a\n1\n")
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "secret.csv").write_bytes(b"secret\n42\n")
    (outside / "d" / "deep.csv").write_bytes(b"deep\n1\n")
    (root / "in" / "to_tmp.csv").symlink_to(outside / "secret.csv")
    if os.path.exists("/etc/hostname"):
        (root / "in" / "hostname.csv").symlink_to("/etc/hostname")
    (root / "in" / "relative_out.csv").symlink_to("../../outside/secret.csv")
    (root / "in" / "dir_out").symlink_to(outside / "d", target_is_directory=True)
    (root / "in" / "sub" / "inside.csv").symlink_to(root / "in" / "ok.csv")
    (root / "in" / "dir_in").symlink_to(root / "in" / "sub", target_is_directory=True)
    return root, outside


OUT_KEYS = ["in/to_tmp.csv", "in/hostname.csv", "in/relative_out.csv", "in/dir_out/deep.csv"]


def test_local_list_skips_links_out_of_the_root(linked_root, caplog) -> None:
    root, _ = linked_root
    store = LocalStore(str(root))
    with caplog.at_level("WARNING", logger="obslake.storage.local"):
        keys = [i.key for i in store.list()]
    assert keys == ["in/ok.csv", "in/sub/inside.csv"]  # a link that stays inside the root works
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "in/to_tmp.csv" in skipped and "outside the root" in skipped
    # a prefix naming a linked directory outside does not lead out either
    assert list(store.list("in/dir_out/")) == []
    assert [i.key for i in store.list("in/dir_in/")] == ["in/dir_in/inside.csv"]
    # nor does a root reached through its own symlink change anything
    alias = root.parent / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert [i.key for i in LocalStore(str(alias)).list("in/")] == ["in/ok.csv", "in/sub/inside.csv"]


@pytest.mark.parametrize("key", OUT_KEYS)
def test_local_head_and_open_refuse_links_out_of_the_root(linked_root, key) -> None:
    root, _ = linked_root
    if key == "in/hostname.csv" and not (root / "in" / "hostname.csv").is_symlink():
        pytest.skip("no /etc/hostname here")
    store = LocalStore(str(root))
    for call in (lambda: store.head(key), lambda: store.open(key)):
        with pytest.raises(StorageAccessError, match="outside the root") as err:
            call()
        assert store.uri(key) in str(err.value)


def test_local_open_of_a_link_inside_the_root_reads_the_target(linked_root) -> None:
    root, _ = linked_root
    store = LocalStore(str(root))
    info = store.head("in/sub/inside.csv")
    with store.open("in/sub/inside.csv", etag=info.etag) as f:
        assert f.read() == b"a\n1\n"


def test_local_open_rechecks_the_descriptor(linked_root, monkeypatch) -> None:
    """A link swapped in between the check and the open is caught on the open descriptor."""
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("no /proc")
    root, outside = linked_root
    store = LocalStore(str(root))
    # as if in/dir_out had been a real directory when checked, and became a link out before the open
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: os.path.abspath(p))
    with pytest.raises(StorageAccessError, match="outside the root") as err:
        store.open("in/dir_out/deep.csv")
    assert str(outside / "d" / "deep.csv") in str(err.value)
    with pytest.raises(StorageAccessError):  # the last component: O_NOFOLLOW
        store.open("in/to_tmp.csv")


def test_local_write_and_delete_do_not_follow_links_out(linked_root) -> None:
    root, outside = linked_root
    store = LocalStore(str(root))
    with pytest.raises(StorageAccessError, match="outside the root"):
        store.write("in/dir_out/new.csv", b"x")
    assert not (outside / "d" / "new.csv").exists()
    with pytest.raises(StorageAccessError, match="outside the root"):
        store.delete("in/dir_out/deep.csv")
    assert (outside / "d" / "deep.csv").exists()
    store.delete("in/to_tmp.csv")  # deleting a link removes the link, never its target
    assert (outside / "secret.csv").exists() and not (root / "in" / "to_tmp.csv").exists()


def test_local_tags_file_may_not_link_out(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "other-tags.json").write_text('{"arize-ingestion-key": "stolen"}')
    (root / TAGS_FILE).symlink_to(tmp_path / "other-tags.json")
    with pytest.raises(StorageAccessError, match="outside the root"):
        LocalStore(str(root)).get_bucket_tags()


def test_control_characters_in_keys_are_escaped_in_messages(tmp_path, s3_client, s3_bucket, caplog) -> None:
    evil = "in/x\nERROR forged log line\x1b[31m.csv"
    local = LocalStore(str(tmp_path))
    info = local.write(evil, b"1")
    assert [i.key for i in local.list("in/")] == [evil]  # the key itself is data, kept as is
    with pytest.raises(ObjectChangedError) as err:
        local.open(evil, etag="1-1")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "x\\nERROR forged" in str(err.value)
    with pytest.raises(StorageAccessError) as err:
        local.head(evil + "-missing")
    assert "\n" not in str(err.value)
    (tmp_path / "in" / "link\nWARNING x.csv").symlink_to("/etc/hostname" if os.path.exists("/etc/hostname") else "/")
    with caplog.at_level("WARNING", logger="obslake.storage.local"):
        list(local.list())
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert info.key == evil

    s3 = S3Store(s3_bucket, s3_client)
    s3_evil = "in/x\u2028ERROR forged log line\x1b[31m.csv"  # moto cannot route a key with a "\n"
    s3_client.put_object(Bucket=s3_bucket, Key=s3_evil, Body=b"1")
    assert [i.key for i in s3.list("in/")] == [s3_evil]
    for call in (lambda: s3.open(s3_evil, etag="0" * 32), lambda: s3.head(s3_evil + "-missing")):
        with pytest.raises((ObjectChangedError, StorageAccessError)) as err:
            call()
        assert "\u2028" not in str(err.value) and "\x1b" not in str(err.value), str(err.value)
        assert "x\\u2028ERROR forged" in str(err.value)
    assert "\n" not in str(map_s3_error(_client_error("NoSuchKey", 404), f"s3://bkt/{evil}", "s3:GetObject"))
    mapped = map_gcs_error(__import__("google.api_core.exceptions", fromlist=["x"]).NotFound("gone"),
                           f"gs://bkt/{evil}", "storage.objects.get")
    assert "\n" not in str(mapped)


def test_check_storage_uri_rules() -> None:
    from obslake.storage.base import bucket_name_problem, check_storage_uri

    assert bucket_name_problem("s3", "my-bucket.v1") is None
    assert bucket_name_problem("gs", "my_bucket") is None and bucket_name_problem("s3", "my_bucket")
    assert bucket_name_problem("gs", ".".join(["a" * 63] * 3)) is None  # 191 characters with dots
    assert bucket_name_problem("gs", "a" * 70)
    for uri in ("file:///", "file://", "file:relative", "s3://..", "gs://..", "file:///a/../b"):
        with pytest.raises(UnsupportedURIError):
            check_storage_uri(uri)
    assert check_storage_uri("file:///data/in/").prefix == "/data/in/"
