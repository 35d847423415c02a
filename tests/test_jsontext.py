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


def test_brackets_inside_strings_do_not_make_a_shallow_document_too_deep() -> None:
    text = json.dumps({"text": "[" * 500 + "{" * 500})
    assert jsontext.loads(text) == {"text": "[" * 500 + "{" * 500}


def test_a_thousand_levels_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(jsontext.JsonTooDeep):
        jsontext.loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError):
        jsontext.loads("[" * 101 + "]" * 101)
