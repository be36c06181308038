"""Domain exceptions: every error is terminal or transient by class, codes travel, text is one safe line."""

from __future__ import annotations

import inspect

from hypothesis import given
from hypothesis import strategies as st

from obslake import exceptions
from obslake.exceptions import (
    FileFormatError,
    ObslakeError,
    SchemaMismatchError,
    TerminalError,
    TransientError,
    printable,
)


def test_every_error_is_either_terminal_or_transient():
    classes = [c for _, c in inspect.getmembers(exceptions, inspect.isclass)
               if issubclass(c, ObslakeError) and c not in (ObslakeError, TerminalError, TransientError)]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, TerminalError) != issubclass(cls, TransientError), cls.__name__
        assert cls.__doc__, f"{cls.__name__} needs a one-line docstring saying when it is raised"


def test_code_and_location_travel_with_the_error():
    err = FileFormatError("bad", code="FILE_CORRUPT", line=7, column="score")
    assert (err.code, err.line, err.column, str(err)) == ("FILE_CORRUPT", 7, "score", "bad")
    assert SchemaMismatchError("x").code is None and SchemaMismatchError("x", column="c").column == "c"
    assert ObslakeError("y", code="INTERNAL_ERROR").code == "INTERNAL_ERROR"
    assert ObslakeError.code is None  # an instance's code never leaks into the class


def test_printable_escapes_control_characters_and_cuts():
    assert printable("a\nb\x1b[31m\u2028") == "a\\nb\\x1b[31m\\u2028"
    assert printable("x" * 50, 10) == "x" * 7 + "..."
    assert printable("short", 10) == "short"


@given(st.text())
def test_printable_is_always_one_line_without_control_characters(text):
    out = printable(text, 200)
    assert len(out) <= max(200, 0) and not any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in out)
