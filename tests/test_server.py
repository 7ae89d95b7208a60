"""mixtera-server over gRPC: a real server process on loopback, the remote client against the local one.

One module-scoped server (token, allowed roots, a small request limit) serves most tests;
TLS and the restart test start their own.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import write_jsonl
from test_streaming import WEIGHTS, doc, take

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import DatasetExistsError, UnknownDatasetError
from mixtera_core.job import JobError, make_spec
from mixtera_core.mixture import DynamicMixture
from mixtera_core.remote import (
    AuthenticationError,
    InvalidArgumentError,
    PermissionDeniedError,
    RemoteError,
    RemoteMixteraClient,
)
from mixtera_core.server import mixtera_pb2 as pb
from mixtera_core.server import mixtera_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"
OPTIONS = {"language": "meta.language", "license": "meta.license"}
StatusCode = grpc.StatusCode


class Server:
    """``python -m mixtera_core.server DB_DIR ...`` in a subprocess; ``port`` is the one it printed."""

    def __init__(self, db: Path, *args: str, port: int = 0, cwd: Path | None = None) -> None:
        self.log = db.parent / f"{db.name}-server.log"
        self._log = open(self.log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mixtera_core.server", str(db), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("srv")


@pytest.fixture(scope="module")
def corpus(base):
    root = base / "corpus"
    rng = random.Random(0)
    for lang, n, shards in (("python", 900, 3), ("c", 400, 2), ("en", 1500, 3)):
        per = n // shards
        for s in range(shards):
            write_jsonl(
                root / f"{lang}-{s}.jsonl.zst", [doc(lang, s * per + i, rng) for i in range(per)], "zst"
            )
    return root


@pytest.fixture(scope="module")
def outside():
    """A directory outside every allowed root (and outside pytest's base temp)."""
    d = Path(tempfile.mkdtemp(prefix="mixtera-outside-"))
    write_jsonl(d / "secret.jsonl", [{"text": "secret", "meta": {"language": "x"}}])
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(base, outside):
    d = base / "sandbox"
    write_jsonl(d / "ok.jsonl", [{"text": "ok", "meta": {"language": "ok"}}])
    os.symlink(outside / "secret.jsonl", d / "link.jsonl")
    os.symlink(outside, d / "linkdir")
    return d


@pytest.fixture(scope="module")
def server(base, corpus, sandbox, request):
    token_file = base / "token"
    token_file.write_text(f"  {TOKEN}\n")
    roots = ["--allowed-root", str(corpus), "--allowed-root", str(sandbox)]
    if importlib.util.find_spec("tokenizers") is not None:  # token-mode test: the tokenizer file
        roots += ["--allowed-root", str(request.getfixturevalue("small_bpe").parent)]
    (base / "cwd").mkdir()
    srv = Server(
        base / "db", "--token-file", str(token_file), *roots, "--max-message-mb", "4", cwd=base / "cwd"
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def rc(server, corpus):
    c = RemoteMixteraClient("127.0.0.1", server.port, TOKEN)
    c.register_dataset("d", corpus, parser_options=OPTIONS)
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(base, corpus):
    c = MixteraClient.local(base / "localdb")
    c.register_dataset("d", corpus, parser_options=OPTIONS)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.MixteraStub(channel)
    channel.close()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if not hasattr(result, "ByteSize"):  # a server stream: drain it
            list(result)
    return info.value.code()


def both(remote, local, job_args, job_kwargs):
    assert remote.execute(*job_args, **job_kwargs) == local.execute(*job_args, **job_kwargs)
    return job_args[0].job_id


# ---------------------------------------------------------------------- catalog


def test_catalog_calls_over_the_wire(rc, local, corpus):
    assert rc.list_datasets() == local.list_datasets()
    assert rc.properties() == local.properties()
    q = Query.for_job("explain")
    assert rc.explain(q, properties=["language"]) == local.explain(q, properties=["language"])
    with_mix = rc.explain(q, WEIGHTS, samples=10_000, per_step=100)
    assert with_mix == local.explain(q, WEIGHTS, samples=10_000, per_step=100)
    assert with_mix.components[0].weight is not None
    assert rc.peek(q, 2, properties=["language"]) == local.peek(q, 2, properties=["language"])

    seen = []
    report = rc.register_dataset(
        "extra", corpus / "c-0.jsonl.zst", parser_options=OPTIONS, progress=lambda *a: seen.append(a)
    )
    assert (report.files, report.samples) == (1, 200) and seen[-1][1:] == (1, 1)
    assert [d.name for d in rc.list_datasets()] == ["d", "extra"]
    with pytest.raises(DatasetExistsError) as info:
        rc.register_dataset("extra", corpus / "c-0.jsonl.zst", parser_options=OPTIONS)
    assert info.value.grpc_code == StatusCode.ALREADY_EXISTS
    rc.remove_dataset("extra")
    assert [d.name for d in rc.list_datasets()] == ["d"]
    with pytest.raises(UnknownDatasetError) as info:
        rc.remove_dataset("extra")
    assert info.value.grpc_code == StatusCode.NOT_FOUND


# ---------------------------------------------------------------------- streams


def test_remote_streams_equal_local_streams(rc, local):
    job = both(
        rc,
        local,
        (Query.for_job("same"), WEIGHTS),
        dict(chunk_size=50, seed=1, dp_groups=2, num_workers=2, on_exhausted="repeat"),
    )
    for g in range(2):
        for w in range(2):
            assert take(rc.stream(job, g, 0, w), 300) == take(local.stream(job, g, 0, w), 300)
    full = take(local.stream(job, 1, 0, 1), 237)
    s = rc.stream(job, 1, 0, 1)
    assert take(s, 137) == full[:137]
    resumed = rc.stream(job, 1, 0, 1, state=s.state_dict())
    assert take(resumed, 100) == full[137:]


def test_token_mode_remote_equals_local(rc, local, small_bpe):
    job = both(
        rc,
        local,
        (Query.for_job("tok"), WEIGHTS),
        dict(
            chunk_size=40,
            on_exhausted="repeat",
            tokenizer=("hf", str(small_bpe)),
            seq_len=64,
            token_estimate_samples=64,
        ),
    )
    remote = [next(it) for it in [iter(rc.stream(job))] for _ in range(40)]
    ref = [next(it) for it in [iter(local.stream(job))] for _ in range(40)]
    for a, b in zip(remote, ref, strict=True):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.key_ids, b.key_ids)


def test_ship_samples_gives_the_same_stream(server, rc, local):
    job = both(rc, local, (Query.for_job("ship"), WEIGHTS), dict(chunk_size=30, on_exhausted="repeat"))
    with MixteraClient.remote("127.0.0.1", server.port, TOKEN, ship_samples=True) as shipped:
        assert take(shipped.stream(job), 200) == take(local.stream(job), 200)
        records = take(shipped.stream(job, output="record"), 40)
        assert records == take(local.stream(job, output="record"), 40)
        assert isinstance(records[0][1], dict) and "meta" in records[0][1]


def test_feedback_over_the_wire(rc, local):
    dyn = DynamicMixture(
        {"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}, "loss_weighted", prior_mix=0.0
    )
    job = both(rc, local, (Query.for_job("dyn"), dyn), dict(chunk_size=50, on_exhausted="repeat"))
    s = rc.stream(job, prefetch=1)
    take(s, 50)
    start = time.perf_counter()
    rc.feedback(job, step=1, losses=[1.0, 30.0, 1.0], counts=[10, 10, 10], position=0)
    assert time.perf_counter() - start < 1.0  # acknowledged, applied in the background
    ck = rc.checkpoint(job)  # reads its own writes: waits for the acknowledged feedback
    assert len(ck["log"]) == 2 and ck["changes"][-1]["step"] == 1 and ck["algorithm"]["updates"] == 1
    rc.report_step(job, 2, position=1000)  # no more feedback: the mixture is decided far ahead
    later = collections.Counter(k for k, _ in take(s, 1000)[-500:])
    assert later["language=c"] > 350
    # applied in the order sent: the algorithm ends where the same sequence leaves it locally
    steps = [(step, [1.0 + step, 30.0 - step, 2.0], [10, 10, 10]) for step in range(2, 7)]
    for step, losses, counts in steps:
        rc.feedback(job, step, losses, counts)
    local.feedback(job, 1, [1.0, 30.0, 1.0], [10, 10, 10], position=0)
    for step, losses, counts in steps:
        local.feedback(job, step, losses, counts)
    assert rc.checkpoint(job)["algorithm"] == local.checkpoint(job)["algorithm"]
    assert rc.job_status(job)["feedback_errors"] == []

    static = both(rc, local, (Query.for_job("static-fb"), WEIGHTS), dict(chunk_size=10))
    with pytest.raises(JobError, match="no dynamic mixture") as info:
        rc.feedback(static, 1, [1.0, 1.0, 1.0], [1, 1, 1])
    assert info.value.grpc_code == StatusCode.FAILED_PRECONDITION
    with pytest.raises(InvalidArgumentError, match="one loss and one count per key"):
        rc.feedback(job, 9, [1.0], [1])


def test_feedback_with_positions_gives_the_same_stream_remote_and_local(rc, local):
    """Changes placed at position + 1 + feedback_delay: the remote run (central planner, gRPC
    prefetch) and the local run (planner replica) make the same changes at the same chunks."""
    dyn = DynamicMixture(
        {"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}, "loss_weighted", prior_mix=0.0
    )
    kwargs = dict(chunk_size=20, on_exhausted="repeat", feedback_delay=8)
    job = both(rc, local, (Query.for_job("dyn-pos"), dyn), kwargs)
    runs, changes = [], []
    for client in (rc, local):
        stream, items = client.stream(job, prefetch=2), []
        for step in range(1, 9):
            position = -1
            for item in stream:
                items.append((item.key, item.data))
                position = max(position, item.chunk)
                if len(items) % 20 == 0:
                    break
            losses = [1.0 + step, 20.0 - 2 * step, 3.0]
            client.feedback(job, step, losses, [10, 10, 10], position=position)
        client.report_step(job, 9, position=16)  # no more feedback: decide the next chunks
        items += take(stream, 200)
        runs.append(items)
        changes.append(client.checkpoint(job)["changes"])
    assert runs[0] == runs[1]
    assert changes[0] == changes[1] and len(changes[0]) == 8
    assert all(c["chunk"] == c["position"] + 9 and "late" not in c for c in changes[0])


def test_checkpoint_restore_and_report(server, rc, local):
    job = both(rc, local, (Query.for_job("ck"), WEIGHTS), dict(chunk_size=25, on_exhausted="repeat"))
    full = take(local.stream(job), 200)
    s = rc.stream(job)
    assert take(s, 130) == full[:130]
    state, job_state = s.state_dict(), rc.checkpoint(job)
    local_state = local.checkpoint(job)
    assert job_state["spec"] == local_state["spec"] and job_state["log"] == local_state["log"]
    rc.restore(job, job_state)
    resumed = rc.stream(job, state=state)
    assert take(resumed, 70) == full[130:]
    report = rc.report(job)  # sends this client's delivered counts first
    assert sum(report.delivered) == 200 and report.keys == local.report(job).keys
    with pytest.raises(JobError, match="checkpoint is for job"):
        rc.restore("other", job_state)

    # a stream that runs to its end reports what it delivered by itself
    ended = both(
        rc, local, (Query.for_job("ended").select(("language", "==", "c")), None), dict(chunk_size=64)
    )
    assert len(take(rc.stream(ended))) == 384  # 6 full chunks of the 400 samples
    with MixteraClient.remote("127.0.0.1", server.port, TOKEN) as other:
        assert sum(other.report(ended).delivered) == 384


# ---------------------------------------------------------------------- security


def test_token_is_required_and_refusals_change_nothing(server, stub, rc):
    before = rc.list_datasets()
    wrong = (("authorization", "Bearer nope"),)
    assert code_of(lambda: stub.ListDatasets(pb.Empty())) == StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub.ListDatasets(pb.Empty(), metadata=wrong)) == StatusCode.UNAUTHENTICATED
    assert (
        code_of(lambda: stub.RemoveDataset(pb.Name(name="d"), metadata=wrong)) == StatusCode.UNAUTHENTICATED
    )
    register = pb.RegisterRequest(name="evil", locations=["/etc"], format="jsonl", parser="fields")
    assert code_of(lambda: stub.RegisterDataset(register, metadata=wrong)) == StatusCode.UNAUTHENTICATED
    assert code_of(lambda: stub.RegisterDataset(register)) == StatusCode.UNAUTHENTICATED
    assert rc.list_datasets() == before
    with MixteraClient.remote("127.0.0.1", server.port, "nope") as bad, pytest.raises(AuthenticationError):
        bad.remove_dataset("d")
    assert rc.list_datasets() == before


def test_allowed_roots(rc, sandbox, outside):
    before = rc.list_datasets()
    for location in (
        "../../etc/passwd",  # relative to the server's working directory, which is not a root
        "/etc/passwd",
        "/etc/*",
        str(outside),
        str(sandbox / "link.jsonl"),  # a symlink out of the root
        str(sandbox / "linkdir"),
        str(sandbox / "*.jsonl"),  # a glob that takes the symlink along
        str(sandbox),  # a directory walk that would follow it
    ):
        with pytest.raises(PermissionDeniedError) as info:
            rc.register_dataset("evil", location, parser_options={"language": "meta.language"})
        assert info.value.grpc_code == StatusCode.PERMISSION_DENIED, location
    assert rc.list_datasets() == before


def test_tls_with_a_self_signed_certificate(tmp_path, corpus):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    srv = Server(
        tmp_path / "db", "--tls-cert", str(cert), "--tls-key", str(key), "--allowed-root", str(corpus)
    )
    try:
        with MixteraClient.remote("127.0.0.1", srv.port, tls_ca=cert) as c:
            c.register_dataset("py", corpus / "python-0.jsonl.zst", parser_options=OPTIONS)
            assert [d.name for d in c.list_datasets()] == ["py"]
        plain = MixteraClient.remote("127.0.0.1", srv.port, retries=0, timeout=5)
        with plain, pytest.raises(RemoteError):  # TLS only
            plain.list_datasets()
    finally:
        assert srv.stop() == 0


# ---------------------------------------------------------------------- bad input


def test_malformed_inputs_are_refused_and_the_server_keeps_serving(rc, stub):
    def execute(spec_json: str):
        return lambda: stub.Execute(pb.ExecuteRequest(spec_json=spec_json), metadata=AUTH)

    spec = make_spec(Query.for_job("bad"), WEIGHTS).to_json()
    assert code_of(execute("{not json")) == StatusCode.INVALID_ARGUMENT
    assert code_of(execute("[1, 2]")) == StatusCode.INVALID_ARGUMENT
    assert code_of(execute(json.dumps({**spec, "chunk_size": -5}))) == StatusCode.INVALID_ARGUMENT
    assert code_of(execute(json.dumps({**spec, "chunk_size": 2**30}))) == StatusCode.INVALID_ARGUMENT
    assert code_of(execute(json.dumps({**spec, "unknown": 1}))) == StatusCode.INVALID_ARGUMENT
    assert code_of(execute(json.dumps({**spec, "mixture": {"type": "nope"}}))) == StatusCode.INVALID_ARGUMENT
    with pytest.raises(JobError, match="chunk_size"):  # the client checks the spec before sending it
        rc.execute(Query.for_job("bad"), WEIGHTS, chunk_size=-5)

    def job_call(method, **fields):
        request_type = {"GetChunk": pb.ChunkRequest, "ReadSamples": pb.ReadRequest}.get(method, pb.JobRequest)
        return lambda: getattr(stub, method)(request_type(**fields), metadata=AUTH)

    for method in ("GetJob", "Checkpoint", "JobStatus", "Report", "GetChunk"):
        assert code_of(job_call(method, job_id="nope")) == StatusCode.NOT_FOUND, method
    assert code_of(job_call("GetJob", job_id="../../etc")) == StatusCode.INVALID_ARGUMENT

    job = rc.execute(Query.for_job("reuse"), WEIGHTS, chunk_size=10)
    assert rc.execute(Query.for_job("reuse"), WEIGHTS, chunk_size=10) == job  # same spec: attach
    with pytest.raises(JobError, match="exists with another spec") as info:
        rc.execute(Query.for_job("reuse"), WEIGHTS, chunk_size=11)
    assert info.value.grpc_code == StatusCode.ALREADY_EXISTS

    assert code_of(job_call("GetChunk", job_id=job, index=-1)) == StatusCode.INVALID_ARGUMENT
    assert code_of(job_call("GetChunk", job_id=job, index=10**12)) == StatusCode.INVALID_ARGUMENT
    call = job_call("GetChunk", job_id=job, index=1, snapshot_json="{")
    assert code_of(call) == StatusCode.INVALID_ARGUMENT
    # a snapshot the server did not hand out (unsigned) is refused (tests/test_hardening_server.py)
    for snapshot in ("{}", json.dumps({"next_index": 0, "epoch": [0], "pos": [0], "carry": [0.0]})):
        call = job_call("GetChunk", job_id=job, index=1, snapshot_json=snapshot)
        assert code_of(call) == StatusCode.PERMISSION_DENIED, snapshot
    assert (
        code_of(job_call("ReadSamples", job_id=job, file_id=999, starts=[0], stops=[1]))
        == StatusCode.NOT_FOUND
    )
    fid = next(iter(rc.job(job).files))
    bad_ranges = job_call("ReadSamples", job_id=job, file_id=fid, starts=[5, 0], stops=[6, 1])
    assert code_of(bad_ranges) == StatusCode.INVALID_ARGUMENT
    register = pb.RegisterRequest(name="x", locations=["."], parser_options_json="{bad")
    assert code_of(lambda: stub.RegisterDataset(register, metadata=AUTH)) == StatusCode.INVALID_ARGUMENT
    restore = pb.RestoreRequest(job_id=job, state_json="{}")
    assert code_of(lambda: stub.Restore(restore, metadata=AUTH)) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stub.Explain(pb.Json(json="{}"), metadata=AUTH)) == StatusCode.INVALID_ARGUMENT
    # the server takes requests up to 4 MiB here
    assert code_of(execute("x" * (5 << 20))) == StatusCode.RESOURCE_EXHAUSTED
    assert [d.name for d in rc.list_datasets()] == ["d"]


def test_unexpected_errors_are_internal_and_the_server_stays_up(tmp_path, monkeypatch):
    from mixtera_core.server.service import MixteraService, serve

    service = MixteraService(tmp_path / "db", allowed_roots=[tmp_path])
    server, port = serve(service, "127.0.0.1", 0)
    try:

        def boom():
            raise RuntimeError("boom")

        monkeypatch.setattr(service.engine, "properties", boom)
        with MixteraClient.remote("127.0.0.1", port) as c:
            with pytest.raises(RemoteError, match="boom") as info:
                c.properties()
            assert info.value.grpc_code == StatusCode.INTERNAL
            assert c.list_datasets() == []
    finally:
        server.stop(0).wait()
        service.close()


# ---------------------------------------------------------------------- shutdown and restart


def test_sigterm_and_restart_lose_and_repeat_nothing(tmp_path, corpus, local):
    db = tmp_path / "db"
    srv = Server(db, "--allowed-root", str(corpus))
    c = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        c.register_dataset("d", corpus, parser_options=OPTIONS)
        job = both(
            c, local, (Query.for_job("restart"), WEIGHTS), dict(chunk_size=40, seed=2, on_exhausted="repeat")
        )
        dyn = DynamicMixture({"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}, "loss_weighted")
        djob = c.execute(
            Query.for_job("restart-dyn"), dyn, chunk_size=10, on_exhausted="repeat", feedback_delay=16
        )
        full = take(local.stream(job), 330)
        s = c.stream(job)
        head = take(s, 130)
        state = s.state_dict()
        take(c.stream(djob), 100)  # chunks 0..9: the mixture is decided up to chunk 15
        c.feedback(djob, 1, [1.0, 2.0, 3.0], [5, 5, 5], position=9)
        assert c.checkpoint(djob)["changes"][-1]["chunk"] > 0

        assert srv.stop() == 0  # SIGTERM: clean shutdown
        srv = Server(db, "--allowed-root", str(corpus), port=srv.port)

        # the same stream goes on (its next request carries the planner snapshot) ...
        assert head + take(s, 200) == full
        # ... and so does one resumed from the state taken before the restart
        assert take(c.stream(job, state=state), 200) == full[130:]
        # a mixture change after the restart lands beyond every chunk handed out before it
        c.feedback(djob, 2, [30.0, 2.0, 1.0], [5, 5, 5], position=9)
        ck = c.checkpoint(djob)
        assert c.job_status(djob)["feedback_errors"] == []
        assert len(ck["changes"]) == 2 and ck["changes"][-1]["chunk"] >= 10
    finally:
        c.close()
        assert srv.stop(signal.SIGINT) == 0
