"""Registration throughput: jsonl.zst with the ``fields`` parser vs a plain Python scan.

Builds N samples (default 1 M) of ~300 bytes of real text (the standard library's
sources) with ``meta.language/license/source`` fields, as zstd-compressed jsonl shards,
then measures in the same run:

- baseline: for every shard, stream-decompress and ``json.loads`` each line in a plain
  loop (the least any indexer that looks at every record must do);
- Mixtera: ``client.register_dataset(...)`` into a fresh catalog (scan, parse, extract
  the properties, record line offsets, insert into DuckDB, commit).

and prints samples/s of both and the ratio of times (target: registration <= 2x the
raw scan). Then it runs the ChunkerIndex build benchmark (``index_build.py``).

    python benchmarks/registration.py [--samples 1000000] [--shards 8] [--repeat 3]
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


def register(root: Path, db: Path) -> int:
    with MixteraClient.local(db) as client:
        return client.register_dataset("bench", root, parser_options=OPTIONS).samples


def fmt(ts: list[float]) -> str:
    return f"min {min(ts):.2f}s  median {statistics.median(ts):.2f}s  max {max(ts):.2f}s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--index-samples", type=int, default=10_000_000, help="0 skips the index benchmark")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        t0 = time.perf_counter()
        paths = build_corpus(root, args.samples, args.shards)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"corpus: {args.samples:,} samples, {len(paths)} shards, {size / 1e6:.1f} MB compressed "
            f"(built in {time.perf_counter() - t0:.1f}s)"
        )
        raw, reg = [], []
        for r in range(args.repeat):
            t0 = time.perf_counter()
            n_raw = raw_scan(paths)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n_reg = register(root, Path(tmp) / f"db{r}")
            reg.append(time.perf_counter() - t0)
            assert n_raw == n_reg == args.samples, (n_raw, n_reg)
        print(
            f"raw scan (decompress + json.loads)  {fmt(raw)}  {args.samples / statistics.median(raw):,.0f} samples/s"
        )
        print(
            f"mixtera register (fields parser)    {fmt(reg)}  {args.samples / statistics.median(reg):,.0f} samples/s"
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
