"""Model providers: the `ChatModel` interface and its implementations.

`base` (the interface and its types), `builder` (chunks → one assistant
message), `router` (the provider of each request, by model name), and the
providers: `openai` (any Chat Completions endpoint) and `anthropic` (the
Messages API), each over its wire module (`openai_wire`, `anthropic_wire`)
and the shared `http` (client, retry loop, error mapping), `body` (reading
under the first-byte and idle limits), `errors` (error bodies), `sse` and
`retry`.
"""

from pilothouse.runtime.model.base import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    FailureCause,
    ModelError,
    ModelSettings,
    ReasoningEffort,
    ToolCallDelta,
)
from pilothouse.runtime.model.builder import MessageBuilder

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatRequest",
    "FailureCause",
    "MessageBuilder",
    "ModelError",
    "ModelSettings",
    "ReasoningEffort",
    "ToolCallDelta",
]
