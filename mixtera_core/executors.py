"""Where registration scans files: executors, and the spill that lets a registration resume.

A registration scans every file of a dataset (:func:`~mixtera_core.catalog.scan_file`: samples,
properties, read index, sample sizes, fingerprint) and then writes all of it to the catalog in
one transaction. Only the scanning is distributed; the catalog is opened by the registering
process alone (DuckDB allows one process).

* :class:`LocalExecutor` (``executor="local"``): a thread pool in this process.
* :class:`~mixtera_core.ray_executor.RayExecutor` (``executor="ray"``): Ray tasks, one per file
  or per group of small files, on any number of machines (``pip install "mixtera[ray]"``).

An executor hands every finished file back to the registering thread as it completes; the
catalog keeps the results by path index, so the dataset written never depends on the order in
which files finish. When files fail, the error raised is the one of the first failing file in
path order (later files are cancelled, earlier ones run to the end).

**Resume.** Each finished file's scan is written to
``DB_DIR/registrations/<dataset>-<hash>/<settings>/`` as one Arrow IPC file (its properties; its
read index, sample sizes and fingerprint in the schema metadata), renamed into place when
complete. A
registration of the same name with the same format, parser, options and ``on_error`` reuses a
file's scan when the file's fingerprint (size, mtime, content hash; for objects size and
version) is still the same, and scans the rest. The directory is removed once the dataset is
committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .catalog import FileFingerprint, _Scanned, fingerprint_region, scan_file
from .errors import MixteraError
from .interfaces import DatasetFormat, FileScan, MetadataParser
from .properties import PropertyType

if TYPE_CHECKING:
    from .catalog import ProgressCallback, RegistrationReport

REGISTRATIONS_DIR = "registrations"
#: bumped when what a spilled scan holds changes: older spills are then not reused
SPILL_LAYOUT = 1
_META, _READ_INDEX, _SIZES = b"mixtera.spill", b"mixtera.read_index", b"mixtera.sample_bytes"

#: (index into the registration's paths, its scan), called in the registering thread
DoneCallback = Callable[[int, _Scanned], None]


@dataclass
class ScanJob:
    """What every file of one registration is scanned with.

    ``fmt``/``parser`` are this process's plugin objects (the local executor uses them); a
    remote executor sends the names and options instead and finds the plugins by name where it
    runs. ``stored_options``: the public storage options by URL prefix (endpoints, regions),
    which remote workers apply; secrets come from the workers' own environment."""

    fmt: DatasetFormat
    parser: MetadataParser
    format_name: str
    parser_name: str
    parser_options: dict[str, Any]
    on_error: str
    schema: dict[str, PropertyType]
    stored_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers: int | None = None

    def scan(self, path: str) -> _Scanned:
        return scan_file(self.fmt, self.parser, path, self.on_error)


class ScanExecutor(ABC):
    """Runs the per-file scans of a registration."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, job: ScanJob, todo: Sequence[tuple[int, str]], done: DoneCallback) -> None:
        """Scan every ``(index, path)`` of ``todo``, calling ``done(index, scan)`` in the calling
        thread as each file finishes (in any order). On failure, raise the error of the failing
        file with the lowest index once the files before it have finished (``done`` is called
        for every file that finished); an exception from ``done`` stops the run and propagates."""


class LocalExecutor(ScanExecutor):
    """Scans in a thread pool of this process (``workers`` threads; default one per core)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def run(self, job: ScanJob, todo: Sequence[tuple[int, str]], done: DoneCallback) -> None:
        if not todo:
            return
        workers = max(1, self.workers or job.workers or min(len(todo), os.cpu_count() or 1))
        failures: dict[int, BaseException] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mixtera-scan") as pool:
            futures: dict[Future[_Scanned], int] = {pool.submit(job.scan, p): i for i, p in todo}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in sorted(finished, key=futures.__getitem__):
                        i = futures[fut]
                        if fut.cancelled():
                            continue
                        error = fut.exception()
                        if error is not None:
                            failures[i] = error
                            first = min(failures)
                            for other, j in futures.items():
                                if j > first:
                                    other.cancel()  # files before the failure still finish
                            continue
                        done(i, fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        if failures:
            raise failures[min(failures)]


def get_executor(executor: str | ScanExecutor | None) -> ScanExecutor:
    """An executor by name (``"local"``, ``"ray"``) or the given one."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if isinstance(executor, ScanExecutor):
        return executor
    if executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor()
    raise ValueError(f"executor must be 'local', 'ray' or a ScanExecutor, got {executor!r}")


# ---------------------------------------------------------------------- spill and resume


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]


class Spill:
    """The finished scans of one registration, on disk until the dataset is committed."""

    def __init__(self, db_dir: str, dataset: str, settings: dict[str, Any]) -> None:
        digest = hashlib.sha256(dataset.encode()).hexdigest()[:12]
        self.root = os.path.join(db_dir, REGISTRATIONS_DIR, f"{_safe(dataset)}-{digest}")
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.directory = os.path.join(self.root, key)
        self.saved = 0

    def prepare(self) -> None:
        """Create the directory; drop the spills of this dataset made with other settings."""
        if os.path.isdir(self.root):
            for entry in os.listdir(self.root):
                if entry != os.path.basename(self.directory):
                    shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)
        os.makedirs(self.directory, exist_ok=True)

    def has(self, path: str, listing: set[str]) -> bool:
        """Whether ``listing`` (of the directory) holds a spilled scan of ``path``."""
        return os.path.basename(self._file(path)) in listing

    def _file(self, path: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(path.encode()).hexdigest()[:32] + ".arrow")

    def load(self, path: str, region: str) -> _Scanned | None:
        """The spilled scan of ``path`` when the file still has the fingerprint it had, else None."""
        try:
            with ipc.open_file(self._file(path)) as reader:
                table = reader.read_all()
            extra = table.schema.metadata or {}
            meta = json.loads(extra[_META])
            if meta.get("path") != path or meta.get("layout") != SPILL_LAYOUT:
                return None
            fp = FileFingerprint(**meta["fingerprint"])
            if FileFingerprint.of(path, region) != fp:
                return None  # changed since: scan it again
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            return None
        read_index = extra.get(_READ_INDEX) if meta["read_index"] else None
        sizes_blob = extra.get(_SIZES) if meta["sample_bytes"] else None
        table = table.replace_schema_metadata(None)
        sizes = None
        if sizes_blob is not None:
            from .catalog import _decode_sizes

            index = table.column("sample_index").to_numpy()
            sizes = _decode_sizes(sizes_blob)[index] if len(index) else np.zeros(0, dtype=np.int64)
        scan = FileScan(table, int(meta["skipped"]), read_index, sizes)
        return _Scanned(scan, sizes_blob, fp)

    def save(self, path: str, item: _Scanned) -> None:
        """Keep ``item`` for a later run: one Arrow IPC file (properties; read index, sizes and
        fingerprint in its schema metadata), renamed into place when complete. Best effort: a
        failure to spill only loses the resume."""
        fp = item.fingerprint
        meta = {
            "layout": SPILL_LAYOUT,
            "path": path,
            "fingerprint": {"size": fp.size, "mtime_ns": fp.mtime_ns, "content_hash": fp.content_hash},
            "skipped": item.scan.skipped,
            "read_index": item.scan.read_index is not None,
            "sample_bytes": item.sizes is not None,
        }
        extra = {_META: json.dumps(meta).encode()}
        if item.scan.read_index is not None:
            extra[_READ_INDEX] = item.scan.read_index
        if item.sizes is not None:
            extra[_SIZES] = item.sizes
        table = item.scan.properties
        target = self._file(path)
        try:
            os.makedirs(self.directory, exist_ok=True)
            schema = table.schema.with_metadata(extra)
            with ipc.new_file(target + ".tmp", schema) as writer:
                writer.write_table(table.replace_schema_metadata(extra))
            os.replace(target + ".tmp", target)
            self.saved += 1
        except OSError:
            pass

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.root))  # DB_DIR/registrations, when nothing else is in it


def scan_with_resume(
    db_dir: str,
    dataset: str,
    options_json: str,
    job: ScanJob,
    paths: list[str],
    executor: ScanExecutor,
    progress: ProgressCallback | None,
    report: RegistrationReport,
) -> tuple[list[_Scanned], Spill]:
    """Scan ``paths`` with ``executor``, reusing the spilled scans of an earlier run of the same
    registration; every scan, in path order, and the spill (removed by the caller on commit)."""
    from . import __version__

    settings = {
        "layout": SPILL_LAYOUT,
        "mixtera": __version__,
        "format": job.format_name,
        "parser": job.parser_name,
        "parser_options": options_json,
        "on_error": job.on_error,
        "schema": {p: t.duckdb for p, t in job.schema.items()},
    }
    spill = Spill(db_dir, dataset, settings)
    spill.prepare()
    region = fingerprint_region(job.fmt)
    start = time.monotonic()
    out: list[_Scanned | None] = [None] * len(paths)
    todo: list[tuple[int, str]] = []
    spilled = set(os.listdir(spill.directory))
    for i, path in enumerate(paths):
        item = spill.load(path, region) if spill.has(path, spilled) else None
        if item is None:
            todo.append((i, path))
        else:
            out[i] = item
    report.resumed = len(paths) - len(todo)
    finished = report.resumed
    if progress is not None and finished:
        progress(paths[-1], finished, len(paths))

    def done(i: int, item: _Scanned) -> None:
        nonlocal finished
        out[i] = item
        spill.save(paths[i], item)
        finished += 1
        if progress is not None:
            progress(paths[i], finished, len(paths))

    executor.run(job, todo, done)
    missing = [paths[i] for i, item in enumerate(out) if item is None]
    if missing:
        raise MixteraError(
            f"executor {executor.name!r} returned no scan for {len(missing)} files (first: {missing[0]}); "
            f"this is a bug in the executor"
        )
    report.scan_seconds = time.monotonic() - start
    report.executor = executor.name
    return [item for item in out if item is not None], spill


__all__ = ["DoneCallback", "LocalExecutor", "ScanExecutor", "ScanJob", "Spill", "get_executor"]
