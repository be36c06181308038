"""The obslake page (plugin.py): registered as an Airflow plugin, protected, every value escaped.

The page in a real browser against a real api-server: tests/deployed/test_deployed_airflow.py."""

from __future__ import annotations

import datetime as dt


def test_the_plugin_registers_the_app_and_the_nav_entry():
    from airflow import plugins_manager

    from obslake.plugin import ObslakePlugin

    assert [a["url_prefix"] for a in ObslakePlugin.fastapi_apps] == ["/obslake"]
    assert ObslakePlugin.external_views[0]["href"] == "/obslake/"
    names = [p.name for p in plugins_manager._get_plugins()[0]] if hasattr(plugins_manager, "_get_plugins") else None
    if names is not None:  # (the loader's private entry; the CLI check below is the public one)
        assert "obslake" in names


def test_every_route_refuses_a_request_without_a_session():
    from fastapi.testclient import TestClient

    from obslake.plugin import create_app

    client = TestClient(create_app())
    for path in ("/", "/jobs/x", "/api/status"):
        assert client.get(path).status_code == 401, path


def test_hostile_file_names_and_errors_are_shown_as_text_not_markup():
    from obslake.plugin import _connectors_html, _jobs_html

    evil = "<script>alert(1)</script>"
    job = {"job": "j", "source": f"s3://b/{evil}/", "table": "ns.t", "status": "active", "dag_id": "obslake_import__j",
           "files": {"pending": 0, "succeeded": 1, "failed": 1}, "rows": 10, "last_import": dt.datetime.now(dt.UTC),
           "latest_errors": [{"file": f"b/{evil}.csv", "code": "X", "status": "failed", "error": f"row 2 {evil}"}]}
    out = _jobs_html([job])
    assert evil not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<details open>" in out  # the newest error is shown without a click
    conn = {"name": "c", "dag_id": "obslake_fabric__c", "status": "active", "source": "lake", "storage": "s3://b",
            "projects": [{"project": evil, "error": evil}]}
    assert evil not in _connectors_html([conn])
