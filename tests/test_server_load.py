"""mixtera-server under load and faults: real server processes, real client processes.

- 8 client processes (4 dp groups x 2 workers, spawned) stream one job concurrently to its
  end; what they received equals the local client's streams of the same spec, and every
  sample of the corpus is delivered exactly once over the whole job.
- A client process killed with SIGKILL resumes, in a new process, from the last stream
  state it wrote: nothing lost, nothing repeated.
- The server killed with SIGKILL mid-job and restarted on the same DB_DIR and port: the
  streaming client carries on through its retries, and a new client resumes from a state
  saved before the restart; both lose and repeat nothing.
- ``examples/server_example.py`` runs end to end.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl
from test_server import OPTIONS, Server
from test_streaming import WEIGHTS, doc, take

from mixtera_core import MixteraClient, Query

ROOT = Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as on separate machines


# ---------------------------------------------------------------------- client processes


def _write_json(path: str, data: Any) -> None:
    """Atomically: a process killed mid-write leaves the previous file intact."""
    with open(path + ".tmp", "w") as fh:
        json.dump(data, fh)
    os.replace(path + ".tmp", path)


def stream_to_file(
    port: int,
    job_id: str,
    dp_group: int,
    worker: int,
    out: str,
    *,
    checkpoint_every: int = 0,
    delay: float = 0.0,
    resume: str | None = None,
    barrier: Any = None,
    retries: int = 10,
) -> None:
    """One rank's client process: stream (dp_group, node 0, worker) of ``job_id`` to its end.

    Writes ``out`` = ``{"items": [[key, text], ...]}`` (what it received, in order) at the end,
    and every ``checkpoint_every`` samples ``out + ".ckpt"`` = ``{"state": stream.state_dict(),
    "items": [...so far]}``. ``resume``: a ``.ckpt`` file to continue from (``items`` are then
    only the ones after it). ``delay``: seconds per sample, a slow trainer.
    """
    client = MixteraClient.remote("127.0.0.1", port, retries=retries)
    state = None
    if resume is not None:
        with open(resume) as fh:
            state = json.load(fh)["state"]
    stream = client.stream(job_id, dp_group, 0, worker, state=state)
    if barrier is not None:
        barrier.wait(120)  # every rank starts streaming at the same moment
    items: list[list[str]] = []
    for sample in stream:
        items.append([sample.key, sample.data])
        if checkpoint_every and len(items) % checkpoint_every == 0:
            _write_json(out + ".ckpt", {"state": stream.state_dict(), "items": items})
        if delay:
            time.sleep(delay)
    _write_json(out, {"items": items})
    client.close()


_STARTED: list[multiprocessing.process.BaseProcess] = []


def _spawn(*args: Any, **kwargs: Any) -> multiprocessing.process.BaseProcess:
    p = SPAWN.Process(target=stream_to_file, args=args, kwargs=kwargs, daemon=True)
    p.start()
    _STARTED.append(p)
    return p


@pytest.fixture(autouse=True)
def _reap_clients():
    """A failing test leaves no client process behind."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.is_alive():
            p.kill()
        p.join(10)


def _join(p: multiprocessing.process.BaseProcess, timeout: float = 60) -> None:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"client process {p.pid} did not finish in {timeout}s")
    assert p.exitcode == 0, f"client process {p.pid} failed (exit code {p.exitcode})"


def _items(path: Path | str) -> list[tuple[str, str]]:
    with open(path) as fh:
        return [(k, t) for k, t in json.load(fh)["items"]]


def _wait_for_checkpoint(path: Path, at_least: int, p: multiprocessing.process.BaseProcess) -> int:
    """Wait until the client process has checkpointed ``at_least`` samples; returns how many."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.is_alive(), "the client process ended before it was killed"
        try:
            with open(path) as fh:
                n = len(json.load(fh)["items"])
        except (OSError, ValueError):
            n = 0
        if n >= at_least:
            return n
        time.sleep(0.02)
    pytest.fail(f"no checkpoint of {at_least} samples in {path} within 60s")


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("load")


@pytest.fixture(scope="module")
def corpus(base):
    """1800 samples, every text distinct ("<lang> doc <i>: ..."), in 8 zstd jsonl shards."""
    root = base / "corpus"
    rng = random.Random(1)
    for lang, n, shards in (("python", 600, 3), ("c", 300, 2), ("en", 900, 3)):
        per = n // shards
        for s in range(shards):
            write_jsonl(
                root / f"{lang}-{s}.jsonl.zst", [doc(lang, s * per + i, rng) for i in range(per)], "zst"
            )
    return root


@pytest.fixture(scope="module")
def corpus_texts(corpus, local):
    texts = [t for _, t in take(local.stream(local.execute(Query.for_job("all"), None, chunk_size=100)))]
    assert len(texts) == len(set(texts)) == 1800
    return set(texts)


@pytest.fixture(scope="module")
def server(base, corpus):
    srv = Server(base / "db", "--allowed-root", str(corpus))
    with MixteraClient.remote("127.0.0.1", srv.port) as c:
        c.register_dataset("d", corpus, parser_options=OPTIONS)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def local(base, corpus):
    """The reference: an embedded client on its own catalog of the same files."""
    c = MixteraClient.local(base / "localdb")
    c.register_dataset("d", corpus, parser_options=OPTIONS)
    yield c
    c.close()


def execute_both(port: int, local, job_id: str, **options: Any) -> str:
    with MixteraClient.remote("127.0.0.1", port) as remote:
        assert remote.execute(Query.for_job(job_id), WEIGHTS, **options) == job_id
    assert local.execute(Query.for_job(job_id), WEIGHTS, **options) == job_id
    return job_id


# ---------------------------------------------------------------------- load


def test_eight_client_processes_stream_one_job_exactly_once(server, local, corpus_texts, tmp_path):
    groups, workers = 4, 2
    job = execute_both(
        server.port,
        local,
        "load",
        chunk_size=25,
        seed=7,
        dp_groups=groups,
        num_workers=workers,
        on_exhausted="redistribute",
    )
    ranks = [(g, w) for g in range(groups) for w in range(workers)]
    barrier = SPAWN.Barrier(len(ranks))
    outs = {r: tmp_path / f"g{r[0]}w{r[1]}.json" for r in ranks}
    procs = [_spawn(server.port, job, g, w, str(outs[g, w]), barrier=barrier) for g, w in ranks]
    for p in procs:
        _join(p, 120)
    got = {r: _items(outs[r]) for r in ranks}

    # each rank received exactly its local stream; so does each group as a whole
    for g, w in ranks:
        assert got[g, w] == take(local.stream(job, g, 0, w)), (g, w)
    # every chunk went to exactly one (group, worker): over the whole job (redistribute runs every
    # component dry) each sample of the corpus arrived exactly once
    everything = [t for items in got.values() for _, t in items]
    assert len(everything) == len(set(everything)) == len(corpus_texts)
    assert set(everything) == corpus_texts
    assert all(len(got[r]) > 0 for r in ranks)

    # the server summed the delivered counts each process reported when its stream ended
    delivered = collections.Counter(k for items in got.values() for k, _ in items)
    with MixteraClient.remote("127.0.0.1", server.port) as c:
        report = c.report(job)
    assert dict(zip(report.keys, report.delivered, strict=True)) == {k: delivered[k] for k in report.keys}


# ---------------------------------------------------------------------- faults


def test_killed_client_resumes_from_its_checkpoint(server, local, tmp_path):
    job = execute_both(server.port, local, "killed-client", chunk_size=20, seed=3, dp_groups=2)
    expected = take(local.stream(job, 1, 0, 0))
    assert len(expected) > 400

    out = tmp_path / "client.json"
    ckpt = Path(str(out) + ".ckpt")
    # a slow trainer (~6 s for its ~600 samples) writes its stream state every 20 samples
    p = _spawn(server.port, job, 1, 0, str(out), checkpoint_every=20, delay=0.01)
    _wait_for_checkpoint(ckpt, 100, p)
    p.kill()  # SIGKILL: no cleanup, no final write
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert not out.exists()  # it died mid-stream
    head = _items(ckpt)
    assert 100 <= len(head) < len(expected)

    resumed = _spawn(server.port, job, 1, 0, str(out), resume=str(ckpt))
    _join(resumed)
    assert head + _items(out) == expected


def test_server_killed_mid_job_loses_and_repeats_nothing(tmp_path, corpus, local):
    db = tmp_path / "db"
    srv = Server(db, "--allowed-root", str(corpus))
    port = srv.port
    try:
        with MixteraClient.remote("127.0.0.1", port) as c:
            c.register_dataset("d", corpus, parser_options=OPTIONS)
        job = execute_both(port, local, "killed-server", chunk_size=20, seed=5, on_exhausted="stop")
        expected = take(local.stream(job))
        assert len(expected) > 1000

        # a slow client (~5 s for the whole job) streams it; its stream state is on disk every 50 samples
        out = tmp_path / "client.json"
        ckpt = Path(str(out) + ".ckpt")
        p = _spawn(port, job, 0, 0, str(out), checkpoint_every=50, delay=0.004, retries=30)
        at_kill = _wait_for_checkpoint(ckpt, 200, p)
        srv.proc.kill()  # SIGKILL: no grace period, no clean close of the catalog
        assert srv.stop() == -signal.SIGKILL
        saved = json.loads(ckpt.read_text())  # the client's last checkpoint before the restart
        assert p.is_alive()  # still streaming: it has at most 2 prefetched chunks (40 samples) left
        assert at_kill + 40 < len(expected)
        srv = Server(db, "--allowed-root", str(corpus), port=port)

        # the same client object went on through its retries: exactly the uninterrupted stream
        _join(p, 90)
        assert _items(out) == expected

        # a new client resumed from a stream state saved before the restart also continues exactly
        head = [(k, t) for k, t in saved["items"]]
        with MixteraClient.remote("127.0.0.1", port) as c:
            tail = take(c.stream(job, state=saved["state"]))
        assert head + tail == expected
    finally:
        rc = srv.stop()
    assert rc == 0


# ---------------------------------------------------------------------- the example


def test_server_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "server_example.py"), "--samples", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "registered 'code'" in out and "registered 'reference'" in out
    for group in (0, 1):
        line = next(x for x in out.splitlines() if x.startswith(f"dp_group {group}: "))
        assert line.startswith(f"dp_group {group}: 300 samples") and "language=python" in line
    assert "job server-demo: 600 samples delivered" in out
    assert "exit code 0" in out
