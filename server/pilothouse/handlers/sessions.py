"""SessionService: sessions and their histories over gRPC (thin: convert,
call the runtime, convert back)."""

from __future__ import annotations

import grpc

from pilothouse.auth.audit import audit
from pilothouse.auth.principal import Principal, current_principal
from pilothouse.errors import InvalidArgumentError
from pilothouse.handlers import convert, masks
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.runtime import Runtime
from pilothouse.runtime.store.base import SessionRecord, SessionState
from pilothouse.v1 import (
    session_pb2,
    session_service_pb2 as sessions_pb,
    session_service_pb2_grpc as sessions_grpc,
)

Context = grpc.aio.ServicerContext

#: The Session fields UpdateSession may change.
_SESSION_MUTABLE = ("agent_version", "title")


def _caller(created_by: str) -> Principal | None:
    """The calling principal; an admin naming another principal as the
    session's owner is audited."""
    caller = current_principal()
    if (caller is not None and caller.is_admin and caller.source != "none"
            and created_by and created_by != caller.id):
        audit("admin.acts_for", caller, created_by=created_by)
    return caller


class SessionService(sessions_grpc.SessionServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _session(self, record: SessionRecord) -> session_pb2.Session:
        run = self.runtime.active_run(record.id)
        return convert.session_to_proto(record, run.id if run else "")

    @handle_errors
    async def CreateSession(
        self, request: sessions_pb.CreateSessionRequest, context: Context
    ) -> sessions_pb.CreateSessionResponse:
        record = await self.runtime.create_session(
            request.agent, request.created_by, _caller(request.created_by),
            agent_version=request.agent_version,
        )
        return sessions_pb.CreateSessionResponse(session=self._session(record))

    @handle_errors
    async def UpdateSession(
        self, request: sessions_pb.UpdateSessionRequest, context: Context
    ) -> sessions_pb.UpdateSessionResponse:
        session = request.session
        fields = masks.mask_fields(request.update_mask, session, _SESSION_MUTABLE)
        record = await self.runtime.update_session(
            session.id, current_principal(),
            title=session.title if "title" in fields else None,
            agent_version=session.agent_version if "agent_version" in fields else None,
        )
        return sessions_pb.UpdateSessionResponse(session=self._session(record))

    @handle_errors
    async def RebindSession(
        self, request: sessions_pb.RebindSessionRequest, context: Context
    ) -> sessions_pb.RebindSessionResponse:
        record = await self.runtime.rebind_session(
            request.session_id, request.agent_version, current_principal()
        )
        return sessions_pb.RebindSessionResponse(session=self._session(record))

    @handle_errors
    async def GetOrCreateSession(
        self, request: sessions_pb.GetOrCreateSessionRequest, context: Context
    ) -> sessions_pb.GetOrCreateSessionResponse:
        record, created = await self.runtime.get_or_create_session(
            request.agent, request.created_by, _caller(request.created_by)
        )
        return sessions_pb.GetOrCreateSessionResponse(session=self._session(record), created=created)

    @handle_errors
    async def GetSession(
        self, request: sessions_pb.GetSessionRequest, context: Context
    ) -> sessions_pb.GetSessionResponse:
        record = await self.runtime.get_session(request.session_id, current_principal())
        return sessions_pb.GetSessionResponse(session=self._session(record))

    @handle_errors
    async def ListSessions(
        self, request: sessions_pb.ListSessionsRequest, context: Context
    ) -> sessions_pb.ListSessionsResponse:
        state = _state_filter(request.state)
        records, token = await self.runtime.list_sessions(
            request.agent, request.created_by, request.page_size, request.page_token, state,
            caller=current_principal(),
        )
        return sessions_pb.ListSessionsResponse(
            sessions=[self._session(r) for r in records], next_page_token=token
        )

    @handle_errors
    async def SearchSessions(
        self, request: sessions_pb.SearchSessionsRequest, context: Context
    ) -> sessions_pb.SearchSessionsResponse:
        found, token = await self.runtime.search_sessions(
            request.query, agent=request.agent, created_by=request.created_by,
            state=_state_filter(request.state), size=request.page_size, token=request.page_token,
            caller=current_principal(),
        )  # fmt: skip
        return sessions_pb.SearchSessionsResponse(
            results=[convert.session_match_to_proto(m, self._session(m.session)) for m in found],
            next_page_token=token,
        )

    @handle_errors
    async def CloseSession(
        self, request: sessions_pb.CloseSessionRequest, context: Context
    ) -> sessions_pb.CloseSessionResponse:
        record = await self.runtime.close_session(request.session_id, current_principal())
        return sessions_pb.CloseSessionResponse(session=self._session(record))

    @handle_errors
    async def ListMessages(
        self, request: sessions_pb.ListMessagesRequest, context: Context
    ) -> sessions_pb.ListMessagesResponse:
        messages, token = await self.runtime.list_messages(
            request.session_id, request.page_size, request.page_token,
            newest_first=request.newest_first,
            caller=current_principal(),
        )
        return sessions_pb.ListMessagesResponse(
            messages=[convert.message_to_proto(m) for m in messages], next_page_token=token
        )

    @handle_errors
    async def DeleteSession(
        self, request: sessions_pb.DeleteSessionRequest, context: Context
    ) -> sessions_pb.DeleteSessionResponse:
        await self.runtime.delete_session(request.session_id, current_principal())
        return sessions_pb.DeleteSessionResponse()

    @handle_errors
    async def CompactSession(
        self, request: sessions_pb.CompactSessionRequest, context: Context
    ) -> sessions_pb.CompactSessionResponse:
        summary, record = await self.runtime.compact_session(request.session_id, current_principal())
        return sessions_pb.CompactSessionResponse(summary=summary, session=self._session(record))

    @handle_errors
    async def ExportSession(
        self, request: sessions_pb.ExportSessionRequest, context: Context
    ) -> sessions_pb.ExportSessionResponse:
        content, token = await self.runtime.export_session(
            request.session_id, current_principal(), request.page_token
        )
        return sessions_pb.ExportSessionResponse(content=content, next_page_token=token)

    @handle_errors
    async def ImportSession(
        self, request: sessions_pb.ImportSessionRequest, context: Context
    ) -> sessions_pb.ImportSessionResponse:
        record = await self.runtime.import_session(request.content, current_principal())
        return sessions_pb.ImportSessionResponse(session=self._session(record))


def _state_filter(value: int) -> SessionState | None:
    """The `state` filter of ListSessions and SearchSessions (None: any)."""
    state = convert.session_state_from_proto(value)
    if value and state is None:
        raise InvalidArgumentError.field("state", f"unknown value {value}")
    return state
