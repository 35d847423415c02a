"""Case results, the table the suite prints, and the known-open defects.

Every case ends in one verdict: `clear` (the status or outcome a client can
act on), `unclear` (UNKNOWN, INTERNAL, a wrong status code, Python text in
an error) or `crash` (a process died, or a call did not end in time), plus
the stored messages it found lost and the invalid histories (an assistant
tool call without its result). A failing case that names a defect listed
in `KNOWN_OPEN` is counted as `known` and does not fail the run; a known
case that passes is flagged, so that the entry can be removed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

#: Defects that are found by the suite and not fixed yet, by issue-12
#: number (the lead removes an entry once its fix lands).
KNOWN_OPEN: dict[int, str] = {
}

CLEAR, UNCLEAR, CRASH = "clear", "unclear", "crash"
#: What gives away an error that escaped the project's error handling.
PYTHON_TEXT = re.compile(
    r"Traceback|Exception calling application|Unexpected <class|<class '|Error\(|"
    r"RecursionError|KeyError|TypeError|AttributeError|OverflowError|UnicodeDecodeError|DecodeError"
)
#: Trailing metadata larger than this is an echo gone wrong (clients refuse
#: more than 8 KiB of metadata by default; this leaves room for headers).
MAX_TRAILER_BYTES = 6144


@dataclass
class Case:
    name: str
    verdict: str
    detail: str = ""
    lost: int = 0
    invalid: int = 0
    known: int | None = None
    #: How many tries this entry stands for (load runs are summed up).
    count: int = 1

    @property
    def failed(self) -> bool:
        return self.verdict != CLEAR or self.lost > 0 or self.invalid > 0

    @property
    def counts_as_known(self) -> bool:
        return self.failed and self.known in KNOWN_OPEN


@dataclass
class Category:
    """The cases of one category, and figures worth reporting."""

    name: str
    cases: list[Case] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def add(self, name: str, verdict: str, detail: str = "", *, lost: int = 0,
            invalid: int = 0, known: int | None = None, count: int = 1) -> Case:
        case = Case(name, verdict, detail, lost, invalid, known, count)
        self.cases.append(case)
        return case

    def status(self, name: str, error: grpc.aio.AioRpcError | None,
               expected: set[grpc.StatusCode] | None = None, *, known: int | None = None) -> Case:
        """A case judged by the status of one call (None: OK)."""
        verdict, detail = judge(error, expected)
        return self.add(name, verdict, detail, known=known)

    def finish(self) -> None:
        self.seconds = time.monotonic() - self.started

    def row(self) -> dict[str, object]:
        mine = [c for c in self.cases if not c.counts_as_known]
        known = [c for c in self.cases if c.counts_as_known]
        return {
            "category": self.name,
            "cases": sum(c.count for c in self.cases),
            "clear": sum(c.count for c in self.cases if c.verdict == CLEAR),
            "unclear": sum(c.count for c in mine if c.verdict == UNCLEAR),
            "crashes_or_hangs": sum(c.count for c in mine if c.verdict == CRASH),
            "lost_messages": sum(c.lost for c in mine),
            "invalid_histories": sum(c.invalid for c in mine),
            "known": sum(c.count for c in known),
            "known_defects": sorted({c.known for c in known if c.known is not None}),
            "seconds": round(self.seconds, 1),
        }


def judge(
    error: grpc.aio.AioRpcError | None, expected: set[grpc.StatusCode] | None = None
) -> tuple[str, str]:
    """(verdict, detail) for a call that ended with `error` (None: OK).
    `expected`: the codes that are right here (None: any clear code)."""
    if error is None:
        code, details, trailers = grpc.StatusCode.OK, "", ()
    else:
        code, details = error.code(), error.details() or ""
        trailers = error.trailing_metadata() or ()
    size = sum(len(k) + len(v) for k, v in trailers)
    detail = f"{code.name}: {details[:160]}"
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return UNCLEAR, detail
    if PYTHON_TEXT.search(details):
        return UNCLEAR, f"Python text in the error: {detail}"
    if size > MAX_TRAILER_BYTES:
        return UNCLEAR, f"{size} bytes of trailers: {detail}"
    if expected is not None and code not in expected:
        wanted = ", ".join(sorted(c.name for c in expected))
        return UNCLEAR, f"wrong code (expected {wanted}): {detail}"
    return CLEAR, detail


@dataclass
class Report:
    categories: list[Category]
    quick: bool
    started_at: str
    seconds: float
    environment: dict[str, str]

    @property
    def failures(self) -> list[tuple[str, Case]]:
        return [
            (cat.name, case)
            for cat in self.categories
            for case in cat.cases
            if case.failed and not case.counts_as_known
        ]

    @property
    def fixed_known(self) -> list[tuple[str, Case]]:
        return [
            (cat.name, case)
            for cat in self.categories
            for case in cat.cases
            if case.known in KNOWN_OPEN and not case.failed
        ]

    def table(self) -> str:
        head = ("| category | cases | clear | unclear status | crashes or hangs "
                "| stored messages lost | invalid histories | known (open defects) | seconds |")
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for cat in self.categories:
            r = cat.row()
            defects = ", ".join(f"#{d}" for d in r["known_defects"])  # type: ignore[union-attr]
            known = f"{r['known']} ({defects})" if r["known"] else "0"
            lines.append(
                f"| {r['category']} | {r['cases']} | {r['clear']} | {r['unclear']} "
                f"| {r['crashes_or_hangs']} | {r['lost_messages']} | {r['invalid_histories']} "
                f"| {known} | {r['seconds']} |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        mode = "quick" if self.quick else "full"
        env = ", ".join(f"{k} {v}" for k, v in self.environment.items())
        parts = [
            "# Fault suite results",
            "",
            f"`make faults` ({mode} run), {self.started_at}, {self.seconds:.0f} s; {env}.",
            "",
            self.table(),
            "",
        ]
        if self.failures:
            parts += ["## Failures", ""]
            parts += [f"- {cat}: {c.name}: {c.verdict} {c.detail}" for cat, c in self.failures]
            parts.append("")
        known = [(cat.name, c) for cat in self.categories for c in cat.cases if c.counts_as_known]
        if known:
            parts += ["## Known open defects", ""]
            for number, text in KNOWN_OPEN.items():
                mine = [f"{cat}: {c.name} ({c.detail})" for cat, c in known if c.known == number]
                if mine:
                    parts.append(f"- #{number} {text}:")
                    parts += [f"  - {m}" for m in mine]
            parts.append("")
        if self.fixed_known:
            parts += ["## Known defects that pass now (remove them from KNOWN_OPEN)", ""]
            parts += [f"- #{c.known}: {cat}: {c.name}" for cat, c in self.fixed_known]
            parts.append("")
        figures = [(cat.name, cat.figures) for cat in self.categories if cat.figures]
        if figures:
            parts += ["## Figures", ""]
            for name, values in figures:
                for key, value in values.items():
                    parts.append(f"- {name}: {key}: {value}")
            parts.append("")
        return "\n".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "quick": self.quick,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 1),
            "environment": self.environment,
            "known_open": KNOWN_OPEN,
            "rows": [cat.row() for cat in self.categories],
            "figures": {cat.name: cat.figures for cat in self.categories},
            # Every case; the clear ones by name only (with their count).
            "cases": {
                cat.name: [
                    asdict(c) if c.failed or c.known else {"name": c.name, "count": c.count}
                    for c in cat.cases
                ]
                for cat in self.categories
            },
        }

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "latest.md").write_text(self.markdown())
        (directory / "latest.json").write_text(json.dumps(self.to_json(), indent=1, default=str) + "\n")
