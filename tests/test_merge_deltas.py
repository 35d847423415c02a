"""Merged deltas (`merge_deltas` in StreamTo/Steer run options, Attach and
Steer's attach): a client that falls behind gets the text and thinking
deltas waiting for it as one delta each, with the whole text, in order, at
sequences it can resume after; without the option every delta is an event
of its own. Real server, real channel."""

from __future__ import annotations

from pilothouse.testmodel import text_reply
from pilothouse.v1 import run_service_pb2 as runs_pb
from tests.conftest import collect, kinds, wait_until

DELTAS = ("text_delta", "thinking_delta")


def collapsed(names: list[str]) -> list[str]:
    """Kinds with each run of one delta kind as a single entry."""
    out: list[str] = []
    for name in names:
        if not (name in DELTAS and out and out[-1] == name):
            out.append(name)
    return out


def joined(events, kind: str) -> str:
    return "".join(getattr(e, kind).text for e in events if e.WhichOneof("event") == kind)


async def finished_run(client, fake_model, session_of, text: str, reasoning: str):
    session_id = await session_of()
    fake_model.responder.push(text_reply(text, chunk_size=3, reasoning=reasoning))
    return session_id, await collect(client.stream_to(session_id, "Talk"))


async def test_attaching_behind_a_run_gets_each_segment_merged(client, fake_model, session_of):
    text = "The quick brown fox jumps over the lazy dog. " * 4
    reasoning = "Let me think about this with care. " * 3
    session_id, every = await finished_run(client, fake_model, session_of, text, reasoning)
    run_id = every[0].run_id
    assert kinds(every).count("text_delta") == -(-len(text) // 3)  # one event per chunk

    merged = await collect(client.attach(session_id, run_id, merge_deltas=True))
    assert kinds(merged) == collapsed(kinds(every))  # thinking and text kept apart
    assert joined(merged, "text_delta") == text and joined(merged, "thinking_delta") == reasoning
    # A merged delta carries the sequence and time of the last one it stands for.
    last_text = [e for e in every if e.HasField("text_delta")][-1]
    (text_event,) = [e for e in merged if e.HasField("text_delta")]
    assert (text_event.sequence, text_event.time) == (last_text.sequence, last_text.time)
    sequences = [e.sequence for e in merged]
    assert sequences == sorted(set(sequences)) and sequences[-1] == every[-1].sequence

    # Resuming after a sequence in the middle: the rest of the text, merged.
    middle = [e for e in every if e.HasField("text_delta")][5]
    rest = await collect(client.attach(session_id, run_id, middle.sequence, merge_deltas=True))
    assert rest[0].WhichOneof("event") == "text_delta"
    assert middle.text_delta.text + rest[0].text_delta.text == text[15:]
    assert joined(every, "text_delta").endswith(rest[0].text_delta.text)

    # Without the option: exactly the events the run streamed.
    again = await collect(client.attach(session_id, run_id))
    assert [(e.sequence, e.WhichOneof("event")) for e in again] == [
        (e.sequence, e.WhichOneof("event")) for e in every
    ]
    steered = await client.steer_attach(session_id, run_id, merge_deltas=True)
    assert kinds(await collect(steered)) == collapsed(kinds(every))


async def until_finished(client, session_id: str, run_id: str) -> None:
    async def finished() -> bool:
        run = await client.get_run(run_id, session_id)
        return run.status == runs_pb.RUN_STATUS_FINISHED

    await wait_until(finished, timeout=60, interval=0.05)


async def test_a_stream_that_falls_behind_the_run_catches_up_merged(client, fake_model, session_of):
    # More deltas than gRPC's flow-control window holds: the server's writes
    # wait for the client, which reads nothing until the run has finished.
    text = "".join(f"w{i} " for i in range(6000))
    for start in ("stream_to", "steer"):
        session_id = await session_of()
        fake_model.responder.push(text_reply(text, chunk_size=3))
        options = runs_pb.RunOptions(merge_deltas=True)
        if start == "stream_to":
            stream = client.stream_to(session_id, "Talk", options=options)
        else:
            stream = aiter(await client.steer(session_id, "Talk", options=options))
        first = await anext(stream)
        await until_finished(client, session_id, first.run_id)
        events = [first, *await collect(stream)]
        deltas = [e for e in events if e.HasField("text_delta")]
        assert joined(events, "text_delta") == text, start
        assert len(deltas) < -(-len(text) // 3), start  # fewer events than deltas
        assert events[-1].HasField("done") and events[-1].done.final_response == text
        sequences = [e.sequence for e in events]
        assert sequences == sorted(set(sequences)), start
