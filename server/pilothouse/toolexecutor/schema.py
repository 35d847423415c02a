"""A function's tool description from its type hints and docstring, and the
error texts the model reads when its arguments are wrong.

`function_schema` turns a function's signature into a pydantic model of
its arguments (so they can be validated) and the JSON Schema of that model
(what ListTools shows); a parameter's description comes from
`Annotated[..., Field(description=...)]` or else from the docstring's
Google-style ``Args:`` section, the tool's description from the
docstring's first paragraph (`parse_docstring`).
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from pydantic.fields import FieldInfo

__all__ = [
    "NAME_PATTERN",
    "FunctionSchema",
    "describe_exception",
    "describe_validation_error",
    "function_schema",
    "json_type",
    "location_text",
    "parse_docstring",
]

#: A valid tool name (the OpenAI function-name rule).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Longest rendering of a rejected argument value quoted in an error text.
MAX_INPUT_REPR = 80


@dataclass(frozen=True, slots=True)
class FunctionSchema:
    """What a function's signature and docstring say about it as a tool.

    `parameters_schema` is the JSON Schema (an object schema, without
    titles) of the arguments; `arguments_model` validates them;
    `parameters` maps each model field to the function's parameter:
    (field name, parameter name, passed positionally?).
    """

    description: str
    parameters_schema: dict[str, Any]
    arguments_model: type[pydantic.BaseModel]
    parameters: tuple[tuple[str, str, bool], ...]
    is_async: bool


def function_schema(function: Callable[..., Any], tool_name: str) -> FunctionSchema:
    """Describe `function`'s parameters as the tool `tool_name`. Raises
    TypeError for a signature that cannot be described (*args/**kwargs, a
    Field used as a default)."""
    doc_description, doc_params = parse_docstring(inspect.getdoc(function) or "")
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function, include_extras=True)

    fields: dict[str, Any] = {}
    parameters: list[tuple[str, str, bool]] = []
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(
                f"tool {tool_name!r}: *args and **kwargs cannot be described; "
                f"declare each parameter ({parameter.name})"
            )
        if isinstance(parameter.default, FieldInfo):
            raise TypeError(
                f"tool {tool_name!r}: parameter {parameter.name!r} uses Field(...) as its "
                "default; write `name: Annotated[type, Field(...)] = default` instead"
            )
        annotation = hints.get(parameter.name, Any)
        field_kwargs: dict[str, Any] = {"alias": parameter.name}
        if parameter.default is not parameter.empty:
            field_kwargs["default"] = parameter.default
        doc = doc_params.get(parameter.name)
        if doc and not _has_description(annotation):
            field_kwargs["description"] = doc
        # Model fields get neutral names so that parameters called e.g.
        # "json" or "schema" do not clash with BaseModel attributes; the
        # alias is the name in the schema and in the arguments.
        field_name = f"p{index}"
        fields[field_name] = (annotation, pydantic.Field(**field_kwargs))
        parameters.append((field_name, parameter.name, parameter.kind == parameter.POSITIONAL_ONLY))

    model = pydantic.create_model(
        f"{tool_name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    return FunctionSchema(
        description=doc_description,
        parameters_schema=schema,
        arguments_model=model,
        parameters=tuple(parameters),
        is_async=_is_async(function),
    )


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    # An object whose __call__ is a coroutine function.
    return inspect.iscoroutinefunction(getattr(function, "__call__", None))  # noqa: B004


def _has_description(annotation: Any) -> bool:
    if typing.get_origin(annotation) is not Annotated:
        return False
    return any(isinstance(meta, FieldInfo) and meta.description for meta in annotation.__metadata__)


_SECTION_HEADER = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Returns?|Yields?|"
    r"Raises|Examples?|Notes?|Attributes|See Also|Warnings?|Todo|References)\s*:\s*$"
)
_ARGS_HEADERS = {"Args", "Arguments", "Parameters", "Params", "Keyword Args", "Keyword Arguments"}
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(docstring: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, parameter
    descriptions).

    The description is the first paragraph, its lines joined with spaces;
    parameter descriptions come from the ``Args:`` (or ``Arguments:``,
    ``Parameters:``) section, entries written ``name: text`` or
    ``name (type): text`` with indented continuation lines.
    """
    lines = inspect.cleandoc(docstring).splitlines() if docstring else []
    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_HEADER.match(line.strip()):
            break
        first.append(line.strip())
    description = " ".join(first)

    params: dict[str, str] = {}
    in_args = False
    entry_indent: int | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION_HEADER.match(stripped) if indent == 0 else None
        if header:
            in_args = header.group(1) in _ARGS_HEADERS
            entry_indent, current = None, None
            continue
        if not in_args:
            continue
        if not stripped:
            continue
        if indent == 0:  # dedent: the section is over
            in_args, current = False, None
            continue
        if entry_indent is None:
            entry_indent = indent
        match = _ARG_LINE.match(stripped) if indent <= entry_indent else None
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    return description, params


# --- error texts -------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, with its article ("an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def location_text(loc: tuple[int | str, ...], empty: str = "(arguments)") -> str:
    """A validation error's location as a path: `items[2].name` (`empty`
    for the top level)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or empty


def describe_validation_error(tool: str, error: pydantic.ValidationError) -> str:
    """Every problem pydantic found in `tool`'s arguments, one a line, with
    the rejected value (cut to about 80 characters)."""
    problems = []
    for item in error.errors(include_url=False):
        line = f"- {location_text(item['loc'])}: {item['msg']}"
        if item["type"] != "missing":
            shown = json.dumps(item["input"], default=repr, ensure_ascii=False)
            if len(shown) > MAX_INPUT_REPR:
                shown = shown[: MAX_INPUT_REPR - 3] + "..."
            line += f" (got {shown})"
        problems.append(line)
    count = len(problems)
    noun = "problem" if count == 1 else "problems"
    return f"invalid arguments for tool {tool!r} ({count} {noun}):\n" + "\n".join(problems)


def describe_exception(exc: BaseException) -> str:
    """"<ExceptionType>: message" (a KeyError's key quoted)."""
    message = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        message = repr(exc.args[0])
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
