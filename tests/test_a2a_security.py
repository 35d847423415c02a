"""A2A with the runtime's guarantees around it: authentication on both
bindings (the same tokens as the gRPC API), trace context from the
caller's `traceparent`, exposure checks at start-up. Real servers, the
a2a-sdk client."""

from __future__ import annotations

import contextlib
import ssl

import grpc
import httpx
import pytest
import trustme
from a2a.client import ClientCallContext, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.client.service_parameters import ServiceParameters
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import InternalError, InvalidParamsError, TaskNotFoundError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pilothouse.app.startup import StartupError, start_app
from pilothouse.client import PilothouseClient
from pilothouse.ops import telemetry
from pilothouse.testmodel import text_reply
from tests.certs import issue, write_ca
from tests.conftest import app_settings
from tests.test_a2a import collect, states, text_from, user
from tests.test_auth import tokens_file


@contextlib.asynccontextmanager
async def runtime(model_server, tool_server, **overrides):
    app = await start_app(app_settings(
        model_server, tool_server, a2a_listen_address="127.0.0.1:0", a2a_grpc=True, **overrides
    ))
    try:
        yield app
    finally:
        await app.stop(0)


async def test_tokens_guard_both_bindings(model_server, tool_server, fake_model, tmp_path):
    path = tokens_file(tmp_path / "tokens.toml", {
        "admin-secret": ("root", ["admin"]), "bob-secret": ("bob", ["user"]),
        "eve-secret": ("eve", ["auditor"]), "alice-secret": ("alice", ["user"]),
    })
    async with runtime(model_server, tool_server, auth=["tokens"], auth_tokens_file=path) as app:
        async with PilothouseClient(f"127.0.0.1:{app.port}", token="admin-secret") as admin:
            await admin.create_agent("guarded", system_prompt="Be brief.")
        assert app.a2a is not None
        url = f"http://127.0.0.1:{app.a2a.http_port}/agents/guarded/"
        async with httpx.AsyncClient() as http:
            card = (await http.get(url + ".well-known/agent-card.json")).json()  # cards are open
            assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
            body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}}
            assert (await http.post(url, json=body)).status_code == 401
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["reason"] == "CREDENTIALS_INVALID"
            denied = await http.post(url, json=body, headers={"Authorization": "Bearer eve-secret"})
            assert denied.status_code == 403

        fake_model.responder.push(text_reply("Hi Bob."), text_reply("Hi again."))
        bob = httpx.AsyncClient(headers={"Authorization": "Bearer bob-secret"})
        async with await ClientFactory(ClientConfig(httpx_client=bob)).create_from_url(url) as client:
            events = await collect(client.send_message(user("Hello")))
        await bob.aclose()
        assert text_from(events) == "Hi Bob."
        async with PilothouseClient(f"127.0.0.1:{app.port}", token="admin-secret") as admin:
            session = await admin.get_session(events[0].task.context_id)
        assert session.created_by == "bob"  # the principal, when the message names no one

        alice = httpx.AsyncClient(headers={"Authorization": "Bearer alice-secret"})
        async with await ClientFactory(ClientConfig(httpx_client=alice)).create_from_url(url) as client:
            with pytest.raises(TaskNotFoundError):  # bob's task is not alice's to see
                await client.get_task(pb.GetTaskRequest(id=events[0].task.id))
            with pytest.raises(InvalidParamsError):  # nor his context hers to write in
                await collect(client.send_message(user("Hi", context_id=events[0].task.context_id)))
        await alice.aclose()

        config = ClientConfig(supported_protocol_bindings=["GRPC"],
                              grpc_channel_factory=grpc.aio.insecure_channel)
        async with await ClientFactory(config).create_from_url(url) as client:
            with pytest.raises(A2AClientError, match="UNAUTHENTICATED"):
                await collect(client.send_message(user("Hello")))
            context = ClientCallContext(
                service_parameters=ServiceParameters({"authorization": "Bearer bob-secret"})
            )
            events = await collect(client.send_message(user("Hello"), context=context))
        assert states(events)[-1] == pb.TASK_STATE_COMPLETED and text_from(events) == "Hi again."


async def test_traceparent_makes_the_run_a_child_of_the_caller(model_server, tool_server, fake_model):
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("pilothouse-test", provider=TracerProvider(), exporter=exporter)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with runtime(model_server, tool_server) as app:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as admin:
            await admin.create_agent("traced", system_prompt="Be brief.")
        assert app.a2a is not None
        url = f"http://127.0.0.1:{app.a2a.http_port}/agents/traced/"
        fake_model.responder.push(text_reply("Traced."))
        http = httpx.AsyncClient(headers={"traceparent": traceparent})
        async with await ClientFactory(ClientConfig(httpx_client=http)).create_from_url(url) as client:
            events = await collect(client.send_message(user("Hello")))
        await http.aclose()
    assert text_from(events) == "Traced."
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    names = {s.name for s in spans}
    assert "invoke_agent traced" in names and any(n.startswith("chat ") for n in names)
    server = [s for s in spans if s.name.startswith("POST")]
    assert server and server[0].parent is not None and f"{server[0].parent.span_id:016x}" == "00f067aa0ba902b7"


async def test_exposed_a2a_port_needs_authentication(model_server, tool_server):
    with pytest.raises(StartupError, match=r"refusing to serve 0\.0\.0\.0:0 without authentication"):
        await start_app(app_settings(model_server, tool_server, a2a_listen_address="0.0.0.0:0"))


async def test_a2a_is_off_by_default(model_server, tool_server):
    app = await start_app(app_settings(model_server, tool_server))
    try:
        assert app.a2a is None
        assert "lf.a2a.v1.A2AService" not in app.server.services
    finally:
        await app.stop(0)



async def test_get_task_after_a_restart_reads_the_store(model_server, tool_server, fake_model, tmp_path):
    settings = {"store_url": "sqlite:///sessions.db", "data_dir": tmp_path}
    async with runtime(model_server, tool_server, **settings) as app:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as admin:
            await admin.create_agent("durable", system_prompt="Be brief.")
        assert app.a2a is not None
        fake_model.responder.push(text_reply("Stored for later."))
        url = f"http://127.0.0.1:{app.a2a.http_port}/agents/durable/"
        async with await ClientFactory(ClientConfig()).create_from_url(url) as client:
            events = await collect(client.send_message(user("Remember this")))
        task_id = events[0].task.id
    async with runtime(model_server, tool_server, **settings) as app:
        assert app.a2a is not None
        url = f"http://127.0.0.1:{app.a2a.http_port}/agents/durable/"
        async with await ClientFactory(ClientConfig()).create_from_url(url) as client:
            task = await client.get_task(pb.GetTaskRequest(id=task_id, history_length=1))
    assert task.status.state == pb.TASK_STATE_COMPLETED
    assert text_from([pb.StreamResponse(task=task)]) == "Stored for later."
    assert len(task.history) == 1


async def test_both_bindings_over_the_servers_tls(model_server, tool_server, fake_model, tmp_path):
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    leaf = issue(ca, tmp_path, "runtime")
    async with runtime(model_server, tool_server, tls_cert_file=leaf.cert_file,
                       tls_key_file=leaf.key_file) as app:
        assert app.a2a is not None
        url = f"https://127.0.0.1:{app.a2a.http_port}/agents/assistant/"
        credentials = grpc.ssl_channel_credentials(ca_file.read_bytes())
        fake_model.responder.push(text_reply("Over TLS."), text_reply("Over gRPC TLS."))
        http = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file)))
        async with await ClientFactory(ClientConfig(httpx_client=http)).create_from_url(url) as client:
            assert text_from(await collect(client.send_message(user("Hi")))) == "Over TLS."
        config = ClientConfig(
            httpx_client=http, supported_protocol_bindings=["GRPC"],
            grpc_channel_factory=lambda target: grpc.aio.secure_channel(target, credentials),
        )
        async with await ClientFactory(config).create_from_url(url) as client:
            assert text_from(await collect(client.send_message(user("Hi")))) == "Over gRPC TLS."
        await http.aclose()
        async with httpx.AsyncClient() as plain:  # the CA is not trusted by default
            with pytest.raises(httpx.ConnectError):
                await plain.get(url + ".well-known/agent-card.json")


async def test_per_principal_limits_count_a2a_runs(model_server, tool_server, fake_model):
    async with runtime(model_server, tool_server, limit_runs_per_minute=1) as app:
        async with PilothouseClient(f"127.0.0.1:{app.port}") as admin:
            await admin.create_agent("limited", system_prompt="Be brief.")
        assert app.a2a is not None
        url = f"http://127.0.0.1:{app.a2a.http_port}/agents/limited/"
        fake_model.responder.push(text_reply("Once."))
        async with await ClientFactory(ClientConfig()).create_from_url(url) as client:
            assert text_from(await collect(client.send_message(user("Hi")))) == "Once."
            with pytest.raises(InternalError) as caught:  # JSON-RPC has no code for limits
                await collect(client.send_message(user("Again")))
        assert caught.value.data["pilothouseCode"] == "RESOURCE_EXHAUSTED"
        assert caught.value.data["limit"] == "runs_per_minute"
        config = ClientConfig(supported_protocol_bindings=["GRPC"],
                              grpc_channel_factory=grpc.aio.insecure_channel)
        async with await ClientFactory(config).create_from_url(url) as client:
            with pytest.raises(A2AClientError, match="RESOURCE_EXHAUSTED"):
                await collect(client.send_message(user("Again")))
