"""Token mode: start-up, token shares, and stream throughput, with and without a token index.

One run, one corpus, one tokenizer, one process (every figure after a warm-up of the
tokenizer and the file cache):

- ``loop``: the plain loop a user would write: per domain a reader (zstd/gzip + ``json.loads``,
  parquet batches), documents drawn by a seeded weighted choice with document probabilities
  ``w_d / t_d`` (``t_d``: mean tokens per document, measured beforehand as a user would),
  batches of 256 documents through ``encode_batch``, EOS, cut into ``seq_len + 1`` sequences
  (``t_d`` is measured on every document: the best the peers can be given);
- ``hf``: Hugging Face ``datasets``: ``load_dataset(..., streaming=True)`` per domain,
  ``interleave_datasets(probabilities=w_d / t_d)``, one batched ``map`` that tokenizes and
  packs (the ``group_texts`` recipe);
- ``fly``: ``client.execute(..., tokenizer=...)`` + ``client.stream`` without a token index
  (token counts estimated from the sizes registration recorded);
- ``index``: the same after ``client.tokenize(...)`` (counted separately: it is done once per
  corpus and tokenizer), streams reading token ids from the memory-mapped index.

Printed: start-up (``execute`` to the first sequence) against the time the loop takes for
300,000 tokens; the largest share error over the first 1,000,000 tokens and over the whole
run (percentage points; documents of up to ~5,000 tokens move a 1 M-token share by up to
~0.25 points while they stream, whatever the plan);
tokens/s over ``--tokens`` tokens (and over their second half: Mixtera's estimate measures its
later stages in the first); ratios to the loop and to HF. The corpus is the test
suite's ``skewed_corpus`` (shards that differ 100x in document length and in script inside
every component, jsonl.zst / jsonl.gz / parquet), built under ``--out``.

    python benchmarks/tokens.py [--tokens 4000000] [--out /tmp/mixtera-tokens]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"lang=prose": 0.3, "lang=code": 0.2, "lang=c": 0.5}
DOMAINS = ["prose", "code", "c"]
SEQ_LEN = 2048
STARTUP_TOKENS = 300_000
SHARE_TOKENS = 1_000_000


def _conftest() -> Any:
    spec = importlib.util.spec_from_file_location("mixtera_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(out: Path) -> tuple[Any, Path, dict[str, list[Path]]]:
    import tokenizers as tk

    conf = _conftest()
    data = out / "data"
    corpus = conf.skewed_corpus(data)
    tok_path = out / "tokenizer.json"
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=8192,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = conf.stdlib_text(2_000_000)
    tok.train_from_iterator((text[i : i + 4096] for i in range(0, len(text), 4096)), trainer=trainer)
    tok.save(str(tok_path))
    files = {d: sorted((data / d).iterdir()) for d in DOMAINS}
    return corpus, tok_path, files


# ------------------------------------------------------------------------- the baselines


def read_docs(path: Path) -> Iterator[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
            yield from batch.column(0).to_pylist()
        return
    raw = path.read_bytes()
    if path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    else:
        data = gzip.decompress(raw)
    for line in data.splitlines():
        if line.strip():
            yield json.loads(line)["text"]


def forever(paths: list[Path]) -> Iterator[str]:
    while True:
        for p in paths:
            yield from read_docs(p)


def mean_tokens(tok: Any, files: dict[str, list[Path]]) -> dict[str, float]:
    """Mean tokens per document of each domain over *all* its documents: the best document
    probabilities the peers can be given (an oracle: a user would sample, and the first
    documents of a domain's first shard are far from its mean on this corpus)."""
    out = {}
    for d in DOMAINS:
        docs = [t for p in files[d] for t in read_docs(p)]
        out[d] = float(np.mean([len(e.ids) for e in tok.encode_batch_fast(docs)])) + 1
    return out


def loop_stream(tok: Any, files: dict[str, list[Path]], probs: np.ndarray) -> Iterator[np.ndarray]:
    """Documents by a seeded weighted draw, batch-tokenized, packed: (tokens, domain of each)."""
    rng = np.random.default_rng(0)
    sources = [forever(files[d]) for d in DOMAINS]
    eos = tok.token_to_id("<|endoftext|>")
    length = SEQ_LEN + 1
    buf_t: list[np.ndarray] = []
    buf_d: list[np.ndarray] = []
    held = 0
    while True:
        picks = rng.choice(len(DOMAINS), size=256, p=probs)
        docs = [next(sources[k]) for k in picks.tolist()]
        for k, enc in zip(picks.tolist(), tok.encode_batch_fast(docs), strict=True):
            ids = np.asarray([*enc.ids, eos], dtype=np.int64)
            buf_t.append(ids)
            buf_d.append(np.full(len(ids), k))
            held += len(ids)
        if held >= length:
            flat_t, flat_d = np.concatenate(buf_t), np.concatenate(buf_d)
            n = len(flat_t) // length
            for i in range(n):
                yield flat_t[i * length : (i + 1) * length], flat_d[i * length : (i + 1) * length]
            buf_t, buf_d = [flat_t[n * length :]], [flat_d[n * length :]]
            held = len(buf_t[0])


def hf_stream(tok_path: Path, files: dict[str, list[Path]], probs: np.ndarray) -> Iterator[Any]:
    import datasets
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    tok = Tokenizer.from_file(str(tok_path))
    eos = tok.token_to_id("<|endoftext|>")
    length = SEQ_LEN + 1
    parts = []
    for k, d in enumerate(DOMAINS):
        paths = [str(p) for p in files[d]]
        kind = "parquet" if paths[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(kind, data_files=paths, split="train", streaming=True).select_columns(
            ["text"]
        )
        # repeated without end, as the other streams do (the corpus is smaller than the run)
        parts.append(ds.map(lambda b, k=k: {"domain": [k] * len(b["text"])}, batched=True).repeat(None))
    mixed = datasets.interleave_datasets(
        parts, probabilities=list(probs), seed=0, stopping_strategy="all_exhausted"
    )

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        ids = [[*e.ids, eos] for e in tok.encode_batch_fast(batch["text"])]
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64)
        dom = np.repeat(batch["domain"], [len(x) for x in ids])
        n = len(flat) // length
        return {
            "tokens": list(flat[: n * length].reshape(n, length)),
            "domains": list(dom[: n * length].reshape(n, length)),
        }

    packed = mixed.map(pack, batched=True, batch_size=1000, remove_columns=["text", "domain"])
    for ex in packed:
        yield np.asarray(ex["tokens"]), np.asarray(ex["domains"])


# ------------------------------------------------------------------------- measuring


def measure(name: str, make: Any, budget: int, domain_of: Any) -> dict[str, Any]:
    """start-up (to the first sequence), shares over SHARE_TOKENS, tokens/s over ``budget``."""
    t0 = time.perf_counter()
    it = make()
    counts = np.zeros(len(DOMAINS))
    first = None
    t_startup_tokens = None
    total = 0
    shares = None
    t1 = t_half = None
    half = 0
    for item in it:
        now = time.perf_counter()
        if first is None:
            first = now - t0
            t1 = now
        doms = domain_of(item)
        counts += np.bincount(doms, minlength=len(DOMAINS))
        total += len(doms)
        if t_startup_tokens is None and total >= STARTUP_TOKENS:
            t_startup_tokens = now - t0
        if shares is None and total >= SHARE_TOKENS:
            shares = counts / counts.sum()
        if t_half is None and total >= budget // 2:
            t_half, half = now, total
        if total >= budget:
            break
    assert t1 is not None and t_half is not None and first is not None and shares is not None
    end = time.perf_counter()
    rate = (total - SEQ_LEN - 1) / (end - t1)
    target = np.asarray(list(WEIGHTS.values()))
    return {
        "name": name,
        "startup_s": first,
        "to_300k_s": t_startup_tokens,
        "tokens_per_s": rate,
        "steady_per_s": (total - half) / (end - t_half),
        "share_err_pp": float(np.abs(shares - target).max() * 100),
        "share_err_all_pp": float(np.abs(counts / counts.sum() - target).max() * 100),
        "shares": np.round(shares * 100, 2).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4_000_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/mixtera-bench-tokens"))
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    import shutil

    from tokenizers import Tokenizer

    sys.path.insert(0, str(ROOT))
    from mixtera_core import MixteraClient, Query

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    corpus, tok_path, files = build(args.out)
    tok = Tokenizer.from_file(str(tok_path))
    client = MixteraClient.local(args.out / "db")
    for name, location, fmt, fields in corpus["register"]:
        client.register_dataset(name, location, format=fmt, parser_options=fields)
    t = time.perf_counter()
    tpd = mean_tokens(tok, files)
    calib_s = time.perf_counter() - t
    w = np.asarray([WEIGHTS[f"lang={d}"] for d in DOMAINS])
    probs = w / np.asarray([tpd[d] for d in DOMAINS])
    probs /= probs.sum()
    print(f"corpus: {args.out / 'data'}; tokenizer: BPE 8192; seq_len {SEQ_LEN}; mixture {WEIGHTS}")
    print(f"peers' document probabilities from every document's tokens (an oracle): {calib_s:.2f}s")
    # warm the file cache and the tokenizer
    for _ in zip(range(50), loop_stream(tok, files, probs), strict=False):
        pass

    results = []
    results.append(measure("loop", lambda: loop_stream(tok, files, probs), args.tokens, lambda x: x[1][1:]))
    if not args.skip_hf:
        results.append(
            measure("hf", lambda: hf_stream(tok_path, files, probs), args.tokens, lambda x: x[1][1:])
        )
    key_domain = None

    def mixtera(job_id: str) -> Iterator[Any]:
        job = client.execute(
            Query.for_job(job_id),
            WEIGHTS,
            tokenizer=("hf", str(tok_path)),
            seq_len=SEQ_LEN,
            on_exhausted="repeat",
        )
        return iter(client.stream(job))

    # key ids follow the mixture's key order, which is DOMAINS' order here
    key_domain = np.arange(len(DOMAINS))
    results.append(measure("fly", lambda: mixtera("fly"), args.tokens, lambda s: key_domain[s.key_ids[1:]]))
    t = time.perf_counter()
    report = client.tokenize(DOMAINS, ("hf", str(tok_path)))
    tokenize_s = time.perf_counter() - t
    results.append(
        measure("index", lambda: mixtera("index"), args.tokens, lambda s: key_domain[s.key_ids[1:]])
    )
    print(f"token index: {report}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print()
    print(
        f"{'':6} {'start-up':>9} {'300k tok':>9} {'tokens/s':>12} {'2nd half/s':>12} {'err 1M':>8}"
        f" {'err all':>8}  shares at 1M (prose/code/c %)"
    )
    for r in results:
        print(
            f"{r['name']:6} {r['startup_s']:>8.3f}s {r['to_300k_s']:>8.3f}s {r['tokens_per_s']:>12,.0f} "
            f"{r['steady_per_s']:>12,.0f} {r['share_err_pp']:>6.2f}pp {r['share_err_all_pp']:>6.2f}pp  {r['shares']}"
        )
    by = {r["name"]: r for r in results}
    loop = by["loop"]
    print()
    for name in ("fly", "index"):
        r = by[name]
        print(
            f"{name}: start-up / loop's 300k tokens = {r['startup_s'] / loop['to_300k_s']:.2f}x (target < 1); "
            f"throughput / loop = {r['tokens_per_s'] / loop['tokens_per_s']:.1f}x"
            + (f", / hf = {r['tokens_per_s'] / by['hf']['tokens_per_s']:.1f}x" if "hf" in by else "")
            + f"; 2nd half / loop's = {r['steady_per_s'] / loop['steady_per_s']:.1f}x"
        )
    print(
        f"index / fly throughput = {by['index']['tokens_per_s'] / by['fly']['tokens_per_s']:.1f}x; "
        f"tokenize once: {tokenize_s:.2f}s"
    )
    client.close()


if __name__ == "__main__":
    main()
