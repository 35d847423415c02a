"""The A2A request handler: the protocol's methods over the `Runtime`.

It implements the a2a-sdk's transport-neutral `RequestHandler`, so the
SDK's JSON-RPC routes and gRPC servicer serve it unchanged; it does not
use the SDK's executor, task store or in-memory event queues, because a
Pilothouse run already is a durable, sequenced task:

- An A2A task is a run (task id = run id), its `contextId` the run's
  session. A message without `taskId` starts a run: on the session its
  `contextId` names (which must belong to the agent), or on a new session
  of the agent (`created_by` from the metadata `createdBy`, which only an
  admin may set to another principal than itself, else the authenticated
  principal, else "a2a"). Contexts and tasks of other principals are not
  found, as in the gRPC API. Its `messageId` is the run's idempotency key
  in its session, so a retried send with the same contextId joins the run
  it started (without a contextId each send makes a new context). A message
  for a session whose run is still going is queued behind it
  (ActiveRunPolicy.ENQUEUE: the new task is SUBMITTED until then).
- A message with the `taskId` of a run that waits for input answers the
  oldest pending approval or question (see `pilothouse.a2a.inbound`);
  to a run that works, it is steering (queued for its next model round);
  to a finished run it is UnsupportedOperationError: continue the
  conversation with a new task in the same context.
- Streams are the run's event log read by sequence (`Run.events`, or the
  store's copy for a run this process does not hold), folded by a
  `TaskProjection`: first the task as of now, then every later event's
  updates. `SendStreamingMessage` ends at a terminal state or at
  INPUT_REQUIRED; `SubscribeToTask` only at a terminal state. Dropping a
  stream never touches the run; a run handed over to another replica is
  followed on through the store.
- `CancelTask` is `Runtime.cancel`: it returns once the run has stopped
  and its history is stored.

Errors are `A2AError`s (see `pilothouse.a2a.errors`); anything unexpected
is logged and becomes InternalError without Python text.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.types import a2a_pb2 as pb
from a2a.utils import errors as a2a_errors
from a2a.utils.task import apply_history_length, validate_history_length

from pilothouse.a2a.errors import invalid_params, to_a2a, translated
from pilothouse.a2a.inbound import A2A_CREATED_BY, decision_of, metadata_value, text_of
from pilothouse.a2a.tasks import TaskEvent, TaskProjection
from pilothouse.auth.limits import PrincipalLimiter
from pilothouse.auth.principal import ANONYMOUS, current_principal
from pilothouse.errors import NotFoundError, OutOfRangeError, UnavailableError
from pilothouse.runtime.control import ActiveRunPolicy, RunOptions
from pilothouse.runtime.events import RunEvent
from pilothouse.runtime.runs import Run, StoredRun
from pilothouse.runtime.runtime import RemoteRun, RunLocation, Runtime
from pilothouse.runtime.store.base import RunRecord

#: ServerCallContext.state key of the agent an HTTP request addresses.
AGENT_KEY = "pilothouse_agent"
MAX_MESSAGE_ID_KEY = 128
CANCEL_REASON = "cancelled through A2A"


class PilothouseRequestHandler(RequestHandler):
    """Every Pilothouse agent as an A2A agent (see the module docstring).
    The agent of a request is the HTTP path's (`/agents/<name>/`, put in
    `context.state[AGENT_KEY]`) or the request's `tenant` (gRPC)."""

    def __init__(self, runtime: Runtime, limiter: PrincipalLimiter | None = None) -> None:
        self.runtime = runtime
        #: The per-principal limits of the gRPC API, applied to A2A's runs,
        #: new contexts and steering too (None: no limits).
        self.limiter = limiter

    # --- messages ----------------------------------------------------------------

    @translated
    @validate_request_params
    async def on_message_send(self, params: pb.SendMessageRequest, context: ServerCallContext) -> pb.Task:
        validate_history_length(params.configuration)
        where, projection = await self._accept(params, context)
        if not params.configuration.return_immediately:
            async with contextlib.aclosing(self._follow(where, projection, stop_on_input=True)) as updates:
                async for _ in updates:
                    pass
        return apply_history_length(projection.task(), params.configuration)

    @translated
    @validate_request_params
    async def on_message_send_stream(
        self, params: pb.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[TaskEvent, None]:
        validate_history_length(params.configuration)
        where, projection = await self._accept(params, context)
        yield apply_history_length(projection.task(), params.configuration)
        async with contextlib.aclosing(self._follow(where, projection, stop_on_input=True)) as updates:
            async for update in updates:
                yield update

    async def _accept(
        self, params: pb.SendMessageRequest, context: ServerCallContext
    ) -> tuple[RunLocation, TaskProjection]:
        """Start the run a message asks for, or hand the message to the run
        its taskId names; where the run is, and its task as of now."""
        agent = self._agent(context)
        message = params.message
        if message.role != pb.ROLE_USER:
            raise invalid_params("must be ROLE_USER", "message.role")
        if message.task_id:
            return await self._continue(agent, message, params)
        return await self._start(agent, message, params)

    async def _start(
        self, agent: str, message: pb.Message, params: pb.SendMessageRequest
    ) -> tuple[RunLocation, TaskProjection]:
        text = text_of(message)
        created_by = (
            metadata_value("createdBy", message.metadata, params.metadata) or _principal_id()
            or A2A_CREATED_BY
        )
        sender = metadata_value("sender", message.metadata, params.metadata) or created_by
        if message.context_id:
            try:
                session = await self.runtime.get_session(message.context_id, current_principal())
            except NotFoundError as exc:
                raise invalid_params(
                    "unknown context; omit contextId to start a new conversation",
                    "message.contextId", context_id=message.context_id,
                ) from exc
            if session.agent != agent:
                raise invalid_params(f"the context belongs to the agent {session.agent!r}",
                                     "message.contextId", context_id=message.context_id)
        else:
            try:
                await self.runtime.get_agent(agent, "tenant")
            except NotFoundError as exc:
                raise invalid_params(f"no agent named {agent!r}", "tenant", agent=agent) from exc
            refund = self._charge(sessions=1)
            try:
                session = await self.runtime.create_session(agent, created_by, current_principal())
            except BaseException:
                refund()
                raise
        key = message.message_id if _usable_key(message.message_id) else ""
        slot = self.limiter.admit_run(_limited_id(), _size(text)) if self.limiter else None
        try:
            where, created = await self.runtime.start_run(
                session.id, text, sender, RunOptions(if_active=ActiveRunPolicy.ENQUEUE),
                idempotency_key=key, caller=current_principal(),
            )
            if slot is not None and created and isinstance(where, Run):
                slot.bind(where.id)  # held until the run ends
        finally:
            if slot is not None:
                slot.release_unless_bound()
        if isinstance(where, RemoteRun):
            record = await self.runtime.get_run(where.run_id, session.id)
            if not key or record.idempotency_key != key:
                raise UnavailableError(
                    "the context is busy with a run on another replica; retry once it has finished",
                    reason="SESSION_BUSY_ELSEWHERE",
                    metadata={"session_id": session.id, "active_run_id": where.run_id},
                )
        projection = TaskProjection(where.run_id if isinstance(where, RemoteRun) else where.id,
                                    session.id, agent)
        await self._catch_up(where, projection)
        return where, projection

    async def _continue(
        self, agent: str, message: pb.Message, params: pb.SendMessageRequest
    ) -> tuple[RunLocation, TaskProjection]:
        record, where = await self._task(message.task_id, agent, "message.taskId")
        if message.context_id and message.context_id != record.session_id:
            raise invalid_params("is not the context of the task", "message.contextId",
                                 task_id=record.id, context_id=message.context_id)
        projection = TaskProjection(record.id, record.session_id, agent)
        await self._catch_up(where, projection)
        if projection.terminal:
            raise a2a_errors.UnsupportedOperationError(
                f"task {record.id} has ended ({pb.TaskState.Name(projection.state)}); send a new "
                "message with the same contextId and no taskId to go on with the conversation"
            )
        if projection.pending:
            decision = decision_of(message, projection.pending)
            try:
                outcome = await self.runtime.submit_decision(
                    record.session_id, decision, current_principal()
                )
            except NotFoundError as exc:  # answered meanwhile, or timed out
                raise to_a2a(exc, not_found=a2a_errors.InvalidParamsError) from exc
            if isinstance(outcome, RemoteRun):
                raise _elsewhere(outcome)
            projection.answered(decision.request_id)
            return where, projection
        if not isinstance(where, Run):
            raise _elsewhere(where)
        sender = metadata_value("sender", message.metadata, params.metadata) or _principal_id() or A2A_CREATED_BY
        text = text_of(message)
        refund = self._charge(content=_size(text))
        try:
            self.runtime.steer(where, text, sender)
        except BaseException:
            refund()
            raise
        return where, projection

    # --- tasks ----------------------------------------------------------------------

    @translated
    @validate_request_params
    async def on_get_task(self, params: pb.GetTaskRequest, context: ServerCallContext) -> pb.Task:
        validate_history_length(params)
        record, where = await self._task(params.id, self._agent(context))
        projection = TaskProjection(record.id, record.session_id, record.agent)
        await self._catch_up(where, projection)
        return apply_history_length(projection.task(), params)

    @translated
    @validate_request_params
    async def on_cancel_task(self, params: pb.CancelTaskRequest, context: ServerCallContext) -> pb.Task:
        record, _ = await self._task(params.id, self._agent(context))
        if record.status.ended:
            raise a2a_errors.TaskNotCancelableError(f"task {record.id} has already ended")
        outcome = await self.runtime.cancel(
            record.session_id, record.id, CANCEL_REASON, current_principal()
        )
        if isinstance(outcome, RemoteRun):
            raise _elsewhere(outcome)
        run, already_finished = outcome
        projection = TaskProjection(record.id, record.session_id, record.agent)
        await self._catch_up(run, projection)
        if already_finished and projection.state != pb.TASK_STATE_CANCELED:
            raise a2a_errors.TaskNotCancelableError(f"task {record.id} has already ended")
        return projection.task()

    @translated
    @validate_request_params
    async def on_subscribe_to_task(
        self, params: pb.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[TaskEvent, None]:
        record, where = await self._task(params.id, self._agent(context))
        projection = TaskProjection(record.id, record.session_id, record.agent)
        await self._catch_up(where, projection)
        if projection.terminal:
            raise a2a_errors.UnsupportedOperationError(
                f"task {record.id} has ended ({pb.TaskState.Name(projection.state)}): "
                "there is nothing to subscribe to; GetTask returns it"
            )
        yield projection.task()
        async with contextlib.aclosing(self._follow(where, projection, stop_on_input=False)) as updates:
            async for update in updates:
                yield update

    @translated
    async def on_list_tasks(self, params: pb.ListTasksRequest, context: ServerCallContext) -> pb.ListTasksResponse:
        raise a2a_errors.UnsupportedOperationError(
            "ListTasks is not supported: a task is a run, GetTask reads it by id"
        )

    # --- what A2A has and Pilothouse does not --------------------------------------

    async def on_create_task_push_notification_config(self, params: Any, context: ServerCallContext) -> Any:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_get_task_push_notification_config(self, params: Any, context: ServerCallContext) -> Any:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_list_task_push_notification_configs(self, params: Any, context: ServerCallContext) -> Any:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_delete_task_push_notification_config(self, params: Any, context: ServerCallContext) -> None:
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_get_extended_agent_card(self, params: Any, context: ServerCallContext) -> pb.AgentCard:
        raise a2a_errors.ExtendedAgentCardNotConfiguredError()

    # --- helpers --------------------------------------------------------------------

    def _charge(self, *, sessions: int = 0, content: int = 0) -> Callable[[], None]:
        """Take sessions or content from the caller's limits; the refund.
        QuotaExceededError (RESOURCE_EXHAUSTED) past a limit."""
        if self.limiter is None:
            return lambda: None
        return self.limiter.charge(_limited_id(), sessions=sessions, content=content)

    def _agent(self, context: ServerCallContext) -> str:
        name = context.state.get(AGENT_KEY) or context.tenant
        if not name:
            raise invalid_params("name the agent: its URL /agents/<name>/, or tenant over gRPC", "tenant")
        return str(name)

    async def _task(self, task_id: str, agent: str, field: str = "id") -> tuple[RunRecord, RunLocation]:
        """The run `task_id` names, if it is one of `agent`'s, and where it
        is. TaskNotFoundError otherwise."""
        try:
            record = await self.runtime.get_run(task_id, caller=current_principal())
        except NotFoundError as exc:
            raise a2a_errors.TaskNotFoundError(f"no task {task_id!r}") from exc
        if record.agent != agent:
            raise a2a_errors.TaskNotFoundError(f"no task {task_id!r}")
        return record, await self.runtime.locate(record.session_id, record.id, current_principal())

    async def _events(self, where: RunLocation, after: int) -> AsyncGenerator[RunEvent, None]:
        """The run's events after `after`, live, wherever it runs; a run
        handed over to another replica meanwhile is followed through the
        store."""
        while True:
            source = await self.runtime.stored(where) if isinstance(where, RemoteRun) else where
            try:
                stream = cast(AsyncGenerator[RunEvent, None], source.events(after))
                async with contextlib.aclosing(stream) as events:
                    async for recorded in events:
                        after = recorded.sequence
                        yield recorded
                return
            except UnavailableError as exc:
                if exc.reason != "RUN_HANDED_OVER":
                    raise
                where = await self.runtime.locate(source.session_id, source.id)

    async def _catch_up(self, where: RunLocation, projection: TaskProjection) -> None:
        """Fold every event logged so far into `projection` (without
        waiting for new ones). Events that are no longer kept are skipped:
        the task then shows what the later ones tell (its outcome at least)."""
        target = await self._last_sequence(where)
        if target <= projection.last_sequence:
            return
        try:
            async with contextlib.aclosing(self._events(where, projection.last_sequence)) as events:
                async for recorded in events:
                    projection.apply(recorded)
                    if recorded.sequence >= target:
                        return
        except OutOfRangeError as exc:
            oldest = int(exc.metadata.get("oldest_available_sequence", "0") or 0)
            if exc.reason != "EVENTS_EXPIRED" or oldest <= projection.last_sequence + 1:
                raise
            projection.last_sequence = oldest - 1
            await self._catch_up(where, projection)

    async def _last_sequence(self, where: RunLocation) -> int:
        if isinstance(where, Run):
            return where.log.last_sequence
        if isinstance(where, StoredRun):
            return where.record.last_sequence
        return (await self.runtime.get_run(where.run_id, where.session_id)).last_sequence

    async def _follow(
        self, where: RunLocation, projection: TaskProjection, *, stop_on_input: bool
    ) -> AsyncGenerator[TaskEvent, None]:
        """The task's updates after `projection`'s last event, until a
        terminal state (or, with `stop_on_input`, INPUT_REQUIRED)."""
        if projection.terminal or (stop_on_input and projection.input_required):
            return
        async with contextlib.aclosing(self._events(where, projection.last_sequence)) as events:
            async for recorded in events:
                for update in projection.apply(recorded):
                    yield update
                if projection.terminal or (stop_on_input and projection.input_required):
                    return


def _principal_id() -> str:
    principal = current_principal()
    return principal.id if principal is not None and principal.source != "none" else ""


def _limited_id() -> str:
    """Whose limits a call counts against (the anonymous principal's
    without authentication), as for the gRPC API."""
    principal = current_principal()
    return principal.id if principal is not None else ANONYMOUS.id


def _size(text: str) -> int:
    return len(text.encode())


def _usable_key(message_id: str) -> bool:
    return 0 < len(message_id) <= MAX_MESSAGE_ID_KEY and message_id.isprintable()


def _elsewhere(where: RunLocation) -> UnavailableError:
    return UnavailableError(
        f"run {where.run_id if isinstance(where, RemoteRun) else where.id} is held by another "
        "replica or waits to be taken over; retry shortly",
        reason="RUN_ELSEWHERE",
        metadata={"session_id": where.session_id,
                  "run_id": where.run_id if isinstance(where, RemoteRun) else where.id},
    )
