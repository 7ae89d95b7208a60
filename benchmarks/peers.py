"""Mixtera next to the tools users would otherwise pick: same corpus, same mixture, same tokenizer.

Peers (``--peers``, all by default):

- ``mixtera``: ``client.execute(query, StaticMixture, tokenizer=("hf", tokenizer.json), seq_len=...)``
  and ``client.stream(job)``; with workers ``MixteraDataset`` + ``MixteraDataLoader``;
- ``hf``: Hugging Face ``datasets``: ``load_dataset("json", streaming=True)`` per domain straight
  from the ``jsonl.zst`` shards, ``interleave_datasets(probabilities=...)``, then one batched
  ``map`` (1000 documents) that tokenizes and cuts ``seq_len + 1`` blocks, dropping each batch's
  remainder (the ``group_texts`` recipe of the transformers examples); resumed with
  ``IterableDataset.state_dict()``; with workers a torch ``DataLoader`` over it;
- ``mosaic``: MosaicML ``streaming``: the shards converted to MDS once per domain (preparation,
  timed), one ``Stream(proportion=...)`` per domain in a shuffled ``StreamingDataset``;
  resumed with ``StreamingDataset.state_dict(num_samples, from_beginning=True)``;
- ``grain``: Google ``grain``: the shards converted to ArrayRecord (preparation, timed),
  ``MapDataset.source(...).shuffle().repeat()`` per domain, ``MapDataset.mix(weights)``,
  ``to_iter_dataset()`` and a packing ``IterDataset`` with ``get_state``/``set_state``; with
  workers ``mp_prefetch(MultiprocessingOptions(num_workers))``;
- ``loop``: a hand-written loop: one zstd + ``json.loads`` reader per domain, a deterministic
  weighted round robin over the domains, the same packer; its checkpoint is the line number in
  each domain's current file (resuming re-reads the file up to it).

The peers that get no packing of their own (mosaic, grain, loop) share one packer: batches of
256 documents through ``Tokenizer.encode_batch_fast`` (the call Mixtera's ``hf`` tokenizer
plugin makes), EOS after every document, ``seq_len + 1`` sequences with the domain of every
token, leftovers carried into the next batch. Its checkpoint is the source's state before the
batch the pending leftovers came from plus two counters (restoring re-tokenizes at most two
batches). Mixtera mixes in *tokens* by itself; the peers mix *documents*, so they are given
document probabilities ``w_d / t_d`` (``t_d``: mean tokens per document of domain ``d``,
measured on 512 documents, timed and counted as their preparation), which is what a user would
have to do to get a token mixture out of them.

**Corpus**: the 3-domain corpus of ``benchmarks/streaming.py`` (the text sources of the demo
corpus -- standard-library sources, CPython headers, the language reference -- cut into
documents of 2-8 KB, 0.5-1.5 KB and 100-300 bytes), ``--text-mb`` MB of text in 4 ``jsonl.zst``
shards per domain, and a byte-level BPE (vocab 8192) trained on it. Both are cached under
``OUT/cache/`` between runs. Mixture ``python/c/en = 50/30/20`` in tokens, ``seq_len`` 2048.

**Measured** per peer and repeat, every figure in a subprocess of its own (so peak RSS is per
peer; every subprocess imports torch, numpy and tokenizers first, as a trainer would):

- ``prep_s``: preparation outside the loop: Mixtera ``register_dataset`` into a fresh catalog;
  MDS / ArrayRecord conversion plus the probability calibration; calibration alone for hf and loop;
- single process: ``ttfb_s`` (building the pipeline to the first sequence; for Mixtera that
  includes ``execute()``: index build and token calibration), ``tokens_per_s`` (after the first
  sequence, over ``--tokens`` training tokens, ``seq_len`` per sequence), ``fidelity_pp`` (the
  largest absolute difference between target and delivered token share of a domain over the
  first ``--fidelity-tokens`` tokens, in percentage points; ``share_<domain>`` are the shares),
  ``rss_mb`` (peak RSS of the process);
- ``--workers`` DataLoader workers (``_w`` suffix): ``ttfb_w_s``, ``tokens_per_s_w``,
  ``fidelity_w_pp`` and ``rss_w_mb`` (peak of the summed RSS of the process and its workers,
  sampled every 50 ms with psutil; shared pages count once per process);
- checkpoint (single process): ``state_bytes`` (JSON of the state at the late position;
  Mixtera: ``stream.state_dict()`` + ``client.checkpoint(job)``), ``resume_late_s`` /
  ``resume_early_s`` (a fresh pipeline restored from the state taken after ``--tokens`` tokens /
  after the first sequence, to its first sequence, in a new process after one warm-up start) and
  ``resume_exact`` (1 if that first sequence equals the one the uninterrupted run yielded next).

Every figure is also printed as a ratio to Mixtera's in the same repeat (``peer / mixtera``:
above 1 means the peer's number is larger), with min / median / max over ``--repeats``.
Results go to ``OUT/peers-<time>.csv`` (every measurement), ``OUT/peers-<time>-summary.csv``
and ``OUT/peers-<time>.png``. A peer that is not installed or fails is reported with the
reason, never left out. ``--profile`` writes a cProfile of Mixtera's single-process stream
(consumer and background threads) to ``OUT/profile-mixtera-<time>.txt``.

    python3 -m venv .venv-bench && . .venv-bench/bin/activate   # a venv of its own (pins differ)
    pip install torch==2.14.1 torchvision==0.29.1   # first: MosaicML imports torchvision
    pip install -e ".[bench]"
    python benchmarks/peers.py [--repeats 3] [--text-mb 300] [--tokens 4000000] [--peers ...]
    python benchmarks/peers.py --quick          # a tiny corpus, one repeat: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# run as a script, benchmarks/ is sys.path[0] and its streaming.py would shadow MosaicML's package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
DOMAINS = ("python", "c", "en")
WEIGHTS = {"python": 0.5, "c": 0.3, "en": 0.2}
MIXTURE = {f"language={d}": w for d, w in WEIGHTS.items()}
OPTIONS = {"language": "meta.language", "source": "meta.source"}
EOS = "<|endoftext|>"
PEERS = ("mixtera", "hf", "mosaic", "grain", "loop")
TITLES = {
    "mixtera": "Mixtera (client.stream / MixteraDataLoader)",
    "hf": "HF datasets (streaming + interleave_datasets)",
    "mosaic": "MosaicML streaming (MDS + weighted Streams)",
    "grain": "Google grain (ArrayRecord + MapDataset.mix)",
    "loop": "hand-written loop (zstd + json.loads)",
}
PACK_DOCS = 256  # documents per tokenizer batch in the shared packer
#: MosaicML's default "py1e" shuffles within windows of a few shards: with this corpus (6 MDS
#: shards of 64 MB) the first 1 M tokens are then ~81/16/3 instead of 50/30/20. "py1br" mixes
#: the streams over the whole epoch, as the proportions intend.
MOSAIC_SHUFFLE = "py1br"
#: grain's default ReadOptions (16 threads, 500 prefetched elements) cost ~2x in throughput here:
#: its prefetch iterator polls every buffered future per element; 4 threads / 64 elements were best.
GRAIN_READ = {"num_threads": 4, "prefetch_buffer_size": 64}
HF_MAP_DOCS = 1000  # documents per batched map in the HF pipeline (as in run_clm's group_texts)

#: (metric, unit, better, title) in report order; ratios are peer / mixtera
METRICS = [
    ("tokens_per_s", "tok/s", "higher", "throughput, 1 process"),
    ("tokens_per_cpu_s", "tok/s", "higher", "tokens per CPU second of the process, 1 process"),
    ("tokens_per_s_w", "tok/s", "higher", "throughput, N workers"),
    ("fidelity_pp", "pp", "lower", "token-share error, 1 process"),
    ("fidelity_w_pp", "pp", "lower", "token-share error, N workers"),
    ("ttfb_s", "s", "lower", "time to first batch, 1 process"),
    ("ttfb_w_s", "s", "lower", "time to first batch, N workers"),
    ("rss_mb", "MB", "lower", "peak RSS, 1 process"),
    ("rss_w_mb", "MB", "lower", "peak RSS, process + workers"),
    ("state_bytes", "B", "lower", "checkpoint state size"),
    ("resume_late_s", "s", "lower", "resume at the late position"),
    ("resume_early_s", "s", "lower", "resume after the first sequence"),
    ("resume_exact", "bool", "higher", "resumed stream continues exactly"),
    ("prep_s", "s", "lower", "preparation outside the loop"),
]
PLOTTED = [
    "tokens_per_s",
    "tokens_per_s_w",
    "fidelity_pp",
    "ttfb_s",
    "rss_mb",
    "state_bytes",
    "resume_late_s",
    "prep_s",
]


# =========================================================================== shared helpers


def _load_streaming_bench() -> ModuleType:
    """benchmarks/streaming.py (its corpus builder and tokenizer trainer), under a name that
    does not clash with MosaicML's ``streaming`` package."""
    spec = importlib.util.spec_from_file_location("_mixtera_bench_streaming", HERE / "streaming.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_texts(paths: Iterable[str]) -> Iterator[str]:
    """Texts of jsonl.zst files, in order (decompress + json.loads)."""
    import zstandard

    for path in paths:
        with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
            for line in io.BufferedReader(reader, 1 << 20):
                yield json.loads(line)["text"]


def seq_hash(tokens: Any) -> str:
    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, bytes):
        return o.hex()
    return repr(o)


def state_size(state: Any) -> int:
    return len(json.dumps(state, default=_json_default).encode())


def load_tokenizer(path: str) -> tuple[Any, Callable[..., Any]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    return tok, getattr(tok, "encode_batch_fast", None) or tok.encode_batch


def tokenize_docs(
    encode: Callable[..., Any], eos: int, texts: list[str], domains: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated token ids with EOS after every document, and the domain of every token."""
    flat: list[int] = []
    lens: list[int] = []
    for enc in encode(texts, add_special_tokens=False):
        ids = enc.ids
        flat += ids
        flat.append(eos)
        lens.append(len(ids) + 1)
    return np.array(flat, dtype=np.int32), np.repeat(np.array(domains, dtype=np.int8), lens)


class Packer:
    """Documents of a source -> ``seq_len + 1`` token sequences with the domain of every token.

    The source is an iterator of ``(text, domain)`` with ``get_state()``; ``open_source(state)``
    makes one positioned at a state (None: the start). ``state()`` after a sequence is
    ``{"src", "replay", "carry", "skip"}``: the source state before the current tokenizer batch
    (or before the previous one, whose last ``carry`` tokens were still pending, when
    ``replay``), and the number of sequences of the current batch already handed out.
    """

    def __init__(
        self,
        open_source: Callable[[Any], Any],
        tokenizer: str,
        eos: int,
        seq_len: int,
        batch_docs: int = PACK_DOCS,
        state: dict[str, Any] | None = None,
    ) -> None:
        self._open = open_source
        _, self._encode = load_tokenizer(tokenizer)
        self._eos, self._len, self._batch = eos, seq_len + 1, batch_docs
        self._carry_t = np.empty(0, dtype=np.int32)
        self._carry_d = np.empty(0, dtype=np.int8)
        self._seqs: np.ndarray | None = None
        self._doms: np.ndarray | None = None
        self._n = self._j = 0
        self._prev: Any = None  # source state before the previous batch
        self._cur: Any = None  # source state before the current batch
        self._carry_at_cur = 0  # carried tokens the current batch started with
        if state is None:
            self.src = open_source(None)
        else:
            self._restore(state)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        texts: list[str] = []
        doms: list[int] = []
        for _ in range(self._batch):
            text, dom = next(self.src)
            texts.append(text)
            doms.append(dom)
        return tokenize_docs(self._encode, self._eos, texts, doms)

    def _cut(self, toks: np.ndarray, doms: np.ndarray) -> None:
        t = np.concatenate([self._carry_t, toks])
        d = np.concatenate([self._carry_d, doms])
        n = len(t) // self._len
        self._seqs = t[: n * self._len].reshape(n, self._len)
        self._doms = d[: n * self._len].reshape(n, self._len)
        self._carry_t, self._carry_d = t[n * self._len :], d[n * self._len :]
        self._n, self._j = n, 0

    def _next_batch(self) -> None:
        self._prev, self._cur = self._cur, self.src.get_state()
        self._carry_at_cur = len(self._carry_t)
        self._cut(*self._read())

    def __iter__(self) -> Packer:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        while self._seqs is None or self._j >= self._n:
            self._next_batch()
        j = self._j
        self._j += 1
        assert self._doms is not None
        return self._seqs[j], self._doms[j]

    def state(self) -> dict[str, Any]:
        if self._seqs is None:
            return {"src": self.src.get_state(), "replay": False, "carry": 0, "skip": 0}
        replay = self._carry_at_cur > 0
        return {
            "src": self._prev if replay else self._cur,
            "replay": replay,
            "carry": self._carry_at_cur,
            "skip": self._j,
        }

    def _restore(self, st: dict[str, Any]) -> None:
        self.src = self._open(st["src"])
        self._prev = None
        if st["replay"]:
            toks, doms = self._read()
            c = int(st["carry"])
            if c > len(toks):
                raise RuntimeError(f"cannot replay {c} carried tokens from a batch of {len(toks)}")
            self._carry_t, self._carry_d = toks[len(toks) - c :], doms[len(doms) - c :]
            self._prev = st["src"]
        self._cur = self.src.get_state()
        self._carry_at_cur = len(self._carry_t)
        self._cut(*self._read())
        self._j = int(st["skip"])


class TreeRss:
    """Peak of the summed RSS of this process and its children, sampled in a thread (psutil)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # fall back to getrusage at the end
            self._proc = None
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(interval)

    def sample(self) -> None:
        if self._proc is None:
            return
        total = 0
        with contextlib.suppress(Exception):
            total = self._proc.memory_info().rss
            for child in self._proc.children(recursive=True):
                with contextlib.suppress(Exception):
                    total += child.memory_info().rss
        self.peak = max(self.peak, total / 1e6)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._proc is None:
            self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            self.peak = (self_kb + kids_kb) / 1e3


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


# =========================================================================== peers (child side)


class Peer:
    """One tool. ``single(ctx, state)`` -> an iterator of (tokens[seq_len + 1], domains of the
    label tokens [seq_len]) with ``state()``; ``loader(ctx)`` -> an iterator of (tokens[B, *],
    label domains[B, seq_len]) over ``ctx["workers"]`` DataLoader workers."""

    name = ""
    note = ""

    def check(self) -> None:
        """Import what the peer needs (raise ImportError with the reason)."""

    def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {}

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        raise NotImplementedError

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError


class _Single:
    """Adapter: an iterator of items, ``convert(item)`` -> (tokens, label domains), ``state()``."""

    def __init__(
        self, it: Iterator[Any], convert: Callable[[Any], tuple[Any, Any]], state: Callable[[], Any]
    ):
        self._it, self._convert, self.state = it, convert, state

    def __iter__(self) -> _Single:
        return self

    def __next__(self) -> tuple[Any, Any]:
        return self._convert(next(self._it))


# --------------------------------------------------------------------------- mixtera


class MixteraPeer(Peer):
    name = "mixtera"

    def check(self) -> None:
        import mixtera_core  # noqa: F401

    def _db(self, ctx: dict[str, Any]) -> Path:
        return Path(ctx["work"]) / "mixtera-db"

    def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        from mixtera_core import MixteraClient

        db = self._db(ctx)
        shutil.rmtree(db, ignore_errors=True)
        t0 = time.perf_counter()
        with MixteraClient.local(db) as client:
            rep = client.register_dataset("bench", ctx["shards"], parser_options=OPTIONS)
        return {"prep_s": time.perf_counter() - t0, "samples": rep.samples}

    def _execute(self, client: Any, ctx: dict[str, Any], job_id: str, workers: int) -> str:
        from mixtera_core import Query

        return client.execute(  # type: ignore[no-any-return]
            Query.for_job(job_id),
            MIXTURE,
            chunk_size=ctx["chunk_size"],
            seed=ctx["seed"],
            num_workers=workers,
            on_exhausted="repeat",
            tokenizer=("hf", ctx["tokenizer"]),
            seq_len=ctx["seq_len"],
        )

    @staticmethod
    def _domain_of_key(job: Any) -> np.ndarray:
        return np.array([DOMAINS.index(k.split("=", 1)[1]) for k in job.key_names], dtype=np.int8)

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        from mixtera_core import MixteraClient

        client = MixteraClient.local(self._db(ctx))
        job_id = "peers-single" + ctx.get("job_tag", "")
        if state is None:
            job_id = self._execute(client, ctx, job_id, 1)
            stream = client.stream(job_id)
        else:
            client.restore(job_id, state["job"])
            stream = client.stream(job_id, state=state["stream"])
        dom = self._domain_of_key(client.job(job_id))

        def convert(item: Any) -> tuple[Any, Any]:
            return item.tokens, dom[item.key_ids[1:]]

        def get_state() -> Any:
            return {"stream": stream.state_dict(), "job": client.checkpoint(job_id)}

        return _Single(iter(stream), convert, get_state)

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        from mixtera_core import MixteraClient
        from mixtera_core.torch import MixteraDataLoader, MixteraDataset

        client = MixteraClient.local(self._db(ctx))
        job_id = self._execute(client, ctx, "peers-loader" + ctx.get("job_tag", ""), ctx["workers"])
        job = client.job(job_id)
        dom = self._domain_of_key(job)
        loader = MixteraDataLoader(
            MixteraDataset(job), batch_size=ctx["batch_size"], num_workers=ctx["workers"]
        )
        for batch in loader:
            yield batch["input_ids"], dom[batch["key_ids"].numpy()]


# --------------------------------------------------------------------------- HF datasets


class _HFAddDomain:
    def __init__(self, domain: int) -> None:
        self.domain = domain

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[int]]:
        return {"domain": [self.domain] * len(batch["text"])}


class _HFPack:
    """Batched map: tokenize, EOS, cut ``seq_len + 1`` blocks, drop the batch's remainder."""

    def __init__(self, tokenizer: str, eos: int, seq_len: int) -> None:
        self.tokenizer, self.eos, self.length = tokenizer, eos, seq_len + 1
        self._encode: Callable[..., Any] | None = None

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if self._encode is None:
            _, self._encode = load_tokenizer(self.tokenizer)
        toks, doms = tokenize_docs(self._encode, self.eos, batch["text"], batch["domain"])
        n = len(toks) // self.length
        return {
            "tokens": list(toks[: n * self.length].reshape(n, self.length)),
            "domains": list(doms[: n * self.length].reshape(n, self.length)),
        }


class HFPeer(Peer):
    name = "hf"
    note = (
        "document probabilities w/t per domain; each map batch's remainder (< seq_len + 1 tokens) is dropped"
    )

    def check(self) -> None:
        import datasets  # noqa: F401

    def _pipeline(self, ctx: dict[str, Any]) -> Any:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        parts = []
        for i, d in enumerate(DOMAINS):
            ds = datasets.load_dataset("json", data_files=ctx["files"][d], split="train", streaming=True)
            ds = ds.select_columns(["text"]).map(_HFAddDomain(i), batched=True, batch_size=HF_MAP_DOCS)
            parts.append(ds)
        probs = [ctx["probs"][d] for d in DOMAINS]
        mixed = datasets.interleave_datasets(
            parts, probabilities=probs, seed=ctx["seed"], stopping_strategy="all_exhausted"
        )
        return mixed.map(
            _HFPack(ctx["tokenizer"], ctx["eos"], ctx["seq_len"]),
            batched=True,
            batch_size=HF_MAP_DOCS,
            remove_columns=["text", "domain"],
        )

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        ds = self._pipeline(ctx)
        if state is not None:
            ds.load_state_dict(state)

        def convert(ex: dict[str, Any]) -> tuple[Any, Any]:
            return np.asarray(ex["tokens"]), np.asarray(ex["domains"])[1:]

        return _Single(iter(ds), convert, ds.state_dict)

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        from torch.utils.data import DataLoader

        ds = self._pipeline(ctx).with_format("torch")
        for batch in DataLoader(ds, batch_size=ctx["batch_size"], num_workers=ctx["workers"]):
            yield batch["tokens"], batch["domains"][:, 1:].numpy()


# --------------------------------------------------------------------------- shared-packer peers


def _torch_packed(make_source: Callable[[int, int, Any], Any], ctx: dict[str, Any]) -> Any:
    """A torch IterableDataset: per DataLoader worker, the packer over ``make_source(w, W, state)``."""
    import torch.utils.data as tud

    class Packed(tud.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = tud.get_worker_info()
            w, n = (0, 1) if info is None else (info.id, info.num_workers)
            packer = Packer(lambda st: make_source(w, n, st), ctx["tokenizer"], ctx["eos"], ctx["seq_len"])
            for toks, doms in packer:
                yield {"tokens": toks, "domains": doms}

    return Packed()


def _packed_loader(
    make_source: Callable[[int, int, Any], Any], ctx: dict[str, Any]
) -> Iterator[tuple[Any, Any]]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _torch_packed(make_source, ctx), batch_size=ctx["batch_size"], num_workers=ctx["workers"]
    )
    for batch in loader:
        yield batch["tokens"], batch["domains"][:, 1:].numpy()


def _packer_single(make_source: Callable[[Any], Any], ctx: dict[str, Any], state: Any) -> Any:
    packer = Packer(make_source, ctx["tokenizer"], ctx["eos"], ctx["seq_len"], state=state)
    return _Single(packer, lambda x: (x[0], x[1][1:]), packer.state)


# --------------------------------------------------------------------------- hand-written loop


class _LoopSource:
    """One zstd + json.loads reader per domain over its shards (cycled), documents picked by a
    deterministic smooth weighted round robin; state = (file, line) per domain + the credits."""

    def __init__(self, files: dict[str, list[str]], probs: dict[str, float], state: Any = None) -> None:
        self.files = [files[d] for d in DOMAINS]
        self.p = [probs[d] for d in DOMAINS]
        st = state or {"pos": [[0, 0] for _ in DOMAINS], "credit": [0.0] * len(DOMAINS)}
        self.pos = [list(p) for p in st["pos"]]
        self.credit = list(st["credit"])
        self.readers = [self._reader(k) for k in range(len(DOMAINS))]

    def _reader(self, k: int) -> Iterator[str]:
        import zstandard

        f, skip = self.pos[k]
        while True:
            with open(self.files[k][f], "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as rd:
                for line in io.BufferedReader(rd, 1 << 20):
                    if skip:
                        skip -= 1
                        continue
                    yield json.loads(line)["text"]
            f = (f + 1) % len(self.files[k])
            self.pos[k] = [f, 0]

    def __iter__(self) -> _LoopSource:
        return self

    def __next__(self) -> tuple[str, int]:
        credit = self.credit
        for i, p in enumerate(self.p):
            credit[i] += p
        k = max(range(len(credit)), key=credit.__getitem__)
        credit[k] -= 1.0
        text = next(self.readers[k])
        self.pos[k][1] += 1
        return text, k

    def get_state(self) -> dict[str, Any]:
        return {"pos": [list(p) for p in self.pos], "credit": list(self.credit)}


class LoopPeer(Peer):
    name = "loop"
    note = "document probabilities w/t, deterministic weighted round robin; resume re-reads each current file up to the line"

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        return _packer_single(lambda st: _LoopSource(ctx["files"], ctx["probs"], st), ctx, state)

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        def make(w: int, n: int, st: Any) -> _LoopSource:
            files = {d: ctx["files"][d][w::n] for d in DOMAINS}  # worker w reads every n-th shard
            return _LoopSource(files, ctx["probs"], st)

        return _packed_loader(make, ctx)


# --------------------------------------------------------------------------- MosaicML streaming


def _stub_torchvision() -> str:
    """``streaming`` imports torchvision for its vision datasets only; PyPI has no CPU build of
    torchvision for this torch, so a stub stands in when the real one cannot be imported."""
    try:
        import torchvision  # noqa: F401

        return ""
    except Exception:  # noqa: BLE001 - not installed, or a CUDA build on a CPU torch
        pass
    import types

    # transformers probes for torchvision on import: let it see the truth first
    import transformers.feature_extraction_utils  # noqa: F401
    import transformers.tokenization_utils_base  # noqa: F401

    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")

    class VisionDataset:  # never used by text datasets
        pass

    def _unavailable(*_: Any, **__: Any) -> Any:
        raise RuntimeError("torchvision is stubbed in this benchmark")

    tvd.VisionDataset = VisionDataset  # type: ignore[attr-defined]
    tvd.CIFAR10 = VisionDataset  # type: ignore[attr-defined]
    tvf.to_tensor = _unavailable  # type: ignore[attr-defined]
    tv.datasets, tv.transforms, tvt.functional = tvd, tvt, tvf  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.datasets": tvd,
            "torchvision.transforms": tvt,
            "torchvision.transforms.functional": tvf,
        }
    )
    return "torchvision stubbed (no CPU wheel on PyPI for this torch; streaming imports it for vision datasets only)"


class _MosaicSource:
    def __init__(self, make_ds: Callable[[], Any], state: Any = None) -> None:
        self.ds = make_ds()
        self.count = 0
        if state is not None:
            self.ds.load_state_dict(state)
            self.count = int(state["sample_in_epoch"])
        self._it = iter(self.ds)

    def __iter__(self) -> _MosaicSource:
        return self

    def __next__(self) -> tuple[str, int]:
        s = next(self._it)
        self.count += 1
        return s["text"], int(s["domain"])

    def get_state(self) -> Any:
        # before the first sample the dataset has not started its epoch: "the start" is None
        return None if self.count == 0 else self.ds.state_dict(self.count, from_beginning=True)


class MosaicPeer(Peer):
    name = "mosaic"
    note = (
        f"document proportions w/t per Stream, shuffle_algo={MOSAIC_SHUFFLE!r}; "
        "MDS conversion (uncompressed) timed as preparation"
    )

    def check(self) -> None:
        self.note = "; ".join(x for x in (self.note, _stub_torchvision()) if x)
        import streaming  # noqa: F401

    def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        from streaming import MDSWriter

        root = Path(ctx["work"]) / "mds"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        n = 0
        for i, d in enumerate(DOMAINS):
            with MDSWriter(
                out=str(root / d), columns={"text": "str", "domain": "int"}, size_limit=1 << 26
            ) as w:
                for text in read_texts(ctx["files"][d]):
                    w.write({"text": text, "domain": i})
                    n += 1
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return {"prep_s": time.perf_counter() - t0 + ctx["calib_s"], "samples": n, "bytes": size}

    def _make_ds(self, ctx: dict[str, Any]) -> Callable[[], Any]:
        from streaming import Stream, StreamingDataset

        root = Path(ctx["work"]) / "mds"

        def make() -> Any:
            streams = [Stream(local=str(root / d), proportion=ctx["probs"][d]) for d in DOMAINS]
            return StreamingDataset(
                streams=streams,
                shuffle=True,
                shuffle_seed=ctx["seed"],
                shuffle_algo=MOSAIC_SHUFFLE,
                batch_size=PACK_DOCS,  # sets predownload; batch_size=1 starves the reader (8 samples ahead)
            )

        return make

    def _clean(self) -> None:
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        self._clean()
        make = self._make_ds(ctx)
        return _packer_single(lambda st: _MosaicSource(make, st), ctx, state)

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        self._clean()
        ds = self._make_ds(ctx)()  # made once here; every DataLoader worker iterates its own part
        return _packed_loader(lambda w, n, st: _MosaicSource(lambda: ds, st), ctx)


# --------------------------------------------------------------------------- grain


class _GrainDecode:
    def __init__(self, domain: int) -> None:
        self.domain = domain

    def __call__(self, record: bytes) -> tuple[str, int]:
        return record.decode("utf-8"), self.domain


def _grain_pack_dataset(parent: Any, ctx: dict[str, Any]) -> Any:
    """``parent`` (an IterDataset of (text, domain)) packed by the shared packer, as a grain
    ``IterDataset`` whose iterator checkpoints through ``get_state``/``set_state``."""
    import grain

    cfg = (ctx["tokenizer"], ctx["eos"], ctx["seq_len"])

    class PackIterator(grain.DatasetIterator):  # type: ignore[misc]
        def __init__(self, parent_it: Any) -> None:
            super().__init__(parent_it)
            self._packer = Packer(self._open, *cfg)

        def _open(self, state: Any) -> Any:
            if state is not None:
                self._parent.set_state(state)
            return self._parent

        def __next__(self) -> tuple[np.ndarray, np.ndarray]:
            return next(self._packer)

        def get_state(self) -> dict[str, Any]:
            return self._packer.state()

        def set_state(self, state: dict[str, Any]) -> None:
            self._packer = Packer(self._open, *cfg, state=state)

    class PackDataset(grain.IterDataset):  # type: ignore[misc]
        def __iter__(self) -> Any:
            return PackIterator(self._parent.__iter__())

    return PackDataset(parent)


class GrainPeer(Peer):
    name = "grain"
    note = (
        f"document weights w/t in MapDataset.mix (a deterministic interleave); ReadOptions({GRAIN_READ}); "
        "ArrayRecord conversion timed as preparation"
    )

    def check(self) -> None:
        import logging

        logging.getLogger("absl").setLevel(logging.ERROR)
        import grain  # noqa: F401
        from array_record.python import array_record_module  # noqa: F401

    def _paths(self, ctx: dict[str, Any], d: str) -> list[str]:
        return [
            str(Path(ctx["work"]) / "arrayrecord" / f"{d}-{s:03d}.array_record")
            for s in range(len(ctx["files"][d]))
        ]

    def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        from array_record.python.array_record_module import ArrayRecordWriter

        root = Path(ctx["work"]) / "arrayrecord"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        n = 0
        for d in DOMAINS:
            for shard, out in zip(ctx["files"][d], self._paths(ctx, d), strict=True):
                w = ArrayRecordWriter(out, "group_size:1")
                for text in read_texts([shard]):
                    w.write(text.encode("utf-8"))
                    n += 1
                w.close()
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return {"prep_s": time.perf_counter() - t0 + ctx["calib_s"], "samples": n, "bytes": size}

    def _dataset(self, ctx: dict[str, Any]) -> Any:
        import grain

        parts = []
        for i, d in enumerate(DOMAINS):
            src = grain.sources.ArrayRecordDataSource(self._paths(ctx, d))
            parts.append(
                grain.MapDataset.source(src).shuffle(seed=ctx["seed"] + i).repeat().map(_GrainDecode(i))
            )
        mixed = grain.MapDataset.mix(parts, [ctx["probs"][d] for d in DOMAINS])
        return _grain_pack_dataset(mixed.to_iter_dataset(grain.ReadOptions(**GRAIN_READ)), ctx)

    def single(self, ctx: dict[str, Any], state: Any = None) -> Any:
        it = iter(self._dataset(ctx))
        if state is not None:
            it.set_state(state)
        return _Single(it, lambda x: (x[0], x[1][1:]), it.get_state)

    def loader(self, ctx: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
        import grain

        ds = self._dataset(ctx).mp_prefetch(grain.MultiprocessingOptions(num_workers=ctx["workers"]))
        it = iter(ds.batch(ctx["batch_size"]))
        try:
            for toks, doms in it:
                yield toks, doms[:, 1:]
        finally:
            with contextlib.suppress(Exception):
                it.close()


PEER_CLASSES: dict[str, type[Peer]] = {
    "mixtera": MixteraPeer,
    "hf": HFPeer,
    "mosaic": MosaicPeer,
    "grain": GrainPeer,
    "loop": LoopPeer,
}


# =========================================================================== child measurements


def _consume(
    items: Iterator[tuple[Any, Any]], ctx: dict[str, Any], on_first: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Iterate to ``ctx["tokens"]`` training tokens; time to the first item, throughput after it,
    token share per domain over the first ``ctx["fidelity_tokens"]``."""
    total, fid_total = ctx["tokens"], ctx["fidelity_tokens"]
    counts = np.zeros(len(DOMAINS), dtype=np.int64)
    t0 = time.perf_counter()
    first = next(items)
    ttfb = time.perf_counter() - t0
    paused = 0.0
    if on_first is not None:
        p0 = time.perf_counter()
        on_first()
        paused = time.perf_counter() - p0
    check = 0
    tokens = 0
    counted = 0
    t1 = time.perf_counter()
    c1 = time.process_time()  # all threads of this process (not DataLoader workers)
    item: Any = first
    while True:
        toks, doms = item
        doms = np.asarray(doms)
        check ^= int(np.asarray(toks).reshape(-1)[-1])  # touch the data
        n = doms.size
        if counted < fid_total:
            counts += np.bincount(doms.reshape(-1), minlength=len(DOMAINS))
            counted += n
        tokens += n
        if tokens >= total:
            break
        item = next(items)
    wall = time.perf_counter() - t1 - paused
    cpu = time.process_time() - c1
    shares = counts / max(1, counts.sum())
    target = np.array([WEIGHTS[d] for d in DOMAINS])
    first_n = np.asarray(first[1]).size
    return {
        "ttfb_s": ttfb,
        "tokens": tokens,
        "tokens_per_s": (tokens - first_n) / wall if wall > 0 else float("nan"),
        "tokens_per_cpu_s": (tokens - first_n) / cpu if cpu > 0 else float("nan"),
        "fidelity_pp": float(np.abs(shares - target).max() * 100),
        "fidelity_tokens": int(counted),
        **{f"share_{d}": float(s * 100) for d, s in zip(DOMAINS, shares, strict=True)},
    }


def child_prep(peer: Peer, ctx: dict[str, Any]) -> dict[str, Any]:
    out = peer.prepare(ctx)
    if "prep_s" not in out:
        out["prep_s"] = ctx["calib_s"]
    return out


def child_single(peer: Peer, ctx: dict[str, Any]) -> dict[str, Any]:
    """Single process; also saves the state after the first sequence ("early") and after the
    run ("late"), each with the hash of the sequence that followed, for ``child_resume``."""
    pipe: Any = None
    early: list[Any] = []  # [state, hash of the next sequence]

    def items() -> Iterator[tuple[Any, Any]]:
        nonlocal pipe
        pipe = peer.single(ctx)  # built inside the timed first next(): part of ttfb
        for x in pipe:
            if len(early) == 1:
                early.append(seq_hash(x[0]))
            yield x

    it = items()
    res = _consume(it, ctx, on_first=lambda: early.append(pipe.state()))
    late = pipe.state()
    late_next = seq_hash(next(it)[0])
    res["state_bytes"] = state_size(late)
    res["state_bytes_early"] = state_size(early[0])
    res["rss_mb"] = peak_rss_mb()
    with open(ctx["states"], "wb") as fh:
        pickle.dump({"early": tuple(early), "late": (late, late_next)}, fh)
    return res


def child_loader(peer: Peer, ctx: dict[str, Any]) -> dict[str, Any]:
    with TreeRss() as rss:
        res = _consume(iter(peer.loader(ctx)), ctx)
        rss.sample()
    return {
        "ttfb_w_s": res["ttfb_s"],
        "tokens_per_s_w": res["tokens_per_s"],
        "fidelity_w_pp": res["fidelity_pp"],
        "rss_w_mb": rss.peak,
        **{f"{k}_w": v for k, v in res.items() if k.startswith("share_")},
    }


def child_resume(peer: Peer, ctx: dict[str, Any]) -> dict[str, Any]:
    with open(ctx["states"], "rb") as fh:
        states = pickle.load(fh)
    next(iter(peer.single(ctx)))  # warm-up: first-use costs (lazy imports, file caches) count for neither
    res: dict[str, Any] = {}
    exact = True
    for pos in ("late", "early"):
        state, expected = states[pos]
        t0 = time.perf_counter()
        first = next(iter(peer.single(ctx, state=state)))
        res[f"resume_{pos}_s"] = time.perf_counter() - t0
        same = seq_hash(first[0]) == expected
        res[f"resume_{pos}_exact"] = int(same)
        exact = exact and same
    res["resume_exact"] = int(exact)
    return res


def child_profile(peer: Peer, ctx: dict[str, Any]) -> dict[str, Any]:
    """cProfile (consumer and background threads) of a cold start to the first sequence, of a
    resume at the late position, and of the single-process stream."""
    bench = _load_streaming_bench()
    buf = io.StringIO()
    with open(ctx["states"], "rb") as fh:
        late = pickle.load(fh)["late"][0]
    with contextlib.redirect_stdout(buf):
        bench.profile_run(
            f"{peer.name}: cold start to the first sequence", lambda: next(iter(peer.single(ctx))), 30
        )
        bench.profile_run(
            f"{peer.name}: resume at the late position", lambda: next(iter(peer.single(ctx, state=late))), 30
        )
        bench.profile_run(
            f"{peer.name}: single-process stream ({ctx['tokens']:,} tokens)",
            lambda: _consume(iter(peer.single(ctx)), ctx),
            30,
        )
    Path(ctx["profile_out"]).write_text(buf.getvalue())
    return {}


CHILD_MODES = {"prep": child_prep, "single": child_single, "loader": child_loader, "resume": child_resume}


def child_main(mode: str, peer_name: str, ctx_path: str, result_path: str) -> int:
    with open(ctx_path) as fh:
        ctx = json.load(fh)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict[str, Any] = {"peer": peer_name, "mode": mode}
    t0 = time.perf_counter()
    import tokenizers  # noqa: F401 - what every trainer process has loaded anyway
    import torch  # noqa: F401

    peer = PEER_CLASSES[peer_name]()
    try:
        peer.check()
    except Exception as e:  # noqa: BLE001 - report why, do not skip silently
        result.update(status="unavailable", why=f"{type(e).__name__}: {e}")
    else:
        result["import_s"] = time.perf_counter() - t0
        try:
            fn = child_profile if mode == "profile" else CHILD_MODES[mode]
            result.update(fn(peer, ctx))
            result["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            result.update(
                status="error", why=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-3000:]
            )
    result["note"] = peer.note
    with open(result_path, "w") as fh:
        json.dump(result, fh, default=_json_default)
    sys.stdout.flush()
    os._exit(0)  # do not wait for lingering worker/prefetch threads of the peers


# =========================================================================== parent


def run_child(mode: str, peer: str, ctx: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    tag = f"{peer}-{mode}-r{ctx['repeat']}"
    ctx_path, result_path = work / f"{tag}.ctx.json", work / f"{tag}.result.json"
    ctx_path.write_text(json.dumps(ctx))
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        peer,
        str(ctx_path),
        str(result_path),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"peer": peer, "mode": mode, "status": "error", "why": f"timed out after {timeout:.0f}s"}
    if result_path.exists():
        res: dict[str, Any] = json.loads(result_path.read_text())
        if res.get("status") == "error":
            (work / f"{tag}.stderr.txt").write_text(proc.stderr + "\n" + res.get("trace", ""))
        return res
    (work / f"{tag}.stderr.txt").write_text(proc.stderr)
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return {"peer": peer, "mode": mode, "status": "error", "why": f"child died: {tail[0][:300]}"}


def ensure_corpus(cache: Path, text_mb: float, frame_lines: int) -> dict[str, Any]:
    """The corpus and tokenizer, built once per (size, framing) and cached."""
    root = cache / f"corpus-{text_mb:g}mb-f{frame_lines}"
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if all(Path(p).exists() for ps in meta["files"].values() for p in ps):
            meta["cached"] = True
            return meta
    shutil.rmtree(root, ignore_errors=True)
    shards = root / "shards"
    shards.mkdir(parents=True)
    bench = _load_streaming_bench()
    t0 = time.perf_counter()
    files = bench.build_corpus(shards, text_mb, frame_lines)
    built = time.perf_counter() - t0
    pools = bench._pools()
    per_domain = int(min(4e6, text_mb * 0.5e6) // len(DOMAINS))  # 4 MB (less for tiny corpora)
    train = "".join(pools[d][:per_domain] for d in DOMAINS)
    tok_path = bench.train_tokenizer(train, root / "tokenizer.json", 8192)
    tok, _ = load_tokenizer(str(tok_path))
    meta = {
        "files": {d: [str(p) for p in files[d]] for d in DOMAINS},
        "shards": str(shards),
        "tokenizer": str(tok_path),
        "eos": tok.token_to_id(EOS),
        "text_mb": text_mb,
        "compressed_mb": sum(p.stat().st_size for ps in files.values() for p in ps) / 1e6,
        "build_s": built,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return meta


def calibrate(corpus: dict[str, Any], n: int = 512) -> tuple[dict[str, float], dict[str, float], float]:
    """Mean tokens per document (with EOS) of each domain over its first ``n`` documents, and the
    document probabilities that give the token weights."""
    t0 = time.perf_counter()
    _, encode = load_tokenizer(corpus["tokenizer"])
    tpd: dict[str, float] = {}
    for d in DOMAINS:
        texts = []
        for text in read_texts(corpus["files"][d]):
            texts.append(text)
            if len(texts) >= n:
                break
        tpd[d] = float(np.mean([len(e.ids) + 1 for e in encode(texts, add_special_tokens=False)]))
    raw = {d: WEIGHTS[d] / tpd[d] for d in DOMAINS}
    total = sum(raw.values())
    return tpd, {d: v / total for d, v in raw.items()}, time.perf_counter() - t0


DISTRIBUTIONS = (
    "mixtera",
    "datasets",
    "mosaicml-streaming",
    "grain",
    "array-record",
    "tokenizers",
    "torch",
    "numpy",
    "pyarrow",
    "duckdb",
)


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def fmt_value(v: float, unit: str) -> str:
    if math.isnan(v):
        return "nan"
    if unit == "tok/s":
        return f"{v:,.0f}"
    if unit == "B":
        return f"{v:,.0f}"
    if unit == "MB":
        return f"{v:,.0f}"
    if unit == "bool":
        return "yes" if v >= 1 else "no"
    if unit == "s":
        return f"{v * 1e3:.1f}ms" if v < 1 else f"{v:.2f}s"
    return f"{v:.2f}"


def summarize(rows: list[dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """Per (peer, metric): min/median/max of the values and of the per-repeat ratio to Mixtera."""
    by: dict[tuple[str, str], dict[int, float]] = {}
    why: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["peer"], r["metric"])
        if r["status"] == "ok":
            by.setdefault(key, {})[r["repeat"]] = r["value"]
        else:
            why.setdefault(key, f"{r['status']}: {r['why']}")
    out = []
    for metric, unit, better, title in METRICS:
        for peer in peers:
            vals = by.get((peer, metric), {})
            base = by.get(("mixtera", metric), {})
            ratios = [v / base[k] for k, v in vals.items() if k in base and base[k] not in (0, None)]
            ratios = [x for x in ratios if not math.isnan(x)]
            row: dict[str, Any] = {
                "peer": peer,
                "metric": metric,
                "unit": unit,
                "better": better,
                "title": title,
            }
            if vals:
                vs = list(vals.values())
                row.update(n=len(vs), min=min(vs), median=statistics.median(vs), max=max(vs))
                if ratios:
                    row.update(
                        ratio_min=min(ratios), ratio_median=statistics.median(ratios), ratio_max=max(ratios)
                    )
                row["status"] = "ok"
            else:
                row["status"] = why.get((peer, metric), "not measured")
            out.append(row)
    return out


def print_table(summary: list[dict[str, Any]], peers: list[str]) -> str:
    lines = []
    for metric, unit, better, title in METRICS:
        lines.append(
            f"\n{title} [{metric}, {unit}, {better} is better]   value median (min..max)   ratio peer/mixtera median (min..max)"
        )
        for row in (r for r in summary if r["metric"] == metric):
            name = f"  {row['peer']:<8}"
            if row["status"] != "ok":
                lines.append(f"{name} {row['status']}")
                continue
            v = f"{fmt_value(row['median'], unit)} ({fmt_value(row['min'], unit)}..{fmt_value(row['max'], unit)})"
            r = ""
            if "ratio_median" in row:
                r = f"{row['ratio_median']:.2f}x ({row['ratio_min']:.2f}..{row['ratio_max']:.2f})"
            lines.append(f"{name} {v:<36} {r}")
    text = "\n".join(lines)
    print(text)
    return text


def plot(summary: list[dict[str, Any]], peers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows_n = math.ceil(len(PLOTTED) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.6 * rows_n))
    colors = {
        "mixtera": "#1f77b4",
        "hf": "#ff7f0e",
        "mosaic": "#2ca02c",
        "grain": "#d62728",
        "loop": "#7f7f7f",
    }
    for ax, metric in zip(axes.flat, PLOTTED, strict=False):
        rows = {r["peer"]: r for r in summary if r["metric"] == metric}
        meta = next(m for m in METRICS if m[0] == metric)
        xs = np.arange(len(peers))
        for x, peer in zip(xs, peers, strict=True):
            row = rows.get(peer, {})
            if "ratio_median" not in row:
                ax.text(x, 1.0, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
                continue
            med = row["ratio_median"]
            err = [[med - row["ratio_min"]], [row["ratio_max"] - med]]
            ax.bar(x, med, color=colors.get(peer, "#999999"), yerr=err, capsize=3)
            ax.text(x, med, f"{med:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(xs)
        ax.set_xticklabels(peers, rotation=30, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{meta[3]}\n(peer / mixtera, {meta[2]} is better)", fontsize=8)
    for ax in list(axes.flat)[len(PLOTTED) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RESULT_METRICS = {
    "prep": ["prep_s"],
    "single": ["ttfb_s", "tokens_per_s", "tokens_per_cpu_s", "fidelity_pp", "rss_mb", "state_bytes"]
    + [f"share_{d}" for d in DOMAINS],
    "loader": ["ttfb_w_s", "tokens_per_s_w", "fidelity_w_pp", "rss_w_mb"] + [f"share_{d}_w" for d in DOMAINS],
    "resume": ["resume_late_s", "resume_early_s", "resume_exact"],
}
UNITS = {m[0]: m[1] for m in METRICS}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(*sys.argv[2:6]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument(
        "--repeats", type=int, default=None, help="repeats of every measurement (default 3; 1 with --quick)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny corpus, fewer tokens, one repeat (a smoke test)"
    )
    ap.add_argument(
        "--text-mb", type=float, default=None, help="MB of text in the corpus (default 300; 4 with --quick)"
    )
    ap.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="training tokens per throughput run (default 4M; 1M with --quick)",
    )
    ap.add_argument("--fidelity-tokens", type=int, default=1_000_000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per DataLoader batch")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the _w measurements")
    ap.add_argument("--chunk-size", type=int, default=512, help="Mixtera chunk size (samples)")
    ap.add_argument("--frame-lines", type=int, default=256, help="lines per zstd frame of the shards")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--modes", default="prep,single,loader,resume", help="which measurements (comma-separated)"
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement subprocess")
    ap.add_argument("--profile", action="store_true", help="also cProfile Mixtera's single-process stream")
    ap.add_argument("--out", default=str(HERE / "out" / "peers"), help="output directory (results and cache)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    text_mb = args.text_mb or (4 if args.quick else 300)
    tokens = args.tokens or (1_000_000 if args.quick else 4_000_000)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    if "mixtera" not in peers:
        peers.insert(0, "mixtera")  # every ratio is to Mixtera
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "resume" in modes and "single" not in modes:
        ap.error("--modes resume needs single (the states are taken there)")
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    header = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(header)
    print("versions: " + ", ".join(f"{d} {_version(d)}" for d in DISTRIBUTIONS))
    corpus = ensure_corpus(out / "cache", text_mb, args.frame_lines)
    built = "cached" if corpus["cached"] else f"built in {corpus['build_s']:.1f}s"
    print(
        f"corpus: {text_mb:g} MB of text in {sum(len(v) for v in corpus['files'].values())} jsonl.zst shards, "
        f"{corpus['compressed_mb']:.1f} MB compressed ({built}); "
        f"byte-level BPE vocab 8192; seq_len {args.seq_len}; mixture "
        + "/".join(f"{d} {WEIGHTS[d]:.0%}" for d in DOMAINS)
        + " in tokens"
    )
    tpd, probs, calib_s = calibrate(corpus)
    print(
        "peers' document probabilities (w/t): "
        + ", ".join(f"{d} {probs[d]:.3f} ({tpd[d]:.0f} tok/doc)" for d in DOMAINS)
        + f"; calibration {calib_s:.2f}s"
    )
    base_ctx = {
        "files": corpus["files"],
        "shards": corpus["shards"],
        "tokenizer": corpus["tokenizer"],
        "eos": corpus["eos"],
        "probs": probs,
        "calib_s": calib_s,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "tokens": tokens,
        "fidelity_tokens": min(args.fidelity_tokens, tokens),
    }
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    for rep in range(repeats):
        order = peers[rep % len(peers) :] + peers[: rep % len(peers)]  # rotate: no peer always first
        for mode in ("prep", "single", "loader", "resume"):
            if mode not in modes:
                continue
            for peer in order:
                pwork = work / peer
                pwork.mkdir(exist_ok=True)
                ctx = dict(base_ctx, repeat=rep, work=str(pwork), states=str(pwork / f"states-r{rep}.pkl"))
                if mode == "single":
                    Path(ctx["states"]).unlink(missing_ok=True)
                if mode == "resume" and not Path(ctx["states"]).exists():
                    res = {"status": "error", "why": "no states: the single-process run failed"}
                elif mode == "prep" and PEER_CLASSES[peer].prepare is Peer.prepare:
                    # nothing to convert: the preparation is the calibration done above
                    res = {"status": "ok", "prep_s": calib_s, "note": PEER_CLASSES[peer].note}
                else:
                    t0 = time.perf_counter()
                    res = run_child(mode, peer, ctx, work, args.timeout)
                    res["child_s"] = time.perf_counter() - t0
                if res.get("note"):
                    notes[peer] = res["note"]
                status = res.get("status", "error")
                brief = (
                    ", ".join(
                        f"{k} {fmt_value(float(res[k]), UNITS.get(k, ''))}"
                        for k in RESULT_METRICS[mode]
                        if k in res and not k.startswith("share")
                    )
                    if status == "ok"
                    else f"{status}: {res.get('why')}"
                )
                print(
                    f"[repeat {rep + 1}/{repeats}] {peer:<8} {mode:<7} ({res.get('child_s', 0):.0f}s) {brief}",
                    flush=True,
                )
                for metric in RESULT_METRICS[mode]:
                    value = res.get(metric)
                    rows.append(
                        {
                            "peer": peer,
                            "mode": mode,
                            "metric": metric,
                            "repeat": rep,
                            "value": float(value) if status == "ok" and value is not None else float("nan"),
                            "unit": UNITS.get(metric, "%" if metric.startswith("share") else ""),
                            "status": status if value is not None or status != "ok" else "missing",
                            "why": res.get("why", ""),
                        }
                    )
    summary = summarize(rows, peers)
    print(f"\nresults ({repeats} repeat(s); ratio = peer / mixtera in the same repeat)")
    print_table(summary, peers)
    shares = {}
    for r in rows:
        if r["metric"].startswith("share_") and r["status"] == "ok":
            shares.setdefault((r["peer"], r["metric"]), []).append(r["value"])
    print(
        "\ndelivered token shares, median over repeats (target "
        + "/".join(f"{WEIGHTS[d]:.0%}" for d in DOMAINS)
        + ")"
    )
    for peer in peers:
        one = "/".join(
            f"{statistics.median(shares[(peer, f'share_{d}')]):.1f}"
            for d in DOMAINS
            if (peer, f"share_{d}") in shares
        )
        many = "/".join(
            f"{statistics.median(shares[(peer, f'share_{d}_w')]):.1f}"
            for d in DOMAINS
            if (peer, f"share_{d}_w") in shares
        )
        print(f"  {peer:<8} 1 process {one or 'n/a'}   {args.workers} workers {many or 'n/a'}")
    if notes:
        print("\nnotes")
        for peer, note in notes.items():
            print(f"  {peer}: {note}")
    # verdicts of the targets
    tp = {r["peer"]: r for r in summary if r["metric"] == "tokens_per_s"}
    if tp.get("hf", {}).get("ratio_median"):
        x = 1 / tp["hf"]["ratio_median"]
        print(
            f"\nmixtera / hf throughput (1 process, median): {x:.2f}x  target >= 1.5x: {'met' if x >= 1.5 else 'NOT met'}"
        )
    others = [r for p, r in tp.items() if p != "mixtera" and r.get("ratio_median")]
    if others:
        best = max(others, key=lambda r: r["ratio_median"])
        x = 1 / best["ratio_median"]
        print(
            f"mixtera / best peer ({best['peer']}) throughput: {x:.2f}x  target >= 0.9x: {'met' if x >= 0.9 else 'NOT met'}"
        )
    fid = next((r for r in summary if r["metric"] == "fidelity_pp" and r["peer"] == "mixtera"), None)
    if fid and fid["status"] == "ok":
        print(
            f"mixtera fidelity: max {fid['max']:.2f} pp  target <= 1 pp: {'met' if fid['max'] <= 1 else 'NOT met'}"
        )
    csv_path = out / f"peers-{stamp}.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["peer", "mode", "metric", "repeat", "value", "unit", "status", "why"]
        )
        w.writeheader()
        w.writerows(rows)
    sum_path = out / f"peers-{stamp}-summary.csv"
    fields = [
        "peer",
        "metric",
        "unit",
        "better",
        "n",
        "min",
        "median",
        "max",
        "ratio_min",
        "ratio_median",
        "ratio_max",
        "status",
        "title",
    ]
    with open(sum_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary)
    png_path = out / f"peers-{stamp}.png"
    try:
        plot(
            summary, peers, png_path, f"{header}; {text_mb:g} MB text, {tokens:,} tokens, {repeats} repeat(s)"
        )
    except Exception as e:  # noqa: BLE001 - the CSVs are the result; the chart is a view of them
        print(f"(no chart: {type(e).__name__}: {e})")
        png_path = None  # type: ignore[assignment]
    if args.profile:
        states = work / "mixtera" / f"states-r{repeats - 1}.pkl"
        ctx = dict(
            base_ctx,
            repeat="profile",
            work=str(work / "mixtera"),
            states=str(states),
            profile_out=str(out / f"profile-mixtera-{stamp}.txt"),
        )
        res = (
            run_child("profile", "mixtera", ctx, work, args.timeout)
            if states.exists()
            else {"why": "no states"}
        )
        print(f"profile: {ctx['profile_out'] if res.get('status') == 'ok' else res.get('why')}")
    print(f"\nwrote {csv_path}\nwrote {sum_path}" + (f"\nwrote {png_path}" if png_path else ""))
    print(f"load average {os.getloadavg()[0]:.2f} at the end; total {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
