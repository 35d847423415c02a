"""SubscribeEvents over real gRPC streams: every run's events in one
stream, filters, cursors that resume with no gap and no duplicate, from
the oldest event, across two replicas sharing a PostgreSQL store, and a
deliberately slow subscriber dropped with RESOURCE_EXHAUSTED and the
cursor to resume from."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pilothouse.app.startup import start_app
from pilothouse.client import InvalidArgumentError, PilothouseClient
from pilothouse.rpc.errors import error_details
from pilothouse.testmodel import text_reply, tool_calls_reply
from pilothouse.v1 import (
    event_service_pb2 as events_pb,
    event_service_pb2_grpc as events_grpc,
)
from tests.conftest import app_settings, wait_until
from tests.pg import pg_server  # noqa: F401 - fixture


def stub(client: PilothouseClient) -> events_grpc.EventServiceStub:
    return events_grpc.EventServiceStub(client.channel)


class Follower:
    """A subscription read into lists by a task; `until_done(run_id)` waits
    for a run's `done`."""

    def __init__(self, client: PilothouseClient, **request) -> None:
        self.responses: list[events_pb.SubscribeEventsResponse] = []
        self.events: list = []
        self.done: set[str] = set()
        self.error: grpc.aio.AioRpcError | None = None
        self.call = stub(client).SubscribeEvents(events_pb.SubscribeEventsRequest(**request))
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.append(response)
                if not response.event.HasField("heartbeat"):
                    self.events.append(response.event)
                    if response.event.HasField("done"):
                        self.done.add(response.event.run_id)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def ready(self) -> None:
        """Until the server has started the subscription (its first
        heartbeat: the requests ask for one every 50 ms)."""
        await wait_until(lambda: self.responses)

    async def until_done(self, run_id: str, timeout: float = 10.0) -> None:
        await wait_until(lambda: run_id in self.done or self.error is not None, timeout=timeout)
        assert self.error is None, self.error

    def close(self) -> None:
        self.call.cancel()


def heartbeats(ms: int = 50) -> dict:
    from google.protobuf import duration_pb2

    return {"heartbeat_interval": duration_pb2.Duration(nanos=ms * 1_000_000)}


async def test_every_run_in_one_stream_with_filters(client, fake_model, make_agent):
    alpha = await make_agent()
    beta = await make_agent(("text_stats",))
    everything = Follower(client, **heartbeats())
    only_beta = Follower(client, agents=[beta], event_kinds=["run_started", "tool_result", "done"],
                         **heartbeats())
    await everything.ready()
    await only_beta.ready()
    a = await client.create_session(alpha, "ann")
    b = await client.create_session(beta, "bob")
    fake_model.responder.push(text_reply("Hi from alpha."))
    first = await client.send_to(a.id, "Hello", timeout=30)
    fake_model.responder.push(
        tool_calls_reply([("c1", "text_stats", '{"text": "a b"}')]), text_reply("Two words.")
    )
    second = await client.send_to(b.id, "Count", timeout=30)
    await everything.until_done(second.run_id)
    await only_beta.until_done(second.run_id)
    everything.close()
    only_beta.close()

    runs = [e.run_id for e in everything.events]
    assert set(runs) >= {first.run_id, second.run_id}
    for run_id in (first.run_id, second.run_id):  # each run whole, in order
        sequences = [e.sequence for e in everything.events if e.run_id == run_id]
        assert sequences == list(range(1, len(sequences) + 1))
        assert everything.events[runs.index(run_id)].HasField("run_started")
    by_run = {r.event.run_id: r for r in everything.responses if r.event.run_id}
    assert (by_run[first.run_id].agent, by_run[first.run_id].created_by) == (alpha, "ann")
    assert (by_run[second.run_id].agent, by_run[second.run_id].created_by) == (beta, "bob")

    assert {e.run_id for e in only_beta.events} == {second.run_id}
    assert [e.WhichOneof("event") for e in only_beta.events] == ["run_started", "tool_result", "done"]
    assert only_beta.events[-1].done.final_response == "Two words."


async def test_a_cursor_resumes_without_gap_or_duplicate(client, fake_model, session_of):
    session_id = await session_of()
    watcher = Follower(client, session_ids=[session_id], **heartbeats())
    await watcher.ready()
    fake_model.responder.push(text_reply("One, two, three, four.", chunk_size=2))
    first = await client.send_to(session_id, "Count", timeout=30)
    await watcher.until_done(first.run_id)
    watcher.close()
    middle = next(i for i, r in enumerate(watcher.responses)
                  if r.event.run_id == first.run_id and r.event.sequence == 5)
    cursor = watcher.responses[middle].cursor

    fake_model.responder.push(text_reply("Again."))
    second = await client.send_to(session_id, "More", timeout=30)
    resumed = Follower(client, session_ids=[session_id], cursor=cursor, **heartbeats())
    await resumed.until_done(second.run_id)
    resumed.close()
    seen = [(e.run_id, e.sequence) for e in resumed.events]
    assert seen[0] == (first.run_id, 6)
    assert len(seen) == len(set(seen))
    expected_first = [s for r, s in ((e.run_id, e.sequence) for e in watcher.events)
                      if r == first.run_id and s > 5]
    assert [s for r, s in seen if r == first.run_id] == expected_first
    second_seqs = [s for r, s in seen if r == second.run_id]
    assert second_seqs == list(range(1, len(second_seqs) + 1))

    oldest = Follower(client, session_ids=[session_id], from_oldest=True, **heartbeats())
    await oldest.until_done(second.run_id)
    oldest.close()
    assert oldest.events[0].run_id == first.run_id and oldest.events[0].sequence == 1


async def test_heartbeats_carry_a_cursor_past_filtered_events(client, fake_model, session_of):
    session_id = await session_of()
    quiet = Follower(client, agents=["nobody-runs-this"], **heartbeats(30))
    await quiet.ready()
    fake_model.responder.push(text_reply("Hidden."))
    reply = await client.send_to(session_id, "Hi", timeout=30)
    await wait_until(lambda: quiet.responses[-1].cursor > quiet.responses[0].cursor)
    quiet.close()
    assert quiet.events == []
    # A subscription from the heartbeat's cursor sees nothing of that run.
    after = Follower(client, session_ids=[session_id], cursor=quiet.responses[-1].cursor,
                     **heartbeats(30))
    await wait_until(lambda: len(after.responses) >= 2)
    after.close()
    assert all(e.run_id != reply.run_id for e in after.events)


async def test_bad_requests(client):
    cases = [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "1..0", "from_oldest": True}, "from_oldest"),
        ({"event_kinds": ["text_delta", "nonsense"]}, "event_kinds"),
    ]
    for request, field in cases:
        call = stub(client).SubscribeEvents(events_pb.SubscribeEventsRequest(**request))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        _, bad = error_details(caught.value)
        assert bad is not None and bad.field_violations[0].field == field


async def test_a_slow_subscriber_is_dropped_with_a_cursor_to_resume_from(fake_model, tool_server):
    app = await start_app(app_settings(fake_model, tool_server, subscription_buffer=16))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("talker", system_prompt="Talk.")
            session = await client.create_session("talker", "me")
            # The slow subscriber: it asks, then reads nothing while the run
            # goes. Its channel keeps HTTP/2's initial window (64 KiB, no
            # BDP probing), as a reader far away or busy would.
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{app.port}", options=[("grpc.http2.bdp_probe", 0)]
            )
            slow = events_grpc.EventServiceStub(channel).SubscribeEvents(
                events_pb.SubscribeEventsRequest(session_ids=[session.id], **heartbeats())
            )
            first = await slow.read()  # the subscription is live
            assert first.event.HasField("heartbeat")
            fake_model.responder.push(text_reply("word " * 600, chunk_size=1))
            reply = await client.send_to(session.id, "Talk a lot", timeout=60)
            await wait_until(lambda: app.runtime.feed.subscribers == 0)  # dropped

            # Now it reads: what reached it, then the error with its cursor.
            received: list[events_pb.SubscribeEventsResponse] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while (response := await slow.read()) is not grpc.aio.EOF:
                    received.append(response)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            info, _ = error_details(caught.value)
            assert info is not None and info.reason == "SUBSCRIBER_TOO_SLOW"
            cursor = info.metadata["cursor"]
            events = [r.event for r in received if not r.event.HasField("heartbeat")]
            assert events and (not received or cursor == received[-1].cursor)

            # Resuming from the error's cursor gives the rest: no gap, no duplicate.
            rest = Follower(client, session_ids=[session.id], cursor=cursor, **heartbeats())
            await rest.until_done(reply.run_id, timeout=30)
            rest.close()
            sequences = [e.sequence for e in events + rest.events if e.run_id == reply.run_id]
            assert sequences == list(range(1, len(sequences) + 1))
            assert len(sequences) > 3000
            await channel.close()
    finally:
        await app.stop(0)


async def test_a_replica_sees_the_runs_of_the_other(fake_model, tool_server, pg_server, tmp_path):  # noqa: F811
    dsn = await pg_server.new_database()
    a = await start_app(app_settings(fake_model, tool_server, store_url=dsn))
    b = await start_app(app_settings(fake_model, tool_server, store_url=dsn,
                                     subscription_poll_interval=0.05))
    try:
        async with (
            PilothouseClient(f"127.0.0.1:{a.port}") as on_a,
            PilothouseClient(f"127.0.0.1:{b.port}") as on_b,
        ):
            await on_a.create_agent("common", system_prompt="Hi.")
            watcher = Follower(on_b, agents=["common"], **heartbeats())
            await watcher.ready()
            session = await on_a.create_session("common", "me")
            fake_model.responder.push(text_reply("Made on replica A."))
            reply = await on_a.send_to(session.id, "Hello", timeout=30)
            await watcher.until_done(reply.run_id)
            watcher.close()
            done = watcher.events[-1]
            assert done.run_id == reply.run_id and done.done.final_response == "Made on replica A."
    finally:
        await b.stop(0)
        await a.stop(0)


async def test_the_sdk_subscribes_and_reports_bad_cursors(client, fake_model, session_of):
    session_id = await session_of()
    responses = []
    started = asyncio.Event()

    async def follow() -> None:
        async for response in client.subscribe_events(
            session_ids=[session_id], event_kinds=["run_started", "done"], heartbeat_interval=0.05
        ):
            started.set()
            responses.append(response)
            if response.event.HasField("done"):
                return

    follower = asyncio.create_task(follow())
    await started.wait()  # the first heartbeat: live
    fake_model.responder.push(text_reply("Through the SDK."))
    reply = await client.send_to(session_id, "Hi", timeout=30)
    await asyncio.wait_for(follower, 10)
    events = [r.event for r in responses if not r.event.HasField("heartbeat")]
    assert [e.WhichOneof("event") for e in events] == ["run_started", "done"]
    assert all(e.run_id == reply.run_id for e in events)
    with pytest.raises(InvalidArgumentError) as caught:
        async for _ in client.subscribe_events(cursor="nonsense"):
            pass
    assert caught.value.field_violations[0][0] == "cursor"
