"""Object storage: the same corpus registered from local disk and from a real S3-compatible
server (moto's standalone server on 127.0.0.1, see ``s3_server.py``) gives the same catalog
and the identical stream, in sample and token mode, resumed or not, in-process and in spawned
DataLoader workers; a changed object is refused by name; bad locations give clear errors and
leave the catalog as it was; the disk cache serves a second epoch without the store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from conftest import hetero_corpus
from s3_server import MotoServer, Proxy, free_port

from mixtera_core import MixteraClient, Query, storage
from mixtera_core.errors import DatasetLocationError, FileChangedError, MixteraError
from mixtera_core.storage import StorageError

BUCKET = "corpus"
FIELDS = {"lang": "lang"}
WEIGHTS = {"lang=python": 0.3, "lang=c": 0.2, "lang=uk": 0.2, "lang=md": 0.3}


def write_tars(root: Path, docs: list[str]) -> None:
    """Two webdataset shards of markdown-ish documents (``txt`` + ``json`` members)."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for shard, part in (("a", docs[:half]), ("b", docs[half:])):
        with tarfile.open(root / f"shard-{shard}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for i, text in enumerate(part):
                for ext, data in (("txt", text.encode()), ("json", json.dumps({"lang": "md"}).encode())):
                    info = tarfile.TarInfo(f"{shard}{i:05d}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(autouse=True)
def _own_storage_options(monkeypatch):
    """Storage options a test configures (endpoints of its own proxies) end with it."""
    monkeypatch.setattr(storage, "_OPTIONS", dict(storage._OPTIONS))
    monkeypatch.setattr(storage, "_STORED", dict(storage._STORED))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto server holding the corpus under s3://corpus/data/; its AWS variables are set for the
    module (and so for spawned workers)."""
    root = tmp_path_factory.mktemp("s3-corpus")
    corpus = hetero_corpus(root / "data", per_key=300)
    write_tars(root / "data" / "md", _markdown_docs())
    server = MotoServer()
    server.upload_tree(root / "data", BUCKET, "data")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield {"server": server, "root": root / "data", "corpus": corpus}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _markdown_docs() -> list[str]:
    """Man-page-like text of very different lengths: the stdlib's module docstrings, whole."""
    import ast
    import os as _os

    out = []
    for f in sorted(Path(_os.__file__).parent.glob("*.py"))[:150]:
        with contextlib.suppress(SyntaxError, UnicodeDecodeError):
            doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
            if doc:
                out.append(f"# {f.stem}\n\n{doc}")
    return out


def layout(base: str) -> list[tuple[str, str, str]]:
    sep = "/" if "://" in base else os.sep
    return [
        ("python", f"{base}{sep}python", "jsonl"),
        ("c", f"{base}{sep}c{sep}*.parquet", "parquet"),
        ("uk", f"{base}{sep}uk{sep}a.jsonl.gz", "jsonl"),
        ("md", f"{base}{sep}md", "webdataset"),
    ]


def register(client: Any, base: str, **kw: Any) -> None:
    for name, location, fmt in layout(base):
        options = {"lang": "json.lang"} if fmt == "webdataset" else FIELDS
        client.register_dataset(name, location, format=fmt, parser_options=options, **kw)


def text_of(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and "txt" in data:
        return data["txt"].decode() if isinstance(data["txt"], bytes) else data["txt"]
    return data["text"]


def take(stream: Any, n: int) -> list[tuple[str, str]]:
    out = []
    for item in stream:
        out.append((str(item.key), text_of(item.data)))
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory):
    """The corpus registered twice: from local disk and from s3://corpus/data."""
    local = MixteraClient.local(tmp_path_factory.mktemp("local-db"))
    remote = MixteraClient.local(tmp_path_factory.mktemp("s3-db"))
    register(local, str(s3["root"]))
    register(remote, f"s3://{BUCKET}/data")
    return local, remote


def test_same_catalog_from_disk_and_s3(pair):
    local, remote = pair
    lsets = {d.name: (d.num_files, d.num_samples, d.format) for d in local.list_datasets()}
    rsets = {d.name: (d.num_files, d.num_samples, d.format) for d in remote.list_datasets()}
    assert lsets == rsets and len(lsets) == 4
    assert local.properties() == remote.properties()
    paths = [f.path for f in remote.catalog.files().values()]
    assert all(p.startswith(f"s3://{BUCKET}/data/") for p in paths), paths
    # remote files carry the store's version (ETag) as their fingerprint
    assert all(f.fingerprint.content_hash.startswith("version:") for f in remote.catalog.files().values())


def test_identical_sample_stream_and_resume(pair):
    local, remote = pair
    streams = []
    for c in pair:
        job = c.execute(Query.for_job("samples"), WEIGHTS, chunk_size=64, seed=3, on_exhausted="repeat")
        streams.append(take(c.stream(job), 1500))
    assert streams[0] == streams[1]
    assert {k for k, _ in streams[1]} == set(WEIGHTS)
    # resume the S3 stream from a checkpoint: it continues exactly
    s = remote.stream("samples", prefetch=3)
    take(s, 700)
    resumed = remote.stream("samples", state=s.state_dict())
    assert take(resumed, 800) == streams[0][700:]


def test_identical_token_stream_and_resume(pair, small_bpe):
    out = []
    for c in pair:
        job = c.execute(
            Query.for_job("tokens"), WEIGHTS, tokenizer=("hf", str(small_bpe)), seq_len=128, chunk_size=64,
            seed=5, on_exhausted="repeat",
        )  # fmt: skip
        seqs = []
        for seq in c.stream(job):
            seqs.append(seq.tokens.copy())
            if len(seqs) == 300:
                break
        out.append(seqs)
    assert all(np.array_equal(a, b) for a, b in zip(*out, strict=True))
    remote = pair[1]
    s = remote.stream("tokens")
    for i, _ in enumerate(s):
        if i == 120:
            break
    resumed = remote.stream("tokens", state=s.state_dict())
    rest = [x.tokens.copy() for _, x in zip(range(179), resumed, strict=False)]
    assert all(np.array_equal(a, b) for a, b in zip(rest, out[0][121:], strict=True))


def test_spawned_workers_read_s3_with_the_stored_endpoint(s3, tmp_path, small_bpe):
    """The endpoint given as storage_options (not in the environment) is stored with the dataset
    and reaches spawned DataLoader workers through the job; the secrets are never stored."""
    torch = pytest.importorskip("torch")
    from mixtera_core.streaming import JobStream
    from mixtera_core.torch import MixteraDataLoader, MixteraDataset

    saved = {k: os.environ.pop(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        # the workers get the keys from the environment, as on a cluster; the endpoint only
        # through the job
        os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
        secret = "s3cr3t-never-stored"
        c = MixteraClient.local(tmp_path / "db")
        c.register_dataset(
            "python", f"s3://{BUCKET}/data/python", parser_options=FIELDS,
            storage_options={"endpoint_url": s3["server"].endpoint, "key": "testing", "secret": "testing",
                             "client_kwargs": {"aws_session_token": secret}},
        )  # fmt: skip
        job = c.job(
            c.execute(
                Query.for_job("w"),
                None,
                tokenizer=("hf", str(small_bpe)),
                seq_len=64,
                chunk_size=32,
                seed=1,
                num_workers=2,
                on_exhausted="repeat",
            )  # fmt: skip
        )
        per_worker = []
        for w in range(2):
            per_worker.append(
                [seq.tokens.copy() for _, seq in zip(range(32), JobStream(job, 0, 0, w), strict=False)]
            )
        stored = c.catalog.storage_options()
        assert stored == {f"s3://{BUCKET}": {"endpoint_url": s3["server"].endpoint, "client_kwargs": {}}}
        c.close()  # the catalog file and its log hold no secret
        assert not any(secret.encode() in p.read_bytes() for p in (tmp_path / "db").rglob("*") if p.is_file())
        storage._STORED.clear()  # only the job can tell the workers where the store is
        storage._OPTIONS.clear()
        loader = MixteraDataLoader(MixteraDataset(job), 8, num_workers=2, multiprocessing_context="spawn")
        batches = [b for _, b in zip(range(8), loader, strict=False)]
        assert len(batches) == 8
        for b, batch in enumerate(batches):
            expected = np.stack(per_worker[b % 2][(b // 2) * 8 : (b // 2 + 1) * 8])
            assert torch.equal(batch["input_ids"], torch.from_numpy(expected[:, :-1]).long())
    finally:
        os.environ.update(saved)


def test_changed_object_is_refused_by_name(s3, tmp_path):
    server = s3["server"]
    c = server.client()
    c.copy_object(
        Bucket=BUCKET, Key="mut/a.jsonl.zst", CopySource={"Bucket": BUCKET, "Key": "data/python/a.jsonl.zst"}
    )
    client = MixteraClient.local(tmp_path / "db")
    client.register_dataset("mut", f"s3://{BUCKET}/mut", parser_options=FIELDS)
    job = client.execute(Query.for_job("m"), None, chunk_size=16, seed=0)
    assert len(take(client.stream(job), 20)) == 20
    # same size, other content: only the ETag tells
    body = bytearray(c.get_object(Bucket=BUCKET, Key="mut/a.jsonl.zst")["Body"].read())
    body[-5] ^= 0xFF
    c.put_object(Bucket=BUCKET, Key="mut/a.jsonl.zst", Body=bytes(body))
    storage.reset()  # this process forgets what it has seen, as a new one would
    with pytest.raises(FileChangedError, match=rf"s3://{BUCKET}/mut/a.jsonl.zst.*version"):
        take(client.stream(job), 20)


def test_bad_locations_give_clear_errors_and_write_nothing(s3, tmp_path):
    client = MixteraClient.local(tmp_path / "db")
    client.register_dataset("ok", f"s3://{BUCKET}/data/uk", parser_options=FIELDS)
    before = [d.name for d in client.list_datasets()]
    cases = [
        ("s3://no-such-bucket/x/*.jsonl", StorageError, "bucket .*does not exist"),
        (f"s3://{BUCKET}/data/none.jsonl", StorageError, "object does not exist"),
        (f"s3://{BUCKET}/data/*.nothing", DatasetLocationError, "matches no jsonl"),
    ]
    for location, error, words in cases:
        with pytest.raises(error, match=words) as info:
            client.register_dataset("bad", location, parser_options=FIELDS)
        assert location.split("*")[0].rstrip("/") in str(info.value) or "glob" in str(info.value)
    port = free_port()  # nothing listens there
    with pytest.raises(StorageError, match="cannot reach the storage endpoint"):
        client.register_dataset(
            "bad", f"s3://{BUCKET}/data/uk", parser_options=FIELDS,
            storage_options={"endpoint_url": f"http://127.0.0.1:{port}", "connect_timeout": 0.5,
                             "config_kwargs": {"retries": {"max_attempts": 1}}},
        )  # fmt: skip
    assert [d.name for d in client.list_datasets()] == before
    client.close()
    con = duckdb.connect(str(tmp_path / "db" / "catalog.duckdb"), read_only=True)
    try:  # nothing of the failed registrations: no files, no samples
        assert con.execute("SELECT count(*) FROM files").fetchone()[0] == 1
        assert con.execute("SELECT count(DISTINCT dataset_id) FROM samples").fetchone()[0] == 1
    finally:
        con.close()


def test_access_denied(tmp_path):
    server = MotoServer(auth=True)
    try:
        client = MixteraClient.local(tmp_path / "db")
        with pytest.raises(StorageError, match="access denied.*credentials") as info:
            client.register_dataset(
                "x", "s3://locked/data", parser_options=FIELDS,
                storage_options={"endpoint_url": server.endpoint, "key": "nobody", "secret": "nothing"},
            )  # fmt: skip
        assert "s3://locked/data" in str(info.value)
        assert client.list_datasets() == []
    finally:
        server.stop()


def test_disk_cache_serves_a_second_epoch(s3, tmp_path):
    """With the disk cache on, a second process-fresh pass reads its blocks from disk: the store
    sends a fraction of the bytes, and the data is identical; the cache stays within its size."""
    proxy = Proxy(s3["server"].port)
    cache = tmp_path / "cache"
    old = (storage.IO.cache_dir, storage.IO.cache_bytes)
    try:
        client = MixteraClient.local(tmp_path / "db")
        register(client, f"s3://{BUCKET}/data", storage_options={"endpoint_url": proxy.endpoint})
        job = client.execute(
            Query.for_job("cache"), WEIGHTS, chunk_size=64, seed=2, on_exhausted="redistribute"
        )
        storage.configure_io(cache_dir=str(cache), cache_bytes=64 << 20)
        storage.reset()
        start = proxy.received
        first = take(client.stream(job), 100_000)
        cold = proxy.received - start
        storage.reset()  # a new process: nothing in memory, the disk cache stays
        start = proxy.received
        second = take(client.stream(job), 100_000)
        warm = proxy.received - start
        assert first == second and len(first) > 1000
        assert warm < cold / 10, (warm, cold)
        # bounded: a tiny limit evicts down to it
        storage.configure_io(cache_bytes=1 << 20)
        storage.evict_disk_cache()
        assert sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) <= 1 << 20
    finally:
        storage.configure_io(cache_dir=old[0], cache_bytes=old[1])
        proxy.close()


def test_storage_errors_are_mixtera_errors():
    assert issubclass(StorageError, MixteraError) and issubclass(StorageError, OSError)


def test_server_registers_and_streams_s3_under_an_allowed_prefix(s3, pair, tmp_path):
    """``--allowed-root s3://corpus/data/python``: a remote client registers and streams objects
    under it (the same stream as from local disk), and nothing else of the bucket."""
    from test_server import Server

    from mixtera_core.remote import PermissionDeniedError

    srv = Server(tmp_path / "db", "--allowed-root", f"s3://{BUCKET}/data/python")  # the env points at moto
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        report = c.register_dataset("python", f"s3://{BUCKET}/data/python/*.jsonl.zst", parser_options=FIELDS)
        assert report.files == 2 and report.samples == 300
        for outside in (
            f"s3://{BUCKET}/data/uk/a.jsonl.gz",
            f"s3://{BUCKET}/data/python/../uk/a.jsonl.gz",
            f"s3://{BUCKET}/data/pythonic/*.jsonl",
            str(s3["root"] / "python"),
        ):
            with pytest.raises(PermissionDeniedError, match="outside the server's allowed roots"):
                c.register_dataset("uk", outside, parser_options=FIELDS)
        with pytest.raises(ValueError, match="server reads object storage with its own configuration"):
            c.register_dataset(
                "x", f"s3://{BUCKET}/data/python", storage_options={"endpoint_url": "http://x"}
            )
        job = c.execute(Query.for_job("srv"), None, chunk_size=32, seed=9)
        got = take(c.stream(job), 10_000)
    finally:
        c.close()
        srv.stop()
    local = MixteraClient.local(tmp_path / "local")
    local.register_dataset("python", str(s3["root"] / "python"), parser_options=FIELDS)
    assert got == take(local.stream(local.execute(Query.for_job("srv"), None, chunk_size=32, seed=9)), 10_000)
    assert len(got) == 9 * 32  # the full chunks of 300 samples


def test_the_s3_example_runs_as_the_readme_says():
    """``python examples/s3_example.py``: its own moto server, the demo corpus uploaded,
    registered from s3:// URLs, streamed and resumed exactly."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    res = subprocess.run(
        [sys.executable, str(root / "examples" / "s3_example.py"), "--samples", "300"],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        "registered 'code'" in res.stdout and "[webdataset, s3://mixtera-demo/demo/reference]" in res.stdout
    )
    assert "continue the stream exactly: True" in res.stdout


def test_transient_failures_are_retried(s3, tmp_path):
    """Connections cut mid-request (a flaky network) during registration and streaming are
    retried: the catalog and the stream are those of an undisturbed run."""
    proxy = Proxy(s3["server"].port)
    try:
        client = MixteraClient.local(tmp_path / "db")
        proxy.cut_next = 3
        client.register_dataset(
            "python", f"s3://{BUCKET}/data/python", parser_options=FIELDS,
            storage_options={"endpoint_url": proxy.endpoint},
        )  # fmt: skip
        assert proxy.cut_next == 0  # the cuts happened
        job = client.execute(Query.for_job("flaky"), None, chunk_size=32, seed=4)
        storage.reset()
        proxy.cut_next = 4
        got = take(client.stream(job), 10_000)
        assert proxy.cut_next == 0
        ref = MixteraClient.local(tmp_path / "ref")
        ref.register_dataset("python", str(s3["root"] / "python"), parser_options=FIELDS)
        assert got == take(
            ref.stream(ref.execute(Query.for_job("flaky"), None, chunk_size=32, seed=4)), 10_000
        )
    finally:
        proxy.close()


def test_token_index_from_s3_equals_the_local_one(pair, small_bpe, tmp_path):
    """``tokenize`` reads the objects through the same range reads; a job then streams from the
    index exactly what the local index gives (jsonl.zst, jsonl.gz and parquet datasets; the
    tars hold their text in a ``txt`` member)."""
    out = []
    for c in pair:
        c.tokenize(["python", "c", "uk"], ("hf", str(small_bpe)))
        job = c.execute(
            Query.for_job("idx").select(("lang", "!=", "md")), {"lang=python": 0.5, "lang=c": 0.3, "lang=uk": 0.2},
            tokenizer=("hf", str(small_bpe)), seq_len=128, chunk_size=64, seed=2, on_exhausted="repeat",
        )  # fmt: skip
        assert c.job(job).token_index is not None
        out.append([s.tokens.copy() for _, s in zip(range(200), c.stream(job), strict=False)])
    assert len(out[0]) == 200 and all(np.array_equal(a, b) for a, b in zip(*out, strict=True))
