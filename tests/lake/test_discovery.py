"""Which files are new (lake/discovery.py): listing, format filter, ledger "done" rule, order and the per-run cap.

Against real stores: a local directory (file mtimes set exactly, for the order) and the moto S3 server
(folder placeholder objects); the ledger is the SQLite one of the ``lake`` fixture.
"""

from __future__ import annotations

import os

import pytest

from obslake.storage import open_store

T = 1_700_000_000  # a fixed epoch second for file mtimes


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    store, prefix = open_store(f"file://{root}/")
    assert prefix == ""
    return store, root


def _put(root, key: str, mtime: int, body: bytes = b"x") -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    os.utime(path, (mtime, mtime))


def _keys(found):
    return [o.key for o in found]


def test_lists_recursively_oldest_first_keeping_only_supported_formats(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    _put(root, "2024/05/c.parquet", T + 30)
    _put(root, "a.csv", T + 20)
    _put(root, "2024/b.avro", T + 10)
    _put(root, "x/y/z/d.arrow", T + 40)
    _put(root, "e.csv.gz", T + 50)
    _put(root, "notes.txt", T)  # not a data format
    _put(root, "f.parquet.gz", T)  # only CSV may be gzipped
    _put(root, "README", T)
    job = make_job(store.uri(""))
    new, total = find_new_files(job, store, "", lake.ledger)
    assert _keys(new) == ["2024/b.avro", "a.csv", "2024/05/c.parquet", "x/y/z/d.arrow", "e.csv.gz"]
    assert total == 5
    assert all(o.bucket == store.bucket and o.size == 1 and o.etag for o in new)


def test_same_mtime_is_ordered_by_key_and_the_prefix_limits_the_listing(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    for key in ("in/b.csv", "in/a.csv", "in/sub/c.csv", "out/d.csv", "inbox/e.csv"):
        _put(root, key, T)
    job = make_job(store.uri(""))
    assert _keys(find_new_files(job, store, "in/", lake.ledger)[0]) == ["in/a.csv", "in/b.csv", "in/sub/c.csv"]


def test_the_jobs_formats_restrict_what_is_offered(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    for i, key in enumerate(("a.parquet", "b.csv", "c.avro", "d.ARROW", "e.PARQUET")):
        _put(root, key, T + i)
    job = make_job(store.uri(""), formats=["parquet", "arrow"])
    assert _keys(find_new_files(job, store, "", lake.ledger)[0]) == ["a.parquet", "d.ARROW", "e.PARQUET"]


def test_at_most_max_files_per_run_are_offered_and_the_rest_wait(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    for i in range(7):
        _put(root, f"f{i}.csv", T + 100 - i)  # f6 is the oldest
    job = make_job(store.uri(""), max_files_per_run=3)
    first, total = find_new_files(job, store, "", lake.ledger)
    assert (_keys(first), total) == (["f6.csv", "f5.csv", "f4.csv"], 7)
    for info in first:
        lake.ledger.mark_succeeded(job.name, info, rows=1, table_name="t", snapshot_id=1)
    second, total = find_new_files(job, store, "", lake.ledger)
    assert (_keys(second), total) == (["f3.csv", "f2.csv", "f1.csv"], 4)


def test_the_ledger_decides_what_is_done(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    for i, key in enumerate(("ok.csv", "bad.csv", "died.csv", "retrying.csv", "fresh.csv")):
        _put(root, key, T + i)
    job = make_job(store.uri(""))
    ledger = lake.ledger
    infos = {o.key: o for o in find_new_files(job, store, "", ledger)[0]}
    fp = job.schema_.fingerprint()
    ledger.mark_succeeded(job.name, infos["ok.csv"], rows=3, table_name="t", snapshot_id=1, fingerprint=fp)
    ledger.mark_failed(job.name, infos["bad.csv"], error="[TYPE_MISMATCH]", fingerprint=fp, code="TYPE_MISMATCH")
    ledger.mark_pending(job.name, infos["died.csv"])  # a run that died mid-import
    ledger.mark_retry(job.name, infos["retrying.csv"], error="timeout")
    assert _keys(find_new_files(job, store, "", ledger)[0]) == ["died.csv", "retrying.csv", "fresh.csv"]

    # another job watching the same files has its own ledger rows
    other = make_job(store.uri(""), name="other_job")
    assert len(find_new_files(other, store, "", ledger)[0]) == 5

    # "Fix Schema": a changed mapping offers the failed file again, never the imported one
    fixed = make_job(
        store.uri(""), schema={**job.model_dump(by_alias=True, mode="json")["schema"], "exclude": ["unused_column"]}
    )
    assert fixed.schema_.fingerprint() != fp
    assert _keys(find_new_files(fixed, store, "", ledger)[0]) == ["bad.csv", "died.csv", "retrying.csv", "fresh.csv"]


def test_a_rewritten_file_is_a_new_version(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, root = local
    _put(root, "day.csv", T)
    job = make_job(store.uri(""))
    [info] = find_new_files(job, store, "", lake.ledger)[0]
    lake.ledger.mark_succeeded(job.name, info, rows=1, table_name="t", snapshot_id=1)
    assert find_new_files(job, store, "", lake.ledger) == ([], 0)
    _put(root, "day.csv", T + 60, b"xy")  # replaced: new size and mtime, so a new version
    [again] = find_new_files(job, store, "", lake.ledger)[0]
    assert again.key == "day.csv" and again.etag != info.etag and again.size == 2


def test_s3_folder_placeholders_are_skipped_but_empty_files_are_offered(lake, s3_client, s3_bucket, make_job):
    from obslake.lake.discovery import find_new_files

    store, prefix = open_store(f"s3://{s3_bucket}/in/", s3_client=s3_client)
    for key, body in (
        ("in/", b""),
        ("in/2024/", b""),
        ("in/2024/a.parquet", b"PAR1"),
        ("in/empty.csv", b""),
        ("in/2024/notes.md", b"hi"),
        ("other/b.csv", b"1"),
    ):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    job = make_job(f"s3://{s3_bucket}/in/")
    new, total = find_new_files(job, store, prefix, lake.ledger)
    # an empty data file is offered (validation reports FILE_EMPTY); a "folder" object is not a file
    assert sorted(_keys(new)) == ["in/2024/a.parquet", "in/empty.csv"] and total == 2
    assert {o.bucket for o in new} == {s3_bucket}
    assert all(o.etag and '"' not in o.etag for o in new)


def test_an_empty_or_missing_prefix_offers_nothing(lake, local, make_job):
    from obslake.lake.discovery import find_new_files

    store, _ = local
    job = make_job(store.uri(""))
    assert find_new_files(job, store, "", lake.ledger) == ([], 0)
    assert find_new_files(job, store, "no/such/dir/", lake.ledger) == ([], 0)
