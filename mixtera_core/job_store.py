"""The jobs a catalog keeps under ``DB_DIR/jobs``: list them, describe one, delete one.

A job directory holds ``job.json`` (spec, mixture log, changes; written last when a job is
built), the index and file tables (Arrow IPC), ``log.jsonl`` (changes since the last
rewrite), the ``seal`` and ``delivered.json``. Listing reads only ``job.json``,
``log.jsonl`` and ``delivered.json``: no DuckDB connection, so it works while another
process (a trainer's rank 0, a server) holds the catalog open.

Deletion renames the directory away first and then removes it, so a process that lists or
loads jobs meanwhile sees the whole job or none of it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import JobError

JOBS_DIR = "jobs"
JOB_FILE = "job.json"
_LOG_FILE = "log.jsonl"  # = mixture_log.LOG_FILE (not imported: that module pulls numpy)
_DELIVERED_FILE = "delivered.json"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # also a safe directory name


class JobNotFoundError(JobError, LookupError):
    """No job of that id is saved in the catalog's ``jobs`` directory."""


@dataclass
class JobInfo:
    """What a saved job is: its spec in short, how far its mixture moved, what it delivered."""

    job_id: str
    mode: str  # "samples" or "tokens"
    mixture: str  # "static", "inferring", "hierarchical", "schedule", "dynamic (ALGORITHM)"
    dp_groups: int
    nodes_per_group: int
    num_workers: int
    seed: int
    catalog_version: int | None
    changes: int  # mixture changes logged (feedback or schedule switches), after compaction
    delivered: int  # samples (tokens in token mode) handed out and recorded so far
    saved: float  # when the job's files last changed (seconds since the epoch)
    spec: dict[str, Any] = field(default_factory=dict, repr=False)  # JobSpec.to_json()
    problem: str | None = None  # set when job.json cannot be read; the other fields are then empty

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobInfo:
        return cls(**data)

    @property
    def saved_iso(self) -> str:
        return datetime.datetime.fromtimestamp(self.saved).isoformat(timespec="seconds")

    def summary(self) -> str:
        """One line for ``mixtera jobs``."""
        if self.problem is not None:
            return f"{self.job_id}: unreadable ({self.problem})"
        spec = self.spec
        if self.mode == "tokens":
            tok = spec.get("tokenizer") or {}
            size = f"seq_len {spec.get('seq_len')}, tokenizer {tok.get('name')}:{tok.get('source')}"
        else:
            size = f"chunks of {spec.get('chunk_size')}"
        topology = f"{self.dp_groups} dp groups x {self.num_workers} workers"
        changed = f", {self.changes} mixture changes" if self.changes else ""
        return (
            f"{self.job_id}: {self.mode}, {self.mixture} mixture, {size}, {topology}, "
            f"{self.delivered:,} {self.mode} delivered{changed}, saved {self.saved_iso}"
        )


def jobs_dir(db_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.path.abspath(os.fspath(db_dir)), JOBS_DIR)


def _job_ids(db_dir: str | os.PathLike[str]) -> list[str]:
    """Ids of the complete job directories (job.json present), sorted."""
    root = jobs_dir(db_dir)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(
        n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(root, n, JOB_FILE))
    )


def _mixture_kind(mixture: dict[str, Any]) -> str:
    kind = str(mixture.get("type", "?"))
    if kind == "dynamic":
        return f"dynamic ({mixture.get('algorithm')})"
    return kind


def _count_log_lines(path: str, generation: int) -> int:
    """Complete lines of ``log.jsonl`` that belong to the current generation of job.json."""
    n = 0
    with contextlib.suppress(FileNotFoundError), open(path) as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # cut short by a crash: never acknowledged
            with contextlib.suppress(ValueError):
                if int(json.loads(line).get("generation", 0)) == generation:
                    n += 1
    return n


def read_job_info(db_dir: str | os.PathLike[str], job_id: str) -> JobInfo:
    """The :class:`JobInfo` of one saved job; :class:`JobNotFoundError` naming the jobs there."""
    check_job_id(job_id)
    directory = os.path.join(jobs_dir(db_dir), job_id)
    path = os.path.join(directory, JOB_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        saved = max(os.stat(os.path.join(directory, n)).st_mtime for n in os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(db_dir, job_id) from None
    try:
        meta = json.loads(raw)
        spec = meta["spec"]
        delivered = 0
        with contextlib.suppress(FileNotFoundError), open(os.path.join(directory, _DELIVERED_FILE)) as fh:
            delivered = int(sum(json.load(fh)))
        changes = len(meta.get("changes", [])) + _count_log_lines(
            os.path.join(directory, _LOG_FILE), int(meta.get("generation", 0))
        )
        return JobInfo(
            job_id=job_id,
            mode="tokens" if spec.get("tokenizer") else "samples",
            mixture=_mixture_kind(spec.get("mixture") or {}),
            dp_groups=int(spec["dp_groups"]),
            nodes_per_group=int(spec["nodes_per_group"]),
            num_workers=int(spec["num_workers"]),
            seed=int(spec["seed"]),
            catalog_version=meta.get("catalog_version"),
            changes=changes,
            delivered=delivered,
            saved=saved,
            spec=spec,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return JobInfo(
            job_id, "?", "?", 0, 0, 0, 0, None, 0, 0, saved, problem=f"{path}: {type(e).__name__}: {e}"
        )


def list_jobs(db_dir: str | os.PathLike[str]) -> list[JobInfo]:
    """Every job saved under ``db_dir/jobs``, sorted by id. A job whose ``job.json`` cannot be
    read is listed with ``problem`` set instead of failing the whole listing."""
    out = []
    for job_id in _job_ids(db_dir):
        with contextlib.suppress(JobNotFoundError):  # deleted while we listed
            out.append(read_job_info(db_dir, job_id))
    return out


def delete_job_dir(db_dir: str | os.PathLike[str], job_id: str) -> None:
    """Remove a job's directory (spec, mixture log, algorithm state, delivered counts).

    The caller makes sure no process still owns the job (the local client holds the catalog;
    a server deletes under the job's lock). Renamed away first: readers see all or nothing."""
    check_job_id(job_id)
    root = jobs_dir(db_dir)
    directory = os.path.join(root, job_id)
    if not os.path.isdir(directory):
        raise _not_found(db_dir, job_id)
    doomed = os.path.join(root, f".deleting-{job_id}-{os.getpid()}")
    os.replace(directory, doomed)
    shutil.rmtree(doomed)


def check_job_id(job_id: str) -> None:
    """Refuse ids that are no job id (and could name a path outside ``jobs/``)."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise JobError(
            f"job id {str(job_id)[:200]!r} must be 1-128 characters of letters, digits, '_', '-', '.'"
        )


def _not_found(db_dir: str | os.PathLike[str], job_id: str) -> JobNotFoundError:
    ids = _job_ids(db_dir)
    shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} jobs)" if len(ids) > 20 else "")
    return JobNotFoundError(
        f"no job {job_id!r} in {jobs_dir(db_dir)} ({'jobs there: ' + shown if ids else 'no jobs saved there'})"
    )
