"""The audit log: one JSON line (logger `pilothouse.audit`) for every
refused call and every admin action, with the trace and span ids of the
call when it is traced.

Fields: `event` (`call.refused`, `admin.action`, `tool.refused`),
`method`, `principal`, `principal_source`, `roles`, `forwarded_by`,
`peer`, `code` (gRPC status name), `reason` (the ErrorInfo reason the
caller got), `detail` (why, for operators only: never sent to the
caller), `target` (the object acted on) and `time`, `trace_id`, `span_id`.
The lines always go to standard error as JSON, whatever
PILOTHOUSE_LOG_FORMAT says, and not through the root logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pilothouse.auth.principal import Principal
from pilothouse.ops.logs import JsonFormatter, TraceContextFilter

AUDIT_LOGGER = "pilothouse.audit"
log = logging.getLogger(AUDIT_LOGGER)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _install() -> None:
    if any(isinstance(h, _StderrHandler) for h in log.handlers):
        return
    handler = _StderrHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


_install()


def audit(event: str, principal: Principal | None = None, **fields: Any) -> None:
    """Write one audit line for `event`."""
    record: dict[str, Any] = {"event": event}
    if principal is not None:
        record["principal"] = principal.id
        record["principal_source"] = principal.source
        record["roles"] = ",".join(sorted(principal.roles))
        if principal.forwarded_by:
            record["forwarded_by"] = principal.forwarded_by
    record.update({k: v for k, v in fields.items() if v is not None and v != ""})
    log.info(event, extra=record)
