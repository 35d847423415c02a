"""A ToolExecutor for the fault suite, run as its own process: the reference
ToolExecutor's server and built-ins plus tools that take their time.

    python faults/faulttools.py --listen 127.0.0.1:PORT [--toolset a|b]

Toolset `a` (the default) serves the built-ins plus `sleep_ms`; toolset `b`
(the same executor "restarted with other tools") drops `text_stats` and
`sleep_ms` and adds `word_count`. Prints ``listening on PORT`` once it
serves; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio

from harness import until_signalled

from pilothouse.toolexecutor import ToolRegistry
from pilothouse.toolexecutor.builtins import register_builtins
from pilothouse.toolexecutor.service import serve_tools


def registry_for(toolset: str) -> ToolRegistry:
    builtins = ToolRegistry()
    register_builtins(builtins)
    registry = ToolRegistry()
    for tool in builtins:
        if toolset == "a" or tool.name != "text_stats":
            registry.register(
                tool.function, name=tool.name, description=tool.description,
                metadata=tool.metadata, flags=tool.flags,
            )
    if toolset == "a":

        @registry.tool
        async def sleep_ms(ms: int) -> str:
            """Wait `ms` milliseconds, then say so.

            Args:
                ms: How long to wait, in milliseconds.
            """
            await asyncio.sleep(ms / 1000)
            return f"slept {ms} ms"

    else:

        @registry.tool
        def word_count(text: str) -> int:
            """Count the words of `text`.

            Args:
                text: Any text.
            """
            return len(text.split())

    return registry


async def serve(listen: str, toolset: str) -> None:
    server = await serve_tools(registry_for(toolset), listen)
    print(f"listening on {server.port}", flush=True)
    await until_signalled()
    await server.drain(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--toolset", choices=["a", "b"], default="a")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.toolset))


if __name__ == "__main__":
    main()
