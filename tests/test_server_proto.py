"""The checked-in gRPC stubs are exactly what grpc_tools.protoc makes of mixtera.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO = "mixtera_core/server/mixtera.proto"
GENERATED = ("mixtera_pb2.py", "mixtera_pb2_grpc.py", "mixtera_pb2.pyi")


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            PROTO,
        ],
        cwd=ROOT,
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "mixtera_core" / "server" / name).read_bytes()
        checked_in = (ROOT / "mixtera_core" / "server" / name).read_bytes()
        assert fresh == checked_in, (
            f"mixtera_core/server/{name} is stale; regenerate from the repository root with "
            f"python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. {PROTO}"
        )
