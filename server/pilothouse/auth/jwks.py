"""JSON Web Key Sets from a file or a URL, cached, and refreshed when a
token names a key id the cached set lacks, at most once per
`min_refresh_s` (so a stream of made-up key ids cannot turn into a stream
of requests to the identity provider)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from pilothouse.auth.files import WatchedFile
from pilothouse.errors import UnavailableError

log = logging.getLogger(__name__)

#: The key type (`kty`) each JWS algorithm family verifies with.
_KTY_OF_FAMILY = {"HS": "oct", "RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def key_type_for(algorithm: str) -> str | None:
    """The JWK `kty` that `algorithm` needs ("RS256" → "RSA", "EdDSA" →
    "OKP"); None for an unknown one (and for "none")."""
    return _KTY_OF_FAMILY.get(algorithm[:2])


@dataclass(frozen=True, slots=True)
class Jwk:
    """One key of a set: its raw JWK members and `kid`."""

    data: dict[str, Any]

    @property
    def kid(self) -> str | None:
        kid = self.data.get("kid")
        return kid if isinstance(kid, str) else None

    def usable_for(self, algorithm: str) -> bool:
        """Whether this key may verify `algorithm`: its `kty` is that
        algorithm's, its `alg` (when given) is that algorithm, its `use`
        (when given) is `sig`."""
        if self.data.get("kty") != key_type_for(algorithm):
            return False
        if "alg" in self.data and self.data["alg"] != algorithm:
            return False
        return self.data.get("use", "sig") == "sig"

    def key_for(self, algorithm: str) -> Any:
        """The key object PyJWT verifies `algorithm` with. Raises
        jwt.PyJWKError / InvalidKeyError for a key it cannot use."""
        return jwt.PyJWK(self.data, algorithm=algorithm).key


def parse_jwks(document: Any, where: str) -> list[Jwk]:
    """The keys of a JWKS document (`{"keys": [...]}`). Raises ValueError."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{where}: not a JWKS document (no `keys` list)")
    keys = [Jwk(k) for k in document["keys"] if isinstance(k, dict) and "kty" in k]
    if not keys:
        raise ValueError(f"{where}: the JWKS holds no key")
    return keys


def _read_jwks_file(path: Path) -> list[Jwk]:
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    return parse_jwks(document, str(path))


class JwksFile:
    """Keys from a JWKS file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path, _read_jwks_file)

    async def keys(self, refresh: bool = False) -> list[Jwk]:
        return self._file.get()


class JwksUrl:
    """Keys fetched from a JWKS URL: cached for `cache_ttl_s`, fetched
    again early (a `refresh`) at most every `min_refresh_s`. A failed fetch
    keeps the keys already known; with none known yet it raises
    UnavailableError."""

    def __init__(
        self,
        url: str,
        *,
        cache_ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.cache_ttl_s = cache_ttl_s
        self.min_refresh_s = min_refresh_s
        self._timeout = timeout_s
        self._keys: list[Jwk] | None = None
        self._fetched_at = -float("inf")
        self._attempted_at = -float("inf")
        self._forced_at = -float("inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def keys(self, refresh: bool = False) -> list[Jwk]:
        if not self._due(refresh):
            assert self._keys is not None
            return self._keys
        async with self._lock:  # one fetch at a time; the others use its result
            if self._due(refresh):
                if self._keys is not None and time.monotonic() - self._fetched_at < self.cache_ttl_s:
                    self._forced_at = time.monotonic()
                await self._fetch()
        if self._keys is None:
            raise UnavailableError(
                "credentials cannot be verified right now", reason="AUTH_UNAVAILABLE"
            )
        return self._keys

    def _due(self, refresh: bool) -> bool:
        now = time.monotonic()
        if self._keys is None:
            # Nothing known: try again, but not more often than a refresh.
            return now - self._attempted_at >= min(self.min_refresh_s, 1.0)
        if now - self._fetched_at >= self.cache_ttl_s:
            return now - self._attempted_at >= min(self.min_refresh_s, 1.0)
        # An early fetch for an unknown key id: at most one per min_refresh_s.
        return refresh and now - self._forced_at >= self.min_refresh_s

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                reply = await http.get(self.url, headers={"accept": "application/json"})
                reply.raise_for_status()
                keys = parse_jwks(reply.json(), self.url)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the JWKS from %s: %s", self.url, exc)
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("JWKS from %s: %d key(s)", self.url, len(keys))
