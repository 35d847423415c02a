"""Bad input on every RPC of both servers.

1. Targeted: each method starts from a valid request (a real session, run,
   agent, tool) and one field at a time is made empty, oversized, NUL-laden,
   deeply nested JSON, an unknown enum value, a negative or huge number, a
   huge id or a forged page token. Where the right answer is known it is
   required (a huge id or a forged page token is INVALID_ARGUMENT; deeply
   nested tool arguments are a tool error the model reads); elsewhere any
   clear status will do.
2. Property-based: random messages of every request type (hypothesis),
   mixing in real ids and tool names so that they reach past the first check.
3. Raw bytes a protobuf decoder must refuse: bad UTF-8 in a string field,
   a truncated field, an invalid wire type.

Afterwards both servers must still serve and the stored sessions must be
intact.
"""

from __future__ import annotations

import asyncio
import json
import random

import grpc
from client import Client, Ledger
from google.protobuf.descriptor import FieldDescriptor
from harness import Stack
from hypothesis import HealthCheck, given, settings, strategies as st
from report import CLEAR, CRASH, Category, judge
from rpcs import (
    RUNTIME_SERVICES,
    TOOLS_SERVICES,
    Method,
    Outcome,
    bytes_in_first_string,
    field_paths,
    invoke,
    length_delimited,
    methods,
    set_path,
)

from pilothouse.runtime.paging import encode_token
from pilothouse.v1 import run_service_pb2 as runs_pb

NAME = "bad input (both servers)"
INVALID = {grpc.StatusCode.INVALID_ARGUMENT}
#: Fields that name something: a huge value is INVALID_ARGUMENT, never a
#: NOT_FOUND that echoes it.
ID_FIELDS = {"session_id", "run_id", "request_id", "agent", "name", "created_by", "sender"}
DEEP = 5000
MB4 = 4 * 1024 * 1024


class Bases:
    """Valid requests to start from: real agents, sessions, runs, tools."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.agent = "faults"
        self.session = ""
        self.run_id = ""

    async def setup(self) -> None:
        self.session = await self.client.session(self.agent)
        turn = await self.client.turn(self.session)
        self.run_id = turn.events[0].run_id if turn.events else ""

    async def request(self, method: Method):
        request = method.new_request()
        name = method.descriptor.name
        fresh = name in ("DeleteSession", "CloseSession", "DeleteAgent")
        session = await self.client.session(self.agent) if fresh else self.session
        values = {
            "session_id": session, "run_id": self.run_id, "agent": self.agent,
            "created_by": "faults", "content": "hello", "sender": "faults",
        }
        if name in ("GetAgent", "DeleteAgent"):
            values["name"] = await self.client.agent() if fresh else self.agent
        if name == "CreateAgent":
            request.config.name = f"fuzz-{random.getrandbits(40):x}"
            request.config.model = "fault.ok"
        if name == "ExecuteTool":
            values |= {"name": "calculate", "arguments_json": '{"expression": "1+1"}',
                       "call_id": "call_1"}
        if name == "Steer":
            request.start.session_id, request.start.content = session, "hello"
            return request
        if name == "ImportSession":
            request.content = (await self._export()).encode()
            return request
        for field in request.DESCRIPTOR.fields:
            if field.name in values and field.type == FieldDescriptor.TYPE_STRING:
                setattr(request, field.name, values[field.name])
        if name == "SubmitDecision":
            request.decision.request_id = "call_1"
        return request

    async def _export(self) -> str:
        from pilothouse.v1 import session_service_pb2 as pb

        reply = await self.client.sessions.ExportSession(
            pb.ExportSessionRequest(session_id=self.session), timeout=10
        )
        return reply.content.decode()


def _forged_tokens(method: Method, request) -> list[tuple[str, str]]:
    """Well-formed tokens with bad positions, and garbage."""
    name = method.descriptor.name
    if name == "ListAgents":
        kind, filters = "agents", {}
    elif name == "ListSessions":
        kind = "sessions"
        filters = {"agent": request.agent, "created_by": request.created_by, "state": ""}
    elif name == "ListRuns":
        kind, filters = "runs", {"session_id": request.session_id, "statuses": []}
    elif name == "ListMessages":
        kind, filters = "messages", {"session_id": request.session_id, "newest_first": False}
    else:  # a list this suite does not know yet: its tokens are foreign anyway
        kind, filters = name.removeprefix("List").removeprefix("Search").lower(), {}
    positions = {
        "string position": "x", "negative": -1, "huge": 10**30, "float": 1.5, "null": None,
        "list": [1], "object": {"a": 1}, "boolean": True, "10 KB string": "9" * 10_000,
    }
    if kind in ("agents", "runs"):
        del positions["string position"]  # a key: the position of these lists
    tokens = [(f"forged token ({label})", encode_token(kind, value, filters))
              for label, value in positions.items()]
    tokens += [
        ("garbage token", "!!not-a-token!!"),
        ("1 MB token", "A" * (1 << 20)),
        ("nested JSON token", encode_token(kind, 0, filters).replace("A", "") + "W1tb" * 2000),
    ]
    return tokens


def _variants(method: Method, path: str, field: FieldDescriptor, request):
    """(label, value, expected codes or None) for one field."""
    leaf = path.rsplit(".", 1)[-1]
    if field.type == FieldDescriptor.TYPE_STRING:
        if leaf == "page_token":
            yield from ((label, token, INVALID) for label, token in _forged_tokens(method, request))
            return
        huge = INVALID if leaf in ID_FIELDS and method.descriptor.name != "CreateAgent" else None
        yield "empty", "", None
        yield "NUL", "a\x00b", None
        yield "10 KB", "x" * 10_000, huge
        yield "4 MB", "x" * MB4, huge
        yield "deep JSON", "[" * DEEP + "]" * DEEP, None
        yield "non-ASCII 20 KB", "é" * 10_000, huge
    elif field.type == FieldDescriptor.TYPE_BYTES:
        yield "empty", b"", INVALID
        yield "bad UTF-8", b"\xff\xfe\n", INVALID
        yield "deep JSON line", b'{"type":"meta","agent":"faults","created_by":"x","x":' + b"[" * DEEP + b"]" * DEEP + b"}\n", INVALID
        meta = b'{"type":"meta","agent":"faults","created_by":"x"}\n'
        yield "deep JSON message", meta + b'{"type":"message","role":"user","content":"x","x":' + b"{\"a\":" * DEEP + b"1" + b"}" * DEEP + b"}\n", INVALID
        yield "random bytes", random.randbytes(4096), INVALID
    elif field.type == FieldDescriptor.TYPE_ENUM:
        yield "unknown enum 999", 999, None
        yield "negative enum", -1, None
    elif field.type == FieldDescriptor.TYPE_BOOL:
        yield "true", True, None
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
                        FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64):
        yield "negative", -1, None
        bits = 31 if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32) else 63
        yield "huge", 2**bits - 1, None
    elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        bits = 32 if field.type == FieldDescriptor.TYPE_UINT32 else 64
        yield "huge", 2**bits - 1, None


def _judge_outcome(category: Category, name: str, outcome: Outcome, expected) -> None:
    if outcome.hung:
        category.add(name, CRASH, "no answer within the deadline")
        return
    category.status(name, outcome.error, expected)


async def _targeted(category: Category, channel, tools_channel, bases: Bases) -> None:
    for method in methods(RUNTIME_SERVICES) + methods(TOOLS_SERVICES):
        ch = tools_channel if method in methods(TOOLS_SERVICES) else channel
        empty = await invoke(ch, method, method.new_request())
        _judge_outcome(category, f"{method.name} empty request", empty, None)
        template = await bases.request(method)
        for path, field in field_paths(method.input):
            for label, value, expected in _variants(method, path, field, template):
                request = await bases.request(method)
                try:
                    set_path(request, path, [value] if field.is_repeated else value)
                except (ValueError, TypeError):
                    continue  # not representable (e.g. a negative enum in an old runtime)
                outcome = await invoke(ch, method, request)
                _judge_outcome(category, f"{method.name} {path}={label}", outcome, expected)
    await _deep_tool_arguments(category, tools_channel)


async def _deep_tool_arguments(category: Category, tools_channel) -> None:
    """Deeply nested arguments: a tool error the model can read (OK with
    `error`), not INTERNAL."""
    method = next(m for m in methods(TOOLS_SERVICES) if m.descriptor.name == "ExecuteTool")
    for label, arguments in [
        ("array", "[" * DEEP + "]" * DEEP),
        ("object", '{"expression":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}"),
        ("in a string value", json.dumps({"expression": "(" * DEEP + "1" + ")" * DEEP})),
    ]:
        request = method.new_request()
        request.name, request.arguments_json, request.call_id = "calculate", arguments, "c1"
        outcome = await invoke(tools_channel, method, request)
        name = f"ExecuteTool deeply nested arguments ({label}) → tool error"
        verdict, detail = judge(outcome.error, {grpc.StatusCode.OK})
        if verdict == CLEAR and outcome.responses and not outcome.responses[0].error:
            verdict, detail = "unclear", "OK without an error result"
        category.add(name, CRASH if outcome.hung else verdict, detail)


async def _raw(category: Category, channel, tools_channel) -> None:
    for method in methods(RUNTIME_SERVICES) + methods(TOOLS_SERVICES):
        ch = tools_channel if method in methods(TOOLS_SERVICES) else channel
        # A length of 16 with 3 bytes behind it; wire type 7 does not exist.
        payloads = [("truncated field", length_delimited(1, b"abc").replace(b"\x03", b"\x10", 1)),
                    ("invalid wire type", b"\x0f\x01")]
        bad_utf8 = bytes_in_first_string(method.input, b"ok\xff\xfe\xfd")
        if bad_utf8 is not None:
            payloads.insert(0, ("bad UTF-8 in a string field", bad_utf8))
        for label, payload in payloads:
            outcome = await invoke(ch, method, payload, timeout=10)
            _judge_outcome(category, f"{method.name} raw bytes: {label}", outcome, INVALID)
        outcome = await invoke(ch, method, random.Random(method.path).randbytes(64), timeout=10)
        _judge_outcome(category, f"{method.name} raw bytes: random", outcome, None)


def _strategy(field: FieldDescriptor, bases: Bases | None, depth: int):
    """Values of one field; `bases` (None: none) mixes in real ids."""
    leaf = field.name
    if field.type == FieldDescriptor.TYPE_STRING:
        real = {} if bases is None else {"session_id": [bases.session], "run_id": [bases.run_id], "agent": ["faults"],
                "name": ["faults", "calculate", "current_time"],
                "arguments_json": ['{"expression":"2*3"}', "{}"]}.get(leaf, [])
        text = st.text(max_size=64)
        if leaf == "arguments_json":
            text = text | st.recursive(st.none() | st.integers() | st.text(max_size=8),
                                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                       max_leaves=20).map(json.dumps)
        return st.sampled_from(real) | text if real else text
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=256)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 50)
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if field.type == FieldDescriptor.TYPE_FLOAT else 64)
    if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3 and not field.message_type.GetOptions().map_entry:
        return message_strategy(field.message_type, bases, depth + 1)
    return None


def message_strategy(descriptor, bases: Bases | None, depth: int = 0):
    """Random messages of `descriptor`: any subset of fields set."""
    from google.protobuf.message_factory import GetMessageClass

    cls = GetMessageClass(descriptor)
    optional = {}
    for field in descriptor.fields:
        strategy = _strategy(field, bases, depth)
        if strategy is None:
            continue
        optional[field.name] = st.lists(strategy, max_size=3) if field.is_repeated else strategy

    def build(values: dict) -> object:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.is_repeated:
                    getattr(message, name).extend(value)
                else:
                    getattr(message, name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def _property_based(category: Category, channels: dict, bases: Bases, examples: int,
                    loop: asyncio.AbstractEventLoop) -> None:
    """Runs in a worker thread (hypothesis is synchronous); each example is
    sent on the suite's event loop."""
    for method in methods(RUNTIME_SERVICES) + methods(TOOLS_SERVICES):
        channel = channels["tools" if method in methods(TOOLS_SERVICES) else "runtime"]
        # Random deletes, closes and compactions get no real ids: the suite's
        # session and its history must live on (the audit compares them).
        destructive = method.descriptor.name in (
            "DeleteSession", "CloseSession", "DeleteAgent", "CompactSession"
        )
        strategy = message_strategy(method.input, None if destructive else bases)
        _fuzz(category, channel, method, strategy, examples, loop)


def _fuzz(category: Category, channel, method: Method, strategy, examples: int, loop) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(request) -> None:
        future = asyncio.run_coroutine_threadsafe(invoke(channel, method, request, timeout=15), loop)
        _judge_outcome(category, f"{method.name} random message", future.result(), None)

    check()


async def run(category: Category, work, quick: bool) -> None:
    async with Stack.create(work, toolset=None) as stack, Client(stack.runtime.address) as client:
        bases = Bases(client)
        await bases.setup()
        ledger = Ledger()
        await ledger.record(client, bases.session)
        tools_channel = grpc.aio.insecure_channel(stack.tools[0].address)
        try:
            if quick:
                await _quick(category, client.channel, tools_channel, bases)
            else:
                await _targeted(category, client.channel, tools_channel, bases)
                await _raw(category, client.channel, tools_channel)
            loop = asyncio.get_running_loop()
            channels = {"runtime": client.channel, "tools": tools_channel}
            await asyncio.to_thread(
                _property_based, category, channels, bases, 3 if quick else 40, loop
            )
        finally:
            await tools_channel.close()
        # Still serving, nothing stored lost.
        alive = stack.runtime.alive() and stack.tools[0].alive()
        turn = await client.turn(bases.session)
        lost, invalid = await ledger.audit_all(client)
        verdict = CLEAR if alive and turn.done is not None else CRASH
        category.add("both servers still serve after the bad input", verdict, turn.describe(),
                     lost=lost, invalid=invalid)


async def _quick(category: Category, channel, tools_channel, bases: Bases) -> None:
    """One of each kind of defect-finding case."""
    get_session = next(m for m in methods(RUNTIME_SERVICES) if m.descriptor.name == "GetSession")
    list_messages = next(m for m in methods(RUNTIME_SERVICES) if m.descriptor.name == "ListMessages")
    import_session = next(m for m in methods(RUNTIME_SERVICES) if m.descriptor.name == "ImportSession")
    execute = next(m for m in methods(TOOLS_SERVICES) if m.descriptor.name == "ExecuteTool")
    for size in (10_000, MB4):
        request = get_session.new_request()
        request.session_id = "x" * size
        _judge_outcome(category, f"GetSession session_id={size} bytes", await invoke(channel, get_session, request), INVALID)
    request = await bases.request(list_messages)
    for label, token in _forged_tokens(list_messages, request)[:4]:
        request.page_token = token
        _judge_outcome(category, f"ListMessages page_token={label}", await invoke(channel, list_messages, request), INVALID)
    request = await bases.request(import_session)
    for label, value, expected in _variants(import_session, "content", import_session.input.fields_by_name["content"], request):
        if "deep" in label:
            request.content = value
            _judge_outcome(category, f"ImportSession content={label}", await invoke(channel, import_session, request), expected)
    for method, ch in ((get_session, channel), (execute, tools_channel)):
        payload = bytes_in_first_string(method.input, b"ok\xff\xfe")
        _judge_outcome(category, f"{method.name} raw bytes: bad UTF-8", await invoke(ch, method, payload), INVALID)
    await _deep_tool_arguments(category, tools_channel)
    steer = next(m for m in methods(RUNTIME_SERVICES) if m.descriptor.name == "Steer")
    request = runs_pb.SteerRequest()
    request.start.session_id, request.start.content = "s" * 10_000, "hi"
    _judge_outcome(category, "Steer start.session_id=10 KB", await invoke(channel, steer, request), INVALID)
