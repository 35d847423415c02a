"""Listening sockets for the servers' HTTP ports (the A2A JSON-RPC port,
the web port): bound before the server starts, so an address in use is a
clear error at start-up.

The workers of `pilothouse-server --workers` share these ports: each binds
them with SO_REUSEPORT (`share_ports()`, called once at a worker's start)
and the kernel spreads new connections over them.
"""

from __future__ import annotations

import socket

_shared = False


def share_ports() -> None:
    """Bind this process's later listening sockets with SO_REUSEPORT (a
    worker of `pilothouse-server --workers`)."""
    global _shared
    _shared = True


def ports_shared() -> bool:
    """True in a worker, whose ports are shared with the other workers."""
    return _shared


def listen_socket(address: str, *, what: str, default_host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking listening TCP socket on `address` ("host:port",
    "[v6]:port"; port 0 picks a free one; an empty host is `default_host`).
    Raises OSError naming `what` ("the web port", ...) when it cannot bind."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or default_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
        sock.setblocking(False)
    except (OSError, ValueError) as exc:
        sock.close()
        raise OSError(f"cannot serve {what} on {address}: {exc}") from exc
    return sock
