"""Model providers: the `ChatModel` interface and its implementations."""

from pilothouse.runtime.model.base import (
    ChatChunk,
    ChatModel,
    ChatRequest,
    ModelError,
    ToolCallDelta,
)
from pilothouse.runtime.model.builder import MessageBuilder

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatRequest",
    "MessageBuilder",
    "ModelError",
    "ToolCallDelta",
]
