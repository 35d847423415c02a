"""Small A2A agents for the tests, served with the official `a2a-sdk`
server (JSON-RPC binding, Starlette under uvicorn) on a free port of
127.0.0.1, in the test's event loop.

- `forecaster`: streams its answer as two chunks of one artifact
  ("Forecast for " and the task upper-cased), then completes.
- `sleeper`: starts working and waits until cancelled; `cancelled` counts
  the cancellations its executor saw.
- `asker`: asks for input (INPUT_REQUIRED) with a question.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from a2a.helpers.proto_helpers import new_task, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import a2a_pb2 as a2a
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from tests.conftest import wait_until


@dataclass
class Seen:
    """What the agents saw: the tasks' texts and the cancellations."""

    tasks: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    #: The `traceparent` header of every request but the agent card's.
    traceparents: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


class _Executor(AgentExecutor):
    def __init__(self, kind: str, seen: Seen) -> None:
        self.kind = kind
        self.seen = seen

    async def execute(self, context: RequestContext, event_queue) -> None:
        text = context.get_user_input()
        self.seen.tasks.append(text)
        task = context.current_task or new_task(
            context.task_id or "", context.context_id or "", a2a.TASK_STATE_SUBMITTED,
            history=[context.message] if context.message else [],
        )
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if self.kind == "forecaster":
            await updater.add_artifact([a2a.Part(text="Forecast for ")], artifact_id="answer")
            await updater.add_artifact([a2a.Part(text=text.upper())], artifact_id="answer",
                                       append=True, last_chunk=True)
            await updater.complete()
        elif self.kind == "asker":
            await updater.requires_input(new_text_message(
                "Which city?", context_id=task.context_id, task_id=task.id, role=a2a.ROLE_AGENT
            ))
        else:
            self.seen.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.seen.cancelled.append(task.id)
                raise

    async def cancel(self, context: RequestContext, event_queue) -> None:
        if context.task_id:
            self.seen.cancelled.append(f"cancel:{context.task_id}")
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


@dataclass
class A2AAgent:
    url: str
    seen: Seen

    @property
    def card_url(self) -> str:
        return f"{self.url}/.well-known/agent-card.json"


@contextlib.asynccontextmanager
async def serve_agent(kind: str) -> AsyncIterator[A2AAgent]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    card = a2a.AgentCard(
        name=kind, description=f"The test {kind}.", version="1.0.0",
        supported_interfaces=[a2a.AgentInterface(url=url + "/", protocol_binding="JSONRPC",
                                                 protocol_version="1.0")],
        capabilities=a2a.AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[a2a.AgentSkill(id=kind, name=kind, description=f"The test {kind}.", tags=["test"])],
    )
    seen = Seen()
    handler = DefaultRequestHandler(_Executor(kind, seen), InMemoryTaskStore(), card)

    class Record(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            if request.method == "POST":
                seen.traceparents.append(request.headers.get("traceparent", ""))
            return await call_next(request)

    app = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")],
                    middleware=[Middleware(Record)])

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started)
        yield A2AAgent(url, seen)
    finally:
        server.should_exit = True
        await task
        sock.close()
