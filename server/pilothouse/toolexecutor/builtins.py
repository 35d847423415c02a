"""Safe built-in tools: no network, no shell, no filesystem.

Each is a plain function, usable directly; `register_builtins` puts them on
a registry. Every parameter carries an `examples` value in its schema (the
scripted test model fills arguments from ``examples[0]``).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from pilothouse import jsontext
from pilothouse.toolexecutor.registry import ToolRegistry

__all__ = [
    "BUILTIN_TOOLS",
    "calculate",
    "current_time",
    "json_query",
    "register_builtins",
    "text_stats",
]


# --- current_time --------------------------------------------------------------


def current_time(
    timezone: Annotated[str, Field(examples=["UTC", "Europe/Paris"])] = "UTC",
) -> dict[str, str]:
    """Get the current date and time in a time zone.

    Args:
        timezone: IANA time zone name, such as "UTC", "Europe/Paris" or
            "America/New_York".

    Returns:
        {"timezone", "datetime" (ISO 8601 with UTC offset, to the second),
        "weekday" (English name), "utc_offset" ("+HH:MM")}.

    Raises:
        ValueError: the time zone is unknown.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None
    now = datetime.now(zone)
    iso = now.isoformat(timespec="seconds")
    offset = now.strftime("%z")
    return {
        "timezone": timezone,
        "datetime": iso,
        "weekday": now.strftime("%A"),
        "utc_offset": f"{offset[:3]}:{offset[3:]}",
    }


# --- calculate -----------------------------------------------------------------

#: Longest accepted expression, in characters.
MAX_EXPRESSION_CHARS = 1000
#: Deepest accepted nesting of operations.
MAX_EXPRESSION_DEPTH = 60
#: Largest integer an operation may produce, in bits (about 1200 digits).
MAX_INT_BITS = 4096

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _min(*values: float) -> float:
    return min(values)


def _max(*values: float) -> float:
    return max(values)


def _round(value: float, ndigits: int | None = None) -> float:
    if ndigits is not None and not isinstance(ndigits, int):
        raise ValueError("round(x, n): n must be an integer")
    return round(value, ndigits)


# name -> (function, minimum arguments, maximum arguments or None)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (_min, 1, None),
    "max": (_max, 1, None),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: _power(a, b),
}

_ALLOWED = (
    "numbers, + - * / // % ** (unary + and - too), parentheses, the constants "
    f"{', '.join(_CONSTANTS)} and the functions {', '.join(_FUNCTIONS)}"
)


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
            raise ValueError(f"result too large: {base} ** {exponent} exceeds {MAX_INT_BITS} bits")
    result = base**exponent
    if isinstance(result, complex):
        raise ValueError("the result is not a real number")
    return result


def _check(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"result too large: more than {MAX_INT_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is not a finite number (overflow)")
    return value


def _evaluate(node: ast.AST, depth: int = 0) -> Any:
    if depth > MAX_EXPRESSION_DEPTH:
        raise ValueError(f"expression nested too deeply (more than {MAX_EXPRESSION_DEPTH} levels)")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(
                f"only numbers are allowed, got the literal {node.value!r}; allowed: {_ALLOWED}"
            )
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, depth + 1)
        right = _evaluate(node.right, depth + 1)
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _evaluate(node.operand, depth + 1)
        return _check(-operand if isinstance(node.op, ast.USub) else +operand)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise ValueError(f"{node.id} is a function: call it, as in {node.id}(x)")
        raise ValueError(f"unknown name {node.id!r}; allowed: {_ALLOWED}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            shown = ast.unparse(node.func)
            raise ValueError(f"calling {shown!r} is not allowed; allowed: {_ALLOWED}")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ValueError(f"{node.func.id}() takes plain positional arguments only")
        function, least, most = _FUNCTIONS[node.func.id]
        count = len(node.args)
        if count < least or (most is not None and count > most):
            wanted = str(least) if least == most else f"{least} to {most or 'any number of'}"
            raise ValueError(f"{node.func.id}() takes {wanted} arguments, got {count}")
        args = [_evaluate(arg, depth + 1) for arg in node.args]
        return _check(function(*args))
    if isinstance(node, ast.Attribute):
        raise ValueError(
            f"attribute access ({ast.unparse(node)}) is not allowed; allowed: {_ALLOWED}"
        )
    raise ValueError(f"unsupported syntax ({type(node).__name__}); allowed: {_ALLOWED}")


def calculate(
    expression: Annotated[str, Field(examples=["17 * 23 + 4", "sqrt(2) * 10", "2 ** 10 / 3"])],
) -> int | float:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** (and
    unary + -), parentheses, the constants pi, e and tau, and the functions
    sqrt, abs, round, min, max, floor, ceil, exp, log, log10, log2, sin, cos
    and tan (radians). Nothing else: no variables, attributes or other calls.

    The expression is parsed, never passed to eval().

    Args:
        expression: The expression, for example "(2 + 3) * 4" or "sqrt(16) + 2 ** 8".

    Returns:
        The value, an integer when every step stays integral.

    Raises:
        ValueError: the expression uses anything outside that list, is
            longer than 1000 characters, nests more than 60 levels, or
            produces an integer beyond 4096 bits or a non-finite number.
        ZeroDivisionError: division or modulo by zero.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc) or type(exc).__name__
        raise ValueError(f"not a valid expression: {detail}") from None
    try:
        return _evaluate(tree)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    except OverflowError:
        raise ValueError("result too large (numeric overflow)") from None


# --- json_query ----------------------------------------------------------------

_PATH_TOKEN = re.compile(
    r"\.?(?P<key>[^.\[\]\"]+)"  # key, after a dot or at the start
    r"|\[\s*(?P<index>-?\d+)\s*\]"  # [3] or [-1]
    r'|\[\s*"(?P<quoted>(?:[^"\\]|\\.)*)"\s*\]'  # ["key with . or ["]
)


def _parse_path(path: str) -> list[str | int]:
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    parts: list[str | int] = []
    position = 0
    while position < len(text):
        match = _PATH_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(
                f"invalid path {path!r} at character {position + 1}: expected .key, [index] "
                'or ["key"]'
            )
        if match.group("key") is not None:
            parts.append(match.group("key").strip())
        elif match.group("index") is not None:
            parts.append(int(match.group("index")))
        else:
            parts.append(json.loads(f'"{match.group("quoted")}"'))
        position = match.end()
    return parts


def _show_path(parts: list[str | int]) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a number"


def json_query(
    document: Annotated[
        str, Field(examples=['{"users": [{"name": "Ada", "langs": ["en", "fr"]}]}'])
    ],
    path: Annotated[str, Field(examples=["users[0].name", "users[0].langs[-1]"])],
) -> str:
    """Extract one value from a JSON document with a simple path.

    Args:
        document: The JSON document, as text.
        path: Dotted keys and bracketed indexes, such as "a.b[0].c"; [-1] is
            the last item, ["odd.key"] quotes a key, and "" (or "$") is the
            whole document.

    Returns:
        The value found, as JSON text.

    Raises:
        ValueError: the document is not JSON or the path is malformed.
        LookupError: a key or index along the path does not exist.
    """
    try:
        value: Any = jsontext.loads(document)
    except ValueError as exc:
        raise ValueError(f"document is not valid JSON: {exc}") from None
    parts = _parse_path(path)
    for depth, part in enumerate(parts):
        where = _show_path(parts[:depth])
        if isinstance(value, dict):
            key = str(part)
            if key not in value:
                keys = ", ".join(list(value)[:20]) + (", ..." if len(value) > 20 else "")
                raise LookupError(f"no key {key!r} at {where} (keys: {keys or 'none'})")
            value = value[key]
        elif isinstance(value, list):
            if isinstance(part, str) and not re.fullmatch(r"-?\d+", part):
                raise LookupError(f"{where} is an array: use an index like [0], not {part!r}")
            index = int(part)
            if not -len(value) <= index < len(value):
                raise LookupError(
                    f"index {index} out of range at {where} (array of {len(value)} items)"
                )
            value = value[index]
        else:
            raise LookupError(
                f"cannot look up {part!r} in {where}: it is {_kind(value)}, not an object or array"
            )
    return json.dumps(value, ensure_ascii=False)


# --- text_stats ----------------------------------------------------------------


def text_stats(
    text: Annotated[str, Field(examples=["The quick brown fox jumps over the lazy dog."])],
) -> dict[str, int]:
    """Count the characters, words and lines of a text.

    Args:
        text: The text to measure.

    Returns:
        {"characters": Unicode code points, "words": whitespace-separated
        words, "lines": lines (a final newline does not start a new one)}.
    """
    return {
        "characters": len(text),
        "words": len(text.split()),
        "lines": len(text.splitlines()),
    }


#: The built-in tools, in the order they are registered.
BUILTIN_TOOLS: tuple[Callable[..., Any], ...] = (current_time, calculate, json_query, text_stats)


def register_builtins(registry: ToolRegistry) -> None:
    """Register every built-in tool on `registry` (ValueError if a name is
    taken)."""
    for function in BUILTIN_TOOLS:
        registry.register(function)
