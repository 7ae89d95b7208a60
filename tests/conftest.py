from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from mixtera_core import MixteraClient


def write_jsonl(path: Path, records: Iterable[Any], compression: str | None = None) -> Path:
    """Write records (dicts, or raw strings written verbatim) as one JSON line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    data = ("\n".join(lines) + "\n").encode()
    if compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    elif compression == "gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


@pytest.fixture
def client(tmp_path: Path):
    c = MixteraClient.local(tmp_path / "db")
    yield c
    c.close()
