"""The rules every ExecuteTool request meets before the servicer sees it
(checked by `pilothouse.rpc.decoding`, INVALID_ARGUMENT naming the field):
a tool name fits in MAX_TOOL_NAME_BYTES, ids and the agent's name in
MAX_ID_BYTES, the sender in MAX_PRINCIPAL_BYTES."""

from __future__ import annotations

from pilothouse.rpc.decoding import RequestRules, max_bytes

#: Tool names are 1-64 characters.
MAX_TOOL_NAME_BYTES = 128
MAX_ID_BYTES = 128
#: Call ids come from the model (the runtime keeps them under 128 bytes).
MAX_CALL_ID_BYTES = 256
MAX_PRINCIPAL_BYTES = 256

TOOL_REQUEST_RULES = RequestRules(
    {
        "name": max_bytes(MAX_TOOL_NAME_BYTES),
        "call_id": max_bytes(MAX_CALL_ID_BYTES),
        "session_id": max_bytes(MAX_ID_BYTES),
        "run_id": max_bytes(MAX_ID_BYTES),
        "agent": max_bytes(MAX_ID_BYTES),
        "sender": max_bytes(MAX_PRINCIPAL_BYTES),
    }
)
