"""TLS for every Pilothouse server and client channel, from PEM files that
are re-read when they change.

Servers (`ServerTls`) use grpcio's dynamic server credentials: grpc core
asks `ServerTls`' fetcher for the certificate configuration before each new
connection's handshake (on one of its own threads), and the fetcher answers
"unchanged" unless a file's modification time, size or inode moved. So
certificates that cert-manager or a mesh rotates (a Kubernetes Secret
volume swaps its files atomically) are served to new connections without a
restart, while established connections, and the streams on them, go on
with the certificate they were opened with. A changed pair that does not
load (half-written, key and certificate not matching) is logged and the
previous one is kept.

With a client CA file the server requires and verifies a client
certificate (mutual TLS). grpcio's Python API offers exactly two modes, no
client certificate requested or one required and verified: it cannot
request an optional one.

Clients (`ClientTls`, `ClientChannels`) verify the server against a CA file
(or the system roots), may present their own certificate, and re-open
their channels with fresh credentials when those files change (existing
calls finish on the old channel).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pilothouse.client.connection import ClientTls

log = logging.getLogger(__name__)

#: Seconds between two looks at a client's TLS files (stat calls).
CLIENT_RECHECK_S = 1.0

_Stamp = tuple[tuple[int, int, int] | None, ...]


def file_stamp(paths: Sequence[Path | None]) -> _Stamp:
    """What identifies the files' current content: (mtime_ns, size, inode)
    each, None for a missing file."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class TlsFileError(ValueError):
    """A TLS file is missing, unreadable, or its key and certificate do not
    belong together."""


def read_key_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM), checked to belong together.
    Raises TlsFileError."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = cert_file.read_bytes()
        key = key_file.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError as exc:
        raise TlsFileError(f"{cert_file}: not a PEM certificate") from exc
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFileError(f"{key_file}: not an unencrypted PEM private key") from exc
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsFileError(f"{key_file} is not the key of the certificate in {cert_file}")
    return key, chain


def read_ca(ca_file: Path) -> bytes:
    """The PEM CA bundle; raises TlsFileError when it holds no certificate."""
    from cryptography import x509

    try:
        pem = ca_file.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TlsFileError(f"{ca_file}: no PEM certificate") from exc
    return pem


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's certificate and key files and, for mutual TLS, the CA
    that client certificates must chain to."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials re-reading the files when they
        change. Raises TlsFileError when they cannot be loaded now."""
        reloader = _CertificateReloader(self)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial(),
            reloader.fetch,
            require_client_authentication=self.mutual,
        )


class _CertificateReloader:
    """The certificate-configuration fetcher grpc core calls before each
    handshake, from its own threads: cheap when nothing changed (a few
    stat calls), thread-safe, never raising."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._paths = (tls.cert_file, tls.key_file, tls.client_ca_file)
        self._lock = threading.Lock()
        self._loaded: _Stamp = ()
        self._refused: _Stamp = ()
        self.reloads = 0

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key, chain = read_key_pair(self._tls.cert_file, self._tls.key_file)
        ca = read_ca(self._tls.client_ca_file) if self._tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        stamp = file_stamp(self._paths)
        configuration = self._configuration()
        self._loaded = stamp
        return configuration

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = file_stamp(self._paths)
        if stamp == self._loaded:
            return None
        with self._lock:
            if stamp == self._loaded:
                return None
            try:
                configuration = self._configuration()
            except TlsFileError as exc:
                if stamp != self._refused:
                    self._refused = stamp
                    log.warning("TLS files changed but cannot be used (keeping the previous "
                                "certificate): %s", exc)
                return None
            except Exception:  # grpc core must never see an exception
                log.exception("reloading the TLS certificate failed")
                return None
            self._loaded = stamp
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return configuration


def open_channel(
    target: str,
    tls: ClientTls | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS with `tls`, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(
            target, options=list(options), interceptors=list(interceptors or ()) or None
        )
    return grpc.aio.secure_channel(
        target,
        tls.credentials(),
        options=[*options, *tls.options()],
        interceptors=list(interceptors or ()) or None,
    )


class ClientChannels:
    """Channels by target, opened on first use. With TLS, a change of the
    CA, certificate or key file (looked at most every CLIENT_RECHECK_S)
    re-opens the channels with the new credentials; calls already running
    get `close_grace_s` seconds on the old channel."""

    def __init__(
        self,
        tls: ClientTls | None,
        *,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        close_grace_s: float = 60.0,
    ) -> None:
        self.tls = tls
        self._options = list(options)
        self._interceptors = interceptors
        self._grace = close_grace_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stamp: _Stamp = file_stamp(tls.files()) if tls else ()
        self._checked = time.monotonic()
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, target: str) -> grpc.aio.Channel:
        """The channel to `target`. Raises TlsFileError when a new channel
        is needed and the TLS files cannot be loaded."""
        self._recheck()
        channel = self._channels.get(target)
        if channel is None:
            channel = open_channel(
                target, self.tls, options=self._options, interceptors=self._interceptors
            )
            self._channels[target] = channel
        return channel

    def _recheck(self) -> None:
        if self.tls is None:
            return
        now = time.monotonic()
        if now - self._checked < CLIENT_RECHECK_S:
            return
        self._checked = now
        stamp = file_stamp(self.tls.files())
        if stamp == self._stamp:
            return
        try:
            self.tls.credentials()
        except TlsFileError as exc:
            log.warning("client TLS files changed but cannot be used (keeping the open "
                        "channels): %s", exc)
            return
        self._stamp = stamp
        log.info("client TLS files changed: re-opening %d channel(s)", len(self._channels))
        old, self._channels = self._channels, {}
        for channel in old.values():
            task = asyncio.ensure_future(channel.close(self._grace))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


def listen_host(address: str) -> str:
    """The host part of a listen address ("host:port", "[v6]:port",
    "unix:path"); "unix" for Unix sockets."""
    if address.startswith(("unix:", "unix-abstract:")):
        return "unix"
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def is_loopback(address: str) -> bool:
    """Whether a listen address is reachable from this host only: a
    loopback IP, `localhost`, or a Unix socket. Every-interface addresses
    (0.0.0.0, [::], an empty host) and other names are not."""
    host = listen_host(address)
    if host in ("unix", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
