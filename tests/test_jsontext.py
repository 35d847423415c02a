"""`jsontext.loads`: bounded nesting, whatever shortcut it takes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from pilothouse import jsontext


def reference_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="ab{[]}\"\\ ", max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(min_value=0, max_value=8), st.booleans())
def test_loads_refuses_exactly_the_documents_nested_too_deep(value, limit, as_bytes) -> None:
    text = json.dumps(value)
    raw = text.encode() if as_bytes else text
    if reference_depth(value) > limit:
        with pytest.raises(jsontext.JsonTooDeep):
            jsontext.loads(raw, max_depth=limit)
    else:
        assert jsontext.loads(raw, max_depth=limit) == value


any_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text()
    | st.integers() | st.integers(min_value=-(10**30), max_value=10**30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def widened(value: object) -> object:
    """`value` with integers past 64 bits as floats (what orjson gives)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [widened(v) for v in value]
    if isinstance(value, dict):
        return {k: widened(v) for k, v in value.items()}
    return value


@settings(max_examples=500, deadline=None)
@given(any_json, st.booleans(), st.booleans())
def test_loads_gives_what_the_json_module_gives(value, ascii_only, as_bytes) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert repr(jsontext.loads(raw)) == repr(json.loads(text))
    # The fast path differs only in integers past 64 bits (and not even
    # there when orjson refused the document, e.g. for an Infinity).
    exact = json.loads(text)
    assert repr(jsontext.loads(raw, exact_integers=False)) in (repr(widened(exact)), repr(exact))


def test_brackets_inside_strings_do_not_make_a_shallow_document_too_deep() -> None:
    text = json.dumps({"text": "[" * 500 + "{" * 500})
    assert jsontext.loads(text) == {"text": "[" * 500 + "{" * 500}


def test_a_thousand_levels_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(jsontext.JsonTooDeep):
        jsontext.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError):
        jsontext.loads("[" * 101 + "]" * 101)


@pytest.mark.parametrize(
    "text",
    ["NaN", '{"a": [Infinity, -Infinity]}', '"\\ud800"',
     '{"k": 1, "k": 2}', "  [1.5e300, -0.0] "],
)
def test_documents_orjson_refuses_parse_as_the_json_module_parses_them(text) -> None:
    for exact in (True, False):
        assert repr(jsontext.loads(text, exact_integers=exact)) == repr(json.loads(text))
        raw = text.encode("utf-8", "surrogatepass")
        assert repr(jsontext.loads(raw, exact_integers=exact)) == repr(json.loads(text))


def test_bad_json_is_still_a_json_decode_error() -> None:
    for exact in (True, False):
        with pytest.raises(json.JSONDecodeError):
            jsontext.loads('{"a": ', exact_integers=exact)


def test_exact_integers_keep_integers_past_64_bits() -> None:
    assert jsontext.loads("[123456789012345678901234567890]") == [123456789012345678901234567890]
