"""ChunkerIndex build time for N samples (default 10 M) on a synthetic catalog.

The catalog rows are generated inside DuckDB (1,000 files, properties ``language`` and
``license`` in runs of random length, as real shards have), so the script measures the
index build itself, not registration. Baseline, measured in the same run: fetching the
selected (file_id, sample_index) rows sorted by component — the least work any index
built outside the database would start from.

    python benchmarks/index_build.py [--samples 10000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from mixtera_core import MixteraClient, Query
from mixtera_core.catalog import query_arrow
from mixtera_core.index import build_chunker_index


def populate(client: MixteraClient, samples: int, files: int) -> None:
    con = client.catalog.cursor()
    per_file = samples // files
    con.execute("ALTER TABLE samples ADD COLUMN language VARCHAR")
    con.execute("ALTER TABLE samples ADD COLUMN license VARCHAR")
    con.execute("INSERT INTO properties VALUES ('language', 'VARCHAR'), ('license', 'VARCHAR')")
    con.execute(
        "INSERT INTO datasets VALUES (1, 'synthetic', 'generated', 'jsonl', 'fields', '{}', ?, ?, 0)",
        [files, per_file * files],
    )
    con.execute("INSERT INTO dataset_properties VALUES (1, 'language'), (1, 'license')")
    con.execute(
        "INSERT INTO files (id, dataset_id, path, num_samples, num_skipped, size_bytes, read_index) "
        "SELECT i, 1, 'file-' || i, ?, 0, 0, NULL FROM range(?) t(i)",
        [per_file, files],
    )
    # Runs: a sample's language changes every ~50 samples (hash of the run number), license every ~200.
    con.execute(
        """INSERT INTO samples
           SELECT 1, i // ?, i % ?,
                  ['python', 'c', 'en', 'de', 'java'][(1 + hash(i // 50 + 7) % 5)::BIGINT],
                  ['mit', 'psf', 'bsd'][(1 + hash(i // 200 + 3) % 3)::BIGINT]
           FROM range(?) t(i)""",
        [per_file, per_file, per_file * files],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, MixteraClient.local(tmp) as client:
        t0 = time.perf_counter()
        populate(client, args.samples, args.files)
        print(f"generated {args.samples:,} samples in {args.files} files in {time.perf_counter() - t0:.1f}s")
        query = Query.for_job("bench").select(("language", "in", ["python", "c", "en", "de"]))
        con = client.catalog.cursor()
        base, build = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            query_arrow(
                con,
                """SELECT language, license, file_id, sample_index FROM samples
                   WHERE language IN ('python', 'c', 'en', 'de')
                   ORDER BY language, license, file_id, sample_index""",
            )
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            index = build_chunker_index(client.catalog, query)
            build.append(time.perf_counter() - t0)
        print(
            f"index: {index.num_components} components, {index.num_intervals:,} intervals, "
            f"{index.num_samples:,} samples"
        )
        for name, ts in (("baseline sorted fetch", base), ("ChunkerIndex build", build)):
            print(f"{name:<22} min {min(ts):.2f}s  median {statistics.median(ts):.2f}s  max {max(ts):.2f}s")
        print(f"ratio build/baseline (median): {statistics.median(build) / statistics.median(base):.2f}x")


if __name__ == "__main__":
    main()
