"""When and how long to wait before retrying a model request: shared by
every provider.

Only failures before the response body begins are retried here (a retry
after output has been yielded would repeat it); the agent loop decides
about rounds that fail mid-stream (`ModelError.mid_stream`).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

#: HTTP statuses worth retrying: request timeout, lock conflict, rate
#: limit, and every server error (529: Anthropic's "overloaded").
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def status_is_retryable(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a response with `status` may succeed when sent again: 408,
    409, 429 and 5xx, unless the server says otherwise with
    `x-should-retry: true|false` (as OpenAI's and Anthropic's APIs do)."""
    if headers is not None:
        hint = headers.get("x-should-retry")
        if hint == "true":
            return True
        if hint == "false":
            return False
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait as the server asks, from `retry-after-ms`
    (milliseconds) or `Retry-After` (seconds, possibly fractional, or an
    HTTP-date); None when neither header is usable. Never negative."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to `max_retries` retries; waits in seconds.

    Without a `Retry-After`, the wait is an exponential backoff with full
    jitter: uniform in [0, min(max_delay, base_delay * 2**attempt)]. A
    `Retry-After` / `retry-after-ms` is honoured, capped at `max_delay`.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_retries", max(0, self.max_retries))
        object.__setattr__(self, "base_delay", max(0.0, self.base_delay))
        object.__setattr__(self, "max_delay", max(0.0, self.max_delay))

    def backoff(self, attempt: int) -> float:
        """The wait before retry number `attempt + 1` (attempt counts from 0)."""
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(0.0, ceiling)

    def delay(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """The wait before the next attempt, honouring `headers`' Retry-After."""
        asked = parse_retry_after(headers) if headers is not None else None
        if asked is None:
            return self.backoff(attempt)
        return min(asked, self.max_delay)
