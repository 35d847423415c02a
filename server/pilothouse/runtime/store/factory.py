"""Open a session store from a URL (the `session_store` setting).

| URL | store |
|---|---|
| `memory://` | `MemorySessionStore` (nothing survives the process) |
| `sqlite:///sessions.db` | `SqliteSessionStore` at `<data_dir>/sessions.db` |
| `sqlite:////var/lib/pilothouse/sessions.db` | `SqliteSessionStore` at that absolute path |
| `postgresql://user:pass@host:5432/db` (or `postgres://`) | `PostgresSessionStore` |

The SQLite form follows SQLAlchemy's: what follows `sqlite:///` is the
path, relative to `data_dir` unless it starts with `/` (hence four slashes
for an absolute path). Missing parent directories are created.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pilothouse.errors import UnavailableError
from pilothouse.runtime.store.base import SessionStore
from pilothouse.runtime.store.memory import MemorySessionStore

#: The embedded default: `sessions.db` in the server's data directory.
DEFAULT_STORE_URL = "sqlite:///sessions.db"

_EXPECTED = "expected memory://, sqlite:///PATH or postgresql://USER@HOST/DB"


def _shown(url: str) -> str:
    """`url` with any password masked, for error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        return url.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        return "<malformed URL>"


def store_from_url(url: str, *, data_dir: Path) -> SessionStore:
    """The store `url` names, not yet opened. ValueError (the message
    starts with "session store URL") for a malformed URL or an unknown
    scheme."""
    try:
        return _store_from_url(url, data_dir)
    except ValueError as exc:
        raise ValueError(str(exc).replace(url, _shown(url))) from None


def _store_from_url(url: str, data_dir: Path) -> SessionStore:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"session store URL {url!r} has no scheme: {_EXPECTED}")
    if scheme == "memory":
        if rest:
            raise ValueError(f"session store URL {url!r}: memory:// takes nothing after it")
        return MemorySessionStore()
    if scheme == "sqlite":
        return _sqlite(url, rest, data_dir)
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(url).hostname and "host=" not in url:
            raise ValueError(f"session store URL {url!r} names no host: {_EXPECTED}")
        from pilothouse.runtime.store.postgres import PostgresSessionStore

        return PostgresSessionStore(url)
    raise ValueError(f"session store URL {url!r}: unknown scheme {scheme!r}: {_EXPECTED}")


def _sqlite(url: str, rest: str, data_dir: Path):
    from pilothouse.runtime.store.sqlite import SqliteSessionStore

    if not rest.startswith("/"):
        raise ValueError(
            f"session store URL {url!r}: sqlite takes no host, write sqlite:///PATH "
            "(relative to the data directory) or sqlite:////ABSOLUTE/PATH"
        )
    raw = rest[1:]
    if "?" in raw or "#" in raw:
        raise ValueError(f"session store URL {url!r}: sqlite takes no query or fragment")
    if not raw or raw.endswith("/") or raw == ":memory:":
        raise ValueError(
            f"session store URL {url!r} names no database file (use memory:// for no file)"
        )
    path = Path(raw)
    if not path.is_absolute():
        path = Path(data_dir) / path
    return SqliteSessionStore(path)


async def open_store(url: str, *, data_dir: Path) -> SessionStore:
    """Build the store `url` names and open it (connect, apply pending
    migrations).

    Raises ValueError for a malformed URL or unknown scheme (a settings
    error: INVALID_ARGUMENT-style message naming the URL and the accepted
    forms), and UnavailableError when the store cannot be reached or its
    SQLite directory cannot be created.
    """
    store = store_from_url(url, data_dir=data_dir)
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"session store directory {str(path.parent)!r} cannot be created: {exc}",
                reason="STORE_UNAVAILABLE",
                metadata={"store": "sqlite", "path": str(path)},
            ) from exc
    await store.open()
    return store
