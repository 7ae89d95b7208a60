"""Start-up time of the ``mixtera`` command, against importing its two native dependencies.

Every command runs in a fresh interpreter, as a user runs it. The baseline, measured in the
same run and interleaved with the commands (so that load from other processes hits all of
them alike), is ``python -c "import duckdb, pyarrow"``: the least any command that reads a
catalog has to load. ``mixtera --help`` and ``mixtera datasets`` should stay within 1.5x of it.

The catalog for ``datasets``, ``properties`` and ``jobs`` is the demo corpus (a few dozen
samples per domain, one job), built once in a temporary directory before timing starts.

The commands run with bytecode caching on, as a user's do (``PYTHONDONTWRITEBYTECODE`` is
dropped from their environment, and a warm-up run of each writes the ``.pyc`` files): with it
off, our modules would be compiled from source on every run while DuckDB's and pyarrow's
come precompiled from their wheels.

    python benchmarks/startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _mixtera() -> list[str]:
    """The installed console script next to this interpreter (what a user runs)."""
    exe = os.path.join(os.path.dirname(sys.executable), "mixtera")
    exe = exe if os.path.exists(exe) else shutil.which("mixtera") or ""
    if not exe:
        raise SystemExit("the mixtera console script is not installed (pip install -e .)")
    return [exe]


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - t0


def _loaded(db: str) -> list[str]:
    """Heavy modules a `datasets` command leaves loaded (should be none)."""
    code = (
        "import sys; from mixtera_core.cli import main; main(['--db', sys.argv[1], 'datasets']); "
        "print('loaded:', *(m for m in ('torch', 'scipy', 'grpc', 'pandas', 'webdataset') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, db], check=True, capture_output=True, text=True, env=ENV
    )
    return out.stdout.rsplit("loaded:", 1)[1].split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15, help="runs of each command (interleaved)")
    args = ap.parse_args()
    mixtera = _mixtera()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [*mixtera, "demo", "--out", tmp, "--max-samples", "20"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=ENV,
        )
        db = os.path.join(tmp, "db")
        commands = {
            "baseline: import duckdb, pyarrow": [sys.executable, "-c", "import duckdb, pyarrow"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "import mixtera_core": [sys.executable, "-c", "import mixtera_core"],
            "mixtera --help": [*mixtera, "--help"],
            "mixtera --version": [*mixtera, "--version"],
            "mixtera datasets": [*mixtera, "--db", db, "datasets"],
            "mixtera properties": [*mixtera, "--db", db, "properties"],
            "mixtera jobs": [*mixtera, "--db", db, "jobs"],
        }
        for cmd in commands.values():  # warm the file cache and write the bytecode
            _run(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                times[name].append(_run(cmd))
        loaded = _loaded(db)
    base = statistics.median(times["baseline: import duckdb, pyarrow"])
    print(f"python {sys.version.split()[0]}, {args.repeat} runs each, interleaved; wall seconds")
    width = max(len(n) for n in commands)
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:<{width}}  min {min(ts):.3f}  median {med:.3f}  max {max(ts):.3f}  ratio {med / base:.2f}x"
        )
    print(f"modules of torch/scipy/grpc/pandas/webdataset loaded by `datasets`: {loaded or 'none'}")
    print("target: mixtera --help and mixtera datasets within 1.5x of the baseline (median)")


if __name__ == "__main__":
    main()
