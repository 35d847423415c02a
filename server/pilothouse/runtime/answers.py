"""How a model round's final answer is judged: the finish reasons that end
a run on their own (the answer was cut at max_tokens, filtered, or
refused), and structured output (the agent's JSON Schema, validated with
`jsonschema`, and the prompt of the one retry an invalid answer gets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from pilothouse import jsontext
from pilothouse.runtime.events import StopReason
from pilothouse.runtime.messages import Message
from pilothouse.runtime.model.base import (
    FINISH_CONTENT_FILTER,
    FINISH_LENGTH,
    FINISH_REFUSAL,
    ResponseFormat,
)

#: The cause of the `RoundRetried` event of a structured-output retry.
INVALID_STRUCTURED_OUTPUT = "invalid_structured_output"
#: The `response_format` name when the schema has no usable `title`.
DEFAULT_FORMAT_NAME = "response"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*)\n```\s*$", re.DOTALL)


# --- finish reasons ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinalStop:
    """A round without tool calls that ends the run with `reason`, its text
    (if any) stored; `error` explains it."""

    reason: StopReason
    error: str


def final_stop(finish_reason: str, refusal: str, max_tokens: int | None) -> FinalStop | None:
    """The stop of an answer whose finish reason says it is not a complete
    answer: a refusal (`refusal` is the provider's refusal text or
    explanation, or the finish reason "refusal"), "content_filter" or
    "length"; None for a normal end."""
    if refusal or finish_reason == FINISH_REFUSAL:
        return FinalStop(StopReason.REFUSAL, f"the model refused: {refusal or 'no reason given'}")
    if finish_reason == FINISH_CONTENT_FILTER:
        return FinalStop(StopReason.CONTENT_FILTER,
                         "the provider's content filter stopped the answer")
    if finish_reason == FINISH_LENGTH:
        limit = f" ({max_tokens} tokens)" if max_tokens else ""
        return FinalStop(StopReason.MAX_TOKENS,
                         f"the answer was cut at the round's token limit{limit}")
    return None


# --- structured output -------------------------------------------------------


def check_schema(text: str) -> dict[str, Any]:
    """The schema `text` holds. Raises ValueError saying what is wrong: not
    JSON, not an object schema (`"type": "object"` at the root, which a
    `google.protobuf.Struct` answer needs), or not a valid JSON Schema."""
    try:
        schema = jsontext.loads(text)  # JsonTooDeep is a ValueError
    except ValueError as exc:
        raise ValueError(f"is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError("must be a JSON Schema object")
    if schema.get("type") != "object":
        raise ValueError('must describe a JSON object at its root ("type": "object")')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
    return schema


@lru_cache(maxsize=256)
def response_format(schema_text: str) -> ResponseFormat:
    """The `ResponseFormat` of an agent's `response_json_schema` (checked
    when the agent was validated)."""
    schema = check_schema(schema_text)
    title = schema.get("title")
    name = _NAME_CHARS.sub("_", title).strip("_")[:64] if isinstance(title, str) else ""
    return ResponseFormat(name or DEFAULT_FORMAT_NAME, schema, strict=is_strict(schema))


def is_strict(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts the schema's objects: each one
    closed (`additionalProperties: false`) with every property required."""
    if isinstance(schema, list):
        return all(is_strict(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return False
        if not isinstance(properties, dict) or set(schema.get("required", ())) != set(properties):
            return False
    return all(is_strict(value) for key, value in schema.items()
               if key not in ("enum", "const", "default", "examples", "required"))


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    schema = jsontext.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


def parse_structured(text: str, schema_text: str) -> tuple[dict[str, Any] | None, str | None]:
    """`(value, None)` when `text` is a JSON object matching the schema
    (a Markdown code fence around it is allowed), else `(None, what is
    wrong)`."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = jsontext.loads(body)
    except ValueError as exc:
        return None, f"the answer is not JSON ({exc})"
    error = best_match(_validator(schema_text).iter_errors(value))
    if error is not None:
        return None, f"at {error.json_path}: {error.message}"
    if not isinstance(value, dict):
        return None, "the answer must be a JSON object"
    return value, None


def correction(problem: str) -> Message:
    """The user message of a structured-output retry (sent with the
    invalid answer, never stored)."""
    return Message.user(
        "Your previous answer did not match the required JSON Schema: "
        f"{problem}. Answer again with only the JSON value, matching the schema exactly.",
        sender="pilothouse",
    )
