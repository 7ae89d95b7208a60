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


def fmt(ts: list[float]) -> str:
    return f"min {min(ts):.2f}s  median {statistics.median(ts):.2f}s  max {max(ts):.2f}s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    ap.add_argument("--index-samples", type=int, default=10_000_000, help="0 skips the index benchmark")
    args = ap.parse_args()
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
