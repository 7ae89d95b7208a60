"""Faults: a server killed (SIGKILL: a crash, an OOM kill) during registration and during streaming.

After a restart the catalog holds no half-registered dataset, and clients that resume from
their last checkpoint get exactly the data an uninterrupted run would have given: nothing
lost, nothing repeated, in sample and in token mode.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading

import duckdb
import pytest
from conftest import write_jsonl
from test_server import OPTIONS, Server
from test_streaming import WEIGHTS, corpus, doc, take  # noqa: F401  (module fixture reused)

from mixtera_core import MixteraClient, Query
from mixtera_core.remote import RemoteError


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Enough files that registering them takes a while: the server is killed in the middle."""
    root = tmp_path_factory.mktemp("fault-big")
    rng = random.Random(4)
    for s in range(48):
        write_jsonl(root / f"part-{s:02d}.jsonl", [doc("en", s * 2000 + i, rng) for i in range(2000)])
    return root


def catalog_rows(db) -> dict[str, int]:
    con = duckdb.connect(str(db / "catalog.duckdb"), read_only=True)
    try:
        out = {}
        for table in ("datasets", "files", "samples"):
            out[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        out["orphan files"] = con.execute(
            "SELECT count(*) FROM files WHERE dataset_id NOT IN (SELECT id FROM datasets)"
        ).fetchone()[0]
        out["orphan samples"] = con.execute(
            "SELECT count(*) FROM samples WHERE file_id NOT IN (SELECT id FROM files)"
        ).fetchone()[0]
        return out
    finally:
        con.close()


def test_killed_during_registration_leaves_no_half_dataset(tmp_path, corpus, big):  # noqa: F811
    db = tmp_path / "db"
    srv = Server(db, "--allowed-root", str(corpus), "--allowed-root", str(big))
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        c.register_dataset("small", corpus, parser_options=OPTIONS)
        started = threading.Event()

        def register() -> None:
            with contextlib.suppress(RemoteError):  # the server dies under it
                c.register_dataset("big", big, parser_options=OPTIONS, progress=lambda *a: started.set())

        t = threading.Thread(target=register)
        t.start()
        assert started.wait(60), "registration never reported progress"
        srv.stop(signal.SIGKILL)
        t.join(60)
    finally:
        c.close()
    before = catalog_rows(db)
    assert before["datasets"] == 1 and before["orphan files"] == 0 and before["orphan samples"] == 0
    assert before["samples"] == 2800  # the small dataset, whole
    srv = Server(db, "--allowed-root", str(corpus), "--allowed-root", str(big))
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        assert [d.name for d in c.list_datasets()] == ["small"]
        report = c.register_dataset("big", big, parser_options=OPTIONS)
        assert report.samples == 48 * 2000
    finally:
        c.close()
        srv.stop()


@pytest.mark.parametrize("mode", ["samples", "tokens"])
def test_killed_while_streaming_resumes_with_nothing_lost_or_repeated(tmp_path, corpus, small_bpe, mode):  # noqa: F811
    db = tmp_path / "db"
    local = MixteraClient.local(tmp_path / "reference")
    local.register_dataset("d", corpus, parser_options=OPTIONS)
    options: dict = dict(chunk_size=30, seed=9, on_exhausted="repeat", num_workers=2)
    if mode == "tokens":
        options.update(tokenizer=("hf", str(small_bpe)), seq_len=64)

    def items(stream, n):
        if mode == "samples":
            return take(stream, n)
        out = []
        for seq in stream:
            out.append((seq.tokens.tolist(), seq.key_ids.tolist()))
            if len(out) == n:
                break
        return out

    job = local.execute(Query.for_job("crash"), WEIGHTS, **options)
    reference = [items(local.stream(job, worker=w), 240) for w in range(2)]
    local.close()

    roots = ("--allowed-root", str(corpus), "--allowed-root", str(small_bpe.parent))
    srv = Server(db, *roots)
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        c.register_dataset("d", corpus, parser_options=OPTIONS)
        assert c.execute(Query.for_job("crash"), WEIGHTS, **options) == job
        streams = [c.stream(job, worker=w) for w in range(2)]
        heads = [items(s, n) for s, n in zip(streams, (100, 70), strict=True)]
        states = [s.state_dict() for s in streams]
        checkpoint = c.checkpoint(job)
        srv.stop(signal.SIGKILL)
    finally:
        c.close()
    for w in range(2):
        assert heads[w] == reference[w][: len(heads[w])]

    srv = Server(db, *roots)
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        c.restore(job, checkpoint)
        for w, state in enumerate(states):
            rest = items(c.stream(job, worker=w, state=state), 240 - len(heads[w]))
            assert heads[w] + rest == reference[w]  # nothing lost, nothing repeated
    finally:
        c.close()
        srv.stop()


def test_a_file_changed_under_a_running_server_is_refused_by_name(tmp_path, corpus):  # noqa: F811
    """Remote streams read samples through the server: it checks the file's fingerprint too."""
    import shutil

    from mixtera_core.errors import FileChangedError

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    srv = Server(tmp_path / "db", "--allowed-root", str(data))
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        c.register_dataset("d", data, parser_options=OPTIONS)
        job = c.execute(Query.for_job("changed"), WEIGHTS, chunk_size=30, seed=1)
        victim = sorted(data.iterdir())[0]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # same size, other content
        victim.write_bytes(bytes(raw))
        with pytest.raises(FileChangedError, match=victim.name):
            take(c.stream(job), 2000)
    finally:
        c.close()
        srv.stop()
