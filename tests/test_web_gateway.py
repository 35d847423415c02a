"""The web port's Connect and gRPC-Web gateway, spoken on the wire with
httpx as a browser would (Connect JSON unary calls, enveloped server
streams, CORS preflights), against a real runtime: the same handlers and
the same authentication as the gRPC port, error details included."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
import trustme
from google.rpc import error_details_pb2

from pilothouse.app.startup import StartupError, start_app
from pilothouse.testmodel import text_reply
from pilothouse.v1 import agent_service_pb2 as agents_pb
from pilothouse.web.options import loopback_target
from tests.certs import issue, write_ca
from tests.conftest import app_settings
from tests.test_auth import tokens_file

AGENTS = "/pilothouse.v1.AgentService"
SESSIONS = "/pilothouse.v1.SessionService"
RUNS = "/pilothouse.v1.RunService"
ORIGIN = "https://console.example"
ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def web_runtime(model_server, tool_server, **overrides):
    app = await start_app(
        app_settings(model_server, tool_server, web_listen_address="127.0.0.1:0", **overrides)
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{app.web_port}", timeout=30
        ) as http:
            yield app, http
    finally:
        await app.stop(0)


async def unary(http: httpx.AsyncClient, path: str, body: dict, **headers: str) -> httpx.Response:
    return await http.post(
        path, json=body, headers={"connect-protocol-version": "1", **headers}
    )


def envelopes(data: bytes) -> list[tuple[int, dict]]:
    """The (flags, JSON message) frames of a Connect streaming body."""
    frames = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        frames.append((flags, json.loads(data[5 : 5 + size])))
        data = data[5 + size :]
    return frames


def envelope(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(body)) + body


async def stream(http: httpx.AsyncClient, path: str, body: dict, **headers: str):
    """POST a Connect server-streaming call; the (messages, end message)."""
    response = await http.post(
        path,
        content=envelope(body),
        headers={"content-type": "application/connect+json", **headers},
    )
    assert response.status_code == 200, response.text
    frames = envelopes(response.content)
    assert frames and frames[-1][0] == 2, frames  # the end-of-stream frame
    return [m for _, m in frames[:-1]], frames[-1][1]


async def test_agents_sessions_and_a_streamed_run_over_connect(
    fake_model, tool_server, model_server
):
    async with web_runtime(model_server, tool_server) as (_app, http):
        created = await unary(http, f"{AGENTS}/CreateAgent", {
            "config": {"name": "web-agent", "systemPrompt": "Be brief."},
        })
        assert created.status_code == 200, created.text
        listed = await unary(http, f"{AGENTS}/ListAgents", {})
        assert "web-agent" in [a["config"]["name"] for a in listed.json()["agents"]]

        session = (await unary(http, f"{SESSIONS}/CreateSession", {"agent": "web-agent"})).json()
        session_id = session["session"]["id"]
        fake_model.responder.queue.append(text_reply("Hello from the browser path."))
        messages, end = await stream(http, f"{RUNS}/StreamTo", {
            "sessionId": session_id, "content": "hi",
        })
        assert end == {}  # no error
        envelope_fields = {"sessionId", "runId", "sequence", "time"}
        kinds = [next(k for k in m["event"] if k not in envelope_fields) for m in messages]
        assert kinds[0] == "runStarted" and kinds[-1] == "done"
        done = messages[-1]["event"]["done"]
        assert done["finalResponse"] == "Hello from the browser path."
        sequences = [int(m["event"]["sequence"]) for m in messages]
        assert sequences == list(range(1, len(messages) + 1))

        history = await unary(http, f"{SESSIONS}/ListMessages", {"sessionId": session_id})
        roles = [m["role"] for m in history.json()["messages"]]
        assert roles == ["ROLE_USER", "ROLE_ASSISTANT"]

        # The binary protobuf codec works too (what connect-web sends with
        # useBinaryFormat).
        request = agents_pb.GetAgentRequest(name="web-agent")
        binary = await http.post(
            f"{AGENTS}/GetAgent", content=request.SerializeToString(),
            headers={"content-type": "application/proto"},
        )
        assert binary.status_code == 200
        assert agents_pb.GetAgentResponse.FromString(binary.content).agent.config.name == "web-agent"


async def test_errors_keep_their_code_and_details(tool_server, model_server):
    async with web_runtime(model_server, tool_server) as (_app, http):
        missing = await unary(http, f"{SESSIONS}/GetSession", {"sessionId": "nope"})
        assert missing.status_code == 404
        body = missing.json()
        assert body["code"] == "not_found"
        infos = [d for d in body["details"] if d["type"] == "google.rpc.ErrorInfo"]
        assert infos, body
        info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(infos[0]["value"] + "=="))
        assert info.domain == "pilothouse.v1" and info.reason == "SESSION_NOT_FOUND"

        bad = await unary(http, f"{AGENTS}/CreateAgent", {"config": {"name": "bad name!"}})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"
        types = {d["type"] for d in bad.json()["details"]}
        assert "google.rpc.BadRequest" in types

        # A stream's error comes in its end-of-stream frame.
        messages, end = await stream(http, f"{RUNS}/Attach", {"sessionId": "nope"})
        assert messages == [] and end["error"]["code"] == "not_found"

        # Bidirectional Steer is not served over HTTP/1.1: UNIMPLEMENTED (404).
        steer = await unary(http, f"{RUNS}/Steer", {})
        assert steer.status_code == 404


async def test_the_web_port_is_behind_the_same_authentication(
    fake_model, tool_server, model_server, tmp_path
):
    path = tokens_file(tmp_path / "tokens.toml", {
        "alice-secret": ("alice", []),
    })
    async with web_runtime(
        model_server, tool_server, auth=["tokens"], auth_tokens_file=path,
        auth_trusted_peers=["alice"],
    ) as (_app, http):
        anonymous = await unary(http, f"{AGENTS}/ListAgents", {})
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "unauthenticated"
        wrong = await unary(http, f"{AGENTS}/ListAgents", {}, authorization="Bearer guess")
        assert wrong.status_code == 401

        alice = {"authorization": "Bearer alice-secret"}
        assert (await unary(http, f"{AGENTS}/ListAgents", {}, **alice)).status_code == 200
        session = await unary(http, f"{SESSIONS}/CreateSession", {"agent": "assistant"}, **alice)
        session_id = session.json()["session"]["id"]
        # Method-level authorization: agent writes need the admin role.
        denied = await unary(http, f"{AGENTS}/CreateAgent", {"config": {"name": "x"}}, **alice)
        assert denied.status_code == 403 and denied.json()["code"] == "permission_denied"
        # A streamed call is refused before it starts.
        _, end = await stream(http, f"{RUNS}/StreamTo", {"sessionId": session_id, "content": "x"})
        assert end["error"]["code"] == "unauthenticated"
        # A browser cannot pose as a replica forwarding for someone else:
        # alice is a trusted peer on gRPC, but the web port drops the header.
        forged = await unary(
            http, f"{AGENTS}/CreateAgent", {"config": {"name": "x"}}, **alice,
            **{"x-pilothouse-on-behalf-of": '{"id": "carol", "roles": ["admin"]}'},
        )
        assert forged.json()["code"] == "permission_denied"


async def test_cors_for_the_configured_origins_only(tool_server, model_server):
    async with web_runtime(model_server, tool_server, web_cors_origins=[ORIGIN]) as (_app, http):
        preflight = await http.options(f"{AGENTS}/ListAgents", headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,connect-protocol-version,authorization",
        })
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "connect-protocol-version" in allowed

        call = await unary(http, f"{AGENTS}/ListAgents", {}, origin=ORIGIN)
        assert call.headers["access-control-allow-origin"] == ORIGIN
        assert "grpc-status-details-bin" in call.headers["access-control-expose-headers"]

        other = await http.options(f"{AGENTS}/ListAgents", headers={
            "origin": "https://elsewhere.example",
            "access-control-request-method": "POST",
        })
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


async def test_grpc_web_clients_are_served_too(tool_server, model_server):
    async with web_runtime(model_server, tool_server) as (_app, http):
        request = agents_pb.GetAgentRequest(name="assistant").SerializeToString()
        response = await http.post(
            f"{AGENTS}/GetAgent",
            content=struct.pack(">BI", 0, len(request)) + request,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
        assert response.status_code == 200
        flags, size = struct.unpack(">BI", response.content[:5])
        assert flags == 0
        reply = agents_pb.GetAgentResponse.FromString(response.content[5 : 5 + size])
        assert reply.agent.config.name == "assistant"
        trailer = response.content[5 + size :]
        assert trailer[0] == 0x80 and b"grpc-status:0" in trailer.replace(b" ", b"")


async def test_the_console_is_served_with_its_settings(tool_server, model_server):
    async with web_runtime(
        model_server, tool_server, web_trace_url="https://traces.example/trace/{trace_id}",
    ) as (_app, http):
        page = await http.get("/")
        assert page.status_code == 200 and "<title>Pilothouse" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        config = (await http.get("/console/config.json")).json()
        assert config["trace_url"] == "https://traces.example/trace/{trace_id}"
        assert f"{RUNS}/StreamTo" in config["methods"]
        assert f"{RUNS}/Steer" not in config["methods"]


async def test_unsafe_web_ports_are_refused(tool_server, model_server, tmp_path):
    with pytest.raises(StartupError, match="without authentication"):
        await start_app(app_settings(model_server, tool_server, web_listen_address="0.0.0.0:0"))
    with pytest.raises(StartupError, match="PILOTHOUSE_WEB_TRACE_URL"):
        await start_app(app_settings(
            model_server, tool_server, web_listen_address="127.0.0.1:0",
            web_trace_url="https://traces.example/",
        ))
    with pytest.raises(StartupError, match="not an origin"):
        await start_app(app_settings(
            model_server, tool_server, web_listen_address="127.0.0.1:0",
            web_cors_origins=["console.example"],
        ))


def test_the_gateway_calls_its_own_port_on_loopback():
    assert loopback_target("0.0.0.0:50051", 50051) == "127.0.0.1:50051"
    assert loopback_target("[::]:0", 4000) == "[::1]:4000"
    assert loopback_target("10.0.0.5:50051", 50051) == "10.0.0.5:50051"
    assert loopback_target("unix:/run/p.sock", 0) == "unix:/run/p.sock"



def test_the_wheel_ships_the_console(tmp_path):
    """`pip install` gets the built console: the wheel holds its files
    (committed builds, so no Node.js is needed to install), and the web
    extra names the web port's dependencies."""
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("pilothouse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    for asset in ("index.html", "console.js", "console.css"):
        assert f"pilothouse/web/console/{asset}" in names
    assert "Provides-Extra: web" in metadata
    assert "connectrpc" in metadata


async def test_https_with_the_servers_certificate(tool_server, model_server, tmp_path):
    """With TLS on the gRPC port the web port serves HTTPS with the same
    certificate, and its own calls reach the gRPC port over TLS (the
    replicas' client TLS settings)."""
    ca = trustme.CA()
    leaf = issue(ca, tmp_path, "runtime")
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    app = await start_app(app_settings(
        model_server, tool_server, web_listen_address="127.0.0.1:0",
        tls_cert_file=leaf.cert_file, tls_key_file=leaf.key_file, peer_ca_file=ca_file,
    ))
    try:
        assert app.server.tls and app.web is not None and app.web.tls
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{app.web_port}", verify=ssl.create_default_context(cafile=str(ca_file)), timeout=30
        ) as https:
            listed = await unary(https, f"{AGENTS}/ListAgents", {})
            assert listed.status_code == 200, listed.text
            assert "assistant" in [a["config"]["name"] for a in listed.json()["agents"]]
    finally:
        await app.stop(0)
