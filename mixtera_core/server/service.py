"""The gRPC service behind ``mixtera-server DB_DIR``: one catalog, many jobs, many clients.

The engine is a :class:`~mixtera_core.client.LocalMixteraClient` on ``DB_DIR``; every RPC
maps onto one of its methods, and chunk descriptors come from its central planner
(``engine.runtime(job_id).chunk(index, snapshot)``).

**Off the request path.** Registration, tokenization (``Tokenize``: the token index in
``DB_DIR/tokens``), job building (index, token calibration) and explain run in a small worker
pool while the handler streams progress or waits; feedback
and step reports are acknowledged at once and applied, in the order they arrived, by one
single-threaded executor, so the mixing algorithm sees the same sequence every time. A
mixture change takes effect at ``position + 1 + feedback_delay`` and seals the log up to there;
a chunk past the seal is not planned (``GetChunk`` answers ``pending``, the client asks again),
so every client, and a client reading the job in-process, sees the same chunks.
Checkpoint, Report and JobStatus first wait for the feedback already acknowledged, so a
client reads its own writes.

**Concurrency.** Catalog changes (register, remove) are serialized by one lock; each job
has a lock that orders its loading, building, chunk planning and mixture changes, so a job
is loaded once and a mixture change never races the planner.

**Restarts.** Jobs live under ``DB_DIR/jobs``; a restarted server reloads a job (its mixture
log and seal included) on first use and regenerates any chunk from the planner snapshot the
client sends. Since no chunk past the seal was ever handed out, a mixture change after a
restart never lands on a chunk a client may already have streamed.

**Allowed roots.** Registration, ``ReadSamples``, ``Tokenize`` (the datasets' files) and
tokenizer files given by path only touch files whose real path (symlinks resolved) lies under an allowed root; anything else
is ``PERMISSION_DENIED``. Default (no ``--allowed-root``): the server's working directory
plus the directories that hold the files of datasets registered when it starts.

**Peek.** ``Explain`` also serves :meth:`~mixtera_core.client.MixteraClient.peek`: a request
document with ``"peek": n`` (and ``options.properties``) is answered with
``{"peek": [[component key, record JSON], ...]}`` (bytes as ``{"__bytes__": base64}``).

**Errors.** Mixtera errors map onto status codes (unknown dataset or job: ``NOT_FOUND``;
dataset exists, or a job id reused with another spec: ``ALREADY_EXISTS``; bad values:
``INVALID_ARGUMENT``; bad data or state on the server: ``FAILED_PRECONDITION``) and name
their class in the trailing metadata ``mixtera-error``, so the remote client raises the
same class as the local one. Anything unexpected is ``INTERNAL`` with a message, logged
with its traceback; the server stays up.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import grpc
import numpy as np

from ..client import LocalMixteraClient
from ..errors import (
    CorruptFileError,
    DatasetExistsError,
    DatasetLocationError,
    MalformedRecordError,
    MissingFieldError,
    MixteraError,
    UnknownDatasetError,
    UnknownPluginError,
)
from ..job import JobError, JobSpec, TokenizerSpec
from ..locations import resolve_files
from ..mixture import DynamicMixture, Mixture
from ..plugins import PluginManager
from ..query import Query
from ..remote import ERROR_METADATA, encode_record, explanation_to_json, pack_int64
from ..runtime import ChunkUnavailableError
from ..token_index import TokenizeProgress, catalog_files, tokenize
from . import mixtera_pb2 as pb
from . import mixtera_pb2_grpc as pb_grpc
from .auth import TokenAuthInterceptor, server_credentials

log = logging.getLogger("mixtera.server")

DEFAULT_MAX_MESSAGE = 64 << 20  # bytes a request may have
MAX_SEND_MESSAGE = 1 << 30  # bytes a reply may have (a job's index can be large)
MAX_CHUNK_SIZE = 1 << 24  # samples per chunk the server plans
MAX_READ_SAMPLES = 1 << 20  # samples per ReadSamples request
MAX_PEEK = 10_000
MAX_LOG_ENTRIES = 100_000  # mixture log entries per GetMixture reply
TOKENIZE_PROGRESS_INTERVAL = 0.2  # seconds between Tokenize progress messages (and every file done)
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_GLOB_CHARS = set("*?[")
_EXPLAIN_OPTIONS = {
    "properties",
    "samples",
    "tokens",
    "per_step",
    "tokenizer",
    "tokenizer_options",
    "token_estimate_samples",
}


class _Abort(Exception):
    """Refuse the call with ``code``; ``error`` names a Mixtera error class for the client."""

    def __init__(self, code: grpc.StatusCode, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, str | None]:
    """(status code, message, Mixtera error class name or None) for an exception of a handler."""
    if isinstance(exc, _Abort):
        return exc.code, exc.message, exc.error
    message = str(exc) or type(exc).__name__
    if isinstance(exc, MixteraError):
        return _mixtera_code(exc, message), message, type(exc).__name__
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, message, None
    if isinstance(exc, OSError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"{type(exc).__name__}: {message}", None
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}: {message}); the server log has the traceback",
        None,
    )


def _mixtera_code(exc: MixteraError, message: str) -> grpc.StatusCode:
    code = grpc.StatusCode
    if isinstance(exc, UnknownDatasetError | DatasetLocationError):
        return code.NOT_FOUND
    if isinstance(exc, DatasetExistsError):
        return code.ALREADY_EXISTS
    if isinstance(exc, JobError):
        if "exists with another spec" in message:
            return code.ALREADY_EXISTS
        if message.startswith("no job"):
            return code.NOT_FOUND
        if "catalog changed" in message or "has no dynamic mixture" in message:
            return code.FAILED_PRECONDITION
        return code.INVALID_ARGUMENT
    if isinstance(exc, ChunkUnavailableError):
        return code.FAILED_PRECONDITION
    if isinstance(exc, UnknownPluginError):
        return code.INVALID_ARGUMENT
    if isinstance(exc, MalformedRecordError | CorruptFileError | MissingFieldError):
        return code.FAILED_PRECONDITION  # the data on the server is the problem, not the call
    if isinstance(exc, ValueError):
        return code.INVALID_ARGUMENT
    return code.FAILED_PRECONDITION


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message, error = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    else:
        log.info("%s refused (%s): %s", method, code.name, message)
    if len(message) > 4000:  # status details travel in headers
        message = message[:4000] + " ..."
    if error:
        context.set_trailing_metadata(((ERROR_METADATA, error),))
    context.abort(code, message)


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: MixteraService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            _fail(context, exc, fn.__name__)

    return wrapper


def _streaming(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(fn)
    def wrapper(self: MixteraService, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            _fail(context, exc, fn.__name__)

    return wrapper


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Malformed input (bad JSON, wrong shapes or types) is INVALID_ARGUMENT naming ``what``."""
    try:
        yield
    except (_Abort, MixteraError):
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: {type(e).__name__}: {e}") from e


def _position(request: Any) -> int | None:
    if not request.HasField("position"):
        return None
    if request.position < -1:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"position must be >= -1, got {request.position}")
    return int(request.position)


def _json_object(text: str, what: str) -> dict[str, Any]:
    with _parsing(what):
        data = json.loads(text) if text else {}
    if not isinstance(data, dict):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: expected a JSON object")
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot send a {type(obj).__name__} as JSON")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


class AllowedRoots:
    """Directories the server may read from; a path counts by its real path (symlinks resolved)."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = sorted({os.path.realpath(os.fspath(r)) for r in roots})

    def allows(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def check(self, path: str, shown: str | None = None) -> None:
        if not self.allows(path):
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{shown or path} is outside the server's allowed roots ({', '.join(self.roots)}); "
                f"start mixtera-server with --allowed-root for its directory",
            )

    def check_location(self, raw: str) -> None:
        """Refuse a location (file, directory or glob) outside the roots before touching it."""
        path = os.path.abspath(os.path.expanduser(raw))
        if _GLOB_CHARS & set(raw):
            parts = path.split(os.sep)
            first = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
            path = os.sep.join(parts[:first]) or os.sep
        self.check(path, raw)


def default_roots(engine: LocalMixteraClient) -> list[str]:
    """The working directory plus the directories of every file registered so far."""
    dirs = {os.path.dirname(f.path) for f in engine.catalog.files().values()}
    return [os.getcwd(), *sorted(dirs)]


@dataclass
class _JobSlot:
    # lock order: algorithm -> lock -> counters
    lock: threading.RLock = field(default_factory=threading.RLock)  # loading, planning, the mixture log
    algorithm: threading.Lock = field(default_factory=threading.Lock)  # the mixing algorithm's updates
    counters: threading.Lock = field(default_factory=threading.Lock)  # pending / errors
    loaded: bool = False
    pending: int = 0  # feedback / step reports acknowledged, not applied yet
    errors: list[str] = field(default_factory=list)


class MixteraService(pb_grpc.MixteraServicer):
    """Implements every RPC of ``mixtera.proto`` on a local engine; see the module documentation."""

    def __init__(
        self,
        db_dir: str | os.PathLike[str],
        *,
        allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
        work_threads: int | None = None,
        plugins: PluginManager | None = None,
        max_chunk_size: int = MAX_CHUNK_SIZE,
        refit_processes: int = 1,
    ) -> None:
        # Mixing-algorithm refits (ADO's scaling-law fits) run in their own process(es): in this
        # one they would hold the GIL for tens of ms at a time, and every acknowledgement and
        # chunk request would wait for it. spawn, not fork: a forked gRPC process is unsafe.
        self._refits: ProcessPoolExecutor | None = None
        if refit_processes > 0:
            self._refits = ProcessPoolExecutor(
                refit_processes, mp_context=multiprocessing.get_context("spawn")
            )
            self._refits.submit(int)  # start the process now, not at the first refit
        self.engine = LocalMixteraClient(db_dir, plugins, algorithm_executor=self._refits, rank=0)
        self.roots = AllowedRoots(allowed_roots if allowed_roots else default_roots(self.engine))
        self.max_chunk_size = max_chunk_size
        self._catalog_lock = threading.Lock()
        self._slots: dict[str, _JobSlot] = {}
        self._slots_lock = threading.Lock()
        self._status: dict[str, dict[str, Any]] = {}
        threads = work_threads or max(2, min(4, os.cpu_count() or 1))
        self._work = ThreadPoolExecutor(threads, thread_name_prefix="mixtera-work")
        self._ordered = ThreadPoolExecutor(1, thread_name_prefix="mixtera-feedback")
        self._closed = False

    def close(self) -> None:
        """Apply the feedback already acknowledged, finish running work, close the catalog."""
        if self._closed:
            return
        self._closed = True
        self._ordered.shutdown(wait=True)
        self._work.shutdown(wait=True, cancel_futures=True)
        if self._refits is not None:
            self._refits.shutdown(wait=True, cancel_futures=True)
        self.engine.close()

    # ------------------------------------------------------------------ jobs: helpers

    def _slot(self, job_id: str, load: bool = True) -> _JobSlot:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job id {job_id!r} must be 1-128 characters of letters, digits, '_', '-', '.'",
                "JobError",
            )
        with self._slots_lock:
            slot = self._slots.setdefault(job_id, _JobSlot())
        if load and not slot.loaded:
            with slot.lock:
                if not slot.loaded:
                    self._load(job_id, slot)
        return slot

    def _load(self, job_id: str, slot: _JobSlot) -> None:
        """First use of a job in this process: load it once (its mixture log and seal with it)."""
        self.engine.job(job_id)  # JobError "no job ..." -> NOT_FOUND
        slot.loaded = True

    def _barrier(self) -> None:
        """Wait until every feedback / step report acknowledged so far has been applied."""
        self._ordered.submit(lambda: None).result()

    def _enqueue(self, job_id: str, slot: _JobSlot, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the ordered feedback thread; the caller acknowledges at once.

        Only the small ``counters`` lock is taken here, so an acknowledgement never waits for
        a refit or a chunk being planned; ``fn`` takes the locks it needs itself.
        """
        with slot.counters:
            slot.pending += 1

        def apply() -> None:
            try:
                fn()
            except Exception as e:  # the call was acknowledged already: record it for JobStatus
                log.error("%s for job %s failed", what, job_id, exc_info=e)
                with slot.counters:
                    slot.errors.append(f"{what}: {e}")
                    del slot.errors[:-20]
            finally:
                with slot.counters:
                    slot.pending -= 1

        self._ordered.submit(apply)

    def _check_tokenizer_source(self, source: str) -> None:
        seps = [s for s in (os.sep, os.altsep) if s]
        if any(s in source for s in seps) or source.startswith("~") or os.path.exists(source):
            self.roots.check(os.path.expanduser(source), f"tokenizer {source}")

    # ------------------------------------------------------------------ catalog

    @_streaming
    def RegisterDataset(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        if not request.locations:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "no location given; pass a file, directory or glob"
            )
        if not 0 <= request.workers <= 256:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"workers must be in [0, 256], got {request.workers}"
            )
        options = _json_object(request.parser_options_json, "parser_options (a JSON object)")
        fmt = self.engine.plugins.format(request.format or "jsonl")
        for raw in request.locations:
            self.roots.check_location(raw)
        paths = resolve_files(list(request.locations), fmt.matches, fmt.name, fmt.suffixes)
        for p in paths:
            self.roots.check(p)
        location: str | list[str] = (
            request.locations[0] if len(request.locations) == 1 else list(request.locations)
        )
        progress: queue.Queue[tuple[str, int, int] | None] = queue.Queue()

        def run() -> Any:
            try:
                with self._catalog_lock:
                    return self.engine.register_dataset(
                        request.name,
                        location,
                        format=request.format or "jsonl",
                        parser=request.parser or "fields",
                        parser_options=options,
                        on_error=request.on_error or "fail",
                        replace=request.replace,
                        workers=request.workers or None,
                        progress=lambda path, done, total: progress.put((path, done, total)),
                    )
            finally:
                progress.put(None)

        future = self._work.submit(run)
        yield pb.RegisterProgress(files_done=0, files_total=len(paths))
        while (item := progress.get()) is not None:
            yield pb.RegisterProgress(path=item[0], files_done=item[1], files_total=item[2])
        report = future.result()
        yield pb.RegisterProgress(
            files_done=report.files, files_total=report.files, report_json=_dumps(asdict(report))
        )

    @_streaming
    def Tokenize(self, request: pb.TokenizeRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        """Runs ``engine.tokenize`` in the work pool (holding the catalog lock, like a registration:
        the files must not be re-registered under it) and streams its progress, at most every
        ``TOKENIZE_PROGRESS_INTERVAL`` seconds plus every finished file; a client that goes away
        stops the run (a later call resumes it)."""
        datasets = list(dict.fromkeys(request.datasets))
        if not datasets:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "no dataset given; name the datasets to tokenize")
        if not request.tokenizer or not request.tokenizer_source:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "tokenizer and tokenizer_source are required, e.g. 'hf' and the path of a tokenizer.json",
            )
        if not 0 <= request.workers <= 256:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"workers must be in [0, 256], got {request.workers}"
            )
        options = _json_object(request.tokenizer_options_json, "tokenizer_options (a JSON object)")
        self._check_tokenizer_source(request.tokenizer_source)
        for f in catalog_files(self.engine.catalog, datasets):  # UnknownDatasetError -> NOT_FOUND
            self.roots.check(f.path)
        spec = TokenizerSpec(request.tokenizer, request.tokenizer_source, options)
        progress: queue.Queue[TokenizeProgress | None] = queue.Queue()
        cancel = threading.Event()
        context.add_callback(cancel.set)  # the call ended (client gone, or done)

        def report(p: TokenizeProgress) -> None:
            if cancel.is_set():
                raise MixteraError("the client of this tokenize call went away; a new call resumes it")
            progress.put(p)

        def run() -> Any:
            try:
                with self._catalog_lock:
                    return tokenize(
                        self.engine.catalog,
                        datasets,
                        spec,
                        add_bos=request.add_bos,
                        add_eos=request.add_eos,
                        text_field=request.text_field or "text",
                        workers=request.workers or None,
                        progress=report,
                        plugins=self.engine.plugins,
                        cancel=cancel,
                    )
            finally:
                progress.put(None)

        future = self._work.submit(run)
        last = 0.0
        files_done = -1
        while (item := progress.get()) is not None:
            now = time.monotonic()
            if item.files_done != files_done or now - last >= TOKENIZE_PROGRESS_INTERVAL:
                last, files_done = now, item.files_done
                yield pb.TokenizeProgress(**asdict(item))
        result = future.result()
        yield pb.TokenizeProgress(
            files_done=result.files,
            files_total=result.files,
            samples_done=result.samples,
            samples_total=result.samples,
            tokens=result.tokens,
            report_json=_dumps(result.to_json()),
        )

    @_unary
    def ListDatasets(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Json:
        return pb.Json(json=_dumps([asdict(d) for d in self.engine.list_datasets()]))

    @_unary
    def RemoveDataset(self, request: pb.Name, context: grpc.ServicerContext) -> pb.Empty:
        with self._catalog_lock:
            self.engine.remove_dataset(request.name)
        return pb.Empty()

    @_unary
    def Properties(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Json:
        props = self.engine.properties()
        # values are not always strings: send (value, count) pairs
        return pb.Json(json=_dumps({p: [[v, n] for v, n in values.items()] for p, values in props.items()}))

    @_unary
    def Explain(self, request: pb.Json, context: grpc.ServicerContext) -> pb.Json:
        data = _json_object(request.json, "explain request")
        with _parsing("explain request"):
            query = Query.from_json(data["query"])
            options = dict(data.get("options") or {})
        unknown = set(options) - _EXPLAIN_OPTIONS
        if unknown:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown explain options {sorted(unknown)}")
        properties = options.get("properties")
        if "peek" in data:
            n = data["peek"]
            if not isinstance(n, int) or not 0 <= n <= MAX_PEEK:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"peek must be an integer in [0, {MAX_PEEK}]")
            rows = self._work.submit(self.engine.peek, query, n, properties).result()
            return pb.Json(json=_dumps({"peek": [[key, encode_record(rec)] for key, rec in rows]}))
        with _parsing("explain request"):
            mixture = None if data.get("mixture") is None else Mixture.from_json(data["mixture"])
            tokenizer = options.get("tokenizer")
            if tokenizer is not None:
                name, source = tokenizer
                tokenizer = (str(name), str(source))
                self._check_tokenizer_source(tokenizer[1])
            kwargs = {
                k: v for k, v in options.items() if k not in ("properties", "tokenizer") and v is not None
            }
        explanation = self._work.submit(
            self.engine.explain, query, mixture, properties=properties, tokenizer=tokenizer, **kwargs
        ).result()
        return pb.Json(json=_dumps(explanation_to_json(explanation)))

    # ------------------------------------------------------------------ jobs

    @_streaming
    def Execute(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        data = _json_object(request.spec_json, "job spec")
        with _parsing("job spec"):
            spec = JobSpec.from_json(data)
            query = Query.from_json(spec.query)
            mixture = Mixture.from_json(spec.mixture)
        if query.job_id != spec.job_id:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job spec: job_id {spec.job_id!r} differs from the query's {query.job_id!r}",
            )
        if spec.chunk_size > self.max_chunk_size:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk_size {spec.chunk_size} exceeds the server's limit of {self.max_chunk_size}",
                "JobError",
            )
        if spec.tokenizer is not None:
            self._check_tokenizer_source(spec.tokenizer.source)
        options = {
            f.name: getattr(spec, f.name)
            for f in fields(JobSpec)
            if f.name not in ("job_id", "query", "mixture")
        }
        slot = self._slot(spec.job_id, load=False)

        def build() -> str:
            with slot.lock:
                try:
                    self.engine.job(spec.job_id)
                    known = True
                except JobError:
                    known = False
                if known:  # attach (same spec) or ALREADY_EXISTS; the job's status is unchanged
                    job_id = self.engine.execute(query, mixture, **options)
                    slot.loaded = True
                    return job_id
                self._status[spec.job_id] = {"state": "building"}
                try:
                    job_id = self.engine.execute(query, mixture, **options)
                except Exception as e:
                    self._status[spec.job_id] = {"state": "failed", "error": str(e)}
                    raise
                self._status[spec.job_id] = {"state": "ready"}
                slot.loaded = True
                return job_id

        future = self._work.submit(build)
        yield pb.ExecuteProgress(stage="index", job_id=spec.job_id)
        if spec.token_mode:
            yield pb.ExecuteProgress(stage="calibrate", job_id=spec.job_id)
        job_id = future.result()
        yield pb.ExecuteProgress(stage="ready", job_id=job_id, done=True)

    @_unary
    def GetJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobDescription:
        slot = self._slot(request.job_id)
        with slot.lock:
            job_json, index, files = self.engine.job(request.job_id).to_parts()
        return pb.JobDescription(job_json=job_json, index=index, files=files)

    def _snapshot(self, text: str, index: int, components: int) -> dict[str, Any] | None:
        """A client's planner snapshot, checked for shape: it steers the shared planner."""
        if not text:
            return None
        snap = _json_object(text, "planner snapshot")
        with _parsing("planner snapshot"):
            nxt = snap["next_index"]
            lists = [snap[k] for k in ("epoch", "pos", "carry", "exhausted")]
            ok = isinstance(nxt, int) and not isinstance(nxt, bool) and nxt >= 0
            ok = ok and all(isinstance(v, list) and len(v) == components for v in lists)
            ok = ok and all(isinstance(x, int) and x >= 0 for k in ("epoch", "pos") for x in snap[k])
            ok = ok and all(isinstance(x, int | float) and math.isfinite(x) for x in snap["carry"])
            ok = ok and all(isinstance(x, bool) for x in snap["exhausted"]) and isinstance(snap["done"], bool)
        if not ok:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed planner snapshot: expected next_index >= 0 and epoch/pos/carry/exhausted "
                f"lists of {components} entries (send a stream state's 'snapshot' unchanged)",
            )
        return snap

    @_unary
    def GetChunk(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        if request.index < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk index must be >= 0, got {request.index}")
        slot = self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        snapshot = self._snapshot(request.snapshot_json, request.index, job.index.num_components)
        with slot.lock:
            runtime = self.engine.runtime(request.job_id)
            if request.index >= runtime.horizon and request.index >= job.log.sealed:
                # its mixture is not decided yet: never plan it on weights that may still change
                return pb.ChunkReply(pending=True, index=request.index)
            # planning walks chunk by chunk: refuse to walk absurdly far for one request
            start = None
            snap_next = None if snapshot is None else int(snapshot["next_index"])
            if request.index >= runtime.horizon:
                start = runtime.horizon
                if snap_next is not None and start < snap_next <= request.index:
                    start = snap_next  # the runtime jumps to the snapshot
            elif snap_next is not None and snap_next <= request.index:
                start = snap_next  # an old chunk, regenerated from the snapshot
            limit = max(65536, 8 * job.spec.dp_groups * job.spec.num_workers)
            if start is not None and request.index - start > limit:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"chunk {request.index} is {request.index - start} chunks beyond what the server can "
                    f"plan from; send the planner snapshot of the stream's state with the request",
                )
            chunk, before = runtime.chunk(request.index, snapshot)
        before_json = json.dumps(before)
        if chunk is None:
            return pb.ChunkReply(ended=True, index=request.index, before_json=before_json)
        return pb.ChunkReply(
            index=chunk.index,
            comps=pack_int64(chunk.comps),
            file_ids=pack_int64(chunk.file_ids),
            starts=pack_int64(chunk.starts),
            stops=pack_int64(chunk.stops),
            before_json=before_json,
            spans=b"" if chunk.spans is None else np.ascontiguousarray(chunk.spans, dtype="<f8").tobytes(),
        )

    @_unary
    def GetMixture(self, request: pb.MixtureRequest, context: grpc.ServicerContext) -> pb.Json:
        slot = self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        if request.since < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"since must be >= 0, got {request.since}")
        with slot.lock:
            since = min(int(request.since), len(job.log.entries))
            entries = [[i, w.tolist()] for i, w in job.log.entries[since : since + MAX_LOG_ENTRIES]]
            more = since + len(entries) < len(job.log.entries)
            # a partial answer must not claim a seal its missing entries would contradict
            sealed = entries[-1][0] if more else job.log.sealed
        reply = {
            "sealed": sealed,
            "since": since,
            "entries": entries,
            "more": more,
            "generation": job.generation,
        }
        return pb.Json(json=_dumps(reply))

    @_unary
    def ReadSamples(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> pb.ReadReply:
        self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        entry = job.files.get(request.file_id)
        if entry is None:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND,
                f"file id {request.file_id} is not a file of job {request.job_id!r}",
            )
        starts, stops = list(request.starts), list(request.stops)
        if len(starts) != len(stops):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "starts and stops must have the same length")
        ranges: list[tuple[int, int]] = []
        total = 0
        for s, e in zip(starts, stops, strict=True):
            if s < 0 or e < s or (ranges and s < ranges[-1][1]):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "ranges must be sorted, non-overlapping half-open [start, stop) with 0 <= start <= stop",
                )
            total += e - s
            ranges.append((s, e))
        if total > MAX_READ_SAMPLES:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{total} samples in one request; ask for at most {MAX_READ_SAMPLES}",
            )
        self.roots.check(entry.path)
        fmt = self.engine.plugins.format(entry.format)
        indices: list[int] = []
        records: list[str] = []
        for i, record in fmt.read(entry.path, ranges, entry.read_index):
            indices.append(int(i))
            records.append(encode_record(record))
        return pb.ReadReply(sample_index=indices, records_json=records)

    @_unary
    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.Empty:
        job_id = request.job_id
        slot = self._slot(job_id)
        job = self.engine.job(job_id)
        if not isinstance(job.mixture, DynamicMixture):
            raise JobError(f"job {job_id!r} has no dynamic mixture; feedback needs DynamicMixture(...)")
        n = len(job.key_names)
        losses, counts = list(request.losses), list(request.counts)
        if len(losses) != n or len(counts) != n:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"feedback for job {job_id!r} needs one loss and one count per key ({n}: "
                f"{', '.join(job.key_names)}), got {len(losses)} and {len(counts)}",
            )
        if not all(math.isfinite(x) for x in losses + counts) or any(c < 0 for c in counts):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "losses must be finite and counts finite and >= 0")
        step = int(request.step)
        position = _position(request)

        def apply() -> None:
            # the algorithm (a refit can take a while) runs outside the planning lock, so chunk
            # requests are served meanwhile; only recording the change takes that lock
            with slot.algorithm:
                weights = self.engine.update_algorithm(job_id, step, losses, counts)
                if weights is not None:
                    with slot.lock:
                        self.engine.apply_key_weights(job_id, weights, step, position)

        self._enqueue(job_id, slot, f"feedback at step {step}", apply)
        return pb.Empty()

    @_unary
    def ReportStep(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.Empty:
        job_id, step = request.job_id, int(request.step)
        position = _position(request)
        slot = self._slot(job_id)

        def apply() -> None:
            with slot.lock:
                self.engine.report_step(job_id, step, position)

        self._enqueue(job_id, slot, f"step report {step}", apply)
        return pb.Empty()

    @_unary
    def ReportDelivered(self, request: pb.DeliveredRequest, context: grpc.ServicerContext) -> pb.Empty:
        slot = self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        counts = list(request.counts)
        if len(counts) != len(job.key_names) or any(c < 0 for c in counts):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"delivered counts need one count >= 0 per key ({len(job.key_names)}), got {counts[:20]}",
            )
        with slot.lock:
            self.engine.record_delivered(request.job_id, counts)
        return pb.Empty()

    @_unary
    def Checkpoint(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Json:
        slot = self._slot(request.job_id)
        self._barrier()
        with slot.algorithm, slot.lock:
            state = self.engine.checkpoint(request.job_id)
        return pb.Json(json=_dumps(state))

    @_unary
    def Restore(self, request: pb.RestoreRequest, context: grpc.ServicerContext) -> pb.Empty:
        state = _json_object(request.state_json, "checkpoint")
        missing = {"spec", "catalog_version", "log"} - set(state)
        if missing:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed checkpoint: missing {sorted(missing)}")
        with _parsing("checkpoint"):
            spec = JobSpec.from_json(state["spec"])
        if spec.tokenizer is not None:
            self._check_tokenizer_source(spec.tokenizer.source)
        slot = self._slot(request.job_id, load=False)
        self._barrier()

        def restore() -> None:
            with slot.algorithm, slot.lock, _parsing("checkpoint"):
                self.engine.restore(request.job_id, state)
                slot.loaded = True
                self._status.pop(request.job_id, None)

        self._work.submit(restore).result()
        return pb.Empty()

    @_unary
    def JobStatus(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Json:
        job_id = request.job_id
        slot = self._slot(job_id, load=False)
        status = self._status.get(job_id)
        if status is None or status["state"] == "ready":
            self._slot(job_id)  # NOT_FOUND for an unknown job
            status = {"state": "ready"}
        out = dict(status)
        with slot.counters:
            out.update(
                {
                    "sealed": self.engine.job(job_id).log.sealed if slot.loaded else None,
                    "pending_feedback": slot.pending,
                    "feedback_errors": list(slot.errors),
                }
            )
        return pb.Json(json=_dumps(out))

    @_unary
    def Report(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Json:
        slot = self._slot(request.job_id)
        self._barrier()
        with slot.lock:
            report = self.engine.report(request.job_id)
        return pb.Json(json=_dumps(asdict(report)))


def serve(
    service: MixteraService,
    host: str = "127.0.0.1",
    port: int = 7878,
    *,
    token: str | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    workers: int = 16,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``service``; returns it and the port it bound (``port=0``: a free one)."""
    if (tls_cert is None) != (tls_key is None):
        raise MixteraError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    interceptors = [TokenAuthInterceptor(token)] if token else []
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max(2, workers), thread_name_prefix="mixtera-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE),
            ("grpc.so_reuseport", 0),  # a second server on the same port is an error, not a silent split
        ],
    )
    pb_grpc.add_MixteraServicer_to_server(service, server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        if tls_cert is not None and tls_key is not None:
            bound = server.add_secure_port(address, server_credentials(tls_cert, tls_key))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise MixteraError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise MixteraError(f"cannot listen on {address} (port in use?)")
    server.start()
    return server, bound
