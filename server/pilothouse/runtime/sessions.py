"""Sessions: their records in the store, their histories, and a bounded
memory cache of recently used histories."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable

from pilothouse.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
    run_active,
    session_not_found,
)
from pilothouse.identity import Principal
from pilothouse.runtime import compaction
from pilothouse.runtime.agents import AgentRegistry, require
from pilothouse.runtime.messages import Message
from pilothouse.runtime.model.base import ChatModel, ModelError
from pilothouse.runtime.paging import decode_token, encode_token, page_size
from pilothouse.runtime.store import jsonl
from pilothouse.runtime.store.base import SessionRecord, SessionState, SessionStore

_Version = tuple[float, int]

log = logging.getLogger(__name__)

#: The longest title UpdateSession takes.
MAX_TITLE_CHARS = 200


class SessionLocks:
    """One asyncio lock per session: admission of runs and compaction on a
    session do not interleave within this process."""

    def __init__(self) -> None:
        # Weak: a lock lives while a task holds or awaits it, so locks of
        # sessions no longer in use do not pile up.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    def forget(self, session_id: str) -> None:
        lock = self._locks.get(session_id)
        if lock is not None and not lock.locked():
            del self._locks[session_id]


def can_see(caller: Principal | None, record: SessionRecord) -> bool:
    """Whether `caller` may see the session: its creator, or an admin (None:
    an internal call, not made for a principal)."""
    return caller is None or caller.is_admin or record.created_by == caller.id


def owner_for(caller: Principal | None, created_by: str) -> str:
    """The `created_by` of a new session: the caller's own id (an admin may
    name another principal). PERMISSION_DENIED when a non-admin names
    someone else."""
    if caller is None or caller.is_admin:
        return created_by or (caller.id if caller is not None else "")
    if created_by and created_by != caller.id:
        raise PermissionDeniedError(
            "only an admin may act for another principal", reason="CREATED_BY_NOT_ALLOWED"
        )
    return caller.id


class Sessions:
    """Session records and histories. `local_run(session_id)` names the
    session's run active in this process ("" for none).

    Methods taking a `caller` show it only the sessions it may see (its own;
    every session for an admin): any other is NOT_FOUND, as if it did not
    exist. `caller` None is an internal call (no check)."""

    def __init__(
        self,
        store: SessionStore,
        agents: AgentRegistry,
        model: ChatModel,
        locks: SessionLocks,
        *,
        cache_size: int = 1000,
        local_run: Callable[[str], str] = lambda _: "",
        page_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.agents = agents
        self.model = model
        self.locks = locks
        self.cache_size = cache_size
        #: Stored bytes one page of ListMessages or ExportSession holds at
        #: most (at least one item), so a reply stays under the message limit.
        self.page_bytes = page_bytes
        self.local_run = local_run
        self._cache: OrderedDict[str, tuple[_Version, list[Message]]] = OrderedDict()
        self._identity_lock = asyncio.Lock()

    # --- records ---------------------------------------------------------------

    async def create(
        self, agent: str, created_by: str, caller: Principal | None = None, *, agent_version: int = 0
    ) -> SessionRecord:
        """Open a new session owned by `caller` (see `owner_for`), bound to
        the agent as it is now and pinned to `agent_version` (0: none).
        NOT_FOUND for an unknown agent or version; FAILED_PRECONDITION
        (AGENT_REMOVED) for an agent removed from the agents file."""
        created_by = owner_for(caller, created_by)
        bound = await self.agents.runnable(agent, "agent")
        if agent_version < 0:
            raise InvalidArgumentError.field("agent_version", "must not be negative")
        if agent_version:
            await self.agents.get(agent, "agent", version=agent_version)
        now = time.time()
        record = SessionRecord(uuid.uuid4().hex, agent, created_by, now, now,
                               agent_uid=bound.uid, agent_version=agent_version)
        await self.store.create(record)
        return record

    async def update(
        self, session_id: str, caller: Principal | None = None, *, title: str | None = None,
        agent_version: int | None = None,
    ) -> SessionRecord:
        """Set the session's title and/or pin `agent_version` of its agent
        (0: follow the latest); None leaves a field as it is. NOT_FOUND for
        an unknown session (or another principal's) or version;
        FAILED_PRECONDITION AGENT_REPLACED when its agent was replaced."""
        record = await self.get(session_id, caller)
        if title is not None and len(title) > MAX_TITLE_CHARS:
            raise InvalidArgumentError.field("session.title",
                                             f"at most {MAX_TITLE_CHARS} characters")
        if agent_version is not None:
            uid, version = await self.agents.binding(record, agent_version)
            record = await self.store.bind_session(session_id, record.agent_uid or uid, version,
                                                   time.time())
        if title is not None:
            record = await self.store.set_title(session_id, title, time.time())
        return record

    async def rebind(
        self, session_id: str, agent_version: int, caller: Principal | None = None
    ) -> SessionRecord:
        """Bind the session to its agent as registered now (after it was
        deleted and created again), pinned to `agent_version` (0: none).
        PERMISSION_DENIED for a caller that is no admin; NOT_FOUND for an
        unknown session, agent or version."""
        if caller is not None and not caller.is_admin:
            raise PermissionDeniedError("rebinding a session needs the admin role",
                                        reason="ADMIN_REQUIRED")
        record = await self.get(session_id, caller)
        agent = await self.agents.get(record.agent, version=agent_version)
        record = await self.store.bind_session(session_id, agent.uid, agent_version, time.time())
        log.info("session %s rebound to agent %s (%s)", session_id, record.agent, agent.uid)
        return record

    async def get_or_create(
        self, agent: str, created_by: str, caller: Principal | None = None
    ) -> tuple[SessionRecord, bool]:
        """The open session of (agent, created_by), or a new one; the bool
        says whether it was created. A session of an agent deleted and
        created again under that name is not reused (its runs would fail
        with AGENT_REPLACED): a new one is made."""
        created_by = owner_for(caller, created_by)
        current = await self.agents.get(agent, "agent")
        async with self._identity_lock:
            existing = await self.store.find_open(agent, created_by)
            if existing is not None and existing.agent_uid in ("", current.uid):
                return existing, False
            return await self.create(agent, created_by), True

    async def get(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        """INVALID_ARGUMENT for an empty id, NOT_FOUND if unknown or not the
        caller's."""
        require(session_id, "session_id")
        record = await self.store.get(session_id)
        if record is None or not can_see(caller, record):
            raise session_not_found(session_id)
        return record

    async def list_sessions(
        self,
        agent: str,
        created_by: str,
        size: int,
        token: str,
        state: SessionState | None = None,
        caller: Principal | None = None,
    ) -> tuple[list[SessionRecord], str]:
        """A page of sessions, most recently active first (a non-admin
        caller's own only)."""
        if caller is not None and not caller.is_admin:
            created_by = caller.id
        limit = page_size(size, default=50)
        filters = {"agent": agent, "created_by": created_by, "state": state.value if state else ""}
        offset = decode_token(token, "sessions", filters) or 0
        records = await self.store.list(
            agent=agent, created_by=created_by, state=state, offset=offset, limit=limit + 1
        )
        more = len(records) > limit
        next_token = encode_token("sessions", offset + limit, filters) if more else ""
        return records[:limit], next_token

    def check_idle(self, record: SessionRecord) -> None:
        """FAILED_PRECONDITION (RUN_ACTIVE) while the session has a run."""
        run_id = self.local_run(record.id) or record.active_run_id
        if run_id:
            raise run_active(record.id, run_id)

    async def close(self, session_id: str, caller: Principal | None = None) -> SessionRecord:
        """Close a session (idempotent). FAILED_PRECONDITION while a run is
        active."""
        record = await self.get(session_id, caller)
        self.check_idle(record)
        if record.state is SessionState.CLOSED:
            return record
        self._cache.pop(session_id, None)
        return await self.store.set_state(session_id, SessionState.CLOSED, time.time())

    async def delete(self, session_id: str, caller: Principal | None = None) -> None:
        """Delete a session, its history and its runs. FAILED_PRECONDITION
        while a run is active."""
        record = await self.get(session_id, caller)
        self.check_idle(record)
        self._cache.pop(session_id, None)
        await self.store.delete(session_id)
        self.locks.forget(session_id)

    # --- history ---------------------------------------------------------------

    async def list_messages(
        self, session_id: str, size: int, token: str, *, newest_first: bool = False,
        caller: Principal | None = None,
    ) -> tuple[list[Message], str]:
        """A page of the model-visible history."""
        limit = page_size(size, default=100)
        await self.get(session_id, caller)
        filters = {"session_id": session_id, "newest_first": newest_first}
        offset = decode_token(token, "messages", filters) or 0
        messages = await self.store.list_messages(
            session_id, offset, limit + 1, newest_first=newest_first, max_bytes=self.page_bytes
        )
        page = messages[:limit]
        if len(messages) > limit:
            more = True
        else:  # a page cut by bytes: more unless it reached the end
            record = await self.get(session_id)
            more = offset + len(page) < record.message_count
        following = offset + len(page)
        return page, encode_token("messages", following, filters) if more and page else ""

    async def compact(
        self, session_id: str, caller: Principal | None = None
    ) -> tuple[str, SessionRecord]:
        """Summarise the history with the agent's model and store a compact
        marker. FAILED_PRECONDITION while a run is active or for an empty
        history, or when the session's agent was replaced (AGENT_REPLACED);
        UNAVAILABLE when the model fails."""
        record = await self.get(session_id, caller)
        agent = await self.agents.for_session(record)  # its pinned version, if any
        async with self.locks(session_id):
            self.check_idle(record)
            history = await self.history(record)
            if not history:
                raise FailedPreconditionError(
                    f"session {session_id!r} has no history to compact",
                    reason="HISTORY_EMPTY",
                    metadata={"session_id": session_id},
                )
            try:
                summary = await compaction.summarize(self.model, agent, history)
            except ModelError as exc:
                raise UnavailableError(
                    f"compaction failed: {exc.message}", reason="MODEL_UNAVAILABLE"
                ) from exc
            record = await self.store.compact(session_id, summary, time.time())
            self._cache.pop(session_id, None)
        return summary, record

    async def export(
        self, session_id: str, caller: Principal | None = None, token: str = ""
    ) -> tuple[bytes, str]:
        """A page of the session as JSON Lines (meta, messages, compact
        markers) and the next page's token ("" at the end)."""
        await self.get(session_id, caller)
        filters = {"session_id": session_id}
        offset = decode_token(token, "export", filters) or 0
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgumentError.field("page_token", "not a page token of this export")
        content, following = await jsonl.export_page(
            self.store, session_id, offset, page_bytes=self.page_bytes
        )
        return content, encode_token("export", following, filters) if following is not None else ""

    async def import_(self, content: bytes, caller: Principal | None = None) -> SessionRecord:
        """Import an exported session under a new id, owned by a non-admin
        caller (an admin keeps the file's `created_by`). INVALID_ARGUMENT
        naming the first bad line (nothing is written); NOT_FOUND when its
        agent is not registered."""
        return await jsonl.import_jsonl(
            self.store,
            content,
            new_id=uuid.uuid4().hex,
            now=time.time(),
            check_agent=self._bound_uid,
            created_by=None if caller is None or caller.is_admin else caller.id,
        )

    async def _bound_uid(self, agent: str) -> str:
        """The uid an imported session of `agent` is bound to."""
        return (await self.agents.get(agent, "content")).uid

    # --- the history cache -------------------------------------------------------

    async def history(self, record: SessionRecord) -> list[Message]:
        """The session's history, from the cache when it is current (a
        copy of the list: the caller may extend it)."""
        cached = self._cache.get(record.id)
        if cached is not None and cached[0] == _version(record):
            self._cache.move_to_end(record.id)
            return list(cached[1])
        history = await self.store.load_history(record.id)
        self.remember(record, history)
        return list(history)

    async def history_after(
        self, before: SessionRecord, after: SessionRecord, appended: list[Message]
    ) -> list[Message]:
        """The history as `after` holds it, when `after` is `before` with
        `appended` added (the cache is extended instead of reloaded)."""
        cached = self._cache.get(before.id)
        if cached is not None and cached[0] == _version(before):
            history = [*cached[1], *appended]
            self.remember(after, history)
            return list(history)
        return await self.history(after)

    def remember(self, record: SessionRecord, history: list[Message]) -> None:
        self._cache[record.id] = (_version(record), history)
        self._cache.move_to_end(record.id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)

    @property
    def cached(self) -> int:
        return len(self._cache)


def _version(record: SessionRecord) -> _Version:
    return (record.updated_at, record.message_count)
