"""The SDK is its own distribution: its wheel holds the client and the
generated stubs and nothing of the server, declares only grpcio, protobuf
and grpcio-status (rich for the CLI extra), installs alone into an empty
virtual environment, and imports without any server module.

Offline and fast: the wheel is built with this environment's hatchling and
installed with --no-deps; the dependencies' presence is checked by
`pip check`, which names exactly what the SDK declares."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(CLIENT)],
        check=True,
    )
    (built,) = out.glob("pilothouse_client-*.whl")
    return built


def test_the_wheel_holds_the_sdk_and_the_stubs_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(
            archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    packages = {n.split("/")[1] for n in names if n.startswith("pilothouse/")}
    assert packages == {"client", "v1"}
    assert "pilothouse/__init__.py" not in names  # a namespace shared with the server
    assert {"pilothouse/client/py.typed", "pilothouse/v1/py.typed"} <= set(names)
    assert "pilothouse/v1/run_service_pb2.pyi" in names
    assert "pilothouse/v1/run_service_pb2_grpc.pyi" in names
    assert "pilothouse/client/events.py" in names
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    assert sorted(r.name for r in requires if r.marker is None) == [
        "grpcio", "grpcio-status", "protobuf"]
    assert [(r.name, str(r.marker)) for r in requires if r.marker] == [("rich", 'extra == "cli"')]
    assert metadata.get_all("Provides-Extra") == ["cli"]
    assert "pilothouse = pilothouse.client.cli:main" in entry_points


def test_it_installs_alone_into_an_empty_venv_and_imports_no_server_code(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"

    def installed_names() -> set[str]:
        listed = subprocess.run(
            [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
            check=True, capture_output=True, text=True,
        ).stdout
        return {p["name"] for p in json.loads(listed)}

    empty = installed_names()  # pip (and setuptools on some Pythons)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    assert installed_names() - empty == {"pilothouse-client"}
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    missing = sorted(line.split(" requires ")[1].split(",")[0]
                     for line in check.stdout.splitlines() if " requires " in line)
    assert missing == ["grpcio", "grpcio-status", "protobuf"]

    # Import the installed SDK with its dependencies from this environment
    # but none of the server: -S skips site, so no editable path of the
    # server (or of the SDK's sources) is on sys.path.
    installed = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()
    path = [installed, ours["purelib"], ours["platlib"]]
    probe = (
        "import sys\n"
        "import pilothouse.client, pilothouse.client.cli, pilothouse.v1.run_service_pb2_grpc\n"
        "assert pilothouse.client.__file__.startswith(sys.argv[1]), pilothouse.client.__file__\n"
        "server = sorted(m for m in sys.modules if m.startswith('pilothouse.')\n"
        "                and not m.startswith(('pilothouse.client', 'pilothouse.v1')))\n"
        "assert server == [], server\n"
        "try:\n"
        "    import pilothouse.app\n"
        "except ModuleNotFoundError:\n"
        "    print('no server')\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe, installed],
        env={"PYTHONPATH": ":".join(path)}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no server"
