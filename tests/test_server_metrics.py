"""``mixtera-server --metrics-port``: scrape the real endpoint of a real server after real streaming."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from test_server import Server, base, corpus  # noqa: F401  (module fixtures reused)

from mixtera_core import MixteraClient, Query
from mixtera_core.job import JobError
from mixtera_core.mixture import DynamicMixture
from mixtera_core.server.metrics import CONTENT_TYPE, ServerMetrics

parser = pytest.importorskip("prometheus_client.parser")

WEIGHTS = {"language=python": 0.5, "language=c": 0.2, "language=en": 0.3}


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    """(content type, {(sample name, sorted labels): value}) as Prometheus' own parser reads them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        content_type, text = reply.headers["Content-Type"], reply.read().decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return content_type, samples


def total(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture
def server(tmp_path, corpus):  # noqa: F811
    srv = Server(tmp_path / "db", "--allowed-root", str(corpus), "--metrics-port", "0")
    assert srv.proc.stdout is not None
    line = srv.proc.stdout.readline()  # printed right after "listening on" (maybe buffered here already)
    assert line.startswith("mixtera-server metrics on http://127.0.0.1:"), line
    srv.metrics_port = int(line.rsplit(":", 1)[1].split("/")[0])  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


def test_the_endpoint_counts_what_the_server_did(server, corpus):  # noqa: F811
    with MixteraClient.remote("127.0.0.1", server.port, ship_samples=True) as client:
        client.register_dataset(
            "d", str(corpus), parser_options={"language": "meta.language", "license": "meta.license"}
        )
        static = client.execute(Query.for_job("m-static"), WEIGHTS, chunk_size=50, on_exhausted="stop")
        samples = list(client.stream(static))  # the whole job, records shipped by the server
        chunks = {s.chunk for s in samples}
        dynamic = client.execute(
            Query.for_job("m-dynamic"),
            DynamicMixture(WEIGHTS, "loss_weighted", ema=0.0),
            chunk_size=20,
            on_exhausted="repeat",
            feedback_delay=2,
        )
        stream = iter(client.stream(dynamic))
        fed = 0
        for step in range(5):
            batch = [next(stream) for _ in range(20)]
            client.feedback(
                dynamic, step, [1.0 + step, 2.0, 3.0], [10.0, 10.0, 10.0], max(s.chunk for s in batch)
            )
            fed += 1
        stream.close()
        client.report_step(dynamic, 5)
        client.checkpoint(dynamic)  # waits until the feedback acknowledged so far is applied
        changes = len(client.checkpoint(dynamic)["changes"])
    content_type, m = scrape(server.metrics_port)
    assert content_type == CONTENT_TYPE
    # every sample of the job was read by the server and shipped; each chunk served once
    assert total(m, "mixtera_samples_shipped_total", job="m-static") == len(samples) > 1000
    assert total(m, "mixtera_chunks_total", job="m-static", outcome="served") == len(chunks) > 20
    assert total(m, "mixtera_chunks_total", job="m-static", outcome="ended") >= 1
    # GetChunk answers by outcome add up to the GetChunk calls that succeeded
    answers = total(m, "mixtera_chunks_total")
    assert answers == total(m, "mixtera_rpc_requests_total", method="GetChunk", code="OK") > len(chunks)
    # feedback: acknowledged, applied, timed; the mixture changed each time (loss_weighted, no smoothing)
    assert total(m, "mixtera_rpc_requests_total", method="Feedback", code="OK") == fed
    assert total(m, "mixtera_feedback_total", job="m-dynamic") == fed
    assert total(m, "mixtera_feedback_total", job="m-dynamic", outcome="changed") == fed >= changes > 0
    assert total(m, "mixtera_algorithm_update_seconds_count", job="m-dynamic") == fed
    assert total(m, "mixtera_step_reports_total", job="m-dynamic") == 1
    assert total(m, "mixtera_updates_pending", job="m-dynamic") == 0
    # latency histograms: counts match the call counters, cumulative buckets end at +Inf
    for method in ("GetChunk", "ReadSamples", "Feedback", "Execute"):
        calls = total(m, "mixtera_rpc_requests_total", method=method)
        assert calls > 0 and total(m, "mixtera_rpc_duration_seconds_count", method=method) == calls
        assert m[("mixtera_rpc_duration_seconds_bucket", (("le", "+Inf"), ("method", method)))] == calls
        assert total(m, "mixtera_rpc_duration_seconds_sum", method=method) > 0
    # a refused call is counted with its status code
    with MixteraClient.remote("127.0.0.1", server.port, retries=0) as client, pytest.raises(JobError):
        client.job("no-such-job")
    _, after = scrape(server.metrics_port)
    assert total(after, "mixtera_rpc_requests_total", method="GetJob", code="NOT_FOUND") == 1
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=10)
    assert err.value.code == 404


def test_the_exposition_escapes_labels_and_parses_back():
    metrics = ServerMetrics()
    odd = 'a "job"\\with\nnewline'
    metrics.record_chunk(odd, "served")
    metrics.record_chunk(odd, "served")
    metrics.record_feedback(odd, "changed", 0.003)
    metrics.record_call("GetChunk", "OK", 12.0)
    metrics.add_gauge("mixtera_test_gauge", "A gauge.", lambda: {(("job", odd),): 2.5})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(metrics.render())
        for s in family.samples
    }
    assert samples[("mixtera_chunks_total", (("job", odd), ("outcome", "served")))] == 2
    assert samples[("mixtera_test_gauge", (("job", odd),))] == 2.5
    buckets = {
        dict(ls)["le"]: v for (n, ls), v in samples.items() if n == "mixtera_algorithm_update_seconds_bucket"
    }
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["+Inf"] == 1
    slow = {dict(ls)["le"]: v for (n, ls), v in samples.items() if n == "mixtera_rpc_duration_seconds_bucket"}
    assert slow["10"] == 0 and slow["30"] == 1 and slow["+Inf"] == 1
