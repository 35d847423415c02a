"""Per-principal limits on a real runtime: runs per minute, concurrent runs
(released when the run ends, not when its stream does), sessions and
content bytes per minute; each refusal is RESOURCE_EXHAUSTED with
RetryInfo and QuotaFailure."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.rpc import error_details_pb2

from pilothouse.app.startup import start_app
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.rpc.errors import status_detail
from pilothouse.testmodel import Pause, SSEReply, text_reply
from tests.conftest import app_settings, wait_until


@contextlib.asynccontextmanager
async def limited(model_server, tool_server, **limits):
    app = await start_app(app_settings(model_server, tool_server, **limits))
    try:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
            await client.create_agent("limited", system_prompt="x")
            yield app, client
    finally:
        await app.stop(0)


def quota(error: PilothouseRpcError, limit: str) -> float:
    """Checks the rich status of a refusal; returns the retry delay, s."""
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "QUOTA_EXCEEDED"
    raw = error.__cause__
    retry = status_detail(raw, error_details_pb2.RetryInfo)
    failure = status_detail(raw, error_details_pb2.QuotaFailure)
    assert retry is not None and failure is not None
    (violation,) = failure.violations
    assert (violation.subject, violation.description) == ("principal:anonymous", limit)
    return retry.retry_delay.ToNanoseconds() / 1e9


async def test_runs_per_minute(model_server, tool_server, fake_model):
    async with limited(model_server, tool_server, limit_runs_per_minute=2) as (_app, client):
        session = await client.create_session("limited", "tester")
        fake_model.responder.push(text_reply("one"), text_reply("two"))
        for _ in range(2):
            await client.send_to(session.id, "hi")
        with pytest.raises(PilothouseRpcError) as caught:
            await client.send_to(session.id, "hi")
        assert 0 < quota(caught.value, "runs_per_minute") <= 30
        with pytest.raises(PilothouseRpcError) as caught:
            _ = [e async for e in client.stream_to(session.id, "hi")]
        quota(caught.value, "runs_per_minute")


async def test_concurrent_runs_hold_their_slot_until_the_run_ends(
    model_server, tool_server, fake_model
):
    async with limited(model_server, tool_server, limit_concurrent_runs=1) as (app, client):
        first = await client.create_session("limited", "tester")
        second = await client.create_session("limited", "tester")
        release = asyncio.Event()
        held = text_reply("slow answer").events
        fake_model.responder.push(SSEReply([*held[:2], Pause(release), *held[2:]]))
        stream = client.stream_to(first.id, "take your time")
        async for event in stream:
            if event.HasField("text_delta"):
                break
        # The client goes away; the run goes on and keeps its slot.
        await stream.aclose()
        with pytest.raises(PilothouseRpcError) as caught:
            await client.send_to(second.id, "me too")
        assert quota(caught.value, "concurrent_runs") > 0
        steer = await client.steer(second.id, "and me")
        with pytest.raises(PilothouseRpcError) as caught:
            _ = [e async for e in steer]
        quota(caught.value, "concurrent_runs")

        limiter = app.security.limiter
        assert limiter.active("anonymous") == 1
        release.set()
        await wait_until(lambda: limiter.active("anonymous") == 0)
        fake_model.responder.push(text_reply("now"))
        reply = await client.send_to(second.id, "now?")
        assert reply.response.final_response == "now"


async def test_sessions_and_content_per_minute(model_server, tool_server, fake_model):
    async with limited(
        model_server, tool_server, limit_sessions_per_minute=2,
        limit_content_bytes_per_minute=100, max_content_bytes=100,
    ) as (_app, client):
        session = await client.create_session("limited", "tester")
        again = await client.get_or_create_session("limited", "tester")
        assert again.id == session.id  # found, not created: not counted
        await client.create_session("limited", "other")
        with pytest.raises(PilothouseRpcError) as caught:
            await client.create_session("limited", "third")
        quota(caught.value, "sessions_per_minute")

        fake_model.responder.push(text_reply("ok"))
        await client.send_to(session.id, "x" * 60)
        with pytest.raises(PilothouseRpcError) as caught:
            await client.send_to(session.id, "y" * 60)
        assert quota(caught.value, "content_bytes_per_minute") > 0
