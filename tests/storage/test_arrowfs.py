"""The pyarrow filesystem over obslake's GCS store: only a missing object reads as "not found"."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

from obslake.exceptions import StorageAccessError
from obslake.storage.arrowfs import gcs_filesystem
from obslake.storage.credentials import StorageCredentials


def test_read_write_list_delete_on_the_emulator(gcs_server, gcs_bucket):
    fs = gcs_filesystem(StorageCredentials.from_env("gs", {"STORAGE_EMULATOR_HOST": gcs_server}))
    with fs.open_output_stream(f"{gcs_bucket}/t/a.bin") as out:
        out.write(b"hello")
    [info] = fs.get_file_info([f"{gcs_bucket}/t/a.bin"])
    assert (info.type, info.size) == (pafs.FileType.File, 5)
    with fs.open_input_file(f"{gcs_bucket}/t/a.bin") as f:
        assert f.read() == b"hello"
    assert [i.path for i in fs.get_file_info(pafs.FileSelector(f"{gcs_bucket}/t"))] == [f"{gcs_bucket}/t/a.bin"]
    [missing] = fs.get_file_info([f"{gcs_bucket}/t/none.bin"])
    assert missing.type == pafs.FileType.NotFound
    fs.delete_file(f"{gcs_bucket}/t/a.bin")
    assert fs.get_file_info([f"{gcs_bucket}/t/a.bin"])[0].type == pafs.FileType.NotFound
    with pytest.raises(OSError, match="whole bucket"):
        fs.delete_dir_contents("/", accept_root_dir=True)


@pytest.fixture
def denying_gcs() -> Iterator[str]:
    """A GCS JSON API endpoint on 127.0.0.1 that answers every request 403 (credentials without access)."""

    class Deny(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.get"}})
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_access_denied_is_an_error_never_not_found(denying_gcs):
    """A denied read must not look like a missing file (pyiceberg would then write over it or skip it)."""
    fs = gcs_filesystem(StorageCredentials("gs", endpoint=denying_gcs))
    with pytest.raises(StorageAccessError, match="access denied"):
        fs.get_file_info(["bucket/metadata/v1.metadata.json"])
