"""Jobs: a query and a mixture bound to a catalog snapshot, ready to stream.

``JobSpec`` is what a user asks for (JSON-able, also the wire format). ``Job`` is the
spec resolved against the catalog: the ChunkerIndex over the mixture's properties, the
component weights, the mixture log, the files and their read indexes, and (token mode)
the token count of every sample, exact (token index) or estimated. A Job needs no database once built, so it can be
pickled into DataLoader workers or sent to a training node; every stream of the job runs
its own planner replica over it.

Jobs are persisted under ``DB_DIR/jobs/<job_id>/`` (JSON + Arrow IPC, never pickle), so a
job id names the same stream across processes and restarts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from . import storage as storage_layer
from .catalog import Catalog, FileFingerprint
from .chunking import ON_EXHAUSTED, ChunkPlanner, ComponentOrders
from .errors import JobError, MixteraError  # JobError lives in errors (light); importable from here too
from .index import ChunkerIndex, build_chunker_index
from .job_store import _JOB_ID
from .mixture import (
    DynamicMixture,
    Mixture,
    MixtureError,
    MixtureKey,
    ResolvedMixture,
    ScheduleMixture,
    as_mixture,
    reweight,
)
from .mixture_log import (
    DEFAULT_MIXTURE_TIMEOUT,
    LOG_FILE,
    SEALED_FOREVER,
    DirectoryFollower,
    LogFollower,
    MixtureUnknownError,
    MixtureWaitCancelled,
    WeightsLog,
    apply_line,
    read_seal,
    write_seal,
)
from .query import Query

#: Per-sample token counts (from a token index) or sizes in bytes (to estimate them from) of a
#: token-mode job, beside job.json (numpy .npy, float64, interval order).
TOKENS_FILE = "sample_tokens.npy"
BYTES_FILE = "sample_bytes.npy"


@dataclass(frozen=True)
class TokenizerSpec:
    name: str  # tokenizer plugin
    source: str  # path or encoding name
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """Everything that determines a job's stream. Two equal specs give identical streams."""

    job_id: str
    query: dict[str, Any]
    mixture: dict[str, Any]
    chunk_size: int = 1024
    seed: int = 0
    dp_groups: int = 1
    nodes_per_group: int = 1
    num_workers: int = 1
    on_exhausted: str = "stop"
    block_size: int = 256
    text_field: str = "text"
    tokenizer: TokenizerSpec | None = None
    seq_len: int | None = None
    add_bos: bool = False
    add_eos: bool = True
    token_estimate_samples: int = 2048
    samples_per_step: int | None = None
    # how many chunks after the consumed position a feedback-driven change takes effect (and how
    # far past it streams may plan); None: 4 * dp_groups * num_workers, what each stream's
    # read-ahead needs (see JobSpec.delay)
    feedback_delay: int | None = None
    # a mixture change that moves no key's weight by more than this is not logged
    mixture_tolerance: float = 1e-3
    # token mode: size chunks in tokens (about this many per chunk) instead of chunk_size samples
    chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not _JOB_ID.match(self.job_id):
            raise JobError(
                f"job id {self.job_id!r} must be 1-128 characters of letters, digits, '_', '-', '.'"
            )
        for name in ("chunk_size", "dp_groups", "nodes_per_group", "num_workers", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > 2**31:
                raise JobError(f"{name} must be an integer between 1 and 2**31, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise JobError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise JobError(
                f"on_exhausted must be one of {', '.join(ON_EXHAUSTED)}, got {self.on_exhausted!r}"
            )
        if (self.tokenizer is None) != (self.seq_len is None):
            raise JobError("token mode needs both tokenizer and seq_len (sample mode: neither)")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 1):
            raise JobError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if self.samples_per_step is not None and self.samples_per_step < 1:
            raise JobError(f"samples_per_step must be positive, got {self.samples_per_step!r}")
        if self.feedback_delay is not None and (
            not isinstance(self.feedback_delay, int) or not 1 <= self.feedback_delay <= 2**31
        ):
            # 0 would deadlock: the chunk after the consumed one would wait for the feedback of a
            # step that needs it
            raise JobError(f"feedback_delay must be an integer >= 1, got {self.feedback_delay!r}")
        if self.chunk_tokens is not None:
            if not isinstance(self.chunk_tokens, int) or isinstance(self.chunk_tokens, bool):
                raise JobError(f"chunk_tokens must be a positive integer, got {self.chunk_tokens!r}")
            if not 1 <= self.chunk_tokens <= 2**31:
                raise JobError(f"chunk_tokens must be between 1 and 2**31, got {self.chunk_tokens!r}")
            if self.tokenizer is None:
                raise JobError("chunk_tokens needs token mode (tokenizer= and seq_len=); use chunk_size")
        if not isinstance(self.mixture_tolerance, int | float) or not 0 <= self.mixture_tolerance < 1:
            raise JobError(f"mixture_tolerance must be in [0, 1), got {self.mixture_tolerance!r}")

    @property
    def delay(self) -> int:
        """Chunks between the consumed position a feedback names and the chunk its change starts at.

        It is also how far past the last reported position streams may plan, so it must cover
        their read-ahead: each stream holds up to ~4 of its own chunks (planned, being read,
        being tokenized), and the streams of all dp groups and workers take turns, hence
        ``4 * dp_groups * num_workers``. In training steps that is ``4 * num_workers`` steps when
        a chunk holds one rank's batch (the lag a change has, at most, after its feedback). In
        token mode chunks hold *about* ``chunk_tokens`` tokens, and a batch may need several
        small ones: the default is ``12 * dp_groups * num_workers`` there.
        """
        if self.feedback_delay is not None:
            return self.feedback_delay
        # token mode: chunks are cut by estimated tokens, so a few consecutive chunks of short
        # documents can hold less than one batch; 12 per stream covered every case measured
        per_stream = 12 if self.token_mode else 4
        return per_stream * self.dp_groups * self.num_workers

    @property
    def token_mode(self) -> bool:
        return self.tokenizer is not None

    @property
    def streams_per_group(self) -> int:
        return self.num_workers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def initial_seal(self) -> int:
        """Chunks decided before any feedback: those a change from the first step (position
        0) cannot reach, and at least chunk 0, which the first step needs."""
        return max(self.delay, 1) if self.dynamic else SEALED_FOREVER

    @property
    def dynamic(self) -> bool:
        """Whether the mixture can change while the job streams (feedback or step reports)."""
        mixture = Mixture.from_json(self.mixture)
        return isinstance(mixture, DynamicMixture) or (
            isinstance(mixture, ScheduleMixture) and not self.samples_per_step
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        data = dict(data)
        if data.get("tokenizer") is not None:
            data["tokenizer"] = TokenizerSpec(**data["tokenizer"])
        return cls(**data)


@dataclass
class FileEntry:
    path: str
    format: str
    read_index: bytes | None
    # what registration saw of the file (size, mtime, content hash); None in jobs saved before
    # fingerprints existed: their files are not checked here (the formats still compare sizes)
    fingerprint: FileFingerprint | None = None

    def check_unchanged(self) -> None:
        """Raise :class:`~mixtera_core.errors.FileChangedError` when the file no longer is what
        registration saw. Cheap on every open: a ``stat``, and a content hash once per process
        for each state of the file (see :meth:`FileFingerprint.verify`)."""
        if self.fingerprint is not None:
            self.fingerprint.verify(self.path)


@dataclass
class Job:
    """A resolved job: self-contained (no database handle), picklable, deterministic.

    The mixture log is the one truth about the weights at each chunk. The process that built
    the job (or loaded it as the catalog's owner) *owns* it and records changes; every other
    copy of the job — pickled into a DataLoader worker, inherited by fork, loaded on another
    DDP rank, fetched from a server — *follows* the owner and, before planning a chunk past the
    seal, waits until the owner has decided it (:meth:`await_mixture`).
    """

    spec: JobSpec
    index: ChunkerIndex
    component_keys: list[MixtureKey]
    resolved: ResolvedMixture
    log: WeightsLog
    files: dict[int, FileEntry]
    # token mode with a token index: the exact tokens of every sample in the index's interval
    # order; what the planner fills token quotas with
    sample_tokens: np.ndarray | None = field(default=None, repr=False)
    catalog_version: int = 0
    # token mode with a token index: its directory; streams read tokens there instead of
    # tokenizing (see mixtera_core.token_index)
    token_index: str | None = None
    # token mode without a token index: every sample's size in bytes (interval order, NaN where
    # unknown); the planner's token counts are estimated from them (mixtera_core.token_estimate)
    sample_bytes: np.ndarray | None = field(default=None, repr=False, compare=False)
    _estimator: Any = field(default=None, repr=False, compare=False)
    # feedback-driven changes: (chunk index, step, reason, ...); the weights themselves are in `log`
    changes: list[dict[str, Any]] = field(default_factory=list)
    # the job's directory (DB_DIR/jobs/<id>) when it lives in a local catalog: copies in other
    # processes follow the log there
    home: str | None = field(default=None, compare=False)
    # how a copy that does not own the log brings it up to date; None: this process owns it
    follower: LogFollower | None = field(default=None, repr=False, compare=False)
    # changes made since the last save()/save_log(): appended to log.jsonl by save_log()
    _unsaved: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)
    # bumped by every rewrite of job.json (compaction, restore): followers reload on a new one
    generation: int = field(default=0, compare=False)
    # object storage: the public filesystem options of the job's remote files, by URL prefix
    # (see mixtera_core.storage); every process that reads the job connects with them
    storage: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    _owner_pid: int = field(default_factory=os.getpid, repr=False, compare=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False, compare=False)

    @property
    def key_names(self) -> list[str]:
        return [str(k) for k in self.resolved.keys]

    @property
    def mixture(self) -> Mixture:
        return Mixture.from_json(self.spec.mixture)

    def estimator(self) -> Any:
        """The job's token estimator (token mode without a token index), made once per process."""
        if self._estimator is None:
            from .token_estimate import TokenEstimator

            self._estimator = TokenEstimator(self)
        return self._estimator

    def token_sizes(self, stage: int = 0) -> np.ndarray | None:
        """Tokens of every sample (interval order): exact, or the estimate of ``stage``; None in
        sample mode."""
        if self.sample_tokens is not None:
            return np.asarray(self.sample_tokens)
        if self.sample_bytes is not None:
            return self.estimator().sizes(stage)
        return None

    def orders(self) -> ComponentOrders:
        return ComponentOrders(self.index, self.spec.seed, self.spec.block_size, self.token_sizes(0))

    def planner(self) -> ChunkPlanner:
        if self.spec.token_mode and self.sample_tokens is None and self.sample_bytes is None:
            raise MixteraError(
                f"job {self.spec.job_id!r} has no token counts here: token-mode chunks are planned "
                f"where the job was built (its process, DB_DIR or server); a token-mode job saved by "
                f"a Mixtera before token counts ({TOKENS_FILE}/{BYTES_FILE}) cannot be planned: execute "
                f"it again under a new job id"
            )
        staged = None
        if self.sample_tokens is None and self.sample_bytes is not None:
            est = self.estimator()
            staged = (est.stage_of, est.sizes)
        return ChunkPlanner(
            self.orders(),
            self.log,
            self.spec.chunk_size,
            self.spec.on_exhausted,
            self.spec.chunk_tokens,
            staged,
            # documents longer than a sequence may be split between chunks (packing splits them
            # anyway); on the fly only long ones (each part costs tokenizing the whole document)
            split_tokens=float(self.spec.seq_len + 1) if self.spec.seq_len else float("inf"),
            split_fraction=0.0 if self.sample_tokens is not None else 1 / 16,
        )

    @property
    def component_tokens(self) -> np.ndarray | None:
        """Tokens per component (token mode): exact, or the best estimate (the last stage)."""
        if self.sample_tokens is None and self.sample_bytes is None:
            return None
        stage = 0 if self.sample_tokens is not None else self.estimator().stages - 1
        orders = ComponentOrders(self.index, self.spec.seed, self.spec.block_size, self.token_sizes(stage))
        return orders.component_tokens()

    @property
    def tokens_per_sample(self) -> np.ndarray | None:
        """Mean tokens per sample of each component (token mode)."""
        tokens = self.component_tokens
        return None if tokens is None else tokens / np.maximum(self.index.component_sizes(), 1)

    def component_key_ids(self) -> np.ndarray:
        """Key id (position in ``key_names``) of every component; -1 for unmatched ones."""
        return self.resolved.component_key

    def key_weights(self, weights: np.ndarray) -> dict[str, float]:
        """Component weights summed per mixture key (token mode: shares of tokens)."""
        ids = self.resolved.component_key
        return {name: float(weights[ids == k].sum()) for k, name in enumerate(self.key_names)}

    # ------------------------------------------------------------------ the one truth

    def _follower(self) -> LogFollower | None:
        """Who brings this copy's log up to date; None when this process owns the log. A copy
        inherited by fork (a DataLoader worker) follows the job directory, like a pickled one."""
        if self.follower is None and os.getpid() != self._owner_pid and self.home is not None:
            self.follower = DirectoryFollower(self.home)
            self._changed = threading.Condition()  # the parent's may have been held at fork time
        return self.follower

    def await_mixture(
        self, chunk_index: int, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Return once the weights of chunk ``chunk_index`` are final (sealed), waiting for the
        log's owner if needed; :class:`MixtureUnknownError` after ``timeout`` seconds, and
        :class:`MixtureWaitCancelled` as soon as ``cancel`` is set (the consumer went away)."""
        if chunk_index < self.log.sealed:
            return
        timeout = DEFAULT_MIXTURE_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        pause = 0.002
        while True:
            if cancel is not None and cancel.is_set():
                raise MixtureWaitCancelled(f"stopped waiting for the mixture of chunk {chunk_index}")
            follower = self._follower()
            if follower is not None:
                follower.refresh(self)
            if chunk_index < self.log.sealed:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise MixtureUnknownError(
                    f"job {self.spec.job_id!r}: the mixture of chunk {chunk_index} is not decided after "
                    f"{timeout:.0f} s (decided up to chunk {self.log.sealed - 1}). A dynamic mixture is "
                    f"decided by feedback: send client.feedback(..., position=<highest chunk_index "
                    f"consumed>) (FeedbackReporter does) or client.report_step(job, step, position=...) "
                    f"every step from rank 0; streams may plan up to position + 1 + feedback_delay "
                    f"({self.spec.delay}). If feedback comes every step already, the next batch needs "
                    f"more than feedback_delay chunks (small chunks, or short documents in token mode): "
                    f"raise feedback_delay (or chunk_size / chunk_tokens); if it comes less often, "
                    f"feedback_delay must cover the steps in between"
                )
            with self._changed:
                self._changed.wait(min(pause, left))
            pause = min(pause * 2, 0.05)

    def seal(self, sealed: int) -> None:
        """(Owner) Declare the weights of chunks ``< sealed`` final; wakes waiting planners."""
        if sealed > self.log.sealed:
            self.log.sealed = int(sealed)
            with self._changed:
                self._changed.notify_all()

    def set_key_weights(
        self, chunk_index: int, key_weights: Any, step: int | None, reason: str, **details: Any
    ) -> None:
        """Record a mixture change (weights per key of the job's mixture) from ``chunk_index`` on."""
        weights = reweight(self.resolved, self.index.component_sizes(), key_weights)
        self.set_component_weights(chunk_index, weights, step, reason, **details)

    def set_component_weights(
        self, chunk_index: int, weights: np.ndarray, step: int | None, reason: str, **details: Any
    ) -> None:
        """Record a change of the component weights from ``chunk_index`` on; ``details`` (JSON
        values, e.g. the position a feedback named) are kept with the change."""
        if chunk_index < self.log.sealed and self.log.sealed != SEALED_FOREVER:
            raise JobError(
                f"job {self.spec.job_id!r}: a change at chunk {chunk_index} is below the seal "
                f"({self.log.sealed}); chunks there may have been streamed already"
            )
        self.log.add(chunk_index, weights)
        change = {"chunk": int(chunk_index), "step": step, "reason": reason, **details}
        self.changes.append(change)
        self._unsaved.append({**change, "weights": np.asarray(weights, dtype=np.float64).tolist()})
        with self._changed:
            self._changed.notify_all()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_changed", None)
        state["_unsaved"] = []
        if state.get("follower") is None and self.home is not None:
            state["follower"] = DirectoryFollower(self.home)  # the copy follows the owner's directory
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._changed = threading.Condition()
        self.use_storage_options()

    def use_storage_options(self) -> None:
        """Make this process connect to the job's remote files as registration did."""
        for prefix, options in self.storage.items():
            storage_layer.use_stored(prefix, options)

    # ------------------------------------------------------------------ persistence

    def to_parts(self) -> tuple[bytes, bytes, bytes]:
        """(job JSON, index, files) as bytes: how a server sends a job to a client."""
        files = pa.table(
            {
                "file_id": pa.array(list(self.files), pa.int64()),
                "path": [f.path for f in self.files.values()],
                "format": [f.format for f in self.files.values()],
                "read_index": pa.array([f.read_index for f in self.files.values()], pa.binary()),
                # the fingerprints (null where unknown); job files written before lack these columns
                "size_bytes": pa.array([_fp(f, "size") for f in self.files.values()], pa.int64()),
                "mtime_ns": pa.array([_fp(f, "mtime_ns") for f in self.files.values()], pa.int64()),
                "content_hash": pa.array([_fp(f, "content_hash") for f in self.files.values()], pa.string()),
            }
        )
        buf = io.BytesIO()
        with ipc.new_stream(buf, files.schema) as w:
            w.write_table(files)
        return self.to_parts_meta(), self.index.to_bytes(), buf.getvalue()

    @classmethod
    def from_parts(cls, job_json: bytes, index_bytes: bytes, files_bytes: bytes) -> Job:
        meta = json.loads(job_json)
        index = ChunkerIndex.from_bytes(index_bytes)
        files_t = ipc.open_stream(files_bytes).read_all()
        spec = JobSpec.from_json(meta["spec"])
        files = {
            int(r["file_id"]): FileEntry(
                r["path"],
                r["format"],
                r["read_index"],
                None
                if r.get("size_bytes") is None
                else FileFingerprint(int(r["size_bytes"]), r.get("mtime_ns"), r.get("content_hash")),
            )
            for r in files_t.to_pylist()
        }
        comps = [MixtureKey.of_component(index.component_values(c)) for c in range(index.num_components)]
        resolved = Mixture.from_json(spec.mixture).resolve(comps, index.component_sizes(), 0)
        job = cls(
            spec=spec,
            index=index,
            component_keys=comps,
            resolved=resolved,
            log=WeightsLog.from_json(meta["log"], int(meta.get("sealed", SEALED_FOREVER))),
            files=files,
            token_index=meta.get("token_index"),
            catalog_version=meta["catalog_version"],
            changes=meta.get("changes", []),
            generation=int(meta.get("generation", 0)),
            storage=meta.get("storage", {}),
        )
        job.use_storage_options()
        return job

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        _, index_bytes, files_bytes = self.to_parts()
        atomic_write(os.path.join(directory, "index.arrow"), index_bytes)
        atomic_write(os.path.join(directory, "files.arrow"), files_bytes)
        for name, values in ((TOKENS_FILE, self.sample_tokens), (BYTES_FILE, self.sample_bytes)):
            if values is not None:
                buf = io.BytesIO()
                np.save(buf, np.asarray(values, dtype=np.float64))
                atomic_write(os.path.join(directory, name), buf.getvalue())
        self._rewrite_meta(directory)
        self.home = directory

    @property
    def history_floor(self) -> int:
        """The lowest chunk a stream of this job can still need: the highest position reported
        (``sealed - 1 - delay``) less the streams' read-ahead lag (``delay``). The mixture before
        it is history that checkpoints and compaction drop."""
        if self.log.sealed >= SEALED_FOREVER or not self.spec.dynamic:
            return 0
        return max(0, self.log.sealed - 1 - 2 * self.spec.delay)

    def compact(self, directory: str) -> int:
        """Drop the mixture history below :attr:`history_floor` and fold ``log.jsonl`` into
        ``job.json``; returns the entries removed. Followers notice the new files and reload
        (in place)."""
        floor = self.history_floor
        removed = self.log.compact(floor)
        self.changes = [c for c in self.changes if int(c["chunk"]) >= floor]
        self._rewrite_meta(directory)
        return removed

    def _rewrite_meta(self, directory: str) -> None:
        """A new generation: job.json holds every change, log.jsonl starts empty, then the seal."""
        self.generation += 1
        self._unsaved.clear()
        atomic_write(os.path.join(directory, "job.json"), self.to_parts_meta())
        _remove(os.path.join(directory, LOG_FILE))
        write_seal(directory, self.generation, self.log.sealed)

    def save_log(self, directory: str) -> None:
        """Persist the changes made since the last save, then the seal: changes are appended to
        ``log.jsonl``, one line each (constant cost however long the job runs; :meth:`load`
        replays them), and the seal file is replaced after them, so a follower that reads the
        seal first never misses a change below it."""
        if self._unsaved:
            lines = "".join(json.dumps({**c, "generation": self.generation}) + "\n" for c in self._unsaved)
            with open(os.path.join(directory, LOG_FILE), "a") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
            self._unsaved.clear()
        write_seal(directory, self.generation, self.log.sealed)

    def to_parts_meta(self) -> bytes:
        return json.dumps(
            {
                "spec": self.spec.to_json(),
                "log": self.log.to_json(),
                "sealed": self.log.sealed,
                "changes": self.changes,
                "token_index": self.token_index,
                "catalog_version": self.catalog_version,
                "generation": self.generation,
                "storage": self.storage,
            }
        ).encode()

    @classmethod
    def load(cls, directory: str, *, owner: bool = True) -> Job:
        """A job saved under ``directory``. ``owner=False``: a copy that follows the directory
        (another rank of a ``torchrun`` job) instead of recording changes itself."""
        parts = []
        for name in ("job.json", "index.arrow", "files.arrow"):
            with open(os.path.join(directory, name), "rb") as fh:
                parts.append(fh.read())
        job = cls.from_parts(*parts)
        job.home = directory
        if job.spec.token_mode:
            # memory-mapped: every process of a node shares the pages
            for name in (TOKENS_FILE, BYTES_FILE):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    setattr(
                        job,
                        "sample_tokens" if name == TOKENS_FILE else "sample_bytes",
                        np.load(path, mmap_mode="r"),
                    )
        if not owner:
            job.follower = DirectoryFollower(directory)
            job.follower.refresh(job)
            return job
        log_path = os.path.join(directory, LOG_FILE)
        if os.path.exists(log_path):
            with open(log_path) as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a line cut short by a crash: that change was never acknowledged as saved
                    change = json.loads(line)
                    if int(change.pop("generation", 0)) == job.generation:
                        apply_line(job, change)
        generation, sealed = read_seal(directory)
        if sealed is not None and generation == job.generation:
            job.log.sealed = max(job.log.sealed, sealed)
        return job


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fp(entry: FileEntry, attr: str) -> Any:
    """One attribute of a file entry's fingerprint, or None (for the job's files table)."""
    return None if entry.fingerprint is None else getattr(entry.fingerprint, attr)


def build_job(catalog: Catalog, spec: JobSpec) -> Job:
    """Resolve a spec against the catalog (index, weights, files). Token calibration is separate."""
    mixture = Mixture.from_json(spec.mixture)
    query = Query.from_json(spec.query)
    index = build_chunker_index(catalog, query, mixture.properties())
    if index.num_components == 0:
        raise JobError(f"job {spec.job_id!r}: the query selects no samples")
    comps = [MixtureKey.of_component(index.component_values(c)) for c in range(index.num_components)]
    sizes = index.component_sizes()
    resolved = mixture.resolve(comps, sizes, 0)
    log = WeightsLog([(0, resolved.weights)], sealed=spec.initial_seal)
    if isinstance(mixture, ScheduleMixture) and spec.samples_per_step:
        # With a known global batch, a switch at step s is a switch at a fixed chunk: deterministic everywhere.
        for step in mixture.switch_steps():
            chunk = math.ceil(step * spec.samples_per_step / spec.chunk_size)
            log.add(chunk, mixture.resolve(comps, sizes, step).weights)
    file_ids = sorted(set(index.file_ids.tolist()))
    infos = catalog.files(file_ids)
    files = {
        fid: FileEntry(infos[fid].path, infos[fid].format, catalog.read_index(fid), infos[fid].fingerprint)
        for fid in file_ids
    }
    remote = {storage_layer.bucket(f.path) for f in files.values() if storage_layer.is_remote(f.path)}
    options = {p: o for p, o in catalog.storage_options().items() if p in remote}
    job = Job(spec, index, comps, resolved, log, files, None, index.catalog_version)
    job.storage = options
    return job


def make_spec(
    query: Query,
    mixture: Mixture | Mapping[str, float] | None,
    *,
    chunk_size: int = 1024,
    seed: int = 0,
    dp_groups: int = 1,
    nodes_per_group: int = 1,
    num_workers: int = 1,
    on_exhausted: str = "stop",
    block_size: int = 256,
    text_field: str = "text",
    tokenizer: str | tuple[str, str] | TokenizerSpec | None = None,
    tokenizer_options: Mapping[str, Any] | None = None,
    seq_len: int | None = None,
    add_bos: bool = False,
    add_eos: bool = True,
    token_estimate_samples: int = 2048,
    samples_per_step: int | None = None,
    feedback_delay: int | None = None,
    mixture_tolerance: float = 1e-3,
    chunk_tokens: int | None = None,
) -> JobSpec:
    try:
        mix = as_mixture(mixture)
    except MixtureError:
        raise
    tok: TokenizerSpec | None
    if tokenizer is None or isinstance(tokenizer, TokenizerSpec):
        tok = tokenizer
    elif isinstance(tokenizer, tuple):
        tok = TokenizerSpec(tokenizer[0], str(tokenizer[1]), dict(tokenizer_options or {}))
    else:
        raise JobError(
            "tokenizer is (plugin name, source), e.g. ('hf', 'tokenizer.json') or ('tiktoken', 'cl100k_base')"
        )
    return JobSpec(
        job_id=query.job_id,
        query=query.to_json(),
        mixture=mix.to_json(),
        chunk_size=chunk_size,
        seed=seed,
        dp_groups=dp_groups,
        nodes_per_group=nodes_per_group,
        num_workers=num_workers,
        on_exhausted=on_exhausted,
        block_size=block_size,
        text_field=text_field,
        tokenizer=tok,
        seq_len=seq_len,
        add_bos=add_bos,
        add_eos=add_eos,
        token_estimate_samples=token_estimate_samples,
        samples_per_step=samples_per_step,
        feedback_delay=feedback_delay,
        mixture_tolerance=mixture_tolerance,
        chunk_tokens=chunk_tokens,
    )
