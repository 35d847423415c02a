"""The bench's own environments, created on first use and reused after:

* `bench/.deps`: uvloop and py-spy, installed with `pip --target` and put on
  the PYTHONPATH of the bench's processes only, so that the project's
  `.venv` and its dependencies stay exactly as `make install` made them.
* `bench/.venv-peers`: a separate virtualenv with the peer frameworks (the
  OpenAI Agents SDK; LangGraph with langchain-openai), so they never become
  dependencies of Pilothouse. Each peer is installed on its own: one that
  cannot be installed is reported as such and the others still run.

A stamp file holding the requirements makes a second run skip the installs.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEPS = BENCH / ".deps"
PEERS_VENV = BENCH / ".venv-peers"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
BENCH_REQUIREMENTS = BENCH / "requirements-bench.txt"

#: Exact versions, so that runs compare like with like; uvloop goes with
#: every peer (they run on it, as the bench client does).
PEER_REQUIREMENTS: dict[str, list[str]] = {
    "openai-agents": ["openai-agents==0.24.0"],
    "langgraph": ["langgraph==1.2.22", "langchain-openai==1.7.3"],
}
PEER_COMMON = ["uvloop==0.23.0"]
INSTALL_TIMEOUT_S = 600


@dataclass
class Installed:
    """Whether an environment (or one peer in it) is usable, and if not why."""

    ok: bool
    detail: str = ""


def _pip(python: Path | str, args: list[str]) -> Installed:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return Installed(False, f"pip timed out after {INSTALL_TIMEOUT_S}s")
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        return Installed(False, (errors[-1] if errors else result.stderr.strip()[-300:]))
    return Installed(True)


def _stamped(stamp: Path, content: str) -> bool:
    return stamp.is_file() and stamp.read_text() == content


def ensure_deps() -> Installed:
    """uvloop and py-spy in `bench/.deps`."""
    wanted = BENCH_REQUIREMENTS.read_text()
    stamp = DEPS / ".stamp"
    if _stamped(stamp, wanted):
        return Installed(True, "cached")
    print("[bench] installing uvloop and py-spy into bench/.deps ...", flush=True)
    result = _pip(sys.executable, ["--upgrade", "--target", str(DEPS), "-r", str(BENCH_REQUIREMENTS)])
    if result.ok:
        stamp.write_text(wanted)
    return result


def ensure_peers(skip: bool = False) -> dict[str, Installed]:
    """The peers virtualenv; for each peer, whether it is installed."""
    if skip:
        return {peer: Installed(False, "skipped (--no-peers)") for peer in PEER_REQUIREMENTS}
    if not PEERS_PYTHON.exists():
        print("[bench] creating bench/.venv-peers ...", flush=True)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)],
                check=True, capture_output=True, timeout=INSTALL_TIMEOUT_S,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            reason = f"could not create bench/.venv-peers: {exc}"
            return {peer: Installed(False, reason) for peer in PEER_REQUIREMENTS}
    common_stamp = PEERS_VENV / ".stamp-common"
    if not _stamped(common_stamp, "\n".join(PEER_COMMON)):
        result = _pip(PEERS_PYTHON, PEER_COMMON)
        if result.ok:
            common_stamp.write_text("\n".join(PEER_COMMON))
    status: dict[str, Installed] = {}
    for peer, requirements in PEER_REQUIREMENTS.items():
        stamp = PEERS_VENV / f".stamp-{peer}"
        wanted = "\n".join(requirements)
        if _stamped(stamp, wanted):
            status[peer] = Installed(True, "cached")
            continue
        print(f"[bench] installing {peer} into bench/.venv-peers ...", flush=True)
        status[peer] = _pip(PEERS_PYTHON, requirements)
        if status[peer].ok:
            stamp.write_text(wanted)
    return status
