"""Real MCP servers for the tests, written with the official `mcp` SDK
(`MCPServer`, the SDK's FastMCP), run as their own processes:

    python tests/mcp_servers.py stdio
    python tests/mcp_servers.py http --port 0   # prints "PORT <n>" once listening

Both serve the same tools. `wait` blocks until it is cancelled (through
MCP's `notifications/cancelled`) and counts the cancellations, which
`stats` reports, so a test can see that the server saw the cancel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
)

READ_ONLY = ToolAnnotations(read_only_hint=True)
#: A 1x1 PNG (70 bytes).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

server = MCPServer("pilothouse-test-server", instructions="Tools for the Pilothouse tests.")
counts = {"started": 0, "cancelled": 0}
waiting = asyncio.Event()


@server.tool(annotations=READ_ONLY)
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=READ_ONLY)
def weather(city: str) -> dict[str, Any]:
    """Today's weather in a city (structured)."""
    return {"city": city, "temperature_c": 21, "sky": "clear"}


@server.tool(annotations=READ_ONLY, structured_output=False)
def report() -> CallToolResult:
    """Only structured content, no text block."""
    return CallToolResult(content=[], structured_content={"rows": 3, "ok": True})


@server.tool(annotations=READ_ONLY, structured_output=False)
def media() -> list[Any]:
    """Text, an image, audio, a resource link and embedded resources."""
    return [
        TextContent(text="here is the chart"),
        ImageContent(data=base64.b64encode(PNG).decode(), mime_type="image/png"),
        AudioContent(data=base64.b64encode(b"\0" * 1000).decode(), mime_type="audio/wav"),
        ResourceLink(
            uri="file:///reports/q3.pdf",
            name="q3.pdf",
            description="The Q3 report",
            mime_type="application/pdf",
            size=20480,
        ),
        EmbeddedResource(
            resource=TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="a note")
        ),
        EmbeddedResource(
            resource=BlobResourceContents(
                uri="file:///data.bin",
                mime_type="application/octet-stream",
                blob=base64.b64encode(b"\1" * 10).decode(),
            )
        ),
    ]


@server.tool(annotations=READ_ONLY)
def fail(message: str) -> str:
    """Fail with a tool error (an isError result)."""
    raise ToolError(message)


@server.tool(annotations=READ_ONLY)
def protocol_error() -> str:
    """Answer with a JSON-RPC error instead of a result."""
    raise MCPError(code=INVALID_PARAMS, message="the server refuses this request")


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def delete_item(item_id: str) -> str:
    """Delete an item (destructive)."""
    return f"deleted {item_id}"


@server.tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
)
def set_value(key: str, value: str) -> str:
    """Set a value (idempotent, not destructive)."""
    return f"{key}={value}"


@server.tool()
def unannotated() -> str:
    """No annotations: MCP's defaults (not read-only, destructive)."""
    return "done"


@server.tool(name="files.read", annotations=READ_ONLY)
def files_read(path: str) -> str:
    """A name with a dot, which OpenAI function names do not allow."""
    return f"contents of {path}"


@server.tool(annotations=READ_ONLY)
async def wait() -> str:
    """Wait until cancelled; counts the calls started and cancelled."""
    counts["started"] += 1
    waiting.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        counts["cancelled"] += 1
        raise
    return "never"


@server.tool(annotations=READ_ONLY)
def stats() -> dict[str, int]:
    """Calls of `wait` started and cancelled, and this process's id."""
    return {**counts, "pid": os.getpid()}


@server.tool(annotations=READ_ONLY)
def environment(name: str) -> str:
    """The value of an environment variable of this process ("" if unset)."""
    return os.environ.get(name, "")


@server.tool(annotations=READ_ONLY)
def request_header(name: str, ctx: Context) -> str:
    """A header of the HTTP request that carried this call ("" over stdio)."""
    return (ctx.headers or {}).get(name.lower(), "")


def extra() -> str:
    """A tool added while the server runs."""
    return "extra"


@server.tool(annotations=READ_ONLY)
async def grow(ctx: Context) -> str:
    """Add the tool `extra` and tell the client that the tools changed."""
    if "extra" not in [tool.name for tool in await server.list_tools()]:
        server.add_tool(extra, annotations=READ_ONLY)
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool(annotations=READ_ONLY)
def crash() -> str:
    """Exit the server process in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


def _listen_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def _serve_http(port: int) -> None:
    import uvicorn

    sock = _listen_socket(port)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        asyncio.run(_serve_http(args.port))


if __name__ == "__main__":
    main()
