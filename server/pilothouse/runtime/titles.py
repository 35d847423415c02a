"""Session titles: 3-6 words from the first exchange, made by the agent's
model in the background after the first run."""

from __future__ import annotations

import logging
import time

from pilothouse.errors import PilothouseError
from pilothouse.runtime.messages import Message, Role
from pilothouse.runtime.model.base import ChatModel, ChatRequest, ModelError
from pilothouse.runtime.store.base import SessionRecord, SessionStore

log = logging.getLogger(__name__)

TITLE_PROMPT = (
    "Summarize this conversation in 3-6 words as a short title. "
    "Return ONLY the title, nothing else.\n\nUser: {user}\nAssistant: {assistant}"
)
#: Longest title kept, in characters.
MAX_TITLE_CHARS = 80


def wants_title(record: SessionRecord, history: list[Message]) -> bool:
    """A session without a title whose history has an answer."""
    return not record.title and any(m.role is Role.ASSISTANT and m.content for m in history)


async def generate_title(
    model: ChatModel, store: SessionStore, record: SessionRecord, history: list[Message], model_name: str
) -> None:
    """Title the session from its first exchange; failures are logged and
    leave the title empty. A title set meanwhile is kept."""
    user = next((m.content for m in history if m.role is Role.USER and not m.auto_injected), "")
    assistant = next((m.content for m in history if m.role is Role.ASSISTANT and m.content), "")
    if not user or not assistant:
        return
    prompt = TITLE_PROMPT.format(user=user[:200], assistant=assistant[:200])
    request = ChatRequest(model=model_name, messages=[Message.user(prompt)])
    try:
        parts = [c.content async for c in model.stream(request) if c.content]
        text = "".join(parts).replace("\x00", "").strip().strip('"')
        title = " ".join(text.split())[:MAX_TITLE_CHARS]
        if title:
            current = await store.get(record.id)
            if current is not None and not current.title:
                await store.set_title(record.id, title, time.time())
    except (ModelError, PilothouseError) as exc:
        log.info("session %s: title generation failed: %s", record.id, exc)
