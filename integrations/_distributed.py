"""What the Lightning and HF adapters share about running on several ranks (``torch.distributed``).

A local client is rank-aware (:meth:`mixtera_core.MixteraClient.local`): only global rank 0
opens the catalog and owns the jobs' mixture logs; every other rank follows the log rank 0
writes, and ``feedback()``, ``report_step()`` and ``restore()`` raise there. A server, too, must
get each of those once per step, not once per rank. Hence:

- :func:`feedback_group`: the process group FeedbackReporter and :class:`StepReporter` reduce
  over. Their sums live on the CPU, and the default group of a GPU run (Lightning's and
  Accelerate's ``nccl``) cannot reduce CPU tensors, so there a gloo group over all ranks is made.
- :class:`StepReporter`: a ``ScheduleMixture`` without ``samples_per_step`` switches on the
  training step, so its log is sealed like a dynamic mixture's and the streams stop
  ``feedback_delay`` chunks in until someone reports the step; this reports it every step
  from rank 0, with the highest chunk consumed over all ranks as the position.
- :func:`restore_job`: resuming from a checkpoint, rank 0 alone restores the job's mixture
  state; the other ranks wait for it and then follow the restored log.
"""

from __future__ import annotations

import sys
from typing import Any

from mixtera_core.job import Job
from mixtera_core.mixture_log import DirectoryFollower, WeightsLog

__all__ = ["barrier", "feedback_group", "global_rank", "restore_job", "StepReporter"]


def _dist() -> Any:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def global_rank() -> int:
    """This process's rank in the default process group; 0 without torch.distributed."""
    dist = _dist()
    return int(dist.get_rank()) if dist is not None else 0


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


_GLOO_GROUPS: dict[int, Any] = {}


def feedback_group() -> Any:
    """A group that can all-reduce CPU tensors: None (the default group) without torch.distributed
    or with a CPU-capable default backend, else a gloo group over all ranks, made once per default
    group. Collective the first time: every rank calls it, in the same order."""
    dist = _dist()
    if dist is None or "gloo" in str(dist.get_backend()):
        return None
    world = id(dist.group.WORLD)
    if world not in _GLOO_GROUPS:
        _GLOO_GROUPS[world] = dist.new_group(backend="gloo")
    return _GLOO_GROUPS[world]


class StepReporter:
    """Reports the training step of a job whose mixture switches on the step (a ``ScheduleMixture``
    without ``samples_per_step``): every rank calls :meth:`step` (a collective), rank 0 sends."""

    def __init__(self, client: Any, job_id: str, group: Any = None) -> None:
        self.client, self.job_id, self.group = client, job_id, group

    def step(self, step: int, chunk_index: Any = None) -> None:
        from mixtera_core.feedback import all_reduce_position

        here = -1
        if chunk_index is not None:
            here = int(chunk_index.max()) if hasattr(chunk_index, "max") else int(chunk_index)
        position = all_reduce_position(here, self.group)
        if global_rank() == 0:
            self.client.report_step(self.job_id, step, position=position if position >= 0 else None)


def restore_job(client: Any, job: Job, state: dict[str, Any]) -> Job:
    """Restore ``job``'s mixture state (``client.checkpoint`` output) on every rank of a run and
    return the job this rank should stream from.

    Rank 0 calls ``client.restore`` (it owns the log). The others wait for it at a barrier and
    then take the restored log from ``state`` (what rank 0's directory or the server now holds),
    in place, as planners hold the log object; a copy that follows a job directory starts
    following it afresh, since rank 0 rewrote it (a follower that had read nothing of the old
    ``log.jsonl`` would not notice the restore, and a follower never moves the seal back).
    Collective under torch.distributed.
    """
    job_id = job.spec.job_id
    rank = global_rank()
    if rank == 0:
        client.restore(job_id, state)
    barrier()
    if rank == 0:
        restored: Job = client.job(job_id)  # a local client restores its job in place; a remote one refetches
        return restored
    job.log.assign(WeightsLog.from_json(state["log"], int(state.get("sealed", job.spec.initial_seal))))
    job.changes = list(state.get("changes", []))
    if isinstance(job.follower, DirectoryFollower) and job.home is not None:
        job.follower = DirectoryFollower(job.home)
    return job
