"""Pilothouse's built-in scripted test model: the stand-in that answers when
no model endpoint is configured, in the spirit of pydantic-ai's TestModel.

It calls every offered tool once with schema-valid arguments, then
answers with a text that summarises the tool results; with no tools it
echoes the last user message. Its output is a function of the request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pilothouse.runtime.compaction import COMPACTION_PROMPT
from pilothouse.testmodel.replies import ChunkFactory, SSEItem, SSEReply
from pilothouse.testmodel.server import ChatCompletionsServer

log = logging.getLogger(__name__)

MODEL_NAME = "pilothouse-test-model"
INTRO = "I am Pilothouse's scripted test model (no model endpoint is configured)."
RESULT_LIMIT = 200
#: How the runtime's title request begins (`pilothouse.runtime.runtime.TITLE_PROMPT`).
TITLE_PROMPT_START = "Summarize this conversation in 3-6 words"
_MAX_DEPTH = 8


def example_for_schema(schema: Any, *, root: Any = None, all_properties: bool = False) -> Any:
    """A value valid for the JSON Schema `schema` (the subset tool schemas use).

    Prefers `examples[0]`, then `default`, then `enum[0]` (or `const`), then
    a value for the type: string "a" (longer to meet `minLength`, shaped
    for common `format`s), integer 1 and number 1.0 (moved into
    `minimum`/`maximum`), boolean true, null, array of `minItems` items,
    object with its required properties (all its properties when
    `all_properties`). Follows local `$ref`s against `root` and takes the
    first non-null branch of `anyOf`/`oneOf`.
    """
    return _example(schema, schema if root is None else root, 0, all_properties)


def _example(schema: Any, root: Any, depth: int, all_properties: bool = False) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "a"
    if isinstance(schema.get("$ref"), str):
        return _example(_resolve(schema["$ref"], root), root, depth + 1, all_properties)
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return examples[0]
    if "default" in schema:
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            usable = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
            return _example((usable or branches)[0], root, depth + 1, all_properties)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = (
                _resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            )
            if isinstance(part, dict):
                merged = _merge(merged, part)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return _example(_merge(merged, rest), root, depth + 1, all_properties)
    kind = _type_of(schema)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        count = schema.get("minItems")
        if not isinstance(count, int):
            count = 0
        return [_example(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        names = list(properties) if all_properties else []
        names += [r for r in required if r not in names]
        return {name: _example(properties.get(name, {}), root, depth + 1) for name in names}
    return "a"


def _resolve(ref: str, root: Any) -> Any:
    """A local JSON Pointer `$ref` (`#/$defs/Name`); `{}` when unknown."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = {**a, **b}
    if "properties" in a or "properties" in b:
        merged["properties"] = {**a.get("properties", {}), **b.get("properties", {})}
    if "required" in a or "required" in b:
        merged["required"] = [*a.get("required", []), *b.get("required", [])]
    return merged


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "a@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "127.0.0.1",
}


def _string(schema: dict[str, Any]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    low = schema.get("minLength")
    if not isinstance(low, int):
        low = 1
    high = schema.get("maxLength")
    if not isinstance(high, int):
        high = None
    length = max(low, 1) if high is None else min(max(low, 1), high)
    return "a" * length


def _number(schema: dict[str, Any], kind: str) -> int | float:
    value: int | float = 1 if kind == "integer" else 1.0
    step = 1 if kind == "integer" else 0.5
    if isinstance(schema.get("minimum"), (int, float)):
        value = max(value, schema["minimum"])
    if (
        isinstance(schema.get("exclusiveMinimum"), (int, float))
        and value <= schema["exclusiveMinimum"]
    ):
        value = schema["exclusiveMinimum"] + step
    if isinstance(schema.get("maximum"), (int, float)):
        value = min(value, schema["maximum"])
    if (
        isinstance(schema.get("exclusiveMaximum"), (int, float))
        and value >= schema["exclusiveMaximum"]
    ):
        value = schema["exclusiveMaximum"] - step
    return int(value) if kind == "integer" else float(value)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return "" if content is None else json.dumps(content)


def _tokens(chars: int) -> int:
    return (chars + 3) // 4


class ScriptedTestModel:
    """A responder for `ChatCompletionsServer` that plays a model.

    Per request: when tools are offered (and `tool_choice` is not "none")
    and no tool message follows the last user message, it calls every
    offered tool (or the one `tool_choice` names), ids `call_1`, `call_2`,
    ..., with arguments from `example_for_schema`. Otherwise it answers in
    text: it introduces itself and lists the tool results after the last
    user message (tool name -> result, each cut to about 200 characters),
    or echoes the last user message. `reasoning_effort` adds a short
    `reasoning_content` first; usage (characters / 4) is reported when
    `stream_options.include_usage` is set or the request is not streamed.
    """

    model_name = MODEL_NAME

    async def __call__(self, body: dict[str, Any]) -> SSEReply:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        after = messages[last_user + 1 :]
        results = [m for m in after if m.get("role") == "tool"]
        offered = self._offered_tools(body)
        calls: list[tuple[str, str, str]] = []
        text = ""
        if offered and not results:
            calls = [
                (f"call_{n}", name, json.dumps(example_for_schema(params, all_properties=True)))
                for n, (name, params) in enumerate(offered, start=1)
            ]
            plan = "call " + ", ".join(name for name, _ in offered)
        else:
            text = self._answer(messages, last_user, results)
            plan = "summarise the tool results" if results else "echo the user's message"
        reasoning = ""
        if body.get("reasoning_effort"):
            reasoning = f"Scripted reasoning ({body['reasoning_effort']} effort): I will {plan}."
        usage = None
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage")
        if wants_usage or not body.get("stream"):
            prompt_chars = len(json.dumps(messages)) + len(json.dumps(body.get("tools") or []))
            output_chars = len(text) + len(reasoning) + sum(len(c[1]) + len(c[2]) for c in calls)
            prompt, completion = _tokens(prompt_chars), _tokens(output_chars)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": _tokens(len(reasoning))},
            }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        factory = ChunkFactory(MODEL_NAME, id=f"chatcmpl-scripted-{digest[:20]}")
        events: list[SSEItem] = [factory.role(None if calls else "")]
        events += factory.texts(reasoning, 16, "reasoning_content")
        events += factory.texts(text, 16)
        for index, (call_id, name, arguments) in enumerate(calls):
            head = {"index": index, "id": call_id, "type": "function"}
            first = {**head, "function": {"name": name, "arguments": ""}}
            events.append(factory.chunk({"tool_calls": [first]}))
            for i in range(0, len(arguments), 16):
                piece = {"index": index, "function": {"arguments": arguments[i : i + 16]}}
                events.append(factory.chunk({"tool_calls": [piece]}))
        events.append(factory.chunk({}, finish_reason="tool_calls" if calls else "stop"))
        if usage is not None:
            events.append(factory.usage_chunk(usage))
        events.append("[DONE]")
        return SSEReply(events)

    @staticmethod
    def _offered_tools(body: dict[str, Any]) -> list[tuple[str, Any]]:
        """(name, parameters schema) of the tools this round may call."""
        tools = []
        for tool in body.get("tools") or []:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                tools.append((function["name"], function.get("parameters") or {}))
        choice = body.get("tool_choice")
        if choice == "none":
            return []
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name")
            return [t for t in tools if t[0] == wanted]
        return tools

    @staticmethod
    def _answer(
        messages: list[dict[str, Any]], last_user: int, results: list[dict[str, Any]]
    ) -> str:
        if results:
            names = {
                call.get("id"): (call.get("function") or {}).get("name")
                for m in messages
                if m.get("role") == "assistant"
                for call in m.get("tool_calls") or []
                if isinstance(call, dict)
            }
            lines = []
            for message in results:
                call_id = message.get("tool_call_id")
                name = names.get(call_id) or message.get("name") or call_id or "tool"
                result = _content_text(message.get("content"))
                if len(result) > RESULT_LIMIT:
                    result = result[:RESULT_LIMIT] + "..."
                lines.append(f"- {name} -> {result}")
            return f"{INTRO} The tools returned:\n" + "\n".join(lines)
        if last_user < 0:
            return f"{INTRO} There is no user message to echo."
        said = _content_text(messages[last_user].get("content"))
        if said.startswith(TITLE_PROMPT_START):
            # The runtime's title request: a short, recognisable title.
            user_line = next((ln for ln in said.splitlines() if ln.startswith("User: ")), "User: chat")
            return "Test chat: " + " ".join(user_line.removeprefix("User: ").split()[:4])
        if any(m.get("role") == "system" and _content_text(m.get("content")) == COMPACTION_PROMPT
               for m in messages):
            return f"Summary by the scripted test model of {len(said.splitlines())} transcript lines."
        return f"{INTRO} You said: {said}"


async def start_scripted_model(
    host: str = "127.0.0.1", port: int = 0
) -> tuple[ChatCompletionsServer, str]:
    """Serve a `ScriptedTestModel`; returns the running server and its base
    URL (`http://HOST:PORT/v1`). Stop it with `server.stop()`."""
    server = ChatCompletionsServer(ScriptedTestModel(), host, port, model_ids=[MODEL_NAME])
    url = await server.start()
    log.info(
        "no model endpoint is configured: the built-in scripted test model %s is serving at %s",
        MODEL_NAME,
        url,
    )
    return server, url
