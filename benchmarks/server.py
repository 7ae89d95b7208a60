"""mixtera-server on loopback: per-client throughput remote vs local, chunk latency, feedback acks.

Builds a smaller version of ``streaming.py``'s 3-domain corpus (default ~20 MB of text in
12 jsonl.zst shards of 256-line zstd frames), registers it, starts one ``mixtera-server``
process on 127.0.0.1 (``python -m mixtera_core.server DB_DIR --port 0``) and a pool of N
client processes (default N = 8: 4 dp groups x 2 workers, one node per group). Then, in
the same run:

- **throughput** (sample mode, text output, static mixture python/c/en = 50/30/20,
  ``chunk_size`` 512, ``on_exhausted="repeat"``): every client streams its own stream
  ``(dp_group, 0, worker)`` of the job for ``--samples`` samples, all N at once (they set
  up, then start together on a signal; the clock runs from the signal to the last sample).
  *Remote*: ``MixteraClient.remote(...).stream(job, g, 0, w)``: the job is fetched once
  (``GetJob``), chunk descriptors come from the server's central planner (``GetChunk``),
  samples are read by the client from the shared filesystem. *Local* (the baseline): each
  process ``Job.load(DB_DIR/jobs/<id>)`` and iterates ``JobStream(job, g, 0, w)``, which
  is what ``LocalMixteraClient.stream`` does (a planner replica in the process, the same
  reader); it skips opening the DuckDB catalog, which the server holds (one writer). The
  server stays up, idle, during the local runs. A fresh job (same spec, new id) is built for
  every repeat, so the server plans every chunk on request as in training. Printed:
  samples/s per client (median over the N clients) and all clients together, and the
  ratio remote/local (target >= 0.9x at 8 clients). The server's CPU seconds are printed too.
- **chunk latency**: every ``ChunkSource.chunk`` call of the throughput runs is timed
  inside the clients (remote: the ``GetChunk`` round trip under the load of N streaming
  clients on the same cores; local: the planner replica), p50/p99; and ``GetChunk``
  called directly through the gRPC stub by one client on an otherwise idle server,
  ``--chunk-calls`` consecutive chunks of a fresh job (each one planned on request), then
  the same chunks again (served from the runtime's cache).
- **feedback acks**: a ``DynamicMixture(..., "ado")`` job (warm-up and refit every
  ``--refit-every`` steps, so several scaling-law refits run during the calls; ``--algorithm``
  picks another plugin); one client process
  streams it remotely while this process sends ``--feedback`` ``client.feedback()`` calls
  back to back (one per step, random per-key losses), timing each acknowledgement (p50 /
  p99 / max; target p99 < 10 ms). The server applies each one (a refit, a mixture change at
  the horizon, the log and the algorithm state persisted) in the background; printed too:
  how long after the last ack the queue had drained and how many mixture changes it made.

Each measurement is repeated ``--repeat`` times (local and remote alternate, their order
swapped every repeat); min / median / max over repeats are printed and the verdicts use
medians. Every value goes to ``benchmarks/results/server-<time>.csv``. On a 2-core machine
all N clients and the server share the cores: this measures the overhead the server adds
to each client, not the server's capacity.

    python benchmarks/server.py [--dp-groups 4] [--workers 2] [--samples 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

RESULTS: list[dict[str, Any]] = []
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- reporting


def record(section: str, metric: str, impl: str, values: list[float], unit: str) -> None:
    for r, v in enumerate(values):
        RESULTS.append(
            {"section": section, "metric": metric, "impl": impl, "repeat": r, "value": v, "unit": unit}
        )


def fmt(ts: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    a, m, b = (x * scale for x in (min(ts), statistics.median(ts), max(ts)))
    return f"min {a:.{digits}f}{unit}  median {m:.{digits}f}{unit}  max {b:.{digits}f}{unit}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- client processes


class TimedChunkSource:
    """Wraps a stream's ChunkSource and times every ``chunk()`` call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def chunk(self, index: int, snapshot: dict[str, Any] | None) -> Any:
        t0 = time.perf_counter()
        out = self.inner.chunk(index, snapshot)
        self.times.append(time.perf_counter() - t0)
        return out


def _open_stream(task: dict[str, Any]) -> tuple[Any, Any, TimedChunkSource]:
    """(client or None, stream, timed chunk source): the stream set up, nothing read yet."""
    from mixtera_core import MixteraClient
    from mixtera_core.job import Job
    from mixtera_core.streaming import JobStream, PlannerChunkSource

    g, w = task["dp_group"], task["worker"]
    if task["mode"] == "remote":
        client = MixteraClient.remote(HOST, task["port"])
        stream = client.stream(task["job_id"], g, 0, w)  # GetJob here
        timed = TimedChunkSource(stream.chunk_source)
    else:
        client = None
        job = Job.load(os.path.join(task["db_dir"], "jobs", task["job_id"]))
        timed = TimedChunkSource(PlannerChunkSource(job))  # what JobStream uses by default
        stream = JobStream(job, g, 0, w)
    stream.chunk_source = timed
    return client, stream, timed


def _stream_fixed(conn: Connection, task: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    client, stream, timed = _open_stream(task)
    setup = time.perf_counter() - t0
    conn.send(("ready", None))
    conn.recv()  # go
    total = task["samples"]
    w0, c0 = time.perf_counter(), time.process_time()
    n = chars = 0
    first = 0.0
    it = iter(stream)
    try:
        for item in it:
            if not n:
                first = time.perf_counter() - w0
            chars += len(item.data)
            n += 1
            if n >= total:
                break
    finally:
        it.close()  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if client is not None:
        client.close()
    return {
        "samples": n,
        "wall": wall,
        "cpu": cpu,
        "first": first,
        "setup": setup,
        "chunk_times": timed.times,
    }


def _stream_until_stopped(conn: Connection, task: dict[str, Any]) -> dict[str, Any]:
    client, stream, timed = _open_stream(task)
    it = iter(stream)
    n = 0
    w0 = time.perf_counter()
    try:
        for _ in it:
            n += 1
            if n == 1:
                conn.send(("ready", None))
            if n % 256 == 0 and conn.poll():
                conn.recv()  # stop
                break
    finally:
        it.close()  # type: ignore[attr-defined]
    wall = time.perf_counter() - w0
    client.close()
    return {"samples": n, "wall": wall, "chunk_times": timed.times}


def worker_main(conn: Connection) -> None:
    """A client process: runs tasks sent by the benchmark until told to exit."""
    import mixtera_core.remote  # noqa: F401 - import cost outside every measurement

    while True:
        kind, task = conn.recv()
        if kind == "exit":
            return
        try:
            out = _stream_fixed(conn, task) if kind == "fixed" else _stream_until_stopped(conn, task)
            conn.send(("done", out))
        except Exception:  # noqa: BLE001 - reported by the benchmark
            conn.send(("error", traceback.format_exc()))


class Pool:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")  # no fork after gRPC has started threads
        self.conns: list[Connection] = []
        self.procs = []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), name=f"bench-client-{i}", daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    @staticmethod
    def expect(conn: Connection, kind: str) -> Any:
        got, payload = conn.recv()
        if got == "error":
            raise RuntimeError(f"client process failed:\n{payload}")
        assert got == kind, (got, kind)
        return payload

    def run_fixed(self, tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
        """All tasks set up, then started together; (results, wall seconds from go to the last done)."""
        for conn, task in zip(self.conns, tasks, strict=False):
            conn.send(("fixed", task))
        used = self.conns[: len(tasks)]
        for conn in used:
            self.expect(conn, "ready")
        t0 = time.perf_counter()
        for conn in used:
            conn.send("go")
        results = [self.expect(conn, "done") for conn in used]
        return results, time.perf_counter() - t0

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit", None))
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


# --------------------------------------------------------------------------- server process


class Server:
    """``python -m mixtera_core.server DB_DIR --port 0`` in a subprocess (as tests/test_server.py)."""

    def __init__(self, db: Path, log: Path, roots: list[Path]) -> None:
        args = [sys.executable, "-m", "mixtera_core.server", str(db), "--port", "0", "--log-level", "WARNING"]
        for r in roots:
            args += ["--allowed-root", str(r)]
        self.log = log
        self._log = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{log.read_text()}")
        self.port = int(line.rsplit(":", 1)[1])

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


# --------------------------------------------------------------------------- benchmarks


def bench_throughput(
    pool: Pool, server: Server, db: Path, args: argparse.Namespace, mixture: dict[str, float]
) -> dict[str, list[float]]:
    from mixtera_core import MixteraClient, Query

    section = "throughput"
    g, w = args.dp_groups, args.workers
    n = g * w
    print(
        f"\nthroughput: {n} clients ({g} dp groups x {w} workers), sample mode (text), chunk_size "
        f"{args.chunk_size}, {args.samples:,} samples per client"
    )
    per_client: dict[str, list[float]] = {"local": [], "remote": []}
    aggregate: dict[str, list[float]] = {"local": [], "remote": []}
    chunk_times: dict[str, list[float]] = {"local": [], "remote": []}
    first: dict[str, list[float]] = {"local": [], "remote": []}
    setup: dict[str, list[float]] = {"local": [], "remote": []}
    cpu_client: dict[str, list[float]] = {"local": [], "remote": []}
    server_cpu: list[float] = []
    with MixteraClient.remote(HOST, server.port) as rc:
        # warm-up, not measured: first-use imports (pyarrow, plugins) and per-process caches
        # (parsed read indexes) in every client process, for both modes alike
        warm = rc.execute(
            Query.for_job("bench-server-warmup"),
            mixture,
            chunk_size=args.chunk_size,
            seed=99,
            on_exhausted="repeat",
            dp_groups=g,
            num_workers=w,
        )
        for mode in ("local", "remote"):
            pool.run_fixed(
                [
                    {
                        "mode": mode,
                        "port": server.port,
                        "db_dir": str(db),
                        "job_id": warm,
                        "dp_group": gi,
                        "worker": wi,
                        "samples": 4 * args.chunk_size,
                    }
                    for wi in range(w)
                    for gi in range(g)
                ]
            )
        for r in range(args.repeat):
            job_id = rc.execute(
                Query.for_job(f"bench-server-r{r}"),
                mixture,
                chunk_size=args.chunk_size,
                seed=r,
                on_exhausted="repeat",
                dp_groups=g,
                num_workers=w,
            )
            order = ("local", "remote") if r % 2 == 0 else ("remote", "local")
            for mode in order:
                tasks = [
                    {
                        "mode": mode,
                        "port": server.port,
                        "db_dir": str(db),
                        "job_id": job_id,
                        "dp_group": gi,
                        "worker": wi,
                        "samples": args.samples,
                    }
                    for wi in range(w)
                    for gi in range(g)
                ]
                s0 = server.cpu()
                results, wall = pool.run_fixed(tasks)
                if mode == "remote":
                    server_cpu.append(server.cpu() - s0)
                rates = [x["samples"] / x["wall"] for x in results]
                per_client[mode].append(statistics.median(rates))
                aggregate[mode].append(sum(x["samples"] for x in results) / wall)
                cpu_client[mode].append(statistics.median(x["cpu"] for x in results))
                first[mode].append(statistics.median(x["first"] for x in results))
                setup[mode].append(statistics.median(x["setup"] for x in results))
                for x in results:
                    chunk_times[mode].extend(x["chunk_times"])
                    assert x["samples"] == args.samples, x["samples"]
                if args.verbose:
                    print(
                        f"    repeat {r} {mode:<6}: per client {fmt(rates, '', 1, 0)} samples/s; "
                        f"all {aggregate[mode][-1]:,.0f} samples/s in {wall:.2f}s"
                    )
    for mode in ("local", "remote"):
        record(section, "per_client_samples_per_s", mode, per_client[mode], "samples/s")
        record(section, "all_clients_samples_per_s", mode, aggregate[mode], "samples/s")
        record(section, "client_cpu_seconds", mode, cpu_client[mode], "s")
        record(section, "time_to_first_sample", mode, first[mode], "s")
        record(section, "setup_seconds", mode, setup[mode], "s")
    record(section, "server_cpu_seconds", "remote", server_cpu, "s")
    names = {
        "local": "local (Job.load + JobStream, planner replica)",
        "remote": "remote (GetJob + GetChunk, client reads)",
    }
    width = max(len(v) for v in names.values())
    for mode in ("local", "remote"):
        print(
            f"  {names[mode]:<{width}}  per client {fmt(per_client[mode], '', 1, 0)} samples/s; "
            f"all clients median {statistics.median(aggregate[mode]):,.0f} samples/s"
        )
    ratios = [rm / lo for rm, lo in zip(per_client["remote"], per_client["local"], strict=True)]
    agg_ratios = [rm / lo for rm, lo in zip(aggregate["remote"], aggregate["local"], strict=True)]
    ratio = statistics.median(per_client["remote"]) / statistics.median(per_client["local"])
    record(section, "ratio_remote_over_local_per_client", "ratio", ratios, "x")
    record(section, "ratio_remote_over_local_all_clients", "ratio", agg_ratios, "x")
    verdict = "met" if ratio >= 0.9 else "NOT met"
    samples_total = args.samples * n * args.repeat
    # CPU per sample, the steadier figure on a loaded machine: remote = client + its share of the server
    cpu_local = statistics.median(cpu_client["local"])
    cpu_remote = statistics.median(cpu_client["remote"]) + statistics.median(server_cpu) / n
    record(section, "cpu_ratio_local_over_remote", "ratio", [cpu_local / cpu_remote], "x")
    print(
        f"  ratio remote/local per-client throughput (medians): {ratio:.2f}x  target >= 0.9x: {verdict}\n"
        f"    per repeat {fmt(ratios, 'x')}; all clients together {fmt(agg_ratios, 'x')}\n"
        f"    client CPU seconds (median client): local {statistics.median(cpu_client['local']):.2f}s, "
        f"remote {statistics.median(cpu_client['remote']):.2f}s; server CPU per remote run "
        f"{fmt(server_cpu)} ({1e6 * sum(server_cpu) / samples_total:.1f} us per sample); by CPU seconds "
        f"(local / (remote + server share)): {cpu_local / cpu_remote:.2f}x\n"
        f"    time to first sample: local {fmt(first['local'], 'ms', 1e3, 0)}; "
        f"remote {fmt(first['remote'], 'ms', 1e3, 0)}\n"
        f"    set-up per client: local Job.load {fmt(setup['local'], 'ms', 1e3, 0)}; "
        f"remote GetJob {fmt(setup['remote'], 'ms', 1e3, 0)}"
    )
    return chunk_times


def bench_chunks(
    server: Server, args: argparse.Namespace, mixture: dict[str, float], in_stream: dict[str, list[float]]
) -> None:
    import grpc

    from mixtera_core import MixteraClient, Query
    from mixtera_core.server import mixtera_pb2 as pb
    from mixtera_core.server import mixtera_pb2_grpc as pb_grpc

    section = "chunk_latency"
    print("\nchunk requests (ChunkSource.chunk / GetChunk round trip)")
    for mode, label in (
        ("remote", f"in stream, remote GetChunk (N={args.dp_groups * args.workers} clients streaming)"),
        ("local", f"in stream, local planner replica (N={args.dp_groups * args.workers} clients)"),
    ):
        ts = in_stream[mode]
        record(section, "in_stream_p50", mode, [pct(ts, 50)], "s")
        record(section, "in_stream_p99", mode, [pct(ts, 99)], "s")
        print(
            f"  {label:<62} p50 {1e3 * pct(ts, 50):6.2f}ms  p99 {1e3 * pct(ts, 99):6.2f}ms  "
            f"max {1e3 * max(ts):6.1f}ms  ({len(ts):,} calls)"
        )
    channel = grpc.insecure_channel(f"{HOST}:{server.port}")
    stub = pb_grpc.MixteraStub(channel)
    planned: dict[str, list[float]] = {"p50": [], "p99": []}
    cached: dict[str, list[float]] = {"p50": [], "p99": []}
    with MixteraClient.remote(HOST, server.port) as rc:
        for r in range(args.repeat):
            job_id = rc.execute(
                Query.for_job(f"bench-server-chunks-r{r}"),
                mixture,
                chunk_size=args.chunk_size,
                seed=r,
                on_exhausted="repeat",
            )
            for out in (planned, cached):  # first pass: planned on request; second: the cache
                times = []
                hint = ""
                for i in range(args.chunk_calls):
                    t0 = time.perf_counter()
                    reply = stub.GetChunk(pb.ChunkRequest(job_id=job_id, index=i, snapshot_json=hint))
                    times.append(time.perf_counter() - t0)
                    hint = reply.before_json
                    assert not reply.ended
                out["p50"].append(pct(times, 50))
                out["p99"].append(pct(times, 99))
    channel.close()
    for name, out in (("planned on request", planned), ("from the cache", cached)):
        impl = "idle_planned" if out is planned else "idle_cached"
        record(section, "p50", impl, out["p50"], "s")
        record(section, "p99", impl, out["p99"], "s")
        label = f"idle server, one caller via the stub, {name}"
        print(
            f"  {label:<62} p50 {fmt(out['p50'], 'ms', 1e3, 2)}\n"
            f"  {'':<62} p99 {fmt(out['p99'], 'ms', 1e3, 2)}  ({args.chunk_calls} calls per repeat)"
        )


def algorithm_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.algorithm == "ado":
        return {"warmup": args.refit_every, "refit_every": args.refit_every, "subsample": 1}
    return {}


def bench_feedback(pool: Pool, server: Server, args: argparse.Namespace, mixture: dict[str, float]) -> None:
    from mixtera_core import MixteraClient, Query
    from mixtera_core.mixture import DynamicMixture

    section = "feedback"
    print(
        f"\nfeedback acks: {args.feedback} client.feedback() calls back to back, DynamicMixture "
        f"{args.algorithm} (refits every {args.refit_every} steps), while one client streams the job remotely"
    )
    p50s, p99s, maxs, drains, changes, stream_rates, server_cpu = [], [], [], [], [], [], []
    rng = random.Random(0)
    rc = MixteraClient.remote(HOST, server.port)
    try:
        for r in range(args.repeat):
            job_id = rc.execute(
                Query.for_job(f"bench-server-feedback-r{r}"),
                DynamicMixture(mixture, args.algorithm, **algorithm_options(args)),
                chunk_size=args.chunk_size,
                seed=r,
                on_exhausted="repeat",
            )
            keys = rc.job(job_id).key_names
            conn = pool.conns[0]
            task = {"mode": "remote", "port": server.port, "job_id": job_id, "dp_group": 0, "worker": 0}
            conn.send(("until", task))
            pool.expect(conn, "ready")  # streaming
            s0 = server.cpu()
            times = []
            for step in range(args.feedback):
                counts = [float(rng.randint(500, 1500)) for _ in keys]
                losses = [c * rng.uniform(1.5, 3.5) for c in counts]
                t0 = time.perf_counter()
                rc.feedback(job_id, step, losses, counts)
                times.append(time.perf_counter() - t0)
            t_last = time.perf_counter()
            report = rc.report(job_id)  # waits for every acknowledged feedback to be applied
            drains.append(time.perf_counter() - t_last)
            server_cpu.append(server.cpu() - s0)
            conn.send("stop")
            out = pool.expect(conn, "done")
            stream_rates.append(out["samples"] / out["wall"])
            status = rc.job_status(job_id)
            if status.get("feedback_errors"):
                raise RuntimeError(f"feedback failed on the server: {status['feedback_errors']}")
            changes.append(len(report.changes))
            p50s.append(pct(times, 50))
            p99s.append(pct(times, 99))
            maxs.append(max(times))
    finally:
        rc.close()
    record(section, "ack_p50", "remote", p50s, "s")
    record(section, "ack_p99", "remote", p99s, "s")
    record(section, "ack_max", "remote", maxs, "s")
    record(section, "drain_seconds_after_last_ack", "remote", drains, "s")
    record(section, "mixture_changes", "remote", [float(c) for c in changes], "changes")
    record(section, "streaming_client_samples_per_s", "remote", stream_rates, "samples/s")
    record(section, "server_cpu_seconds", "remote", server_cpu, "s")
    p99 = statistics.median(p99s)
    verdict = "met" if p99 < 0.010 else "NOT met"
    print(
        f"  ack latency p50 {fmt(p50s, 'ms', 1e3, 2)}\n"
        f"  ack latency p99 {fmt(p99s, 'ms', 1e3, 2)}  target < 10ms: {verdict}\n"
        f"  ack latency max {fmt(maxs, 'ms', 1e3, 1)}\n"
        f"  refits applied: {fmt([float(c) for c in changes], '', 1, 0)} mixture changes per repeat; queue drained "
        f"{fmt(drains, 'ms', 1e3, 0)} after the last ack\n"
        f"  meanwhile the streaming client: {fmt(stream_rates, '', 1, 0)} samples/s; server CPU "
        f"{fmt(server_cpu)}"
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-mb", type=float, default=20, help="MB of text in the corpus")
    ap.add_argument("--frame-lines", type=int, default=256, help="lines per zstd frame (0: one frame a file)")
    ap.add_argument("--dp-groups", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="data-loader workers per dp group")
    ap.add_argument("--samples", type=int, default=30_000, help="samples each client streams")
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--chunk-calls", type=int, default=500, help="GetChunk calls per repeat (idle server)")
    ap.add_argument("--feedback", type=int, default=500, help="feedback calls per repeat")
    ap.add_argument("--algorithm", default="ado", help="mixing algorithm of the feedback job")
    ap.add_argument("--refit-every", type=int, default=100, help="ado: warm-up and refit interval (steps)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="throughput,chunks,feedback", help="comma-separated sections")
    ap.add_argument("--verbose", action="store_true", help="print every repeat")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = time.time()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from streaming import DOMAINS, MIXTURE, OPTIONS, build_corpus

    from mixtera_core import MixteraClient

    load = os.getloadavg()[0]
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load:.2f} at start"
    )
    clients = args.dp_groups * args.workers
    pool = Pool(clients)  # spawned now: their imports overlap the corpus build
    server: Server | None = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            root = Path(tmp) / "corpus"
            root.mkdir()
            t0 = time.perf_counter()
            files = build_corpus(root, args.text_mb, args.frame_lines)
            all_files = [p for d in DOMAINS for p in files[d]]
            size = sum(p.stat().st_size for p in all_files)
            print(
                f"corpus: {args.text_mb:.0f} MB of text, {len(all_files)} shards, {size / 1e6:.1f} MB compressed, "
                f"{args.frame_lines} lines per zstd frame (built in {time.perf_counter() - t0:.1f}s)"
            )
            db = Path(tmp) / "db"
            t0 = time.perf_counter()
            with MixteraClient.local(db) as lc:
                rep = lc.register_dataset("bench", root, parser_options=OPTIONS)
                counts = lc.properties()["language"]
            print(
                f"registered {rep.samples:,} samples in {time.perf_counter() - t0:.1f}s: "
                + ", ".join(f"{d} {counts.get(d, 0):,}" for d in DOMAINS)
            )
            t0 = time.perf_counter()
            server = Server(db, Path(tmp) / "server.log", [root])
            print(f"mixtera-server on {HOST}:{server.port} (started in {time.perf_counter() - t0:.1f}s)")
            in_stream: dict[str, list[float]] = {"local": [], "remote": []}
            if "throughput" in only:
                in_stream = bench_throughput(pool, server, db, args, MIXTURE)
            if "chunks" in only:
                if not in_stream["remote"]:
                    in_stream = {"local": [float("nan")], "remote": [float("nan")]}
                bench_chunks(server, args, MIXTURE, in_stream)
            if "feedback" in only:
                bench_feedback(pool, server, args, MIXTURE)
        except BaseException:
            if server is not None and server.log.exists():
                print("--- server log (tail)\n" + server.log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            pool.close()
            if server is not None:
                rc = server.stop()
                if rc != 0:
                    print(
                        f"mixtera-server exited with {rc}:\n{server.log.read_text()[-4000:]}", file=sys.stderr
                    )
    load_end = os.getloadavg()[0]
    print(f"\nload average {load_end:.2f} at the end; total {time.time() - started:.0f}s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"server-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["section", "metric", "impl", "repeat", "value", "unit"])
        w.writeheader()
        w.writerows(RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
