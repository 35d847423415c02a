"""What every typed event has (the generated classes in `events` add the
payload)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from pilothouse.v1 import event_pb2


@dataclass(frozen=True, slots=True)
class EventBase:
    """The envelope of one run event.

    Attributes:
        session_id: the session.
        run_id: the run.
        sequence: position in the run's event log, from 1 without gaps
            (a heartbeat repeats the sequence of the last event sent).
        raw: the protobuf `pilothouse.v1.AgentEvent`.
    """

    session_id: str
    run_id: str
    sequence: int
    raw: event_pb2.AgentEvent = field(repr=False, compare=False)

    @property
    def time(self) -> datetime:
        """When the runtime emitted the event (UTC)."""
        return self.raw.time.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class UnknownEvent(EventBase):
    """An event this SDK version does not know (newer server): `kind` is the
    oneof member's name, everything else is in `raw`."""

    kind: str = ""
