"""RemoteMixteraClient: the :class:`~mixtera_core.client.MixteraClient` interface over gRPC.

``MixteraClient.remote(host, port, token=...)`` talks to a ``mixtera-server DB_DIR``. It
offers the same operations and returns the same objects as the local client, so training
code does not change when the catalog moves to a server:

- Structured values travel as JSON in the shape of the core's ``to_json()`` methods (the
  wire contract is ``mixtera_core/server/mixtera.proto``); nothing is pickled.
- A stream fetches its job once (``GetJob``) and then asks the server for chunk
  descriptors (``GetChunk``); the planning is central, on the server. Each request carries
  the planner state before the stream's previous chunk, so a restarted server that has
  reloaded the job from ``DB_DIR`` regenerates exactly the next chunk: no sample is lost
  or repeated across a server restart. The server signs those planner states (the ``"mac"``
  key, see :mod:`mixtera_core.server.signing`) and takes back only its own, unchanged: keep
  a stream state's ``snapshot`` as it is in checkpoints.
- Samples are read by the client from the (shared) filesystem, like the local client; with
  ``ship_samples=True`` the server reads them and ships the records (``ReadSamples``).
- Transient failures (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``) are retried with exponential
  backoff, ``retries`` times; calls that change state are retried only on ``UNAVAILABLE``.
- Errors the server raises on purpose come back as the same exception class as locally
  (``JobError``, ``UnknownDatasetError``, ...), with the gRPC status in ``grpc_code``.
  Refusals raise :class:`AuthenticationError` (wrong or missing token) and
  :class:`PermissionDeniedError` (a path outside the server's allowed roots).
- Delivered counts of this client's streams are reported to the server (``ReportDelivered``)
  when a stream ends, on :meth:`RemoteMixteraClient.report` and on ``close()``.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from .catalog import DatasetInfo, ProgressCallback, RegistrationReport
from .chunking import Chunk
from .client import Location, MixteraClient, warn_registration
from .errors import MixteraError
from .job import Job, TokenizerSpec, make_spec
from .job_store import JobInfo
from .mixture import Mixture, as_mixture
from .mixture_log import DEFAULT_MIXTURE_TIMEOUT, MixtureUnknownError, ProcessLocalLock
from .plugins import PluginManager, get_plugin_manager
from .query import Query
from .report import ComponentInfo, Explanation, JobReport
from .server import mixtera_pb2 as pb
from .server import mixtera_pb2_grpc as pb_grpc
from .streaming import JobStream
from .token_index import TokenizeCallback, TokenizeProgress, TokenizeReport

if TYPE_CHECKING:
    from .executors import ScanExecutor

ERROR_METADATA = "mixtera-error"  # trailing metadata: the class name of a Mixtera error
CLIENT_MAX_MESSAGE = 1 << 30
READ_BATCH = 4096  # samples per ReadSamples request


class RemoteError(MixteraError):
    """The server refused or failed a call; ``grpc_code`` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.grpc_code = code


class AuthenticationError(RemoteError):
    """The server needs a token (``token=``) and got none or a wrong one."""


class PermissionDeniedError(RemoteError, PermissionError):
    """The call names a path outside the server's allowed roots."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server could not be reached, also after retrying."""


class InvalidArgumentError(RemoteError, ValueError):
    """The server refused a malformed or out-of-range argument."""


# ---------------------------------------------------------------------- wire helpers


def _local_executor_only(executor: Any, method: str) -> None:
    """A server runs registration and tokenization with its own executor (its threads)."""
    if executor != "local":
        raise ValueError(
            f"{method}(executor={executor!r}) is for an embedded client (MixteraClient.local): a server "
            f"scans with its own threads. To use Ray, register from the process that holds the catalog "
            f"(stop the server, or run the registration there) with executor='ray'"
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} as JSON")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj and isinstance(obj["__bytes__"], str):
        return base64.b64decode(obj["__bytes__"])
    return obj


def encode_record(record: Any) -> str:
    """A record as JSON; bytes values become ``{"__bytes__": base64}``."""
    return json.dumps(record, default=_json_default)


def decode_record(text: str) -> Any:
    return json.loads(text, object_hook=_json_hook)


def pack_int64(values: Any) -> bytes:
    """An integer array as little-endian int64 bytes."""
    return np.ascontiguousarray(values, dtype="<i8").tobytes()


def unpack_int64(data: bytes) -> np.ndarray:
    if len(data) % 8:
        raise MixteraError(f"malformed int64 array: {len(data)} bytes is not a multiple of 8")
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def _error_classes() -> dict[str, type[MixteraError]]:
    """Every Mixtera error class by name (the server names the class in trailing metadata)."""
    from . import catalog, errors, job, mixture, query, runtime  # noqa: F401 - register subclasses

    out: dict[str, type[MixteraError]] = {}
    todo: list[type[MixteraError]] = [MixteraError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return out


def to_exception(err: grpc.RpcError) -> Exception:
    """The exception a failed call stands for: the server's Mixtera error class where it named one."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    name = None
    if hasattr(err, "trailing_metadata"):
        for k, v in err.trailing_metadata() or ():
            if k == ERROR_METADATA:
                name = v if isinstance(v, str) else v.decode()
    cls = _error_classes().get(name) if name else None
    if cls is not None and not issubclass(cls, RemoteError):
        exc = cls.__new__(cls)  # the server's message, without re-running the class's formatting
        Exception.__init__(exc, details)
        exc.grpc_code = code  # type: ignore[attr-defined]
        return exc
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(details, code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(details, code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(details, code)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnavailableError(f"{details} (gRPC {code.name if code else '?'})", code)
    return RemoteError(f"{details} (gRPC {code.name if code else '?'})", code)


_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class _Caller:
    """Unary and server-streaming calls with auth metadata, deadlines and retries."""

    def __init__(
        self,
        stub: pb_grpc.MixteraStub,
        metadata: tuple[tuple[str, str], ...],
        retries: int,
        timeout: float | None,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.retries = max(0, int(retries))
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff

    def _retry(self, err: grpc.RpcError, attempt: int, idempotent: bool) -> bool:
        code = err.code() if hasattr(err, "code") else None
        transient = code in _TRANSIENT if idempotent else code == grpc.StatusCode.UNAVAILABLE
        if not transient or attempt >= self.retries:
            return False
        time.sleep(min(self.max_backoff, self.backoff * 2**attempt))
        return True

    def unary(self, name: str, request: Any, *, idempotent: bool = True) -> Any:
        method = getattr(self.stub, name)
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                if self._retry(err, attempt, idempotent):
                    attempt += 1
                    continue
                raise to_exception(err) from None

    def stream(self, name: str, request: Any) -> Iterator[Any]:
        """A server stream, retried only while no message has arrived (the call was not accepted)."""
        method = getattr(self.stub, name)
        attempt = 0
        while True:
            received = False
            try:
                for message in method(request, metadata=self.metadata):
                    received = True
                    yield message
                return
            except grpc.RpcError as err:
                if not received and self._retry(err, attempt, idempotent=False):
                    attempt += 1
                    continue
                raise to_exception(err) from None


# ---------------------------------------------------------------------- stream sources


class RemoteChunkSource:
    """A :class:`~mixtera_core.streaming.ChunkSource` that asks the server (``GetChunk``).

    Like :class:`~mixtera_core.runtime.RuntimeChunkSource`, each request carries the planner
    state before the previous chunk, so the server can regenerate any chunk it no longer
    caches (or has forgotten in a restart) by skipping forward from there.
    """

    def __init__(self, caller: _Caller, job_id: str, timeout: float | None = None) -> None:
        self.caller = caller
        self.job_id = job_id
        self.timeout = timeout
        self._last: dict[str, Any] | None = None

    def chunk(self, index: int, snapshot: dict[str, Any] | None) -> tuple[Chunk | None, dict[str, Any]]:
        hint = snapshot if snapshot is not None else self._last
        request = pb.ChunkRequest(
            job_id=self.job_id, index=index, snapshot_json="" if hint is None else json.dumps(hint)
        )
        deadline = time.monotonic() + (DEFAULT_MIXTURE_TIMEOUT if self.timeout is None else self.timeout)
        pause = 0.005
        while True:
            reply = self.caller.unary("GetChunk", request)
            if not reply.pending:
                break
            # the stream awaited the mixture already; the server had not applied it yet
            if time.monotonic() > deadline:
                raise MixtureUnknownError(
                    f"job {self.job_id!r}: the server has not decided the mixture of chunk {index}; "
                    f"send feedback (or report_step) with the consumed position from rank 0"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        before = json.loads(reply.before_json)
        self._last = before
        if reply.ended:
            return None, before
        chunk = Chunk(
            int(reply.index),
            unpack_int64(reply.comps),
            unpack_int64(reply.file_ids),
            unpack_int64(reply.starts),
            unpack_int64(reply.stops),
        )
        if reply.spans:
            spans = np.frombuffer(reply.spans, dtype="<f8").reshape(-1, 2)
            if len(spans) != len(chunk.comps):
                raise RemoteError(
                    f"chunk {index}: the server sent {len(spans)} spans for {len(chunk.comps)} pieces"
                )
            chunk.spans = spans.astype(np.float64)
        return chunk, before


@dataclass(frozen=True)
class Connection:
    """How to reach a server: picklable (no channel), so a job's copies in DataLoader workers
    and other processes can open their own connection (gRPC channels do not survive fork)."""

    target: str
    token: str | None = None
    tls_ca: bytes | None = None
    tls_server_name: str | None = None
    retries: int = 10
    timeout: float | None = 60.0

    def open(self) -> tuple[grpc.Channel, _Caller]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
            # come back quickly after a server restart
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if self.tls_ca is not None:
            if self.tls_server_name:
                options.append(("grpc.ssl_target_name_override", self.tls_server_name))
            channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(self.tls_ca), options)
        else:
            channel = grpc.insecure_channel(self.target, options)
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return channel, _Caller(pb_grpc.MixteraStub(channel), metadata, self.retries, self.timeout)


class RemoteFollower:
    """Keeps a job's mixture log in step with the server's (``GetMixture``): what lets a job
    fetched from a server plan its chunks anywhere (a torch dataset, a DataLoader worker)
    exactly as the server does. Opens its own channel in each process that uses it."""

    def __init__(self, connection: Connection, job_id: str) -> None:
        self.connection = connection
        self.job_id = job_id
        self._pid: int | None = None
        self._caller: _Caller | None = None
        self._channel: grpc.Channel | None = None
        self._generation: int | None = None
        self._lock = ProcessLocalLock()

    def __getstate__(self) -> dict[str, Any]:
        return {"connection": self.connection, "job_id": self.job_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["connection"], state["job_id"])  # type: ignore[misc]

    def _call(self) -> _Caller:
        if self._caller is None or self._pid != os.getpid():  # a forked child must not use the parent's
            self._channel, self._caller = self.connection.open()
            self._pid = os.getpid()
        return self._caller

    def refresh(self, job: Job) -> None:
        with self._lock.get():  # several streams of one process may refresh the same job
            self._refresh(job)

    def _refresh(self, job: Job) -> None:
        while True:
            # the last entry may have been replaced since; a new generation (the job was restored
            # or compacted on the server) replaces everything, seal included
            since = max(len(job.log.entries) - 1, 0) if job.generation == self._generation else 0
            reply = self._call().unary("GetMixture", pb.MixtureRequest(job_id=self.job_id, since=since))
            data = json.loads(reply.json)
            generation = int(data.get("generation", 0))
            fresh = generation != self._generation or since == 0
            if generation != self._generation and since > 0:
                self._generation = generation
                continue  # ask again from the first entry
            job.log.truncate(int(data["since"]))
            for chunk, weights in data["entries"]:
                job.log.add(int(chunk), np.asarray(weights, dtype=np.float64))
            sealed = int(data["sealed"])
            job.log.sealed = sealed if fresh else max(job.log.sealed, sealed)
            self._generation = job.generation = generation
            if not data.get("more"):
                return


class RemoteSampleSource:
    """A :class:`~mixtera_core.streaming.SampleSource` reading through the server (``ReadSamples``)."""

    def __init__(self, caller: _Caller, job_id: str, batch: int = READ_BATCH) -> None:
        self.caller = caller
        self.job_id = job_id
        self.batch = max(1, batch)

    def read(self, file_id: int, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, Any]]:
        for part in _batches(ranges, self.batch):
            reply = self.caller.unary(
                "ReadSamples",
                pb.ReadRequest(
                    job_id=self.job_id,
                    file_id=file_id,
                    starts=[s for s, _ in part],
                    stops=[e for _, e in part],
                ),
            )
            for i, text in zip(reply.sample_index, reply.records_json, strict=True):
                yield int(i), decode_record(text)


def _batches(ranges: Sequence[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    """Ranges cut into groups of at most ``size`` samples each."""
    out: list[tuple[int, int]] = []
    n = 0
    for s, e in ranges:
        s, e = int(s), int(e)
        while s < e:
            take = min(e - s, size - n)
            out.append((s, s + take))
            n += take
            s += take
            if n == size:
                yield out
                out, n = [], 0
    if out:
        yield out


class RemoteJobStream(JobStream):
    """A :class:`JobStream` whose end reports the delivered counts to the server."""

    _on_end: Callable[[RemoteJobStream], None] | None = None
    _reported: np.ndarray

    def __iter__(self) -> Iterator[Any]:
        return self._watch(super().__iter__())

    def _watch(self, inner: Iterator[Any]) -> Iterator[Any]:
        yield from inner
        if self._on_end is not None:
            self._on_end(self)


# ---------------------------------------------------------------------- the client


class RemoteMixteraClient(MixteraClient):
    """A client of ``mixtera-server``; see the module documentation."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7878,
        token: str | None = None,
        *,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        tls_server_name: str | None = None,
        ship_samples: bool = False,
        retries: int = 10,
        timeout: float | None = 60.0,
        plugins: PluginManager | None = None,
    ) -> None:
        self.host, self.port = host, int(port)
        self.ship_samples = ship_samples
        self.plugins = plugins or get_plugin_manager()
        target = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        pem: bytes | None = None
        if tls_ca is not None:
            if isinstance(tls_ca, bytes):
                pem = tls_ca
            else:
                with open(os.fspath(tls_ca), "rb") as fh:
                    pem = fh.read()
        self.connection = Connection(target, token, pem, tls_server_name, retries, timeout)
        self._channel, self._call = self.connection.open()
        self._jobs: dict[str, Job] = {}
        self._streams: dict[str, list[RemoteJobStream]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ catalog

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
        _local_executor_only(executor, "register_dataset")
        if storage_options:
            # a client must not choose where the server connects (endpoints) or with whose keys
            raise ValueError(
                "storage_options cannot be sent to a server: the server reads object storage with its own "
                "configuration (for S3 the AWS_* environment variables, AWS_ENDPOINT_URL included, or a "
                "profile, in mixtera-server's environment)"
            )
        items = [location] if isinstance(location, str | os.PathLike) else list(location)
        request = pb.RegisterRequest(
            name=name,
            locations=[os.fspath(x) for x in items],
            format=format,
            parser=parser,
            parser_options_json=json.dumps(parser_options or {}),
            on_error=on_error,
            replace=replace,
            workers=workers or 0,
        )
        report_json = ""
        for message in self._call.stream("RegisterDataset", request):
            if message.report_json:
                report_json = message.report_json
            elif progress is not None and message.files_done > 0:
                progress(message.path, int(message.files_done), int(message.files_total))
        if not report_json:
            raise RemoteError(f"the server ended the registration of {name!r} without a report")
        report = RegistrationReport(**json.loads(report_json))
        warn_registration(report)
        return report

    def list_datasets(self) -> list[DatasetInfo]:
        reply = self._call.unary("ListDatasets", pb.Empty())
        return [DatasetInfo(**d) for d in json.loads(reply.json)]

    def remove_dataset(self, name: str) -> None:
        self._call.unary("RemoveDataset", pb.Name(name=name), idempotent=False)

    def properties(self) -> dict[str, dict[Any, int]]:
        reply = self._call.unary("Properties", pb.Empty())
        return {p: {v: n for v, n in pairs} for p, pairs in json.loads(reply.json).items()}

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
        """Runs on the server (``Tokenize``): the tokenizer source is a path as the server sees
        it (under its allowed roots) or an encoding name; the index goes to the server's DB_DIR."""
        _local_executor_only(executor, "tokenize")
        if isinstance(tokenizer, TokenizerSpec):
            name, source, options = tokenizer.name, tokenizer.source, {**tokenizer.options}
        else:
            name, source, options = str(tokenizer[0]), os.fspath(tokenizer[1]), {}
        options.update(tokenizer_options or {})
        request = pb.TokenizeRequest(
            datasets=[datasets] if isinstance(datasets, str) else list(datasets),
            tokenizer=name,
            tokenizer_source=str(source),
            tokenizer_options_json=json.dumps(options),
            add_bos=add_bos,
            add_eos=add_eos,
            text_field=text_field,
            workers=workers or 0,
        )
        report_json = ""
        for message in self._call.stream("Tokenize", request):
            if message.report_json:
                report_json = message.report_json
            elif progress is not None:
                progress(
                    TokenizeProgress(
                        message.path,
                        int(message.files_done),
                        int(message.files_total),
                        int(message.samples_done),
                        int(message.samples_total),
                        int(message.tokens),
                    )
                )
        if not report_json:
            raise RemoteError("the server ended the tokenize call without a report")
        return TokenizeReport(**json.loads(report_json))

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
        request = {
            "query": query.to_json(),
            "mixture": None if mixture is None else as_mixture(mixture).to_json(),
            "options": {
                "properties": None if properties is None else list(properties),
                "samples": samples,
                "tokens": tokens,
                "per_step": per_step,
                "tokenizer": None if tokenizer is None else [tokenizer[0], str(tokenizer[1])],
                "tokenizer_options": tokenizer_options,
                "token_estimate_samples": token_estimate_samples,
            },
        }
        reply = self._call.unary("Explain", pb.Json(json=json.dumps(request)))
        data = json.loads(reply.json)
        return Explanation(
            properties=data["properties"],
            components=[ComponentInfo(**c) for c in data["components"]],
            warnings=data["warnings"],
            unit=data["unit"],
            token_counts=data.get("token_counts"),
        )

    def peek(
        self, query: Query, n: int = 3, properties: Sequence[str] | None = None
    ) -> list[tuple[str, Any]]:
        """Served through ``Explain`` with a ``peek`` request (the server reads the samples)."""
        request = {
            "query": query.to_json(),
            "peek": int(n),
            "options": {"properties": None if properties is None else list(properties)},
        }
        reply = self._call.unary("Explain", pb.Json(json=json.dumps(request)))
        return [(key, decode_record(rec)) for key, rec in json.loads(reply.json)["peek"]]

    # ------------------------------------------------------------------ jobs

    def execute(self, query: Query, mixture: Mixture | dict[str, float] | None = None, **options: Any) -> str:
        spec = make_spec(query, mixture, **options)  # checked here first: errors name the caller's call
        job_id = ""
        done = False
        for message in self._call.stream("Execute", pb.ExecuteRequest(spec_json=json.dumps(spec.to_json()))):
            job_id = message.job_id or job_id
            done = done or message.done
        if not done:
            raise RemoteError(f"the server ended building job {spec.job_id!r} before it was ready")
        return job_id or spec.job_id

    def job(self, job_id: str) -> Job:
        """The job as the server built it (fetched once per client)."""
        with self._lock:
            cached = self._jobs.get(job_id)
        if cached is not None:
            return cached
        reply = self._call.unary("GetJob", pb.JobRequest(job_id=job_id))
        job = Job.from_parts(reply.job_json, reply.index, reply.files)
        job.follower = RemoteFollower(self.connection, job_id)  # its log follows the server's
        with self._lock:
            return self._jobs.setdefault(job_id, job)

    def job_status(self, job_id: str) -> dict[str, Any]:
        """``{"state": "building" | "ready" | "failed", ...}`` as the server sees the job."""
        result: dict[str, Any] = json.loads(self._call.unary("JobStatus", pb.JobRequest(job_id=job_id)).json)
        return result

    def list_jobs(self) -> list[JobInfo]:
        reply = self._call.unary("ListJobs", pb.Empty())
        return [JobInfo.from_json(d) for d in json.loads(reply.json)]

    def delete_job(self, job_id: str) -> None:
        self._call.unary("DeleteJob", pb.JobRequest(job_id=job_id), idempotent=False)
        with self._lock:
            self._jobs.pop(job_id, None)
            self._streams.pop(job_id, None)

    def stream(
        self, job_id: str, dp_group: int = 0, node: int = 0, worker: int = 0, **options: Any
    ) -> JobStream:
        state = options.pop("state", None)
        if state is not None:
            options.setdefault("dp_groups", state.get("dp_groups"))
            options.setdefault("num_workers", state.get("num_workers"))
        job = self.job(job_id)
        options.setdefault(
            "chunk_source", RemoteChunkSource(self._call, job_id, options.get("mixture_timeout"))
        )
        if self.ship_samples:
            options.setdefault("readers", RemoteSampleSource(self._call, job_id))
        s = RemoteJobStream(job, dp_group, node, worker, plugins=self.plugins, **options)
        if state is not None:
            s.load_state_dict(state)
        s._reported = np.zeros_like(s.delivered)
        s._on_end = self._stream_ended
        with self._lock:
            self._streams.setdefault(job_id, []).append(s)
        return s

    def _stream_ended(self, stream: RemoteJobStream) -> None:
        self._flush(stream.job.spec.job_id, [stream])
        with self._lock:
            streams = self._streams.get(stream.job.spec.job_id, [])
            if stream in streams:
                streams.remove(stream)

    def _flush(self, job_id: str, streams: list[RemoteJobStream] | None = None) -> None:
        """Send the delivered counts of this client's streams since their last report."""
        with self._lock:
            todo = list(self._streams.get(job_id, [])) if streams is None else streams
            if not todo:
                return
            total = np.zeros_like(todo[0].delivered)
            for s in todo:
                now = s.delivered.copy()
                total += now - s._reported
                s._reported = now
        if total.any():
            self._call.unary(
                "ReportDelivered",
                pb.DeliveredRequest(job_id=job_id, counts=total.tolist()),
                idempotent=False,
            )

    def checkpoint(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._call.unary("Checkpoint", pb.JobRequest(job_id=job_id)).json)
        return result

    def restore(self, job_id: str, state: dict[str, Any]) -> None:
        self._call.unary("Restore", pb.RestoreRequest(job_id=job_id, state_json=json.dumps(state)))
        with self._lock:
            self._jobs.pop(job_id, None)

    def feedback(
        self,
        job_id: str,
        step: int,
        losses: Sequence[float],
        counts: Sequence[float],
        position: int | None = None,
    ) -> None:
        """Acknowledged by the server at once; applied there in the order sent."""
        request = pb.FeedbackRequest(
            job_id=job_id,
            step=step,
            losses=[float(x) for x in losses],
            counts=[float(x) for x in counts],
            position=None if position is None else int(position),
        )
        self._call.unary("Feedback", request, idempotent=False)

    def report_step(self, job_id: str, step: int, position: int | None = None) -> None:
        request = pb.StepRequest(
            job_id=job_id, step=step, position=None if position is None else int(position)
        )
        self._call.unary("ReportStep", request, idempotent=False)

    def report(self, job_id: str) -> JobReport:
        self._flush(job_id)
        data = json.loads(self._call.unary("Report", pb.JobRequest(job_id=job_id)).json)
        return JobReport(**data)

    def close(self) -> None:
        self._call.retries = min(self._call.retries, 1)  # do not linger over a server that is gone
        try:
            for job_id in list(self._streams):
                self._flush(job_id)
        except MixteraError:
            pass  # the server is gone: the counts of this client are lost, the streams are not
        finally:
            self._streams.clear()
            self._channel.close()


def explanation_to_json(explanation: Explanation) -> dict[str, Any]:
    return explanation.to_json()
