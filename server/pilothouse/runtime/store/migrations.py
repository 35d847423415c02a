"""Versioned schema migrations of the SQL session stores.

Each `Migration` is a numbered, named list of DDL statements per backend;
a store applies, at `open()`, every migration whose version is not yet in
its `schema_migrations` table, in order, inside one transaction together
with the rows recording them (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: under
a transaction-scoped advisory lock, so replicas starting together apply
each migration once). Migrations are append-only: never edit a released
one, add the next version.

Schema (version 1):

- `sessions`: one row per session, every `SessionRecord` field
  (`always_approved_tools` a JSON array, `last_run_usage` a JSON object of
  the non-zero counters), plus `lease_until` (Unix seconds; the run lease
  of `active_run_id` is held until then), `next_seq` (the `seq` the next
  transcript item gets) and `history_seq` (the `seq` of the last compact
  marker, 0 without one: the model-visible history is exactly the items
  with `seq >= history_seq`, contiguous, so a page of it is a `seq` range).
- `transcript_items`: (session_id, seq) primary key, `kind` (`message` or
  `compact`), `role`, `content` (a marker's summary), `sender`,
  `tool_call_id`, `name`, `payload` (JSON object of the message's other
  non-default fields, NULL when none; see `codec`), `created_at`. Loading a
  session reads one range of that key from `history_seq` on.

Version 2 adds `agents`, the registry every replica shares: `name`,
`config` (canonical JSON of the AgentConfig as given), `source`, `version`,
`created_at`, `updated_at`. Version 3 adds `run_owners`: per session, the
latest run and the address of the replica that runs it, so other replicas
can forward calls about that run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


#: Portable: `schema_migrations` itself.
SCHEMA_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL)"
)

_SESSION_INDEXES = (
    # find_open: the latest open session of an identity.
    "CREATE INDEX sessions_by_identity ON sessions (agent, created_by, state, created_at)",
    # list: most recently updated first.
    "CREATE INDEX sessions_by_activity ON sessions (updated_at, id)",
    # recover_interrupted: only sessions holding a lease.
    "CREATE INDEX sessions_with_lease ON sessions (lease_until) WHERE active_run_id <> ''",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sessions and transcript items",
        sqlite=(
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                title TEXT NOT NULL DEFAULT '',
                state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
                message_count INTEGER NOT NULL DEFAULT 0,
                uptime_s REAL NOT NULL DEFAULT 0,
                always_approved_tools TEXT NOT NULL DEFAULT '[]',
                active_run_id TEXT NOT NULL DEFAULT '',
                last_run_id TEXT NOT NULL DEFAULT '',
                last_run_stop_reason TEXT NOT NULL DEFAULT '',
                last_run_usage TEXT NOT NULL DEFAULT '{}',
                lease_until REAL NOT NULL DEFAULT 0,
                next_seq INTEGER NOT NULL DEFAULT 0,
                history_seq INTEGER NOT NULL DEFAULT 0
            )""",
            *_SESSION_INDEXES,
            # Clustered by (session_id, seq): a session's history is one
            # contiguous range of the b-tree.
            """CREATE TABLE transcript_items (
                session_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('message', 'compact')),
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                sender TEXT NOT NULL,
                tool_call_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload TEXT,
                created_at REAL NOT NULL,
                PRIMARY KEY (session_id, seq)
            ) WITHOUT ROWID""",
        ),
        postgres=(
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                title TEXT NOT NULL DEFAULT '',
                state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
                message_count BIGINT NOT NULL DEFAULT 0,
                uptime_s DOUBLE PRECISION NOT NULL DEFAULT 0,
                always_approved_tools JSONB NOT NULL DEFAULT '[]',
                active_run_id TEXT NOT NULL DEFAULT '',
                last_run_id TEXT NOT NULL DEFAULT '',
                last_run_stop_reason TEXT NOT NULL DEFAULT '',
                last_run_usage JSONB NOT NULL DEFAULT '{}',
                lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
                next_seq BIGINT NOT NULL DEFAULT 0,
                history_seq BIGINT NOT NULL DEFAULT 0
            )""",
            *_SESSION_INDEXES,
            # `json`, not `jsonb`: stored verbatim, and it accepts the
            # \\u0000 escape that jsonb rejects (text with NUL goes there).
            """CREATE TABLE transcript_items (
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                seq BIGINT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('message', 'compact')),
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                sender TEXT NOT NULL,
                tool_call_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload JSON,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (session_id, seq)
            )""",
        ),
    ),
    Migration(
        2,
        "agent registry",
        sqlite=(
            """CREATE TABLE agents (
                name TEXT PRIMARY KEY,
                config TEXT NOT NULL,
                source TEXT NOT NULL,
                version INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
        ),
        postgres=(
            """CREATE TABLE agents (
                name TEXT PRIMARY KEY,
                config TEXT NOT NULL,
                source TEXT NOT NULL,
                version BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "run owners",
        sqlite=(
            """CREATE TABLE run_owners (
                session_id TEXT PRIMARY KEY,
                run_id TEXT NOT NULL,
                owner TEXT NOT NULL
            )""",
        ),
        postgres=(
            """CREATE TABLE run_owners (
                session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
                run_id TEXT NOT NULL,
                owner TEXT NOT NULL
            )""",
        ),
    ),
)

#: Records which replica runs (or ran) a session's latest run.
UPSERT_RUN_OWNER = (
    "INSERT INTO run_owners (session_id, run_id, owner) VALUES ({p1}, {p2}, {p3})"
    " ON CONFLICT (session_id) DO UPDATE SET run_id = excluded.run_id, owner = excluded.owner"
)

#: Upsert of an agent (both backends): a replaced agent's version goes up
#: only when its config or source changed. `config` is canonical JSON text
#: (sorted keys), so equal configs compare equal.
UPSERT_AGENT = (
    "INSERT INTO agents (name, config, source, version, created_at, updated_at)"
    " VALUES ({p1}, {p2}, {p3}, 1, {p4}, {p4})"
    " ON CONFLICT (name) DO UPDATE SET config = excluded.config, source = excluded.source,"
    " version = agents.version + 1, updated_at = excluded.updated_at"
    " WHERE agents.config <> excluded.config OR agents.source <> excluded.source"
)
INSERT_AGENT = (
    "INSERT INTO agents (name, config, source, version, created_at, updated_at)"
    " VALUES ({p1}, {p2}, {p3}, 1, {p4}, {p4})"
)
SELECT_AGENT = "SELECT name, config, source, version, created_at, updated_at FROM agents"

#: The schema version this code writes.
LATEST_VERSION = MIGRATIONS[-1].version


def pending(applied: set[int]) -> list[Migration]:
    """The migrations not in `applied`, in version order."""
    return [m for m in MIGRATIONS if m.version not in applied]
