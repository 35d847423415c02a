"""Health of the runtime's services from the health of its dependencies.

A `HealthMonitor` probes each dependency periodically (and once at start)
and sets the gRPC health status of every service that needs it:

- the session store (a cheap read): SessionService and RunService;
- the ToolExecutors (their gRPC health, optionally): RunService.

AgentService depends on nothing (the registry is in memory), so it stays
SERVING while the process runs: it suits a liveness probe, RunService a
readiness probe. The whole-server status "" is SERVING only when every
required dependency is (a dependency with no services is only watched: its
state shows in logs and metrics). Once the server drains, statuses stay
NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pilothouse.rpc.serving import RunningServer

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Dependency:
    """A dependency: `probe` raises (or times out) when it is unreachable;
    `services` are the gRPC services that cannot serve without it."""

    name: str
    probe: Probe
    services: tuple[str, ...]


class HealthMonitor:
    """Probes `dependencies` every `interval_s` (each within `timeout_s`)
    and reports the services of `server` accordingly."""

    def __init__(
        self,
        server: RunningServer,
        dependencies: Sequence[Dependency],
        *,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.server = server
        self.dependencies = list(dependencies)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        #: The last result of each dependency's probe (True: reachable).
        self.up: dict[str, bool] = {d.name: True for d in self.dependencies}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check once, then keep checking in the background."""
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # the monitor must outlive any probe bug
                log.exception("health check failed")

    async def _probe(self, dependency: Dependency) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.timeout_s):
                await dependency.probe()
        except TimeoutError:
            return False, f"no answer within {self.timeout_s:g}s"
        except Exception as exc:
            return False, getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return True, ""

    async def check(self) -> dict[str, bool]:
        """Probe every dependency now and update the health statuses;
        returns the new `up` map."""
        results = await asyncio.gather(*(self._probe(d) for d in self.dependencies))
        for dependency, (ok, why) in zip(self.dependencies, results, strict=True):
            if ok != self.up[dependency.name]:
                if ok:
                    log.info("dependency %s is reachable again", dependency.name)
                else:
                    log.warning(
                        "dependency %s is unreachable (%s): %s NOT_SERVING",
                        dependency.name, why, ", ".join(dependency.services),
                    )
            self.up[dependency.name] = ok
        if self.server.draining:
            return dict(self.up)
        down = {s for d in self.dependencies if not self.up[d.name] for s in d.services}
        for service in self.server.services:
            await self.server.set_serving(service, service not in down)
        await self.server.set_serving(
            "", all(self.up[d.name] for d in self.dependencies if d.services)
        )
        return dict(self.up)
