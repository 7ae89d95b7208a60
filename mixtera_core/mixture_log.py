"""The mixture log: which weights are in force at every chunk of a job, and how far that is known.

A job's mixture can change while it streams (feedback to a dynamic mixture, a schedule
switched by step reports). For every process that plans chunks of the job — the training
process, each DataLoader worker, every DDP rank, a server — to plan chunk ``i`` with the same
weights, the log carries a **seal**: chunks ``[0, sealed)`` have final weights, and no change
can ever land before ``sealed``. A feedback naming the consumed position ``q`` seals up to
``q + 1 + feedback_delay`` and its change (if any) lands exactly there, so the log is a
function of the feedback sequence alone. A planner that reaches an unsealed chunk waits for
the log's owner (bounded by a timeout, then :class:`MixtureUnknownError`) instead of guessing.

Who owns the log: the client that built the job (rank 0 of a ``torchrun`` job with a local
catalog, or the server). Everyone else follows it: a :class:`DirectoryFollower` reads the
job directory (``log.jsonl`` + ``seal``) that the owner appends to; a remote client's follower
asks the server (see :mod:`mixtera_core.remote`). A static mixture is sealed forever.

Lookups are O(log n) in the number of changes (bisect), so planning at step 100,000 costs what
it costs at step 10.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .errors import MixteraError

#: ``sealed`` of a log that never changes (a static mixture)
SEALED_FOREVER = 1 << 62
#: seconds a planner waits for an unsealed chunk's weights before it gives up
DEFAULT_MIXTURE_TIMEOUT = float(os.environ.get("MIXTERA_MIXTURE_TIMEOUT", "600"))
LOG_FILE = "log.jsonl"
SEAL_FILE = "seal"


class MixtureUnknownError(MixteraError, TimeoutError):
    """A chunk's mixture was not decided within the timeout (no feedback reached that far)."""


class MixtureWaitCancelled(MixteraError):
    """A planner stopped waiting for a mixture because its consumer went away."""


class WeightsLog:
    """Component weights in force from a chunk index on: ``[(chunk_index, weights), ...]``,
    plus ``sealed``: chunks before it can no longer change."""

    def __init__(self, entries: Sequence[tuple[int, np.ndarray]] = (), sealed: int = SEALED_FOREVER) -> None:
        self.entries: list[tuple[int, np.ndarray]] = []
        self._starts: list[int] = []
        self.sealed = int(sealed)
        for i, w in entries:
            self.add(i, w)

    def add(self, chunk_index: int, weights: np.ndarray) -> None:
        chunk_index = int(chunk_index)
        if self.entries and chunk_index < self.entries[-1][0]:
            raise ValueError(
                f"mixture change at chunk {chunk_index} is before the last one ({self.entries[-1][0]})"
            )
        w = np.asarray(weights, dtype=np.float64)
        if self.entries and chunk_index == self.entries[-1][0]:
            self.entries[-1] = (chunk_index, w)
        else:
            self.entries.append((chunk_index, w))
            self._starts.append(chunk_index)

    def at(self, chunk_index: int) -> np.ndarray:
        """The weights in force at ``chunk_index`` (O(log n))."""
        k = bisect.bisect_right(self._starts, int(chunk_index)) - 1
        return self.entries[max(k, 0)][1]

    def assign(self, other: WeightsLog) -> None:
        """Take ``other``'s entries and seal in place: planners holding this log see them."""
        self.entries = list(other.entries)
        self._starts = list(other._starts)
        self.sealed = other.sealed

    def copy(self) -> WeightsLog:
        out = WeightsLog(sealed=self.sealed)
        out.assign(self)
        return out

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` entries (a follower about to re-read the rest)."""
        del self.entries[n:]
        del self._starts[n:]

    @property
    def last(self) -> tuple[int, np.ndarray]:
        return self.entries[-1]

    def to_json(self) -> list[list[Any]]:
        return [[i, w.tolist()] for i, w in self.entries]

    @classmethod
    def from_json(cls, data: Sequence[Sequence[Any]], sealed: int = SEALED_FOREVER) -> WeightsLog:
        return cls([(int(i), np.asarray(w, dtype=np.float64)) for i, w in data], sealed)

    def compact(self, before: int) -> int:
        """Drop the history only chunks ``< before`` use: the weights in force at ``before``
        then stand for every earlier chunk. The weights of every chunk ``>= before`` are
        unchanged (merging changes after the fact would alter chunks already streamed; the
        tolerance applies when a change is logged). Returns the number of entries removed."""
        k = bisect.bisect_right(self._starts, int(before)) - 1
        if k <= 0:
            return 0
        self.entries = [(self.entries[0][0], self.entries[k][1]), *self.entries[k + 1 :]]
        self._starts = [i for i, _ in self.entries]
        return k


class ProcessLocalLock:
    """A lock that a forked child does not inherit in the state the parent's threads left it in."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def get(self) -> threading.Lock:
        if self._pid != os.getpid():
            self._pid, self._lock = os.getpid(), threading.Lock()
        return self._lock


class LogFollower(Protocol):
    """Brings a job's log up to date with its owner (a job directory, a server)."""

    def refresh(self, job: Any) -> None: ...


class DirectoryFollower:
    """Follows the log a job's owner appends to ``DIR/log.jsonl`` and seals in ``DIR/seal``.

    The owner appends a change before it moves the seal past it, and this follower reads the
    seal before the lines, so every change below the seal it read is in the lines it reads.
    Each rewrite of ``job.json`` (a compaction, a restore) starts a new *generation*: the lines
    and the seal carry the generation they belong to, and a follower that sees a new one
    reloads ``job.json`` — seal included, which a restore may have moved back — and ignores
    what belongs to another. Holds no open file and no lock: safe to pickle into spawned
    workers and to use after fork.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._generation: int | None = None
        self._offset = 0
        self._lock = ProcessLocalLock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = ProcessLocalLock()

    def refresh(self, job: Any) -> None:
        with self._lock.get():  # several streams of one process may refresh the same job
            self._refresh(job)

    def _refresh(self, job: Any) -> None:
        generation, sealed = read_seal(self.directory)
        if generation is None:
            generation = 0  # a job directory written before seals existed
        if generation != self._generation:
            self._reload(job)
            generation, sealed = read_seal(self.directory)
        try:
            with open(os.path.join(self.directory, LOG_FILE), "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1  # a line cut short is the owner still writing it
        for line in data[:end].splitlines():
            change = json.loads(line)
            if int(change.pop("generation", 0)) != self._generation:
                self._generation = None  # a rewrite under way: reload at the next refresh
                return
            apply_line(job, change)
        self._offset += end
        if sealed is not None and generation == self._generation:
            job.log.sealed = max(job.log.sealed, sealed)

    def _reload(self, job: Any) -> None:
        with open(os.path.join(self.directory, "job.json"), "rb") as fh:
            meta = json.loads(fh.read())
        job.log.assign(WeightsLog.from_json(meta["log"], int(meta.get("sealed", SEALED_FOREVER))))
        job.changes = list(meta.get("changes", []))
        self._generation = int(meta.get("generation", 0))
        self._offset = 0


def apply_line(job: Any, change: dict[str, Any]) -> None:
    """Apply one ``log.jsonl`` line (a change with its weights) to a job."""
    change = dict(change)
    weights = np.asarray(change.pop("weights"), dtype=np.float64)
    job.log.add(int(change["chunk"]), weights)
    job.changes.append(change)


def read_seal(directory: str) -> tuple[int | None, int | None]:
    """(generation, sealed) from the seal file; (None, None) when there is none yet."""
    with contextlib.suppress(FileNotFoundError, ValueError), open(os.path.join(directory, SEAL_FILE)) as fh:
        generation, sealed = fh.read().split()
        return int(generation), int(sealed)
    return None, None


def write_seal(directory: str, generation: int, sealed: int) -> None:
    """Replace the seal file atomically (no fsync: it is for followers, the log is durable)."""
    path = os.path.join(directory, SEAL_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{int(generation)} {int(sealed)}")
    os.replace(tmp, path)
