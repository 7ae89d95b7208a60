"""Streaming throughput, start-up and checkpoint size: ``client.stream(job)`` vs a plain loop.

Builds a 3-domain corpus of zstd-compressed jsonl shards from text every Python
installation ships (default ~60 MB of text, one third per domain):

- ``language=python``: standard-library sources, documents of 2-8 KB (long);
- ``language=c``: CPython's C headers (the stdlib sources if there are none), 0.5-1.5 KB;
- ``language=en``: the language reference of ``help()`` (``pydoc_data/topics.py``), 100-300 bytes;

written 4 shards per domain, each shard a sequence of zstd frames of ``--frame-lines``
lines (as block writers produce; 0 writes one frame per file), and registers them into a
fresh catalog. It trains a byte-level BPE (``--vocab`` 8192) on 4 MB of the text with
``tokenizers`` and saves it as ``tokenizer.json``. Then, in the same run and on the same
files, it measures

- **token mode**: tokens/s that ``client.stream(job)`` delivers (static mixture
  python/c/en = 50/30/20 in tokens, ``seq_len`` 2048, ``chunk_size`` 512,
  ``on_exhausted="repeat"``, EOS after every document) to a loop that touches every
  sequence, over ``--tokens`` tokens; baseline: a plain loop over the same files (one
  open zstd stream per domain, taking the next document from the domain furthest below its
  share of characters, ``json.loads`` + text field), tokenizing batches of 256 with the same
  ``tokenizers`` call the ``hf`` plugin makes (``encode_batch_fast``), appending EOS and
  cutting ``seq_len + 1`` sequences with numpy, until the same number of tokens
  (target: Mixtera >= 0.8x). The same again with tiktoken ``cl100k_base`` when the
  ``tiktoken`` plugin can load it offline (baseline: ``encode_ordinary_batch`` on all cores;
  ``--no-tiktoken`` skips it);
- **sample mode**: samples/s of ``client.stream(job)`` (text output, 50/30/20 in samples)
  vs the plain loop (decompress + ``json.loads`` + text field, the same domain
  interleave in samples), over ``--samples`` samples (target >= 0.9x);
- **checkpoint / restore**: a sample-mode job with ``chunk_size`` 4; after 10 and after
  10,000 consumed chunks, the size of ``json.dumps(stream.state_dict())`` +
  ``json.dumps(client.checkpoint(job))`` and the time to restore (``client.stream(job,
  state=...)`` up to its first item). Both must not grow (ratio late/early ~1);
- **start-up**: ``execute()`` of the token job (index build + token calibration) and the time
  from ``client.stream(job)`` to the first item; peak RSS of the process, for information.

Each timing is repeated ``--repeat`` times, baseline and Mixtera alternating (min / median /
max are printed; the verdict uses the ratio of the wall-clock medians; the CPU seconds of all
threads are printed too, as they are less disturbed by other load on a small machine). Every
measurement goes to ``benchmarks/results/streaming-<time>.csv``. ``--profile`` adds a cProfile
of one Mixtera sample-mode and one token-mode run, over both the consumer and the prefetch
thread (``--only profile`` runs just that). ``--only`` picks sections (tokens, tiktoken,
samples, checkpoint, profile).

    python benchmarks/streaming.py [--tokens 5000000] [--samples 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import csv
import io
import json
import os
import platform
import pstats
import random
import resource
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from mixtera_core import MixteraClient, Query

DOMAINS = ("python", "c", "en")
#: (min, max) characters of a document, per domain
LENGTHS = {"python": (2000, 8000), "c": (500, 1500), "en": (100, 300)}
WEIGHTS = {"python": 0.5, "c": 0.3, "en": 0.2}
MIXTURE = {f"language={d}": w for d, w in WEIGHTS.items()}
OPTIONS = {"language": "meta.language", "source": "meta.source"}
SHARDS_PER_DOMAIN = 4
EOS = "<|endoftext|>"

RESULTS: list[dict[str, Any]] = []


# --------------------------------------------------------------------------- corpus


def _pools() -> dict[str, str]:
    paths = sysconfig.get_paths()
    stdlib, include = Path(paths["stdlib"]), Path(paths["include"])
    python = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py")))
    headers = sorted(include.rglob("*.h")) if include.is_dir() else []
    c = "".join(p.read_text(encoding="utf-8", errors="replace") for p in headers) or python
    en = ""
    topics_file = stdlib / "pydoc_data" / "topics.py"
    if topics_file.is_file():
        tree = ast.parse(topics_file.read_bytes())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
                en = "\n\n".join(v for _, v in sorted(ast.literal_eval(node.value).items()))
    if not en:  # no bundled reference: docstrings are English too
        en = python
    return {"python": python, "c": c, "en": en}


def build_corpus(root: Path, text_mb: float, frame_lines: int, seed: int = 0) -> dict[str, list[Path]]:
    """Shards per domain; every document a random slice of the domain's text pool."""
    rng = random.Random(seed)
    pools = _pools()
    cctx = zstandard.ZstdCompressor(level=3)
    out: dict[str, list[Path]] = {}
    per_domain = int(text_mb * 1e6 / len(DOMAINS))
    for domain in DOMAINS:
        pool = pools[domain]
        lo, hi = LENGTHS[domain]
        docs: list[bytes] = []
        size = 0
        while size < per_domain:
            n = rng.randint(lo, hi)
            start = rng.randrange(0, max(1, len(pool) - n))
            text = pool[start : start + n]
            rec = {"text": text, "meta": {"language": domain, "source": f"bench-{domain}"}, "id": len(docs)}
            docs.append(json.dumps(rec).encode() + b"\n")
            size += len(text)
        out[domain] = []
        for s in range(SHARDS_PER_DOMAIN):
            lines = docs[s::SHARDS_PER_DOMAIN]
            per_frame = frame_lines or len(lines)
            path = root / f"{domain}-{s:03d}.jsonl.zst"
            with open(path, "wb") as fh:
                for i in range(0, len(lines), per_frame):
                    fh.write(cctx.compress(b"".join(lines[i : i + per_frame])))
            out[domain].append(path)
    return out


def train_tokenizer(pools_text: str, path: Path, vocab: int) -> Path:
    import tokenizers as tk

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        (pools_text[i : i + 4096] for i in range(0, len(pools_text), 4096)), trainer=trainer
    )
    tok.save(str(path))
    return path


# --------------------------------------------------------------------------- raw baseline


def _file_texts(paths: list[Path]) -> Iterator[str]:
    """Texts of the files, in order, forever (decompress + json.loads + text field)."""
    while True:
        for path in paths:
            with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
                for line in io.BufferedReader(reader, 1 << 20):
                    yield json.loads(line)["text"]


def mixed_texts(files: dict[str, list[Path]], by_chars: bool) -> Iterator[str]:
    """One open reader per domain; next document from the domain furthest below its share
    (of characters, or of documents)."""
    its = [_file_texts(files[d]) for d in DOMAINS]
    shares = [WEIGHTS[d] for d in DOMAINS]
    got = [0.0] * len(DOMAINS)
    total = 0.0
    ks = range(len(DOMAINS))
    while True:
        k = min(ks, key=lambda i: got[i] - shares[i] * total)
        text = next(its[k])
        n = len(text) if by_chars else 1
        got[k] += n
        total += n
        yield text


def raw_tokens(
    files: dict[str, list[Path]],
    encode: Callable[[list[str]], list[list[int]]],
    eos: int,
    seq_len: int,
    total: int,
) -> tuple[int, int]:
    """Plain loop: read, tokenize in batches of 256, pack seq_len + 1 sequences; touch each."""
    texts = mixed_texts(files, by_chars=True)
    length = seq_len + 1
    carry = np.empty(0, dtype=np.int64)
    delivered = check = 0
    while delivered < total:
        batch = [next(texts) for _ in range(256)]
        ids = encode(batch)
        flat: list[int] = []
        for doc in ids:
            flat += doc
            flat.append(eos)
        buf = np.concatenate([carry, np.array(flat, dtype=np.int64)])
        n = len(buf) // length
        seqs = buf[: n * length].reshape(n, length)
        carry = buf[n * length :]
        for seq in seqs:
            check ^= int(seq[-1])  # touch each sequence
            delivered += length
            if delivered >= total:
                break
    return delivered, check


def raw_samples(files: dict[str, list[Path]], total: int) -> int:
    texts = mixed_texts(files, by_chars=False)
    n = chars = 0
    while n < total:
        chars += len(next(texts))
        n += 1
    return chars


# --------------------------------------------------------------------------- Mixtera


def mixtera_tokens(client: MixteraClient, job: str, total: int) -> tuple[int, int, float]:
    """Tokens delivered, a checksum, and the time to the first sequence."""
    t0 = time.perf_counter()
    delivered = check = 0
    first = 0.0
    it = iter(client.stream(job))
    try:
        for item in it:
            if not first:
                first = time.perf_counter() - t0
            check ^= int(item.tokens[-1])  # touch each sequence
            delivered += len(item.tokens)
            if delivered >= total:
                break
    finally:
        it.close()  # type: ignore[attr-defined]
    return delivered, check, first


def mixtera_samples(client: MixteraClient, job: str, total: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = chars = 0
    first = 0.0
    it = iter(client.stream(job))
    try:
        for item in it:
            if not first:
                first = time.perf_counter() - t0
            chars += len(item.data)
            n += 1
            if n >= total:
                break
    finally:
        it.close()  # type: ignore[attr-defined]
    return chars, first


# --------------------------------------------------------------------------- reporting


def record(section: str, metric: str, impl: str, values: list[float], unit: str) -> None:
    for r, v in enumerate(values):
        RESULTS.append(
            {"section": section, "metric": metric, "impl": impl, "repeat": r, "value": v, "unit": unit}
        )


def fmt(ts: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    a, m, b = (x * scale for x in (min(ts), statistics.median(ts), max(ts)))
    return f"min {a:.{digits}f}{unit}  median {m:.{digits}f}{unit}  max {b:.{digits}f}{unit}"


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1e6 if sys.platform == "darwin" else r / 1e3


class Timer:
    """Wall-clock and CPU seconds (all threads of this process) of a block."""

    def __enter__(self) -> Timer:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def compare(
    section: str,
    unit: str,
    amount: int,
    raw: list[Timer],
    mix: list[Timer],
    target: float,
    raw_name: str,
    mix_name: str,
) -> float:
    """Print throughput of both and the ratio of wall-clock medians (the verdict); CPU seconds
    (all threads) for information, as they are less disturbed by other load on the machine."""
    rw, mw = [t.wall for t in raw], [t.wall for t in mix]
    rc, mc = [t.cpu for t in raw], [t.cpu for t in mix]
    record(section, "wall_seconds", "raw", rw, "s")
    record(section, "wall_seconds", "mixtera", mw, "s")
    record(section, "cpu_seconds", "raw", rc, "s")
    record(section, "cpu_seconds", "mixtera", mc, "s")
    w = max(len(raw_name), len(mix_name))
    for name, ws, cs in ((raw_name, rw, rc), (mix_name, mw, mc)):
        print(
            f"  {name:<{w}}  {fmt(ws)}  {amount / statistics.median(ws):>10,.0f} {unit}/s  "
            f"(cpu median {statistics.median(cs):.2f}s)"
        )
    ratio = statistics.median(rw) / statistics.median(mw)
    per_rep = [r / m for r, m in zip(rw, mw, strict=True)]
    cpu_ratio = statistics.median(rc) / statistics.median(mc)
    record(section, "ratio_mixtera_over_raw", "ratio", per_rep, "x")
    record(section, "cpu_ratio_mixtera_over_raw", "ratio", [cpu_ratio], "x")
    verdict = "met" if ratio >= target else "NOT met"
    print(
        f"  ratio mixtera/raw throughput (wall medians): {ratio:.2f}x  target >= {target}x: {verdict}\n"
        f"    per repeat {fmt(per_rep, 'x')}; by CPU seconds (raw/mixtera): {cpu_ratio:.2f}x"
    )
    return ratio


# --------------------------------------------------------------------------- benchmarks


def bench_tokens(
    client: MixteraClient,
    files: dict[str, list[Path]],
    args: argparse.Namespace,
    name: str,
    tokenizer: tuple[str, str],
    encode: Callable[[list[str]], list[list[int]]],
    eos: int,
) -> None:
    section = f"tokens-{name}"
    t0 = time.perf_counter()
    job = client.execute(
        Query.for_job(f"bench-{name}"),
        MIXTURE,
        chunk_size=args.chunk_size,
        seed=0,
        on_exhausted="repeat",
        tokenizer=tokenizer,
        seq_len=args.seq_len,
    )
    execute_s = time.perf_counter() - t0
    record(section, "execute_seconds", "mixtera", [execute_s], "s")
    resolved = client.job(job)  # type: ignore[attr-defined]
    tps = dict(
        zip((str(k) for k in resolved.component_keys), resolved.tokens_per_sample.tolist(), strict=True)
    )
    print(
        f"\ntoken mode, {name} (seq_len {args.seq_len}, chunk_size {args.chunk_size}, {args.tokens:,} tokens; "
        f"execute() {execute_s:.2f}s, calibrated tokens/sample "
        + ", ".join(f"{k} {t:.0f}" for k, t in tps.items())
        + ")"
    )
    raw: list[Timer] = []
    mix: list[Timer] = []
    first: list[float] = []
    checks = set()
    for _ in range(args.repeat):
        with Timer() as t:
            n_raw, _ = raw_tokens(files, encode, eos, args.seq_len, args.tokens)
        raw.append(t)
        with Timer() as t:
            n_mix, check, ttf = mixtera_tokens(client, job, args.tokens)
        mix.append(t)
        first.append(ttf)
        checks.add(check)
        assert n_raw == n_mix, (n_raw, n_mix)
    assert len(checks) == 1, "the stream is not deterministic"
    compare(
        section, "tokens", n_raw, raw, mix, 0.8, "raw loop (read + encode_batch + pack)", "mixtera stream"
    )
    record(section, "time_to_first_item", "mixtera", first, "s")
    print(f"  time to first sequence: {fmt(first, 'ms', 1e3, 0)}")


def bench_samples(client: MixteraClient, files: dict[str, list[Path]], args: argparse.Namespace) -> None:
    section = "samples"
    job = client.execute(
        Query.for_job("bench-samples"), MIXTURE, chunk_size=args.chunk_size, seed=0, on_exhausted="repeat"
    )
    print(f"\nsample mode (text, chunk_size {args.chunk_size}, {args.samples:,} samples)")
    raw: list[Timer] = []
    mix: list[Timer] = []
    first: list[float] = []
    for _ in range(args.repeat):
        with Timer() as t:
            raw_samples(files, args.samples)
        raw.append(t)
        with Timer() as t:
            _, ttf = mixtera_samples(client, job, args.samples)
        mix.append(t)
        first.append(ttf)
    compare(section, "samples", args.samples, raw, mix, 0.9, "raw loop (read + json.loads)", "mixtera stream")
    record(section, "time_to_first_item", "mixtera", first, "s")
    print(f"  time to first sample: {fmt(first, 'ms', 1e3, 0)}")


def bench_checkpoint(client: MixteraClient, args: argparse.Namespace) -> None:
    section = "checkpoint"
    cs = 4
    job = client.execute(Query.for_job("bench-ckpt"), MIXTURE, chunk_size=cs, seed=0, on_exhausted="repeat")
    print(f"\ncheckpoint / restore (sample mode, chunk_size {cs})")
    stream = client.stream(job)
    it = iter(stream)
    consumed = 0
    states: dict[int, tuple[dict[str, Any], dict[str, Any], tuple[str, str]]] = {}
    t0 = time.perf_counter()
    for marks in (10, args.late_chunks):
        while consumed < marks * cs:
            next(it)
            consumed += 1
        state = json.loads(json.dumps(stream.state_dict()))
        ckpt = json.loads(json.dumps(client.checkpoint(job)))
        nxt = next(it)  # what a restored stream must yield first
        consumed += 1
        states[marks] = (state, ckpt, (nxt.key, nxt.data))
    it.close()  # type: ignore[attr-defined]
    print(f"  consumed {args.late_chunks:,} chunks ({consumed:,} samples) in {time.perf_counter() - t0:.1f}s")
    times: dict[int, list[float]] = {m: [] for m in states}
    for _ in range(args.repeat):  # early and late alternate, so that drift affects both alike
        for marks, (st, _ck, expected) in states.items():
            t0 = time.perf_counter()
            it = iter(client.stream(job, state=st))
            item = next(it)
            times[marks].append(time.perf_counter() - t0)
            it.close()  # type: ignore[attr-defined]
            assert (item.key, item.data) == expected, "the restored stream does not continue where it stopped"
    sizes, restores = {}, {}
    for marks, (st, ck, _) in states.items():
        size = len(json.dumps(st)) + len(json.dumps(ck))
        sizes[marks], restores[marks] = size, statistics.median(times[marks])
        record(section, f"state_bytes_after_{marks}_chunks", "mixtera", [size], "bytes")
        record(section, f"restore_seconds_after_{marks}_chunks", "mixtera", times[marks], "s")
        print(
            f"  after {marks:>6,} chunks: state {size:,} bytes "
            f"(stream {len(json.dumps(st)):,} + job {len(json.dumps(ck)):,}); "
            f"restore to first item {fmt(times[marks], 'ms', 1e3, 1)}"
        )
    early, late = 10, args.late_chunks
    size_ratio = sizes[late] / sizes[early]
    time_ratio = restores[late] / restores[early]
    record(section, "state_bytes_ratio_late_over_early", "ratio", [size_ratio], "x")
    record(section, "restore_time_ratio_late_over_early", "ratio", [time_ratio], "x")
    print(f"  late/early: state size {size_ratio:.2f}x, restore time {time_ratio:.2f}x (flat ~1x)")


def profile_run(title: str, run: Callable[[], Any], top: int) -> None:
    """cProfile of one Mixtera run: the consumer (main) thread, and every thread it starts
    (the prefetch thread) merged, so the work behind the queue is visible too."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: Any) -> None:  # first profile event of a new thread: switch cProfile on there
        p = cProfile.Profile()
        with lock:
            profiles.append(p)
        p.enable()

    main = cProfile.Profile()
    threading.setprofile(start)
    main.enable()
    t0 = time.perf_counter()
    try:
        run()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    print(f"\ncProfile of {title} ({wall:.1f}s under the profiler)")
    for name, profs in (("consumer (main) thread", [main]), ("background threads", profiles)):
        if not profs:
            continue
        for p in profs:
            p.create_stats()
        stats = pstats.Stats(profs[0], stream=sys.stdout)
        for p in profs[1:]:
            stats.add(p)
        print(f"--- {name}: by total time")
        stats.sort_stats("tottime").print_stats(top)
        print(f"--- {name}: by cumulative time")
        stats.sort_stats("cumulative").print_stats(top)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-mb", type=float, default=60, help="MB of text in the corpus")
    ap.add_argument("--frame-lines", type=int, default=256, help="lines per zstd frame (0: one frame a file)")
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--late-chunks", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-tiktoken", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one Mixtera sample- and token-mode run")
    ap.add_argument("--only", default="tokens,tiktoken,samples,checkpoint", help="comma-separated sections")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = time.time()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        t0 = time.perf_counter()
        files = build_corpus(root, args.text_mb, args.frame_lines)
        framing = (
            f"{args.frame_lines} lines per zstd frame" if args.frame_lines else "one zstd frame per file"
        )
        all_files = [p for d in DOMAINS for p in files[d]]
        size = sum(p.stat().st_size for p in all_files)
        print(
            f"corpus: {args.text_mb:.0f} MB of text, {len(all_files)} shards, {size / 1e6:.1f} MB compressed, "
            f"{framing} (built in {time.perf_counter() - t0:.1f}s)"
        )
        with MixteraClient.local(Path(tmp) / "db") as client:
            t0 = time.perf_counter()
            rep = client.register_dataset("bench", root, parser_options=OPTIONS)
            counts = {k: v for k, v in client.properties()["language"].items()}
            print(
                f"registered {rep.samples:,} samples in {time.perf_counter() - t0:.1f}s: "
                + ", ".join(f"{d} {counts.get(d, 0):,}" for d in DOMAINS)
            )
            if {"tokens", "profile"} & only or args.profile:
                import tokenizers as tk

                pools = _pools()
                train_text = "".join(pools[d][: 4_000_000 // len(DOMAINS)] for d in DOMAINS)
                t0 = time.perf_counter()
                tok_path = train_tokenizer(train_text, Path(tmp) / "tokenizer.json", args.vocab)
                backend = tk.Tokenizer.from_file(str(tok_path))
                print(
                    f"trained byte-level BPE, vocab {backend.get_vocab_size()}, in {time.perf_counter() - t0:.1f}s"
                )
                enc = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

                def encode(batch: list[str]) -> list[list[int]]:
                    return [e.ids for e in enc(batch, add_special_tokens=False)]

                eos = backend.token_to_id(EOS)
                assert eos is not None
                if "tokens" in only:
                    bench_tokens(client, files, args, "bpe8k", ("hf", str(tok_path)), encode, eos)
            if "tiktoken" in only and not args.no_tiktoken:
                try:
                    from mixtera_core.job import TokenizerSpec
                    from mixtera_core.streaming import load_tokenizer

                    tt = load_tokenizer(TokenizerSpec("tiktoken", "cl100k_base"))
                except Exception as e:  # noqa: BLE001 - optional: report why and go on
                    print(f"\n(tiktoken cl100k_base skipped: {e})")
                else:
                    # the baseline calls tiktoken itself (the encoding the plugin loaded offline)
                    encoding = tt.encoding  # type: ignore[attr-defined]
                    threads = os.cpu_count() or 1

                    def tt_encode(batch: list[str]) -> list[list[int]]:
                        return encoding.encode_ordinary_batch(batch, num_threads=threads)  # type: ignore[no-any-return]

                    assert tt.eos_id is not None
                    bench_tokens(
                        client, files, args, "cl100k", ("tiktoken", "cl100k_base"), tt_encode, tt.eos_id
                    )
            if "samples" in only:
                bench_samples(client, files, args)
            if "checkpoint" in only:
                bench_checkpoint(client, args)
            if args.profile or "profile" in only:
                sjob = client.execute(
                    Query.for_job("bench-samples"),
                    MIXTURE,
                    chunk_size=args.chunk_size,
                    seed=0,
                    on_exhausted="repeat",
                )
                profile_run(
                    f"the mixtera sample stream ({args.samples:,} samples)",
                    lambda: mixtera_samples(client, sjob, args.samples),
                    25,
                )
                job = client.execute(
                    Query.for_job("bench-bpe8k"),
                    MIXTURE,
                    chunk_size=args.chunk_size,
                    seed=0,
                    on_exhausted="repeat",
                    tokenizer=("hf", str(tok_path)),
                    seq_len=args.seq_len,
                )
                profile_run(
                    f"the mixtera token stream ({args.tokens:,} tokens)",
                    lambda: mixtera_tokens(client, job, args.tokens),
                    25,
                )
    peak = rss_mb()
    record("process", "peak_rss", "mixtera+raw", [peak], "MB")
    print(
        f"\npeak RSS {peak:,.0f} MB (whole process: corpus, both loops, tokenizers); total {time.time() - started:.0f}s"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"streaming-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["section", "metric", "impl", "repeat", "value", "unit"])
        w.writeheader()
        w.writerows(RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
