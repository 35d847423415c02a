"""The hook plugins' state in every session store (memory, SQLite on a
real file, PostgreSQL on a real server): values by (plugin, scope, key),
oldest write first, replaced in place, deleted by key or scope, deleted
with the session a scope belongs to, and kept across a restart."""

from __future__ import annotations

from pilothouse.runtime.hooks import HookState
from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.hook_state import session_scope
from tests.pg import pg_server  # noqa: F401  (the fixture)
from tests.stores import Backend, record

pytest_plugins = ["tests.store_fixtures"]


async def test_values_by_plugin_scope_and_key(store: SessionStore) -> None:
    await store.put_hook_value("memory", "user:a", "k1", '{"fact":"one"}', 10.0)
    await store.put_hook_value("memory", "user:a", "k2", '"two"', 11.0)
    await store.put_hook_value("memory", "user:b", "k1", "3", 12.0)
    await store.put_hook_value("other", "user:a", "k1", "4", 13.0)
    assert await store.hook_values("memory", "user:a") == [("k1", '{"fact":"one"}'), ("k2", '"two"')]
    # A write replaces the value and makes it the newest.
    await store.put_hook_value("memory", "user:a", "k1", '"one again"', 14.0)
    assert await store.hook_values("memory", "user:a") == [("k2", '"two"'), ("k1", '"one again"')]
    assert await store.delete_hook_values("memory", "user:a", "k2") == 1
    assert await store.delete_hook_values("memory", "user:a", "k2") == 0
    assert await store.hook_values("memory", "user:a") == [("k1", '"one again"')]
    assert await store.delete_hook_values("memory", "user:b") == 1
    assert await store.hook_values("memory", "user:b") == []
    assert await store.hook_values("other", "user:a") == [("k1", "4")]


async def test_a_session_scope_goes_with_its_session(store: SessionStore) -> None:
    await store.create(record("s1"))
    await store.create(record("s2"))
    state = HookState(store, "memory", lambda: 1.0)
    await state.put(session_scope("s1"), "fact", {"text": "ünïcode \u2603"})
    await state.put(session_scope("s2"), "fact", [1, 2])
    await state.put("user:x", "fact", None)
    await store.delete("s1")
    assert await state.items(session_scope("s1")) == []
    assert await state.items(session_scope("s2")) == [("fact", [1, 2])]
    assert await state.items("user:x") == [("fact", None)]


async def test_values_survive_a_restart(durable: Backend) -> None:
    store = await durable.open()
    await HookState(store, "memory", lambda: 5.0).put("user:a", "k", {"fact": "kept"})
    restarted = await durable.open()
    assert await HookState(restarted, "memory", lambda: 6.0).items("user:a") == [("k", {"fact": "kept"})]
