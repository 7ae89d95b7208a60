"""pyproject.toml agrees with the checked-in gRPC stubs and ships what a library should.

The stubs refuse, at import, a grpcio older than the grpcio-tools that generated them and a
protobuf runtime older than the protoc they came from. The dependency ranges must start at
exactly those versions: a lower floor lets pip install a runtime the stubs reject, a higher
one shuts out versions that work. Regenerating the stubs with a newer grpcio-tools makes this
test say which floors to raise.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "mixtera_core" / "server"


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{req} needs exactly one lower bound (>=)"
    return floors[0]


def _generated_versions() -> tuple[Version, Version]:
    grpc_stub = (SERVER / "mixtera_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_stub)
    pb_stub = (SERVER / "mixtera_pb2.py").read_text()
    pb_version = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        pb_stub,
    )
    assert grpc_version and pb_version, "the stubs no longer state their versions where this test looks"
    return Version(grpc_version.group(1)), Version(".".join(pb_version.groups()))


def test_grpc_and_protobuf_ranges_start_at_what_the_stubs_require():
    grpc_version, pb_version = _generated_versions()
    project = _project()
    core = {Requirement(r).name: Requirement(r) for r in project["project"]["dependencies"]}
    assert _floor(core["grpcio"]) == grpc_version
    assert _floor(core["grpcio-health-checking"]) == grpc_version
    assert _floor(core["protobuf"]) == pb_version
    # the floors' versions themselves are admitted, the next major is not
    for name, floor in (("grpcio", grpc_version), ("protobuf", pb_version)):
        assert core[name].specifier.contains(str(floor))
        assert not core[name].specifier.contains(f"{floor.major + 1}.0.0")
    # no single-minor pins (==X.Y.*) in what a library asks of its users
    pinned = [str(r) for r in core.values() if any(s.operator == "==" for s in r.specifier)]
    assert pinned == []
    # the dev extra installs exactly the generator of the checked-in stubs
    tools = [
        Requirement(r)
        for r in project["project"]["optional-dependencies"]["dev"]
        if r.startswith("grpcio-tools")
    ]
    assert [str(t.specifier) for t in tools] == [f"=={grpc_version}"]


def test_license_types_and_version_have_one_source():
    project = _project()
    assert project["project"]["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License\n")
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mixtera_core.__version__"}
    for package in ("mixtera_core", "mixtera_plugins", "integrations"):
        assert (ROOT / package / "py.typed").exists()
    data = project["tool"]["setuptools"]["package-data"]
    assert all("py.typed" in data[p] for p in ("mixtera_core", "mixtera_plugins", "mixtera_integrations"))
