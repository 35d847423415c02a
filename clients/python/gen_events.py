"""Write `pilothouse/client/events.py`, the SDK's typed events, from the
`event` oneof of `pilothouse.v1.AgentEvent` (run by `make gen`).

One frozen dataclass per oneof member: `kind` is the member's name, the
common envelope fields come from `EventBase`, and every field of the
member's message is a typed read-only property (docstrings from the proto
comments). A new event in the proto needs only `make gen`.

    python clients/python/gen_events.py [OUTPUT]   # default: the SDK's events.py
"""

from __future__ import annotations

import keyword
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parents[1] / "protos"
EVENT_PROTO = "pilothouse/v1/event.proto"
DEFAULT_OUTPUT = HERE / "pilothouse" / "client" / "events.py"

FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    FDP.TYPE_STRING: "str", FDP.TYPE_BYTES: "bytes", FDP.TYPE_BOOL: "bool",
    FDP.TYPE_DOUBLE: "float", FDP.TYPE_FLOAT: "float",
    **{t: "int" for t in (FDP.TYPE_INT32, FDP.TYPE_INT64, FDP.TYPE_UINT32, FDP.TYPE_UINT64,
                          FDP.TYPE_SINT32, FDP.TYPE_SINT64, FDP.TYPE_FIXED32, FDP.TYPE_FIXED64,
                          FDP.TYPE_SFIXED32, FDP.TYPE_SFIXED64)},
}
#: Attributes every event has (EventBase): payload fields of these names
#: stay reachable through `.data`.
_RESERVED = {"kind", "session_id", "run_id", "sequence", "raw", "data", "time"}


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports",
             "--include_source_info", f"--descriptor_set_out={out}", EVENT_PROTO],
            check=True,
        )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _Types:
    """Where each message and enum of the descriptor set lives in Python."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, str, list[int], descriptor_pb2.FileDescriptorProto]] = {}
        self.enums: dict[str, str] = {}
        self.modules: set[str] = set()
        for file in files.file:
            module = file.name.removesuffix(".proto").replace("/", ".") + "_pb2"
            self._walk(file, module, f".{file.package}", "", file.message_type, file.enum_type, [4])

    def _walk(self, file: descriptor_pb2.FileDescriptorProto, module: str, scope: str, python: str,
              messages: Iterable[descriptor_pb2.DescriptorProto],
              enums: Iterable[descriptor_pb2.EnumDescriptorProto], path: list[int]) -> None:
        for index, message in enumerate(messages):
            name = f"{scope}.{message.name}"
            attr = f"{python}{message.name}"
            self.messages[name] = (message, f"{module}:{attr}", [*path, index], file)
            self._walk(file, module, name, f"{attr}.", message.nested_type, message.enum_type,
                       [*path, index, 3])
        for enum in enums:
            self.enums[f"{scope}.{enum.name}"] = f"{module}:{python}{enum.name}"

    def ref(self, located: str) -> str:
        module, attr = located.split(":")
        self.modules.add(module)
        return f"{module.rsplit('.', 1)[1]}.{attr}"

    def annotation(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type == FDP.TYPE_MESSAGE:
            message = self.messages[field.type_name][0]
            if message.options.map_entry:
                key, value = message.field
                return f"Mapping[{self.annotation(key)}, {self.annotation(value)}]"
            base = self.ref(self.messages[field.type_name][1])
        elif field.type == FDP.TYPE_ENUM:
            base = f"{self.ref(self.enums[field.type_name])}.ValueType"
        else:
            base = _SCALARS[field.type]
        return f"Sequence[{base}]" if field.label == FDP.LABEL_REPEATED else base


def _comment(file: descriptor_pb2.FileDescriptorProto, path: list[int]) -> str:
    for location in file.source_code_info.location:
        if list(location.path) == path:
            return " ".join(location.leading_comments.split())
    return ""


def _isort_key(name: str) -> tuple[int, str]:
    """`__all__` order as ruff's RUF022 wants it: CONSTANTS, Classes, functions."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def _tuple(items: Iterable[str]) -> str:
    quoted = [f'"{item}"' for item in items]
    return f"({quoted[0]},)" if len(quoted) == 1 else f"({', '.join(quoted)})"


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _docstring(text: str, indent: str) -> str:
    text = text.replace('"""', "'''").replace("\\", "\\\\")
    lines = textwrap.wrap(text, 92 - len(indent)) or [""]
    if len(lines) == 1:
        return f'{indent}"""{lines[0]}"""\n'
    body = "".join(f"{indent}{line}\n" for line in lines[1:])
    return f'{indent}"""{lines[0]}\n{body}{indent}"""\n'


def generate() -> str:
    files = _descriptor_set()
    types = _Types(files)
    envelope, _, envelope_path, event_file = types.messages[".pilothouse.v1.AgentEvent"]
    oneof = next(i for i, o in enumerate(envelope.oneof_decl) if o.name == "event")
    members = [(i, f) for i, f in enumerate(envelope.field)
               if f.HasField("oneof_index") and f.oneof_index == oneof]
    types.ref("pilothouse.v1.event_pb2:AgentEvent")
    classes: list[str] = []
    names: list[str] = []
    for index, member in members:
        message, located, path, file = types.messages[member.type_name]
        name = _camel(member.name)
        names.append(name)
        summary = _comment(event_file, [*envelope_path, 2, index]) or f"The `{member.name}` event."
        payload = types.ref(located)
        fields = [(j, f) for j, f in enumerate(message.field)
                  if f.name not in _RESERVED and not keyword.iskeyword(f.name)]
        out = ["@dataclass(frozen=True, slots=True)\n", f"class {name}(EventBase):\n",
               _docstring(f"{summary} (`{member.name}`; payload `{message.name}`)", "    "),
               "\n",
               f'    kind: Literal["{member.name}"] = field(default="{member.name}", init=False)\n',
               f"    __match_args__ = {_tuple(f.name for _, f in fields)}\n",
               "\n    @property\n",
               f"    def data(self) -> {payload}:\n",
               '        """The payload message."""\n',
               f"        return self.raw.{member.name}\n"]
        for j, item in fields:
            doc = _comment(file, [*path, 2, j]) or f"`{message.name}.{item.name}`."
            out += ["\n    @property\n",
                    f"    def {item.name}(self) -> {types.annotation(item)}:\n",
                    _docstring(doc, "        "),
                    f"        return self.raw.{member.name}.{item.name}\n"]
        classes.append("".join(out))
    def import_lines(first_party: bool) -> str:
        by_package: dict[str, list[str]] = {}
        for module in sorted(types.modules):
            if module.startswith("pilothouse.") == first_party:
                package, name = module.rsplit(".", 1)
                by_package.setdefault(package, []).append(name)
        return "".join(f"from {p} import {', '.join(n)}\n" for p, n in by_package.items())

    abc = ", ".join(n for n in ("Mapping", "Sequence") if any(f"{n}[" in c for c in classes))
    union = " | ".join([*names, "UnknownEvent"])
    table = "".join(f'    "{m.name}": {_camel(m.name)},\n' for _, m in members)
    exported = [*names, "EVENT_TYPES", "Event", "EventBase", "UnknownEvent", "event_from_proto"]
    exports = "".join(f'    "{n}",\n' for n in sorted(exported, key=_isort_key))
    return (
        '"""Typed run events, one class per member of the `event` oneof of\n'
        "`pilothouse.v1.AgentEvent`: `kind` is the member's name, the payload's\n"
        "fields are properties, `.data` is the payload message and `.raw` the whole\n"
        "protobuf event.\n\n"
        "    match event:\n"
        "        case TextDelta(text=text): print(text, end=\"\")\n"
        "        case ToolResult(name=name, output=output): ...\n"
        "        case Done(stop_reason=reason): ...\n\n"
        "Generated from protos/pilothouse/v1/event.proto by clients/python/gen_events.py\n"
        '(`make gen`): do not edit.\n"""\n\n'
        "from __future__ import annotations\n\n"
        + (f"from collections.abc import {abc}\n" if abc else "")
        + "from dataclasses import dataclass, field\n"
        "from typing import Literal\n\n"
        f"{import_lines(False)}\n"
        "from pilothouse.client._event_base import EventBase, UnknownEvent\n"
        f"{import_lines(True)}\n"
        f"__all__ = [\n{exports}]\n\n\n"
        + "\n\n".join(classes)
        + f"\n\n#: Any event the SDK yields.\nEvent = {union}\n\n"
        f"#: The event class of each oneof member name.\nEVENT_TYPES: dict[str, type[EventBase]] = {{\n{table}}}\n\n\n"
        "def event_from_proto(raw: event_pb2.AgentEvent) -> Event:\n"
        '    """The typed event of a protobuf `AgentEvent` (`UnknownEvent` for a\n'
        '    member this SDK does not know yet)."""\n'
        '    kind = raw.WhichOneof("event")\n'
        "    cls = EVENT_TYPES.get(kind or \"\")\n"
        "    if cls is None:\n"
        "        return UnknownEvent(raw.session_id, raw.run_id, raw.sequence, raw, kind or \"\")\n"
        "    return cls(raw.session_id, raw.run_id, raw.sequence, raw)  # type: ignore[return-value]\n"
    )


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    output.write_text(generate())


if __name__ == "__main__":
    main()
