"""The committed Python stubs are what `make gen` writes from the protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    sources = sorted(PROTOS.glob("pilothouse/v1/*.proto"))
    assert sources, "no protos found"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *map(str, sources),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(PROTOS)
        for p in PROTOS.rglob("*")
        if p.is_file() and p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    )
    assert generated == committed, "stub files differ from the protos: run `make gen`"
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (PROTOS / p).read_bytes()]
    assert stale == [], f"stale stubs (run `make gen`): {stale}"
