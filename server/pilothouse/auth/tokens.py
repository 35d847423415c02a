"""`tokens`: static bearer tokens from a TOML file that stores only their
SHA-256 hashes, each mapped to a principal and roles::

    [[tokens]]
    principal = "ci-bot"
    roles = ["user"]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

`python -m pilothouse.auth new-token --principal ci-bot --role user`
makes a random token and prints it with its entry; `python -m
pilothouse.auth hash-token` hashes one read from standard input. The file
is re-read when it changes (add or revoke a token without a restart).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pilothouse.auth.credentials import CallCredentials, CredentialRejected
from pilothouse.auth.files import WatchedFile
from pilothouse.auth.principal import Principal

_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    principal: str
    roles: frozenset[str]
    sha256: str


def read_tokens_file(path: Path) -> dict[str, TokenEntry]:
    """Entries by hash. Raises ValueError naming the bad entry, OSError
    when the file cannot be read."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    entries: dict[str, TokenEntry] = {}
    for index, item in enumerate(data.get("tokens", [])):
        where = f"{path}: tokens[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a table")
        digest = str(item.get("sha256", "")).lower()
        principal = item.get("principal")
        roles = item.get("roles", [])
        if not _HEX64.fullmatch(digest):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (the token's SHA-256)")
        if not isinstance(principal, str) or not principal:
            raise ValueError(f"{where}: principal must be a non-empty string")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError(f"{where}: roles must be a list of strings")
        if digest in entries:
            raise ValueError(f"{where}: the same token hash appears twice")
        entries[digest] = TokenEntry(principal, frozenset(roles), digest)
    return entries


class TokensAuthenticator:
    """Bearer tokens looked up by hash in the tokens file."""

    name = "tokens"

    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path, read_tokens_file)

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        token = call.bearer
        if token is None:
            return None
        digest = hash_token(token)
        entry = self._file.get().get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            raise CredentialRejected("unknown bearer token")
        return Principal(entry.principal, entry.roles, self.name)
