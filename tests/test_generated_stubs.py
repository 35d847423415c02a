"""The committed Python stubs and the SDK's typed events are what `make gen`
writes from the protos: the protobuf and gRPC modules with mypy-protobuf's
type stubs in the SDK (clients/python/pilothouse/v1), the event classes of
pilothouse.client.events, and nothing generated left beside the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
STUBS = REPO / "clients" / "python"
BIN = Path(sys.executable).parent


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    sources = sorted(PROTOS.glob("pilothouse/v1/*.proto"))
    assert sources, "no protos found"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp_path}", f"--mypy_out=quiet:{tmp_path}",
            f"--grpc_python_out={tmp_path}", f"--mypy_grpc_out=quiet:{tmp_path}",
            *map(str, sources),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(STUBS)
        for p in (STUBS / "pilothouse" / "v1").rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    )
    assert generated == committed, "stub files differ from the protos: run `make gen`"
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (STUBS / p).read_bytes()]
    assert stale == [], f"stale stubs (run `make gen`): {stale}"


def test_no_stubs_are_left_beside_the_protos() -> None:
    leftovers = [str(p.relative_to(REPO)) for p in PROTOS.rglob("*") if p.suffix in {".py", ".pyi"}]
    assert leftovers == [], "stubs live in clients/python/pilothouse/v1 (make gen)"


def test_the_sdks_typed_events_match_the_event_oneof(tmp_path: Path) -> None:
    output = tmp_path / "events.py"
    subprocess.run([sys.executable, str(STUBS / "gen_events.py"), str(output)], check=True)
    committed = STUBS / "pilothouse" / "client" / "events.py"
    assert output.read_text() == committed.read_text(), "stale typed events: run `make gen`"


def test_the_protobuf_lower_bound_is_what_the_stubs_require():
    """The stubs refuse older protobuf runtimes (ValidateProtobufRuntimeVersion):
    both distributions must not allow one."""
    import re
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    stubs = sorted((repo / "clients/python/pilothouse/v1").glob("*_pb2.py"))
    generated = {re.search(r"# Protobuf Python Version: ([\d.]+)", p.read_text()).group(1) for p in stubs}
    assert len(generated) == 1, generated
    (version,) = generated
    for pyproject in (repo / "pyproject.toml", repo / "clients/python/pyproject.toml"):
        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        bound = next(d for d in deps if d.replace(" ", "").startswith("protobuf>="))
        low = re.match(r"protobuf>=([\d.]+)", bound.replace(" ", "")).group(1)
        as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
        assert as_tuple(low) >= as_tuple(version), (pyproject, bound, version)
