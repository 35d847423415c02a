"""Requests that cannot be decoded, or that break a request rule, answer
INVALID_ARGUMENT before any handler runs, on every service of a server.

grpc.aio decodes a request with the method handler's
`request_deserializer` before it calls the handler, and turns whatever the
deserializer raises (protobuf's `DecodeError` for bad UTF-8 in a string
field, a truncated field, a wire type that does not exist) into UNKNOWN
with Python text, where no handler can map it. `RequestDecoding` wraps
every handler's deserializer: a request that fails to decode, or that
`RequestRules.check` refuses, is handed on as a rejection, and the
wrapped handler aborts the call with INVALID_ARGUMENT and an ErrorInfo
(reason `MALFORMED_REQUEST`, or the rule's own) instead of running. For
client-streaming methods the same happens at the bad message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pilothouse.errors import InvalidArgumentError, PilothouseError
from pilothouse.rpc.errors import status_of

#: A rule for one string field: the problem with `value`, or None.
FieldRule = Callable[[str], str | None]


def max_bytes(limit: int) -> FieldRule:
    """At most `limit` bytes of UTF-8."""

    def check(value: str) -> str | None:
        size = len(value.encode("utf-8", "surrogatepass"))
        return f"must be at most {limit} bytes (got {size})" if size > limit else None

    return check


class RequestRules:
    """Rules for string fields, by field name, checked in every request
    before its handler runs: `rules` at the top level and in set
    sub-messages, `top_level` only in the request itself (a sub-message
    such as an agent config has its own validation). Empty values are left
    to the handler. Raises InvalidArgumentError naming the field."""

    def __init__(
        self, rules: Mapping[str, FieldRule], top_level: Mapping[str, FieldRule] | None = None
    ) -> None:
        self.rules = dict(rules)
        self.top_level = {**self.rules, **(top_level or {})}
        self._plans: dict[tuple[str, bool], list[tuple[FieldDescriptor, FieldRule | None]]] = {}

    def _plan(self, descriptor: Any, top: bool) -> list[tuple[FieldDescriptor, FieldRule | None]]:
        plan = self._plans.get((descriptor.full_name, top))
        if plan is None:
            plan = []
            rules = self.top_level if top else self.rules
            for field in descriptor.fields:
                if field.type == FieldDescriptor.TYPE_STRING and field.name in rules:
                    plan.append((field, rules[field.name]))
                elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                    plan.append((field, None))
            self._plans[(descriptor.full_name, top)] = plan
        return plan

    def check(self, message: Message, prefix: str = "", depth: int = 0) -> None:
        for field, rule in self._plan(message.DESCRIPTOR, depth == 0):
            if rule is None:
                if depth < 4 and message.HasField(field.name):
                    self.check(getattr(message, field.name), f"{prefix}{field.name}.", depth + 1)
                continue
            if field.is_repeated:
                values = list(getattr(message, field.name))
            else:
                values = [getattr(message, field.name)]
            for value in values:
                problem = rule(value) if value else None
                if problem:
                    raise InvalidArgumentError.field(prefix + field.name, problem)


@dataclass(frozen=True, slots=True)
class _Rejected:
    """A request that did not decode or broke a rule."""

    error: PilothouseError


def _undecodable(descriptor_name: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the request is not a valid {descriptor_name} (it cannot be decoded: bad UTF-8 in a "
        "string field, a truncated field or an unknown wire type)",
        reason="MALFORMED_REQUEST",
        metadata={"message": descriptor_name},
    )


def _checked_deserializer(
    deserialize: Callable[[bytes], Any] | None, rules: RequestRules | None
) -> Callable[[bytes], Any]:
    assert deserialize is not None  # handlers without one are not wrapped
    name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    message_name = name.full_name if name is not None else "request"

    def decode(raw: bytes) -> Any:
        try:
            request = deserialize(raw)
        except Exception:
            return _Rejected(_undecodable(message_name))
        if rules is not None and isinstance(request, Message):
            try:
                rules.check(request)
            except PilothouseError as exc:
                return _Rejected(exc)
        return request

    return decode


async def _requests(iterator: Any) -> Any:
    """The messages of a client stream; a rejected one raises its error
    (a servicer that maps domain errors answers it; `_wrap` answers it for
    any other)."""
    async for request in iterator:
        if isinstance(request, _Rejected):
            raise request.error
        yield request


def _wrap(handler: grpc.RpcMethodHandler, rules: RequestRules | None) -> grpc.RpcMethodHandler:
    """`handler` with a checked deserializer and a behaviour that aborts on
    a rejected request."""
    kind = (
        f"{'stream' if handler.request_streaming else 'unary'}_"
        f"{'stream' if handler.response_streaming else 'unary'}"
    )
    behavior = getattr(handler, kind)
    streaming_in = handler.request_streaming

    async def admit(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if streaming_in:
            return _requests(request)
        if isinstance(request, _Rejected):
            await context.abort_with_status(status_of(request.error))
        return request

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for response in behavior(await admit(request, context), context):
                yield response
        except PilothouseError as exc:  # from _requests, unmapped by the servicer
            await context.abort_with_status(status_of(exc))

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(await admit(request, context), context)
        except PilothouseError as exc:
            await context.abort_with_status(status_of(exc))

    wrapped = streaming if inspect.isasyncgenfunction(behavior) else unary
    # RpcMethodHandler is a namedtuple at run time.
    return cast(Any, handler)._replace(
        request_deserializer=_checked_deserializer(handler.request_deserializer, rules),
        **{kind: wrapped},
    )


class RequestDecoding(grpc.aio.ServerInterceptor):
    """The server interceptor described in the module docstring; `rules`
    (optional) are checked on every decoded request."""

    def __init__(self, rules: RequestRules | None = None) -> None:
        self.rules = rules
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        # The same handler object comes back for every call of a method:
        # wrap it once.
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = (handler, _wrap(handler, self.rules))
            self._wrapped[id(handler)] = cached
        return cached[1]
