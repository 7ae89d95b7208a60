"""No client can break another's job: attacks on a real ``mixtera-server`` process on loopback.

Each test sends what a hostile (or broken) client with the token could send and checks that
the server refuses it cleanly (a status code and a message, the refusal logged) and that the
streams of the other clients stay exactly those of a reference run taken before:

- forged planner snapshots (out-of-range cursors, huge carries, wrong lengths, NaN, another
  job's or an unsigned snapshot; also ones signed with the server's own secret, as if it had
  leaked) never reach the job's shared planner;
- every numeric field has a limit, named in the refusal; a far chunk request plans in steps
  and never holds the job's lock for the others; the chunk cache is bounded in bytes;
- client path regexes run with RE2 (catastrophic backtracking takes no time), invalid ones
  are refused;
- calls beyond the server's capacity get UNAVAILABLE while health checks and ListDatasets
  are still answered; a non-loopback bind needs roots and a token; the health service needs
  no token;
- the refit helper processes exit when the server is killed with SIGKILL;
- a hypothesis fuzzer sends random and mutated messages to every RPC.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from conftest import write_jsonl
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_server import Server
from test_streaming import WEIGHTS, doc, take

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import InvalidPropertyError, SnapshotSignatureError
from mixtera_core.job import make_spec
from mixtera_core.mixture import DynamicMixture
from mixtera_core.server import mixtera_pb2 as pb
from mixtera_core.server import mixtera_pb2_grpc as pb_grpc
from mixtera_core.server.signing import SECRET_FILE, SnapshotSigner, job_key, load_secret

TOKEN = "hardening-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
OPTIONS = {"language": "meta.language"}
REF_JOB = "reference-job-7c1f"
StatusCode = grpc.StatusCode


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if not hasattr(result, "ByteSize"):  # a server stream: drain it
            list(result)
    return info.value.code(), info.value.details() or ""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("hard")


@pytest.fixture(scope="module")
def corpus(base):
    root = base / "corpus"
    rng = random.Random(3)
    for lang, n in (("python", 240), ("c", 160), ("en", 400)):
        write_jsonl(root / lang / f"{lang}.jsonl", [doc(lang, i, rng) for i in range(n)])
    return root


@pytest.fixture(scope="module")
def server(base, corpus):
    (base / "token").write_text(TOKEN)
    srv = Server(
        base / "db",
        "--token-file",
        str(base / "token"),
        "--allowed-root",
        str(corpus),
        "--refit-processes",
        "0",
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def rc(server, corpus):
    c = MixteraClient.remote("127.0.0.1", server.port, TOKEN)
    c.register_dataset("ref-data", corpus, parser_options=OPTIONS)
    c.execute(Query.for_job(REF_JOB), WEIGHTS, chunk_size=16, dp_groups=2, on_exhausted="repeat")
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(rc):
    """The reference job's two streams, 150 samples each, before any attack."""
    return [take(rc.stream(REF_JOB, g), 150) for g in range(2)]


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.MixteraStub(channel)
    channel.close()


def assert_reference_unchanged(rc, reference) -> None:
    assert [take(rc.stream(REF_JOB, g), 150) for g in range(2)] == reference


# ---------------------------------------------------------------------- 1. forged snapshots


def test_forged_snapshots_never_reach_the_shared_planner(server, rc, stub, reference, base):
    live = rc.stream(REF_JOB, 0)  # an honest stream in progress during the attack
    head = take(live, 60)
    reply = stub.GetChunk(pb.ChunkRequest(job_id=REF_JOB, index=3), metadata=AUTH)
    good = json.loads(reply.before_json)
    assert isinstance(good.pop("mac"), str) and good["next_index"] == 3
    n = len(good["pos"])

    def get(snapshot: dict | str, index: int = 510):  # beyond the horizon: the server would jump there
        text = snapshot if isinstance(snapshot, str) else json.dumps(snapshot)
        request = pb.ChunkRequest(job_id=REF_JOB, index=index, snapshot_json=text)
        return lambda: stub.GetChunk(request, metadata=AUTH, timeout=20)

    forgeries = {
        "cursor beyond the component": {**good, "next_index": 500, "pos": [10**9] * n},
        "huge carried remainder": {**good, "next_index": 500, "carry": [1e12] + [0.0] * (n - 1)},
        "wrong lengths": {**good, "next_index": 500, "epoch": [0] * (n + 3)},
        "negative epoch": {**good, "next_index": 500, "epoch": [-5] * n},
        "token fields": {**good, "next_index": 500, "frac": [0.5] * n, "planned": -1.0, "stage": 99},
        "unsigned copy of a real one": dict(good),
    }
    for name, forged in forgeries.items():
        code, details = code_and_details(get(forged))
        assert code == StatusCode.PERMISSION_DENIED, name
        assert "signature" in details or "not signed" in details, name
    # NaN is not even JSON a server accepts as a number in a signed snapshot
    code, _ = code_and_details(get(json.dumps({**good, "carry": [float("nan")] * n, "mac": "00"})))
    assert code in (StatusCode.INVALID_ARGUMENT, StatusCode.PERMISSION_DENIED)
    # a real snapshot with its signature, but tampered with, or sent for another job
    other = rc.execute(Query.for_job("other-job"), WEIGHTS, chunk_size=16, on_exhausted="repeat")
    theirs = json.loads(stub.GetChunk(pb.ChunkRequest(job_id=other, index=3), metadata=AUTH).before_json)
    signed = json.loads(reply.before_json)
    for forged in ({**signed, "next_index": 500}, {**signed, "pos": [0] * n}, theirs):
        assert code_and_details(get(forged))[0] == StatusCode.PERMISSION_DENIED
    with MixteraClient.remote("127.0.0.1", server.port, TOKEN) as c:  # the client raises the class
        state = c.stream(REF_JOB, 0).state_dict()
        state["snapshot"] = {**good, "next_index": 2}
        with pytest.raises(SnapshotSignatureError, match="signature|not signed"):
            take(c.stream(REF_JOB, 0, state=state), 1)

    # as if the secret had leaked: correctly signed but out-of-range contents are still refused,
    # by checking the state against the job before any shared state changes
    signer = SnapshotSigner(load_secret(base / "db"))
    job = rc.job(REF_JOB)
    key = job_key(REF_JOB, job.spec.to_json(), job.catalog_version)
    for name, forged in list(forgeries.items())[:5]:
        code, details = code_and_details(get(signer.sign(key, forged)))
        assert code == StatusCode.INVALID_ARGUMENT and "planner state" in details, (name, details)
    assert oct(os.stat(base / "db" / SECRET_FILE).st_mode & 0o777) == "0o600"

    assert head + take(live, 90) == reference[0]  # the stream in progress never noticed
    assert_reference_unchanged(rc, reference)
    assert "GetChunk refused (PERMISSION_DENIED)" in server.log.read_text()


def test_signed_snapshots_round_trip_through_checkpoints(rc, reference):
    s = rc.stream(REF_JOB, 1)
    head = take(s, 70)
    state = json.loads(json.dumps(s.state_dict()))  # what a checkpoint file holds
    assert "mac" in state["snapshot"]
    # integers written as floats by another JSON library still verify
    state["snapshot"]["carry"] = [float(x) for x in state["snapshot"]["carry"]]
    state["snapshot"]["pos"] = [float(x) for x in state["snapshot"]["pos"]]
    assert head + take(rc.stream(REF_JOB, 1, state=state), 80) == reference[1]


# ---------------------------------------------------------------------- 2. limits


def test_every_numeric_field_has_a_limit_named_in_the_refusal(rc, stub, reference):
    spec = make_spec(Query.for_job("limits"), WEIGHTS).to_json()
    tok_spec = {**spec, "tokenizer": {"name": "hf", "source": "none.json", "options": {}}, "seq_len": 8}

    def execute(**changes):
        body = json.dumps({**spec, **changes})
        return lambda: stub.Execute(pb.ExecuteRequest(spec_json=body), metadata=AUTH)

    def unary(method, request):
        return lambda: getattr(stub, method)(request, metadata=AUTH)

    cases = [
        (unary("GetChunk", pb.ChunkRequest(job_id=REF_JOB, index=2**41)), "index", "1099511627776"),
        (unary("GetMixture", pb.MixtureRequest(job_id=REF_JOB, since=2**41)), "since", "1099511627776"),
        (unary("GetMixture", pb.MixtureRequest(job_id=REF_JOB, since=-1)), "since", "1099511627776"),
        (unary("ReadSamples", pb.ReadRequest(job_id=REF_JOB, file_id=-1)), "file_id", "9223372036854775807"),
        (
            unary(
                "ReadSamples",
                pb.ReadRequest(job_id=REF_JOB, file_id=0, starts=[0] * 70000, stops=[0] * 70000),
            ),
            "number of ranges",
            "65536",
        ),
        (
            unary("Feedback", pb.FeedbackRequest(job_id=REF_JOB, step=1, position=2**41)),
            "position",
            "1099511627776",
        ),
        (unary("ReportStep", pb.StepRequest(job_id=REF_JOB, step=-3)), "step", "9007199254740992"),
        (unary("ReportStep", pb.StepRequest(job_id=REF_JOB, step=1, position=-2)), "position", "-1"),
        (
            lambda: stub.RegisterDataset(
                pb.RegisterRequest(name="x", locations=["a"], workers=100000), metadata=AUTH
            ),
            "workers",
            "256",
        ),
        (
            lambda: stub.RegisterDataset(pb.RegisterRequest(name="x", locations=["a"] * 2000), metadata=AUTH),
            "number of locations",
            "1024",
        ),
        (
            lambda: stub.RegisterDataset(pb.RegisterRequest(name="x" * 300, locations=["a"]), metadata=AUTH),
            "name",
            "256",
        ),
        (
            lambda: stub.Tokenize(
                pb.TokenizeRequest(datasets=["d"], tokenizer="hf", tokenizer_source="t", workers=-1),
                metadata=AUTH,
            ),
            "workers",
            "256",
        ),
        (execute(chunk_size=2**23), "chunk_size", "4194304"),
        (execute(block_size=2**25), "block_size", "16777216"),
        (execute(dp_groups=2**17), "dp_groups", "65536"),
        (execute(num_workers=2**11), "num_workers", "1024"),
        (execute(dp_groups=2**10, num_workers=2**7), "dp_groups x num_workers", "65536"),
        (execute(nodes_per_group=2**17), "nodes_per_group", "65536"),
        (execute(token_estimate_samples=2**20), "token_estimate_samples", "262144"),
        (execute(feedback_delay=2**21), "feedback_delay", "1048576"),
        (execute(samples_per_step=2**41), "samples_per_step", "1099511627776"),
        (execute(**{**tok_spec, "seq_len": 2**25}), "seq_len", "16777216"),
        (execute(**{**tok_spec, "chunk_tokens": 2**27}), "chunk_tokens", "67108864"),
    ]
    explain = {"query": Query.for_job("x").to_json(), "mixture": None}
    for option, value, limit in (("token_estimate_samples", 2**20, "262144"), ("samples", -1, "0")):
        request = pb.Json(json=json.dumps({**explain, "options": {option: value}}))
        cases.append((unary("Explain", request), option, limit))
    for call, field, limit in cases:
        code, details = code_and_details(call)
        assert code == StatusCode.INVALID_ARGUMENT, (field, details)
        assert field in details and limit in details, (field, details)
    # a snapshot longer than a job's snapshots can be
    code, details = code_and_details(
        unary("GetChunk", pb.ChunkRequest(job_id=REF_JOB, index=1, snapshot_json="{" + " " * 10**6 + "}"))
    )
    assert code == StatusCode.INVALID_ARGUMENT and "snapshot_json" in details
    # a chunk too far to plan in one request
    code, details = code_and_details(unary("GetChunk", pb.ChunkRequest(job_id=REF_JOB, index=2**30)))
    assert code == StatusCode.INVALID_ARGUMENT and "limit" in details
    assert_reference_unchanged(rc, reference)


def test_a_far_chunk_request_plans_in_steps_and_never_holds_the_job(rc, stub, reference):
    """A request 30,000 chunks ahead plans for a while; another client's chunk requests of the
    same job are answered meanwhile (the job's lock is held one step at a time)."""
    job = rc.execute(Query.for_job("far"), WEIGHTS, chunk_size=4, on_exhausted="repeat")
    stub.GetChunk(pb.ChunkRequest(job_id=job, index=0), metadata=AUTH)
    done = threading.Event()
    far: dict = {}

    def walk():
        t0 = time.perf_counter()
        far["reply"] = stub.GetChunk(pb.ChunkRequest(job_id=job, index=30_000), metadata=AUTH, timeout=120)
        far["seconds"] = time.perf_counter() - t0
        done.set()

    threading.Thread(target=walk, daemon=True).start()
    time.sleep(0.2)
    waits = []
    while not done.is_set() and len(waits) < 200:
        t0 = time.perf_counter()
        stub.GetChunk(pb.ChunkRequest(job_id=job, index=0), metadata=AUTH, timeout=30)
        waits.append(time.perf_counter() - t0)
        time.sleep(0.01)
    assert done.wait(120)
    assert far["reply"].index == 30_000
    assert waits, "the far request finished before another could be sent"
    waits.sort()
    # one step of 256 chunks is a few ms to tens of ms on a loaded machine; the whole walk far more
    assert waits[len(waits) // 2] < 0.25 and waits[-1] < max(1.0, far["seconds"] / 2), (waits, far["seconds"])
    assert_reference_unchanged(rc, reference)


def test_the_chunk_cache_is_bounded_in_bytes(rc):
    from mixtera_core.runtime import JobRuntime

    job = rc.job(REF_JOB)
    bound = 20_000
    runtime = JobRuntime(job, cache_chunks=10_000, cache_bytes=bound)
    reference = JobRuntime(job)
    for i in range(300):
        chunk, before = runtime.chunk(i)
        assert runtime.cached_bytes <= bound + 4096  # at most one entry over (the newest is kept)
        other, other_before = reference.chunk(i)
        assert chunk.starts.tolist() == other.starts.tolist() and before == other_before
    assert len(runtime._cache) < 300
    again, _ = runtime.chunk(5)  # evicted: regenerated from the sparse planner checkpoints
    assert again.starts.tolist() == reference.chunk(5)[0].starts.tolist()


def test_malformed_or_failing_restores_change_nothing(rc, stub, reference):
    dyn = DynamicMixture({"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}, "loss_weighted")
    job = rc.execute(Query.for_job("restore-me"), dyn, chunk_size=16, on_exhausted="repeat", feedback_delay=4)
    head = take(rc.stream(job), 40)
    rc.feedback(job, 1, [1.0, 9.0, 1.0], [4, 4, 4], position=1)
    before = rc.checkpoint(job)
    n = len(before["log"][0][1])
    bad = {
        "weights of the wrong length": {**before, "log": [[0, [1.0] * (n + 1)]]},
        "NaN weights": {**before, "log": [[0, [1.0] * (n - 1) + ["NaN"]]]},
        "negative chunk": {**before, "log": [[-3, [1.0] * n]]},
        "seal out of range": {**before, "sealed": 2**70},
        "changes that are not objects": {**before, "changes": [1, 2]},
        "an algorithm state the algorithm cannot load": {**before, "algorithm": {"a": 1}},
    }
    for name, state in bad.items():
        request = pb.RestoreRequest(job_id=job, state_json=json.dumps(state).replace('"NaN"', "NaN"))
        code, details = code_and_details(lambda r=request: stub.Restore(r, metadata=AUTH))
        assert code == StatusCode.INVALID_ARGUMENT and "checkpoint" in details, (name, details)
        assert rc.checkpoint(job) == before, name  # the failed restore was rolled back
    assert take(rc.stream(job), 40) == head
    assert_reference_unchanged(rc, reference)


# ---------------------------------------------------------------------- 3. client regexes


def test_client_path_regexes_run_with_re2(server, rc, corpus, stub, reference):
    deep = corpus / ("a" * 40) / "data"
    write_jsonl(deep / "x.jsonl", [{"text": "t", "meta": {"language": "zz"}}])
    t0 = time.perf_counter()
    # (a+)+b backtracks exponentially in Python's re on 40 a's without a b; RE2 is linear
    rc.register_dataset(
        "regex-ds",
        str(deep / "x.jsonl"),
        parser_options={
            "language": "meta.language",
            "src": {"path_regex": r"/(a+)+b"},
            "leaf": {"path_regex": r"/(\w+)/x\.jsonl$"},
        },
    )
    assert time.perf_counter() - t0 < 10
    props = rc.properties()
    assert props["leaf"] == {"data": 1}  # the RE2 search found the group
    assert props["src"] == {}  # no match: null (not counted)
    for bad in (r"(a)\1", r"(?=x)(a)", "no group", "(" * 5000):
        with pytest.raises(InvalidPropertyError) as info:
            rc.register_dataset("regex-bad", str(deep / "x.jsonl"), parser_options={"p": {"path_regex": bad}})
        assert getattr(info.value, "grpc_code", None) == StatusCode.INVALID_ARGUMENT, (bad, info.value)
    code, details = code_and_details(
        lambda: stub.RegisterDataset(
            pb.RegisterRequest(name="g", locations=[str(corpus / "**" / "**" / "**" / "*.jsonl")]),
            metadata=AUTH,
        )
    )
    assert code == StatusCode.NOT_FOUND and "'**' parts" in details
    rc.remove_dataset("regex-ds")
    assert_reference_unchanged(rc, reference)


# ---------------------------------------------------------------------- 4. capacity, binding, health


def test_busy_server_still_answers_health_and_list_calls(tmp_path, corpus):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv = Server(tmp_path / "db", "--allowed-root", str(corpus), "--workers", "6", "--refit-processes", "0")
    try:
        with MixteraClient.remote("127.0.0.1", srv.port) as c:
            c.register_dataset("d", corpus, parser_options=OPTIONS)
            job = c.execute(Query.for_job("busy"), WEIGHTS, chunk_size=4, on_exhausted="repeat")
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.MixteraStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        codes: list = []

        def far(i: int) -> None:  # each walks ~30,000 chunks: a second or more of planning
            try:
                stub.GetChunk(pb.ChunkRequest(job_id=job, index=i), timeout=120)
                codes.append(StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())

        threads = [threading.Thread(target=far, args=(30_000 + i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        for _ in range(5):
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            json.loads(stub.ListDatasets(pb.Empty(), timeout=5).json)
            stub.JobStatus(pb.JobRequest(job_id=job), timeout=5)
        assert time.perf_counter() - t0 < 3.0
        for t in threads:
            t.join(120)
        assert codes.count(StatusCode.UNAVAILABLE) >= 5  # 6 threads - 4 reserved: 2 calls at a time
        assert set(codes) <= {StatusCode.OK, StatusCode.UNAVAILABLE}
        channel.close()
        assert "server busy" in srv.log.read_text()
    finally:
        assert srv.stop() == 0


def test_binding_rules_and_default_roots(tmp_path, corpus):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    cmd = [sys.executable, "-m", "mixtera_core.server", str(tmp_path / "db"), "--port", "0"]
    runs = {
        "public without roots and token": subprocess.Popen(
            [*cmd, "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
        "public with a token only": subprocess.Popen(
            [*cmd, "--host", "0.0.0.0", "--token-file", str(tmp_path / "t")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "cwd is /": subprocess.Popen(cmd, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "cwd is home": subprocess.Popen(
            cmd, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
    }
    messages = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, out, err)
        messages[name] = err
    assert "--allowed-root DIR and --token-file F" in messages["public without roots and token"]
    assert "--insecure" in messages["public without roots and token"]
    assert "--allowed-root DIR" in messages["public with a token only"]
    assert "--token-file" not in messages["public with a token only"]
    assert "root directory" in messages["cwd is /"] and "--allowed-root" in messages["cwd is /"]
    assert "home directory" in messages["cwd is home"]
    # spelled out: --insecure (and a loopback bind never needs it)
    srv = Server(tmp_path / "db2", "--host", "0.0.0.0", "--insecure", "--allowed-root", str(corpus))
    try:
        with MixteraClient.remote("127.0.0.1", srv.port) as c:
            assert c.list_datasets() == []
        assert "without TLS" in srv.log.read_text()
    finally:
        assert srv.stop() == 0


def test_health_needs_no_token_and_refusals_are_logged(server, stub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "mixtera.v1.Mixtera"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert code_and_details(lambda: stub.ListDatasets(pb.Empty()))[0] == StatusCode.UNAUTHENTICATED
    channel.close()
    time.sleep(0.2)
    assert "ListDatasets refused (UNAUTHENTICATED) for ipv4:127.0.0.1" in server.log.read_text()


# ---------------------------------------------------------------------- 5. refit helpers


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_refit_helpers_exit_when_the_server_is_killed(tmp_path, corpus):
    srv = Server(tmp_path / "db", "--allowed-root", str(corpus), "--refit-processes", "2")
    try:
        deadline = time.monotonic() + 30
        while len(helpers := _children(srv.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(helpers) >= 2, helpers
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        t0 = time.monotonic()
        while any(_alive(p) for p in helpers) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        gone = time.monotonic() - t0
        assert not any(_alive(p) for p in helpers), [p for p in helpers if _alive(p)]
        assert gone < 5, gone
    finally:
        srv.stop()


# ---------------------------------------------------------------------- 6. fuzzing every RPC

METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["Mixtera"].methods}
_F = FieldDescriptor
JOB_IDS = [REF_JOB, "fuzz-job", "nope", "", "../x", "a" * 300]
INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 2**31 - 1, -(2**31), 2**40, 2**53, 2**62, -(2**63), 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-5, 50),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(JOB_IDS + ["{}", "[]", "null", "{", '{"a":1}']))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _field_value(field, draw):
    if field.type == _F.TYPE_STRING:
        return draw(TEXT)
    if field.type in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return draw(INTS)
    if field.type in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return draw(st.integers(-(2**31), 2**31 - 1))
    if field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return draw(FLOATS)
    if field.type == _F.TYPE_BOOL:
        return draw(st.booleans())
    if field.type == _F.TYPE_BYTES:
        return draw(st.binary(max_size=40))
    raise AssertionError(field)


def _mutate_json(text: str, draw) -> str:
    """A JSON document with one value replaced somewhere (or the text cut or garbled)."""
    how = draw(st.sampled_from(["value", "value", "value", "cut", "garble"]))
    if how == "cut":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "garble":
        i = draw(st.integers(0, max(0, len(text) - 1)))
        return text[:i] + draw(st.text(max_size=3)) + text[i + 1 :]
    try:
        data = json.loads(text)
    except ValueError:
        return text
    node = data
    path = []
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    value = draw(JSON_VALUES)
    if not path:
        return json.dumps(value)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        return json.dumps(data)
    except ValueError:
        return text


@st.composite
def rpc_calls(draw, valid):
    name = draw(st.sampled_from(sorted(METHODS)))
    cls = getattr(pb, METHODS[name].input_type.name)
    how = draw(st.sampled_from(["random", "mutated", "mutated", "bytes"]))
    if how == "bytes":
        return name, draw(st.binary(max_size=200))
    if how == "mutated" and valid.get(name):
        msg = cls()
        msg.CopyFrom(draw(st.sampled_from(valid[name])))
        fields = list(cls.DESCRIPTOR.fields)
        for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2)) if fields else []:
            current = getattr(msg, field.name)
            if field.type == _F.TYPE_STRING and field.name.endswith("json") and not field.is_repeated:
                setattr(msg, field.name, _mutate_json(current, draw))
            elif field.is_repeated:
                values = list(current)
                if values and draw(st.booleans()):
                    values[draw(st.integers(0, len(values) - 1))] = _field_value(field, draw)
                else:
                    values = [_field_value(field, draw) for _ in range(draw(st.integers(0, 4)))]
                msg.ClearField(field.name)
                getattr(msg, field.name).extend(values)
            else:
                setattr(msg, field.name, _field_value(field, draw))
        return name, msg.SerializeToString()
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        if draw(st.booleans()):
            if field.is_repeated:
                getattr(msg, field.name).extend(
                    _field_value(field, draw) for _ in range(draw(st.integers(0, 4)))
                )
            else:
                setattr(msg, field.name, _field_value(field, draw))
    return name, msg.SerializeToString()


@pytest.fixture(scope="module")
def valid_requests(rc, stub, corpus):
    """Valid messages of each RPC for the fuzzer to mutate (jobs other than the reference one,
    except for reading calls and chunk requests with real snapshots)."""
    fuzz = rc.execute(Query.for_job("fuzz-job"), WEIGHTS, chunk_size=8, on_exhausted="repeat")
    snaps = [
        stub.GetChunk(pb.ChunkRequest(job_id=j, index=i), metadata=AUTH).before_json
        for j in (REF_JOB, fuzz)
        for i in (0, 2, 5)
    ]
    spec = make_spec(Query.for_job("fuzz-job-2"), WEIGHTS, chunk_size=8).to_json()
    checkpoint = json.loads(stub.Checkpoint(pb.JobRequest(job_id=fuzz), metadata=AUTH).json)
    explain = {"query": Query.for_job("e").to_json(), "mixture": {"type": "static", "weights": WEIGHTS}}
    fid = next(iter(rc.job(REF_JOB).files))
    return {
        "RegisterDataset": [
            pb.RegisterRequest(
                name="fuzz-ds",
                locations=[str(corpus / "c")],
                parser_options_json=json.dumps({"language": "meta.language", "p": {"path_regex": "/(c)/"}}),
            )
        ],
        "RemoveDataset": [pb.Name(name="fuzz-ds")],
        "Explain": [pb.Json(json=json.dumps(explain)), pb.Json(json=json.dumps({**explain, "peek": 2}))],
        "Execute": [pb.ExecuteRequest(spec_json=json.dumps(spec))],
        "GetJob": [pb.JobRequest(job_id=REF_JOB)],
        "GetChunk": [
            pb.ChunkRequest(job_id=j, index=i + 3, snapshot_json=s)
            for s in snaps
            for j in (REF_JOB, fuzz)
            for i in (0, 7)
        ],
        "GetMixture": [pb.MixtureRequest(job_id=REF_JOB, since=0)],
        "ReadSamples": [pb.ReadRequest(job_id=REF_JOB, file_id=fid, starts=[0, 5], stops=[3, 9])],
        "Feedback": [pb.FeedbackRequest(job_id=fuzz, step=1, losses=[1.0] * 3, counts=[1.0] * 3, position=0)],
        "ReportStep": [pb.StepRequest(job_id=fuzz, step=1, position=0)],
        "ReportDelivered": [pb.DeliveredRequest(job_id=fuzz, counts=[1, 2, 3])],
        "Checkpoint": [pb.JobRequest(job_id=fuzz)],
        "Restore": [pb.RestoreRequest(job_id=fuzz, state_json=json.dumps(checkpoint))],
        "JobStatus": [pb.JobRequest(job_id=REF_JOB)],
        "Report": [pb.JobRequest(job_id=REF_JOB)],
        "Tokenize": [
            pb.TokenizeRequest(
                datasets=["ref-data"], tokenizer="hf", tokenizer_source=str(corpus / "none.json")
            )
        ],
        "ListJobs": [pb.Empty()],
        "DeleteJob": [pb.JobRequest(job_id=fuzz)],
    }


def _deletes_reference(name: str, body: bytes) -> bool:
    """A DeleteJob of the reference job: a legitimate call (any token holder may delete a job)
    that would only make the reference check below meaningless."""
    if name != "DeleteJob":
        return False
    try:
        return pb.JobRequest.FromString(body).job_id == REF_JOB
    except Exception:
        return False


# MIXTERA_FUZZ_EXAMPLES=5000: a longer, randomized run (200: the same 200 examples every time)
FUZZ_EXAMPLES = int(os.environ.get("MIXTERA_FUZZ_EXAMPLES", "200"))
CLEAN = {
    StatusCode.OK,
    StatusCode.INVALID_ARGUMENT,
    StatusCode.NOT_FOUND,
    StatusCode.ALREADY_EXISTS,
    StatusCode.PERMISSION_DENIED,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.UNAVAILABLE,  # "server busy": refused before doing anything
}


def test_fuzzing_every_rpc_breaks_nothing(server, rc, reference, valid_requests):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", 1 << 30)]
    )
    raw = {
        name: (channel.unary_stream if m.server_streaming else channel.unary_unary)(
            f"/mixtera.v1.Mixtera/{name}"
        )
        for name, m in METHODS.items()
    }
    seen: dict = {}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=FUZZ_EXAMPLES == 200,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(call=rpc_calls(valid_requests))
    def fuzz(call):
        name, body = call
        assume(not _deletes_reference(name, body))
        try:
            result = raw[name](body, metadata=AUTH, timeout=30)
            if METHODS[name].server_streaming:
                list(result)
            code, details = StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        seen.setdefault(name, set()).add(code)
        assert code in CLEAN, (name, body[:200], code, details)
        assert "Traceback" not in details
        assert server.proc.poll() is None

    try:
        fuzz()
    finally:
        channel.close()
    assert set(seen) == set(METHODS), sorted(set(METHODS) - set(seen))
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert_reference_unchanged(rc, reference)
