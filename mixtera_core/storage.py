"""Where data files live: local paths, or URLs of any fsspec filesystem (``s3://``, ``gs://``, ...).

Every format plugin opens its files through :func:`open_input`. A local path gives a plain
file. A URL gives a :class:`RemoteFile`: a seekable binary file whose reads are served from
blocks of :data:`IO.block_size` bytes, fetched with range requests (never the whole object)
by a shared thread pool:

* **readahead**: a reader that moves through a file block after block gets the next
  :data:`IO.readahead` blocks fetched while it works on this one;
* **hints**: a format that knows which byte spans a read will touch (the frames of a jsonl
  range, the column chunks of parquet row groups, the members of a tar) passes them to
  :meth:`RemoteFile.will_need`, and their blocks are fetched at once, concurrently;
* **one block cache per process** (:data:`IO.memory_bytes`, least recently used first out),
  shared by every reader of a file, so the threads of a stream that read neighbouring chunks
  fetch a block once;
* an optional **disk cache** (off by default; :func:`configure_io` ``cache_dir``/
  ``cache_bytes``, or ``MIXTERA_CACHE_DIR``/``MIXTERA_CACHE_BYTES``) keeps fetched blocks
  for later epochs and processes, bounded in bytes.

**Change detection.** A remote file's fingerprint is its size and the version the store
gives it (S3's ETag; a generation or checksum elsewhere; its modification time as a last
resort). The first open in a process compares them with registration's; for S3 every range
request then carries ``If-Match`` with that ETag, so an object rewritten while a job runs is
refused (:class:`~mixtera_core.errors.FileChangedError`) instead of read half old, half new.

**Credentials and endpoints** come from each filesystem's standard configuration (for S3 the
AWS environment variables, ``AWS_ENDPOINT_URL`` included, and profiles), or from options
given for a URL prefix (:func:`configure`, or ``storage_options=`` at registration). Options
whose name says they are secret (keys, secrets, tokens, passwords, credentials) are kept in
this process only; the rest (an endpoint, a region, ``anon``) is stored with the dataset so
that every process that reads it, DataLoader workers and DDP ranks included, connects the
same way.

**Errors** name the URL and say what to do (:class:`StorageError`): a missing bucket or
object, access denied, an unreachable endpoint, a filesystem whose package is not
installed. Transient failures are retried by the filesystem library (s3fs retries with
backoff) and once more here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import DatasetLocationError, FileChangedError, MixteraError

#: Installed-package hints for the common protocols (fsspec names the rest itself).
_PACKAGES = {"s3": "s3fs (pip install 'mixtera[s3]')", "gs": "gcsfs (pip install 'mixtera[gcs]')",
             "gcs": "gcsfs (pip install 'mixtera[gcs]')", "az": "adlfs (pip install 'mixtera[azure]')",
             "abfs": "adlfs (pip install 'mixtera[azure]')", "hf": "huggingface_hub (pip install huggingface_hub)"}  # fmt: skip
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: Option names that are never written to the catalog or a job (matched case-insensitively).
_SECRET = re.compile(r"key|secret|token|passw|credential|sas|signature|auth", re.IGNORECASE)
_GLOB_CHARS = set("*?[")


class StorageError(MixteraError, OSError):
    """A remote location cannot be read: the message names the URL and says what to do."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        MixteraError.__init__(self, f"{url}: {message}")


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The bucket or the object does not exist."""


# --------------------------------------------------------------------------- URLs and options


def protocol(path: str) -> str | None:
    """The URL scheme of ``path`` (``"s3"``), or None for a local path (``file://`` included)."""
    m = _URL.match(path)
    if m is None or m.group(1).lower() in ("file", "local"):
        return None
    return m.group(1).lower()


def is_remote(path: str) -> bool:
    return protocol(path) is not None


def local_path(path: str) -> str:
    """A local path or ``file://`` URL as an absolute local path."""
    if path.startswith("file://"):
        path = path[len("file://") :]
    return os.path.abspath(os.path.expanduser(path))


_OPTIONS: dict[str, dict[str, Any]] = {}
_OPTIONS_LOCK = threading.Lock()


def configure(prefix: str, **options: Any) -> None:
    """Filesystem options (fsspec's ``storage_options``) for every URL under ``prefix``.

    ``configure("s3://corpus", endpoint_url="http://127.0.0.1:9000", key=..., secret=...)``.
    The longest matching prefix wins; options given here are this process's only (forked
    DataLoader workers inherit them, spawned ones and other hosts do not: give those secrets
    through the filesystem's own configuration, e.g. the AWS environment variables)."""
    if protocol(prefix) is None:
        raise ValueError(f"storage options are for URLs such as 's3://bucket/prefix', got {prefix!r}")
    with _OPTIONS_LOCK:
        _OPTIONS[prefix.rstrip("/")] = dict(options)


_STORED: dict[str, dict[str, Any]] = {}


def use_stored(prefix: str, options: Mapping[str, Any]) -> None:
    """Options stored with a dataset (public ones: an endpoint, a region) for ``prefix``; what
    :func:`configure` sets in this process takes precedence, key by key."""
    with _OPTIONS_LOCK:
        _STORED[prefix.rstrip("/")] = dict(options)


def stored_options() -> dict[str, dict[str, Any]]:
    """Every prefix's stored options (what a job carries to other processes)."""
    with _OPTIONS_LOCK:
        return {p: dict(o) for p, o in _STORED.items()}


def _longest(table: Mapping[str, dict[str, Any]], url: str) -> dict[str, Any]:
    best = None
    for prefix in table:
        if (url == prefix or url.startswith(prefix + "/")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return dict(table[best]) if best is not None else {}


def options_for(url: str) -> dict[str, Any]:
    """The filesystem options for ``url``: the stored ones of its longest prefix, overridden by
    this process's :func:`configure` of its longest prefix."""
    with _OPTIONS_LOCK:
        return {**_longest(_STORED, url), **_longest(_OPTIONS, url)}


def bucket(url: str) -> str:
    """``proto://bucket`` of a URL: the prefix storage options are kept for."""
    m = _URL.match(url)
    if m is None:
        raise ValueError(f"not a URL: {url!r}")
    return url[: m.end()] + url[m.end() :].split("/", 1)[0]


def public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the secrets (at any depth): what may be stored in the catalog."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if _SECRET.search(str(name)):
            continue
        out[name] = public_options(value) if isinstance(value, Mapping) else value
    return out


def _filesystem(url: str) -> tuple[Any, str]:
    proto = protocol(url) or "file"
    try:
        import fsspec
    except ImportError:
        raise StorageError(
            url, "reading URLs needs fsspec and the filesystem's package: " + _hint(proto)
        ) from None
    options = options_for(url)
    key = (proto, json.dumps(options, sort_keys=True, default=repr))
    with _STATE_LOCK:
        fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            # fsspec keeps an instance per thread; one per process is enough (its calls are
            # thread-safe) and spares every new thread the client set-up (a second or so)
            fs = fsspec.filesystem(proto, **options)
        except (ImportError, ValueError) as e:
            raise StorageError(url, f"no filesystem for {proto}:// ({e}); install {_hint(proto)}") from None
        with _STATE_LOCK:
            fs = _FILESYSTEMS.setdefault(key, fs)
    return fs, fs._strip_protocol(url)


def _hint(proto: str) -> str:
    return _PACKAGES.get(proto, f"the fsspec implementation of {proto}://")


# --------------------------------------------------------------------------- errors


def _is_not_found(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError) or "NoSuchKey" in str(e) or "404" in str(e)


def translate(e: BaseException, url: str, action: str = "read") -> MixteraError:
    """One clear error for a failed remote call (``action``: what was being done)."""
    if isinstance(e, MixteraError):
        return e
    text = f"{type(e).__name__}: {e}"
    name = type(e).__name__
    if name == "FileExpired":
        return FileChangedError(url, "the object was replaced while it was being read (its ETag changed)")
    if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "403" in text:
        return StorageError(
            url,
            f"access denied ({text}); check the credentials (for S3 the AWS_* environment variables or "
            f"profile, or storage_options=) and the bucket policy",
        )
    if "NoSuchBucket" in text or (isinstance(e, FileNotFoundError) and _bucket_missing(url, e)):
        return ObjectNotFoundError(url, f"the bucket does not exist ({text}); check the URL and the endpoint")
    if _is_not_found(e):
        return ObjectNotFoundError(url, f"the object does not exist ({text}); check the URL")
    if any(
        s in text
        for s in ("Could not connect", "Connect", "connect", "Timeout", "timed out", "Name or service")
    ):
        return StorageError(
            url,
            f"cannot reach the storage endpoint ({text}); check the endpoint (AWS_ENDPOINT_URL or "
            f"storage_options endpoint_url) and the network",
        )
    return StorageError(url, f"cannot {action} ({text})")


def _bucket_missing(url: str, e: BaseException) -> bool:
    return "bucket" in str(e).lower()


def _retrying(fn: Callable[[], Any], url: str, action: str, attempts: int = 3) -> Any:
    """``fn()``, retried on transient errors (connection resets, throttling) with backoff; any
    other failure becomes one clear :class:`StorageError`."""
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError) as e:
            raise translate(e, url, action) from e
        except MixteraError:
            raise
        except Exception as e:
            err = translate(e, url, action)
            if isinstance(err, FileChangedError) or i == attempts - 1 or "does not exist" in str(err):
                raise err from e
            time.sleep(0.2 * (2**i))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- files and globs


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about an object: its size and version (ETag, generation, ...)."""

    size: int
    version: str | None
    mtime_ns: int | None


_VERSION_KEYS = ("ETag", "etag", "generation", "version_id", "VersionId", "md5Hash", "md5", "checksum")
_MTIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "modified", "created")


def object_info(url: str) -> ObjectInfo:
    """Size and version of a remote object (one metadata request)."""
    fs, path = _filesystem(url)
    fs.invalidate_cache(path)  # a listing cached by the filesystem may be older than the object
    info = _retrying(lambda: fs.info(path), url, "look it up")
    if info.get("type") == "directory":
        raise StorageError(url, "this is a directory, not a file")
    found = _object_info(info)
    with _STATE_LOCK:
        _KNOWN[url] = found
    return found


def _object_info(info: Mapping[str, Any]) -> ObjectInfo:
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) not in (None, "")), None)
    mtime_ns = None
    for k in _MTIME_KEYS:
        value = info.get(k)
        if value is None:
            continue
        with contextlib.suppress(TypeError, ValueError, AttributeError, OverflowError):
            mtime_ns = (
                int(value.timestamp() * 1e9) if hasattr(value, "timestamp") else int(float(value) * 1e9)
            )
            break
    if version is None and mtime_ns is not None:
        version = f"mtime:{mtime_ns}"
    return ObjectInfo(int(info.get("size") or 0), version, mtime_ns)


def resolve_remote(
    raw: str, matches: Callable[[str], bool], format_name: str, suffixes: Sequence[str]
) -> list[str]:
    """The object URLs of one remote location: a file, a "directory" (every object under the
    prefix that the format claims, hidden ones left out), or a glob."""
    fs, path = _filesystem(raw)
    proto = protocol(raw) or ""
    unstrip = fs.unstrip_protocol if hasattr(fs, "unstrip_protocol") else (lambda p: f"{proto}://{p}")

    def keep(p: str) -> bool:
        parts = p.rstrip("/").split("/")
        return not any(part.startswith(".") for part in parts[1:]) and matches(p)

    if _GLOB_CHARS & set(raw):
        hits = _retrying(lambda: fs.glob(path, detail=True), raw, "list it")
        files = [unstrip(p) for p, d in hits.items() if d.get("type") != "directory" and keep(p)]
        for d in (p for p, info in hits.items() if info.get("type") == "directory"):
            found: list[str] = _retrying(functools.partial(fs.find, d), raw, "list it")
            files.extend(unstrip(p) for p in found if keep(p))
        if not files:
            root = path.split("/", 1)[0]
            if not _retrying(lambda: fs.exists(root), raw, "look it up"):
                raise ObjectNotFoundError(
                    raw,
                    f"the bucket {root!r} does not exist (or is not visible with these credentials); "
                    f"check the URL and the endpoint",
                )
            raise DatasetLocationError(
                f"glob {raw!r} matches no {format_name} object (suffixes {', '.join(suffixes)}); check the pattern"
            )
        return files
    info = _retrying(lambda: fs.info(path), raw, "look it up")
    if info.get("type") != "directory":
        return [unstrip(path)]
    files = [unstrip(p) for p in _retrying(lambda: fs.find(path), raw, "list it") if keep(p)]
    if not files:
        raise DatasetLocationError(
            f"{raw} holds no {format_name} object (suffixes {', '.join(suffixes)}); pick another format or location"
        )
    return files


# --------------------------------------------------------------------------- reading


@dataclass
class IOSettings:
    """How remote files are read (change with :func:`configure_io`)."""

    #: bytes per range request
    block_size: int = 2 << 20
    #: blocks fetched ahead of a reader that moves forward block after block
    readahead: int = 8
    #: fetched blocks kept in memory per process (all files together)
    memory_bytes: int = 256 << 20
    #: concurrent range requests per process
    threads: int = 16
    #: directory of the disk cache, or None (off)
    cache_dir: str | None = os.environ.get("MIXTERA_CACHE_DIR") or None
    #: bytes the disk cache may hold
    cache_bytes: int = int(os.environ.get("MIXTERA_CACHE_BYTES", str(50 << 30)))


IO = IOSettings()


class Stats:
    """What this process fetched from object storage: range ``requests`` and their ``bytes``,
    blocks served by the disk cache (``disk_hits``) and objects opened (``opens``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "bytes": 0, "disk_hits": 0, "opens": 0}

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self.counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


STATS = Stats()


def configure_io(**settings: Any) -> None:
    """Change :data:`IO` (``block_size``, ``readahead``, ``memory_bytes``, ``threads``,
    ``cache_dir``, ``cache_bytes``) for this process; open files keep the old block size."""
    for name, value in settings.items():
        if not hasattr(IO, name):
            raise ValueError(f"unknown storage setting {name!r}; one of {sorted(vars(IO))}")
        setattr(IO, name, value)
    global _POOL
    with _STATE_LOCK:
        if "threads" in settings and _POOL is not None:
            _POOL.shutdown(wait=False)
            _POOL = None


_STATE_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
#: one filesystem object per (protocol, options) in this process
_FILESYSTEMS: dict[tuple[str, str], Any] = {}
#: striped locks: one thread at a time opens a given object
_OPENING = [threading.Lock() for _ in range(64)]
_PREPARE: ThreadPoolExecutor | None = None
_HANDLES: OrderedDict[tuple[str, str | None, int], _Handle] = OrderedDict()
#: the version of each object this process last saw (registration's, or the store's answer)
_KNOWN: dict[str, ObjectInfo] = {}
_MAX_HANDLES = 1024


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _STATE_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, IO.threads), thread_name_prefix="mixtera-storage")
        return _POOL


def reset() -> None:
    """Forget every open remote file and cached block of this process (the disk cache and the
    filesystem clients stay): what a new process starts with, short of connecting. For tests
    and benchmarks."""
    global _POOL, _PREPARE, _BLOCKS_BYTES
    _POOL = _PREPARE = None
    _HANDLES.clear()
    _KNOWN.clear()
    _BLOCKS.clear()
    _BLOCKS_BYTES = 0


def _prepare_pool() -> ThreadPoolExecutor:
    """Threads that open files and work out their spans for :func:`prefetch`: apart from the
    fetching pool, because they wait for fetches (a parquet footer) and must never hold all of
    its threads waiting for work queued behind them."""
    global _PREPARE
    with _STATE_LOCK:
        if _PREPARE is None:
            _PREPARE = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mixtera-storage-prepare")
        return _PREPARE


def _after_fork() -> None:
    """A forked child (a DataLoader worker) has none of the parent's threads or connections."""
    global _OPENING
    _FILESYSTEMS.clear()
    _OPENING = [threading.Lock() for _ in range(64)]
    reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Handle:
    """One remote object in this process: its size, version and a thread-safe range fetch."""

    def __init__(self, url: str, expected: ObjectInfo | None) -> None:
        self.url = url
        fs, path = _filesystem(url)
        self._fs, self._path = fs, path
        self.block_size = int(IO.block_size)
        STATS.add(opens=1)
        # The library's own file object: its _fetch_range is the range request each fsspec
        # filesystem implements (stateless, safe from several threads), and s3fs's carries
        # If-Match with the ETag it saw at open.
        with contextlib.suppress(Exception):
            fs.invalidate_cache(path)  # a cached listing may be older than the object
        raw = _retrying(
            lambda: fs.open(path, "rb", block_size=self.block_size, cache_type="none"), url, "open it"
        )
        details = getattr(raw, "details", None) or _retrying(lambda: fs.info(path), url, "look it up")
        self.info = _object_info(details)
        self._raw = raw
        if expected is not None:
            if self.info.size != expected.size:
                raise FileChangedError(
                    url, f"its size is {self.info.size} bytes, registration saw {expected.size}"
                )
            if expected.version is not None and self.info.version != expected.version:
                raise FileChangedError(
                    url, f"its version is {self.info.version}, registration saw {expected.version}"
                )

    @property
    def size(self) -> int:
        return self.info.size

    def fetch(self, start: int, end: int) -> bytes:
        STATS.add(requests=1, bytes=end - start)
        fetch_range = getattr(self._raw, "_fetch_range", None)
        if fetch_range is not None:
            data = _retrying(lambda: fetch_range(start, end), self.url, "read it")
        else:
            data = _retrying(lambda: self._fs.cat_file(self._path, start=start, end=end), self.url, "read it")
        if len(data) != end - start:
            raise FileChangedError(
                self.url, f"a read of bytes {start}..{end} returned {len(data)} bytes; the object changed"
            )
        return bytes(data)


def _handle(url: str, expected: ObjectInfo | None = None) -> _Handle:
    """The process's handle of ``url`` as ``expected`` (default: as this process last saw it,
    else as the store says now). Handles are kept by (url, version, size): a changed object
    gets a new one, and its old blocks are never mixed with new ones."""
    # one thread at a time opens an object: the threads of a stream open a chunk's files at once
    with _OPENING[zlib.crc32(url.encode()) % len(_OPENING)]:
        if expected is None:
            with _STATE_LOCK:
                expected = _KNOWN.get(url)
        if expected is not None:
            key = (url, expected.version, expected.size)
            with _STATE_LOCK:
                h = _HANDLES.get(key)
                if h is not None:
                    _HANDLES.move_to_end(key)
                    return h
        h = _Handle(url, expected)
        _remember(h)
    return h


def _remember(h: _Handle) -> None:
    url = h.url
    key = (url, h.info.version, h.info.size)
    with _STATE_LOCK:
        _HANDLES[key] = h
        _KNOWN[url] = h.info
        while len(_HANDLES) > _MAX_HANDLES:
            _HANDLES.popitem(last=False)
        while len(_KNOWN) > 4 * _MAX_HANDLES:
            _KNOWN.pop(next(iter(_KNOWN)))


def verify(url: str, expected: ObjectInfo) -> None:
    """Raise :class:`FileChangedError` when ``url`` is not the object registration saw (one
    metadata request per process and object; later reads are checked by the store)."""
    _handle(url, expected)


# Blocks of every remote file: (url, version, block size, block number) -> Future[bytes]
_BLOCKS: OrderedDict[tuple[str, str | None, int, int], Future[bytes]] = OrderedDict()
_BLOCKS_BYTES = 0


def _block(h: _Handle, k: int) -> Future[bytes]:
    """The future of block ``k`` of ``h``, fetched (or scheduled) once per process."""
    global _BLOCKS_BYTES
    key = (h.url, h.info.version, h.block_size, k)
    with _STATE_LOCK:
        fut = _BLOCKS.get(key)
        if fut is not None:
            _BLOCKS.move_to_end(key)
            return fut
        fut = Future()
        _BLOCKS[key] = fut
        _BLOCKS_BYTES += h.block_size
        while IO.memory_bytes < _BLOCKS_BYTES and len(_BLOCKS) > 1:
            _, old = _BLOCKS.popitem(last=False)
            _BLOCKS_BYTES -= h.block_size
            del old
    _pool().submit(_fill, fut, h, k)
    return fut


def _fill(fut: Future[bytes], h: _Handle, k: int) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        start = k * h.block_size
        end = min(start + h.block_size, h.size)
        data = _disk_get(h, k) if IO.cache_dir else None
        if data is not None and len(data) == end - start:
            STATS.add(disk_hits=1)
        else:
            data = h.fetch(start, end)
            if IO.cache_dir:
                _disk_put(h, k, data)
        fut.set_result(data)
    except BaseException as e:
        with _STATE_LOCK:  # a failed block is fetched again by the next reader
            key = (h.url, h.info.version, h.block_size, k)
            if _BLOCKS.get(key) is fut:
                del _BLOCKS[key]
        fut.set_exception(e)


def _disk_path(h: _Handle, k: int) -> str:
    digest = hashlib.blake2b(
        f"{h.url}\0{h.info.version}\0{h.size}\0{h.block_size}\0{k}".encode(), digest_size=16
    )
    name = digest.hexdigest()
    assert IO.cache_dir is not None
    return os.path.join(IO.cache_dir, name[:2], name)


def _disk_get(h: _Handle, k: int) -> bytes | None:
    try:
        with open(_disk_path(h, k), "rb") as fh:
            return fh.read()
    except OSError:
        return None


_DISK_WRITTEN = 0


def _disk_put(h: _Handle, k: int, data: bytes) -> None:
    """Write a block to the disk cache (atomically: a reader never sees half a block) and evict
    the least recently written blocks once the cache is over its size."""
    global _DISK_WRITTEN
    path = _disk_path(h, k)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        return  # a cache that cannot be written is no cache, not an error
    with _STATE_LOCK:
        _DISK_WRITTEN += len(data)
        due = max(IO.cache_bytes // 16, h.block_size) <= _DISK_WRITTEN
        if due:
            _DISK_WRITTEN = 0
    if due:
        evict_disk_cache()


def evict_disk_cache() -> int:
    """Delete the oldest blocks until the disk cache holds at most ``IO.cache_bytes``; returns the
    bytes freed."""
    if not IO.cache_dir or not os.path.isdir(IO.cache_dir):
        return 0
    entries: list[tuple[float, int, str]] = []
    for dirpath, _, names in os.walk(IO.cache_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.stat(full)
                entries.append((st.st_mtime, st.st_size, full))
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, full in sorted(entries):
        if total - freed <= IO.cache_bytes:
            break
        with contextlib.suppress(OSError):
            os.remove(full)
            freed += size
    return freed


def _schedule(h: _Handle, spans: Iterable[tuple[int, int]]) -> None:
    """Fetch the blocks of ``h`` that hold these byte spans, concurrently (at most a quarter of
    the memory budget: hints must not evict what readers are using)."""
    bs = h.block_size
    budget = max(1, IO.memory_bytes // 4 // bs)
    blocks: set[int] = set()
    for start, end in spans:
        start, end = max(0, int(start)), min(int(end), h.size)
        if end > start:
            blocks.update(range(start // bs, (end - 1) // bs + 1))
    for k in sorted(blocks)[:budget]:
        _block(h, k)


class RemoteFile(io.RawIOBase):
    """A remote object as a seekable binary file (see the module docstring).

    Reads are served from the process's block cache; a reader moving forward gets the next
    blocks fetched ahead, and :meth:`will_need` fetches given spans at once."""

    def __init__(self, url: str, expected: ObjectInfo | None = None) -> None:
        super().__init__()
        self._h = _handle(url, expected)
        self.name = url
        self._pos = 0
        self._last = -2  # last block read
        self._ahead = 0  # blocks up to which readahead has been scheduled

    # ---- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._h.size}[whence]
        self._pos = max(0, base + int(offset))
        return self._pos

    @property
    def size(self) -> int:
        return self._h.size

    @property
    def version(self) -> str | None:
        """The object's version (ETag, ...) this file reads."""
        return self._h.info.version

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(0, self._h.size - self._pos))
        done = 0
        bs = self._h.block_size
        while done < n:
            k = (self._pos + done) // bs
            data = self._get(k)
            lo = (self._pos + done) - k * bs
            take = min(n - done, len(data) - lo)
            if take <= 0:
                break
            view[done : done + take] = data[lo : lo + take]
            done += take
        self._pos += done
        return done

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._h.size - self._pos)
        bs = self._h.block_size
        k, lo = divmod(self._pos, bs)
        if lo + size <= bs:  # within one block (most reads): one slice, no copy into a buffer
            data = self._get(k)[lo : lo + size]
            self._pos += len(data)
            return data
        buf = bytearray(min(size, max(0, self._h.size - self._pos)))
        n = self.readinto(buf)
        return bytes(buf[:n])

    def readall(self) -> bytes:
        return self.read(-1)

    # ---- prefetching
    def will_need(self, spans: Iterable[tuple[int, int]]) -> None:
        """Fetch the blocks of these byte spans now, concurrently."""
        _schedule(self._h, spans)

    def _get(self, k: int) -> bytes:
        if k == self._last + 1 or k == self._last:
            # moving forward: keep IO.readahead blocks in flight ahead of the reader
            last = min(k + IO.readahead, (self._h.size - 1) // self._h.block_size)
            for j in range(max(self._ahead, k) + 1, last + 1):
                _block(self._h, j)
            self._ahead = max(self._ahead, last)
        else:
            self._ahead = k
        self._last = k
        return _block(self._h, k).result()


def prefetch(
    url: str, spans: Callable[[], Iterable[tuple[int, int]] | None], expected: ObjectInfo | None = None
) -> None:
    """In the background: open ``url`` (checked against ``expected``) and fetch the blocks of
    the spans ``spans()`` returns (it may read, e.g. a parquet footer). A stream calls this for
    every file of a chunk as soon as the chunk is planned, so all of them are fetched at once
    while earlier chunks are read. Failures are left to the read itself, which reports them."""

    prefetch_all([(url, spans, expected)])


def prefetch_all(
    files: Sequence[tuple[str, Callable[[], Iterable[tuple[int, int]] | None], ObjectInfo | None]],
) -> None:
    """:func:`prefetch` for several files (a chunk's) in one background task: the files this
    process has open already are handled in it, one after the other (working out spans costs
    microseconds); each file still to be opened (a metadata request) gets a task of its own,
    so those requests go out at once."""

    def one(
        url: str, spans: Callable[[], Iterable[tuple[int, int]] | None], expected: ObjectInfo | None
    ) -> None:
        with contextlib.suppress(Exception):
            h = _handle(url, expected)
            wanted = spans()
            if wanted:
                _schedule(h, wanted)

    def run() -> None:
        for url, spans, expected in files:
            known = expected if expected is not None else _KNOWN.get(url)
            if known is not None and (url, known.version, known.size) in _HANDLES:
                one(url, spans, expected)
            else:
                _prepare_pool().submit(one, url, spans, expected)

    _prepare_pool().submit(run)


def open_input(path: str, expected: ObjectInfo | None = None) -> Any:
    """A binary file to read ``path``: the local file, or a :class:`RemoteFile` for a URL."""
    if is_remote(path):
        return RemoteFile(path, expected)
    return open(local_path(path), "rb")  # noqa: SIM115 (the caller closes it)


def size(path: str) -> int:
    """The size of a local file or remote object, in bytes."""
    if is_remote(path):
        return _handle(path).size
    return os.path.getsize(local_path(path))


@dataclass(frozen=True)
class FileStat:
    """``os.stat``'s two fields that say whether a file changed. For a remote object
    ``st_mtime_ns`` is a number derived from its version (ETag, ...): it changes when the
    object does."""

    st_size: int
    st_mtime_ns: int


def stat(path: str) -> Any:
    """``os.stat(path)`` for a local file; a :class:`FileStat` of a remote object (asked anew)."""
    if not is_remote(path):
        return os.stat(local_path(path))
    info = object_info(path)
    stamp = info.version or ""
    return FileStat(info.size, int.from_bytes(hashlib.blake2b(stamp.encode(), digest_size=7).digest(), "big"))


def will_need(f: Any, spans: Iterable[tuple[int, int]]) -> None:
    """Hint that ``f`` (from :func:`open_input`) will be read at these byte spans (a no-op for
    local files, which the page cache serves)."""
    hint = getattr(f, "will_need", None)
    if hint is not None:
        hint(spans)
