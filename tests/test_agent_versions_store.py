"""The agent registry's versions and session bindings in every store
(memory, a real SQLite file, a real PostgreSQL server), and migration 9 on
a store written by the previous schema."""

from __future__ import annotations

import sqlite3

import pytest

from pilothouse.errors import AbortedError, AlreadyExistsError
from pilothouse.runtime.store.base import AgentRecord, SessionStore
from pilothouse.runtime.store.migrations import MIGRATIONS
from pilothouse.runtime.store.sqlite import SqliteSessionStore
from tests.stores import Backend, record

pytest_plugins = ["tests.store_fixtures"]


def agent(name: str, *, at: float = 50.0, source: str = "api", uid: str = "u1",
          by: str = "alice", **config) -> AgentRecord:
    return AgentRecord(name, {"name": name, **config}, source, 0, at, at, uid, by)


async def test_every_version_is_kept_newest_first(store: SessionStore) -> None:
    first = await store.put_agent(agent("a", system_prompt="one"), replace=False)
    assert (first.version, first.uid, first.created_by, first.removed) == (1, "u1", "alice", False)
    second = await store.update_agent("a", {"name": "a", "system_prompt": "two"},
                                      expected_version=1, now=60.0)
    third = await store.update_agent("a", {"name": "a", "system_prompt": "three"},
                                     expected_version=2, now=70.0)
    assert second is not None and third is not None
    assert (second.version, third.version, third.uid, third.created_at, third.updated_at) == (
        2, 3, "u1", 50.0, 70.0)
    versions = await store.list_agent_versions("a", before=0, limit=10)
    assert [(v.version, v.config["system_prompt"], v.updated_at) for v in versions] == [
        (3, "three", 70.0), (2, "two", 60.0), (1, "one", 50.0)]
    assert [v.version for v in await store.list_agent_versions("a", before=3, limit=1)] == [2]
    old = await store.get_agent_version("a", 1)
    assert old is not None and old.config["system_prompt"] == "one" and old.uid == "u1"
    assert await store.get_agent_version("a", 4) is None
    assert (await store.get_agent("a")).config["system_prompt"] == "three"  # type: ignore[union-attr]


async def test_an_unchanged_update_makes_no_version_and_a_stale_one_is_aborted(
    store: SessionStore,
) -> None:
    await store.put_agent(agent("a", system_prompt="one"), replace=False)
    same = await store.update_agent("a", {"name": "a", "system_prompt": "one"},
                                    expected_version=1, now=60.0)
    assert same is not None and same.version == 1
    await store.update_agent("a", {"name": "a", "system_prompt": "two"}, expected_version=1, now=61.0)
    with pytest.raises(AbortedError) as error:
        await store.update_agent("a", {"name": "a", "system_prompt": "x"}, expected_version=1,
                                 now=62.0)
    assert error.value.reason == "AGENT_VERSION_CONFLICT"
    assert error.value.metadata["version"] == "2"
    assert await store.update_agent("nobody", {"name": "nobody"}, expected_version=1, now=1.0) is None


async def test_deleting_drops_the_versions_and_a_new_agent_starts_again(store: SessionStore) -> None:
    await store.put_agent(agent("a", system_prompt="one"), replace=False)
    await store.update_agent("a", {"name": "a", "system_prompt": "two"}, expected_version=1, now=60.0)
    with pytest.raises(AlreadyExistsError):
        await store.put_agent(agent("a", uid="u2", by="mallory"), replace=False)
    assert await store.delete_agent("a")
    assert await store.list_agent_versions("a", before=0, limit=10) == []
    again = await store.put_agent(agent("a", uid="u2", by="bob", system_prompt="new"), replace=False)
    assert (again.version, again.uid, again.created_by) == (1, "u2", "bob")
    assert [v.config["system_prompt"] for v in await store.list_agent_versions(
        "a", before=0, limit=10)] == ["new"]


async def test_the_file_replaces_keeps_uid_and_a_new_source_is_a_new_agent(
    store: SessionStore,
) -> None:
    await store.put_agent(agent("f", source="file", by="", system_prompt="a"), replace=True)
    changed = await store.put_agent(
        agent("f", at=60.0, source="file", uid="other", by="", system_prompt="b"), replace=True)
    assert (changed.version, changed.uid) == (2, "u1")
    assert [v.version for v in await store.list_agent_versions("f", before=0, limit=9)] == [2, 1]
    await store.put_agent(agent("api", uid="api-uid"), replace=False)
    taken = await store.put_agent(agent("api", at=70.0, source="file", uid="file-uid", by=""),
                                  replace=True)
    assert (taken.version, taken.uid, taken.source, taken.created_by) == (2, "file-uid", "file", "")


async def test_removed_agents_come_back_when_put_again(store: SessionStore) -> None:
    await store.put_agent(agent("f", source="file"), replace=True)
    assert await store.set_agent_removed("f", True)
    assert (await store.get_agent("f")).removed  # type: ignore[union-attr]
    assert not await store.set_agent_removed("nobody", True)
    back = await store.put_agent(agent("f", at=99.0, source="file"), replace=True)
    assert (back.removed, back.version) == (False, 1)


async def test_sessions_keep_their_binding(backend: Backend, store: SessionStore) -> None:
    await store.create(record("s1"))
    assert ((await store.get("s1")).agent_uid, (await store.get("s1")).agent_version) == ("", 0)  # type: ignore[union-attr]
    bound = await store.bind_session("s1", "uid-1", 3, 77.0)
    assert (bound.agent_uid, bound.agent_version, bound.updated_at) == ("uid-1", 3, 77.0)
    if backend.durable:
        reopened = await backend.open()
        got = await reopened.get("s1")
        assert got is not None and (got.agent_uid, got.agent_version) == ("uid-1", 3)


async def test_migration_9_binds_existing_sessions_and_keeps_the_current_version(tmp_path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of version 8, with one agent and a session
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        for migration in MIGRATIONS:
            if migration.version < 9:
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)",
                             (migration.version, migration.name))
        conn.execute("INSERT INTO agents VALUES ('old', '{\"name\":\"old\"}', 'api', 4, 1.0, 2.0)")
        conn.execute("INSERT INTO sessions (id, agent, created_by, created_at, updated_at)"
                     " VALUES ('s-old', 'old', 'me', 1.0, 1.0), ('s-gone', 'gone', 'me', 1.0, 1.0)")
    store = SqliteSessionStore(path)
    await store.open()
    try:
        current = await store.get_agent("old")
        assert current is not None and len(current.uid) == 32 and current.version == 4
        assert [v.version for v in await store.list_agent_versions("old", before=0, limit=9)] == [4]
        assert (await store.get("s-old")).agent_uid == current.uid  # type: ignore[union-attr]
        assert (await store.get("s-gone")).agent_uid == ""  # type: ignore[union-attr]
    finally:
        await store.close()
