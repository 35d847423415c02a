"""History compaction: summarise a history with the agent's model so it
fits the context again.

The summarisation request sends the history as a transcript with long tool
outputs truncated, so the request itself stays small.
"""

from __future__ import annotations

from pilothouse.runtime.agent import Agent
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import ChatModel, ChatRequest, ModelError

#: Characters of one tool output kept in the summarisation transcript.
TOOL_OUTPUT_LIMIT = 500

COMPACTION_PROMPT = (
    "You are compacting a conversation between a user and an AI agent so that the agent "
    "can continue it with less context. Write a concise summary that keeps: the user's goals "
    "and constraints, decisions made, facts learned (including tool results that matter), "
    "open questions and what the agent was about to do next. Write it as notes to the agent, "
    "in the conversation's language. Return ONLY the summary."
)


def estimate_tokens(messages: list[Message]) -> int:
    """A cheap token estimate: characters / 4."""
    chars = 0
    for m in messages:
        chars += len(m.content) + len(m.reasoning_content)
        for call in m.tool_calls:
            chars += len(call.name) + len(call.arguments)
    return chars // 4


def _transcript(history: list[Message]) -> str:
    lines = []
    for m in history:
        if m.role is Role.TOOL:
            text = m.content
            if len(text) > TOOL_OUTPUT_LIMIT:
                text = text[:TOOL_OUTPUT_LIMIT] + f"… [{len(m.content) - TOOL_OUTPUT_LIMIT} chars cut]"
            lines.append(f"tool {m.name} returned: {text}")
        elif m.role is Role.ASSISTANT:
            if m.content:
                lines.append(f"assistant: {m.content}")
            for call in m.tool_calls:
                lines.append(f"assistant called {call.name}({call.arguments})")
        else:
            lines.append(f"{m.role.value}: {m.content}")
    return "\n".join(lines)


async def summarize(model: ChatModel, agent: Agent, history: list[Message]) -> str:
    """The summary text. Raises ModelError when the model fails or answers
    nothing."""
    request = ChatRequest(
        model=agent.config.model,
        messages=[Message.user(_transcript(history))],
        system=COMPACTION_PROMPT,
    )
    parts = [chunk.content async for chunk in model.stream(request) if chunk.content]
    summary = "".join(parts).strip()
    if not summary:
        raise ModelError("the model returned an empty summary")
    return summary
