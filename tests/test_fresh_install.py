"""A fresh virtualenv installs the core alone and runs the quickstart without torch.

This is the README's first quickstart line, taken literally: a new venv that sees none of
this environment's packages (no ``--system-site-packages``), ``pip install -e .`` from the
package index, then ``mixtera demo``. It proves that no core dependency pulls torch in, and
that the demo (registration in three formats, a query, a two-group stream) never imports it.
About a minute with a warm pip cache, so it runs with the slow tests (CI's second step).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_installs_the_core_and_runs_the_demo_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = str(bin_dir / "python")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MIXTERA_DB")}
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-e", str(ROOT)], check=True, env=clean_env, cwd=tmp_path
    )

    # only what the venv installed is visible: torch is not, the core's dependencies are
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, sys, duckdb; "
            "print(sys.prefix != sys.base_prefix, duckdb.__file__.startswith(sys.prefix), "
            "u.find_spec('torch') is None)",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=clean_env,
    )
    assert probe.stdout.split() == ["True", "True", "True"], probe.stdout

    demo = subprocess.run(
        [str(bin_dir / "mixtera"), "demo", "--out", str(tmp_path / "demo"), "--max-samples", "40"],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    assert "registered 'code'" in out and "[jsonl]" in out and "[parquet]" in out and "[webdataset]" in out
    assert "streamed" in out and "language=python" in out and "first sample of each component" in out

    version = subprocess.run(
        [str(bin_dir / "mixtera"), "--version"], check=True, capture_output=True, text=True, env=clean_env
    )
    from mixtera_core import __version__

    assert version.stdout.strip() == f"mixtera {__version__}"
    assert sys.prefix != str(env_dir)  # the test itself ran outside the new venv
