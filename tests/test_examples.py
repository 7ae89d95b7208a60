"""The examples run as a user would run them (shortened)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ado_tiny_trains_and_writes_csv_and_png(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "ado"
    algorithm = "ado"
    from mixtera_core.plugins import get_plugin_manager

    if "ado" not in get_plugin_manager().names("mixing_algorithm"):
        algorithm = "loss_weighted"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ado_tiny.py"),
            "--steps",
            "12",
            "--warmup",
            "4",
            "--refit-every",
            "4",
            "--algorithm",
            algorithm,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((out / "ado_tiny.csv").open()))
    assert [r["run"] for r in rows].count("static") == 12 and [r["run"] for r in rows].count("dynamic") == 12
    for r in rows:
        weights = [float(r[k]) for k in r if k.startswith("w_")]
        assert abs(sum(weights) - 1) < 1e-6
    assert (out / "ado_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dynamic: step 12" in res.stdout
