"""Stream throughput from object storage vs local disk, in the same run, on the same documents.

Builds the corpus of ``benchmarks/streaming.py`` (3 domains of documents from Python's own
sources, headers and language reference; ``--text-mb`` of text) in each of the three formats:
jsonl.zst shards (zstd frames of 256 lines), parquet files (row groups of 2,048 rows) and
webdataset tars (``txt`` + ``json`` members). It starts moto's S3-compatible server
(``moto_server``) on 127.0.0.1, uploads the files, and puts two TCP proxies in front of it (in
processes of their own): one forwards as is, the other holds every request for ``--latency``
ms (the round trip of a distant store, paid once per range request: on loopback it is
otherwise ~0). Each format is registered twice, from the
local directory and from ``s3://bench/<format>/``, and read as one sample-mode stream
(``client.stream(job)``, text output, 50/30/20 over the domains, chunks of 512 samples,
``on_exhausted="redistribute"``): one whole epoch, every document once, so every byte is
fetched from the store once per run:

- **local**: the files on local disk (warm in the page cache: the fastest a disk gets);
- **s3 0 ms**: through the proxy without added latency;
- **s3 N ms**: the same with ``--latency`` ms per request: what the readahead, the format
  hints and the stream's parallel chunk reads have to hide.

Every remote run starts with an empty block cache (as a new process would) and no disk cache.
Each configuration runs ``--repeat`` times, alternating; the verdict is the ratio of the
wall-clock medians, remote over local (target: >= 0.8x at 20 ms). The range requests and
bytes fetched from the store (``mixtera_core.storage.STATS``) are printed too: never whole
files, each byte once. Requires ``moto[server]`` and ``s3fs`` (``pip install -e ".[dev]"``).

    python benchmarks/remote.py [--text-mb 40] [--latency 20] [--repeat 3] [--formats jsonl,parquet,webdataset]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mixtera_core import MixteraClient, Query, storage  # noqa: E402


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


streaming = _load("mixtera_bench_streaming", ROOT / "benchmarks" / "streaming.py")
s3_server = _load("mixtera_tests_s3_server", ROOT / "tests" / "s3_server.py")

OPTIONS = streaming.OPTIONS
MIXTURE = streaming.MIXTURE


def build_formats(root: Path, text_mb: float) -> dict[str, Path]:
    """The corpus as jsonl.zst (the streaming benchmark's), parquet and webdataset directories."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    jsonl = root / "jsonl"
    jsonl.mkdir(parents=True)
    files = streaming.build_corpus(jsonl, text_mb, frame_lines=256)
    parquet, tars = root / "parquet", root / "webdataset"
    parquet.mkdir()
    tars.mkdir()
    for shards in files.values():
        for path in shards:
            with open(path, "rb") as fh:
                reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
                lines = reader.read().splitlines()
            recs = [json.loads(x) for x in lines if x.strip()]
            stem = path.name.removesuffix(".jsonl.zst")
            table = pa.table({"text": [r["text"] for r in recs], "meta": [r["meta"] for r in recs]})
            pq.write_table(table, parquet / f"{stem}.parquet", row_group_size=2048)
            with tarfile.open(tars / f"{stem}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
                for i, r in enumerate(recs):
                    for ext, data in (("txt", r["text"].encode()), ("json", json.dumps(r["meta"]).encode())):
                        info = tarfile.TarInfo(f"{i:08d}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
    return {"jsonl": jsonl, "parquet": parquet, "webdataset": tars}


def parser_options(fmt: str) -> dict[str, str]:
    if fmt == "webdataset":
        return {"language": "json.language", "source": "json.source"}
    return OPTIONS


def stream_once(client: MixteraClient, job: str) -> tuple[float, int, int, float]:
    """Seconds to stream the whole job, its characters and samples, and seconds to the first."""
    t0 = time.perf_counter()
    n = chars = 0
    first = 0.0
    it = iter(client.stream(job))
    try:
        for item in it:
            if not n:
                first = time.perf_counter() - t0
            data = item.data
            chars += len(data["txt"]) if isinstance(data, dict) else len(data)
            n += 1
    finally:
        it.close()  # type: ignore[attr-defined]
    return time.perf_counter() - t0, chars, n, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-mb", type=float, default=40)
    ap.add_argument("--latency", type=float, default=20.0, help="ms added to every request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--formats", default="jsonl,parquet,webdataset")
    ap.add_argument("--block-kib", type=int, default=0, help="range request size (default: the library's)")
    args = ap.parse_args()
    if args.block_kib:
        storage.configure_io(block_size=args.block_kib << 10)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    server = s3_server.MotoServer()
    proxies = {
        0.0: s3_server.ProxyProcess(server.port),
        args.latency: s3_server.ProxyProcess(server.port, args.latency / 1000),
    }
    os.environ.update(server.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            dirs = build_formats(Path(tmp) / "corpus", args.text_mb)
            for fmt, d in dirs.items():
                server.upload_tree(d, "bench", fmt)
            print(
                "corpus: "
                + ", ".join(
                    f"{fmt} {sum(p.stat().st_size for p in d.iterdir()) / 1e6:.1f} MB"
                    for fmt, d in dirs.items()
                )
                + f" (built and uploaded in {time.perf_counter() - t0:.1f}s)"
            )
            for fmt in args.formats.split(","):
                bench_format(fmt, dirs[fmt], Path(tmp), proxies, args)
    finally:
        for proxy in proxies.values():
            proxy.close()
        server.stop()


def bench_format(
    fmt: str, directory: Path, tmp: Path, proxies: dict[float, Any], args: argparse.Namespace
) -> None:
    local = MixteraClient.local(tmp / f"db-local-{fmt}")
    remote = MixteraClient.local(tmp / f"db-s3-{fmt}")
    local.register_dataset("bench", str(directory), format=fmt, parser_options=parser_options(fmt))
    t0 = time.perf_counter()
    remote.register_dataset(
        "bench", f"s3://bench/{fmt}", format=fmt, parser_options=parser_options(fmt),
        storage_options={"endpoint_url": proxies[args.latency].endpoint},
    )  # fmt: skip
    reg = time.perf_counter() - t0
    options = {"chunk_size": 512, "seed": 0, "on_exhausted": "redistribute"}
    jobs = {c: c.execute(Query.for_job(f"bench-{fmt}"), MIXTURE, **options) for c in (local, remote)}
    configs = [
        ("local", local, None),
        ("s3 0 ms", remote, 0.0),
        (f"s3 {args.latency:g} ms", remote, args.latency),
    ]
    # a process sets up its S3 client once (botocore loads its models: a second or more on a
    # busy machine); done here for both endpoints, outside the timings, and printed
    t0 = time.perf_counter()
    for latency in proxies:
        storage.configure("s3://bench", endpoint_url=proxies[latency].endpoint)
        storage.object_info(next(iter(remote.catalog.files().values())).path)
    setup = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    fetched: dict[str, list[tuple[int, int]]] = {name: [] for name, _, _ in configs}
    firsts: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    chars = samples = 0
    for _ in range(args.repeat):
        for name, client, latency in configs:
            if latency is not None:
                storage.configure("s3://bench", endpoint_url=proxies[latency].endpoint)
                storage.reset()  # a new process: no block cached
            before = storage.STATS.snapshot()
            seconds, chars, samples, first = stream_once(client, jobs[client])
            firsts[name].append(first)
            after = storage.STATS.snapshot()
            times[name].append(seconds)
            fetched[name].append((after["requests"] - before["requests"], after["bytes"] - before["bytes"]))
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(
        f"\n{fmt}: {samples:,} samples ({chars / 1e6:.1f} MB of text) of {size / 1e6:.1f} MB in "
        f"{len(list(directory.iterdir()))} files; S3 registration at {args.latency:g} ms: {reg:.1f}s; "
        f"client set-up: {setup:.2f}s for 2 endpoints"
    )
    base = statistics.median(times["local"])
    for name, _, _ in configs:
        med = statistics.median(times[name])
        requests = statistics.median(r for r, _ in fetched[name])
        got = statistics.median(b for _, b in fetched[name]) / 1e6
        ratio = base / med
        verdict = ""
        if name != "local":
            target = 0.8 if name.endswith(f"{args.latency:g} ms") else None
            verdict = f"  {ratio:.2f}x local" + (
                f" (target >= {target}x: {'met' if ratio >= target else 'NOT met'})" if target else ""
            )
        print(
            f"  {name:<10} median {med:.2f}s (min {min(times[name]):.2f}, max {max(times[name]):.2f})  "
            f"{samples / med:>9,.0f} samples/s  first after {statistics.median(firsts[name]):.2f}s  "
            f"{requests:5.0f} requests, {got:6.1f} MB{verdict}"
        )
    local.close()
    remote.close()


if __name__ == "__main__":
    main()
