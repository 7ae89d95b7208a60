"""Jobs: a query and a mixture bound to a catalog snapshot, ready to stream.

``JobSpec`` is what a user asks for (JSON-able, also the wire format). ``Job`` is the
spec resolved against the catalog: the ChunkerIndex over the mixture's properties, the
component weights, the mixture log, the files and their read indexes, and (token mode)
the tokens-per-sample calibration. A Job needs no database once built, so it can be
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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .catalog import Catalog
from .chunking import ON_EXHAUSTED, ChunkPlanner, ComponentOrders, WeightsLog
from .errors import MixteraError
from .index import ChunkerIndex, build_chunker_index
from .mixture import Mixture, MixtureError, MixtureKey, ResolvedMixture, ScheduleMixture, as_mixture, reweight
from .query import Query

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class JobError(MixteraError, ValueError):
    """A job spec is invalid, or a job id is unknown or reused with another spec."""


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
    token_estimate_samples: int = 512
    samples_per_step: int | None = None
    # how many chunks after the consumed position a feedback-driven change takes effect;
    # None: 16 * dp_groups * num_workers (covers the streams' and DataLoaders' read-ahead:
    # planning runs up to prefetch + read_threads + 1 own chunks ahead, token mode 3 more)
    feedback_delay: int | None = None

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
            not isinstance(self.feedback_delay, int) or not 0 <= self.feedback_delay <= 2**31
        ):
            raise JobError(f"feedback_delay must be an integer >= 0, got {self.feedback_delay!r}")

    @property
    def delay(self) -> int:
        """Chunks between the consumed position a feedback names and the chunk its change starts at."""
        if self.feedback_delay is not None:
            return self.feedback_delay
        return 16 * self.dp_groups * self.num_workers

    @property
    def token_mode(self) -> bool:
        return self.tokenizer is not None

    @property
    def streams_per_group(self) -> int:
        return self.num_workers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

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


@dataclass
class Job:
    """A resolved job: self-contained (no database handle), picklable, deterministic."""

    spec: JobSpec
    index: ChunkerIndex
    component_keys: list[MixtureKey]
    resolved: ResolvedMixture
    log: WeightsLog
    files: dict[int, FileEntry]
    tokens_per_sample: np.ndarray | None = None
    catalog_version: int = 0
    # feedback-driven changes: (chunk index, step, reason, ...); the weights themselves are in `log`
    changes: list[dict[str, Any]] = field(default_factory=list)
    # changes made since the last save()/save_log(): appended to log.jsonl by save_log()
    _unsaved: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def key_names(self) -> list[str]:
        return [str(k) for k in self.resolved.keys]

    @property
    def mixture(self) -> Mixture:
        return Mixture.from_json(self.spec.mixture)

    def orders(self) -> ComponentOrders:
        return ComponentOrders(self.index, self.spec.seed, self.spec.block_size)

    def planner(self) -> ChunkPlanner:
        scale = None if self.tokens_per_sample is None else 1.0 / np.maximum(self.tokens_per_sample, 1e-9)
        return ChunkPlanner(self.orders(), self.log, self.spec.chunk_size, self.spec.on_exhausted, scale)

    def component_key_ids(self) -> np.ndarray:
        """Key id (position in ``key_names``) of every component; -1 for unmatched ones."""
        return self.resolved.component_key

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
        self.log.add(chunk_index, weights)
        change = {"chunk": int(chunk_index), "step": step, "reason": reason, **details}
        self.changes.append(change)
        self._unsaved.append({**change, "weights": np.asarray(weights, dtype=np.float64).tolist()})

    # ------------------------------------------------------------------ persistence

    def to_parts(self) -> tuple[bytes, bytes, bytes]:
        """(job JSON, index, files) as bytes: how a server sends a job to a client."""
        files = pa.table(
            {
                "file_id": pa.array(list(self.files), pa.int64()),
                "path": [f.path for f in self.files.values()],
                "format": [f.format for f in self.files.values()],
                "read_index": pa.array([f.read_index for f in self.files.values()], pa.binary()),
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
            int(r["file_id"]): FileEntry(r["path"], r["format"], r["read_index"]) for r in files_t.to_pylist()
        }
        comps = [MixtureKey.of_component(index.component_values(c)) for c in range(index.num_components)]
        resolved = Mixture.from_json(spec.mixture).resolve(comps, index.component_sizes(), 0)
        tps = meta.get("tokens_per_sample")
        return cls(
            spec=spec,
            index=index,
            component_keys=comps,
            resolved=resolved,
            log=WeightsLog.from_json(meta["log"]),
            files=files,
            tokens_per_sample=None if tps is None else np.asarray(tps, dtype=np.float64),
            catalog_version=meta["catalog_version"],
            changes=meta.get("changes", []),
        )

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        job_json, index_bytes, files_bytes = self.to_parts()
        _atomic_write(os.path.join(directory, "index.arrow"), index_bytes)
        _atomic_write(os.path.join(directory, "files.arrow"), files_bytes)
        _atomic_write(os.path.join(directory, "job.json"), job_json)
        _remove(os.path.join(directory, LOG_FILE))  # job.json holds every change now
        self._unsaved.clear()

    def save_log(self, directory: str) -> None:
        """Persist the changes made since the last save: appended to ``log.jsonl``, one line each.

        Appending keeps the cost of a change constant however long the job runs (rewriting
        job.json would grow with every change); :meth:`load` replays the lines.
        """
        if not self._unsaved:
            return
        lines = "".join(json.dumps(c) + "\n" for c in self._unsaved)
        with open(os.path.join(directory, LOG_FILE), "a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        self._unsaved.clear()

    def to_parts_meta(self) -> bytes:
        return json.dumps(
            {
                "spec": self.spec.to_json(),
                "log": self.log.to_json(),
                "changes": self.changes,
                "tokens_per_sample": None
                if self.tokens_per_sample is None
                else self.tokens_per_sample.tolist(),
                "catalog_version": self.catalog_version,
            }
        ).encode()

    @classmethod
    def load(cls, directory: str) -> Job:
        parts = []
        for name in ("job.json", "index.arrow", "files.arrow"):
            with open(os.path.join(directory, name), "rb") as fh:
                parts.append(fh.read())
        job = cls.from_parts(*parts)
        log_path = os.path.join(directory, LOG_FILE)
        if os.path.exists(log_path):
            with open(log_path) as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a line cut short by a crash: that change was never acknowledged as saved
                    change = json.loads(line)
                    weights = np.asarray(change.pop("weights"), dtype=np.float64)
                    job.log.add(int(change["chunk"]), weights)
                    job.changes.append(change)
        return job


LOG_FILE = "log.jsonl"


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    log = WeightsLog([(0, resolved.weights)])
    if isinstance(mixture, ScheduleMixture) and spec.samples_per_step:
        # With a known global batch, a switch at step s is a switch at a fixed chunk: deterministic everywhere.
        for step in mixture.switch_steps():
            chunk = math.ceil(step * spec.samples_per_step / spec.chunk_size)
            log.add(chunk, mixture.resolve(comps, sizes, step).weights)
    file_ids = sorted(set(index.file_ids.tolist()))
    infos = catalog.files(file_ids)
    files = {fid: FileEntry(infos[fid].path, infos[fid].format, catalog.read_index(fid)) for fid in file_ids}
    return Job(spec, index, comps, resolved, log, files, None, index.catalog_version)


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
    token_estimate_samples: int = 512,
    samples_per_step: int | None = None,
    feedback_delay: int | None = None,
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
    )
