"""Start a real Pilothouse server process on the event loop the bench asks
for:

    python bench/serve.py uvloop runtime [pilothouse-server args...]
    python bench/serve.py uvloop tools [pilothouse-tools args...]

The servers' own entry points call `asyncio.run()`; installing uvloop's
event-loop policy first makes that loop a uvloop one without touching the
runtime's code or dependencies (uvloop lives in the bench's own directory).
With `asyncio`, this is exactly `python -m pilothouse.app.main`.
"""

from __future__ import annotations

import asyncio
import sys
import warnings


def main() -> None:
    loop, which, *rest = sys.argv[1:]
    if loop == "uvloop":
        import uvloop

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if which == "runtime":
        from pilothouse.app.main import main as runtime_main

        runtime_main(rest)
    elif which == "tools":
        from pilothouse.toolexecutor.main import main as tools_main

        sys.exit(tools_main(rest))
    else:
        sys.exit(f"unknown server {which!r}")


if __name__ == "__main__":
    main()
