"""Tokens per sample without tokenizing the corpus: sizes in bytes times measured ratios.

Registration records every sample's size in bytes (of its text). Token mode needs every
sample's size in tokens; without a token index (:mod:`mixtera_core.token_index`) they are
estimated here, deterministically:

* **Where the ratio is measured.** Per component, samples spread over its files in
  proportion to their bytes (at least two per file; a byte-weighted draw of files when there
  are more files than that), uniformly at random within a file, seeded by the job. Of each, a
  window of at most ``WINDOW_CHARS`` characters at a seeded offset (wrapping around the
  end, so that every character is as likely to be measured) is tokenized, so the cost
  is bounded however long the documents are.
* **What is estimated.** Tokens per recorded byte, per *file* (scripts and styles differ
  between shards far more than within one): the ratio of the measured documents' tokens to
  their bytes, shrunk towards the component's ratio when a file has few measured documents;
  files nobody measured take the component's ratio. A sample's tokens are then
  ``bytes * ratio(file) + BOS/EOS``.
* **Refined in stages, by tokens planned.** Stage 0 measures ``token_estimate_samples / 64``
  windows per component, so a job starts at once; stages 1, 2 and 3 a sixteenth, a quarter
  and all of them, each a superset of the one before, in force once the job has planned
  64 k, 256 k and 512 k tokens. Stage 0 is measured when the first chunk is planned, the later
  stages in a background thread while the stream runs. When a planner enters a new stage it
  re-counts, with the better ratios, the tokens it has already planned and carries the
  difference, so the early error is paid back. Every process that plans computes the same
  stages from the same seed: the result is a function of the plan, never of timing.

Because the planner fills token quotas from per-sample counts and carries the difference
(see :mod:`mixtera_core.chunking`), documents of different lengths do not bias the shares.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .catalog import Catalog
from .chunking import _rng, stable_id
from .errors import MixteraError
from .interfaces import FieldRef
from .job import Job
from .plugins import PluginManager, get_plugin_manager
from .streaming import _FileReaders, document_specials, load_tokenizer, record_text

#: Token indexes live in DB_DIR/tokens/<fingerprint>/ (see mixtera_core.token_index).
TOKENS_DIR = "tokens"
#: Characters of a measured document that are tokenized (a window at a seeded offset).
WINDOW_CHARS = 512
#: Stage k measures token_estimate_samples // STAGE_DIVISORS[k] windows per component ...
STAGE_DIVISORS = (64, 16, 4, 1)
#: ... and is in force once the job has planned STAGE_TOKENS[k] tokens.
STAGE_TOKENS = (0, 1 << 16, 1 << 18, 1 << 19)
#: Weight, in documents, of the component's ratio when a file's own ratio is estimated.
SHRINK_SAMPLES = 2.0


def job_sample_bytes(job: Job, sample_bytes: Mapping[int, np.ndarray | None]) -> np.ndarray:
    """The recorded size of every sample of ``job`` in the index's interval order (NaN where
    registration did not record sizes: older catalogs, third-party formats)."""
    index = job.index
    per_file: dict[int, np.ndarray] = {}
    for fid in np.unique(index.file_ids).tolist():
        known = sample_bytes.get(int(fid))
        stop = int(index.stops[index.file_ids == fid].max())
        if known is None or len(known) < stop:
            per_file[int(fid)] = np.full(stop, np.nan)
        else:
            per_file[int(fid)] = np.asarray(known, dtype=np.float64)
    return index.gather(per_file)


class _Component:
    """What one component measures: windows drawn file by file, nested from stage to stage.

    A file gets draws in proportion to its bytes (at least two). A draw picks a document with
    probability proportional to its size and a window in it at a seeded offset, so every byte
    of the file is as likely to be measured: the mean of the draws' tokens per byte estimates
    the file's ratio of tokens to bytes, however unequal its documents are.
    """

    def __init__(self, rng: np.random.Generator, files: np.ndarray, weight: np.ndarray, budget: int) -> None:
        uniq, first, counts = np.unique(files, return_index=True, return_counts=True)
        self.files, self.first, self.counts = uniq, first, counts
        self.file_bytes = np.add.reduceat(weight, first) if len(first) else np.zeros(0)
        # byte-weighted priority of files (a draw without replacement), for budgets below 2 per file
        keys = rng.random(len(uniq)) ** (1.0 / np.maximum(self.file_bytes, 1e-9))
        self.priority = np.argsort(-keys, kind="stable")
        final = self.want(budget)
        self.docs = [
            first[k]
            + rng.choice(
                int(counts[k]), size=int(final[k]), p=_normalized(weight[first[k] : first[k] + counts[k]])
            )
            for k in range(len(uniq))
        ]
        self.window_seeds = [rng.integers(0, 2**31, size=int(final[k])) for k in range(len(uniq))]
        # (file slot, draw) -> (the window's tokens per byte of text, the document's text bytes,
        # its recorded bytes)
        self.measured: dict[tuple[int, int], tuple[float, float, float]] = {}

    def want(self, m: int) -> np.ndarray:
        """Draws per file for a budget of ``m``."""
        n = len(self.files)
        if n * 2 > m:
            want = np.zeros(n, dtype=np.int64)
            want[self.priority[: max(1, m // 2)]] = 2
            return want
        return np.maximum(2, np.floor(m * self.file_bytes / self.file_bytes.sum())).astype(np.int64)

    def draws(self, m: int) -> list[tuple[int, int, int, int]]:
        """(file slot, draw, local position, window seed) of the draws budget ``m`` measures."""
        want = self.want(m)
        return [
            (k, j, int(self.docs[k][j]), int(self.window_seeds[k][j]))
            for k in range(len(self.files))
            for j in range(int(want[k]))
        ]


def _normalized(weight: np.ndarray) -> np.ndarray:
    return weight / weight.sum()


class TokenEstimator:
    """Estimated tokens of every sample of a job, per stage (see the module docstring).

    Built from the job alone (its recorded sizes and files), so every process that plans, a
    DataLoader worker or another rank, computes the same numbers; computed stages are kept.
    """

    def __init__(self, job: Job) -> None:
        assert job.sample_bytes is not None and job.spec.tokenizer is not None
        self.job = job
        spec = job.spec
        self.recorded = np.asarray(job.sample_bytes, dtype=np.float64)
        self.budgets = [max(4, spec.token_estimate_samples // d) for d in STAGE_DIVISORS]
        self._sizes: dict[int, np.ndarray] = {}
        self._components: list[_Component] | None = None
        # first sample of each component in interval order
        self._first = np.concatenate(([0], np.cumsum(job.index.component_sizes())))
        self._fresh_threads()

    def _fresh_threads(self) -> None:
        """Locks and the background measurer of this process (none survives a fork or pickling)."""
        self._pid = os.getpid()
        self._ready = threading.Condition()
        self._work = threading.Lock()  # one measurement at a time: they share the draws' cache
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_ready", "_work", "_thread", "_error"):
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh_threads()

    @property
    def stages(self) -> int:
        return len(self.budgets)

    def stage_of(self, planned_tokens: float) -> int:
        """The stage in force once ``planned_tokens`` tokens (all components) are planned."""
        return max(k for k, start in enumerate(STAGE_TOKENS[: self.stages]) if planned_tokens >= start)

    def sizes(self, stage: int) -> np.ndarray:
        """Estimated tokens per sample (interval order) under ``stage``'s measurements.

        Stage 0 is measured at once; the later ones in a background thread (started then), so
        that streaming overlaps them; asking for one waits until it is measured."""
        if self._pid != os.getpid():  # a forked copy: the measurer thread stayed in the parent
            self._fresh_threads()
        if stage == 0:
            with self._work:
                if 0 not in self._sizes:
                    self._sizes[0] = self._estimate(self.budgets[0])
        with self._ready:
            if self._thread is None and self.stages > 1:
                self._thread = threading.Thread(
                    target=self._measure_later_stages, name="mixtera-token-estimate", daemon=True
                )
                self._thread.start()
            while stage not in self._sizes:
                if self._error is not None:
                    raise MixteraError(f"measuring tokens per byte failed: {self._error}") from self._error
                self._ready.wait()
            return self._sizes[stage]

    def _measure_later_stages(self) -> None:
        try:
            for stage in range(1, self.stages):
                with self._work:
                    if stage in self._sizes:
                        continue
                    sizes = self._estimate(self.budgets[stage])
                with self._ready:
                    self._sizes[stage] = sizes
                    self._ready.notify_all()
        except BaseException as e:  # handed to whoever waits for a stage
            with self._ready:
                self._error = e
                self._ready.notify_all()

    # ---------------------------------------------------------------- measuring

    def _estimate(self, budget: int) -> np.ndarray:
        job = self.job
        spec = job.spec
        assert spec.tokenizer is not None
        plugins = get_plugin_manager()
        tok = load_tokenizer(spec.tokenizer, plugins)
        bos, eos = document_specials(tok, spec.add_bos, spec.add_eos)
        index = job.index
        lengths = index.stops - index.starts
        sample_files = np.repeat(index.file_ids, lengths)
        sizes = index.component_sizes().tolist()
        if self._components is None:
            keys = index.component_keys()
            comps = []
            first = 0
            for c, n in enumerate(sizes):
                rec = self.recorded[first : first + n]
                known = np.isfinite(rec)
                fill = float(rec[known].mean()) if known.any() else 1.0
                weight = np.maximum(np.where(known, rec, fill), 1.0)
                rng = _rng(spec.seed, 3, stable_id(keys[c]))
                comps.append(_Component(rng, sample_files[first : first + n], weight, self.budgets[-1]))
                first += n
            self._components = comps
        out = np.empty(len(self.recorded), dtype=np.float64)
        readers = _FileReaders(job, plugins)
        first = 0
        for c, n in enumerate(sizes):
            sl = slice(first, first + n)
            first += n
            comp = self._components[c]
            self._measure(c, comp, budget, readers, tok)
            out[sl] = _component_sizes(comp, budget, self.recorded[sl], sample_files[sl])
        return out + float(len(bos) + len(eos))

    def _measure(self, c: int, comp: _Component, budget: int, readers: _FileReaders, tok: Any) -> None:
        """Tokenize the windows of the draws of ``budget`` that are not measured yet."""
        job = self.job
        todo = [d for d in comp.draws(budget) if (d[0], d[1]) not in comp.measured]
        if not todo:
            return
        fids, starts, stops = job.index.intervals(c)
        local_first = np.concatenate(([0], np.cumsum(stops - starts)))
        pos = np.asarray([d[2] for d in todo], dtype=np.int64)
        iv = np.searchsorted(local_first, pos, side="right") - 1
        file_of = fids[iv].tolist()
        sample_of = (starts[iv] + (pos - local_first[iv])).tolist()
        by_file: dict[int, set[int]] = {}
        for f, s in zip(file_of, sample_of, strict=True):
            by_file.setdefault(f, set()).add(s)
        field = FieldRef.parse(job.spec.text_field)
        texts: dict[tuple[int, int], str] = {}
        for f, samples in sorted(by_file.items()):
            for i, rec in readers.read_field(f, [(s, s + 1) for s in sorted(samples)], field):
                if rec is None:  # e.g. webdataset: no "text" field, but a txt member
                    rec = next(iter(readers.read(f, [(i, i + 1)])))[1]
                texts[(f, i)] = record_text(rec, job.spec.text_field, f"{job.files[f].path}:{i}")
        windows: list[str] = []
        facts: list[tuple[float, float, float]] = []  # window bytes, text bytes, recorded bytes
        for (_, _, p, seed), f, s in zip(todo, file_of, sample_of, strict=True):
            text = texts.get((f, s), "")
            # a window that wraps around the end: every character is as likely to be measured
            # (a window inside the text would under-sample both ends, often unlike the middle)
            start = seed % len(text) if len(text) > WINDOW_CHARS else 0
            window = text[start : start + WINDOW_CHARS]
            if len(window) < WINDOW_CHARS:
                window += text[: min(start, WINDOW_CHARS - len(window))]
            size = float(len(text.encode("utf-8")))
            rec = float(self.recorded[self._first[c] + p])
            windows.append(window)
            facts.append((float(len(window.encode("utf-8"))), size, rec if np.isfinite(rec) else size))
        counts = [len(ids) for ids in tok.encode_batch(windows)]
        for (k, j, _, _), n, (wbytes, size, rec) in zip(todo, counts, facts, strict=True):
            comp.measured[(k, j)] = (n / wbytes if wbytes else 0.0, size, rec)


def _component_sizes(comp: _Component, budget: int, recorded: np.ndarray, files: np.ndarray) -> np.ndarray:
    """Per-sample token estimates of one component from the draws of ``budget``.

    Two facts per file, from its draws: tokens per byte of text (the mean over its windows,
    shrunk towards the component's, files weighted by bytes), and how a sample's text bytes
    follow its recorded bytes (a line of JSON holds more than its text: keys, other fields,
    escapes) as ``text = a * recorded + b``, fitted by least squares where the file's draws
    differ enough in size (else ``b = 0``)."""
    per_file: dict[int, list[tuple[float, float, float]]] = {}
    for k, j, _, _ in comp.draws(budget):
        per_file.setdefault(k, []).append(comp.measured[(k, j)])
    if not per_file:
        return np.zeros(len(recorded))
    tpb = {k: float(np.mean([m[0] for m in ms])) for k, ms in per_file.items()}
    weight = np.asarray([comp.file_bytes[k] for k in tpb])
    comp_tpb = float(np.dot(weight, list(tpb.values())) / max(weight.sum(), 1e-9))
    slope = np.ones(len(comp.files))
    offset = np.zeros(len(comp.files))
    rate = np.full(len(comp.files), comp_tpb)
    for k, ms in per_file.items():
        arr = np.asarray(ms)
        rate[k] = (arr[:, 0].sum() + SHRINK_SAMPLES * comp_tpb) / (len(arr) + SHRINK_SAMPLES)
        # draws pick documents in proportion to their recorded bytes: weigh each by the inverse
        # (a mean of ratios, a least-squares fit weighted by 1 / recorded) to estimate the file's
        text, rec = arr[:, 1], np.maximum(arr[:, 2], 1.0)
        a, b = float(np.mean(text / rec)), 0.0
        if len(np.unique(rec)) >= 4 and rec.std() > 0.1 * rec.mean():
            fit_a, fit_b = np.polyfit(rec, text, 1, w=1.0 / np.sqrt(rec))
            if fit_a > 0:
                a, b = float(fit_a), float(fit_b)
        slope[k], offset[k] = a, b
    slot = np.searchsorted(comp.files, files)
    known = np.isfinite(recorded)
    text_bytes = np.maximum(slope[slot] * np.where(known, recorded, 0.0) + offset[slot], 0.0)
    tokens = rate[slot] * text_bytes
    # samples without a recorded size: the mean document of the component, in tokens
    fallback = float(tokens[known].mean()) if known.any() else 0.0
    return np.where(known, tokens, fallback)


def count_job_tokens(job: Job, catalog: Catalog, plugins: PluginManager | None = None) -> None:
    """Give a token-mode job its per-sample token counts: exact from the catalog's token index
    for this tokenizer when it covers every file of the job (streams then read tokens there),
    else estimated from the sizes registration recorded."""
    from .token_index import TokenIndex, tokenizer_fingerprint

    spec = job.spec
    assert spec.tokenizer is not None
    paths = {fid: entry.path for fid, entry in job.files.items()}
    fingerprint = tokenizer_fingerprint(spec.tokenizer, spec.add_bos, spec.add_eos, spec.text_field, plugins)
    tokens = TokenIndex.open(catalog.db_dir, fingerprint)
    if tokens is not None and tokens.covers(paths):
        tokens.check(paths)
        job.sample_tokens = job.index.gather({fid: tokens.sample_tokens(fid) for fid in paths}).astype(
            np.float64
        )
        job.token_index = os.path.join(catalog.db_dir, TOKENS_DIR, fingerprint)
    else:
        job.sample_bytes = job_sample_bytes(job, catalog.sample_bytes(sorted(paths)))
        job.token_index = None
