"""Sample a server process with py-spy and say where its CPU time goes.

py-spy attaches to the running runtime by pid (no change to the process)
and writes collapsed stacks of the thread holding the GIL only, so waiting
in epoll is not counted and native code (protobuf, JSON, cygrpc) is charged
to the Python frame that called it. Each sample is charged
to the innermost frame that belongs to a known area (SSE parsing, JSON,
protobuf, gRPC, the event log, ...), so the areas partition the CPU time;
the top functions are counted by self time.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: (area, pattern on a frame's file path), innermost match wins. Order
#: matters only between patterns that could match the same file.
AREAS: list[tuple[str, re.Pattern[str]]] = [
    ("JSON encode/decode (json)", re.compile(r"/json/")),
    ("SSE parsing (httpx-sse)", re.compile(r"/httpx_sse/")),
    ("HTTP client (httpx, httpcore, h11)", re.compile(r"/(httpx|httpcore|h11|anyio|sniffio)/")),
    ("model provider (runtime/model/openai.py)", re.compile(r"/runtime/model/openai\.py")),
    ("protobuf construction (server/convert.py)", re.compile(r"/server/convert\.py")),
    ("protobuf (google.protobuf, *_pb2)", re.compile(r"(/google/protobuf/|_pb2\.py)")),
    ("gRPC (grpc.aio, cygrpc)", re.compile(r"/grpc/")),
    ("servicers (server/services.py, rpc/)", re.compile(r"/(server/services\.py|rpc/)")),
    ("metrics interceptor (server/metrics.py)", re.compile(r"/server/metrics\.py")),
    ("event log fan-out (runtime/runs.py)", re.compile(r"/runtime/runs\.py")),
    ("agent loop (runtime/loop.py, model/builder.py)", re.compile(r"/runtime/(loop|model/builder)\.py")),
    ("runtime (runtime/runtime.py)", re.compile(r"/runtime/runtime\.py")),
    ("session store (runtime/store/)", re.compile(r"/runtime/store/")),
    ("tool client (server/tool_client.py)", re.compile(r"/server/tool_client\.py")),
    ("OpenTelemetry", re.compile(r"/opentelemetry/")),
    ("logging", re.compile(r"/logging/")),
    ("runtime types (messages, events, agent)", re.compile(r"/runtime/(messages|events|agent)\.py")),
    ("asyncio / event loop", re.compile(r"(/asyncio/|/uvloop/|selectors\.py)")),
]
OTHER = "other"

#: Groups for `--native` profiles, by the innermost (leaf) frame.
NATIVE_GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("sendmsg: a socket write per message (gRPC core, on the Python thread)", re.compile(r"^sendmsg \(")),
    ("write/eventfd_write: wake-ups of gRPC's poller", re.compile(r"^(eventfd_)?write \(")),
    ("other system calls", re.compile(r"^(syscall|epoll_wait|read|recvmsg|recv|futex|__GI_\w+) \(")),
    ("gRPC core and Cython glue (cygrpc)", re.compile(r"cygrpc")),
    ("protobuf (upb, C)", re.compile(r"_message\.abi3")),
    ("JSON (C scanner)", re.compile(r"_json\.c")),
    ("Python code (interpreting .py frames)", re.compile(r"\.py:\d+\)$|<string>|<frozen")),
    ("CPython runtime (eval loop, GC, allocator, asyncio C)",
     re.compile(r"(libpython|Python-3|python-build|\.h:\d+|_asynciomodule|\.c:\d+\))")),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass
class Profile:
    """Samples per area and per function (self time), in percent of all."""

    samples: int
    areas: list[tuple[str, float]] = field(default_factory=list)
    functions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    stacks: list[tuple[str, int]] = field(default_factory=list, repr=False)

    def share(self, *patterns: str) -> float:
        """Percent of samples whose stack matches every regex in `patterns`
        (inclusive time: the frames and everything they called)."""
        if not self.samples:
            return 0.0
        compiled = [re.compile(p) for p in patterns]
        hits = sum(n for stack, n in self.stacks if all(c.search(stack) for c in compiled))
        return hits * 100 / self.samples


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/pilothouse/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return ("pilothouse/" + tail) if marker == "/pilothouse/" else tail
    return path


def summarise_native(raw: str) -> Profile:
    """Groups of leaf frames (where the CPU actually was) of a `--native`
    profile, in percent of all samples."""
    groups: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        group = next((name for name, pattern in NATIVE_GROUPS if pattern.search(leaf)), "other native code")
        groups[group] += count
    if not total:
        return Profile(0, error="no samples")
    return Profile(total, [(name, n * 100 / total) for name, n in groups.most_common()])


def summarise(raw: str, top: int = 12) -> Profile:
    """Areas and top functions from py-spy's `--format raw` output."""
    areas: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    stacks: list[tuple[str, int]] = []
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        stacks.append((stack, count))
        frames = [_FRAME.match(f) for f in stack.split(";")]
        parsed = [(m["func"], m["file"]) for m in frames if m]
        if parsed:
            func, path = parsed[-1]
            functions[f"{func} ({_short(path)})"] += count
        area = OTHER
        for _func, path in reversed(parsed):
            hit = next((name for name, pattern in AREAS if pattern.search(path)), None)
            if hit:
                area = hit
                break
        areas[area] += count
    if not total:
        return Profile(0, error="no samples")
    percent = 100 / total
    return Profile(
        total,
        [(name, n * percent) for name, n in areas.most_common()],
        [(name, n * percent) for name, n in functions.most_common(top)],
        stacks=stacks,
    )


class Sampler:
    """py-spy sampling one process until `stop`."""

    def __init__(
        self, py_spy: Path, pid: int, output: Path, rate: int = 250, *, native: bool = False
    ) -> None:
        self.output = output
        self.native = native
        self.popen = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--gil", "--full-filenames", *(["--native"] if native else []),
             "--output", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def stop(self, top: int = 12) -> Profile:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return Profile(0, error="py-spy did not stop")
        if not self.output.is_file():
            return Profile(0, error=f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}")
        raw = self.output.read_text(errors="replace")
        return summarise_native(raw) if self.native else summarise(raw, top)
