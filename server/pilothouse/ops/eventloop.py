"""The event loop a server process runs on: uvloop where it is installed
(a dependency on CPython/Linux and macOS), else asyncio's own.

`PILOTHOUSE_EVENT_LOOP`: `auto` (default: uvloop if it imports), `uvloop`
(required: an error when it is missing) or `asyncio`. On the bench's
tool-call turn uvloop saves the runtime about 5 % of its CPU (`make
bench`, the asyncio and uvloop rows: 16.9 → 16.0 ms median over six
alternating blocks, spread ±2.5 ms on a shared 2-core machine).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
EventLoopName = Literal["auto", "uvloop", "asyncio"]


def resolve(setting: EventLoopName) -> Literal["uvloop", "asyncio"]:
    """The loop `setting` means here. ValueError when `uvloop` is asked
    for and cannot be imported."""
    if setting == "asyncio":
        return "asyncio"
    available = importlib.util.find_spec("uvloop") is not None
    if setting == "uvloop" and not available:
        raise ValueError("PILOTHOUSE_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)")
    return "uvloop" if available else "asyncio"


def run(main: Coroutine[Any, Any, T], setting: EventLoopName = "auto") -> T:
    """`asyncio.run(main)` on the loop `setting` names (see `resolve`)."""
    if resolve(setting) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """"uvloop" or "asyncio": the loop running now (in a coroutine)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
