"""Files the authenticators read (tokens, JWKS) and re-read when they
change, without a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from pilothouse.rpc.tls import file_stamp

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two looks at a watched file.
RECHECK_S = 1.0


class WatchedFile(Generic[T]):
    """`parse(path)` of a file, re-run when the file's modification time,
    size or inode changes (looked at most every RECHECK_S). The first
    parse's errors propagate (a bad file at start-up is a bad setting); a
    later one that fails is logged and the previous value kept."""

    def __init__(self, path: Path, parse: Callable[[Path], T]) -> None:
        self.path = path
        self._parse = parse
        self._stamp = file_stamp([path])
        self._value = parse(path)
        self._checked = time.monotonic()
        self._refused = None

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            stamp = file_stamp([self.path])
            if stamp != self._stamp:
                try:
                    self._value = self._parse(self.path)
                except (OSError, ValueError) as exc:
                    if stamp != self._refused:
                        self._refused = stamp
                        log.warning("%s changed but cannot be used (keeping the previous "
                                    "content): %s", self.path, exc)
                else:
                    self._stamp = stamp
                    log.info("reloaded %s", self.path)
        return self._value
