"""The rules every runtime request meets before a handler sees it (checked
by `pilothouse.rpc.decoding` on every RPC, INVALID_ARGUMENT naming the
field): ids the server made fit in MAX_ID_BYTES, principals (`created_by`,
`sender`) in MAX_PRINCIPAL_BYTES, and agent names (`agent`, `name` of
the request itself) follow the agent name pattern. Empty values are left
to the handlers, which know whether a field is required."""

from __future__ import annotations

from pilothouse.rpc.decoding import RequestRules, max_bytes
from pilothouse.runtime.agent import NAME_PATTERN, NAME_RULE

#: Session and run ids are 32 hex digits; this leaves room for other forms.
MAX_ID_BYTES = 128
#: Decision request ids are the model's tool-call ids (with a suffix).
MAX_REQUEST_ID_BYTES = 256
MAX_PRINCIPAL_BYTES = 256


def _agent_name(value: str) -> str | None:
    if NAME_PATTERN.match(value):
        return None
    return NAME_RULE


RUNTIME_REQUEST_RULES = RequestRules(
    {
        "session_id": max_bytes(MAX_ID_BYTES),
        "run_id": max_bytes(MAX_ID_BYTES),
        "request_id": max_bytes(MAX_REQUEST_ID_BYTES),
        "created_by": max_bytes(MAX_PRINCIPAL_BYTES),
        "sender": max_bytes(MAX_PRINCIPAL_BYTES),
    },
    # Agent names of Get/DeleteAgent and the session requests; CreateAgent's
    # config is validated as a whole by its handler.
    top_level={"agent": _agent_name, "name": _agent_name},
)
