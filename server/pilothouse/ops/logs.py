"""Logging for the server processes: text or one JSON object per line,
with the current trace and span ids on every line logged inside a span (a
run, a model round, a tool call, an RPC).

JSON lines carry `time` (RFC 3339, UTC), `level`, `logger`, `message`,
`trace_id` and `span_id` when inside a span, the `extra` fields of the
call, and `exception` with the traceback. Pilothouse logs ids, names,
counts and durations, never message contents or tool arguments.

The runtime logs one line per run end (`pilothouse.runtime.runtime`, "run
... ended: ...") with structured fields: run_id, session_id, agent,
stop_reason, iterations, input_tokens, output_tokens and duration_s.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"

#: LogRecord attributes that are not `extra` fields.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "trace_suffix"}



class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` (hex) of the current span, when there
    is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            trace_id = format(context.trace_id, "032x")
            span_id = format(context.span_id, "016x")
            record.trace_id = trace_id
            record.span_id = span_id
            record.trace_suffix = f" trace_id={trace_id} span_id={span_id}"
        else:
            record.trace_suffix = ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ).replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "trace_suffix"):
            record.trace_suffix = ""
        return super().format(record)


def configure_logging(level: str | int = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Replace the root logger's handlers with one writing `fmt` ("text" or
    "json") lines to `stream` (stderr), trace ids included."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # One line per model request is noise at INFO; runs log their own end.
    logging.getLogger("httpx").setLevel(logging.WARNING)
