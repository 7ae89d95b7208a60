"""Registration throughput: jsonl.zst with the ``fields`` parser vs a plain Python scan.

Builds N samples (default 1 M) of ~300 bytes of real text (the standard library's
sources) with ``meta.language/license/source`` fields, as zstd-compressed jsonl shards,
then measures in the same run:

- baseline: for every shard, stream-decompress and ``json.loads`` each line in a plain
  loop (the least any indexer that looks at every record must do);
- Mixtera: ``client.register_dataset(...)`` into a fresh catalog (scan, parse, extract
  the properties, record line offsets, insert into DuckDB, commit).

and prints samples/s of both, the CPU seconds of registration (all threads; steadier
than wall time when other processes share the cores) and the ratio of times (target:
registration <= 2x the raw scan). Then it runs the ChunkerIndex build benchmark
(``index_build.py``).

``--format parquet`` writes the same records as parquet shards (one row group each) and
registers those; the baseline is then ``pyarrow.parquet.read_table`` of every shard (all
columns decoded, no Python per row).

    python benchmarks/registration.py [--samples 1000000] [--shards 8] [--repeat 3] [--format jsonl|parquet]

``--executor ray`` measures the Ray executor next to the local one instead: one corpus of
``--samples`` samples (default then 200,000) cut into each of ``--files`` file counts (default
8, 64, 512), registered with the local executor (the baseline, same run), with Ray at its
default grouping of small files, and with Ray at one task per file. A local Ray instance with
2 CPUs is started once (its start-up is reported on its own). It prints the time of each, the
ratio to the local executor, and the cost per file: the slope of time over files between the
smallest and largest count, which is the per-file (per-task) overhead; from these it projects,
on paper, the scan time on N machines.

    python benchmarks/registration.py --executor ray [--samples 200000] [--files 8,64,512]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import zstandard

from mixtera_core import MixteraClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import index_build  # noqa: E402

OPTIONS = {"language": "meta.language", "license": "meta.license", "source": "meta.source"}


def text_pool() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pool = []
    for path in sorted(stdlib.glob("*.py"))[:200]:
        data = path.read_text(encoding="utf-8", errors="replace")
        pool.extend(data[i : i + 300] for i in range(0, len(data) - 300, 300))
    return pool


def build_corpus(root: Path, samples: int, shards: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    pool = text_pool()
    langs, licenses = ["python", "c", "en", "de", "java"], ["mit", "psf", "bsd"]
    per = samples // shards
    paths = []
    for s in range(shards):
        lines = []
        for i in range(per):
            rec = {
                "id": s * per + i,
                "text": pool[rng.randrange(len(pool))],
                "meta": {
                    "language": langs[(i // 40) % 5],
                    "license": rng.choice(licenses),
                    "source": f"shard{s}",
                },
            }
            lines.append(json.dumps(rec))
        path = root / f"shard-{s:03d}.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(("\n".join(lines) + "\n").encode()))
        paths.append(path)
    return paths


def raw_scan(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                if line.strip():
                    json.loads(line)
                    n += 1
    return n


def to_parquet(paths: list[Path]) -> list[Path]:
    """Rewrite the jsonl.zst shards as parquet shards (same records, one row group each)."""
    out = []
    for path in paths:
        data = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 32)
        table = pajson.read_json(pa.BufferReader(data))
        target = path.with_name(path.name.replace(".jsonl.zst", ".parquet"))
        pq.write_table(table, target, row_group_size=max(1, table.num_rows))
        path.unlink()
        out.append(target)
    return out


def raw_read_parquet(paths: list[Path]) -> int:
    return sum(pq.read_table(path).num_rows for path in paths)


def register(root: Path, db: Path, fmt: str) -> tuple[int, float]:
    """Register the corpus; returns (samples, CPU seconds of the registration)."""
    with MixteraClient.local(db) as client:
        c0 = time.process_time()
        n = client.register_dataset("bench", root, format=fmt, parser_options=OPTIONS).samples
        return n, time.process_time() - c0


def build_split(root: Path, samples: int, files: int) -> None:
    """The corpus of build_corpus, ``samples`` samples in ``files`` shards."""
    root.mkdir(parents=True)
    build_corpus(root, samples, files)


def ray_scaling(samples: int, file_counts: list[int], repeat: int) -> None:
    import ray

    from mixtera_core.ray_executor import RayExecutor

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local instance, 2 CPUs): {time.perf_counter() - t0:.1f}s (paid once per process)")
    configs = [
        ("local executor (2 threads)", "local"),
        ("ray, default grouping", RayExecutor()),
        ("ray, 1 file per task", RayExecutor(files_per_task=1)),
    ]
    times: dict[str, dict[int, float]] = {name: {} for name, _ in configs}
    scans: dict[str, dict[int, float]] = {name: {} for name, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        # warm the Ray workers (process start-up, imports) so that the first size does not pay it
        warm = Path(tmp) / "warm"
        build_split(warm, 2000, 4)
        with MixteraClient.local(Path(tmp) / "warmdb") as client:
            client.register_dataset("w", warm, parser_options=OPTIONS, executor="ray")
        for files in file_counts:
            root = Path(tmp) / f"corpus{files}"
            build_split(root, samples, files)
            for name, executor in configs:
                runs, scan = [], []
                for r in range(repeat):
                    with MixteraClient.local(
                        Path(tmp) / f"db-{files}-{len(runs)}-{abs(hash(name))}-{r}"
                    ) as c:
                        t = time.perf_counter()
                        report = c.register_dataset("b", root, parser_options=OPTIONS, executor=executor)
                        runs.append(time.perf_counter() - t)
                        scan.append(report.scan_seconds)
                        assert report.samples == samples // files * files
                times[name][files] = statistics.median(runs)
                scans[name][files] = statistics.median(scan)
    ray.shutdown()
    base = times[configs[0][0]]
    print(
        f"\n{samples:,} samples; median of {repeat}; time = whole registration (scan + insert), scan = executor part"
    )
    print(f"{'':30s}" + "".join(f"{f'{n} files':>26s}" for n in file_counts))
    for name, _ in configs:
        cells = [
            f"{times[name][n]:6.2f}s scan {scans[name][n]:5.2f}s {times[name][n] / base[n]:4.2f}x"
            for n in file_counts
        ]
        print(f"{name:30s}" + "".join(f"{c:>26s}" for c in cells))
    lo, hi = file_counts[0], file_counts[-1]
    print(
        "\ncost per file (slope of the scan time from the smallest to the largest file count, same samples):"
    )
    for name, _ in configs:
        print(f"  {name:30s}{(scans[name][hi] - scans[name][lo]) / (hi - lo) * 1000:7.2f} ms/file")
    slope = {name: (scans[name][hi] - scans[name][lo]) / (hi - lo) for name, _ in configs}
    # what a Ray task costs on top of scanning its file (a core's time, spread over the cluster)
    extra = max(0.0, slope["ray, 1 file per task"] - slope[configs[0][0]])
    scan_local = scans[configs[0][0]][hi]
    insert = times[configs[0][0]][hi] - scan_local
    print(
        f"\non paper, {hi} files of {samples // hi:,} samples: the scan spreads over every core of the cluster, "
        f"the insert ({insert:.2f}s here, {insert / hi * 1000:.1f} ms/file) stays on the driver; a task costs "
        f"~{extra * 1000:.1f} ms of a core more than scanning its file in a thread"
    )
    for machines in (1, 4, 16, 64):
        cores = 2 * machines
        est = (scan_local * 2 + extra * hi) / cores + insert
        print(
            f"  {machines:3d} machines x 2 cores: ~{est:.2f}s (scan {scan_local * 2 / cores:.2f}s + task overhead "
            f"{extra * hi / cores:.2f}s + insert {insert:.2f}s)"
        )


def fmt(ts: list[float]) -> str:
    return f"min {min(ts):.2f}s  median {statistics.median(ts):.2f}s  max {max(ts):.2f}s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    ap.add_argument("--index-samples", type=int, default=10_000_000, help="0 skips the index benchmark")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--files", default="8,64,512", help="file counts for --executor ray")
    args = ap.parse_args()
    if args.executor == "ray":
        samples = args.samples if "--samples" in sys.argv else 200_000
        ray_scaling(samples, [int(x) for x in args.files.split(",")], args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        t0 = time.perf_counter()
        paths = build_corpus(root, args.samples, args.shards)
        if args.format == "parquet":
            paths = to_parquet(paths)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"corpus: {args.samples:,} samples, {len(paths)} shards, {size / 1e6:.1f} MB compressed "
            f"(built in {time.perf_counter() - t0:.1f}s)"
        )
        raw, reg, cpu = [], [], []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            n_raw = raw_scan(paths) if args.format == "jsonl" else raw_read_parquet(paths)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n_reg, cpu_s = register(root, Path(tmp) / f"db{r}", args.format)
            reg.append(time.perf_counter() - t0)
            cpu.append(cpu_s)
            assert n_raw == n_reg == args.samples, (n_raw, n_reg)
        raw_name = (
            "raw scan (decompress + json.loads)" if args.format == "jsonl" else "raw read (pq.read_table)"
        )
        print(f"{raw_name:36s}{fmt(raw)}  {args.samples / statistics.median(raw):,.0f} samples/s")
        print(
            f"mixtera register (fields parser)    {fmt(reg)}  {args.samples / statistics.median(reg):,.0f} samples/s"
            f"  (cpu median {statistics.median(cpu):.2f}s)"
        )
        print(
            f"ratio register/raw (median): {statistics.median(reg) / statistics.median(raw):.2f}x  (target <= 2x)"
        )
    if args.index_samples:
        print()
        sys.argv = [sys.argv[0], "--samples", str(args.index_samples)]
        index_build.main()


if __name__ == "__main__":
    main()
