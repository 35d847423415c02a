"""A Pilothouse run seen as an A2A task: its events folded into a `Task`
and translated, one by one, into the A2A stream's update events.

One `TaskProjection` follows one run's event log in sequence order.
`apply(event)` updates the task and returns the A2A events the event
becomes (often none); `task()` is the task as of the last event applied,
the snapshot a stream starts with and `GetTask` returns. So a stream that
starts with a snapshot taken at sequence N and goes on with the events
after N shows every event once, in order, with no gap.

The mapping:

- The run's user message is the first message of the task's `history`;
  steering messages and answers to approvals and questions follow it as
  user messages, the agent's status messages as agent messages.
- `run_queued` → SUBMITTED; `run_started`, `decision_applied` (when nothing
  else is pending), `run_resumed` → WORKING.
- Text: each text segment of the model (`text_start` … `text_end`) is one
  artifact named "response" (`<run id>-text-<n>`): its first delta creates
  it (`append` false), later deltas are appended, and `text_end` sends an
  empty last chunk (`last_chunk` true). A segment voided by a retried round
  or a takeover is replaced by an empty one. Thinking is not shown.
- `tool_calls_start` and `tool_result` are WORKING status updates whose
  message has a text part for people and a data part for programs
  (`{"toolCalls": [...]}`, `{"toolResult": {...}}`).
- `approval_required` and `question_asked` → INPUT_REQUIRED, the message
  saying what is asked and how to answer, with a data part
  (`{"approvalRequired": {...}}`, `{"questionAsked": {...}}`) carrying the
  request id.
- `done` → COMPLETED (a text response, or a round with nothing to do),
  CANCELED (cancelled), FAILED (an error, a timeout, the token budget or
  `max_iterations` reached, a run interrupted by a crash), with the stop
  reason and usage in the status update's metadata and, on failure, a
  message saying why.

Every update event carries `metadata.pilothouse` with the run event's
`sequence` and `event` kind.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from a2a.types import a2a_pb2 as pb
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from pilothouse.runtime import events as ev
from pilothouse.runtime.events import RunEvent, StopReason

TaskEvent = pb.Task | pb.TaskStatusUpdateEvent | pb.TaskArtifactUpdateEvent

TERMINAL_STATES = frozenset(
    {pb.TASK_STATE_COMPLETED, pb.TASK_STATE_CANCELED, pb.TASK_STATE_FAILED, pb.TASK_STATE_REJECTED}
)
#: The name of every text artifact.
RESPONSE_ARTIFACT = "response"

_COMPLETED = frozenset({StopReason.TEXT_RESPONSE, StopReason.NO_ACTION})
_FAILURES = {
    StopReason.ERROR: "the model failed",
    StopReason.MAX_ITERATIONS: "the agent reached its max_iterations without an answer",
    StopReason.TIMEOUT: "the run reached its timeout",
    StopReason.BUDGET_EXCEEDED: "the run used up its token budget",
    StopReason.INTERRUPTED: "the server running it stopped and the run was not resumed",
}


def task_state_of(stop: StopReason) -> pb.TaskState:
    """The terminal task state of a run that ended with `stop`."""
    if stop in _COMPLETED:
        return pb.TASK_STATE_COMPLETED
    if stop is StopReason.CANCELLED:
        return pb.TASK_STATE_CANCELED
    return pb.TASK_STATE_FAILED


@dataclass(slots=True)
class PendingRequest:
    """An approval or question the run waits for; `sequence` is the event
    that asked it."""

    request_id: str
    kind: str  # "approval" | "question"
    sequence: int
    event: ev.ApprovalRequired | ev.QuestionAsked


@dataclass(slots=True)
class _Artifact:
    artifact_id: str
    chunks: list[str]
    closed: bool = False


class TaskProjection:
    """The A2A task of one run (`task_id` = run id, `context_id` = session
    id), kept up to date event by event (see the module docstring)."""

    def __init__(self, task_id: str, context_id: str, agent: str = "") -> None:
        self.task_id = task_id
        self.context_id = context_id
        self.agent = agent
        self.state: pb.TaskState = pb.TASK_STATE_SUBMITTED
        self.status_message: pb.Message | None = None
        self.status_time = 0.0
        self.history: list[pb.Message] = []
        self.pending: OrderedDict[str, PendingRequest] = OrderedDict()
        self.last_sequence = 0
        self.stop_reason: StopReason | None = None
        self._artifacts: OrderedDict[str, _Artifact] = OrderedDict()
        self._open: _Artifact | None = None
        self._segments = 0
        self._opened = False  # text_start seen for the open segment

    # --- state ---------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def input_required(self) -> bool:
        return self.state == pb.TASK_STATE_INPUT_REQUIRED

    def first_pending(self) -> PendingRequest | None:
        return next(iter(self.pending.values()), None)

    def task(self) -> pb.Task:
        """The task as of the last event applied (a new message each call)."""
        task = pb.Task(id=self.task_id, context_id=self.context_id, status=self._status())
        for artifact in self._artifacts.values():
            task.artifacts.append(_text_artifact(artifact.artifact_id, "".join(artifact.chunks)))
        task.history.extend(self.history)
        task.metadata.update(
            {"pilothouse": {"agent": self.agent, "sequence": self.last_sequence,
                            **({"stopReason": self.stop_reason.value} if self.stop_reason else {})}}
        )
        return task

    def answered(self, request_id: str) -> None:
        """A decision for `request_id` was just submitted: the task works
        again unless another request is pending (its `decision_applied`
        follows in the log)."""
        if self.pending.pop(request_id, None) is None:
            return
        following = self.first_pending()
        if following is None:
            self.state = pb.TASK_STATE_WORKING
            self.status_message = None
        else:
            self.status_message = self._ask_message(following)

    # --- events ----------------------------------------------------------------

    def apply(self, recorded: RunEvent) -> list[TaskEvent]:
        """Fold one run event (in sequence order) into the task; the A2A
        update events it becomes. Heartbeats and events already applied
        give none."""
        event = recorded.event
        if isinstance(event, ev.Heartbeat) or recorded.sequence <= self.last_sequence:
            return []
        self.last_sequence = recorded.sequence
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return []
        return handler(self, recorded)

    # one method per event kind -------------------------------------------------

    def _queued(self, recorded: RunEvent) -> list[TaskEvent]:
        assert isinstance(recorded.event, ev.RunQueued)
        text = f"queued behind the session's active run (position {recorded.event.position})"
        return [self._status_update(recorded, pb.TASK_STATE_SUBMITTED, self._agent_message(recorded, text))]

    def _started(self, recorded: RunEvent) -> list[TaskEvent]:
        assert isinstance(recorded.event, ev.RunStarted)
        if not any(m.role == pb.ROLE_USER for m in self.history):
            self.history.insert(0, _user_message(self, f"{self.task_id}-user", recorded.event.content))
        return [self._status_update(recorded, pb.TASK_STATE_WORKING, None)]

    def _resumed(self, recorded: RunEvent) -> list[TaskEvent]:
        # The earlier attempt's pending requests are asked again, with the
        # same ids, by the events that follow.
        self.pending.clear()
        out = self._void_open_text(recorded)
        text = "the run was taken over by another server and goes on from its last checkpoint"
        return [*out, self._status_update(recorded, pb.TASK_STATE_WORKING, self._agent_message(recorded, text))]

    def _text_start(self, recorded: RunEvent) -> list[TaskEvent]:
        out = self._close_open_text(recorded)
        self._opened = True
        return out

    def _text_delta(self, recorded: RunEvent) -> list[TaskEvent]:
        assert isinstance(recorded.event, ev.TextDelta)
        text = recorded.event.text
        if not text:
            return []
        if self._open is None:
            self._segments += 1
            self._open = _Artifact(f"{self.task_id}-text-{self._segments}", [text])
            self._artifacts[self._open.artifact_id] = self._open
            return [self._artifact_update(recorded, self._open, text, append=False)]
        self._open.chunks.append(text)
        return [self._artifact_update(recorded, self._open, text, append=True)]

    def _text_end(self, recorded: RunEvent) -> list[TaskEvent]:
        self._opened = False
        return self._close_open_text(recorded)

    def _retried(self, recorded: RunEvent) -> list[TaskEvent]:
        return self._void_open_text(recorded)

    def _tool_calls(self, recorded: RunEvent) -> list[TaskEvent]:
        assert isinstance(recorded.event, ev.ToolCallsStart)
        out = self._close_open_text(recorded)
        calls = recorded.event.tool_calls
        text = "Calling " + ", ".join(f"{c.name}({c.arguments})" for c in calls)
        data = {"toolCalls": [_call_data(c) for c in calls]}
        message = self._agent_message(recorded, text, data)
        return [*out, self._status_update(recorded, pb.TASK_STATE_WORKING, message)]

    def _tool_result(self, recorded: RunEvent) -> list[TaskEvent]:
        result = recorded.event
        assert isinstance(result, ev.ToolResult)
        outcome = f"failed: {result.error}" if result.error is not None else result.output
        data: dict[str, Any] = {"callId": result.call_id, "name": result.name,
                                "durationMs": result.duration_ms}
        if result.error is not None:
            data["error"] = result.error
        else:
            data["output"] = result.output
        message = self._agent_message(recorded, f"{result.name} → {outcome}", {"toolResult": data})
        return [self._status_update(recorded, pb.TASK_STATE_WORKING, message)]

    def _steered(self, recorded: RunEvent) -> list[TaskEvent]:
        assert isinstance(recorded.event, ev.UserSteered)
        self.history.append(
            _user_message(self, f"{self.task_id}-{recorded.sequence}", recorded.event.content)
        )
        return []

    def _approval(self, recorded: RunEvent) -> list[TaskEvent]:
        asked = recorded.event
        assert isinstance(asked, ev.ApprovalRequired)
        self.pending[asked.request_id] = PendingRequest(asked.request_id, "approval", recorded.sequence, asked)
        return [self._ask(recorded)]

    def _question(self, recorded: RunEvent) -> list[TaskEvent]:
        asked = recorded.event
        assert isinstance(asked, ev.QuestionAsked)
        self.pending[asked.request_id] = PendingRequest(asked.request_id, "question", recorded.sequence, asked)
        return [self._ask(recorded)]

    def _decided(self, recorded: RunEvent) -> list[TaskEvent]:
        applied = recorded.event
        assert isinstance(applied, ev.DecisionApplied)
        self.pending.pop(applied.request_id, None)
        self.history.append(
            _user_message(self, f"{self.task_id}-{recorded.sequence}", describe_decision(applied.decision),
                          {"decision": decision_data(applied.decision)})
        )
        if self.pending:  # the next request is still waiting
            return [self._ask(recorded)]
        return [self._status_update(recorded, pb.TASK_STATE_WORKING, None)]

    def _done(self, recorded: RunEvent) -> list[TaskEvent]:
        done = recorded.event
        assert isinstance(done, ev.Done)
        response = done.response
        out = self._close_open_text(recorded)
        self.pending.clear()
        self.stop_reason = response.stop_reason
        state = task_state_of(response.stop_reason)
        message = None
        if state == pb.TASK_STATE_FAILED:
            why = _FAILURES.get(response.stop_reason, response.stop_reason.value)
            message = self._agent_message(recorded, f"{why}: {response.error}" if response.error else why)
        elif state == pb.TASK_STATE_CANCELED:
            message = self._agent_message(recorded, response.error or "the run was cancelled")
        usage = response.usage
        extra = {
            "stopReason": response.stop_reason.value,
            "iterations": response.iterations,
            "model": response.model,
            "usage": {"promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens,
                      "totalTokens": usage.total_tokens},
        }
        return [*out, self._status_update(recorded, state, message, final=True, extra=extra)]

    # --- building blocks ------------------------------------------------------------

    def _ask(self, recorded: RunEvent) -> TaskEvent:
        # The status always shows the oldest pending request: the one the
        # next message answers.
        pending = self.first_pending()
        assert pending is not None
        return self._status_update(recorded, pb.TASK_STATE_INPUT_REQUIRED, self._ask_message(pending))

    def _ask_message(self, pending: PendingRequest) -> pb.Message:
        asked = pending.event
        if isinstance(asked, ev.ApprovalRequired):
            call = asked.tool_call
            text = (f"Approve calling {call.name}({call.arguments})? {asked.reason} "
                    'Answer "approve", "always" (this tool, for the rest of the conversation) '
                    'or "deny" followed by a reason.').replace("  ", " ")
            data = {"approvalRequired": {"requestId": asked.request_id, "toolCall": _call_data(call),
                                         "reason": asked.reason, "expireTime": asked.expire_time}}
        else:
            text = asked.question
            if asked.options:
                text += f" (options: {', '.join(asked.options)}" + (
                    "; several may be chosen, comma-separated)" if asked.multi_select else ")")
            data = {"questionAsked": {"requestId": asked.request_id, "question": asked.question,
                                      "options": list(asked.options), "multiSelect": asked.multi_select,
                                      "expireTime": asked.expire_time}}
        return self._message(f"{self.task_id}-{pending.sequence}", text, data)

    def _agent_message(
        self, recorded: RunEvent, text: str, data: dict[str, Any] | None = None
    ) -> pb.Message:
        return self._message(f"{self.task_id}-{recorded.sequence}", text, data)

    def _message(self, message_id: str, text: str, data: dict[str, Any] | None) -> pb.Message:
        message = pb.Message(
            message_id=message_id, context_id=self.context_id, task_id=self.task_id,
            role=pb.ROLE_AGENT,
        )
        message.parts.append(pb.Part(text=text))
        if data is not None:
            message.parts.append(data_part(data))
        return message

    def _status_update(
        self,
        recorded: RunEvent,
        state: pb.TaskState,
        message: pb.Message | None,
        *,
        final: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> pb.TaskStatusUpdateEvent:
        self.state = state
        self.status_message = message
        self.status_time = recorded.time
        if message is not None and not any(m.message_id == message.message_id for m in self.history):
            self.history.append(message)
        update = pb.TaskStatusUpdateEvent(
            task_id=self.task_id, context_id=self.context_id, status=self._status()
        )
        update.metadata.update({"pilothouse": _event_metadata(recorded, **(extra or {}))})
        return update

    def _status(self) -> pb.TaskStatus:
        status = pb.TaskStatus(state=self.state)
        if self.status_message is not None:
            status.message.CopyFrom(self.status_message)
        if self.status_time:
            status.timestamp.CopyFrom(_timestamp(self.status_time))
        return status

    def _artifact_update(
        self, recorded: RunEvent, artifact: _Artifact, text: str, *, append: bool, last: bool = False
    ) -> pb.TaskArtifactUpdateEvent:
        update = pb.TaskArtifactUpdateEvent(
            task_id=self.task_id, context_id=self.context_id,
            artifact=_text_artifact(artifact.artifact_id, text), append=append, last_chunk=last,
        )
        update.metadata.update({"pilothouse": _event_metadata(recorded)})
        return update

    def _close_open_text(self, recorded: RunEvent) -> list[TaskEvent]:
        artifact, self._open = self._open, None
        if artifact is None or artifact.closed:
            return []
        artifact.closed = True
        return [self._artifact_update(recorded, artifact, "", append=True, last=True)]

    def _void_open_text(self, recorded: RunEvent) -> list[TaskEvent]:
        """The open segment's text is void: replace it with nothing."""
        artifact, self._open = self._open, None
        self._opened = False
        if artifact is None:
            return []
        artifact.chunks.clear()
        artifact.closed = True
        return [self._artifact_update(recorded, artifact, "", append=False, last=True)]


_HANDLERS = {
    ev.RunQueued: TaskProjection._queued,
    ev.RunStarted: TaskProjection._started,
    ev.RunResumed: TaskProjection._resumed,
    ev.TextStart: TaskProjection._text_start,
    ev.TextDelta: TaskProjection._text_delta,
    ev.TextEnd: TaskProjection._text_end,
    ev.RoundRetried: TaskProjection._retried,
    ev.ToolCallsStart: TaskProjection._tool_calls,
    ev.ToolResult: TaskProjection._tool_result,
    ev.UserSteered: TaskProjection._steered,
    ev.ApprovalRequired: TaskProjection._approval,
    ev.QuestionAsked: TaskProjection._question,
    ev.DecisionApplied: TaskProjection._decided,
    ev.Done: TaskProjection._done,
}


def describe_decision(decision: ev.Decision) -> str:
    """A decision in words (the user's message in the task's history)."""
    if decision.verdict is ev.Verdict.NONE:
        return ", ".join([*decision.selected_options, *([decision.text] if decision.text else [])])
    word = {ev.Verdict.APPROVE: "approve", ev.Verdict.DENY: "deny",
            ev.Verdict.APPROVE_ALWAYS: "always"}[decision.verdict]
    return f"{word} {decision.reason}".strip()


def decision_data(decision: ev.Decision) -> dict[str, Any]:
    data: dict[str, Any] = {"requestId": decision.request_id}
    if decision.verdict is not ev.Verdict.NONE:
        data["verdict"] = decision.verdict.value
    for key, value in (("reason", decision.reason), ("text", decision.text),
                       ("editedArguments", decision.edited_arguments)):
        if value:
            data[key] = value
    if decision.selected_options:
        data["selectedOptions"] = list(decision.selected_options)
    return data


def data_part(data: dict[str, Any]) -> pb.Part:
    return pb.Part(data=json_format.ParseDict(data, struct_pb2.Value()), media_type="application/json")


def _call_data(call: Any) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        arguments = call.arguments
    return {"id": call.id, "name": call.name, "arguments": arguments}


def _user_message(projection: TaskProjection, message_id: str, text: str,
                  data: dict[str, Any] | None = None) -> pb.Message:
    message = pb.Message(message_id=message_id, context_id=projection.context_id,
                         task_id=projection.task_id, role=pb.ROLE_USER)
    message.parts.append(pb.Part(text=text))
    if data is not None:
        message.parts.append(data_part(data))
    return message


def _text_artifact(artifact_id: str, text: str) -> pb.Artifact:
    artifact = pb.Artifact(artifact_id=artifact_id, name=RESPONSE_ARTIFACT)
    artifact.parts.append(pb.Part(text=text))
    return artifact


def _event_metadata(recorded: RunEvent, **extra: Any) -> dict[str, Any]:
    kind = _KINDS.get(type(recorded.event), type(recorded.event).__name__)
    return {"sequence": recorded.sequence, "event": kind, **extra}


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


_KINDS = {
    ev.RunQueued: "run_queued", ev.RunStarted: "run_started", ev.RunResumed: "run_resumed",
    ev.TextStart: "text_start", ev.TextDelta: "text_delta", ev.TextEnd: "text_end",
    ev.RoundRetried: "round_retried", ev.ToolCallsStart: "tool_calls_start",
    ev.ToolResult: "tool_result", ev.UserSteered: "user_steered",
    ev.ApprovalRequired: "approval_required", ev.QuestionAsked: "question_asked",
    ev.DecisionApplied: "decision_applied", ev.Done: "done",
}
