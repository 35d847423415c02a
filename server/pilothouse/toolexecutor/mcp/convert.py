"""MCP tools as Pilothouse tools: their names, their flags, and their
results as the text the model reads.

Names: a tool `read_file` of the server whose prefix is `files` is listed
as `files__read_file`. Two underscores, because tool names follow the
OpenAI function-name rule (1-64 characters of [A-Za-z0-9_-]): a dot, as in
`files.read_file`, is refused by OpenAI. Characters of the MCP name outside
that set become `_`; a name longer than 64 characters is cut and ends with
8 hex digits of its hash, so it stays unique.

Flags, from the MCP tool annotations read with the MCP defaults (an absent
hint means: not read-only, destructive, not idempotent): `read_only` =
readOnlyHint; `destructive` = not read-only and destructiveHint;
`idempotent` = read-only or idempotentHint; `requires_approval` = the
server's `requires_approval`, or destructive with
`destructive_requires_approval` (the default). So a tool without
annotations needs approval unless the config says otherwise.

Results: text blocks as they are; structured content as compact JSON when
no text block carries it (MCP asks servers to repeat it as text); resource
links and embedded resources by URI, name, type and size (an embedded text
resource with its text); images, audio and other binary content described
by type, MIME type and size, since a tool result is text.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from typing import Any

import mcp_types as types

from pilothouse.toolexecutor.mcp.config import McpServerConfig
from pilothouse.toolexecutor.registry import ToolFlags

__all__ = ["SEPARATOR", "exposed_name", "render_result", "tool_flags"]

#: Between the prefix and the MCP tool's own name.
SEPARATOR = "__"
_MAX_NAME = 64
_INVALID = re.compile(r"[^A-Za-z0-9_-]")


def exposed_name(prefix: str, tool: str) -> str:
    """The name ListTools gives the MCP tool `tool` of a server with
    `prefix` ("" for none): 1-64 characters of [A-Za-z0-9_-]."""
    cleaned = _INVALID.sub("_", tool) or "_"
    name = f"{prefix}{SEPARATOR}{cleaned}" if prefix else cleaned
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - 9]}_{digest}"


def tool_flags(annotations: types.ToolAnnotations | None, server: McpServerConfig) -> ToolFlags:
    """The ToolFlags of a tool with MCP `annotations` on `server`."""
    hints = annotations or types.ToolAnnotations()
    read_only = hints.read_only_hint is True
    destructive = not read_only and hints.destructive_hint is not False
    idempotent = read_only or hints.idempotent_hint is True
    requires_approval = server.requires_approval or (
        destructive and bool(server.destructive_requires_approval)
    )
    return ToolFlags(
        idempotent=idempotent,
        read_only=read_only,
        destructive=destructive,
        requires_approval=requires_approval,
    )


def render_result(result: types.CallToolResult) -> str:
    """The text of a tool result (also of an `isError` one)."""
    parts = [_render_block(block) for block in result.content]
    has_text = any(isinstance(block, types.TextContent) for block in result.content)
    if result.structured_content is not None and not has_text:
        parts.append(_json(result.structured_content))
    return "\n".join(parts)


def _render_block(block: Any) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        kind = "image" if isinstance(block, types.ImageContent) else "audio"
        return f"[{kind}: {block.mime_type}, {_size(block.data)}]"
    if isinstance(block, types.ResourceLink):
        return "[resource link: " + _resource_fields(
            block.uri, block.name, block.mime_type, block.size, block.description
        ) + "]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            head = _resource_fields(resource.uri, None, resource.mime_type, None, None)
            return f"[resource: {head}]\n{resource.text}"
        return f"[resource: {_resource_fields(resource.uri, None, resource.mime_type, None, None)}, {_size(resource.blob)}]"
    kind = getattr(block, "type", type(block).__name__)
    return f"[{kind} content, not shown]"


def _resource_fields(
    uri: str, name: str | None, mime_type: str | None, size: int | None, description: str | None
) -> str:
    fields = [uri]
    if name:
        fields.append(f"name {name!r}")
    if mime_type:
        fields.append(mime_type)
    if size is not None:
        fields.append(f"{size} bytes")
    if description:
        fields.append(description)
    return ", ".join(fields)


def _size(data: str) -> str:
    """The decoded size of base64 `data`."""
    try:
        return f"{len(binascii.a2b_base64(data))} bytes"
    except (binascii.Error, ValueError):
        return f"{len(data)} characters of invalid base64"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
