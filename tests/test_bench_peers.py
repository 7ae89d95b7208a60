"""Smoke test of benchmarks/peers.py on a tiny corpus, with the peers that need no extra package.

It checks that the harness measures and reports (CSV rows, summary, chart), that Mixtera's token
shares hold within 1% absolute over 1 M tokens, and that every checkpoint taken by the harness
resumes exactly. It asserts no timing.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("zstandard")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_quick_run_mixtera_and_loop(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--peers",
        "mixtera,loop",
        "--modes",
        "prep,single,resume",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio = peer / mixtera" in proc.stdout

    (raw,) = tmp_path.glob("peers-*[0-9].csv")
    (summary,) = tmp_path.glob("peers-*-summary.csv")
    assert list(tmp_path.glob("peers-*.png")), "no chart written"

    rows = _rows(raw)
    assert {r["peer"] for r in rows} == {"mixtera", "loop"}
    bad = [r for r in rows if r["status"] != "ok"]
    assert not bad, bad

    def value(peer: str, metric: str) -> float:
        (row,) = [r for r in rows if r["peer"] == peer and r["metric"] == metric]
        return float(row["value"])

    for peer in ("mixtera", "loop"):
        assert value(peer, "tokens_per_s") > 0
        assert value(peer, "ttfb_s") > 0
        assert value(peer, "state_bytes") > 0
        assert value(peer, "resume_exact") == 1.0, f"{peer} did not resume exactly"
        shares = [value(peer, f"share_{d}") for d in ("python", "c", "en")]
        assert sum(shares) == pytest.approx(100.0, abs=1e-6)
    # Mixtera mixes in tokens: within 1 percentage point of 50/30/20 over the first 1 M tokens
    assert value("mixtera", "fidelity_pp") <= 1.0
    assert abs(value("mixtera", "share_python") - 50.0) <= 1.0

    ratios = {
        (r["peer"], r["metric"]): r for r in _rows(summary) if r["metric"] in ("tokens_per_s", "fidelity_pp")
    }
    assert float(ratios[("mixtera", "tokens_per_s")]["ratio_median"]) == pytest.approx(1.0)
    assert float(ratios[("loop", "tokens_per_s")]["ratio_median"]) > 0
