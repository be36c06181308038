"""Vectorised attribute flattening against a plain-Python reference of the documented rules.

The reference below is written from the module docstring of ``obslake.fabric.flatten`` (not from its
SQL): Hypothesis builds span attributes with every key flat, nested, or both, and values of every JSON
type (digit strings with spaces, huge integers, floats, objects, arrays), plus text that is not JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obslake.fabric.flatten import flatten
from obslake.fabric.model import FLAT_ATTRIBUTES

EXAMPLES = int(os.environ.get("OBSLAKE_PROPERTY_EXAMPLES", "150"))
INT64 = (-(2**63), 2**63 - 1)


def reference(text: str | None, key: str, typ: pa.DataType):
    """What the docstring promises for one span and one key; returns the value or a checker."""
    if not text:
        return None
    try:
        attrs = json.loads(text)
    except ValueError:
        return None
    if not isinstance(attrs, dict):
        return None
    if attrs.get(key) is not None:
        v = attrs[key]
    else:
        v = attrs
        for part in key.split("."):
            if not isinstance(v, dict) or part not in v:
                return None
            v = v[part]
    if v is None:
        return None
    if pa.types.is_string(typ):
        return v  # a string as is; anything else compared as parsed JSON text (see check)
    if isinstance(v, bool):
        out = int(v)
    elif isinstance(v, int):
        out = v
    elif isinstance(v, float):
        out = int(v)
    elif isinstance(v, str):
        m = re.fullmatch(r"[ \t\n\r\f\v]*([+-]?[0-9]+)[ \t\n\r\f\v]*", v)
        out = int(m.group(1)) if m else None
    else:
        out = None
    return out if out is not None and INT64[0] <= out <= INT64[1] else None


def check(got, want, typ):
    if want is None or not pa.types.is_string(typ) or isinstance(want, str):
        assert got == want
    else:
        assert got is not None and json.loads(got) == want and "\n" not in got


KEYS = list(FLAT_ATTRIBUTES)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(10**6), 10**6).map(lambda i: i / 100)  # -12.7: truncated toward zero, never rounded
    | st.text(max_size=8)
    | st.from_regex(r"\A *[+-]?[0-9]{1,22} *\Z")
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
numbers = st.integers(-(10**6), 10**6).map(lambda i: i / 100) | st.from_regex(r"\A *[+-]?[0-9]{1,22} *\Z") | scalars


def value_for(key: str):
    return numbers | values if pa.types.is_integer(FLAT_ATTRIBUTES[key]) else values


@st.composite
def attributes(draw) -> str | None:
    kind = draw(st.sampled_from(["object", "object", "object", "null", "empty", "garbage", "array"]))
    if kind == "null":
        return None
    if kind == "empty":
        return ""
    if kind == "garbage":
        return draw(st.text(max_size=20))
    if kind == "array":
        return json.dumps(draw(st.lists(values, max_size=3)))
    attrs: dict = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6, unique=True)):
        where = draw(st.sampled_from(["flat", "nested", "both"]))
        if where in ("flat", "both"):
            attrs[key] = draw(value_for(key))
        if where in ("nested", "both"):
            node = attrs
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[parts[-1]] = draw(value_for(key))
    for extra, v in draw(st.dictionaries(st.text(max_size=6), values, max_size=2)).items():
        attrs.setdefault(extra, v)
    return json.dumps(attrs, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(attributes(), min_size=1, max_size=12))
def test_flatten_matches_the_documented_rules(texts):
    out = flatten(pa.array(texts, pa.string()))
    for key, typ in FLAT_ATTRIBUTES.items():
        col = out.columns[f"attributes.{key}"]
        assert col.type == typ and len(col) == len(texts)
        for text, got in zip(texts, col.to_pylist(), strict=True):
            check(got, reference(text, key, typ), typ)

    def readable(t):
        if not t:
            return True
        try:
            return isinstance(json.loads(t), dict)
        except ValueError:
            return False

    assert out.unreadable == sum(not readable(t) for t in texts)


def test_examples_from_the_docstring():
    texts = [
        '{"llm.model_name": "gpt-4o", "llm": {"model_name": "ignored", "token_count": {"prompt": " 12 "}}}',
        '{"llm": {"model_name": {"b": [1, 2.50]}}, "llm.token_count.prompt": -12.7}',
        '{"llm.model_name": null, "llm": {"model_name": "n"}, "llm.token_count.prompt": 99999999999999999999}',
        '{"llm.model_name": true, "llm.token_count.prompt": true, "llm.token_count.total": "1_000"}',
        "not json",
        "[1, 2]",
        None,
    ]
    out = flatten(pa.chunked_array([texts[:3], texts[3:]], pa.string()))
    assert out.columns["attributes.llm.model_name"].to_pylist() == ["gpt-4o", '{"b":[1,2.5]}', "n", "true", None, None, None]
    assert out.columns["attributes.llm.token_count.prompt"].to_pylist() == [12, -12, None, 1, None, None, None]
    assert out.columns["attributes.llm.token_count.total"].to_pylist() == [None] * 7
    assert out.unreadable == 2


def test_a_batch_with_unreadable_attributes_still_exports(caplog):
    from obslake.fabric.export import span_rows
    from obslake.fabric.model import ANNOTATION_SCHEMA, SPAN_SCHEMA, ChangeBatch

    now = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    texts = ['{"llm": {"model_name": "m"}', '{"llm": {"model_name": "m"}}']
    spans = pa.Table.from_pylist([
        {"span_id": s, "trace_id": "t", "name": "llm", "start_time": now, "end_time": now, "attributes": text,
         "changed_at": now} for s, text in zip("ab", texts, strict=True)], SPAN_SCHEMA)
    with caplog.at_level("WARNING"):
        out = span_rows(ChangeBatch(spans, ANNOTATION_SCHEMA.empty_table()), now + dt.timedelta(minutes=1))
    assert out["attributes.llm.model_name"].to_pylist() == [None, "m"]
    assert out["attributes"].to_pylist() == texts  # the text is kept
    assert "1 of 2 span(s) have attributes that are not a JSON object" in caplog.text


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_batches(n):
    out = flatten(pa.array(['{"user.id": "u"}'] * n, pa.string()))
    assert out.columns["attributes.user.id"].to_pylist() == ["u"] * n and out.unreadable == 0
