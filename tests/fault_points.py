"""Crash points for the kill -9 tests, reached by wrapping the stage functions (nothing in the package).

A worker process calls :func:`install_from_env` before it imports or syncs; ``OBSLAKE_FAULT_AT`` then
names the point where the process dies with SIGKILL, exactly as an OOM kill or a lost worker would:

* ``during-read``: after the first mapped batch of a file went to the data-file writer;
* ``after-write``: every data file of the file written, nothing committed;
* ``after-commit``: the Iceberg commit done, the ledger not yet updated;
* ``batch-after-write``: a batch's files all staged and written, its commit not begun;
* ``batch-after-commit``: a batch committed, no ledger row of it updated yet;
* ``fabric-after-write``: a Data Fabric sync's data files written, nothing committed;
* ``fabric-after-commit``: its annotations committed, its spans (and cursor) not;
* ``fabric-before-publish``: its spans committed, its pointer files and Delta log not yet rewritten.
"""

from __future__ import annotations

import functools
import os
import signal

POINTS = ("during-read", "after-write", "after-commit", "batch-after-write", "batch-after-commit", "fabric-after-write",
          "fabric-after-commit", "fabric-before-publish")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _before(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _die()
        return fn(*args, **kwargs)
    return wrapper


def _after(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        _die()
        return out
    return wrapper


def install(point: str) -> None:
    """Make this process die at ``point`` (one of :data:`POINTS`)."""
    from obslake.fabric.export import ProjectExporter
    from obslake.lake import importer

    if point == "during-read":
        importer.DataFileWriter.add = _after(importer.DataFileWriter.add)
    elif point == "after-write":
        importer._Quarantine.commit = _before(importer._Quarantine.commit)
    elif point == "after-commit":
        importer._commit = _after(importer._commit)
    elif point == "batch-after-write":
        importer._Batch._commit = _before(importer._Batch._commit)
    elif point == "batch-after-commit":
        importer._File.succeeded = _before(importer._File.succeeded)
    elif point == "fabric-after-write":
        ProjectExporter._commit = _before(ProjectExporter._commit)
    elif point == "fabric-after-commit":  # the first commit of a sync: its annotations, not yet its spans
        ProjectExporter._commit = _after(ProjectExporter._commit)
    elif point == "fabric-before-publish":  # the spans committed, latest.metadata.json not yet rewritten
        ProjectExporter.publish = _before(ProjectExporter.publish)
    else:
        raise ValueError(f"unknown fault point {point!r}; one of {POINTS}")


def install_from_env() -> None:
    """:func:`install` the point named by ``OBSLAKE_FAULT_AT``, if any."""
    point = os.environ.get("OBSLAKE_FAULT_AT")
    if point:
        install(point)
