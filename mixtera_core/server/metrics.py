"""Prometheus metrics of ``mixtera-server`` (``--metrics-port``): what the server did, for dashboards
and alerts.

Served as the Prometheus text exposition format (version 0.0.4) at ``GET /metrics`` on a small
HTTP server of its own (stdlib ``http.server``, one daemon thread per scrape), bound to loopback
unless ``--metrics-host`` says otherwise; it shows job ids and call counts, nothing else, and
needs no token. Written here rather than with ``prometheus_client``: a handful of counters and
two histograms do not need a dependency, and the format is small and stable (the tests parse the
endpoint's output with ``prometheus_client``'s parser).

Metrics (``job``: the job id; ``method``: the RPC; ``code``: its gRPC status):

- ``mixtera_rpc_requests_total{method,code}`` and ``mixtera_rpc_duration_seconds{method}``
  (histogram; a streaming call counts until its last message);
- ``mixtera_chunks_total{job,outcome}``: ``GetChunk`` answers, ``outcome`` = ``served`` (a chunk
  descriptor), ``pending`` (its mixture is not decided yet: the client asks again) or ``ended``;
- ``mixtera_samples_shipped_total{job}``: records sent by ``ReadSamples`` (``ship_samples=True``);
- ``mixtera_feedback_total{job,outcome}``: feedback applied, ``outcome`` = ``changed`` (the mixing
  algorithm changed the mixture), ``unchanged`` or ``failed``; ``mixtera_algorithm_update_seconds{job}``
  (histogram): how long the algorithm took per feedback (refits included);
- ``mixtera_step_reports_total{job}``; ``mixtera_updates_pending{job}`` (gauge): feedback and step
  reports acknowledged but not applied yet.
"""

from __future__ import annotations

import bisect
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ServerMetrics", "serve_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds; from a cache hit to a slow refit
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class _Family:
    """One metric name: its help text, type and labelled values."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class _Counter(_Family):
    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, "counter", help_text)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]


class _Histogram(_Family):
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, "histogram", help_text)
        self.buckets = buckets
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket (+Inf last), [sum]

    def observe(self, labels: Labels, value: float) -> None:
        counts, total = self.values.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def lines(self) -> list[str]:
        out = []
        for labels, (counts, total) in sorted(self.values.items()):
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                out.append(f"{self.name}_bucket{_labels(labels, (('le', _number(bound)),))} {cumulative}")
            out.append(f"{self.name}_sum{_labels(labels)} {_number(total[0])}")
            out.append(f"{self.name}_count{_labels(labels)} {cumulative}")
        return out


class _Gauge(_Family):
    """A gauge read when scraped: ``read()`` returns ``{labels: value}``."""

    def __init__(self, name: str, help_text: str, read: Callable[[], Mapping[Labels, float]]) -> None:
        super().__init__(name, "gauge", help_text)
        self.read = read

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.read().items())]


class ServerMetrics:
    """The server's counters; the service calls the ``record_*`` methods, a scrape calls :meth:`render`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = _Counter(
            "mixtera_rpc_requests_total", "RPCs finished, by method and gRPC status code."
        )
        self.latency = _Histogram(
            "mixtera_rpc_duration_seconds", "Time from an RPC's arrival to its last reply."
        )
        self.chunks = _Counter(
            "mixtera_chunks_total", "GetChunk answers: a chunk served, pending, or the job ended."
        )
        self.samples = _Counter("mixtera_samples_shipped_total", "Records sent to clients by ReadSamples.")
        self.feedback = _Counter(
            "mixtera_feedback_total", "Feedback applied: the mixture changed, stayed, or applying failed."
        )
        self.updates = _Histogram(
            "mixtera_algorithm_update_seconds",
            "Time the mixing algorithm took for one feedback (refits included).",
        )
        self.steps = _Counter("mixtera_step_reports_total", "Training-step reports applied.")
        self._gauges: list[_Gauge] = []

    def add_gauge(self, name: str, help_text: str, read: Callable[[], Mapping[Labels, float]]) -> None:
        """A gauge computed at scrape time (``read`` must be quick and thread-safe)."""
        self._gauges.append(_Gauge(name, help_text, read))

    # ------------------------------------------------------------------ recording

    def record_call(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.requests.inc((("method", method), ("code", code)))
            self.latency.observe((("method", method),), seconds)

    def record_chunk(self, job: str, outcome: str) -> None:
        with self._lock:
            self.chunks.inc((("job", job), ("outcome", outcome)))

    def record_samples(self, job: str, n: int) -> None:
        with self._lock:
            self.samples.inc((("job", job),), n)

    def record_feedback(self, job: str, outcome: str, seconds: float | None = None) -> None:
        with self._lock:
            self.feedback.inc((("job", job), ("outcome", outcome)))
            if seconds is not None:
                self.updates.observe((("job", job),), seconds)

    def record_step(self, job: str) -> None:
        with self._lock:
            self.steps.inc((("job", job),))

    # ------------------------------------------------------------------ exposition

    def families(self) -> Iterable[_Family]:
        yield from (self.requests, self.latency, self.chunks, self.samples, self.feedback, self.updates)
        yield self.steps
        yield from self._gauges

    def render(self) -> str:
        """Everything in the text exposition format."""
        lines: list[str] = []
        with self._lock:
            for family in self.families():
                lines += family.header()
                lines += family.lines()
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    metrics: ServerMetrics

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = self.server.metrics.render().encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not worth a log line
        pass


class _HTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve_metrics(
    metrics: ServerMetrics, host: str = "127.0.0.1", port: int = 0
) -> tuple[ThreadingHTTPServer, int]:
    """Serve ``GET /metrics`` on ``host:port`` (``port=0``: a free one) in a daemon thread; returns
    the HTTP server (``shutdown()`` stops it) and the port it bound."""
    cls = _HTTPServer6 if ":" in host else ThreadingHTTPServer
    server = cls((host.strip("[]"), port), _Handler)
    server.daemon_threads = True
    server.metrics = metrics  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="mixtera-metrics", daemon=True).start()
    return server, int(server.server_address[1])
