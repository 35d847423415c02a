"""AIP-134 update masks: which fields of a resource an Update call takes
from its request.

A mask's paths are relative to the resource in the request. `*` replaces
every mutable field (unset ones take their defaults); an empty mask means
every mutable field the request sets (non-default, or present for fields
with presence). A path that names no mutable field is INVALID_ARGUMENT
(ErrorInfo reason INVALID_UPDATE_MASK, a BadRequest violation on
`update_mask`), never silently ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from pilothouse.errors import InvalidArgumentError
from pilothouse.v1 import agent_pb2

#: The AgentConfig fields UpdateAgent may change: all but the name.
AGENT_CONFIG_FIELDS = tuple(
    f.name for f in agent_pb2.AgentConfig.DESCRIPTOR.fields if f.name != "name"
)


def bad_mask(path: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"update_mask: {path!r} {problem}",
        reason="INVALID_UPDATE_MASK",
        field_violations=[("update_mask", f"{path!r} {problem}")],
        metadata={"path": path[:200]},
    )


def _is_set(message: Message, name: str) -> bool:
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        return len(getattr(message, name)) > 0
    if field.has_presence:
        return message.HasField(name)
    return bool(getattr(message, name))


def mask_fields(
    mask: field_mask_pb2.FieldMask, source: Message, mutable: Collection[str], *, prefix: str = ""
) -> list[str]:
    """The fields of `source` (the request's resource, or the part of it
    at `prefix`, e.g. "config.") that `mask` names, resolved as AIP-134
    says. INVALID_ARGUMENT (INVALID_UPDATE_MASK) for a path that is not
    `*`, `prefix` without its dot, or `prefix` + one of `mutable`."""
    paths = list(mask.paths)
    if not paths:
        return [name for name in mutable if _is_set(source, name)]
    if "*" in paths or (prefix and prefix.rstrip(".") in paths):
        if len(paths) > 1:
            raise bad_mask(",".join(paths), "mixes a whole-resource path with others")
        return list(mutable)
    fields: list[str] = []
    for path in paths:
        name = path[len(prefix):] if path.startswith(prefix) else ""
        if name not in mutable:
            raise bad_mask(path, "is not a field this method can change")
        if name not in fields:
            fields.append(name)
    return fields


def merge(target: Message, source: Message, fields: Iterable[str]) -> None:
    """Set each of `fields` of `target` to its value in `source` (repeated
    fields replaced, unset ones cleared)."""
    for name in fields:
        target.ClearField(name)
        field = source.DESCRIPTOR.fields_by_name[name]
        value = getattr(source, name)
        if field.is_repeated:
            getattr(target, name).extend(value)
        elif field.message_type is not None:
            if source.HasField(name):
                getattr(target, name).CopyFrom(value)
        elif not field.has_presence or source.HasField(name):
            setattr(target, name, value)


def updated_config(
    current: agent_pb2.AgentConfig, agent: agent_pb2.Agent, mask: field_mask_pb2.FieldMask
) -> agent_pb2.AgentConfig:
    """`current` with the fields `mask` names taken from `agent.config`
    (see the module docstring; "config" is the whole config)."""
    fields = mask_fields(mask, agent.config, AGENT_CONFIG_FIELDS, prefix="config.")
    result = agent_pb2.AgentConfig()
    result.CopyFrom(current)
    merge(result, agent.config, fields)
    return result
