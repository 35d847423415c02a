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

Version 4 (durable runs) adds:

- `runs`: one row per run, every `RunRecord` field but `last_sequence`
  (computed from the event log): `agent_config`, `options`, `usage` and
  `state` are JSON objects (PostgreSQL `json`: stored verbatim, `\\u0000`
  accepted), `escaped_text` a JSON object of the text fields (`content`,
  `sender`, `error`, `idempotency_key`) a TEXT column cannot hold (NUL, a
  lone surrogate), NULL when none (see `runcodec`), and `events_pruned`
  (1 once `prune_events` removed the run's events). Indexes: a unique
  (session_id, idempotency_key) where the key is not empty; (session_id,
  created_at, id) for `list_runs` and `latest_run` (newest first) and a
  session's queued runs; the active runs by `owner` for `claim_runs` with
  a stale owner; ended runs not yet pruned by `ended_at`, for
  `prune_events`.
- `run_events`: (run_id, sequence) primary key, `time`, `kind` and
  `payload` (the event's JSON text); one run's log is one range of the key
  (SQLite: WITHOUT ROWID, clustered like `transcript_items`).

`run_owners` is no longer written (a run's owner is `runs.owner`); it stays
so that replicas of the previous version keep working during a rolling
upgrade.

Version 5 indexes the text of user and assistant messages for
`search_sessions` (what is searched: see `textsearch`), existing sessions
included:

- SQLite: `message_texts` (an integer id, session_id, seq, role, content,
  created_at; unique (session_id, seq)) filled by a trigger on
  `transcript_items` inserts, and `message_search`, an FTS5 index of it
  (external content, `unicode61` tokenizer, accents kept) kept in sync by
  triggers on `message_texts`. `delete` removes a session's rows.
- PostgreSQL: `transcript_items.search`, a stored generated `tsvector`
  (`simple` configuration: no stemming, no stop words) of the searched
  messages, NULL for the others, under a GIN index. Adding the column
  rewrites `transcript_items` once, under an exclusive lock.

Version 7 adds `hook_state`: small JSON values hook plugins keep, by
(`plugin`, `scope`, `key`), with `updated_at`; `value` is JSON text. A
scope `session:<id>` belongs to that session and is deleted with it
(indexed by `scope` for that).
Version 8 (the event feed, `pilothouse.runtime.store.feed`) adds
`run_events.feed_tx`: the transaction that stored the event (SQLite: the
counter in the new one-row table `event_feed`, bumped by every transaction
that stores events; PostgreSQL: `pg_current_xact_id()`, the column's
default), 0 for the events stored before; and the index
`run_events_by_feed` on (feed_tx, run_id, sequence), the feed order.

Version 9 keeps every version of an agent and binds sessions to agents:

- `agents` gains `uid` (a random id made when the agent is registered; it
  stays across versions and changes when the name is registered anew),
  `created_by` (the principal that registered it, "" for the agents file)
  and `removed` (1 while the agent is out of the agents file: no new runs).
- `agent_versions`: (name, version) primary key, `config` (canonical JSON,
  as `agents.config`), `source`, `created_by` and `created_at` (when the
  version was made). The agents registered before get their current
  version only; their earlier configs were not kept.
- `sessions` gains `agent_uid` (the `agents.uid` the session is bound to,
  set for the existing sessions of existing agents; "" for a session whose
  agent was gone: it runs whatever agent has the name, as before) and
  `agent_version` (the pinned version, 0 for the latest).
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

_RUN_INDEXES = (
    # insert_run / begin_run / find_run: one run per idempotency key.
    "CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (session_id, idempotency_key)"
    " WHERE idempotency_key <> ''",
    # list_runs, latest_run (newest first), a session's queued runs.
    "CREATE INDEX runs_by_session ON runs (session_id, created_at, id)",
    # claim_runs with a stale owner.
    "CREATE INDEX runs_active_by_owner ON runs (owner)"
    " WHERE status IN ('running', 'waiting_for_decision')",
    # prune_events: ended runs whose events remain.
    "CREATE INDEX runs_to_prune ON runs (ended_at)"
    " WHERE status IN ('finished', 'interrupted') AND events_pruned = 0",
)

_RUN_STATUSES = "('queued', 'running', 'waiting_for_decision', 'finished', 'interrupted')"

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
    Migration(
        4,
        "runs and their event logs",
        sqlite=(
            f"""CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                session_id TEXT NOT NULL,
                agent TEXT NOT NULL,
                content TEXT NOT NULL,
                created_at REAL NOT NULL,
                sender TEXT NOT NULL DEFAULT '',
                agent_version INTEGER NOT NULL DEFAULT 0,
                agent_config TEXT NOT NULL DEFAULT '{{}}',
                options TEXT NOT NULL DEFAULT '{{}}',
                idempotency_key TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL CHECK (status IN {_RUN_STATUSES}),
                owner TEXT NOT NULL DEFAULT '',
                attempt INTEGER NOT NULL DEFAULT 0,
                started_at REAL NOT NULL DEFAULT 0,
                ended_at REAL NOT NULL DEFAULT 0,
                stop_reason TEXT NOT NULL DEFAULT '',
                error TEXT NOT NULL DEFAULT '',
                usage TEXT NOT NULL DEFAULT '{{}}',
                iterations INTEGER NOT NULL DEFAULT 0,
                state TEXT NOT NULL DEFAULT '{{}}',
                escaped_text TEXT,
                events_pruned INTEGER NOT NULL DEFAULT 0
            )""",
            *_RUN_INDEXES,
            """CREATE TABLE run_events (
                run_id TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                time REAL NOT NULL,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (run_id, sequence)
            ) WITHOUT ROWID""",
        ),
        postgres=(
            f"""CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
                agent TEXT NOT NULL,
                content TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                sender TEXT NOT NULL DEFAULT '',
                agent_version BIGINT NOT NULL DEFAULT 0,
                agent_config JSON NOT NULL DEFAULT '{{}}',
                options JSON NOT NULL DEFAULT '{{}}',
                idempotency_key TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL CHECK (status IN {_RUN_STATUSES}),
                owner TEXT NOT NULL DEFAULT '',
                attempt BIGINT NOT NULL DEFAULT 0,
                started_at DOUBLE PRECISION NOT NULL DEFAULT 0,
                ended_at DOUBLE PRECISION NOT NULL DEFAULT 0,
                stop_reason TEXT NOT NULL DEFAULT '',
                error TEXT NOT NULL DEFAULT '',
                usage JSON NOT NULL DEFAULT '{{}}',
                iterations BIGINT NOT NULL DEFAULT 0,
                state JSON NOT NULL DEFAULT '{{}}',
                escaped_text JSON,
                events_pruned SMALLINT NOT NULL DEFAULT 0
            )""",
            *_RUN_INDEXES,
            # No foreign key to `runs`: an event append costs one index
            # insert, and `delete` removes a session's events explicitly.
            """CREATE TABLE run_events (
                run_id TEXT NOT NULL,
                sequence BIGINT NOT NULL,
                time DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                payload TEXT NOT NULL,
                PRIMARY KEY (run_id, sequence)
            )""",
        ),
    ),
    Migration(
        5,
        "message search",
        sqlite=(
            """CREATE TABLE message_texts (
                id INTEGER PRIMARY KEY,
                session_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                role TEXT NOT NULL,
                content TEXT NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (session_id, seq)
            )""",
            "CREATE VIRTUAL TABLE message_search USING fts5(content, content='message_texts',"
            " content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
            "CREATE TRIGGER message_texts_indexed AFTER INSERT ON message_texts BEGIN"
            " INSERT INTO message_search (rowid, content) VALUES (new.id, new.content); END",
            "CREATE TRIGGER message_texts_unindexed AFTER DELETE ON message_texts BEGIN"
            " INSERT INTO message_search (message_search, rowid, content)"
            " VALUES ('delete', old.id, old.content); END",
            "CREATE TRIGGER transcript_items_searched AFTER INSERT ON transcript_items"
            " WHEN new.kind = 'message' AND new.role IN ('user', 'assistant')"
            " AND new.content <> '' AND (new.payload IS NULL"
            " OR json_extract(new.payload, '$.auto_injected') IS NULL) BEGIN"
            " INSERT INTO message_texts (session_id, seq, role, content, created_at)"
            " VALUES (new.session_id, new.seq, new.role, new.content, new.created_at); END",
            # The sessions stored before this version.
            "INSERT INTO message_texts (session_id, seq, role, content, created_at)"
            " SELECT session_id, seq, role, content, created_at FROM transcript_items"
            " WHERE kind = 'message' AND role IN ('user', 'assistant') AND content <> ''"
            " AND (payload IS NULL OR json_extract(payload, '$.auto_injected') IS NULL)"
            " ORDER BY session_id, seq",
        ),
        postgres=(
            "ALTER TABLE transcript_items ADD COLUMN search tsvector GENERATED ALWAYS AS ("
            "CASE WHEN kind = 'message' AND role IN ('user', 'assistant') AND content <> ''"
            # Not `payload ->> 'auto_injected'`: that parses the JSON, and
            # fails on the \\u0000 escape of text with NUL.
            """ AND (payload IS NULL OR payload::text NOT LIKE '%"auto_injected":true%')"""
            " THEN to_tsvector('simple'::regconfig, content) END) STORED",
            "CREATE INDEX transcript_items_search ON transcript_items USING GIN (search)"
            " WHERE search IS NOT NULL",
        ),
    ),
    Migration(
        8,
        "event feed order",
        sqlite=(
            "ALTER TABLE run_events ADD COLUMN feed_tx INTEGER NOT NULL DEFAULT 0",
            "CREATE TABLE event_feed (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " last_tx INTEGER NOT NULL)",
            "INSERT INTO event_feed (id, last_tx) VALUES (1, 0)",
            "CREATE INDEX run_events_by_feed ON run_events (feed_tx, run_id, sequence)",
        ),
        postgres=(
            "ALTER TABLE run_events ADD COLUMN feed_tx BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE run_events ALTER COLUMN feed_tx"
            " SET DEFAULT (pg_current_xact_id()::text::bigint)",
            "CREATE INDEX run_events_by_feed ON run_events (feed_tx, run_id, sequence)",
        ),
    ),
)

# Version 7: the state of hook plugins (`pending` orders by version, so
# migrations may be declared in any order).
MIGRATIONS = (
    *MIGRATIONS,
    Migration(
        7,
        "hook plugin state",
        sqlite=(
            """CREATE TABLE hook_state (
                plugin TEXT NOT NULL,
                scope TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (plugin, scope, key)
            ) WITHOUT ROWID""",
            "CREATE INDEX hook_state_by_scope ON hook_state (scope)",
        ),
        postgres=(
            """CREATE TABLE hook_state (
                plugin TEXT NOT NULL,
                scope TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (plugin, scope, key)
            )""",
            "CREATE INDEX hook_state_by_scope ON hook_state (scope)",
        ),
    ),
)

# Version 9: every version of an agent is kept, and sessions are bound to
# an agent (its uid) and may pin a version.
MIGRATIONS = (
    *MIGRATIONS,
    Migration(
        9,
        "agent versions and session bindings",
        sqlite=(
            "ALTER TABLE agents ADD COLUMN uid TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE agents ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE agents ADD COLUMN removed INTEGER NOT NULL DEFAULT 0",
            "UPDATE agents SET uid = lower(hex(randomblob(16)))",
            """CREATE TABLE agent_versions (
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                config TEXT NOT NULL,
                source TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (name, version)
            ) WITHOUT ROWID""",
            "INSERT INTO agent_versions (name, version, config, source, created_by, created_at)"
            " SELECT name, version, config, source, '', updated_at FROM agents",
            "ALTER TABLE sessions ADD COLUMN agent_uid TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN agent_version INTEGER NOT NULL DEFAULT 0",
            "UPDATE sessions SET agent_uid = COALESCE("
            "(SELECT uid FROM agents WHERE agents.name = sessions.agent), '')",
        ),
        postgres=(
            "ALTER TABLE agents ADD COLUMN uid TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE agents ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE agents ADD COLUMN removed SMALLINT NOT NULL DEFAULT 0",
            "UPDATE agents SET uid = md5(random()::text || clock_timestamp()::text || name)",
            """CREATE TABLE agent_versions (
                name TEXT NOT NULL,
                version BIGINT NOT NULL,
                config TEXT NOT NULL,
                source TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (name, version)
            )""",
            "INSERT INTO agent_versions (name, version, config, source, created_by, created_at)"
            " SELECT name, version, config, source, '', updated_at FROM agents",
            "ALTER TABLE sessions ADD COLUMN agent_uid TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN agent_version BIGINT NOT NULL DEFAULT 0",
            "UPDATE sessions SET agent_uid = COALESCE("
            "(SELECT uid FROM agents WHERE agents.name = sessions.agent), '')",
        ),
    ),
)

#: Every migration, in version order.
MIGRATIONS = tuple(sorted(MIGRATIONS, key=lambda m: m.version))

#: The schema version this code writes.
LATEST_VERSION = MIGRATIONS[-1].version


def pending(applied: set[int]) -> list[Migration]:
    """The migrations not in `applied`, in version order."""
    return sorted((m for m in MIGRATIONS if m.version not in applied), key=lambda m: m.version)
