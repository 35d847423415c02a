"""A real, throwaway PostgreSQL server for tests and the store benchmark.

`PgServer.start()` finds Debian's binaries (`initdb` on PATH, else the
newest `/usr/lib/postgresql/<version>/bin/`), `initdb`s a cluster into a new
temporary directory, starts it on a free 127.0.0.1 port with its unix
socket in that directory (fsync off: the data is thrown away), and
`stop()` stops it (immediate mode) and removes the directory. PostgreSQL
refuses to run as root: as root, every server command runs as the
`postgres` system user (created by the `postgresql` package) through
`runuser`, and the directory is handed to that user. `restart()` crashes and
restarts it (`durable=True` keeps every acknowledged commit across that).

The `pg_server` fixture (session scope) yields a running `PgServer`; a
test gets its own empty database from `await server.new_database()`. When
the binaries are missing it skips, except in CI (`CI` set), where it fails:
`.ci/run` installs them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_DB_NAMES = itertools.count(1)


def find_pg_bin() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    candidates.extend(debian)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary directory (see the module
    docstring). `dsn` connects as the superuser `postgres` (trust auth) to
    the `postgres` database; `dsn_for(name)` to another database."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        # Durable: commits reach the WAL before they return, so that a crash
        # (`restart`) loses nothing acknowledged; else fsync and
        # synchronous commit are off (fast, for tests that never crash it).
        self.durable = durable
        # Under /tmp as root: the postgres user must reach it (not /root/...).
        self.root = Path(
            tempfile.mkdtemp(prefix="pilothouse-pg-", dir="/tmp" if os.geteuid() == 0 else None)
        )
        self.data = self.root / "data"
        self.port = 0
        self._as_user: list[str] = []
        self.running = False

    # --- process control --------------------------------------------------

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{tail}"
            )
        return result

    def start(self) -> PgServer:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")  # KeyError: install Debian's postgresql
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        self.port = _free_port()
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D", str(self.data),
            "-o", options,
            "-l", str(self.root / "server.log"),
            "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self.running = True

    def restart(self) -> None:
        """Stop the server at once (every connection dropped, as in a crash)
        and start it again on the same port with the same data."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                  "-w", "stop")  # fmt: skip
        self.running = False
        self._pg_ctl_start()

    def stop(self) -> None:
        """Stop the server (immediate) and remove its directory."""
        try:
            if self.running:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- databases --------------------------------------------------------

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    async def new_database(self) -> str:
        """Create an empty database and return its DSN."""
        import asyncpg

        name = f"test_{os.getpid()}_{next(_DB_NAMES)}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn_for(name)

    def __enter__(self) -> PgServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_pg_server() -> PgServer | None:
    """A started server, or None when the binaries are missing."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    return PgServer(bin_dir).__enter__()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole test session."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        message = (
            "PostgreSQL binaries (initdb, pg_ctl, postgres) not found: apt-get install postgresql"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs it in CI)")
        pytest.skip(message)
    with PgServer(bin_dir) as server:
        yield server
