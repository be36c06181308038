"""PhoenixSource pieces that need no Phoenix server: URIs and the annotation fingerprints of the cursor."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from obslake.exceptions import ConfigError, TransientError
from obslake.fabric.phoenix import SEEN_CAP, PhoenixSource, _Ann, _Seen, read_only_url

T = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ann(i: int, at: dt.datetime) -> _Ann:
    return _Ann("span_annotations", i, i, 1, at, fingerprint=10_000 + i)


def test_read_only_urls():
    url = read_only_url("sqlite:////data/phoenix.db")
    assert url.database == "file:/data/phoenix.db" and dict(url.query) == {"mode": "ro", "uri": "true"}
    url = read_only_url("sqlite:///file:/data/phoenix.db?mode=rw&uri=true")
    assert url.database == "file:/data/phoenix.db" and url.query["mode"] == "ro"
    assert read_only_url("postgresql://u:p@127.0.0.1/phoenix").database == "phoenix"
    for bad in ("mysql://u@127.0.0.1/phoenix", "sqlite://", "sqlite:///:memory:", "not a uri"):
        with pytest.raises(ConfigError):
            read_only_url(bad)


def test_missing_database_is_transient(tmp_path):
    src = PhoenixSource(f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(TransientError):
        src.list_projects()
    assert not (tmp_path / "absent.db").exists()  # read only: never created


def test_seen_covers_the_whole_window_when_small():
    anns = [ann(1, T - dt.timedelta(seconds=20)), ann(2, T - dt.timedelta(seconds=5)), ann(3, T)]
    seen = _Seen.of(anns, T - dt.timedelta(seconds=10), T)
    assert seen.since == T - dt.timedelta(seconds=10) and seen.until == T
    assert [seen.covers(a) for a in anns] == [False, True, True]  # the first is outside the window
    again = _Seen.from_json(json.loads(json.dumps(seen.to_json())))
    assert [again.covers(a) for a in anns] == [False, True, True]
    changed = _Ann("span_annotations", 2, 2, 1, T - dt.timedelta(seconds=5), fingerprint=1)  # new label
    assert not again.covers(changed)


def test_seen_keeps_whole_seconds_up_to_the_cap():
    newest = [ann(i, T) for i in range(100)]
    older = [ann(100 + i, T - dt.timedelta(seconds=1)) for i in range(100)]
    seen = _Seen.of(newest + older, T - dt.timedelta(seconds=60), T)
    assert seen.since == T and len(seen.fingerprints) == 100  # the older second would pass the cap
    assert all(seen.covers(a) for a in newest) and not any(seen.covers(a) for a in older)
    crowd = [ann(i, T) for i in range(SEEN_CAP + 1)]
    seen = _Seen.of(crowd, T - dt.timedelta(seconds=60), T)
    assert not any(seen.covers(a) for a in crowd)  # one second over the cap: re-read, never skipped
    assert len(json.dumps(_Seen.of(newest, T - dt.timedelta(seconds=60), T).to_json())) < 1_500
    assert not _Seen.from_json({"garbage": 1}).covers(newest[0])
