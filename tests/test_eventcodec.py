"""The stored form of run events (`runtime.eventcodec`): every event comes
back as it went in, whichever JSON writer encoded it."""

from __future__ import annotations

import json

import pytest

from pilothouse.runtime import eventcodec, events as ev
from pilothouse.runtime.messages import Usage


def round_trip(event: ev.Event) -> ev.Event:
    recorded = ev.RunEvent("s1", "r1", 7, 1_700_000_000.25, event)
    stored = eventcodec.encode(recorded)
    json.loads(stored.payload)  # valid JSON for every store
    back = eventcodec.decode(stored, "s1")
    assert (back.run_id, back.sequence, back.time) == ("r1", 7, 1_700_000_000.25)
    return back.event


@pytest.mark.parametrize("text", ["", " tok", "naïve ☃ \U0001f600", "quote \" and \\ and \n"])
def test_text_deltas_round_trip(text: str) -> None:
    assert round_trip(ev.TextDelta(text)) == ev.TextDelta(text)
    assert round_trip(ev.ThinkingDelta(text)) == ev.ThinkingDelta(text)


def test_structured_output_keeps_integers_past_64_bits() -> None:
    # orjson cannot write these: the json module's writer takes over.
    done = ev.Done(ev.AgentResponse(
        "{}", 1, ev.StopReason.TEXT_RESPONSE, [], "m", usage=Usage(prompt_tokens=3),
        structured_output={"big": 10**30, "nested": {"n": -(2**70)}, "list": [1.5, None, True]},
    ))
    back = round_trip(done)
    assert isinstance(back, ev.Done)
    assert back.response.structured_output == {
        "big": 10**30, "nested": {"n": -(2**70)}, "list": [1.5, None, True]
    }
    assert back.response.usage.prompt_tokens == 3
