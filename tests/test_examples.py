"""The examples run as a user would run them (shortened)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# examples/ado_tiny.py shortened for CI (its defaults: 300 steps, warmup 60, refit every 30;
# about a minute on 2 cores): ADO starts at step 40, and with chunks of one to two steps and a
# feedback delay of 12 chunks its first change lands around step 60, leaving 60 steps to move.
ADO_TINY_STEPS = 120
ADO_TINY_WARMUP = 40


def _floats(row: dict[str, str], prefix: str) -> dict[str, float]:
    """The columns starting with ``prefix``, by domain; an empty loss (domain absent) is NaN."""
    return {k[len(prefix) :]: float(v) if v else float("nan") for k, v in row.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_ado_tiny_moves_the_weights_and_changes_the_losses(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("matplotlib")
    out = tmp_path / "ado"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ado_tiny.py"),
            "--steps",
            str(ADO_TINY_STEPS),
            "--warmup",
            str(ADO_TINY_WARMUP),
            "--refit-every",
            "20",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "ado_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "ado_tiny.csv").open()))
    static = [r for r in rows if r["run"] == "static"]
    dynamic = [r for r in rows if r["run"] == "dynamic"]
    assert [int(r["step"]) for r in static] == list(range(1, ADO_TINY_STEPS + 1))
    assert [int(r["step"]) for r in dynamic] == list(range(1, ADO_TINY_STEPS + 1))
    domains = sorted(_floats(rows[0], "w_"))
    assert domains == ["language=c", "language=en", "language=python"]
    for run in (static, dynamic):
        chunks = [int(r["chunk"]) for r in run]
        assert chunks == sorted(chunks)  # the weights are looked up at the batches' chunks
        for r in run:
            assert sum(_floats(r, "w_").values()) == pytest.approx(1.0)

    # the static run: the initial mixture at every step
    for r in static:
        assert _floats(r, "w_") == pytest.approx({d: 1 / 3 for d in domains})

    # the dynamic run: uniform until ADO's first update can land (not before its warm-up), then
    # ADO moves the weights, more than once and by more than noise
    weights = [_floats(r, "w_") for r in dynamic]
    moved = [i for i, w in enumerate(weights) if w != pytest.approx(weights[0], abs=1e-9)]
    assert moved, "ADO never changed the weights"
    first = moved[0]
    assert first >= ADO_TINY_WARMUP, f"a change at step {first + 1}, before ADO's warm-up ended"
    assert max(abs(w[d] - 1 / 3) for w in weights for d in domains) > 0.05
    assert len({tuple(round(w[d], 6) for d in domains) for w in weights}) >= 5
    assert "dynamic: 0 mixture changes" not in res.stdout

    # same model, same data until the first change: identical rows (chunks, tokens, losses); then
    # the losses part
    for s, d in zip(static[:first], dynamic[:first], strict=True):
        assert {k: v for k, v in s.items() if k != "run"} == {k: v for k, v in d.items() if k != "run"}
    for domain in domains:
        after = [
            (float(s[f"loss_{domain}"]), float(d[f"loss_{domain}"]))
            for s, d in zip(static[first:], dynamic[first:], strict=True)
            if s[f"loss_{domain}"] and d[f"loss_{domain}"]
        ]
        assert after and max(abs(a - b) for a, b in after) > 1e-3, domain
    assert "dynamic: weights at step 1: python 0.33, c 0.33, en 0.33" in res.stdout
