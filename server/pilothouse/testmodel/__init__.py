"""An OpenAI-compatible fake model server: the built-in scripted test model
that stands in when no model endpoint is configured, and the fake model
server of the tests (queue replies, replay captured streams, cut, pause)."""

from pilothouse.testmodel.replies import (
    ChunkFactory,
    Cut,
    Delay,
    JSONReply,
    Pause,
    Raw,
    Reply,
    SSEItem,
    SSEReply,
    cut_reply,
    empty_reply,
    error_in_stream_reply,
    text_reply,
    tool_calls_reply,
)
from pilothouse.testmodel.scripted import (
    MODEL_NAME,
    ScriptedTestModel,
    example_for_schema,
    start_scripted_model,
)
from pilothouse.testmodel.server import ChatCompletionsServer, QueueResponder, Responder

__all__ = [
    "MODEL_NAME",
    "ChatCompletionsServer",
    "ChunkFactory",
    "Cut",
    "Delay",
    "JSONReply",
    "Pause",
    "QueueResponder",
    "Raw",
    "Reply",
    "Responder",
    "SSEItem",
    "SSEReply",
    "ScriptedTestModel",
    "cut_reply",
    "empty_reply",
    "error_in_stream_reply",
    "example_for_schema",
    "start_scripted_model",
    "text_reply",
    "tool_calls_reply",
]
