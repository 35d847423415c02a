"""The steering inbox's three phases: queued for the next round, late (after
the last round, reported unapplied), refused (after the run finished)."""

from __future__ import annotations

import pytest

from pilothouse.errors import FailedPreconditionError
from pilothouse.runtime.control import SteeringInbox


def test_order_late_and_refused() -> None:
    inbox = SteeringInbox("run-1")
    inbox.put("a", "ann")
    inbox.put("b")
    assert inbox.pending()
    assert inbox.take_all() == [("a", "ann"), ("b", "")]
    inbox.put("c")
    assert inbox.close() == [("c", "")]  # never applied
    inbox.put("d")  # the run is storing its history
    assert not inbox.pending()
    assert inbox.seal() == [("d", "")]
    with pytest.raises(FailedPreconditionError) as error:
        inbox.put("e")
    assert error.value.reason == "RUN_FINISHED"
    assert error.value.metadata == {"run_id": "run-1"}
