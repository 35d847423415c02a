"""Loading the hook plugins the settings enable, from the entry-point group
`pilothouse.hooks` (see `pilothouse.runtime.hooks`).

An entry point names a factory (usually a `Hook` subclass) that is called
with the plugin's own settings (its `[hooks.NAME]` table, `{}` when there
is none) and returns the plugin. A distribution registers one in its
`pyproject.toml`:

    [project.entry-points."pilothouse.hooks"]
    my_plugin = "my_package.module:MyHook"
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pydantic

from pilothouse.runtime.hookchain import HookChain
from pilothouse.runtime.hooks import ENTRY_POINT_GROUP

log = logging.getLogger(__name__)


class PluginError(Exception):
    """An enabled plugin cannot be loaded; the message says why."""


def installed_hooks() -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of the group, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_hooks(
    names: Sequence[str],
    settings: Mapping[str, Mapping[str, Any]],
    *,
    available: Mapping[str, importlib.metadata.EntryPoint] | None = None,
) -> HookChain:
    """The chain of the plugins `names` enables, in that order, each made
    by its entry point's factory from `settings[name]`. Raises PluginError
    for a name no installed distribution registers, an entry point that
    does not load, or a factory that fails."""
    entry_points = installed_hooks() if available is None else available
    plugins: list[object] = []
    for name in names:
        entry_point = entry_points.get(name)
        if entry_point is None:
            raise PluginError(
                f"hook plugin {name!r} is not installed: no entry point {name!r} in the group "
                f"{ENTRY_POINT_GROUP!r} (installed: {_listed(entry_points)})"
            )
        try:
            factory = entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"hook plugin {name!r} ({entry_point.value}) does not load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not callable(factory):
            raise PluginError(f"hook plugin {name!r}: {entry_point.value} is not callable")
        try:
            plugin = factory(dict(settings.get(name, {})))
        except Exception as exc:
            raise PluginError(
                f"hook plugin {name!r}: its settings are refused: {_described(exc)}"
            ) from exc
        try:
            plugin.name = name
        except AttributeError:
            pass  # a plugin without a settable name is named after its class
        plugins.append(plugin)
        log.info("hook plugin %s enabled (%s)", name, entry_point.value)
    for name in sorted(set(settings) - set(names)):
        log.warning("settings for hook plugin %r, which is not enabled (PILOTHOUSE_HOOKS)", name)
    return HookChain(plugins)


def _described(exc: Exception) -> str:
    """One line: a pydantic ValidationError as `field: problem; ...`."""
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"
