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
plus the directories that hold the files of datasets registered when it starts; a working
directory that is ``/`` or a home directory is refused (name the roots then).

**Hardening** (no client can break another's job). Planner snapshots a client sends back
must carry the server's signature (:mod:`.signing`), are checked against the job before use
and are loaded into a planner of the request's own, so a failing request changes nothing
shared. Every numeric field of every request has a limit (``INVALID_ARGUMENT`` names the
field and the limit); a chunk request plans at most ``max_walk`` chunks, in steps that hold
the job's lock one at a time, and the chunk cache is bounded in bytes. Path regexes of a
registration (``path_regex``) run with RE2 (linear time). At most ``max_calls`` calls run at
once (``max_heavy_calls`` of them registrations, builds, explains, tokenizations and restores;
more: ``UNAVAILABLE``, which clients retry), so threads are always left for the health service
and ``ListDatasets`` / ``JobStatus``. Each refusal is logged with its reason and peer.

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

from .. import storage
from ..client import LocalMixteraClient
from ..errors import (
    CorruptFileError,
    DatasetExistsError,
    DatasetLocationError,
    MalformedRecordError,
    MissingFieldError,
    MixteraError,
    SnapshotSignatureError,
    UnknownDatasetError,
    UnknownPluginError,
)
from ..interfaces import FieldRef, MetadataParser
from ..job import JobError, JobSpec, TokenizerSpec
from ..locations import check_glob, client_regex, resolve_files
from ..mixture import DynamicMixture, Mixture
from ..mixture_log import SEALED_FOREVER
from ..plugins import PluginManager, get_plugin_manager
from ..properties import PropertyType
from ..query import Query
from ..records import coerce
from ..remote import ERROR_METADATA, encode_record, explanation_to_json, pack_int64
from ..runtime import ChunkUnavailableError, snapshot_index
from ..token_index import TokenizeProgress, catalog_files, tokenize
from . import mixtera_pb2 as pb
from . import mixtera_pb2_grpc as pb_grpc
from .auth import GuardInterceptor, log_refusal, server_credentials
from .metrics import ServerMetrics
from .procs import watch_parent
from .signing import SnapshotSigner, job_key

log = logging.getLogger("mixtera.server")

DEFAULT_MAX_MESSAGE = 64 << 20  # bytes a request may have
MAX_SEND_MESSAGE = 1 << 30  # bytes a reply may have (a job's index can be large)
# Limits per request field (INVALID_ARGUMENT names the field and its limit).
MAX_INDEX = 1 << 40  # chunk indexes, positions, mixture log offsets
MAX_STEP = 1 << 53  # training steps
MAX_CHUNK_SIZE = 1 << 22  # samples per chunk the server plans (a chunk's descriptor: ~32 bytes per piece)
MAX_BLOCK_SIZE = 1 << 24
MAX_DP_GROUPS = 1 << 16
MAX_NUM_WORKERS = 1 << 10
MAX_NODES_PER_GROUP = 1 << 16
MAX_STREAMS = 1 << 16  # dp_groups x num_workers
MAX_SEQ_LEN = 1 << 24
MAX_CHUNK_TOKENS = 1 << 26
MAX_TOKEN_ESTIMATE_SAMPLES = 1 << 18  # samples tokenized to estimate tokens per byte
MAX_FEEDBACK_DELAY = 1 << 20  # and the look-ahead (JobSpec.delay) derived from dp_groups x num_workers
MAX_SAMPLES_PER_STEP = 1 << 40
MAX_BUDGET = 1 << 62  # explain: samples= / tokens=
STEP_PAUSE = 0.001  # seconds between the planning steps of one request
MIN_WALK = 1 << 16  # chunks one GetChunk may plan (at least; more for many streams), see _max_walk
MAX_WALK = 1 << 20
MAX_READ_SAMPLES = 1 << 16  # samples per ReadSamples request (the client asks for 4096)
MAX_READ_RANGES = 1 << 16
MAX_READ_REPLY_BYTES = 256 << 20
MAX_FILE_ID = (1 << 63) - 1
MAX_PEEK = 10_000
MAX_LOG_ENTRIES = 100_000  # mixture log entries per GetMixture reply
MAX_LOSS = 1e30  # |loss| and count per key in a feedback
MAX_KEYS = 1 << 20  # losses / counts per feedback or delivery report
MAX_DELIVERED = 1 << 48  # samples/tokens per key in one ReportDelivered
MAX_LOCATIONS = 1024  # locations per registration
MAX_NAME = 256  # characters of a dataset, plugin or field name
MAX_PATH = 4096  # characters of a location or tokenizer source
MAX_DATASETS = 1024  # datasets per Tokenize
MAX_WORKERS = 256  # workers= of a registration or tokenization
MAX_SNAPSHOT_FIXED = 4096  # bytes of a planner snapshot: this plus SNAPSHOT_PER_COMPONENT per component
SNAPSHOT_PER_COMPONENT = 256
MAX_CALLS = 28  # calls served at once (the rest: UNAVAILABLE), see serve()
MAX_HEAVY_CALLS = 4  # of those: registrations, builds, explains, tokenizations, restores
RESERVED_THREADS = 4  # RPC threads left for the health service, ListDatasets and JobStatus
CACHE_BYTES = 1 << 30  # the chunk caches of all jobs together (each gets an equal share) ...
MIN_JOB_CACHE_BYTES = 16 << 20  # ... but at least this
MAX_FAILED_BUILDS = 1024  # failed builds whose state JobStatus still reports
TOKENIZE_PROGRESS_INTERVAL = 0.2  # seconds between Tokenize progress messages (and every file done)
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_GLOB_CHARS = set("*?[")
_LIGHT = frozenset({"ListDatasets", "JobStatus"})  # never refused for being busy
_HEAVY = frozenset({"RegisterDataset", "Tokenize", "Execute", "Explain", "Restore"})
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
    if isinstance(exc, SnapshotSignatureError):
        return code.PERMISSION_DENIED
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
        log_refusal(method, context, code, message)
    if len(message) > 4000:  # status details travel in headers
        message = message[:4000] + " ..."
    if error:
        context.set_trailing_metadata(((ERROR_METADATA, error),))
    context.abort(code, message)


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: MixteraService, request: Any, context: grpc.ServicerContext) -> Any:
        start, code = time.perf_counter(), "OK"
        try:
            with self._admit(fn.__name__):
                return fn(self, request, context)
        except Exception as exc:
            code = status_of(exc)[0].name
            _fail(context, exc, fn.__name__)
        finally:
            self.metrics.record_call(fn.__name__, code, time.perf_counter() - start)

    return wrapper


def _streaming(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(fn)
    def wrapper(self: MixteraService, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start, code = time.perf_counter(), "OK"
        try:
            with self._admit(fn.__name__):
                yield from fn(self, request, context)
        except GeneratorExit:  # the client went away mid-stream
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = status_of(exc)[0].name
            _fail(context, exc, fn.__name__)
        finally:
            self.metrics.record_call(fn.__name__, code, time.perf_counter() - start)

    return wrapper


def _bounded(name: str, value: Any, lo: int | float, hi: int | float, error: str | None = None) -> None:
    """Refuse ``value`` of request field ``name`` outside [lo, hi], naming the field and the limit."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} must be in [{lo}, {hi}] (the server's limit), got {value!r}",
            error,
        )


def _text(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} has {len(value)} characters; the server's limit is {limit}",
        )


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Malformed input (bad JSON, wrong shapes or types) is INVALID_ARGUMENT naming ``what``."""
    try:
        yield
    except (_Abort, MixteraError):
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError) as e:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: {type(e).__name__}: {e}") from e


def _position(request: Any) -> int | None:
    if not request.HasField("position"):
        return None
    _bounded("position", int(request.position), -1, MAX_INDEX)
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
    """Where the server may read: local directories (a path counts by its real path, symlinks
    resolved) and URL prefixes of object storage (``s3://bucket/prefix``: the objects under it)."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        local = {os.path.realpath(os.fspath(r)) for r in roots if not storage.is_remote(os.fspath(r))}
        remote = {os.fspath(r).rstrip("/") for r in roots if storage.is_remote(os.fspath(r))}
        self.roots = sorted(local | remote)

    def allows(self, path: str) -> bool:
        if storage.is_remote(path):
            if any(part in (".", "..") for part in path.split("://", 1)[1].split("/")):
                return False  # stores differ on whether they resolve these: never across a root
            return any(path == r or path.startswith(r + "/") for r in self.roots if storage.is_remote(r))
        real = os.path.realpath(storage.local_path(path))
        return any(
            real == r or real.startswith(r.rstrip(os.sep) + os.sep)
            for r in self.roots
            if not storage.is_remote(r)
        )

    def check(self, path: str, shown: str | None = None) -> None:
        if not self.allows(path):
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{shown or path} is outside the server's allowed roots ({', '.join(self.roots)}); "
                f"start mixtera-server with --allowed-root for its directory (or URL prefix, s3://bucket/prefix)",
            )

    def check_location(self, raw: str) -> None:
        """Refuse a location (file, directory or glob) outside the roots before touching it."""
        if storage.is_remote(raw):
            path = raw
            if _GLOB_CHARS & set(raw):
                parts = raw.split("/")
                first = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
                path = "/".join(parts[:first])
            self.check(path.rstrip("/"), raw)
            return
        path = storage.local_path(raw)
        if _GLOB_CHARS & set(raw):
            parts = path.split(os.sep)
            first = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
            path = os.sep.join(parts[:first]) or os.sep
        self.check(path, raw)


def unsafe_default_root(cwd: str | None = None) -> str | None:
    """Why the working directory cannot be the default allowed root (``/`` or a home
    directory: it would expose every file of the machine or of a user), or None."""
    real = os.path.realpath(cwd if cwd is not None else os.getcwd())
    if real == os.path.realpath(os.sep):
        return "the root directory /"
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:  # this user's home, and users' homes (/home/NAME, /root)
        import pwd

        homes.add(os.path.realpath(pwd.getpwuid(os.getuid()).pw_dir))
        for entry in pwd.getpwall():
            if entry.pw_dir.startswith("/home/") or entry.pw_dir == "/root":
                homes.add(os.path.realpath(entry.pw_dir))
    except (ImportError, KeyError, OSError):  # pragma: no cover - not POSIX, or no entry
        pass
    homes.discard(os.path.realpath(os.sep))
    if real in homes:
        return f"the home directory {real}"
    return None


def _check_checkpoint(state: dict[str, Any], spec: JobSpec) -> int | None:
    """The shape and ranges of a checkpoint's mixture log, seal and changes (a malformed one
    would break the job for every client); returns the log's weights per entry (None: empty)."""

    def bad(why: str) -> _Abort:
        return _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed checkpoint: {why}")

    log_ = state["log"]
    if not isinstance(log_, list) or not 1 <= len(log_) <= MAX_LOG_ENTRIES:
        raise bad(f"log must be a list of 1 to {MAX_LOG_ENTRIES} [chunk, weights] entries")
    width: int | None = None
    last = -1
    for entry in log_:
        if not isinstance(entry, list) or len(entry) != 2:
            raise bad("each log entry is [chunk index, weights]")
        chunk, weights = entry
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not last <= chunk <= MAX_INDEX:
            raise bad(f"log chunk indexes must be integers in [0, {MAX_INDEX}] in order, got {chunk!r}")
        last = max(chunk, 0)
        if not isinstance(weights, list) or not weights or (width is not None and len(weights) != width):
            raise bad("log weights must be lists of one weight per component, all of one length")
        width = len(weights)
        ok = all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
            for w in weights
        )
        if not ok or sum(weights) <= 0:
            raise bad("log weights must be finite, >= 0 and not all 0")
    sealed = state.get("sealed", spec.initial_seal)
    if spec.dynamic:
        if isinstance(sealed, bool) or not isinstance(sealed, int) or not 0 <= sealed <= MAX_INDEX:
            raise bad(f"sealed must be an integer in [0, {MAX_INDEX}] for a job with a dynamic mixture")
    elif sealed != SEALED_FOREVER:
        raise bad("sealed must be absent or the job's (no mixture change can come to a job without feedback)")
    changes = state.get("changes", [])
    if not isinstance(changes, list) or len(changes) > MAX_LOG_ENTRIES:
        raise bad(f"changes must be a list of at most {MAX_LOG_ENTRIES} objects")
    for change in changes:
        chunk = change.get("chunk") if isinstance(change, dict) else None
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 <= chunk <= MAX_INDEX:
            raise bad("each change is an object with its chunk index")
    algorithm = state.get("algorithm")
    if algorithm is not None and not isinstance(algorithm, dict):
        raise bad("algorithm must be an object (the mixing algorithm's state) or null")
    return width


def default_roots(engine: LocalMixteraClient) -> list[str]:
    """The working directory plus the directories of every file registered so far; refused
    (:class:`~mixtera_core.errors.MixteraError`) when the working directory is ``/`` or a home."""
    why = unsafe_default_root()
    if why is not None:
        raise MixteraError(
            f"the server's working directory is {why}, which would let every client read any file under "
            f"it; name the directories the server may read with --allowed-root DIR (repeatable)"
        )
    dirs = {os.path.dirname(f.path) for f in engine.catalog.files().values() if not storage.is_remote(f.path)}
    return [os.getcwd(), *sorted(dirs)]


_NEVER = "(?!)()"  # a Python regex that never matches (and cannot backtrack)


class _RE2PathParser(MetadataParser):
    """A parser whose ``path_regex`` mappings run with RE2: it wraps the parser built with each
    such pattern replaced by one that never matches, and fills those properties itself."""

    name = "re2"

    def __init__(self, inner: MetadataParser, regexes: dict[str, Any]) -> None:
        super().__init__(**inner.options)
        self.inner = inner
        own = set(inner.file_property_names())
        self.regexes = {p: rx for p, rx in regexes.items() if p in own}

    @property
    def schema(self) -> dict[str, PropertyType]:
        return self.inner.schema

    def field_map(self) -> dict[str, FieldRef] | None:
        return self.inner.field_map()

    def file_properties(self, path: str) -> dict[str, Any]:
        out = dict(self.inner.file_properties(path))
        schema = self.inner.schema
        for prop, rx in self.regexes.items():
            m = rx.search(path)
            out[prop] = coerce(m.group(1), schema[prop]) if m and m.group(1) is not None else None
        return out

    def parse(self, record: Any, path: str) -> dict[str, Any]:
        return self.inner.parse(record, path)

    def file_property_names(self) -> list[str]:
        return self.inner.file_property_names()

    def record_schema(self) -> dict[str, PropertyType]:
        return self.inner.record_schema()


class ServerPlugins(PluginManager):
    """The server engine's view of a plugin manager (the same plugins and state): parsers whose
    options map properties with ``path_regex`` get those regexes compiled with RE2, since they
    come from remote clients (see :func:`~mixtera_core.locations.client_regex`)."""

    def __init__(self, inner: PluginManager) -> None:  # noqa: D107 - shares inner's state
        self.__dict__ = inner.__dict__

    def parser(self, name: str, **options: Any) -> MetadataParser:
        regexes: dict[str, Any] = {}
        plain = dict(options)
        for prop, spec in options.items():
            if isinstance(spec, dict) and "path_regex" in spec:
                regexes[str(prop)] = client_regex(spec["path_regex"], f"path_regex of property {prop!r}")
                plain[prop] = {**spec, "path_regex": _NEVER}
        inner = super().parser(name, **plain)
        if not regexes:
            return inner
        wrapper = type(f"RE2{type(inner).__name__}", (_RE2PathParser,), {"name": inner.name})
        out = wrapper(inner, regexes)
        out.options = dict(options)
        return out


@dataclass
class _JobSlot:
    # lock order: algorithm -> lock -> counters
    lock: threading.RLock = field(default_factory=threading.RLock)  # loading, planning, the mixture log
    algorithm: threading.Lock = field(default_factory=threading.Lock)  # the mixing algorithm's updates
    counters: threading.Lock = field(default_factory=threading.Lock)  # pending / errors
    loaded: bool = False
    pinned: bool = False  # made by Execute / Restore: kept even while the job does not exist yet
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
        max_calls: int = MAX_CALLS,
        max_heavy_calls: int = MAX_HEAVY_CALLS,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        # Mixing-algorithm refits (ADO's scaling-law fits) run in their own process(es): in this
        # one they would hold the GIL for tens of ms at a time, and every acknowledgement and
        # chunk request would wait for it. spawn, not fork: a forked gRPC process is unsafe.
        # Each exits by itself soon after this process dies, however it dies (procs.watch_parent).
        self._refits: ProcessPoolExecutor | None = None
        if refit_processes > 0:
            self._refits = ProcessPoolExecutor(
                refit_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=watch_parent,
                initargs=(os.getpid(),),
            )
            for _ in range(refit_processes):  # start the processes now, not at the first refit
                self._refits.submit(int)
        self.plugins = ServerPlugins(plugins if plugins is not None else get_plugin_manager())
        self.engine = LocalMixteraClient(db_dir, self.plugins, algorithm_executor=self._refits, rank=0)
        self.roots = AllowedRoots(allowed_roots if allowed_roots else default_roots(self.engine))
        self.signer = SnapshotSigner.for_db(self.engine.catalog.db_dir)
        self.max_chunk_size = min(int(max_chunk_size), MAX_CHUNK_SIZE)
        self.cache_bytes = int(cache_bytes)  # all jobs' chunk caches together
        self._cached_jobs: set[str] = set()
        self._keys: dict[str, tuple[JobSpec, str]] = {}
        self.health: Any = None  # the health servicer, once serve() has started a server
        self.set_capacity(max_calls, max_heavy_calls)
        self._catalog_lock = threading.Lock()
        self._slots: dict[str, _JobSlot] = {}
        self._slots_lock = threading.Lock()
        self._status: dict[str, dict[str, Any]] = {}
        threads = work_threads or max(2, min(4, os.cpu_count() or 1))
        self._work = ThreadPoolExecutor(threads, thread_name_prefix="mixtera-work")
        self._ordered = ThreadPoolExecutor(1, thread_name_prefix="mixtera-feedback")
        self._closed = False
        self.metrics = ServerMetrics()  # served by --metrics-port (see .metrics)
        self.metrics.add_gauge(
            "mixtera_updates_pending",
            "Feedback and step reports acknowledged, not applied yet.",
            self._pending,
        )

    def _pending(self) -> dict[tuple[tuple[str, str], ...], float]:
        with self._slots_lock:
            slots = list(self._slots.items())
        return {(("job", job_id),): float(slot.pending) for job_id, slot in slots if slot.loaded}

    def set_capacity(self, max_calls: int, max_heavy_calls: int = MAX_HEAVY_CALLS) -> None:
        """At most ``max_calls`` calls at once (not counting ``ListDatasets``, ``JobStatus`` and
        health checks), ``max_heavy_calls`` of them heavy; see the module documentation."""
        self.max_calls = max(1, int(max_calls))
        self.max_heavy_calls = max(1, min(int(max_heavy_calls), self.max_calls))
        self._calls = threading.BoundedSemaphore(self.max_calls)
        self._heavy = threading.BoundedSemaphore(self.max_heavy_calls)

    @contextmanager
    def _admit(self, method: str) -> Iterator[None]:
        """Hold a call slot (and a heavy one) while a call runs; none free: ``UNAVAILABLE`` at once."""
        if method in _LIGHT:
            yield
            return
        heavy = method in _HEAVY
        if heavy and not self._heavy.acquire(blocking=False):
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE,
                f"server busy: {self.max_heavy_calls} registrations, builds, explains, tokenizations or "
                f"restores are running; retry later",
            )
        try:
            if not self._calls.acquire(blocking=False):
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"server busy: {self.max_calls} calls are running; retry later",
                )
            try:
                yield
            finally:
                self._calls.release()
        finally:
            if heavy:
                self._heavy.release()

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
                f"job id {job_id[:200]!r} must be 1-128 characters of letters, digits, '_', '-', '.'",
                "JobError",
            )
        while True:
            with self._slots_lock:
                slot = self._slots.get(job_id)
                if slot is None:
                    slot = self._slots[job_id] = _JobSlot()
                if not load:
                    slot.pinned = True
            if not load or slot.loaded:
                return slot
            with slot.lock:
                with self._slots_lock:
                    current = self._slots.get(job_id) is slot
                if not current:  # dropped by a failed load meanwhile: take the one there now
                    continue
                if not slot.loaded:
                    try:
                        self._load(job_id, slot)
                    except Exception:
                        # an unknown job leaves no slot behind (ids sent at random cost no memory)
                        with self._slots_lock:
                            if not slot.pinned and not slot.loaded and self._slots.get(job_id) is slot:
                                del self._slots[job_id]
                        raise
            return slot

    def _forget_failed(self) -> None:
        """Keep the states of at most ``MAX_FAILED_BUILDS`` failed builds (and their slots)."""
        failed = [k for k, v in self._status.items() if v.get("state") == "failed"]
        for job_id in failed[: max(0, len(failed) - MAX_FAILED_BUILDS)]:
            self._status.pop(job_id, None)
            with self._slots_lock:
                slot = self._slots.get(job_id)
                if slot is not None and not slot.loaded:
                    del self._slots[job_id]

    def _job_key(self, job_id: str) -> str:
        """What the signatures of the job's planner snapshots bind them to (see :mod:`.signing`)."""
        job = self.engine.job(job_id)
        cached = self._keys.get(job_id)
        if cached is not None and cached[0] is job.spec:
            return cached[1]
        key = job_key(job_id, job.spec.to_json(), getattr(job, "catalog_version", None))
        self._keys[job_id] = (job.spec, key)
        return key

    def _max_walk(self, spec: JobSpec) -> int:
        """Chunks one GetChunk may plan: what the read-ahead of all streams needs, with room."""
        streams = spec.dp_groups * spec.num_workers
        return min(MAX_WALK, max(MIN_WALK, 8 * streams, 2 * spec.delay))

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
        _text("name", request.name, MAX_NAME)
        _text("format", request.format, MAX_NAME)
        _text("parser", request.parser, MAX_NAME)
        _bounded("number of locations", len(request.locations), 1, MAX_LOCATIONS)
        _bounded("workers", request.workers, 0, MAX_WORKERS)
        if request.on_error not in ("", "fail", "skip"):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"on_error must be 'fail' or 'skip', got {request.on_error[:50]!r}",
            )
        for raw in request.locations:
            _text("a location", raw, MAX_PATH)
            check_glob(raw)
        options = _json_object(request.parser_options_json, "parser_options (a JSON object)")
        fmt = self.engine.plugins.format(request.format or "jsonl")
        for raw in request.locations:
            self.roots.check_location(raw)
        location: str | list[str] = (
            request.locations[0] if len(request.locations) == 1 else list(request.locations)
        )
        progress: queue.Queue[tuple[str, int, int] | None] = queue.Queue()

        def run() -> Any:
            # in the work pool: walking directories and expanding globs can take long
            try:
                paths = resolve_files(list(request.locations), fmt.matches, fmt.name, fmt.suffixes)
                for p in paths:
                    self.roots.check(p)
                progress.put(("", 0, len(paths)))
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
        _bounded("workers", request.workers, 0, MAX_WORKERS)
        _bounded("number of datasets", len(datasets), 1, MAX_DATASETS)
        _text("tokenizer", request.tokenizer, MAX_NAME)
        _text("tokenizer_source", request.tokenizer_source, MAX_PATH)
        _text("text_field", request.text_field, MAX_NAME)
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
        _text("name", request.name, MAX_NAME)
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
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown explain options {sorted(unknown)[:20]}")
        for name, lo, hi in (
            ("samples", 0, MAX_BUDGET),
            ("tokens", 0, MAX_BUDGET),
            ("per_step", 1, MAX_BUDGET),
            ("token_estimate_samples", 1, MAX_TOKEN_ESTIMATE_SAMPLES),
        ):
            if options.get(name) is not None:
                value = options[name]
                if not isinstance(value, int):
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be an integer, got {value!r}"
                    )
                _bounded(name, value, lo, hi)
        properties = options.get("properties")
        if properties is not None and (
            not isinstance(properties, list) or not all(isinstance(p, str) for p in properties)
        ):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "options.properties must be a list of property names"
            )
        tokenizer_options = options.get("tokenizer_options")
        if tokenizer_options is not None and not isinstance(tokenizer_options, dict):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "options.tokenizer_options must be a JSON object")
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
                if not isinstance(tokenizer, list | tuple) or not all(isinstance(t, str) for t in tokenizer):
                    raise ValueError("options.tokenizer must be [plugin name, source]")
                name, source = tokenizer
                _text("tokenizer source", source, MAX_PATH)
                tokenizer = (name, source)
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
        self._check_spec(spec)
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
                    self._status[spec.job_id] = {"state": "failed", "error": str(e)[:2000]}
                    self._forget_failed()
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

    def _check_spec(self, spec: JobSpec) -> None:
        """The server's limits on a job spec (a client's, or a checkpoint's)."""
        if spec.chunk_size > self.max_chunk_size:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk_size {spec.chunk_size} exceeds the server's limit of {self.max_chunk_size}",
                "JobError",
            )
        limits: list[tuple[str, Any, int]] = [
            ("block_size", spec.block_size, MAX_BLOCK_SIZE),
            ("dp_groups", spec.dp_groups, MAX_DP_GROUPS),
            ("num_workers", spec.num_workers, MAX_NUM_WORKERS),
            ("nodes_per_group", spec.nodes_per_group, MAX_NODES_PER_GROUP),
            ("dp_groups x num_workers", spec.dp_groups * spec.num_workers, MAX_STREAMS),
            ("token_estimate_samples", spec.token_estimate_samples, MAX_TOKEN_ESTIMATE_SAMPLES),
        ]
        optional = [
            ("seq_len", spec.seq_len, MAX_SEQ_LEN),
            ("chunk_tokens", spec.chunk_tokens, MAX_CHUNK_TOKENS),
            ("samples_per_step", spec.samples_per_step, MAX_SAMPLES_PER_STEP),
            ("feedback_delay", spec.feedback_delay, MAX_FEEDBACK_DELAY),
        ]
        limits += [(n, v, hi) for n, v, hi in optional if v is not None]
        for name, value, hi in limits:
            _bounded(name, value, 1, hi, "JobError")
        kinds: list[tuple[str, Any, type | tuple[type, ...]]] = [
            ("text_field", spec.text_field, str),
            ("add_bos", spec.add_bos, bool),
            ("add_eos", spec.add_eos, bool),
        ]
        if spec.tokenizer is not None:
            kinds += [
                ("tokenizer name", spec.tokenizer.name, str),
                ("tokenizer source", spec.tokenizer.source, str),
                ("tokenizer options", spec.tokenizer.options, dict),
            ]
        for name, value, kind in kinds:
            if not isinstance(value, kind):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{name} has the wrong type ({type(value).__name__})",
                    "JobError",
                )
        _text("text_field", spec.text_field, MAX_NAME)
        if spec.delay > MAX_FEEDBACK_DELAY:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the job's look-ahead ({spec.delay} chunks: feedback_delay, or 4 (token mode 12) x "
                f"dp_groups x num_workers) exceeds the server's limit of {MAX_FEEDBACK_DELAY}; set "
                f"feedback_delay",
                "JobError",
            )
        if spec.tokenizer is not None:
            _text("tokenizer source", spec.tokenizer.source, MAX_PATH)
            self._check_tokenizer_source(spec.tokenizer.source)

    @_unary
    def GetJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.JobDescription:
        slot = self._slot(request.job_id)
        with slot.lock:
            job_json, index, files = self.engine.job(request.job_id).to_parts()
        return pb.JobDescription(job_json=job_json, index=index, files=files)

    def _snapshot(self, text: str, job_id: str, components: int) -> dict[str, Any] | None:
        """A client's planner snapshot: its signature checked (only the snapshots this server
        handed out for this job pass), then its shape; its values are checked where it is loaded."""
        if not text:
            return None
        limit = MAX_SNAPSHOT_FIXED + SNAPSHOT_PER_COMPONENT * components
        if len(text) > limit:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"snapshot_json has {len(text)} characters; the limit for this job is {limit}",
                "PlannerStateError",
            )
        snap = _json_object(text, "planner snapshot")
        with _parsing("planner snapshot"):
            snap = self.signer.verify(self._job_key(job_id), snap)
        snapshot_index(snap)
        return snap

    @_unary
    def GetChunk(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        _bounded("index", request.index, 0, MAX_INDEX)
        slot = self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        snapshot = self._snapshot(request.snapshot_json, request.job_id, job.index.num_components)
        key = self._job_key(request.job_id)
        max_walk = self._max_walk(job.spec)
        walk = None
        runtime = None
        # one step of planning at a time under the job's lock: a far request never holds the
        # job for the others' chunks
        while walk is None or not walk.done:
            with slot.lock:
                current = self.engine.runtime(request.job_id)
                if runtime is None:
                    runtime = current
                    with self._slots_lock:  # the chunk caches of all jobs share one byte budget
                        self._cached_jobs.add(request.job_id)
                        share = self.cache_bytes // len(self._cached_jobs)
                    runtime.cache_bytes = max(MIN_JOB_CACHE_BYTES, share)
                elif current is not runtime:  # the job was restored meanwhile
                    raise _Abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"job {request.job_id!r} was restored meanwhile; ask again",
                    )
                if request.index >= runtime.horizon and request.index >= job.log.sealed:
                    # its mixture is not decided yet: never plan it on weights that may still change
                    self.metrics.record_chunk(request.job_id, "pending")
                    return pb.ChunkReply(pending=True, index=request.index)
                if walk is None:
                    walk = runtime.walk(request.index, snapshot, max_walk)
                walk.step()
            if not walk.done:
                time.sleep(STEP_PAUSE)  # locks are not fair: let the job's other requests in
        assert walk.result is not None
        chunk, before = walk.result
        before_json = json.dumps(self.signer.sign(key, before))
        self.metrics.record_chunk(request.job_id, "ended" if chunk is None else "served")
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
        _bounded("since", request.since, 0, MAX_INDEX)
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
        _bounded("file_id", request.file_id, 0, MAX_FILE_ID)
        _bounded("number of ranges", len(request.starts), 0, MAX_READ_RANGES)
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
        entry.check_unchanged()  # a file changed since registration: FileChangedError, named
        fmt = self.engine.plugins.format(entry.format)
        indices: list[int] = []
        records: list[str] = []
        size = 0
        for i, record in fmt.read(entry.path, ranges, entry.read_index):
            indices.append(int(i))
            records.append(encode_record(record))
            size += len(records[-1]) + 16
            if size > MAX_READ_REPLY_BYTES:
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the records asked for exceed {MAX_READ_REPLY_BYTES >> 20} MiB in one reply; ask for "
                    f"fewer samples per request",
                )
        self.metrics.record_samples(request.job_id, len(records))
        return pb.ReadReply(sample_index=indices, records_json=records)

    @_unary
    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.Empty:
        job_id = request.job_id
        _bounded("step", request.step, 0, MAX_STEP)
        position = _position(request)
        _bounded("number of losses", len(request.losses), 0, MAX_KEYS)
        _bounded("number of counts", len(request.counts), 0, MAX_KEYS)
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
        if any(abs(x) > MAX_LOSS for x in losses + counts):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"losses and counts must be at most {MAX_LOSS:g} in size"
            )
        step = int(request.step)

        def apply() -> None:
            # the algorithm (a refit can take a while) runs outside the planning lock, so chunk
            # requests are served meanwhile; only recording the change takes that lock
            start = time.perf_counter()
            try:
                with slot.algorithm:
                    weights = self.engine.update_algorithm(job_id, step, losses, counts)
                    seconds = time.perf_counter() - start
                    if weights is not None:
                        with slot.lock:
                            self.engine.apply_key_weights(job_id, weights, step, position)
            except Exception:
                self.metrics.record_feedback(job_id, "failed")
                raise
            self.metrics.record_feedback(job_id, "unchanged" if weights is None else "changed", seconds)

        self._enqueue(job_id, slot, f"feedback at step {step}", apply)
        return pb.Empty()

    @_unary
    def ReportStep(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.Empty:
        job_id, step = request.job_id, int(request.step)
        _bounded("step", step, 0, MAX_STEP)
        slot = self._slot(job_id)
        position = _position(request)

        def apply() -> None:
            with slot.lock:
                self.engine.report_step(job_id, step, position)
            self.metrics.record_step(job_id)

        self._enqueue(job_id, slot, f"step report {step}", apply)
        return pb.Empty()

    @_unary
    def ReportDelivered(self, request: pb.DeliveredRequest, context: grpc.ServicerContext) -> pb.Empty:
        slot = self._slot(request.job_id)
        job = self.engine.job(request.job_id)
        counts = list(request.counts)
        if len(counts) != len(job.key_names) or any(c < 0 or c > MAX_DELIVERED for c in counts):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"delivered counts need one count in [0, {MAX_DELIVERED}] per key ({len(job.key_names)}), "
                f"got {counts[:20]}",
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
        if spec.job_id != request.job_id:
            raise JobError(f"checkpoint is for job {spec.job_id!r}, not {request.job_id!r}")
        self._check_spec(spec)
        width = _check_checkpoint(state, spec)
        slot = self._slot(request.job_id, load=False)
        self._barrier()

        def restore() -> None:
            job_id = request.job_id
            with slot.algorithm, slot.lock, _parsing("checkpoint"):
                try:
                    job = self.engine.job(job_id)
                except JobError:
                    job = None
                if job is None:  # build it first (as restore would), to check the log against it
                    if self.engine.catalog.version != state["catalog_version"]:
                        raise JobError(
                            f"the catalog changed since job {job_id!r} was checkpointed (version "
                            f"{state['catalog_version']!r}, now {self.engine.catalog.version}); restore into "
                            f"the catalog the job ran on"
                        )
                    options = {f.name: getattr(spec, f.name) for f in fields(JobSpec)}
                    query, mixture = (
                        Query.from_json(options.pop("query")),
                        Mixture.from_json(options.pop("mixture")),
                    )
                    options.pop("job_id")
                    self.engine.execute(query, mixture, **options)
                    job = self.engine.job(job_id)
                    slot.loaded = True
                n = job.index.num_components
                if width is not None and width != n:
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"malformed checkpoint: its mixture log has {width} weights per entry, job "
                        f"{job_id!r} has {n} components",
                    )
                previous = self.engine.checkpoint(job_id)
                try:
                    self.engine.restore(job_id, state)
                except Exception:
                    self.engine.restore(job_id, previous)  # a failed restore changes nothing
                    raise
                slot.loaded = True
                self._status.pop(job_id, None)

        try:
            self._work.submit(restore).result()
        except Exception:
            with self._slots_lock:
                if (
                    not slot.loaded
                    and request.job_id not in self._status
                    and self._slots.get(request.job_id) is slot
                ):
                    del self._slots[request.job_id]
            raise
        return pb.Empty()

    @_unary
    def JobStatus(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Json:
        job_id = request.job_id
        status = self._status.get(job_id)
        if status is None or status["state"] == "ready":
            slot = self._slot(job_id)  # NOT_FOUND for an unknown job
            status = {"state": "ready"}
        else:
            slot = self._slot(job_id, load=False)
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

    @_unary
    def ListJobs(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Json:
        self._barrier()  # the changes counted include the feedback acknowledged so far
        return pb.Json(json=_dumps([info.to_json() for info in self.engine.list_jobs()]))

    @_unary
    def DeleteJob(self, request: pb.JobRequest, context: grpc.ServicerContext) -> pb.Empty:
        """Forget the job (directory, planner, chunk cache, status); its running streams then
        get NOT_FOUND. Under the job's locks, after the feedback acknowledged so far."""
        slot = self._slot(request.job_id)  # NOT_FOUND for an unknown job
        self._barrier()
        with slot.algorithm, slot.lock:
            self.engine.delete_job(request.job_id)
            with self._slots_lock:
                if self._slots.get(request.job_id) is slot:
                    del self._slots[request.job_id]
                self._cached_jobs.discard(request.job_id)
            self._status.pop(request.job_id, None)
            self._keys.pop(request.job_id, None)
        return pb.Empty()


def serve(
    service: MixteraService,
    host: str = "127.0.0.1",
    port: int = 7878,
    *,
    token: str | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    workers: int = MAX_CALLS + RESERVED_THREADS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``service``; returns it and the port it bound (``port=0``: a free one).

    ``workers`` threads serve calls; ``RESERVED_THREADS`` of them are kept for the health
    service (``grpc.health.v1.Health``, no token needed), ``ListDatasets`` and ``JobStatus``:
    the service admits at most ``workers - RESERVED_THREADS`` other calls at once."""
    if (tls_cert is None) != (tls_key is None):
        raise MixteraError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    threads = max(int(workers), RESERVED_THREADS + 2)
    service.set_capacity(threads - RESERVED_THREADS, service.max_heavy_calls)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mixtera-rpc"),
        interceptors=[GuardInterceptor(token or None)],
        options=[
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            ("grpc.max_send_message_length", MAX_SEND_MESSAGE),
            ("grpc.so_reuseport", 0),  # a second server on the same port is an error, not a silent split
        ],
    )
    pb_grpc.add_MixteraServicer_to_server(service, server)
    try:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    except ImportError:  # pragma: no cover - a dependency; an old environment may lack it
        log.warning(
            "grpcio-health-checking is not installed: no health service (pip install grpcio-health-checking)"
        )
    else:
        service.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
        for name in ("", "mixtera.v1.Mixtera"):
            service.health.set(name, health_pb2.HealthCheckResponse.SERVING)
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
