"""What a running run is told from outside: steering, stop requests,
decisions on approvals and questions. They are commands sent to the run,
which applies them at its safe points (between rounds, in the tool phase)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from pilothouse.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from pilothouse.runtime.agent import ModelOverrides
from pilothouse.runtime.events import Decision, StopReason, Verdict


class DisconnectPolicy(StrEnum):
    CONTINUE = "continue"
    CANCEL = "cancel"


class ActiveRunPolicy(StrEnum):
    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    STEER = "steer"


class LateSteeringPolicy(StrEnum):
    FOLLOW_UP = "follow_up"
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Options of one run. Durations in seconds; None means no limit /
    the server default; `token_budget` 0 means none; `model_overrides`
    changes the agent's model settings for this run."""

    on_disconnect: DisconnectPolicy = DisconnectPolicy.CONTINUE
    if_active: ActiveRunPolicy = ActiveRunPolicy.REJECT
    late_steering: LateSteeringPolicy = LateSteeringPolicy.FOLLOW_UP
    timeout_s: float | None = None
    token_budget: int = 0
    decision_timeout_s: float | None = None
    model_overrides: ModelOverrides | None = None


class SteeringInbox:
    """Steering messages waiting for the next model round, in arrival order
    (none is dropped, however many arrive).

    `close()` is called when the run has made its last model round: what
    arrives after it, while the run is storing its history, is kept as
    `late` and reported unapplied in `done`. Once the run has finished
    (`seal()`), `put` raises: the client is told, nothing is lost silently.
    """

    __slots__ = ("_closed", "_queue", "_sealed", "late", "run_id")

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id
        self._queue: deque[tuple[str, str]] = deque()
        self._closed = False
        self._sealed = False
        self.late: list[tuple[str, str]] = []

    def put(self, content: str, sender: str = "") -> None:
        if self._sealed:
            raise FailedPreconditionError(
                f"run {self.run_id} has finished; steering was not applied",
                reason="RUN_FINISHED",
                metadata={"run_id": self.run_id},
            )
        if self._closed:
            self.late.append((content, sender))
        else:
            self._queue.append((content, sender))

    def pending(self) -> bool:
        return bool(self._queue)

    def take_all(self) -> list[tuple[str, str]]:
        items = list(self._queue)
        self._queue.clear()
        return items

    def close(self) -> list[tuple[str, str]]:
        """No more model rounds: return what was not applied."""
        self._closed = True
        return self.take_all()

    def seal(self) -> list[tuple[str, str]]:
        """The run has finished: refuse steering from now on; return what
        arrived after `close`."""
        self._closed = self._sealed = True
        late, self.late = self.late, []
        return late + self.take_all()


def check_edited_arguments(decision: Decision, kind: str) -> None:
    """INVALID_ARGUMENT unless edited arguments come with an approval and
    are a JSON object."""
    if kind != "approval" or decision.verdict is Verdict.DENY:
        raise InvalidArgumentError.field(
            "decision.edited_arguments_json", "only an approval may edit the call's arguments"
        )
    try:
        value = json.loads(decision.edited_arguments)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InvalidArgumentError.field(
            "decision.edited_arguments_json", "must be a JSON object"
        )


@dataclass(slots=True)
class _Pending:
    kind: str  # "approval" or "question"
    future: asyncio.Future[Decision]
    options: tuple[str, ...] = ()
    multi_select: bool = False


@dataclass(slots=True)
class RunControl:
    """Commands for one run: steering, stop requests and decisions.

    `stop_reason` is set once by `request_stop` (CANCELLED, TIMEOUT); the
    loop checks `stopped` at its safe points and races its waits against
    `stop_event`. `approved_tools` holds the session's "approve always"
    tools.
    """

    run_id: str = ""
    options: RunOptions = field(default_factory=RunOptions)
    steering: SteeringInbox = field(default_factory=SteeringInbox)
    approved_tools: set[str] = field(default_factory=set)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: StopReason | None = None
    stop_message: str = ""
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.steering.run_id = self.run_id

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def request_stop(self, reason: StopReason, message: str = "") -> bool:
        """Ask the run to stop; False if a stop was already requested."""
        if self.stop_reason is not None:
            return False
        self.stop_reason = reason
        self.stop_message = message
        self.stop_event.set()
        return True

    def expect(self, request_id: str, kind: str, options: tuple[str, ...] = (),
               multi_select: bool = False) -> asyncio.Future[Decision]:
        """Register a pending approval or question."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(kind, future, options, multi_select)
        return future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def pending_requests(self) -> list[str]:
        return list(self._pending)

    def decide(self, decision: Decision) -> None:
        """Resolve a pending request. NOT_FOUND if none has that id;
        INVALID_ARGUMENT if the answer does not fit the request."""
        pending = self._pending.get(decision.request_id)
        if pending is None or pending.future.done():
            raise NotFoundError(
                f"run {self.run_id} has no pending request {decision.request_id!r}",
                reason="DECISION_NOT_PENDING",
                metadata={"run_id": self.run_id, "request_id": decision.request_id},
            )
        if pending.kind == "approval" and decision.verdict is Verdict.NONE:
            raise InvalidArgumentError.field(
                "decision.verdict", "an approval needs APPROVE, DENY or APPROVE_ALWAYS"
            )
        if decision.edited_arguments:
            check_edited_arguments(decision, pending.kind)
        if pending.kind == "question":
            if decision.verdict is not Verdict.NONE:
                raise InvalidArgumentError.field("decision.verdict", "a question takes an answer, not a verdict")
            unknown = [o for o in decision.selected_options if o not in pending.options]
            if unknown:
                raise InvalidArgumentError.field(
                    "decision.selected_options", f"not among the options: {', '.join(unknown)}"
                )
            if len(decision.selected_options) > 1 and not pending.multi_select:
                raise InvalidArgumentError.field(
                    "decision.selected_options", "this question takes one option"
                )
            if not decision.selected_options and not decision.text.strip():
                raise InvalidArgumentError.field("decision", "an answer needs options or text")
        pending.future.set_result(decision)
