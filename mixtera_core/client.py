"""MixteraClient: one interface to a Mixtera catalog, embedded (local) or remote.

``MixteraClient.local(db_dir)`` runs everything in this process on an embedded DuckDB
catalog. ``MixteraClient.remote(host, port)`` implements the same abstract interface over
gRPC, so training code does not change when it moves from one GPU to a cluster.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import Catalog, DatasetInfo, ProgressCallback, RegistrationReport
from .errors import JobError, MixteraError, RegistrationWarning
from .job_store import JobInfo, JobNotFoundError, delete_job_dir, list_jobs, read_job_info
from .report import ComponentInfo, Explanation, JobReport

# Query planning, jobs, streams and plugins are imported by the methods that use them: listing
# datasets or jobs (the CLI's most common commands) then starts without them (benchmarks/startup.py).
if TYPE_CHECKING:
    from .executors import ScanExecutor
    from .index import ChunkerIndex
    from .job import Job, JobSpec, TokenizerSpec
    from .mixture import Mixture
    from .plugins import PluginManager
    from .query import Query
    from .remote import RemoteMixteraClient
    from .runtime import JobRuntime
    from .streaming import JobStream
    from .token_index import TokenizeCallback, TokenizeReport

Location = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

log = logging.getLogger(__name__)

#: mixture log entries beyond which a job's history is compacted (then twice the entries kept)
COMPACT_ENTRIES = 256


class MixteraClient(ABC):
    """The operations every Mixtera client offers, local or remote."""

    @staticmethod
    def local(
        db_dir: str | os.PathLike[str],
        plugins: PluginManager | None = None,
        *,
        rank: int | None = None,
        job_timeout: float = 600.0,
    ) -> LocalMixteraClient:
        """A client running on an embedded catalog in ``db_dir`` (created if needed).

        In a multi-process job (``torchrun``, Lightning, the HF Trainer) only the process of
        global rank 0 opens the catalog and owns the jobs' mixture logs; the other ranks load
        the jobs rank 0 builds from ``db_dir/jobs`` and follow their logs, so they never take
        DuckDB's write lock. ``rank`` defaults to what the launcher set (``RANK``,
        ``LOCAL_RANK``/``NODE_RANK``, or an initialized ``torch.distributed``); ``job_timeout``
        is how long the other ranks wait for rank 0 to build a job.
        """
        return LocalMixteraClient(db_dir, plugins, rank=rank, job_timeout=job_timeout)

    @staticmethod
    def remote(
        host: str = "127.0.0.1",
        port: int = 7878,
        token: str | None = None,
        *,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        ship_samples: bool = False,
        retries: int = 10,
        timeout: float | None = 60.0,
        **options: Any,
    ) -> RemoteMixteraClient:
        """A client of a ``mixtera-server`` at ``host:port`` (see :mod:`mixtera_core.remote`).

        ``token``: the server's shared secret; ``tls_ca``: the CA (or self-signed) certificate
        that signed the server's, as a path or PEM bytes; ``ship_samples=True``: the server
        reads the samples (for clients that cannot see the files). Transient failures are
        retried ``retries`` times with exponential backoff; ``timeout`` is per call (seconds).
        """
        from .remote import RemoteMixteraClient

        return RemoteMixteraClient(
            host,
            port,
            token,
            tls_ca=tls_ca,
            ship_samples=ship_samples,
            retries=retries,
            timeout=timeout,
            **options,
        )

    @abstractmethod
    def register_dataset(
        self,
        name: str,
        location: Location,
        *,
        format: str = "jsonl",
        parser: str = "fields",
        parser_options: dict[str, Any] | None = None,
        on_error: str = "fail",
        replace: bool = False,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
        storage_options: dict[str, Any] | None = None,
        executor: str | ScanExecutor = "local",
    ) -> RegistrationReport:
        """Index every sample of ``location`` (file, directory, glob, URL, or a list of them).

        ``format`` and ``parser`` name plugins; ``parser_options`` go to the parser (for
        ``fields``: property -> field path). ``on_error="skip"`` skips malformed samples
        and counts them instead of failing. Atomic: on error the catalog is unchanged.
        URLs (``s3://bucket/prefix/*.jsonl.zst``, any fsspec filesystem) connect with the
        filesystem's standard configuration, or ``storage_options`` (fsspec's; secrets in
        them are used, never stored: see :mod:`mixtera_core.storage`).

        ``executor``: where the files are scanned: ``"local"`` (``workers`` threads),
        ``"ray"`` (Ray tasks on the cluster at ``RAY_ADDRESS``, else a local Ray instance; see
        :mod:`mixtera_core.ray_executor`) or a :class:`~mixtera_core.executors.ScanExecutor`
        (e.g. ``RayExecutor(address=...)``). The catalog is the same either way. A registration
        that was interrupted or failed resumes: run it again and only the files not finished
        (or changed) since are scanned.
        """

    @abstractmethod
    def list_datasets(self) -> list[DatasetInfo]: ...

    @abstractmethod
    def remove_dataset(self, name: str) -> None: ...

    @abstractmethod
    def properties(self) -> dict[str, dict[Any, int]]:
        """property -> value -> number of samples with that value."""

    @abstractmethod
    def tokenize(
        self,
        datasets: str | Sequence[str],
        tokenizer: tuple[str, str] | TokenizerSpec,
        *,
        tokenizer_options: dict[str, Any] | None = None,
        add_bos: bool = False,
        add_eos: bool = True,
        text_field: str = "text",
        workers: int | None = None,
        progress: TokenizeCallback | None = None,
        executor: str | ScanExecutor = "local",
    ) -> TokenizeReport:
        """Tokenize every sample of ``datasets`` once into the token index beside the catalog
        (``DB_DIR/tokens/<fingerprint>``, see :mod:`mixtera_core.token_index`): what a token-mode
        stream with the same tokenizer, ``add_bos``/``add_eos`` and ``text_field`` would produce.

        ``tokenizer``: ``(plugin, source)`` as for :meth:`execute` (the source as the catalog's
        host sees it). Files are tokenized in parallel by ``workers`` threads (default: cores);
        ``progress`` gets a :class:`~mixtera_core.token_index.TokenizeProgress` after every batch
        and file; ``executor="ray"`` (or a ``RayExecutor``) tokenizes them as Ray tasks instead,
        which need the tokenizer source at the same path on every node. Resumable: a rerun
        skips the files done already. Refuses data files changed
        since registration (:class:`~mixtera_core.errors.TokenIndexStaleError`) and an index
        directory whose manifest does not match (:class:`~mixtera_core.errors.TokenIndexManifestError`).
        """

    @abstractmethod
    def explain(
        self,
        query: Query,
        mixture: Mixture | dict[str, float] | None = None,
        *,
        properties: Sequence[str] | None = None,
        samples: int | None = None,
        tokens: int | None = None,
        per_step: int | None = None,
        tokenizer: tuple[str, str] | None = None,
        tokenizer_options: dict[str, Any] | None = None,
        token_estimate_samples: int = 2048,
    ) -> Explanation:
        """Samples per component that ``query`` selects; with a mixture, what it asks of each.

        Without a mixture, components are over ``properties`` (default: all). With one:
        per component the requested share, with ``tokenizer=(plugin, source)`` the estimated
        tokens, with a budget (``samples=`` or ``tokens=``) the epochs it implies, and with
        ``per_step`` (samples or tokens per training step) the step at which one pass is
        used up. Warns about zero-weight keys and components no key matches.
        """

    @abstractmethod
    def report(self, job_id: str) -> JobReport:
        """Target vs delivered share per key so far."""

    @abstractmethod
    def list_jobs(self) -> list[JobInfo]:
        """Every job the catalog keeps (``DB_DIR/jobs``), sorted by id."""

    def job_info(self, job_id: str) -> JobInfo:
        """The :class:`~mixtera_core.job_store.JobInfo` of one job."""
        for info in self.list_jobs():
            if info.job_id == job_id:
                return info
        raise JobNotFoundError(f"no job {job_id!r} in this catalog; list_jobs() names the jobs there")

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove a job and everything saved with it (mixture log, algorithm state, delivered
        counts). Streams of the job that are still running fail afterwards; the data files and
        the catalog are untouched. Executing the same spec again builds it anew."""

    @abstractmethod
    def peek(
        self, query: Query, n: int = 3, properties: Sequence[str] | None = None
    ) -> list[tuple[str, Any]]:
        """The first ``n`` samples of each component, as (component key, record)."""

    @abstractmethod
    def execute(self, query: Query, mixture: Mixture | dict[str, float] | None = None, **options: Any) -> str:
        """Register a job: ``query`` mixed by ``mixture`` (None: natural proportions).

        Options: ``chunk_size``, ``seed``, ``dp_groups``, ``nodes_per_group``, ``num_workers``,
        ``on_exhausted`` ("stop" | "redistribute" | "repeat"), ``block_size``, ``text_field``;
        token mode: ``tokenizer=(plugin, source)``, ``tokenizer_options``, ``seq_len``,
        ``add_bos``, ``add_eos``, ``chunk_tokens`` (chunks of about that many tokens instead of
        ``chunk_size`` samples: keeps a dynamic mixture responsive on long documents);
        schedules: ``samples_per_step``; dynamic mixtures: ``feedback_delay`` (see
        :meth:`feedback`), ``mixture_tolerance``. Returns the job id (the
        query's). Executing the same spec again is a no-op; another spec under the same
        id is an error.
        """

    @abstractmethod
    def stream(
        self, job_id: str, dp_group: int = 0, node: int = 0, worker: int = 0, **options: Any
    ) -> JobStream:
        """The stream of one (dp_group, node, worker); iterate it, checkpoint it with ``state_dict()``."""

    @abstractmethod
    def checkpoint(self, job_id: str) -> dict[str, Any]:
        """The job-level state (spec, catalog version, mixture log, algorithm state)."""

    @abstractmethod
    def restore(self, job_id: str, state: dict[str, Any]) -> None:
        """Re-create a job from ``checkpoint()`` output, e.g. in a fresh process."""

    @abstractmethod
    def feedback(
        self,
        job_id: str,
        step: int,
        losses: Sequence[float],
        counts: Sequence[float],
        position: int | None = None,
    ) -> None:
        """Per-key loss sums and token counts of one training step (dynamic mixtures).

        ``position`` is the highest chunk index the trainer has consumed so far (the
        ``chunk_index`` of the step's batch, maximised over ranks; the feedback helpers do
        this). A resulting mixture change takes effect at chunk ``position + 1 +
        feedback_delay``, a function of the data alone, so replaying the same feedback gives
        the same chunks. Should the streams have planned past that chunk already (a delay too
        short for their read-ahead), the change is moved to the first unplanned chunk and
        marked ``late`` in the job's changes. Without ``position`` a change always starts at
        the first unplanned chunk, which depends on read-ahead timing.
        """

    @abstractmethod
    def report_step(self, job_id: str, step: int, position: int | None = None) -> None:
        """The training step reached (schedules without ``samples_per_step``); ``position`` as
        for :meth:`feedback`."""

    @abstractmethod
    def job(self, job_id: str) -> Job:
        """The job (self-contained and picklable: hand it to a torch dataset or another process)."""

    def _current(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.follower is not None:
            job.follower.refresh(job)
        return job

    def mixture_weights(self, job_id: str, chunk: int | None = None) -> dict[str, float]:
        """Weights per mixture key (token mode: token shares) in force at ``chunk``; by default
        those of the latest change, i.e. what the mixture is now. The job's own truth, the same
        the streams plan with, in every process and over the wire."""
        job = self._current(job_id)
        weights = job.log.last[1] if chunk is None else job.log.at(int(chunk))
        return job.key_weights(weights)

    def mixture_history(self, job_id: str) -> list[tuple[int, dict[str, float]]]:
        """Every mixture in force so far: ``[(first chunk, weights per key), ...]`` in chunk order."""
        job = self._current(job_id)
        return [(int(i), job.key_weights(w)) for i, w in job.log.entries]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (database handles, connections)."""

    def __enter__(self) -> MixteraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launcher_rank() -> int:
    """This process's global rank as the launcher set it (torchrun, Lightning, SLURM via torch):
    0 when the process is alone or rank 0; > 0 for every other process of the job."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value) if name == "RANK" else max(1, int(value))
    return 0


def warn_registration(report: RegistrationReport) -> None:
    """Raise the report's warnings as :class:`~mixtera_core.errors.RegistrationWarning` (shown
    once per call site by default; ``print(report)`` shows them too)."""
    for text in report.warnings:
        warnings.warn(text, RegistrationWarning, stacklevel=3)


def _unmatched_properties(report: RegistrationReport, options: dict[str, Any]) -> list[str]:
    """Warnings for the properties no sample of a registration has a value for: a field path
    that matches nothing is almost always a typo, and would otherwise show up much later as a
    query or a mixture key that selects nothing."""
    if not report.samples:
        return []
    out = []
    for prop, found in report.values_found.items():
        if found:
            continue
        option = options.get(prop)
        regex = option.get("path_regex") if isinstance(option, dict) else None
        if isinstance(option, dict):
            option = option.get("path")
        what = f"property {prop!r}"
        advice = "check the parser's options"
        if isinstance(regex, str):
            what += f" (path_regex '{regex}')"
            advice = "the regex matched no file path; check it against the paths"
        elif isinstance(option, str):
            what += f" (mapped to {option!r})"
            advice = "check the field path (a misspelled path matches nothing)"
        out.append(
            f"{what} has no value in any of the {report.samples} samples of {report.dataset!r}: {advice}"
        )
    return out


class LocalMixteraClient(MixteraClient):
    """Embedded client: catalog, query execution and reading in this process."""

    def __init__(
        self,
        db_dir: str | os.PathLike[str],
        plugins: PluginManager | None = None,
        *,
        algorithm_executor: Executor | None = None,
        rank: int | None = None,
        job_timeout: float = 600.0,
    ) -> None:
        """``algorithm_executor``: given to every mixing algorithm for its heavy computations
        (see ``MixingAlgorithm.executor``); the server passes a process pool. ``rank``: see
        :meth:`MixteraClient.local`; ``job_timeout``: how long a rank other than 0 waits for
        rank 0 to build a job."""
        self._plugins = plugins
        self.algorithm_executor = algorithm_executor
        self.db_dir = os.path.abspath(os.fspath(db_dir))
        self.rank = launcher_rank() if rank is None else int(rank)
        self.job_timeout = job_timeout
        self._catalog: Catalog | None = Catalog(db_dir) if self.owner else None
        self._jobs: dict[str, Job] = {}
        self._algorithms: dict[str, Any] = {}
        self._streams: dict[str, list[JobStream]] = {}
        self._runtimes: dict[str, JobRuntime] = {}
        self._compact_at: dict[str, int] = {}  # log entries beyond which the job is compacted

    @property
    def plugins(self) -> PluginManager:
        """The plugin manager, loaded on first use: listing datasets or jobs needs no plugin."""
        from .plugins import get_plugin_manager

        if self._plugins is None:
            self._plugins = get_plugin_manager()
        return self._plugins

    @property
    def owner(self) -> bool:
        """Whether this process owns the catalog and the jobs' mixture logs (global rank 0)."""
        return self.rank == 0

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise MixteraError(
                f"rank {self.rank}: in a multi-process job only rank 0 opens the catalog {self.db_dir} "
                f"(DuckDB allows one writer); register datasets, explain and peek on rank 0 "
                f"(e.g. `if rank == 0:` before the other ranks need the job), or serve the catalog "
                f"with mixtera-server and use MixteraClient.remote. execute(), job(), stream() and the "
                f"torch dataset work on every rank"
            )
        return self._catalog

    def register_dataset(
        self,
        name: str,
        location: Location,
        *,
        format: str = "jsonl",
        parser: str = "fields",
        parser_options: dict[str, Any] | None = None,
        on_error: str = "fail",
        replace: bool = False,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
        storage_options: dict[str, Any] | None = None,
        executor: str | ScanExecutor = "local",
    ) -> RegistrationReport:
        fmt = self.plugins.format(format)
        options = dict(parser_options or {})
        parser_obj = self.plugins.parser(parser, **options)
        report = self.catalog.register(
            name,
            location,
            fmt,
            parser_obj,
            parser,
            options,
            on_error=on_error,
            replace=replace,
            workers=workers,
            progress=progress,
            storage_options=storage_options,
            executor=executor,
        )
        report.warnings.extend(_unmatched_properties(report, options))
        warn_registration(report)
        return report

    def list_datasets(self) -> list[DatasetInfo]:
        return self.catalog.list_datasets()

    def remove_dataset(self, name: str) -> None:
        self.catalog.remove(name)

    def properties(self) -> dict[str, dict[Any, int]]:
        return self.catalog.properties()

    def tokenize(
        self,
        datasets: str | Sequence[str],
        tokenizer: tuple[str, str] | TokenizerSpec,
        *,
        tokenizer_options: dict[str, Any] | None = None,
        add_bos: bool = False,
        add_eos: bool = True,
        text_field: str = "text",
        workers: int | None = None,
        progress: TokenizeCallback | None = None,
        executor: str | ScanExecutor = "local",
    ) -> TokenizeReport:
        from .job import TokenizerSpec
        from .token_index import tokenize

        self._owner_only("tokenize()")
        if isinstance(tokenizer, TokenizerSpec):
            spec = tokenizer
            if tokenizer_options:
                spec = TokenizerSpec(spec.name, spec.source, {**spec.options, **tokenizer_options})
        else:
            name, source = tokenizer
            spec = TokenizerSpec(str(name), str(source), dict(tokenizer_options or {}))
        return tokenize(
            self.catalog,
            datasets,
            spec,
            add_bos=add_bos,
            add_eos=add_eos,
            text_field=text_field,
            workers=workers,
            progress=progress,
            plugins=self.plugins,
            executor=executor,
        )

    def chunker_index(self, query: Query, properties: Sequence[str] | None = None) -> ChunkerIndex:
        from .index import build_chunker_index

        return build_chunker_index(self.catalog, query, properties)

    def explain(
        self,
        query: Query,
        mixture: Mixture | dict[str, float] | None = None,
        *,
        properties: Sequence[str] | None = None,
        samples: int | None = None,
        tokens: int | None = None,
        per_step: int | None = None,
        tokenizer: tuple[str, str] | None = None,
        tokenizer_options: dict[str, Any] | None = None,
        token_estimate_samples: int = 2048,
    ) -> Explanation:
        from .job import build_job, make_spec
        from .mixture import InferringMixture
        from .token_estimate import count_job_tokens

        if mixture is None:
            if samples is not None or tokens is not None or tokenizer is not None:
                raise JobError("a budget (samples=/tokens=) or tokenizer needs a mixture to explain")
            return self._explain_components(self.chunker_index(query, properties))
        if tokens is not None and tokenizer is None:
            raise JobError("tokens= needs tokenizer= to estimate tokens per sample")
        spec = make_spec(
            query,
            mixture,
            tokenizer=tokenizer,
            tokenizer_options=tokenizer_options,
            seq_len=1 if tokenizer else None,
            token_estimate_samples=token_estimate_samples,
        )
        job = build_job(self.catalog, spec)
        out = self._explain_components(job.index)
        if tokenizer:
            count_job_tokens(job, self.catalog, self.plugins)
            out.token_counts = "exact (token index)" if job.token_index else "estimated"
        comp_tokens = job.component_tokens
        weights = job.log.at(0)
        if comp_tokens is not None and isinstance(job.mixture, InferringMixture):
            weights = comp_tokens / comp_tokens.sum()
        budget = tokens if tokens is not None else samples
        out.unit = "tokens" if tokenizer else "samples"
        names = job.key_names
        for c, info in enumerate(out.components):
            k = int(job.resolved.component_key[c])
            avail = float(info.samples if comp_tokens is None else comp_tokens[c])
            w = float(weights[c])
            dry = None
            if per_step is not None:
                dry = avail / (w * per_step) if w > 0 else float("inf")
            out.components[c] = ComponentInfo(
                **{
                    **info.__dict__,
                    "mixture_key": names[k] if k >= 0 else None,
                    "weight": w,
                    "tokens": None if comp_tokens is None else avail,
                    "epochs": None if budget is None else budget * w / avail,
                    "dry_step": dry,
                }
            )
            if k < 0:
                out.warnings.append(
                    f"component {info.key} ({info.samples} samples) matches no key: it is left out"
                )
        for key, kw in zip(names, job.resolved.key_weights, strict=True):
            if kw == 0:
                out.warnings.append(f"key {key} has weight 0: its samples are never streamed")
        return out

    def _explain_components(self, index: ChunkerIndex) -> Explanation:
        sizes = index.component_sizes()
        out = Explanation(properties=index.properties)
        for c, key in enumerate(index.component_keys()):
            fids, _, _ = index.intervals(c)
            out.components.append(
                ComponentInfo(
                    key=key,
                    values=index.component_values(c),
                    samples=int(sizes[c]),
                    files=len(set(fids.tolist())),
                    intervals=len(fids),
                )
            )
        return out

    def _delivered(self, job_id: str) -> np.ndarray:
        """Handed out per key: earlier processes (persisted at close) plus this process's streams."""
        job = self.job(job_id)
        delivered = np.zeros(len(job.key_names), dtype=np.int64)
        path = os.path.join(self._job_dir(job_id), "delivered.json")
        if os.path.exists(path):
            with open(path) as fh:
                delivered += np.asarray(json.load(fh), dtype=np.int64)
        for s in self._streams.get(job_id, []):
            delivered += s.delivered
        return delivered

    def report(self, job_id: str) -> JobReport:
        job = self.job(job_id)
        unit = "tokens" if job.spec.token_mode else "samples"
        delivered = self._delivered(job_id)
        target = list(job.key_weights(job.log.last[1]).values())
        return JobReport(job_id, unit, job.key_names, target, delivered.tolist(), list(job.changes))

    def peek(
        self, query: Query, n: int = 3, properties: Sequence[str] | None = None
    ) -> list[tuple[str, Any]]:
        from .reading import SampleReader

        index = self.chunker_index(query, properties)
        reader = SampleReader(self.catalog, self.plugins)
        out: list[tuple[str, Any]] = []
        for c, key in enumerate(index.component_keys()):
            taken = 0
            for file_id, ranges in index.file_ranges(c).items():
                want: list[tuple[int, int]] = []
                budget = n - taken
                for s, e in ranges:
                    if budget <= 0:
                        break
                    want.append((s, min(e, s + budget)))
                    budget -= want[-1][1] - s
                for _, record in reader.read(file_id, want):
                    out.append((key, record))
                    taken += 1
                if taken >= n:
                    break
        return out

    # ------------------------------------------------------------------ jobs

    def _job_dir(self, job_id: str) -> str:
        return os.path.join(self.db_dir, "jobs", job_id)

    def execute(self, query: Query, mixture: Mixture | dict[str, float] | None = None, **options: Any) -> str:
        from .job import make_spec

        spec = make_spec(query, mixture, **options)
        if not self.owner:
            self._await_job(spec)
            return spec.job_id
        existing = self._find_job(spec.job_id)
        if existing is not None:
            if existing.spec != spec:
                raise JobError(
                    f"job id {spec.job_id!r} exists with another spec; use a new job id (Query.for_job(...)) "
                    f"or the same spec to attach to it"
                )
            return spec.job_id
        self._jobs[spec.job_id] = self._build(spec)
        return spec.job_id

    def _build(self, spec: JobSpec) -> Job:
        from .job import build_job
        from .mixture import DynamicMixture, InferringMixture
        from .token_estimate import count_job_tokens

        job = build_job(self.catalog, spec)
        mixture = job.mixture
        if spec.token_mode:
            count_job_tokens(job, self.catalog, self.plugins)
            if isinstance(mixture, InferringMixture):
                # natural proportions *in tokens*
                natural = job.component_tokens
                assert natural is not None
                job.log.entries[0] = (0, natural / natural.sum())
        if isinstance(mixture, DynamicMixture):
            self._algorithms[spec.job_id] = self._new_algorithm(job)
        job.save(self._job_dir(spec.job_id))
        return job

    def _new_algorithm(self, job: Job) -> Any:
        from .mixture import DynamicMixture

        mixture = job.mixture
        assert isinstance(mixture, DynamicMixture)
        cls = self.plugins.mixing_algorithm(mixture.algorithm)
        algo = cls(list(job.resolved.key_weights), **mixture.options)
        algo.executor = self.algorithm_executor
        return algo

    def _await_job(self, spec: JobSpec) -> Job:
        """(Ranks other than 0) The job rank 0 builds for ``spec``, once it is saved."""
        deadline = time.monotonic() + self.job_timeout
        pause = 0.01
        while True:
            job = self._find_job(spec.job_id)
            if job is not None:
                if job.spec != spec:
                    raise JobError(
                        f"rank {self.rank}: job {spec.job_id!r} in {self.db_dir} has another spec than "
                        f"this rank's execute(); every rank must execute the same query, mixture and options"
                    )
                return job
            if time.monotonic() > deadline:
                raise JobError(
                    f"rank {self.rank}: job {spec.job_id!r} did not appear in {self._job_dir(spec.job_id)} "
                    f"within {self.job_timeout:.0f} s. Rank 0 builds it there; every rank must see that "
                    f"directory: is {self.db_dir} on a filesystem all nodes share? If not, serve the "
                    f"catalog with mixtera-server and use MixteraClient.remote on every rank"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _find_job(self, job_id: str) -> Job | None:
        from .job import Job
        from .mixture import DynamicMixture

        if job_id in self._jobs:
            return self._jobs[job_id]
        directory = self._job_dir(job_id)
        if os.path.exists(os.path.join(directory, "job.json")):
            try:
                job = Job.load(directory, owner=self.owner)
            except FileNotFoundError:  # rank 0 is still writing it (job.json goes last)
                return None
            self._jobs[job_id] = job
            if not self.owner:
                return job
            mixture = job.mixture
            if isinstance(mixture, DynamicMixture) and job_id not in self._algorithms:
                algo = self._new_algorithm(job)
                saved = os.path.join(directory, "algorithm.json")
                if os.path.exists(saved):
                    with open(saved) as fh:
                        algo.load_state_dict(json.load(fh))
                self._algorithms[job_id] = algo
            return job
        return None

    def list_jobs(self) -> list[JobInfo]:
        return list_jobs(self.db_dir)

    def job_info(self, job_id: str) -> JobInfo:
        return read_job_info(self.db_dir, job_id)

    def delete_job(self, job_id: str) -> None:
        self._owner_only("delete_job()")
        delete_job_dir(self.db_dir, job_id)
        for held in (self._jobs, self._algorithms, self._streams, self._runtimes, self._compact_at):
            held.pop(job_id, None)  # type: ignore[attr-defined]

    def job(self, job_id: str) -> Job:
        job = self._find_job(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r}; create it with execute()")
        return job

    def stream(
        self, job_id: str, dp_group: int = 0, node: int = 0, worker: int = 0, **options: Any
    ) -> JobStream:
        state = options.pop("state", None)
        if state is not None:
            options.setdefault("dp_groups", state.get("dp_groups"))
            options.setdefault("num_workers", state.get("num_workers"))
        from .streaming import JobStream

        s = JobStream(self.job(job_id), dp_group, node, worker, plugins=self.plugins, **options)
        if state is not None:
            s.load_state_dict(state)
        self._streams.setdefault(job_id, []).append(s)
        return s

    def record_delivered(self, job_id: str, counts: Sequence[int]) -> None:
        """Add samples/tokens per key handed out by streams elsewhere (remote clients) to the
        job's persisted delivery counts, which :meth:`report` includes."""
        job = self.job(job_id)
        path = os.path.join(self._job_dir(job_id), "delivered.json")
        total = np.zeros(len(job.key_names), dtype=np.int64)
        if os.path.exists(path):
            with open(path) as fh:
                total += np.asarray(json.load(fh), dtype=np.int64)
        total += np.asarray(counts, dtype=np.int64)
        with open(path + ".tmp", "w") as fh:
            json.dump(total.tolist(), fh)
        os.replace(path + ".tmp", path)

    def runtime(self, job_id: str) -> JobRuntime:
        """The central planner of a job (what a server uses to hand out chunk descriptors)."""
        from .runtime import JobRuntime

        if job_id not in self._runtimes:
            self._runtimes[job_id] = JobRuntime(self.job(job_id))
        return self._runtimes[job_id]

    def checkpoint(self, job_id: str) -> dict[str, Any]:
        job = self._current(job_id)
        algo = self._algorithms.get(job_id)
        if algo is None and not self.owner and job.spec.dynamic:
            path = os.path.join(self._job_dir(job_id), "algorithm.json")
            if os.path.exists(path):
                with open(path) as fh:
                    algo_state = json.load(fh)
                return {**self._checkpoint(job, None), "algorithm": algo_state}
        return self._checkpoint(job, algo)

    def _checkpoint(self, job: Job, algo: Any) -> dict[str, Any]:
        # only the mixture a stream can still need: its size does not grow with the steps trained
        # (a data state saved with this checkpoint, or later, resumes at or after the floor)
        floor = job.history_floor
        log_now = job.log.copy()
        log_now.compact(floor)
        return {
            "spec": job.spec.to_json(),
            "catalog_version": job.catalog_version,
            "log": log_now.to_json(),
            "sealed": job.log.sealed,
            "changes": [c for c in job.changes if int(c["chunk"]) >= floor],
            "algorithm": None if algo is None else algo.state_dict(),
            "last_step": getattr(job, "last_step", None),
        }

    def restore(self, job_id: str, state: dict[str, Any]) -> None:
        from .job import JobSpec
        from .mixture_log import WeightsLog

        self._owner_only("restore()")
        spec = JobSpec.from_json(state["spec"])
        if spec.job_id != job_id:
            raise JobError(f"checkpoint is for job {spec.job_id!r}, not {job_id!r}")
        if self.catalog.version != state["catalog_version"] and self._find_job(job_id) is None:
            raise JobError(
                f"the catalog changed since job {job_id!r} was checkpointed (version {state['catalog_version']}, "
                f"now {self.catalog.version}); restore into the catalog the job ran on"
            )
        job = self._find_job(job_id)
        if job is None:
            job = self._jobs[job_id] = self._build(spec)
        elif job.spec != spec:
            raise JobError(f"job {job_id!r} exists with another spec than the checkpoint's")
        job.log.assign(WeightsLog.from_json(state["log"], int(state.get("sealed", spec.initial_seal))))
        self._runtimes.pop(job_id, None)  # its planner holds the old log
        job.changes = list(state.get("changes", []))
        if state.get("algorithm") is not None:
            self._algorithms[job_id].load_state_dict(state["algorithm"])
        job.save(self._job_dir(job_id))

    def _owner_only(self, what: str) -> None:
        if not self.owner:
            raise JobError(
                f"rank {self.rank}: {what} runs on rank 0, which owns the jobs of {self.db_dir}; "
                f"FeedbackReporter (and the trainer callbacks) sum the feedback over all ranks and send "
                f"it from rank 0"
            )

    def feedback(
        self,
        job_id: str,
        step: int,
        losses: Sequence[float],
        counts: Sequence[float],
        position: int | None = None,
    ) -> None:
        self._owner_only("feedback()")
        self._check_position(position)  # before the algorithm sees the step
        weights = self.update_algorithm(job_id, step, losses, counts)
        self.apply_key_weights(job_id, weights, step, position)

    def update_algorithm(
        self, job_id: str, step: int, losses: Sequence[float], counts: Sequence[float]
    ) -> Any:
        """Feed one step to the job's mixing algorithm and persist its state; the new key
        weights or None. (Split from :meth:`apply_key_weights` so that a server can run the
        algorithm without holding the job's planning lock.)"""
        algo = self._algorithms.get(job_id)
        if algo is None:
            self.job(job_id)  # "no job ..." first
            raise JobError(f"job {job_id!r} has no dynamic mixture; feedback needs DynamicMixture(...)")
        weights = algo.update(step, losses, counts)
        self._save_algorithm(job_id)
        return weights

    def apply_key_weights(self, job_id: str, weights: Any, step: int, position: int | None) -> None:
        """Record the algorithm's new key weights (None: unchanged) at the chunk ``position``
        implies, and seal the log up to it.

        The change lands at ``position + 1 + feedback_delay`` and the log is sealed up to there,
        so the chunks every stream may plan are exactly those whose mixture is decided. A change
        that moves no key weight by more than the job's ``mixture_tolerance`` is not logged.
        """
        job = self.job(job_id)
        chunk, details = self._change_chunk(job, position)
        if weights is not None:
            new = np.asarray(weights, dtype=np.float64)
            new = new / new.sum() if new.sum() > 0 else new
            last = np.asarray(list(job.key_weights(job.log.last[1]).values()))
            if new.shape != last.shape or float(np.max(np.abs(new - last))) > job.spec.mixture_tolerance:
                job.set_key_weights(
                    chunk, weights, step, f"{self._algorithms[job_id].name} update", **details
                )
        job.seal(chunk)
        self._persist_log(job)

    def _persist_log(self, job: Job) -> None:
        """Append the new changes and the seal; now and then fold away the history no stream
        can need any more, so the log (and job.json, and loading it) stays small however long
        the job runs."""
        directory = self._job_dir(job.spec.job_id)
        job.save_log(directory)
        if len(job.log.entries) > self._compact_at.get(job.spec.job_id, COMPACT_ENTRIES):
            job.compact(directory)
            self._compact_at[job.spec.job_id] = max(COMPACT_ENTRIES, 2 * len(job.log.entries))

    @staticmethod
    def _check_position(position: int | None) -> None:
        if position is None:
            return
        if isinstance(position, bool) or not isinstance(position, numbers.Integral) or position < -1:
            raise JobError(f"position must be the consumed chunk index (an integer >= -1), got {position!r}")

    def _change_chunk(self, job: Job, position: int | None) -> tuple[int, dict[str, Any]]:
        """Where a change takes effect and up to where the log is sealed: ``position + 1 + delay``
        with the highest position reported so far (positions of a round-robin of DataLoader
        workers go up and down); without a position, at the seal, which then does not move."""
        sealed = job.log.sealed
        if position is None:
            return sealed, {}
        self._check_position(position)
        return max(int(position) + 1 + job.spec.delay, sealed), {"position": int(position)}

    def compact_mixture_log(self, job_id: str) -> int:
        """Drop a job's mixture history below the lowest chunk a stream can still need
        (``Job.history_floor``) and fold ``log.jsonl`` into ``job.json``; followers reload it.
        The client also does this on its own as the log grows. Returns the entries removed."""
        self._owner_only("compact_mixture_log()")
        job = self.job(job_id)
        return job.compact(self._job_dir(job_id))

    def _save_algorithm(self, job_id: str) -> None:
        algo = self._algorithms.get(job_id)
        if algo is not None:
            path = os.path.join(self._job_dir(job_id), "algorithm.json")
            text = json.dumps(algo.state_dict())  # one C-encoded string: json.dump is ~2x slower
            with open(path + ".tmp", "w") as fh:
                fh.write(text)
            os.replace(path + ".tmp", path)

    def report_step(self, job_id: str, step: int, position: int | None = None) -> None:
        """The training step reached; with ``position`` it also decides the mixture of a dynamic
        job up to ``position + 1 + feedback_delay`` (for steps that send no feedback)."""
        from .mixture import ScheduleMixture

        self._owner_only("report_step()")
        job = self.job(job_id)
        self._check_position(position)
        mixture = job.mixture
        previous = getattr(job, "last_step", None)
        job.last_step = step  # type: ignore[attr-defined]
        if not job.spec.dynamic:
            return
        chunk, details = self._change_chunk(job, position)
        if isinstance(mixture, ScheduleMixture):
            for switch in mixture.switch_steps():
                if (previous is None or previous < switch) and step >= switch:
                    new = mixture.mixture_at(step).resolve(
                        job.component_keys, job.index.component_sizes(), step
                    )
                    job.set_component_weights(
                        chunk, new.weights, step, f"schedule switch at step {switch}", **details
                    )
        job.seal(chunk)
        self._persist_log(job)

    def close(self) -> None:
        for job_id, streams in self._streams.items():
            if streams and self.owner:
                total = self._delivered(job_id)
                with open(os.path.join(self._job_dir(job_id), "delivered.json"), "w") as fh:
                    json.dump(total.tolist(), fh)
        self._streams.clear()
        if self._catalog is not None:
            self._catalog.close()
