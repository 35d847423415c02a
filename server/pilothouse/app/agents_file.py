"""Load agent configs from a TOML file of `[[agents]]` tables."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pilothouse.errors import InvalidArgumentError
from pilothouse.runtime.agent import AgentConfig


def read_agents_file(path: Path | None, *, text: str | None = None) -> list[AgentConfig]:
    """The agent configs in `path` (its content `text` when given, as read
    already), or in the built-in default file when None. Raises
    InvalidArgumentError naming the file and the bad field, or for two
    agents of one name."""
    if path is None:
        text = resources.files("pilothouse.app").joinpath("default_agents.toml").read_text()
        origin = "built-in default_agents.toml"
    else:
        text = path.read_text() if text is None else text
        origin = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{origin}: {exc}", reason="INVALID_AGENTS_FILE") from None
    entries = data.get("agents", [])
    if not isinstance(entries, list):
        raise InvalidArgumentError(
            f"{origin}: 'agents' must be an array of tables", reason="INVALID_AGENTS_FILE"
        )
    configs = []
    for index, entry in enumerate(entries):
        try:
            configs.append(AgentConfig.parse(entry, field_prefix=f"agents[{index}]"))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{origin}: {exc.message}", reason="INVALID_AGENTS_FILE") from None
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise InvalidArgumentError(
            f"{origin}: agents named twice: {', '.join(twice)}", reason="INVALID_AGENTS_FILE"
        )
    return configs
