"""Session stores: the `SessionStore` interface and its implementations."""

from pilothouse.runtime.store.base import SessionRecord, SessionState, SessionStore
from pilothouse.runtime.store.memory import MemorySessionStore

__all__ = ["MemorySessionStore", "SessionRecord", "SessionState", "SessionStore"]
