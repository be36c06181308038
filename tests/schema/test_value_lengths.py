"""The length limits of the mapper (``longer_than``) against Python's own character count.

Values are measured in bytes first and in characters only when some value is longer in bytes than the
limit, so multi-byte text (up to 4 bytes a character) around the limit is what must not be misjudged.
"""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from obslake.schema.mapping import constant, longer_than

CHARS = st.sampled_from(["a", "é", "€", "𝄞", " ", "\x00"])  # 1, 2, 3 and 4 bytes in UTF-8


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 12),
    values=st.lists(st.one_of(st.none(), st.lists(CHARS, max_size=16).map("".join)), max_size=40),
    large=st.booleans(),
)
def test_longer_than_counts_characters_not_bytes(limit, values, large):
    arr = pa.array(values, pa.large_string() if large else pa.string())
    expected = [i for i, v in enumerate(values) if v is not None and len(v) > limit]
    assert longer_than(arr, limit) == expected


def test_longer_than_a_sliced_array_uses_the_slice():
    arr = pa.array(["x" * 20, "ok", "y" * 20, "ok"]).slice(1, 2)
    assert longer_than(arr, 5) == [1]


def test_constant_is_shared_but_equal_to_a_fresh_array():
    a, b = constant("s3://b/k.csv", pa.string(), 3), constant("s3://b/k.csv", pa.string(), 3)
    assert a is b and a.to_pylist() == ["s3://b/k.csv"] * 3
    assert constant(None, pa.int64(), 2).to_pylist() == [None, None]
    assert constant("s3://b/k.csv", pa.string(), 2).to_pylist() == ["s3://b/k.csv"] * 2
