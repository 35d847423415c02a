"""TLS on real ports with certificates made in the test: the runtime and
the ToolExecutor serving TLS and mutual TLS, the SDK and the CLI over TLS,
certificates refused (wrong CA, expired, not yet valid, none), a rotated
certificate picked up while a stream stays open, and the plaintext health
port beside a TLS server."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pilothouse.app.startup import start_app
from pilothouse.auth import build_chain
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.rpc.settings import ServerProcessSettings
from pilothouse.rpc.tls import ClientTls, ServerTls
from pilothouse.testmodel import Pause, SSEReply, text_reply
from pilothouse.toolexecutor.service import serve_tools
from pilothouse.v1 import (
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    tool_executor_service_pb2 as tx,
    tool_executor_service_pb2_grpc as tx_grpc,
)
from tests.certs import days, issue, write_ca
from tests.conftest import app_settings, build_test_tools, kinds

RUN_SERVICE = "pilothouse.v1.RunService"


def channel_to(port: int, ca: trustme.CA | None, client=None, tmp_path=None) -> grpc.aio.Channel:
    """A TLS channel to 127.0.0.1:port trusting `ca`, presenting `client`."""
    roots = ca.cert_pem.bytes() if ca is not None else None
    key, chain = (client.key_pem, client.cert_pem) if client is not None else (None, None)
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", grpc.ssl_channel_credentials(roots, key, chain)
    )


async def list_tools(channel: grpc.aio.Channel) -> tx.ListToolsResponse:
    async with channel:
        return await tx_grpc.ToolExecutorServiceStub(channel).ListTools(
            tx.ListToolsRequest(), timeout=5
        )


async def handshake_refused(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_tools(channel)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


# --- server certificates -------------------------------------------------


async def test_tool_executor_serves_tls_and_refuses_bad_server_certificates(tmp_path):
    ca, other_ca = trustme.CA(), trustme.CA()
    good = issue(ca, tmp_path, "good")
    expired = issue(ca, tmp_path, "expired", not_before=days(-10), not_after=days(-1))
    future = issue(ca, tmp_path, "future", not_before=days(1), not_after=days(10))

    server = await serve_tools(
        build_test_tools(), "127.0.0.1:0", tls=ServerTls(good.cert_file, good.key_file)
    )
    try:
        reply = await list_tools(channel_to(server.port, ca))
        assert "calculate" in [t.name for t in reply.tools]
        await handshake_refused(channel_to(server.port, other_ca))  # wrong CA
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        await handshake_refused(plain)
    finally:
        await server.stop(0)

    for leaf in (expired, future):
        server = await serve_tools(
            build_test_tools(), "127.0.0.1:0", tls=ServerTls(leaf.cert_file, leaf.key_file)
        )
        try:
            await handshake_refused(channel_to(server.port, ca))
        finally:
            await server.stop(0)


async def test_mutual_tls_requires_a_valid_client_certificate(tmp_path):
    ca, other_ca = trustme.CA(), trustme.CA()
    server_leaf = issue(ca, tmp_path, "server")
    runtime = issue(ca, tmp_path, "runtime", uris=("spiffe://test/ns/ai/sa/runtime",), ips=())
    stranger = issue(other_ca, tmp_path, "stranger", uris=("spiffe://evil/x",), ips=())
    expired = issue(ca, tmp_path, "old", uris=("spiffe://test/old",), ips=(),
                    not_before=days(-10), not_after=days(-1))
    settings = ServerProcessSettings(
        auth=["mtls"],
        tls_cert_file=server_leaf.cert_file,
        tls_key_file=server_leaf.key_file,
        tls_client_ca_file=write_ca(ca, tmp_path / "ca.pem"),
    )
    server = await serve_tools(
        build_test_tools(), "127.0.0.1:0", tls=settings.server_tls, auth=build_chain(settings)
    )
    try:
        await handshake_refused(channel_to(server.port, ca))  # no client certificate
        await handshake_refused(channel_to(server.port, ca, stranger))
        await handshake_refused(channel_to(server.port, ca, expired))
        reply = await list_tools(channel_to(server.port, ca, runtime))
        assert reply.tools
    finally:
        await server.stop(0)


def test_optional_client_certificates_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="optional is not supported"):
        ServerProcessSettings(
            tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem",
            tls_client_ca_file=tmp_path / "ca.pem", tls_client_auth="optional",
        )
    with pytest.raises(ValueError, match="needs PILOTHOUSE_TLS_CLIENT_CA_FILE"):
        ServerProcessSettings(auth=["mtls"])


# --- the runtime, its clients and its own client certificate ---------------


async def test_sdk_and_cli_over_tls(model_server, tool_server, tmp_path):
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    leaf = issue(ca, tmp_path, "runtime")
    app = await start_app(
        app_settings(model_server, tool_server, tls_cert_file=leaf.cert_file,
                     tls_key_file=leaf.key_file)
    )
    target = f"127.0.0.1:{app.port}"
    try:
        async with PilothouseClient(target, tls=ClientTls(ca_file)) as client:
            assert "assistant" in [a.config.name for a in await client.list_agents()]
        async with PilothouseClient(target, timeout=5) as plain:
            with pytest.raises(PilothouseRpcError) as caught:
                await plain.list_agents()
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE

        cli = [sys.executable, "-m", "pilothouse.client.cli", "--server", target]
        process = await asyncio.create_subprocess_exec(
            *cli, "--ca", str(ca_file), "agents", "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert "assistant" in out.decode()
    finally:
        await app.stop(0)


async def test_runtime_presents_its_client_certificate_to_mutual_tls_executors(
    model_server, fake_model, tmp_path
):
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    tools_leaf = issue(ca, tmp_path, "tools")
    runtime_leaf = issue(ca, tmp_path, "runtime", uris=("spiffe://test/runtime",))
    tools_settings = ServerProcessSettings(
        auth=["mtls"], tls_cert_file=tools_leaf.cert_file, tls_key_file=tools_leaf.key_file,
        tls_client_ca_file=ca_file,
    )
    tools = await serve_tools(
        build_test_tools(), "127.0.0.1:0", tls=tools_settings.server_tls,
        auth=build_chain(tools_settings),
    )

    class Tools:
        address = f"127.0.0.1:{tools.port}"

    try:
        app = await start_app(
            app_settings(
                model_server, Tools, tool_executors_ca_file=ca_file,
                client_cert_file=runtime_leaf.cert_file, client_key_file=runtime_leaf.key_file,
            )
        )
        try:
            from pilothouse.testmodel import tool_calls_reply

            fake_model.responder.push(
                tool_calls_reply([("c1", "calculate", '{"expression": "6*7"}')]),
                text_reply("42"),
            )
            async with PilothouseClient(f"127.0.0.1:{app.port}") as client:
                await client.create_agent("mtls-tools", tools=["calculate"], system_prompt="x")
                session = await client.create_session("mtls-tools", "tester")
                events = [e async for e in client.stream_to(session.id, "6*7?")]
            results = [e.tool_result for e in events if e.HasField("tool_result")]
            assert results and results[0].output == "42" and not results[0].error
        finally:
            await app.stop(0)
    finally:
        await tools.stop(0)


# --- rotation --------------------------------------------------------------


async def test_rotated_certificate_serves_new_connections_while_a_stream_stays_open(
    model_server, tool_server, fake_model, tmp_path
):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    live = tmp_path / "live"
    live.mkdir()
    old = issue(old_ca, live, "tls")  # live/tls.pem and live/tls.key
    app = await start_app(
        app_settings(model_server, tool_server, tls_cert_file=old.cert_file,
                     tls_key_file=old.key_file)
    )
    target = f"127.0.0.1:{app.port}"
    old_roots, new_roots = tmp_path / "old-ca.pem", tmp_path / "new-ca.pem"
    write_ca(old_ca, old_roots)
    write_ca(new_ca, new_roots)
    release = asyncio.Event()
    events = text_reply("Still here after the rotation.", chunk_size=4).events
    fake_model.responder.push(SSEReply([*events[:2], Pause(release), *events[2:]]))
    try:
        async with PilothouseClient(target, tls=ClientTls(old_roots)) as streaming:
            await streaming.create_agent("rotation", system_prompt="x")
            session = await streaming.create_session("rotation", "tester")
            stream = streaming.stream_to(session.id, "Talk slowly")
            seen = [await anext(stream)]
            while seen[-1].WhichOneof("event") != "text_delta":
                seen.append(await anext(stream))

            # cert-manager style: new files moved into place atomically.
            staged = tmp_path / "staged"
            staged.mkdir()
            new = issue(new_ca, staged, "tls")
            os.replace(new.key_file, old.key_file)
            os.replace(new.cert_file, old.cert_file)

            async with PilothouseClient(target, tls=ClientTls(new_roots)) as fresh:
                assert await fresh.list_agents()
            async with PilothouseClient(target, tls=ClientTls(old_roots), timeout=5) as stale:
                with pytest.raises(PilothouseRpcError) as caught:
                    await stale.list_agents()
                assert caught.value.code is grpc.StatusCode.UNAVAILABLE

            # A broken pair (another CA's certificate, the old key) is not
            # taken: the last good certificate stays.
            broken = issue(old_ca, staged, "broken")
            os.replace(broken.cert_file, old.cert_file)
            async with PilothouseClient(target, tls=ClientTls(new_roots)) as fresh:
                assert await fresh.list_agents()

            release.set()
            seen += [e async for e in stream]
        assert kinds(seen)[-1] == "done"
        text = "".join(e.text_delta.text for e in seen if e.HasField("text_delta"))
        assert text == "Still here after the rotation."
    finally:
        await app.stop(0)


# --- the plaintext health port ---------------------------------------------


async def test_plaintext_health_port_beside_a_tls_server_mirrors_health_and_drain(
    model_server, tool_server, tmp_path
):
    ca = trustme.CA()
    leaf = issue(ca, tmp_path, "runtime")
    app = await start_app(
        app_settings(model_server, tool_server, tls_cert_file=leaf.cert_file,
                     tls_key_file=leaf.key_file, health_listen_address="127.0.0.1:0")
    )
    try:
        assert app.server.health_port and app.server.health_port != app.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.server.health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", RUN_SERVICE):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Nothing else is served there.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agents_grpc.AgentServiceStub(channel).ListAgents(
                    agents_pb.ListAgentsRequest(), timeout=5
                )
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [r async for r in reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )]
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED

            await app.server.enter_drain()
            reply = await health.Check(health_pb2.HealthCheckRequest(service=RUN_SERVICE), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await app.stop(0)
