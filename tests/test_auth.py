"""Authentication and method-level authorization on real servers: static
tokens, JWTs against a JWKS served over real HTTP, mutual TLS, mesh
headers, calls forwarded between replicas, the ToolExecutor's own checks,
the audit log, and servers that refuse to start exposed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import time

import grpc
import jwt
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.adapters.tool_executor_client import ToolExecutorClient
from pilothouse.app.startup import StartupError, start_app
from pilothouse.auth import ON_BEHALF_OF, build_chain
from pilothouse.auth.mesh import parse_xfcc, xfcc_identity
from pilothouse.auth.settings import AuthSettings
from pilothouse.auth.tokens import hash_token, read_tokens_file
from pilothouse.client import PilothouseClient, PilothouseRpcError
from pilothouse.rpc.errors import error_details
from pilothouse.rpc.tls import ClientTls
from pilothouse.runtime.messages import ToolCall
from pilothouse.runtime.tools import ToolContext
from pilothouse.testmodel import Pause, SSEReply, text_reply
from pilothouse.toolexecutor import ToolFlags
from pilothouse.toolexecutor.service import serve_tools
from pilothouse.v1 import (
    agent_pb2,
    agent_service_pb2 as agents_pb,
    agent_service_pb2_grpc as agents_grpc,
    event_pb2,
    run_service_pb2 as runs_pb,
    run_service_pb2_grpc as runs_grpc,
    tool_executor_service_pb2 as tx,
    tool_executor_service_pb2_grpc as tx_grpc,
)
from tests.certs import issue, write_ca
from tests.conftest import app_settings, build_test_tools

ISSUER = "https://issuer.test"
AUDIENCE = "pilothouse"


@contextlib.asynccontextmanager
async def runtime(model_server, tool_server, **overrides):
    app = await start_app(app_settings(model_server, tool_server, **overrides))
    try:
        yield app
    finally:
        await app.stop(0)


@pytest.fixture
def audit_log():
    """The audit records written while the test runs."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger = logging.getLogger("pilothouse.audit")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


async def agents_call(port: int, method: str, request, metadata=()) -> object:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agents_grpc.AgentServiceStub(channel)
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)


def list_agents(port: int, metadata=()):
    return agents_call(port, "ListAgents", agents_pb.ListAgentsRequest(), metadata)


def create_agent(port: int, name: str, metadata=()):
    config = agent_pb2.AgentConfig(name=name, system_prompt="x")
    return agents_call(port, "CreateAgent", agents_pb.CreateAgentRequest(config=config), metadata)


async def refused(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() is code, (error.code(), error.details())
    info, _ = error_details(error)
    assert info is not None and info.domain == "pilothouse.v1"
    return error


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def tokens_file(path, entries: dict[str, tuple[str, list[str]]]):
    lines = []
    for token, (principal, roles) in entries.items():
        lines += [
            "[[tokens]]", f'principal = "{principal}"', f"roles = {json.dumps(roles)}",
            f'sha256 = "{hash_token(token)}"', "",
        ]
    path.write_text("\n".join(lines))
    return path


# --- tokens, authorization, audit --------------------------------------------


async def test_tokens_roles_and_the_audit_log(model_server, tool_server, tmp_path, audit_log):
    path = tokens_file(tmp_path / "tokens.toml", {
        "alice-secret": ("alice", ["admin"]),
        "bob-secret": ("bob", []),          # no roles: the default role, user
        "carol-secret": ("carol", ["viewer"]),
    })
    async with runtime(model_server, tool_server, auth=["tokens"], auth_tokens_file=path) as app:
        port = app.port
        missing = await refused(list_agents(port), grpc.StatusCode.UNAUTHENTICATED)
        invalid = await refused(list_agents(port, bearer("guess")), grpc.StatusCode.UNAUTHENTICATED)
        assert error_details(missing)[0].reason == "CREDENTIALS_MISSING"
        assert error_details(invalid)[0].reason == "CREDENTIALS_INVALID"
        assert invalid.details() == "invalid credentials"  # nothing for a guesser
        await refused(list_agents(port, (("authorization", "Basic Ym9iOng="),)),
                      grpc.StatusCode.UNAUTHENTICATED)

        assert (await list_agents(port, bearer("bob-secret"))).agents
        denied = await refused(create_agent(port, "by-bob", bearer("bob-secret")),
                               grpc.StatusCode.PERMISSION_DENIED)
        assert error_details(denied)[0].reason == "PERMISSION_DENIED"
        await refused(
            agents_call(port, "DeleteAgent", agents_pb.DeleteAgentRequest(name="assistant"),
                        bearer("bob-secret")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await refused(list_agents(port, bearer("carol-secret")), grpc.StatusCode.PERMISSION_DENIED)
        # Streaming calls are refused the same way, before the handler runs.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = runs_grpc.RunServiceStub(channel).StreamTo(
                runs_pb.StreamToRequest(session_id="s", content="hi"), timeout=10
            )
            await refused(anext(aiter(stream)), grpc.StatusCode.UNAUTHENTICATED)

        # The SDK's token option; the admin's CRUD is audited with its outcome.
        async with PilothouseClient(f"127.0.0.1:{port}", token="alice-secret") as alice:
            await alice.create_agent("by-alice", system_prompt="x")
            with pytest.raises(PilothouseRpcError) as caught:
                await alice.delete_agent("no-such-agent")
            assert caught.value.code is grpc.StatusCode.NOT_FOUND

        # Health and reflection stay open.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # A token added to the file works without a restart.
        tokens_file(path, {"alice-secret": ("alice", ["admin"]), "dave-secret": ("dave", [])})
        async def dave_gets_in() -> bool:
            try:
                await list_agents(port, bearer("dave-secret"))
            except grpc.aio.AioRpcError:
                return False
            return True

        deadline = time.monotonic() + 10
        while not await dave_gets_in():
            assert time.monotonic() < deadline, "the new token was never accepted"
            await asyncio.sleep(0.2)  # the file is looked at once a second
        await refused(list_agents(port, bearer("bob-secret")), grpc.StatusCode.UNAUTHENTICATED)

    refusals = [r for r in audit_log if r.event == "call.refused"]
    assert {(r.code, r.reason) for r in refusals} >= {
        ("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
        ("UNAUTHENTICATED", "CREDENTIALS_INVALID"),
        ("PERMISSION_DENIED", "PERMISSION_DENIED"),
    }
    guess = next(r for r in refusals if r.reason == "CREDENTIALS_INVALID")
    assert "unknown bearer token" in guess.detail
    assert guess.method == "/pilothouse.v1.AgentService/ListAgents"
    assert len(guess.trace_id) == 32  # the call's trace
    by_bob = next(r for r in refusals if r.reason == "PERMISSION_DENIED")
    assert (by_bob.principal, by_bob.roles) == ("bob", "user")
    actions = [(r.method.rsplit("/", 1)[-1], r.principal, r.code, r.target)
               for r in audit_log if r.event == "admin.action"]
    assert actions == [
        ("CreateAgent", "alice", "OK", "by-alice"),
        ("DeleteAgent", "alice", "NOT_FOUND", "no-such-agent"),
    ]


async def test_token_cli_makes_entries_the_tokens_file_accepts(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.auth", "new-token", "--principal", "ci-bot",
        "--role", "user", "--role", "ops", stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    token, entry = out.decode().split("\n", 1)
    path = tmp_path / "tokens.toml"
    path.write_text(entry)
    (only,) = read_tokens_file(path).values()
    assert (only.principal, only.roles, only.sha256) == ("ci-bot", {"user", "ops"}, hash_token(token))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.auth", "hash-token", "--principal", "ci-bot",
        "--role", "user", "--role", "ops",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    again, _ = await process.communicate(token.encode())
    assert again.decode() == entry


async def test_audit_lines_are_json_on_stderr():
    """Always JSON, whatever the root logger's format."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import logging, pilothouse.auth.audit as a; "
        "logging.basicConfig(format='%(message)s');"
        "a.audit('call.refused', method='/x/Y', code='UNAUTHENTICATED')",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    line = json.loads(err.decode().strip().splitlines()[-1])
    assert line["logger"] == "pilothouse.audit"
    assert (line["event"], line["method"], line["code"]) == ("call.refused", "/x/Y", "UNAUTHENTICATED")


# --- JWT ------------------------------------------------------------------------


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key, kid: str) -> dict:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256"}


class JwksServer:
    """A real HTTP server serving `keys` as a JWKS; counts its requests."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _jwks(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/.well-known/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "erin", "iat": now, "exp": now + 300, **extra}


async def test_jwt_verification_against_a_jwks_url(model_server, tool_server, audit_log):
    jwks = JwksServer()
    url = await jwks.start()
    key1, key2, stranger = rsa_key(), rsa_key(), rsa_key()
    jwks.keys = [jwk_of(key1, "k1")]

    def sign(payload: dict, key=key1, kid: str | None = "k1", algorithm="RS256") -> str:
        headers = {"kid": kid} if kid else {}
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)

    public_pem = key1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims(roles=["admin"])).encode())
    confused = f"{header}.{body}." + b64(
        hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    )
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    alg_none = f"{none_header}.{body}."
    try:
        async with runtime(
            model_server, tool_server, auth=["jwt"], auth_jwt_jwks_url=url,
            auth_jwt_issuer=ISSUER, auth_jwt_audience=[AUDIENCE], auth_jwt_leeway=5,
            auth_jwt_roles_claim="realm_access.roles",
        ) as app:
            port = app.port
            admin = sign(claims(realm_access={"roles": ["admin"]}))
            await create_agent(port, "by-jwt", bearer(admin))
            user = sign(claims(realm_access={"roles": ["user"]}))
            assert (await list_agents(port, bearer(user))).agents
            await refused(create_agent(port, "by-user", bearer(user)), grpc.StatusCode.PERMISSION_DENIED)
            assert jwks.requests == 1  # cached

            now = int(time.time())
            bad = {
                "expired": sign(claims(iat=now - 600, exp=now - 60)),
                "not yet valid": sign(claims(nbf=now + 600)),
                "no expiry": sign({k: v for k, v in claims().items() if k != "exp"}),
                "wrong audience": sign(claims(aud="someone-else")),
                "wrong issuer": sign(claims(iss="https://evil.test")),
                "wrong key": sign(claims(), key=stranger),
                "alg none": alg_none,
                "HS256 with the RSA public key": confused,
                "no kid, wrong key": sign(claims(), key=stranger, kid=None),
                "garbage": "abc.def.ghi",
            }
            for why, token in bad.items():
                error = await refused(list_agents(port, bearer(token)), grpc.StatusCode.UNAUTHENTICATED)
                assert error.details() == "invalid credentials", why

            # A new key id: the JWKS is fetched again once, then the key works.
            jwks.keys = [jwk_of(key1, "k1"), jwk_of(key2, "k2")]
            assert (await list_agents(port, bearer(sign(claims(), key=key2, kid="k2")))).agents
            assert jwks.requests == 2
            # Made-up key ids do not make it fetch again (rate limited).
            for n in range(5):
                await refused(list_agents(port, bearer(sign(claims(), kid=f"made-up-{n}"))),
                              grpc.StatusCode.UNAUTHENTICATED)
            assert jwks.requests == 2
    finally:
        await jwks.stop()
    details = " ".join(r.detail for r in audit_log if r.event == "call.refused")
    for cause in ("ExpiredSignatureError", "InvalidAudienceError", "InvalidIssuerError",
                  "'none' is not allowed", "'HS256' is not allowed", "made-up-0",
                  "InvalidSignatureError", "ImmatureSignatureError", "MissingRequiredClaimError"):
        assert cause in details, cause


async def test_hmac_jwts_need_an_explicit_algorithm_and_an_oct_key(
    model_server, tool_server, tmp_path
):
    secret = os.urandom(32)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h1", "k": b64(secret)}]}))
    async with runtime(
        model_server, tool_server, auth=["jwt"], auth_jwt_jwks_file=path, auth_jwt_issuer=ISSUER,
        auth_jwt_audience=[AUDIENCE], auth_jwt_algorithms=["HS256"],
    ) as app:
        token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "h1"})
        assert (await list_agents(app.port, bearer(token))).agents
        other = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "h1"})
        await refused(list_agents(app.port, bearer(other)), grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(ValueError, match="never an accepted JWT algorithm"):
        AuthSettings(auth=["jwt"], auth_jwt_jwks_file=path, auth_jwt_issuer=ISSUER,
                     auth_jwt_audience=[AUDIENCE], auth_jwt_algorithms=["RS256", "none"])


# --- mTLS and mesh identities -------------------------------------------------


async def test_mtls_principal_is_the_certificates_spiffe_id(model_server, tool_server, tmp_path):
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    server = issue(ca, tmp_path, "server")
    ops = issue(ca, tmp_path, "ops", uris=("spiffe://test/ns/ai/sa/ops",), ips=())
    dev = issue(ca, tmp_path, "dev", dns=("dev.test",), ips=())
    async with runtime(
        model_server, tool_server, auth=["mtls"], tls_cert_file=server.cert_file,
        tls_key_file=server.key_file, tls_client_ca_file=ca_file,
        auth_admins=["spiffe://test/ns/ai/sa/ops"],
    ) as app:
        target = f"127.0.0.1:{app.port}"
        async with PilothouseClient(
            target, tls=ClientTls(ca_file, ops.cert_file, ops.key_file)
        ) as client:
            await client.create_agent("by-ops", system_prompt="x")
        async with PilothouseClient(
            target, tls=ClientTls(ca_file, dev.cert_file, dev.key_file)
        ) as client:
            assert await client.list_agents()
            with pytest.raises(PilothouseRpcError) as caught:
                await client.create_agent("by-dev", system_prompt="x")
            assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_xfcc_parsing_takes_the_immediate_client():
    header = (
        'By=spiffe://c/ns/a/sa/gw;Hash=11;URI=spiffe://c/ns/a/sa/first,'
        'By=spiffe://c/ns/a/sa/pilothouse;Hash=22;Subject="CN=ops,O=Acme, Inc.";'
        "URI=spiffe://c/ns/a/sa/ops;DNS=ops.a.svc"
    )
    elements = parse_xfcc(header)
    assert len(elements) == 2
    assert elements[1]["subject"] == ["CN=ops,O=Acme, Inc."]
    assert xfcc_identity(header) == "spiffe://c/ns/a/sa/ops"
    assert xfcc_identity("Hash=1;DNS=only.dns") == "only.dns"
    assert xfcc_identity("Hash=1") == ""


async def test_mesh_identity_and_claims_headers(model_server, tool_server):
    admin_id = "spiffe://cluster.local/ns/ai/sa/ops"
    async with runtime(
        model_server, tool_server, auth=["mesh"], auth_admins=[admin_id],
        auth_mesh_claims_header="x-jwt-payload",
    ) as app:
        port = app.port

        def xfcc(uri: str):
            return (("x-forwarded-client-cert",
                     f"By=spiffe://cluster.local/ns/ai/sa/pilothouse;Hash=ab;URI={uri}"),)

        await create_agent(port, "by-mesh-admin", xfcc(admin_id))
        await refused(create_agent(port, "by-mesh-user", xfcc("spiffe://cluster.local/ns/ai/sa/web")),
                      grpc.StatusCode.PERMISSION_DENIED)
        await refused(list_agents(port, (("x-forwarded-client-cert", "Hash=ab"),)),
                      grpc.StatusCode.UNAUTHENTICATED)
        await refused(list_agents(port), grpc.StatusCode.UNAUTHENTICATED)
        payload = b64(json.dumps({"sub": "frank", "roles": ["admin"]}).encode())
        await create_agent(port, "by-mesh-claims", (("x-jwt-payload", payload),))

    with pytest.raises(StartupError, match="mesh"):
        await start_app(app_settings(model_server, tool_server, listen_address="0.0.0.0:0",
                                     auth=["mesh"]))
    async with runtime(
        model_server, tool_server, listen_address="0.0.0.0:0", auth=["mesh"],
        auth_mesh_trusted_addresses=["0.0.0.0"], auth_mesh_identity_header="l5d-client-id",
    ) as app:
        identity = (("l5d-client-id", "web.ai.serviceaccount.identity.linkerd.cluster.local"),)
        assert (await list_agents(app.port, identity)).agents


# --- forwarded calls --------------------------------------------------------------


async def test_on_behalf_of_is_accepted_only_from_trusted_peers(model_server, tool_server, tmp_path):
    path = tokens_file(tmp_path / "tokens.toml", {"r": ("replica", []), "b": ("bob", [])})
    alice = json.dumps({"id": "alice", "roles": ["admin"], "source": "mtls"})
    async with runtime(model_server, tool_server, auth=["tokens"], auth_tokens_file=path,
                       auth_trusted_peers=["replica"]) as app:
        await create_agent(app.port, "for-alice", (*bearer("r"), (ON_BEHALF_OF, alice)))
        await refused(create_agent(app.port, "by-bob", (*bearer("b"), (ON_BEHALF_OF, alice))),
                      grpc.StatusCode.PERMISSION_DENIED)


async def test_forwarded_calls_run_as_the_caller(model_server, fake_model, tool_server, tmp_path):
    """Two replicas with mutual TLS: a call about a run on replica one,
    made by a client certificate through replica two, is forwarded with
    replica two's certificate on behalf of the client; replica one
    accepts it only from a trusted peer."""
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    replica = issue(ca, tmp_path, "replica", uris=("spiffe://test/runtime",))
    user = issue(ca, tmp_path, "user", uris=("spiffe://test/user",), ips=())
    common = dict(
        store_url="sqlite:///fwd.db", data_dir=tmp_path, auth=["mtls"],
        tls_cert_file=replica.cert_file, tls_key_file=replica.key_file,
        tls_client_ca_file=ca_file, peer_ca_file=ca_file,
        client_cert_file=replica.cert_file, client_key_file=replica.key_file,
        auth_admins=["spiffe://test/user"],
    )
    trusting = await start_app(app_settings(model_server, tool_server, **common,
                                            auth_trusted_peers=["spiffe://test/runtime"]))
    other = await start_app(app_settings(model_server, tool_server, **common))
    tls = ClientTls(ca_file, user.cert_file, user.key_file)
    try:
        for owner, via, allowed in ((trusting, other, True), (other, trusting, False)):
            async with PilothouseClient(f"127.0.0.1:{owner.port}", tls=tls) as a, \
                    PilothouseClient(f"127.0.0.1:{via.port}", tls=tls) as b:
                name = f"fwd-{owner.port}"
                await a.create_agent(name, system_prompt="x")
                session = await a.create_session(name, "spiffe://test/user")
                release = asyncio.Event()
                held = text_reply("Held on the owner.").events
                fake_model.responder.push(SSEReply([*held[:2], Pause(release), *held[2:]]))
                stream = a.stream_to(session.id, "Wait")
                async for event in stream:
                    if event.HasField("text_delta"):
                        break
                if allowed:
                    cancelled = await b.cancel(session.id, reason="through the other replica")
                    assert cancelled.stop_reason == event_pb2.STOP_REASON_CANCELLED
                else:
                    with pytest.raises(PilothouseRpcError) as caught:
                        await b.cancel(session.id)
                    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
                    await a.cancel(session.id)
                release.set()
                _ = [e async for e in stream]
    finally:
        await trusting.stop(0)
        await other.stop(0)


# --- the ToolExecutor -----------------------------------------------------------


async def test_tool_executor_refuses_unauthenticated_callers(
    model_server, fake_model, tmp_path, audit_log
):
    path = tokens_file(tmp_path / "tokens.toml", {"runtime-token": ("runtime", ["runtime"])})
    registry = build_test_tools()

    @registry.tool(flags=ToolFlags(allowed_roles=("admin",), allowed_principals=("ops",)))
    def rotate_keys() -> str:
        """Rotate the signing keys (admins only)."""
        return "rotated"

    settings = AuthSettings(auth=["tokens"], auth_tokens_file=path)
    tools = await serve_tools(registry, "127.0.0.1:0", auth=build_chain(settings))
    address = f"127.0.0.1:{tools.port}"

    class Tools:
        pass

    Tools.address = address
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tx_grpc.ToolExecutorServiceStub(channel)
            await refused(stub.ListTools(tx.ListToolsRequest(), timeout=5),
                          grpc.StatusCode.UNAUTHENTICATED)
            await refused(stub.ExecuteTool(tx.ExecuteToolRequest(name="calculate"), timeout=5),
                          grpc.StatusCode.UNAUTHENTICATED)
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        with pytest.raises(StartupError, match=r"(?s)did not answer .*UNAUTHENTICATED"):
            await start_app(app_settings(model_server, Tools, tool_discovery_timeout=2))
        async with runtime(model_server, Tools, tool_executors_token="runtime-token") as app:
            assert "rotate_keys" in app.runtime.tools

        client = ToolExecutorClient([address], call_timeout=5, max_message_bytes=1 << 20,
                                    token="runtime-token")
        try:
            await client.discover(5)
            call = ToolCall("c1", "rotate_keys", "{}")

            def context(principal: str, *roles: str) -> ToolContext:
                return ToolContext("agent", "sender", "s1", "r1", principal, roles)

            denied = await client.dispatch(call, context("bob", "user"))
            assert denied.error == "tool 'rotate_keys' may not run for this principal"
            assert (await client.dispatch(call, context("root", "admin"))).output == "rotated"
            assert (await client.dispatch(call, context("ops"))).output == "rotated"
        finally:
            await client.close()
    finally:
        await tools.stop(0)
    refusal = next(r for r in audit_log if r.event == "tool.refused")
    assert (refusal.tool, refusal.principal) == ("rotate_keys", "bob")


# --- refusing to start exposed ---------------------------------------------------


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float = 60) -> str:
    seen = []
    async with asyncio.timeout(timeout):
        while line := (await stream.readline()).decode():
            seen.append(line)
            if needle in line:
                return "".join(seen)
    raise AssertionError(f"{needle!r} never logged:\n{''.join(seen)}")


async def test_servers_refuse_to_start_unauthenticated_on_every_interface(tool_server, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")},
        "PILOTHOUSE_TOOL_EXECUTORS": tool_server.address,
        "PILOTHOUSE_STORE_URL": "memory://",
        "PILOTHOUSE_METRICS_PORT": "0",
        "PILOTHOUSE_TOOLS_METRICS_PORT": "0",
    }
    for module in ("pilothouse.app.main", "pilothouse.toolexecutor.main"):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--listen", "0.0.0.0:0", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1, err.decode()
        assert "refusing to serve 0.0.0.0:0 without authentication" in err.decode()

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pilothouse.app.main", "--listen", "0.0.0.0:0",
        env={**env, "PILOTHOUSE_ALLOW_UNAUTHENTICATED": "true"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        log = await read_until(process.stderr, "pilothouse-server listening")
        assert "authentication is off" in log
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0
