"""Hosting MCP servers: one connection per configured server, kept up.

`McpServerHost` owns the connection to one server, through the official
`mcp` SDK (`stdio_client` or `streamable_http_client`, then a
`ClientSession`), in one supervising task: connect, handshake, list the
tools, then watch the connection (the transport closing, a failed call,
an MCP ping every `ping_interval`). When it is lost, the server's process
is stopped (stdio) and the host connects again after a backoff that
doubles from `backoff_initial` to `backoff_max`, so an exited stdio server
is started again and an unreachable HTTP server retried. A
`notifications/tools/list_changed` from the server lists its tools again.

While a server is down its tools stay listed as they were last seen (so an
agent's tool list does not change under it) and each call answers at once
with an error result saying the server is unavailable; its health service
`mcp/<name>` is NOT_SERVING (`pilothouse.toolexecutor.mcp.hosts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

from pilothouse.toolexecutor.mcp.config import McpServerConfig
from pilothouse.toolexecutor.mcp.convert import exposed_name, render_result, tool_flags
from pilothouse.toolexecutor.registry import Answer, ExecutionResult, ToolFlags
from pilothouse.toolexecutor.schema import describe_exception, json_type

__all__ = ["McpServerHost", "McpTool"]

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="pilothouse-tools", version="0.1.0")
#: Most pages of tools/list read from one server.
_MAX_TOOL_PAGES = 100


@dataclass(frozen=True, slots=True)
class McpTool:
    """One tool of an MCP server, as the ToolExecutor serves it: `name` is
    the namespaced name, `remote_name` the server's own."""

    name: str
    description: str
    parameters_schema: dict[str, Any]
    metadata: Mapping[str, str]
    flags: ToolFlags
    remote_name: str
    host: McpServerHost = field(repr=False, compare=False)

    async def run(
        self, arguments_json: str, answer: Answer | None = None, *, timeout: float | None = None
    ) -> ExecutionResult:
        """Call the tool on its server (see `McpServerHost.call`)."""
        return await self.host.call(self, arguments_json, timeout)


class _WatchedDispatcher(JSONRPCDispatcher):
    """The SDK's JSON-RPC dispatcher, telling when its receive loop ends:
    the transport closed (a stdio server exited, an HTTP transport failed)."""

    def __init__(self, read_stream: Any, write_stream: Any, on_end: Callable[[], None]) -> None:
        super().__init__(read_stream, write_stream)
        self._on_end = on_end

    async def run(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().run(*args, **kwargs)
        finally:
            self._on_end()


class _ConnectionLost(Exception):
    """The connection ended; the message says how."""


class McpServerHost:
    """The connection to one configured MCP server (see the module
    docstring). `state` is "starting", "up" or "down"; `last_error` why it
    is not up."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.state = "starting"
        self.last_error: str | None = None
        self._session: ClientSession | None = None
        self._tools: dict[str, McpTool] = {}
        self._wake = asyncio.Event()
        self._lost: str | None = None
        self._refresh = False
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_status: list[Callable[[], Awaitable[None]]] = []

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def up(self) -> bool:
        """Connected, and no call has seen the connection fail since."""
        return self.state == "up" and self._session is not None

    @property
    def tools(self) -> list[McpTool]:
        """The tools last listed by the server (also while it is down)."""
        return list(self._tools.values())

    def start(self) -> None:
        """Start the supervising task (connects in the background)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.name}")

    async def wait_first_attempt(self) -> None:
        """Until the first connection attempt succeeded or failed."""
        await self._first_attempt.wait()

    def on_status(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call the async `callback()` after every change of `state`."""
        self._on_status.append(callback)

    async def close(self) -> None:
        """Close the connection (stopping a stdio server) and stop
        reconnecting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- calls ---------------------------------------------------------------

    async def call(self, tool: McpTool, arguments_json: str, timeout: float | None) -> ExecutionResult:
        """Call `tool` with a JSON object of arguments.

        `timeout` (seconds left before the gRPC deadline; None: the
        server's `call_timeout`) is the MCP request's timeout. Cancelling
        the calling task cancels the request (the SDK sends
        `notifications/cancelled`). Returns an error result for arguments
        that are not a JSON object, a server that is down, an `isError`
        result, or an MCP error; raises TimeoutError when the deadline
        passes, and asyncio.CancelledError.
        """
        try:
            arguments = _decode_arguments(tool.name, arguments_json)
        except ValueError as exc:
            return ExecutionResult(error=str(exc), outcome="invalid_arguments")
        session = self._session
        if session is None or not self.up:
            return self._unavailable()
        request_timeout = timeout if timeout is not None else self.config.call_timeout
        try:
            result = await session.call_tool(
                tool.remote_name, arguments, read_timeout_seconds=request_timeout
            )
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                if timeout is not None:
                    raise TimeoutError(str(exc)) from None
                return ExecutionResult(
                    error=f"MCP server {self.name!r} did not answer within "
                    f"{request_timeout:g} s; the call was cancelled",
                    outcome="error",
                )
            if _is_connection_loss(exc):
                self._connection_lost(f"connection lost during a call: {exc.message}")
                return ExecutionResult(
                    error=f"MCP server {self.name!r} closed the connection during the call "
                    "(it may or may not have run); it is being reconnected",
                    outcome="unavailable",
                )
            return ExecutionResult(
                error=f"MCP server {self.name!r} answered error {exc.code}: {exc.message}",
                outcome="error",
            )
        except (RuntimeError, ValueError) as exc:  # unusable result (e.g. schema mismatch)
            return ExecutionResult(
                error=f"MCP server {self.name!r} returned an unusable result: "
                f"{describe_exception(exc)}",
                outcome="error",
            )
        text = render_result(result)
        if result.is_error:
            return ExecutionResult(
                error=text or f"tool {tool.remote_name!r} failed without a message",
                outcome="error",
            )
        return ExecutionResult(output=text)

    def _unavailable(self) -> ExecutionResult:
        reason = f": {self.last_error}" if self.last_error else ""
        return ExecutionResult(
            error=f"MCP server {self.name!r} is unavailable{reason}; it is being "
            f"{'restarted' if self.config.transport == 'stdio' else 'reconnected'}, "
            "try again later",
            outcome="unavailable",
        )

    def _connection_lost(self, reason: str) -> None:
        """Calls fail fast from now on; the supervising task reconnects."""
        self._session = None
        if self._lost is None:
            self._lost = reason
        self._wake.set()

    # --- the supervising task ------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connect_and_watch()
                reason = "connection closed"
            except Exception as exc:  # also the ExceptionGroups of the SDK's task groups
                reason = _describe_failure(exc)
            finally:
                self._session = None
            if self.state == "up" or time.monotonic() - started > self.config.backoff_max:
                attempt = 0
            delay = min(self.config.backoff_max, self.config.backoff_initial * 2**attempt)
            delay *= random.uniform(0.8, 1.2)
            attempt += 1
            self.last_error = reason
            await self._set_state("down")
            self._first_attempt.set()
            log.warning(
                "MCP server %s is down (%s); %s in %.1f s",
                self.name, reason,
                "restarting" if self.config.transport == "stdio" else "reconnecting", delay,
            )
            await asyncio.sleep(delay)

    async def _connect_and_watch(self) -> None:
        self._lost, self._refresh = None, False
        self._wake.clear()
        async with AsyncExitStack() as stack:
            read_stream, write_stream = await stack.enter_async_context(self._transport())
            dispatcher = _WatchedDispatcher(
                read_stream, write_stream, lambda: self._connection_lost("the connection closed")
            )
            session = await stack.enter_async_context(
                ClientSession(
                    dispatcher=dispatcher, message_handler=self._on_message, client_info=CLIENT_INFO
                )
            )
            with anyio.fail_after(self.config.connect_timeout):
                await session.initialize()
                tools = await self._list_tools(session)
            self._set_tools(tools)
            self._session = session
            self.last_error = None
            await self._set_state("up")
            self._first_attempt.set()
            log.info("MCP server %s is up: %d tools", self.name, len(tools))
            await self._watch(session)

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        config = self.config
        if config.command is not None:
            params = StdioServerParameters(
                command=config.command, args=config.args, env=config.env or None, cwd=config.cwd
            )
            return stdio_client(params, errlog=sys.stderr)
        assert config.url is not None
        client = httpx2.AsyncClient(
            headers=config.headers, timeout=httpx2.Timeout(config.connect_timeout, read=None)
        )
        return _http_transport(client, config.url)

    async def _watch(self, session: ClientSession) -> None:
        """Return when the connection is lost; list the tools again when the
        server says they changed."""
        interval = self.config.ping_interval or None
        while True:
            with anyio.move_on_after(interval if interval else float("inf")):
                await self._wake.wait()
            self._wake.clear()
            if self._lost is not None:
                raise _ConnectionLost(self._lost)
            if self._refresh:
                self._refresh = False
                with anyio.fail_after(self.config.connect_timeout):
                    self._set_tools(await self._list_tools(session))
                log.info("MCP server %s changed its tools: %d now", self.name, len(self._tools))
                continue
            if interval:
                try:
                    with anyio.fail_after(self.config.ping_timeout):
                        await session.send_ping()
                except TimeoutError:
                    raise _ConnectionLost(
                        f"no answer to a ping within {self.config.ping_timeout:g} s"
                    ) from None

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._refresh = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.warning("MCP server %s: transport error: %s", self.name, describe_exception(message))

    async def _list_tools(self, session: ClientSession) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_TOOL_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def _set_tools(self, tools: list[types.Tool]) -> None:
        served: dict[str, McpTool] = {}
        for tool in tools:
            name = exposed_name(self.config.tool_prefix, tool.name)
            if name in served:
                log.warning(
                    "MCP server %s: tools %r and %r both become %s; serving the first",
                    self.name, served[name].remote_name, tool.name, name,
                )
                continue
            metadata = {"mcp_server": self.name, "mcp_tool": tool.name}
            title = tool.title or (tool.annotations.title if tool.annotations else None)
            if title:
                metadata["title"] = title
            served[name] = McpTool(
                name=name,
                description=tool.description or title or "",
                parameters_schema=dict(tool.input_schema),
                metadata=metadata,
                flags=tool_flags(tool.annotations, self.config),
                remote_name=tool.name,
                host=self,
            )
        self._tools = served

    async def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        for callback in self._on_status:
            await callback()


@contextlib.asynccontextmanager
async def _http_transport(client: httpx2.AsyncClient, url: str) -> Any:
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _decode_arguments(tool: str, arguments_json: str) -> dict[str, Any]:
    """The call's arguments as a JSON object; ValueError with a text for
    the model otherwise."""
    text = arguments_json.strip() or "{}"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid arguments for tool {tool!r}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"invalid arguments for tool {tool!r}: expected a JSON object, got {json_type(data)}"
        )
    return data


def _is_connection_loss(exc: MCPError) -> bool:
    if exc.code == types.CONNECTION_CLOSED:
        return True
    # An HTTP server that restarted forgot the session (HTTP 404).
    return exc.code == types.INVALID_REQUEST and exc.message == "Session terminated"


def _describe_failure(exc: BaseException) -> str:
    """One line for a failed connection, from the innermost cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, _ConnectionLost):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "no answer to the MCP handshake in time"
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message}"
    return describe_exception(exc)
