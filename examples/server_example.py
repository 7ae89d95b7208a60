"""Mixtera in server mode, end to end, on loopback: ``python examples/server_example.py``.

1. builds the small demo corpus (:func:`mixtera_core.demo.build_demo_corpus`: stdlib
   sources, C headers, docstrings and reference topics in jsonl.zst, parquet and
   webdataset) in a temporary directory;
2. starts ``mixtera-server DB_DIR --port 0 --allowed-root CORPUS`` as a subprocess (run
   as ``python -m mixtera_core.server``, the same program as the ``mixtera-server``
   command) and reads the port it prints;
3. registers the corpus *over the wire* with ``MixteraClient.remote(host, port)``;
4. runs a job with a static mixture over ``language`` and two data-parallel groups, and
   streams from both groups (in a real job: one client per rank, in separate processes
   or machines that see the same files);
5. prints per group the samples per mixture key and the job's ``report`` (target vs
   delivered shares), then stops the server with SIGTERM and checks it exited with 0.

Everything happens in a temporary directory (``--keep DIR`` keeps it) and takes a few
seconds.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

from mixtera_core import MixteraClient, Query
from mixtera_core.demo import build_demo_corpus


def start_server(db_dir: str, allowed_root: str) -> tuple[subprocess.Popen[str], int]:
    """``mixtera-server DB_DIR --port 0`` on 127.0.0.1; returns the process and the port it bound."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixtera_core.server",
            db_dir,
            "--port",
            "0",
            "--allowed-root",
            allowed_root,
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if "listening on" not in line:  # e.g. "mixtera-server listening on 127.0.0.1:40123"
        proc.kill()
        raise RuntimeError(f"mixtera-server did not start (it printed {line!r})")
    return proc, int(line.rsplit(":", 1)[1])


def stop_server(proc: subprocess.Popen[str]) -> int:
    """SIGTERM: the server finishes running calls, applies acknowledged feedback, closes the catalog."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -signal.SIGKILL


def run(work_dir: str, samples_per_group: int) -> int:
    t0 = time.perf_counter()
    corpus = build_demo_corpus(os.path.join(work_dir, "corpus"), max_samples_per_domain=200)
    print(corpus.summary())

    server, port = start_server(os.path.join(work_dir, "db"), corpus.root)
    print(f"\nmixtera-server pid {server.pid} listening on 127.0.0.1:{port}")
    try:
        with MixteraClient.remote("127.0.0.1", port) as client:
            for ds in corpus.datasets.values():  # the server indexes the files; the client only names them
                report = client.register_dataset(
                    ds.name, ds.location, format=ds.format, parser="fields", parser_options=ds.parser_options
                )
                print(f"  {report} [{ds.format}]")

            # a static mixture over language (a Python without C headers has no "c" domain)
            weights = {"python": 0.4, "c": 0.2, "en": 0.4}
            present = {lang: w for lang, w in weights.items() if corpus.domain_counts.get(lang)}
            total = sum(present.values())
            mixture = {f"language={lang}": w / total for lang, w in present.items()}
            job = client.execute(
                Query.for_job("server-demo"),
                mixture,
                chunk_size=64,
                seed=0,
                dp_groups=2,
                on_exhausted="repeat",
            )
            print(f"\njob {job!r}: mixture {mixture}, 2 data-parallel groups, chunks of 64 samples")

            # one stream per data-parallel group (rank); chunks are planned by the server,
            # samples are read by the client from the files it shares with the server
            for group in range(2):
                stream = client.stream(job, dp_group=group)
                counts = collections.Counter(s.key for s in itertools.islice(stream, samples_per_group))
                shown = ", ".join(f"{key}: {n}" for key, n in sorted(counts.items()))
                print(f"dp_group {group}: {sum(counts.values())} samples ({shown})")

            print("\nreport (target vs delivered, both groups):")
            print(client.report(job))
    finally:
        rc = stop_server(server)
    print(f"\nmixtera-server stopped with SIGTERM: exit code {rc} ({time.perf_counter() - t0:.1f}s in all)")
    return 0 if rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    p.add_argument("--samples", type=int, default=1000, help="samples to stream per group (default 1000)")
    args = p.parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        return run(os.path.abspath(args.keep), args.samples)
    with tempfile.TemporaryDirectory(prefix="mixtera-server-example-") as tmp:
        return run(tmp, args.samples)


if __name__ == "__main__":
    sys.exit(main())
