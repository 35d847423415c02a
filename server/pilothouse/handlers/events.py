"""EventService over gRPC: SubscribeEvents streams every run's events from
the process's `EventFeed` (see `pilothouse.runtime.subscriptions`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc

from pilothouse.auth.principal import current_principal
from pilothouse.errors import InvalidArgumentError, PermissionDeniedError
from pilothouse.handlers import convert
from pilothouse.rpc.errors import handle_errors
from pilothouse.runtime.store.feed import FEED_START, FeedFilter, FeedPosition
from pilothouse.runtime.subscriptions import EventFeed
from pilothouse.v1 import (
    event_pb2,
    event_service_pb2 as events_pb,
    event_service_pb2_grpc as events_grpc,
)

#: Every kind a filter may name: the `AgentEvent.event` oneof's fields.
EVENT_KINDS = frozenset(
    f.name for f in event_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields
) - {"heartbeat"}


def _names(values, field: str) -> frozenset[str]:
    names = frozenset(values)
    if "" in names:
        raise InvalidArgumentError.field(field, "must not contain an empty string")
    return names


def filter_from_proto(request: events_pb.SubscribeEventsRequest) -> FeedFilter:
    """The subscription's filter; INVALID_ARGUMENT for an unknown kind."""
    kinds = _names(request.event_kinds, "event_kinds")
    unknown = sorted(kinds - EVENT_KINDS)
    if unknown:
        raise InvalidArgumentError.field(
            "event_kinds", f"unknown event kinds: {', '.join(unknown)}"
        )
    return FeedFilter(
        agents=_names(request.agents, "agents"),
        session_ids=_names(request.session_ids, "session_ids"),
        created_by=_names(request.created_by, "created_by"),
        kinds=kinds,
    )


def start_of(request: events_pb.SubscribeEventsRequest) -> FeedPosition | None:
    """Where to start: after the cursor, the oldest event, or live (None)."""
    if request.cursor and request.from_oldest:
        raise InvalidArgumentError.field("from_oldest", "cannot be combined with a cursor")
    if request.from_oldest:
        return FEED_START
    if not request.cursor:
        return None
    try:
        return FeedPosition.decode(request.cursor)
    except ValueError:
        raise InvalidArgumentError.field(
            "cursor", "not a cursor of SubscribeEvents"
        ) from None


def restrict(feed_filter: FeedFilter) -> FeedFilter:
    """A non-admin caller sees the runs of its own sessions only: its
    filter's `created_by` becomes the caller's id (PERMISSION_DENIED when
    it names another principal)."""
    caller = current_principal()
    if caller is None or caller.is_admin:
        return feed_filter
    if feed_filter.created_by - {caller.id}:
        raise PermissionDeniedError(
            "only an admin may watch the runs of other principals' sessions",
            reason="PERMISSION_DENIED",
            metadata={"principal": caller.id},
        )
    return dataclasses.replace(feed_filter, created_by=frozenset({caller.id}))


class EventService(events_grpc.EventServiceServicer):
    """See the module docstring. An admin sees every run; another
    principal the runs of its own sessions."""

    def __init__(self, feed: EventFeed, heartbeat_s: float = 15.0) -> None:
        self.feed = feed
        self.heartbeat_s = heartbeat_s

    @handle_errors
    async def SubscribeEvents(
        self, request: events_pb.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb.SubscribeEventsResponse]:
        feed_filter = restrict(filter_from_proto(request))
        start = start_of(request)
        heartbeat = convert.heartbeat_seconds(
            request.heartbeat_interval, self.heartbeat_s, "heartbeat_interval"
        )
        async for item in self.feed.subscribe(feed_filter, start, heartbeat_s=heartbeat):
            cursor = item.position.encode()
            if item.event is None:
                yield events_pb.SubscribeEventsResponse(
                    event=event_pb2.AgentEvent(heartbeat=event_pb2.Heartbeat()), cursor=cursor
                )
                continue
            yield events_pb.SubscribeEventsResponse(
                event=convert.event_to_proto(item.event), cursor=cursor,
                agent=item.agent, created_by=item.created_by,
            )
