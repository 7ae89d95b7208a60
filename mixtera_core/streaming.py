"""Streaming a job to one (dp_group, node, worker): chunks -> samples or packed token sequences.

**Assignment** (never arrival order): chunk ``i`` belongs to dp_group ``i mod G``; every
node of a group gets the same chunks; worker ``w`` of a node takes its group's chunks
``w, w + W, w + 2W, ...``. Each stream runs its own planner replica and skips (cursor
arithmetic only) the chunks of the others.

**Position.** A stream's state is the position of the first sample (token mode: token)
not yet handed out — ``(chunk index, sample in chunk, token offset)`` — plus the planner
state right before that chunk. Restoring regenerates that one chunk and continues: no
replay from the start, and the state's size does not grow with the steps trained.

**Token mode** tokenizes each sample (optional BOS/EOS), appends the tokens to a running
buffer that carries over chunk boundaries, and cuts ``seq_len + 1`` token sequences
(``input_ids = seq[:-1]``, ``labels = seq[1:]``), each with the key id of every token.
Mixture weights hold in tokens because the planner fills token quotas from every sample's
token count (see :mod:`mixtera_core.token_estimate`). With a token index the stream reads the
token ids there (memory-mapped) instead of reading and tokenizing the text.

Planning, reading and tokenizing run in background threads that keep ``prefetch`` chunks
ready; ``read_threads`` (default 2) chunks are read at once, and handed over in order.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import storage
from .background import parallel_map, prefetch
from .chunking import Chunk, ChunkPlanner
from .errors import MixteraError
from .interfaces import FieldRef, Tokenizer
from .job import Job, TokenizerSpec
from .plugins import PluginManager, get_plugin_manager
from .records import extract

_TOKENIZERS: dict[str, Tokenizer] = {}
_TOKENIZER_LOCK = threading.Lock()


def load_tokenizer(spec: TokenizerSpec, plugins: PluginManager | None = None) -> Tokenizer:
    """The tokenizer of a spec, loaded once per process and reused for every chunk."""
    key = json.dumps([spec.name, spec.source, spec.options], sort_keys=True)
    with _TOKENIZER_LOCK:
        if key not in _TOKENIZERS:
            factory = (plugins or get_plugin_manager()).tokenizer_factory(spec.name)
            _TOKENIZERS[key] = factory.load(spec.source, **spec.options)
        return _TOKENIZERS[key]


@dataclass
class StreamSample:
    """One sample in sample mode: its mixture key, key id, the text or record, and the
    (global) index of the chunk it came from (what feedback names as its ``position``)."""

    key: str
    key_id: int
    data: Any
    chunk: int = -1


@dataclass
class TokenSequence:
    """``seq_len + 1`` tokens and the key id of each (``-1`` never occurs: every token has a key);
    ``chunk``: the highest (global) chunk index its tokens came from."""

    tokens: np.ndarray
    key_ids: np.ndarray
    chunk: int = -1


class ChunkSource(Protocol):
    """Where a stream gets chunk ``index`` from: a planner replica here, or a server."""

    def chunk(self, index: int, snapshot: dict[str, Any] | None) -> tuple[Chunk | None, dict[str, Any]]:
        """Chunk ``index`` (None once the job has ended) and the planner state right before it.

        ``snapshot`` (a planner state at or before ``index``, from a checkpoint) lets the
        source regenerate an old chunk without replaying from the start.
        """
        ...


class SampleSource(Protocol):
    def read(self, file_id: int, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, Any]]: ...


class PlannerChunkSource:
    """Chunks from a planner replica that walks the global sequence forward."""

    def __init__(self, job: Job) -> None:
        self.planner: ChunkPlanner = job.planner()
        self._fresh = True

    def chunk(self, index: int, snapshot: dict[str, Any] | None) -> tuple[Chunk | None, dict[str, Any]]:
        planner = self.planner
        if snapshot is not None and (self._fresh or int(snapshot["next_index"]) > planner.next_index):
            planner.load_state_dict(snapshot)
        self._fresh = False
        if index < planner.next_index:
            raise MixteraError(
                f"chunk {index} was planned already; streams ask for chunks in increasing order"
            )
        while planner.next_index < index:
            if not planner.skip():
                return None, planner.state_dict()
        before = planner.state_dict()
        return planner.next_chunk(), before


class _FileReaders:
    """Reads sample ranges of the job's files through their format plugins, refusing a file
    that changed since registration (:meth:`~mixtera_core.job.FileEntry.check_unchanged`)."""

    def __init__(self, job: Job, plugins: PluginManager) -> None:
        self.job = job
        self.plugins = plugins

    def prepare(self, chunk: Chunk) -> None:
        """Start fetching the chunk's remote files (all of them at once, in the background) so
        that its read finds their bytes in memory; local files need nothing."""
        files = []
        for file_id, ranges in file_ranges(chunk).items():
            entry = self.job.files[file_id]
            if not storage.is_remote(entry.path):
                continue
            fmt = self.plugins.format(entry.format)
            expected = None if entry.fingerprint is None else entry.fingerprint.object_info()
            spans = functools.partial(fmt.byte_spans, entry.path, ranges, entry.read_index)
            files.append((entry.path, spans, expected))
        if files:
            storage.prefetch_all(files)

    def read(self, file_id: int, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, Any]]:
        entry = self.job.files[file_id]
        entry.check_unchanged()  # FileChangedError for a file that is no longer what was registered
        yield from self.plugins.format(entry.format).read(entry.path, ranges, entry.read_index)

    def read_field(
        self, file_id: int, ranges: list[tuple[int, int]], field: FieldRef
    ) -> Iterator[tuple[int, Any]]:
        entry = self.job.files[file_id]
        entry.check_unchanged()
        yield from self.plugins.format(entry.format).read_field(entry.path, ranges, entry.read_index, field)


def delivery_order(job: Job, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(component, file id, sample index) of a chunk's samples in the order a stream hands them
    out: a seeded interleave in sample mode; in token mode the planner's order already (one that
    keeps every prefix of the chunk in proportion to the weights in tokens)."""
    return chunk.samples() if job.spec.token_mode else chunk.interleaved(job.spec.seed)


def chunk_records(
    job: Job, chunk: Chunk, readers: SampleSource, field: FieldRef | None = None
) -> list[tuple[int, int, int, Any]]:
    """The chunk's samples as (component, file_id, sample_index, record) in interleave order.

    With ``field``, "record" is just that field's value (formats may read it natively); a
    sample without it falls back to its whole record, so ``record_text`` can still find a
    webdataset ``txt`` member.
    """
    comps, files, idx = delivery_order(job, chunk)
    records: dict[tuple[int, int], Any] = {}
    read_field = getattr(readers, "read_field", None) if field is not None else None
    for fid, merged in file_ranges(chunk).items():
        if read_field is None:
            for sample_index, record in readers.read(fid, merged):
                records[(fid, sample_index)] = record
            continue
        missing = []
        for sample_index, value in read_field(fid, merged, field):
            records[(fid, sample_index)] = value
            if value is None:
                missing.append(sample_index)
        for s in missing:  # e.g. webdataset: no "text" field, but a txt member
            for sample_index, record in readers.read(fid, [(s, s + 1)]):
                records[(fid, sample_index)] = record
    out = []
    for c, f, i in zip(comps.tolist(), files.tolist(), idx.tolist(), strict=True):
        try:
            out.append((c, f, i, records[(f, i)]))
        except KeyError:
            raise MixteraError(
                f"{job.files[f].path}: sample {i} is in the catalog but the format did not return it; "
                f"the file may have changed since registration (re-register the dataset)"
            ) from None
    return out


def file_ranges(chunk: Chunk) -> dict[int, list[tuple[int, int]]]:
    """A chunk's samples as file id -> sorted, merged half-open ranges: what a reader reads."""
    by_file: dict[int, list[tuple[int, int]]] = {}
    for j in np.lexsort((chunk.starts, chunk.file_ids)).tolist():
        by_file.setdefault(int(chunk.file_ids[j]), []).append((int(chunk.starts[j]), int(chunk.stops[j])))
    return {fid: _merge(ranges) for fid, ranges in by_file.items()}


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def record_text(record: Any, text_field: str | FieldRef, where: str | tuple[str, int]) -> str:
    """The text of a record: ``text_field`` (dotted path), else a webdataset ``txt`` member."""
    ref = text_field if isinstance(text_field, FieldRef) else FieldRef.parse(text_field)
    if isinstance(record, dict):
        value = record.get(ref.path[0]) if len(ref.path) == 1 else extract(record, ref)
        if value is None and ref.path == ("text",) and "txt" in record:
            value = record["txt"]
    else:
        value = record  # already the field's value (read_field)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        place = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
        raise MixteraError(
            f"{place}: the sample has no text field {str(ref)!r}; pass text_field= to execute()"
        )
    return value


def document_specials(tok: Tokenizer, add_bos: bool, add_eos: bool) -> tuple[list[int], list[int]]:
    """BOS/EOS ids to put around each document. GPT-2-style tokenizers use one token for both:
    then a document boundary gets it once, not twice."""
    eos = [tok.eos_id] if add_eos and tok.eos_id is not None else []
    bos = [tok.bos_id] if add_bos and tok.bos_id is not None and [tok.bos_id] != eos else []
    return bos, eos


def _specials(job: Job, tok: Tokenizer) -> tuple[list[int], list[int]]:
    return document_specials(tok, job.spec.add_bos, job.spec.add_eos)


@dataclass
class _Prepared:
    index: int  # global chunk index
    own: int  # position among this stream's chunks
    snapshot: dict[str, Any]  # planner state before this chunk
    items: list[tuple[int, Any]]  # (key id, text/record or token array)
    # token mode: the part of each document's tokens an item holds (fractions; None: whole)
    spans: np.ndarray | None = None


def document_piece(tokens: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The tokens ``[lo, hi)`` of a document, as fractions of its length (planned where the
    token count may have been an estimate): pieces that meet at a fraction meet at one token,
    so the pieces of a document hold each of its tokens exactly once."""
    n = len(tokens)
    start = int(np.floor(lo * n + 0.5))
    stop = n if hi >= 1.0 else int(np.floor(hi * n + 0.5))
    return tokens[start:stop]


def _cut(items: list[tuple[int, Any]], spans: np.ndarray | None) -> list[tuple[int, Any]]:
    if spans is None:
        return items
    out = []
    for (key, arr), (lo, hi) in zip(items, spans.tolist(), strict=True):
        out.append((key, arr if lo == 0.0 and hi == 1.0 else document_piece(arr, lo, hi)))
    return out


class JobStream:
    """An iterator over one stream of a job, with ``state_dict()`` / ``load_state_dict()``.

    ``output`` (sample mode): ``"text"`` yields the text, ``"record"`` the whole record (for
    webdataset a dict of members as bytes; ``decode="pil"``/``"rgb8"``/... decodes image members
    with webdataset's decoders). ``read_threads``: chunks read at the same time (decompression
    and parsing release the GIL, so two use two cores); 1 reads in the planning thread.
    """

    def __init__(
        self,
        job: Job,
        dp_group: int = 0,
        node: int = 0,
        worker: int = 0,
        *,
        plugins: PluginManager | None = None,
        prefetch: int = 2,
        read_threads: int = 2,
        output: str = "text",
        decode: str | None = None,
        dp_groups: int | None = None,
        num_workers: int | None = None,
        drop_last: bool = True,
        chunk_source: ChunkSource | None = None,
        readers: SampleSource | None = None,
        mixture_timeout: float | None = None,
    ) -> None:
        spec = job.spec
        # seconds to wait for the mixture of a chunk past the seal (None: the module default)
        self.mixture_timeout = mixture_timeout
        self._cancel = threading.Event()
        self.drop_last = drop_last
        # where chunks come from (default: a planner replica in this process) and samples are read
        self.chunk_source = chunk_source
        self.readers = readers
        # the topology defaults to the job's; states made by reshard() carry a new one
        self.dp_groups = spec.dp_groups if dp_groups is None else int(dp_groups)
        self.num_workers = spec.num_workers if num_workers is None else int(num_workers)
        for name, v, n in (
            ("dp_group", dp_group, self.dp_groups),
            ("node", node, spec.nodes_per_group),
            ("worker", worker, self.num_workers),
        ):
            if not 0 <= v < n:
                raise MixteraError(f"{name} {v} is out of range for job {spec.job_id!r} (it has {n})")
        if output not in ("text", "record"):
            raise MixteraError(f"output must be 'text' or 'record', got {output!r}")
        self.job = job
        self.dp_group, self.node, self.worker = dp_group, node, worker
        self.plugins = plugins or get_plugin_manager()
        self.prefetch = max(1, prefetch)
        self.read_threads = max(1, int(read_threads))
        self.output = output
        self._decoder = _decoder(decode) if decode else None
        self._key_ids = job.component_key_ids()
        self._key_names = job.key_names
        self._text_ref = FieldRef.parse(spec.text_field)
        # position of the first unconsumed element: own chunk number, sample, token offset
        self.planned_up_to = 0  # chunks [0, planned_up_to) have been planned by this stream's planner
        self.delivered = np.zeros(len(job.key_names), dtype=np.int64)  # samples/tokens handed out per key
        self._start: dict[str, Any] = {"own": 0, "sample": 0, "token": 0, "snapshot": None}
        self._position = dict(self._start)
        # after an elastic restore: chunks left over by the old topology, then regular chunks from `base`
        self._plan: dict[str, Any] | None = None

    # -------------------------------------------------------------- assignment

    def global_index(self, own: int) -> int:
        """Global chunk index of this stream's ``own``-th chunk."""
        base = 0
        if self._plan is not None:
            pending = self._plan["mine"]
            if own < len(pending):
                return int(pending[own][0])
            own -= len(pending)
            base = int(self._plan["base"])
        return base + self.dp_group + self.dp_groups * (self.worker + self.num_workers * own)

    def _first_offsets(self, own: int) -> tuple[int, int]:
        """(sample, token) where this stream starts inside its ``own``-th chunk (elastic leftovers)."""
        if self._plan is not None and own < len(self._plan["mine"]):
            return int(self._plan["mine"][own][1]), int(self._plan["mine"][own][2])
        return 0, 0

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job.spec.job_id,
            "dp_group": self.dp_group,
            "node": self.node,
            "worker": self.worker,
            "dp_groups": self.dp_groups,
            "num_workers": self.num_workers,
            "plan": self._plan,
            **{k: self._position[k] for k in ("own", "sample", "token", "snapshot")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("job_id") != self.job.spec.job_id:
            raise MixteraError(f"state is for job {state.get('job_id')!r}, not {self.job.spec.job_id!r}")
        if (state["dp_group"], state["worker"]) != (self.dp_group, self.worker):
            raise MixteraError(
                f"state is for dp_group {state['dp_group']} worker {state['worker']}, this stream is "
                f"dp_group {self.dp_group} worker {self.worker}; use reshard() for a new topology"
            )
        self.dp_groups, self.num_workers = int(state["dp_groups"]), int(state["num_workers"])
        self._plan = state.get("plan")
        self._start = {k: state[k] for k in ("own", "sample", "token", "snapshot")}
        self._position = dict(self._start)

    # -------------------------------------------------------------- producing

    def _planned(self) -> Iterator[tuple[Chunk, int, dict[str, Any]]]:
        """(chunk, own number, planner state before it) for this stream's chunks, in order.

        Before asking for a chunk the stream waits until its mixture is decided (sealed): a
        dynamic job's chunks are never planned on weights that may still change."""
        source = self.chunk_source if self.chunk_source is not None else PlannerChunkSource(self.job)
        own = int(self._start["own"])
        snapshot_hint = self._start["snapshot"]
        cancel = self._cancel
        while True:
            self.job.await_mixture(self.global_index(own), self.mixture_timeout, cancel)
            chunk, snapshot = source.chunk(self.global_index(own), snapshot_hint)
            snapshot_hint = None
            self.planned_up_to = max(self.planned_up_to, self.global_index(own) + 1)
            if chunk is None:
                return
            yield chunk, own, snapshot
            own += 1

    def _indexed(self) -> bool:
        """Whether this stream reads token ids from the job's token index (a local job with one)."""
        return self.job.token_index is not None and self.readers is None

    def _reader(self) -> Callable[[tuple[Chunk, int, dict[str, Any]]], _Prepared]:
        """Reads one planned chunk's records (sample mode: the output values; token mode with a
        token index: the token ids); thread-safe."""
        if self._indexed():
            return self._index_reader()
        readers = self.readers if self.readers is not None else _FileReaders(self.job, self.plugins)
        token_mode = self.job.spec.tokenizer is not None
        text_ref = self._text_ref if token_mode or self.output == "text" else None

        def read(planned: tuple[Chunk, int, dict[str, Any]]) -> _Prepared:
            chunk, own, snapshot = planned
            rows = chunk_records(self.job, chunk, readers, text_ref)
            keys = [int(self._key_ids[c]) for c, _, _, _ in rows]
            if token_mode:
                data = [self._text(rec, f, i) for _, f, i, rec in rows]
            else:
                data = [self._sample_data(rec, f, i) for _, f, i, rec in rows]
            return _Prepared(chunk.index, own, snapshot, list(zip(keys, data, strict=True)), chunk.spans)

        return read

    def _index_reader(self) -> Callable[[tuple[Chunk, int, dict[str, Any]]], _Prepared]:
        from .token_index import TokenIndex

        assert self.job.token_index is not None
        root = os.path.normpath(self.job.token_index)
        tokens = TokenIndex.open(os.path.dirname(os.path.dirname(root)), os.path.basename(root))
        if tokens is None:
            raise MixteraError(
                f"the token index {root} of job {self.job.spec.job_id!r} is gone; "
                f"run tokenize again or execute the job under a new id"
            )
        key_ids = self._key_ids

        def read(planned: tuple[Chunk, int, dict[str, Any]]) -> _Prepared:
            chunk, own, snapshot = planned
            comps, files, idx = delivery_order(self.job, chunk)
            found: dict[tuple[int, int], np.ndarray] = {}
            for fid, ranges in file_ranges(chunk).items():
                for sample_index, sample_ids in tokens.read(fid, ranges):
                    found[(fid, sample_index)] = sample_ids
            items = []
            for c, f, i in zip(comps.tolist(), files.tolist(), idx.tolist(), strict=True):
                ids = found.get((f, i))
                if ids is None:
                    raise MixteraError(
                        f"{self.job.files[f].path}: sample {i} is not in the token index {root}; "
                        f"the dataset may have been re-registered since: run tokenize again"
                    )
                items.append((int(key_ids[c]), ids))
            return _Prepared(chunk.index, own, snapshot, _cut(items, chunk.spans))

        return read

    def _tokenized(self, chunks: Iterator[_Prepared]) -> Iterator[_Prepared]:
        """Replace each chunk's texts by token arrays (a pipeline stage of its own)."""
        assert self.job.spec.tokenizer is not None
        tok = load_tokenizer(self.job.spec.tokenizer, self.plugins)
        for prep in chunks:
            arrays = self._tokenize(tok, [text for _, text in prep.items])
            prep.items = _cut(
                [(key, arr) for (key, _), arr in zip(prep.items, arrays, strict=True)], prep.spans
            )
            prep.spans = None
            yield prep

    def _text(self, record: Any, file_id: int, sample_index: int) -> str:
        return record_text(record, self._text_ref, (self.job.files[file_id].path, sample_index))

    def _sample_data(self, record: Any, file_id: int, sample_index: int) -> Any:
        if self.output == "text":
            return self._text(record, file_id, sample_index)
        if self._decoder is not None:
            return self._decoder(record)
        return record

    def _tokenize(self, tok: Tokenizer, texts: list[str]) -> list[np.ndarray]:
        bos, eos = _specials(self.job, tok)
        return [np.asarray(bos + ids + eos, dtype=np.int64) for ids in tok.encode_batch(texts)]

    def _prefetched(self) -> Iterator[_Prepared]:
        """Chunks planned by a background thread and read by ``read_threads`` more (two chunks at
        once: decompression and pyarrow parsing release the GIL), handed over in order at most
        ``prefetch`` ahead; in token mode another thread tokenizes, so reading the next chunks
        overlaps tokenizing this one."""
        name = f"mixtera-prefetch-{self.job.spec.job_id}"
        planned = self._planned()
        if self.readers is None and not self._indexed():
            planned = self._preparing(planned, _FileReaders(self.job, self.plugins))
        chunks = parallel_map(self._reader(), planned, self.read_threads, self.prefetch, name)
        if self.job.spec.tokenizer is None or self._indexed():
            return chunks
        return prefetch(self._tokenized(chunks), self.prefetch, name + "-tokenize")

    @staticmethod
    def _preparing(
        planned: Iterator[tuple[Chunk, int, dict[str, Any]]], readers: _FileReaders
    ) -> Iterator[tuple[Chunk, int, dict[str, Any]]]:
        """Planned chunks, each one's remote files set fetching as soon as it is planned (chunks
        are planned ``prefetch + read_threads`` ahead of the one being consumed)."""
        for item in planned:
            readers.prepare(item[0])
            yield item

    # -------------------------------------------------------------- consuming

    def __iter__(self) -> Iterator[Any]:
        # iterating again continues where the last iteration stopped
        self._start = dict(self._position)
        self._cancel.set()  # a previous iteration's planner, should it still wait, gives up
        self._cancel = threading.Event()
        inner = self._iter_tokens() if self.job.spec.token_mode else self._iter_samples()
        return self._cancelling(inner, self._cancel)

    @staticmethod
    def _cancelling(inner: Iterator[Any], cancel: threading.Event) -> Iterator[Any]:
        """Stop the background planner (possibly waiting for a mixture) as soon as the consumer
        stops, before the pipeline's threads are joined."""
        try:
            for item in inner:  # noqa: UP028 - `yield from` would close `inner` (join its threads) first
                yield item
        finally:
            cancel.set()
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    def _iter_samples(self) -> Iterator[StreamSample]:
        first = True
        for prep in self._prefetched():
            start = int(self._start["sample"]) if first else self._first_offsets(prep.own)[0]
            first = False
            for s in range(start, len(prep.items)):
                key_id, data = prep.items[s]
                self._position = {"own": prep.own, "sample": s + 1, "token": 0, "snapshot": prep.snapshot}
                self.delivered[key_id] += 1
                yield StreamSample(self._key_names[key_id], key_id, data, prep.index)

    def _iter_tokens(self) -> Iterator[TokenSequence]:
        length = int(self.job.spec.seq_len or 0) + 1
        # buffered segments: [own, sample, token offset, tokens, key id, snapshot]
        buf: deque[list[Any]] = deque()
        buffered = 0
        first = True
        last_chunk = -1
        for prep in self._prefetched():
            last_chunk = prep.index
            if first:
                start, start_token = int(self._start["sample"]), int(self._start["token"])
            else:
                start, start_token = self._first_offsets(prep.own)
            for s in range(start, len(prep.items)):
                key_id, tokens = prep.items[s]
                offset = start_token if s == start else 0
                if offset < len(tokens):
                    buf.append([prep.own, s, offset, tokens, key_id, prep.snapshot])
                    buffered += len(tokens) - offset
                while buffered >= length:
                    seq = np.empty(length, dtype=np.int64)
                    keys = np.empty(length, dtype=np.int64)
                    filled = 0
                    while filled < length:
                        seg = buf[0]
                        take = min(length - filled, len(seg[3]) - seg[2])
                        seq[filled : filled + take] = seg[3][seg[2] : seg[2] + take]
                        keys[filled : filled + take] = seg[4]
                        filled += take
                        seg[2] += take
                        if seg[2] == len(seg[3]):
                            buf.popleft()
                    buffered -= length
                    if buf:
                        head = buf[0]
                        self._position = {
                            "own": head[0],
                            "sample": head[1],
                            "token": head[2],
                            "snapshot": head[5],
                        }
                    else:
                        self._position = {
                            "own": prep.own,
                            "sample": s + 1,
                            "token": 0,
                            "snapshot": prep.snapshot,
                        }
                    self.delivered += np.bincount(keys, minlength=len(self.delivered))
                    yield TokenSequence(seq, keys, prep.index)
            first = False
        if buf and not self.drop_last:  # the stream's final, shorter sequence
            tail = [(seg[3][seg[2] :], seg[4]) for seg in buf]
            seq = np.concatenate([t for t, _ in tail])
            keys = np.concatenate([np.full(len(t), k, dtype=np.int64) for t, k in tail])
            last = buf[-1]
            self._position = {"own": last[0], "sample": last[1] + 1, "token": 0, "snapshot": last[5]}
            yield TokenSequence(seq, keys, last_chunk)


def _decoder(spec: str) -> Any:
    import webdataset

    return webdataset.autodecode.Decoder([webdataset.autodecode.imagehandler(spec)])


def reshard(job: Job, states: list[dict[str, Any]], dp_groups: int, num_workers: int) -> list[dict[str, Any]]:
    """Stream states for a new topology that continue ``states`` (one per old (dp_group, worker)).

    Every sample (token) the old streams had not handed out is handed out exactly once by
    the new streams, and nothing already handed out is repeated: the chunks left partly or
    wholly unconsumed are listed explicitly (at most a few per old stream) and dealt
    round-robin to the new streams; after them the regular assignment resumes from the
    first chunk no old stream had reached. Returns states ordered by (dp_group, worker).
    """
    if dp_groups < 1 or num_workers < 1:
        raise MixteraError("dp_groups and num_workers must be >= 1")
    seen = {(int(st["dp_group"]), int(st["worker"])) for st in states}
    old_g, old_w = int(states[0]["dp_groups"]), int(states[0]["num_workers"])
    if seen != {(g, w) for g in range(old_g) for w in range(old_w)}:
        raise MixteraError(
            f"reshard needs the state of every old stream (one per dp_group and worker, {old_g}x{old_w}); "
            f"got {sorted(seen)}"
        )
    olds = []
    for st in states:
        s = JobStream.__new__(JobStream)
        s.job = job
        s.dp_group, s.worker = int(st["dp_group"]), int(st["worker"])
        s.dp_groups, s.num_workers, s._plan = old_g, old_w, st.get("plan")
        olds.append((s, st))
    # positions: (global chunk, sample, token, planner snapshot before it)
    positions = []
    for s, st in olds:
        own = int(st["own"])
        positions.append((s, own, s.global_index(own), int(st["sample"]), int(st["token"]), st["snapshot"]))
    frontier = min(p[2] for p in positions)
    # beyond every position, and beyond the leftovers an earlier reshard listed (they all precede its base)
    horizon = max(
        [p[2] + 1 for p in positions] + [int(st["plan"]["base"]) for st in states if st.get("plan")]
    )
    pending: list[tuple[int, int, int]] = []
    for s, own, chunk, sample, token, _ in positions:
        pending.append((chunk, sample, token))
        k = own + 1
        while (i := s.global_index(k)) < horizon:
            pending.append((i, *s._first_offsets(k)))
            k += 1
    pending.sort()
    # the planner state before the frontier chunk, from the stream that stands there (None: chunk 0)
    # any planner state at or before the frontier will do (the planner skips forward): take the latest
    usable = [p[5] for p in positions if p[5] is not None and int(p[5]["next_index"]) <= frontier]
    snap = max(usable, key=lambda st: int(st["next_index"])) if usable else None
    new_states = []
    for g in range(dp_groups):
        for w in range(num_workers):
            sid = g + dp_groups * w
            mine = [list(p) for j, p in enumerate(pending) if j % (dp_groups * num_workers) == sid]
            plan = {"mine": mine, "base": horizon}
            first_sample, first_token = (mine[0][1], mine[0][2]) if mine else (0, 0)
            new_states.append(
                {
                    "job_id": job.spec.job_id,
                    "dp_group": g,
                    "node": 0,
                    "worker": w,
                    "dp_groups": dp_groups,
                    "num_workers": num_workers,
                    "plan": plan,
                    "own": 0,
                    "sample": first_sample,
                    "token": first_token,
                    "snapshot": snap,
                }
            )
    return new_states
