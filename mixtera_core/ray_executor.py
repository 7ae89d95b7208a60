"""Registration and tokenization on a Ray cluster (``executor="ray"``; ``pip install "mixtera[ray]"``).

The registering process (the *driver*) keeps the catalog; Ray tasks do the per-file work on
any node of the cluster and return their part of the index:

* registration: one task per file, or per group of consecutive small files, runs
  :func:`~mixtera_core.catalog.scan_file` and returns each file's properties (an Arrow table),
  read index, sample sizes and fingerprint; the driver writes them in one transaction;
* tokenization: one task per file returns its token ids and per-sample lengths; the driver
  writes the token index files.

Workers never open the catalog. They receive plugin *names* (format, parser, tokenizer) and
options, and find the plugins through the same entry points as any Mixtera process; a worker
without one fails the run with :class:`~mixtera_core.errors.WorkerPluginError` naming it. The
data files (and a tokenizer file) must be readable on the workers at the same path or URL.

A task whose worker or node dies is retried (``max_retries``, Ray's ``max_retries``) on the
nodes left; errors raised by the scan itself (a malformed record) are not retried. Results are
collected by path index, so neither task order nor retries change what is written.

Ray is imported when an executor runs, never by ``import mixtera_core``. ``address`` defaults
to ``RAY_ADDRESS``, else a new local Ray instance (``ray.init(address="local")``, kept for the
rest of the process); a process that called ``ray.init`` itself is used as it is.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import storage
from .catalog import _Scanned, scan_file
from .errors import MixteraError, UnknownPluginError, WorkerPluginError
from .executors import DoneCallback, ScanExecutor, ScanJob

INSTALL_HINT = 'executor="ray" needs Ray: pip install "mixtera[ray]" (or pip install "ray[default]")'
#: at most this many files go into one task (small files are grouped to save per-task overhead)
MAX_FILES_PER_TASK = 64
#: tasks per CPU of the cluster to aim for when grouping (load balance vs. per-task overhead)
TASKS_PER_CPU = 4


def import_ray() -> Any:
    """The ``ray`` module, or a MixteraError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MixteraError(INSTALL_HINT) from None
    return ray


def _where() -> str:
    """This worker, for error messages: host and Ray node id."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # not in a Ray worker
        node = "?"
    return f"{socket.gethostname()} (Ray node {node}, pid {os.getpid()})"


def _worker_plugin_error(kind: str, name: str, e: UnknownPluginError) -> WorkerPluginError:
    return WorkerPluginError(
        f"{kind} plugin {name!r} is not installed on the Ray worker {_where()}: the registering process "
        f"has it, this worker's Python environment does not (its {kind} plugins: "
        f"{', '.join(e.installed) or 'none'}). Install the package that provides {name!r} (entry-point "
        f"group 'mixtera') on every node of the Ray cluster, or use executor='local'"
    )


def _portable(error: BaseException, what: str) -> BaseException:
    """``error`` if it pickles (it travels back to the driver as a value), else a MixteraError
    carrying its type and message."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return MixteraError(f"{what}: {type(error).__name__}: {error} (on the Ray worker {_where()})")


@dataclass(frozen=True)
class _ScanRequest:
    """What a scan task needs besides its paths: plugin names and options, nothing else."""

    format_name: str
    parser_name: str
    parser_options: dict[str, Any]
    on_error: str
    schema: dict[str, str]  # property -> DuckDB type, as the driver's parser declares them
    stored_options: dict[str, dict[str, Any]]


def _scan_group(
    request: _ScanRequest, items: list[tuple[int, str]]
) -> tuple[list[tuple[int, _Scanned]], tuple[int, BaseException] | None]:
    """A Ray task: scan ``items`` in order; the scans done and the first failure (index, error)."""
    from .plugins import get_plugin_manager

    first = items[0][0]
    pm = get_plugin_manager()
    try:
        fmt = pm.format(request.format_name)
    except UnknownPluginError as e:
        return [], (first, _worker_plugin_error("format", request.format_name, e))
    try:
        parser = pm.parser(request.parser_name, **request.parser_options)
    except UnknownPluginError as e:
        return [], (first, _worker_plugin_error("parser", request.parser_name, e))
    except Exception as e:
        return [], (first, _portable(e, f"parser {request.parser_name!r} could not be created"))
    schema = {p: t.duckdb for p, t in parser.schema.items()}
    if schema != request.schema:
        return [], (
            first,
            WorkerPluginError(
                f"parser {request.parser_name!r} on the Ray worker {_where()} declares the properties "
                f"{schema}, the registering process's declares {request.schema}: install the same version "
                f"of the plugin on every node of the Ray cluster"
            ),
        )
    for prefix, options in request.stored_options.items():
        storage.use_stored(prefix, options)
    out: list[tuple[int, _Scanned]] = []
    for i, path in items:
        try:
            out.append((i, scan_file(fmt, parser, path, request.on_error)))
        except Exception as e:
            return out, (i, _portable(e, f"scanning {path} failed"))
    return out, None


class RayExecutor(ScanExecutor):
    """Scans (and tokenizes) files as Ray tasks.

    ``address``: the cluster (``"host:port"`` of its head, ``"auto"``, ``"ray://..."``); default
    ``RAY_ADDRESS``, else a new local instance. ``files_per_task``: files per task (default:
    about TASKS_PER_CPU tasks per cluster CPU, at most MAX_FILES_PER_TASK files each). ``max_retries``: retries of a task whose worker
    died. ``init_options``: more keyword arguments for ``ray.init`` when this executor starts Ray.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        files_per_task: int | None = None,
        max_retries: int = 3,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if files_per_task is not None and files_per_task < 1:
            raise ValueError(f"files_per_task must be >= 1, got {files_per_task}")
        self.address = address
        self.files_per_task = files_per_task
        self.max_retries = int(max_retries)
        self.init_options = dict(init_options or {})

    def connect(self) -> Any:
        """The ray module, connected (``ray.init`` unless this process is connected already)."""
        ray = import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            options = {"log_to_driver": False, **self.init_options}
            ray.init(address=address, **options)
        return ray

    def _task_options(self) -> dict[str, Any]:
        # SPREAD: across the nodes, not packed onto the driver's node first (scans are I/O bound)
        return {
            "num_cpus": 1,
            "max_retries": self.max_retries,
            "retry_exceptions": False,
            "scheduling_strategy": "SPREAD",
        }

    def _groups(self, ray: Any, todo: Sequence[tuple[int, str]]) -> list[list[tuple[int, str]]]:
        size = self.files_per_task
        if size is None:
            size = default_files_per_task(len(todo), int(ray.cluster_resources().get("CPU", 1)))
        return [list(todo[k : k + size]) for k in range(0, len(todo), size)]

    def run(self, job: ScanJob, todo: Sequence[tuple[int, str]], done: DoneCallback) -> None:
        if not todo:
            return
        ray = self.connect()
        request = _ScanRequest(
            job.format_name,
            job.parser_name,
            dict(job.parser_options),
            job.on_error,
            {p: t.duckdb for p, t in job.schema.items()},
            dict(job.stored_options),
        )
        task = ray.remote(_scan_group).options(**self._task_options())
        groups = self._groups(ray, todo)
        refs = {task.remote(request, group): group for group in groups}

        def deliver(value: Any) -> tuple[int, BaseException] | None:
            results, failure = value
            for i, item in results:
                done(i, item)
            return failure

        _collect(ray, refs, deliver, "scanning")

    def run_tokenize(
        self,
        function: Callable[..., Any],
        calls: Sequence[tuple[int, str, tuple[Any, ...]]],
        deliver: Callable[[int, Any], None],
    ) -> None:
        """Run ``function(*args)`` as one Ray task per ``(index, path, args)`` of ``calls``, handing
        each result to ``deliver(index, result)`` in this thread; errors as for :meth:`run`."""
        if not calls:
            return
        ray = self.connect()
        task = ray.remote(function).options(**self._task_options())
        refs = {task.remote(i, *args): [(i, path)] for i, path, args in calls}

        def unpack(value: Any) -> tuple[int, BaseException] | None:
            index, result, failure = value
            if failure is not None:
                return index, failure
            deliver(index, result)
            return None

        _collect(ray, refs, unpack, "tokenizing")


def _collect(
    ray: Any,
    refs: dict[Any, list[tuple[int, str]]],
    deliver: Callable[[Any], tuple[int, BaseException] | None],
    what: str,
) -> None:
    """Wait for every task of ``refs`` (ref -> its (index, path) items), handing results to
    ``deliver`` as they arrive. On failures: cancel the tasks after the first failing index,
    wait for those before it, raise the first failure in index order."""
    failures: dict[int, BaseException] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                items = refs[ref]
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None)
                    paths = ", ".join(p for _, p in items[:3] if p) or "files"
                    failures[items[0][0]] = (
                        cause
                        if isinstance(cause, MixteraError)
                        else MixteraError(
                            f"a Ray task {what} {paths}{' ...' if len(items) > 3 else ''} failed and was not "
                            f"retried further: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        )
                    )
                    failure = None
                else:
                    failure = deliver(value)
                if failure is not None:
                    failures[failure[0]] = failure[1]
                if failures:
                    first = min(failures)
                    keep = []
                    for other in pending:
                        if refs[other][0][0] > first:
                            ray.cancel(other)  # later files: not needed to report the first failure
                        else:
                            keep.append(other)
                    pending = keep
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    if failures:
        raise failures[min(failures)]


def default_files_per_task(files: int, cpus: int) -> int:
    """Files per task for ``files`` files on ``cpus`` CPUs (see RayExecutor)."""
    return max(1, min(MAX_FILES_PER_TASK, files // (TASKS_PER_CPU * max(1, cpus))))


__all__ = ["INSTALL_HINT", "RayExecutor", "import_ray"]


# the token index on Ray: the worker side (the driver side is in token_index.tokenize)
def tokenize_task(*args: Any) -> tuple[int, Any, BaseException | None]:
    """A Ray task: :func:`mixtera_core.token_index.encode_file_remote` on a worker."""
    from .token_index import encode_file_remote

    index = args[0]
    try:
        return index, encode_file_remote(*args[1:]), None
    except Exception as e:
        return index, None, _portable(e, "tokenizing failed")
