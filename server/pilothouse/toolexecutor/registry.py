"""Tools as plain Python functions, described and validated with pydantic.

A tool is a sync or async function registered on a `ToolRegistry`::

    registry = ToolRegistry()

    @registry.tool
    def add(a: int, b: int = 1) -> int:
        '''Add two integers.

        Args:
            a: The first addend.
            b: The second addend.
        '''
        return a + b

The JSON Schema of the arguments is built by pydantic from the type hints
and the docstring (`pilothouse.toolexecutor.schema`). Running a tool never
raises for a bad argument or a failing tool: both come back as an error
text the model can read (see `ExecutionResult`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
import pydantic_core

from pilothouse import jsontext
from pilothouse.errors import NotFoundError
from pilothouse.toolexecutor.schema import (
    NAME_PATTERN,
    describe_exception as _describe_exception,
    describe_validation_error as _describe_validation_error,
    function_schema,
    json_type as _json_type,
)

__all__ = [
    "ExecutionResult",
    "RegisteredTool",
    "ToolFlags",
    "ToolRegistry",
    "build_tool",
    "default_registry",
]

Outcome = Literal["ok", "invalid_arguments", "error", "question", "unavailable"]


@dataclass(frozen=True, slots=True)
class Answer:
    """The user's answer to a tool's question: chosen options or text."""

    selected_options: tuple[str, ...] = ()
    text: str = ""


class AskUser(Exception):
    """Raise from a tool to ask the user first. The runtime asks (a
    `question_asked` event), then calls the tool again with the same
    arguments; `current_answer()` then returns the answer."""

    def __init__(self, question: str, options: Sequence[str] = (), multi_select: bool = False):
        super().__init__(question)
        self.question = question
        self.options = tuple(options)
        self.multi_select = multi_select


_ANSWER: contextvars.ContextVar[Answer | None] = contextvars.ContextVar(
    "pilothouse_tool_answer", default=None
)


def current_answer() -> Answer | None:
    """Inside a tool: the user's answer to the question it asked on an
    earlier call of the same tool call, or None."""
    return _ANSWER.get()


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What running a tool produced: exactly one of `output` and `error`.

    `outcome` is "ok" (output set), "invalid_arguments" (the arguments
    were not valid JSON, not an object or failed validation; `error` lists
    every problem) or "error" (the tool raised; `error` is
    "<ExceptionType>: message") or "question" (the tool raised `AskUser`;
    `question` holds it, output and error are None) or "unavailable" (what
    runs the tool is down, e.g. an MCP server being restarted; `error` says
    so).
    """

    output: str | None = None
    error: str | None = None
    outcome: Outcome = "ok"
    question: AskUser | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class _InvalidArguments(Exception):
    """The arguments of a call are unusable; the message is for the model."""


@dataclass(frozen=True, slots=True)
class ToolFlags:
    """What a tool declares about its effects (ListTools' `Tool` flags).

    `idempotent`: a second call with the same arguments changes nothing
    more, so a run resumed after a crash may call it again; `read_only`:
    it changes nothing; `destructive`: it may delete or overwrite data;
    `requires_approval`: every call waits for a human decision.

    `allowed_principals` and `allowed_roles` restrict who the tool runs
    for (the run's principal and roles, as the runtime sends them with
    each call): when either is set, a call whose principal is in neither
    gets an error result instead. Empty: everyone.
    """

    idempotent: bool = False
    read_only: bool = False
    destructive: bool = False
    requires_approval: bool = False
    allowed_principals: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()

    def allows(self, principal: str, roles: Sequence[str]) -> bool:
        """Whether a call for `principal` with `roles` may run the tool."""
        if not self.allowed_principals and not self.allowed_roles:
            return True
        return principal in self.allowed_principals or any(
            role in self.allowed_roles for role in roles
        )


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    """One registered tool.

    `parameters_schema` is the JSON Schema (an object schema, without
    titles) of the arguments; `metadata` is free-form string metadata shown
    to clients by ListTools; `flags` what it declares about its effects.
    """

    name: str
    description: str
    parameters_schema: dict[str, Any]
    metadata: Mapping[str, str]
    function: Callable[..., Any]
    is_async: bool
    flags: ToolFlags
    _arguments_model: type[pydantic.BaseModel] = field(repr=False)
    # (field name in the model, parameter name, passed positionally?)
    _parameters: tuple[tuple[str, str, bool], ...] = field(repr=False)

    def parse_arguments(self, arguments_json: str) -> tuple[list[Any], dict[str, Any]]:
        """Validate a JSON arguments document; returns (args, kwargs) for
        the function. An empty or all-blank document means no arguments.
        Raises `_InvalidArguments` with a text listing every problem."""
        text = arguments_json.strip() or "{}"
        try:
            data = jsontext.loads(text)
        except jsontext.JsonTooDeep as exc:
            raise _InvalidArguments(f"invalid arguments for tool {self.name!r}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise _InvalidArguments(
                f"invalid arguments for tool {self.name!r}: not valid JSON ({exc})"
            ) from None
        if not isinstance(data, dict):
            raise _InvalidArguments(
                f"invalid arguments for tool {self.name!r}: expected a JSON object, "
                f"got {_json_type(data)}"
            )
        try:
            validated = self._arguments_model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _InvalidArguments(_describe_validation_error(self.name, exc)) from None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field_name, parameter, positional in self._parameters:
            value = getattr(validated, field_name)
            if positional:
                args.append(value)
            else:
                kwargs[parameter] = value
        return args, kwargs

    async def run(
        self, arguments_json: str, answer: Answer | None = None, *, timeout: float | None = None
    ) -> ExecutionResult:
        """Validate the arguments and call the tool. (`timeout`, the seconds
        left before the call's deadline, is for tools that call further; the
        caller enforces it.)

        Sync tools run in a worker thread (`asyncio.to_thread`); async tools
        are awaited. Cancellation propagates (`asyncio.CancelledError`); a
        sync tool's thread cannot be interrupted and runs to completion in
        the background, its result discarded. A returned str is the output
        as is; any other value is JSON-encoded (pydantic models, dataclasses,
        datetimes... included).
        """
        try:
            args, kwargs = self.parse_arguments(arguments_json)
        except _InvalidArguments as exc:
            return ExecutionResult(error=str(exc), outcome="invalid_arguments")
        token = _ANSWER.set(answer)
        try:
            if self.is_async:
                value = await self.function(*args, **kwargs)
            else:
                # to_thread copies the context: the answer reaches the thread.
                value = await asyncio.to_thread(self.function, *args, **kwargs)
        except AskUser as question:
            return ExecutionResult(outcome="question", question=question)
        except Exception as exc:  # the model reads it; never a crash
            return ExecutionResult(error=_describe_exception(exc), outcome="error")
        finally:
            _ANSWER.reset(token)
        if isinstance(value, str):
            return ExecutionResult(output=value)
        try:
            return ExecutionResult(output=pydantic_core.to_json(value).decode())
        except pydantic_core.PydanticSerializationError as exc:
            return ExecutionResult(
                error=f"tool returned a value that cannot be encoded as JSON: {exc}",
                outcome="error",
            )


class ToolRegistry:
    """A set of tools, keyed by name, in registration order."""

    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}

    @typing.overload
    def tool(self, function: Callable[..., Any], /) -> Callable[..., Any]: ...

    @typing.overload
    def tool(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        flags: ToolFlags | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def tool(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        flags: ToolFlags | None = None,
    ) -> Any:
        """Decorator registering a function as a tool, bare (`@registry.tool`)
        or with options (`@registry.tool(name=..., description=...,
        metadata={...}, flags=ToolFlags(idempotent=True))`). Returns the
        function unchanged. Raises like `register`."""
        if function is not None:
            self.register(function)
            return function

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(fn, name=name, description=description, metadata=metadata, flags=flags)
            return fn

        return decorator

    def register(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        flags: ToolFlags | None = None,
    ) -> RegisteredTool:
        """Register `function` as a tool and return its description.

        `name` defaults to the function's name, `description` to the
        docstring's first paragraph. Raises ValueError for an invalid name
        (1-64 characters of [A-Za-z0-9_-]) or one already registered, and
        TypeError for a function that cannot be a tool (*args/**kwargs, a
        Field used as a default, a generator, non-str metadata).
        """
        registered = build_tool(
            function, name=name, description=description, metadata=metadata, flags=flags
        )
        if registered.name in self._tools:
            raise ValueError(f"a tool named {registered.name!r} is already registered")
        self._tools[registered.name] = registered
        return registered

    def include(self, other: ToolRegistry) -> None:
        """Register every tool of `other` here too. Raises ValueError on a
        name clash (nothing is added then)."""
        clashes = sorted(set(self._tools) & set(other._tools))
        if clashes:
            raise ValueError(f"tools already registered: {', '.join(clashes)}")
        self._tools.update(other._tools)

    def get(self, name: str) -> RegisteredTool | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._tools)

    async def execute(
        self, name: str, arguments_json: str, answer: Answer | None = None
    ) -> ExecutionResult:
        """Run the tool `name` with a JSON arguments document (see
        `RegisteredTool.run`). Raises NotFoundError (reason TOOL_NOT_FOUND,
        metadata {"tool": name}) for an unknown name."""
        registered = self._tools.get(name)
        if registered is None:
            raise NotFoundError(
                f"no tool named {name!r}", reason="TOOL_NOT_FOUND", metadata={"tool": name}
            )
        return await registered.run(arguments_json, answer)


#: The registry served by `pilothouse-tools`; `pilothouse.toolexecutor` registers
#: the built-ins on it and exports its `tool` decorator.
default_registry = ToolRegistry()


# --- building a tool ---------------------------------------------------------


def build_tool(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    flags: ToolFlags | None = None,
) -> RegisteredTool:
    """Describe `function` as a tool without registering it (see
    `ToolRegistry.register` for the rules and errors)."""
    if not callable(function):
        raise TypeError(f"a tool must be callable, got {function!r}")
    if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError("a tool must return a value, not be a generator")
    tool_name = name if name is not None else getattr(function, "__name__", "")
    if not isinstance(tool_name, str) or not NAME_PATTERN.fullmatch(tool_name):
        raise ValueError(f"invalid tool name {tool_name!r}: use 1-64 characters of [A-Za-z0-9_-]")
    tool_metadata = dict(metadata or {})
    for key, value in tool_metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"tool metadata must map str to str, got {key!r}: {value!r}")
    described = function_schema(function, tool_name)
    return RegisteredTool(
        name=tool_name,
        description=description if description is not None else described.description,
        parameters_schema=described.parameters_schema,
        metadata=tool_metadata,
        function=function,
        is_async=described.is_async,
        flags=flags or ToolFlags(),
        _arguments_model=described.arguments_model,
        _parameters=described.parameters,
    )
