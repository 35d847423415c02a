"""Error texts of model providers: the message and code of an error body
in the shapes providers send, and the failure cause of an HTTP status."""

from __future__ import annotations

import json
from typing import Any

from pilothouse.runtime.model.base import FailureCause

#: Characters of an error text kept in a message.
SNIPPET = 500


def clip(text: str) -> str:
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _stringify(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def describe_error_body(body: Any, text: str = "") -> tuple[str, str | None]:
    """`(message, code)` from an error body in any of the common shapes:
    OpenAI/Azure `{"error": {"message", "type", "code"}}`, Anthropic's
    `{"type": "error", "error": {"type", "message"}, "request_id"}` (the
    request id is added to the message), OpenRouter's `error.metadata.raw`
    (the upstream message), Ollama's `{"error": "..."}`, FastAPI's
    `{"detail": ...}`, a list wrapping one of these; otherwise a snippet of
    the raw `text`. The code is the provider's `code`, else its `type`."""
    if isinstance(body, list) and body:
        return describe_error_body(body[0], text)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str) and error:
            return error, None
        if isinstance(error, dict):
            message = _stringify(
                error.get("message") or error.get("msg") or error.get("detail") or ""
            )
            metadata = error.get("metadata")
            if isinstance(metadata, dict) and metadata.get("raw"):
                upstream = _stringify(metadata["raw"])
                provider = metadata.get("provider_name")
                extra = f"{provider}: {upstream}" if provider else upstream
                message = f"{message} ({extra})" if message else extra
            code = error.get("code")
            if code is None or code == "":
                code = error.get("type")
            request_id = body.get("request_id")
            if message and isinstance(request_id, str) and request_id:
                message = f"{message} (request {request_id})"
            if message:
                return clip(message), (str(code) if code not in (None, "") else None)
        detail = body.get("detail") or body.get("message")
        if detail:
            return clip(_stringify(detail)), None
    snippet = " ".join(text.split())
    return clip(snippet), None


def status_cause(status: int) -> FailureCause:
    """The `FailureCause` of an HTTP error status."""
    if status == 429:
        return FailureCause.RATE_LIMITED
    if status in (503, 529):
        return FailureCause.OVERLOADED
    if status >= 500:
        return FailureCause.SERVER_ERROR
    return FailureCause.CLIENT_ERROR
