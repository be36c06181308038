"""Domain exceptions.

Every error is either *terminal* (the input or the configuration is wrong: retrying cannot help, the
Airflow wrappers raise ``AirflowFailException``) or *transient* (network, commit conflict, a server
that is down: a normal retry may help). The marker base classes :class:`TerminalError` and
:class:`TransientError` carry that decision; wrappers never inspect messages.
"""

from __future__ import annotations


class ObslakeError(Exception):
    """Base class of every obslake error.

    ``code`` is a stable, documented error code (README "Error codes") where one applies.
    """

    code: str | None = None

    def __init__(self, *args: object, code: str | None = None):
        super().__init__(*args)
        if code is not None:
            self.code = code


class TerminalError(ObslakeError):
    """Retrying will not help: fix the input or the configuration first."""


class TransientError(ObslakeError):
    """A passing fault (network, a busy server, a commit conflict): retry."""


class ConfigError(TerminalError):
    """A job or connector configuration is invalid; the message names the file and the field."""


class UnsupportedURIError(ConfigError):
    """A storage URI has a scheme obslake cannot read (use s3://, gs:// or file://)."""


class BucketOwnershipError(TerminalError):
    """The bucket's ownership tag or label is missing or differs from the job's ingestion key."""


class StorageAccessError(TerminalError):
    """Access to a bucket or object was denied or it does not exist."""


class StorageUnavailableError(TransientError):
    """The object store did not answer or answered with a server error; retry."""


class ObjectChangedError(TransientError):
    """An object changed (new etag/generation) while it was being read; the next poll picks it up."""


class FileFormatError(TerminalError):
    """A file cannot be read in its declared format (corrupt, truncated, empty, wrong encoding).

    ``line`` (CSV, 1-based, header = line 1) and ``column`` locate the failure where it is known.
    """

    line: int | None = None
    column: str | None = None

    def __init__(self, *args: object, code: str | None = None, line: int | None = None, column: str | None = None):
        super().__init__(*args, code=code)
        self.line, self.column = line, column


class SchemaMismatchError(TerminalError):
    """A file's columns or types do not fit the job's model schema; ``column`` names the column where one applies."""

    column: str | None = None

    def __init__(self, *args: object, code: str | None = None, column: str | None = None):
        super().__init__(*args, code=code)
        self.column = column


class CommitConflictError(TransientError):
    """An Iceberg commit lost a race with another writer after all retries; refresh and try again."""


class TraceSourceUnavailableError(TransientError):
    """A trace source's database did not answer (down, unreachable, busy); retry."""


class UnsupportedTraceSourceError(TerminalError):
    """A trace source's database lacks the tables or columns this version reads (wrong database or version)."""


def printable(text: object, limit: int | None = None) -> str:
    """``text`` safe for one log line or message: control characters escaped, optionally shortened.

    Object keys, column names and YAML snippets come from users; a newline or an ANSI escape in them
    must not forge log lines or garble a terminal. ``\\n`` becomes ``\\\\n``, other control characters
    ``\\\\xNN``/``\\\\uNNNN``; with ``limit``, longer text is cut to ``limit`` characters ending in ``...``.
    """
    s = str(text)
    if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in s):
        s = "".join(
            c
            if not (ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029")
            else c.encode("unicode_escape").decode("ascii")
            for c in s
        )
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 3)] + "..."
    return s
