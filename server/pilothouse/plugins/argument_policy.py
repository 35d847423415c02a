"""The `argument_policy` hook plugin: rules on tool calls' arguments.

Each rule names a tool (or a glob such as `"db_*"`, `"*"` for every tool)
and a JSON path (RFC 9535, e.g. `$.table`, `$.rows[*].owner`) into the
call's arguments, and says what happens when a value found there matches:
`deny` (a list of values), `deny_pattern` (a regular expression a string
value matches, searched), `ask` (values that need a human decision), or
`allow` (the only values allowed: anything else is denied). Rules are
checked in order; the first denial wins, an ask makes the call wait for
approval (`approval_required`), and a call no rule matches runs as
usual. A call whose arguments are not a JSON object is denied when a rule
names its tool. The model reads a denial as the call's error result.

```toml
[hooks]
enabled = ["argument_policy"]

[[hooks.argument_policy.rules]]
tool = "delete_records"
path = "$.table"
deny = ["users", "payments"]
reason = "those tables are never emptied by an agent"

[[hooks.argument_policy.rules]]
tool = "run_sql"
path = "$.query"
deny_pattern = '(?i)\\bdrop\\b'   # a TOML literal string: backslashes as they are

[[hooks.argument_policy.rules]]
tool = "send_email"
path = "$.to[*]"
ask = ["ceo@example.com"]
```
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonpath_rfc9535 as jsonpath
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pilothouse.runtime.hooks import Allow, Ask, Deny, Hook, ToolDecision
from pilothouse.runtime.messages import ToolCall


class Rule(BaseModel):
    """One rule (see the module docstring); `reason` replaces the default
    explanation of a denial or an ask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str = Field(min_length=1)
    path: str = "$"
    deny: tuple[Any, ...] = ()
    deny_pattern: str = ""
    ask: tuple[Any, ...] = ()
    allow: tuple[Any, ...] | None = None
    reason: str = ""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            jsonpath.compile(value)
        except jsonpath.JSONPathError as exc:
            raise ValueError(f"is not a JSON path: {exc}") from None
        return value

    @field_validator("deny_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _says_something(self) -> Rule:
        if not (self.deny or self.deny_pattern or self.ask or self.allow is not None):
            raise ValueError("a rule needs deny, deny_pattern, ask or allow")
        return self

    def applies_to(self, tool: str) -> bool:
        return fnmatch.fnmatchcase(tool, self.tool)


class PolicySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = ()


class ArgumentPolicy(Hook):
    """See the module docstring. Raises pydantic.ValidationError for bad
    settings (a bad path or pattern, a rule that says nothing)."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = PolicySettings.model_validate(dict(settings or {}))
        self._compiled = [
            (rule, jsonpath.compile(rule.path), re.compile(rule.deny_pattern) if rule.deny_pattern else None)
            for rule in self.settings.rules
        ]

    def before_tool_call(self, call: ToolCall) -> ToolDecision:
        rules = [c for c in self._compiled if c[0].applies_to(call.name)]
        if not rules:
            return Allow()
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return Deny(f"the arguments of {call.name} are not a JSON object, so the argument "
                        "policy cannot check them")
        ask: Ask | None = None
        for rule, path, pattern in rules:
            values = path.find(arguments).values()
            for value in values:
                if value in rule.deny or (pattern and isinstance(value, str) and pattern.search(value)):
                    return Deny(rule.reason or f"the argument policy does not allow {call.name} "
                                f"with {rule.path} = {json.dumps(value, ensure_ascii=False)}")
                if rule.allow is not None and value not in rule.allow:
                    return Deny(rule.reason or f"the argument policy allows {call.name} only with "
                                f"{rule.path} in {json.dumps(list(rule.allow), ensure_ascii=False)}")
                if ask is None and value in rule.ask:
                    ask = Ask(rule.reason or f"the argument policy asks for approval of {call.name} "
                              f"with {rule.path} = {json.dumps(value, ensure_ascii=False)}")
        return ask or Allow()
