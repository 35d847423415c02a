"""Remote A2A agents as delegates, through the official `a2a-sdk` client.

A `delegate` call to a remote delegate sends the task as one A2A user
message (streaming when the agent card says the agent streams) and waits
for the task's end. Its progress is forwarded into the parent's log as
`DelegationProgress` events made from the A2A updates: the task's start
as `run_started`, each artifact update's text as a `text_delta`, a status
message's text as a `text_delta`, and the end as `done`. The call's
output is the text of the task's artifacts (or of its final status
message, or of a direct message reply); a failed, rejected or cancelled
task gives an error result, and so does a task that asks for input or
authentication (it is cancelled: a delegated task cannot ask the user).
Cancelling the call cancels the A2A task (CancelTask).

Agent cards are fetched once per URL and kept for `card_ttl_s` seconds.
Requests carry the trace context (`traceparent`), so a traced A2A agent's
spans join the delegating run's trace under its `execute_tool` span.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import propagate

from pilothouse.runtime.agent import RemoteDelegate
from pilothouse.runtime.events import AgentResponse, Done, Event, RunStarted, StopReason, TextDelta
from pilothouse.runtime.tools import ToolOutcome

log = logging.getLogger(__name__)

#: Called with (task id, event, sequence, time) for each forwarded update.
Progress = Callable[[str, Event, int, float], None]

_WELL_KNOWN = "/.well-known/agent-card.json"


def available() -> bool:
    """Whether the a2a-sdk is installed (found, not imported: importing it
    costs start-up time, so that waits for the first remote call)."""
    return importlib.util.find_spec("a2a") is not None


def _split_card_url(url: str) -> tuple[str, str]:
    """(base URL, card path) of an agent card URL or an agent's base URL."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path if parts.path.endswith(".json") else parts.path.rstrip("/") + _WELL_KNOWN
    return base, path


class RemoteAgents:
    """The A2A client side of remote delegation; `timeout_s` bounds one
    HTTP request (a stream's silence), in seconds."""

    def __init__(self, *, timeout_s: float = 300.0, card_ttl_s: float = 300.0) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            event_hooks={"request": [_traced]},
        )
        self.card_ttl_s = card_ttl_s
        self._cards: dict[str, tuple[float, Any]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def card(self, url: str) -> Any:
        """The agent card at `url` (cached)."""
        from a2a.client import A2ACardResolver

        cached = self._cards.get(url)
        if cached is not None and time.monotonic() - cached[0] < self.card_ttl_s:
            return cached[1]
        base, path = _split_card_url(url)
        card = await A2ACardResolver(self._http, base, path).get_agent_card()
        self._cards[url] = (time.monotonic(), card)
        return card

    async def run(
        self, delegate: RemoteDelegate, task: str, progress: Progress, *, parent_run_id: str = ""
    ) -> ToolOutcome:
        """Send `task` to the remote agent and wait for its answer (see the
        module docstring). Never raises but CancelledError."""
        from a2a.client import A2AClientError, ClientConfig, ClientFactory
        from a2a.types import a2a_pb2 as a2a
        from a2a.utils.constants import TransportProtocol

        try:
            card = await self.card(delegate.agent_card_url)
            client = ClientFactory(ClientConfig(
                streaming=True, httpx_client=self._http,
                supported_protocol_bindings=[TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON],
            )).create(card)
        except (A2AClientError, httpx.HTTPError, ValueError) as exc:
            return ToolOutcome(error=f"cannot reach the A2A agent {delegate.name}: {exc}")
        message = a2a.Message(
            role=a2a.ROLE_USER, message_id=uuid.uuid4().hex, parts=[a2a.Part(text=task)],
            metadata=_metadata({"pilothouse_parent_run_id": parent_run_id}),
        )
        state = _TaskState(delegate.name, task, progress)
        try:
            async for response in client.send_message(a2a.SendMessageRequest(message=message)):
                state.accept(response)
                if state.needs_input:
                    break
        except asyncio.CancelledError:
            if state.task_id and not state.ended:
                await asyncio.shield(_cancel(client, state.task_id))
            raise
        except (A2AClientError, httpx.HTTPError) as exc:
            return state.finish(error=f"the A2A agent {delegate.name} failed: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await client.close()
        if state.needs_input:
            if state.task_id:
                await _cancel(client, state.task_id)
            return state.finish(error=(
                f"the A2A agent {delegate.name} asked for input, which a delegated task cannot "
                f"give: {state.status_text or 'no question given'}"
            ))
        return state.finish()


async def _traced(request: httpx.Request) -> None:
    """Send the trace context (W3C `traceparent`), so that a traced A2A
    agent's spans join the delegating run's trace."""
    propagate.inject(request.headers)


def _metadata(values: dict[str, str]) -> Any:
    from google.protobuf import struct_pb2

    data = struct_pb2.Struct()
    data.update({k: v for k, v in values.items() if v})
    return data


async def _cancel(client: Any, task_id: str) -> None:
    from a2a.types import a2a_pb2 as a2a

    try:
        async with asyncio.timeout(10.0):
            await client.cancel_task(a2a.CancelTaskRequest(id=task_id))
    except Exception as exc:  # the task may have ended meanwhile
        log.info("cancelling A2A task %s: %s", task_id, exc)


class _TaskState:
    """An A2A task followed through its stream responses."""

    def __init__(self, name: str, task: str, progress: Progress) -> None:
        from a2a.types import a2a_pb2 as a2a

        self._a2a = a2a
        self.name = name
        self.task = task
        self.progress = progress
        self.task_id = ""
        self.state = a2a.TASK_STATE_UNSPECIFIED
        self.artifacts: dict[str, list[str]] = {}
        self.status_text = ""
        self.reply = ""
        self.sequence = 0
        self.started = False

    @property
    def ended(self) -> bool:
        a2a = self._a2a
        return self.state in (a2a.TASK_STATE_COMPLETED, a2a.TASK_STATE_FAILED,
                              a2a.TASK_STATE_CANCELED, a2a.TASK_STATE_REJECTED)

    @property
    def needs_input(self) -> bool:
        a2a = self._a2a
        return self.state in (a2a.TASK_STATE_INPUT_REQUIRED, a2a.TASK_STATE_AUTH_REQUIRED)

    def _emit(self, event: Event) -> None:
        self.sequence += 1
        self.progress(self.task_id, event, self.sequence, time.time())

    def _start(self, task_id: str) -> None:
        if not self.started:
            self.task_id = task_id
            self.started = True
            self._emit(RunStarted(self.name, "", self.task, ""))

    def accept(self, response: Any) -> None:
        kind = response.WhichOneof("payload")
        if kind == "task":
            task = response.task
            self._start(task.id)
            self.state = task.status.state
            for artifact in task.artifacts:
                self.artifacts[artifact.artifact_id] = [_text(artifact.parts)]
            self._status(task.status)
        elif kind == "status_update":
            self._start(response.status_update.task_id)
            self.state = response.status_update.status.state
            self._status(response.status_update.status)
        elif kind == "artifact_update":
            update = response.artifact_update
            self._start(update.task_id)
            text = _text(update.artifact.parts)
            chunks = self.artifacts.setdefault(update.artifact.artifact_id, [])
            if not update.append:
                chunks.clear()
            chunks.append(text)
            if text:
                self._emit(TextDelta(text))
        elif kind == "message":  # a direct reply, no task
            self._start(response.message.task_id or response.message.message_id)
            self.reply = _text(response.message.parts)
            self.state = self._a2a.TASK_STATE_COMPLETED
            if self.reply:
                self._emit(TextDelta(self.reply))

    def _status(self, status: Any) -> None:
        if status.HasField("message"):
            text = _text(status.message.parts)
            if text and text != self.status_text:
                self.status_text = text
                self._emit(TextDelta(text))

    def finish(self, error: str = "") -> ToolOutcome:
        """The call's outcome, after a `done` for the parent's stream."""
        a2a = self._a2a
        answer = "".join("".join(chunks) for chunks in self.artifacts.values()) or self.reply
        answer = answer or self.status_text
        if not error and self.state != a2a.TASK_STATE_COMPLETED:
            name = a2a.TaskState.Name(self.state).removeprefix("TASK_STATE_").lower()
            why = f": {self.status_text}" if self.status_text else ""
            error = f"the A2A agent {self.name} ended its task as {name}{why}"
        stop = StopReason.ERROR if error else StopReason.TEXT_RESPONSE
        if self.started:
            self._emit(Done(AgentResponse(answer if not error else "", 0, stop, [], "",
                                          error=error)))
        return ToolOutcome(error=error) if error else ToolOutcome(output=answer)


def _text(parts: Any) -> str:
    return "".join(part.text for part in parts if part.WhichOneof("content") == "text")
