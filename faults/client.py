"""The suite's client of the runtime: generated stubs on one grpc.aio
channel, a turn that never waits forever, and the history audit (stored
messages lost, invalid histories) every category ends with."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field

import grpc
from report import CLEAR, CRASH, PYTHON_TEXT, UNCLEAR, judge

from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    event_pb2,
    message_pb2,
    run_service_pb2 as runs_pb,
    run_service_pb2_grpc as runs_grpc,
    session_service_pb2 as sessions_pb,
    session_service_pb2_grpc as sessions_grpc,
)

_names = itertools.count(1)
#: Big enough for the largest answers a case provokes (tens of MB).
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass
class Turn:
    """How one StreamTo ended: `done` (the final event), `error` (the RPC's
    status), or `hung` (no end within the timeout)."""

    events: list[event_pb2.AgentEvent] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    hung: bool = False
    seconds: float = 0.0

    @property
    def done(self) -> event_pb2.AgentResponse | None:
        for event in reversed(self.events):
            if event.HasField("done"):
                return event.done
        return None

    @property
    def stop_reason(self) -> str:
        done = self.done
        return event_pb2.StopReason.Name(done.stop_reason) if done is not None else ""

    def results(self) -> list[event_pb2.ToolResult]:
        return [e.tool_result for e in self.events if e.HasField("tool_result")]

    def describe(self) -> str:
        if self.hung:
            return f"no end within {self.seconds:.0f}s"
        if self.error is not None:
            return f"{self.error.code().name}: {(self.error.details() or '')[:160]}"
        done = self.done
        if done is None:
            return "stream ended without done"
        return f"{self.stop_reason} {done.error[:160]}".strip()


class Client:
    """Stubs of the runtime's three services on one channel to `address`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.agents = agents_grpc.AgentServiceStub(self.channel)
        self.sessions = sessions_grpc.SessionServiceStub(self.channel)
        self.runs = runs_grpc.RunServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def agent(self, model: str = "fault.ok", tools: tuple[str, ...] = (), **config) -> str:
        """A new agent on `model` (a fault scenario) with `tools`."""
        name = f"fault-{uuid.uuid4().hex[:8]}-{next(_names)}"
        await self.agents.CreateAgent(
            agents_pb.CreateAgentRequest(
                config=agent_pb2.AgentConfig(name=name, model=model, tools=tools, **config)
            ),
            timeout=10,
        )
        return name

    async def session(self, agent: str) -> str:
        reply = await self.sessions.CreateSession(
            sessions_pb.CreateSessionRequest(agent=agent, created_by="faults"), timeout=10
        )
        return reply.session.id

    async def new_session(self, model: str = "fault.ok", tools: tuple[str, ...] = (), **config) -> str:
        return await self.session(await self.agent(model, tools, **config))

    async def turn(self, session_id: str, content: str | None = None, *, timeout: float = 60,
                   on_event=None) -> Turn:
        """StreamTo to the end (or `timeout`). `content` defaults to a unique
        message; `on_event(event)` is awaited for every event as it comes."""
        turn = Turn()
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = runs_pb.StreamToRequest(
            session_id=session_id, content=content or f"hello {uuid.uuid4().hex}"
        )
        call = self.runs.StreamTo(request, timeout=timeout + 30)
        try:
            async with asyncio.timeout(timeout):
                async for response in call:
                    turn.events.append(response.event)
                    if on_event is not None:
                        await on_event(response.event)
        except TimeoutError:
            turn.hung = True
            call.cancel()
        except grpc.aio.AioRpcError as exc:
            turn.error = exc
        turn.seconds = loop.time() - started
        return turn

    async def messages(self, session_id: str) -> list[message_pb2.Message]:
        """The whole stored history, every page."""
        out: list[message_pb2.Message] = []
        token = ""
        while True:
            reply = await self.sessions.ListMessages(
                sessions_pb.ListMessagesRequest(session_id=session_id, page_size=1000,
                                                page_token=token),
                timeout=30,
            )
            out.extend(reply.messages)
            token = reply.next_page_token
            if not token:
                return out


def judge_turn(turn: Turn, expected: set[str]) -> tuple[str, str]:
    """(verdict, detail) for a turn: clear when `done` came with one of the
    `expected` stop reasons (names like "STOP_REASON_ERROR") and an error
    text without Python in it; crash when it hung."""
    if turn.hung:
        return CRASH, turn.describe()
    if turn.error is not None:
        return judge(turn.error, set())  # StreamTo must end with done, not a status
    done = turn.done
    if done is None:
        return UNCLEAR, "stream ended without done"
    if turn.stop_reason not in expected:
        return UNCLEAR, f"wrong stop reason (expected {', '.join(sorted(expected))}): {turn.describe()}"
    if PYTHON_TEXT.search(done.error):
        return UNCLEAR, f"Python text in the error: {done.error[:160]}"
    return CLEAR, turn.describe()


def unanswered_tool_calls(messages: list[message_pb2.Message]) -> int:
    """Assistant tool calls without their tool result right after them."""
    missing = 0
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message.role == message_pb2.ROLE_ASSISTANT and message.tool_calls:
            answered = set()
            while index < len(messages) and messages[index].role == message_pb2.ROLE_TOOL:
                answered.add(messages[index].tool_call_id)
                index += 1
            missing += sum(1 for c in message.tool_calls if c.id not in answered)
    return missing


def _key(message: message_pb2.Message) -> tuple[int, str, str]:
    return (message.role, message.content, message.tool_call_id)


@dataclass
class Ledger:
    """What the store has acknowledged: after a run whose `done` arrived, its
    session's history is recorded; `audit` later counts recorded messages
    that are gone (or changed) and histories that became invalid."""

    committed: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)

    async def record(self, client: Client, session_id: str) -> list[message_pb2.Message]:
        messages = await client.messages(session_id)
        self.committed[session_id] = [_key(m) for m in messages]
        return messages

    async def audit(self, client: Client, session_id: str) -> tuple[int, int]:
        """(messages lost, 1 if the history is invalid else 0) for one session."""
        try:
            messages = await client.messages(session_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return len(self.committed.get(session_id, [])), 0
            raise
        now = [_key(m) for m in messages]
        before = self.committed.get(session_id, [])
        lost = sum(1 for i, key in enumerate(before) if i >= len(now) or now[i] != key)
        return lost, int(unanswered_tool_calls(messages) > 0)

    async def audit_all(self, client: Client) -> tuple[int, int]:
        lost = invalid = 0
        for session_id in list(self.committed):
            one_lost, one_invalid = await self.audit(client, session_id)
            lost += one_lost
            invalid += one_invalid
        return lost, invalid
