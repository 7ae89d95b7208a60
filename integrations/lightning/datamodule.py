"""``MixteraDataModule`` for PyTorch Lightning (``lightning>=2.4``): training and held-out eval data.

**Data.** :class:`MixteraDataModule` streams one Mixtera job to every rank of a Lightning
run. Give it a client and either a query (plus mixture and job options: the job is built
in ``prepare_data`` by the process that owns the catalog and attached to by every rank in
``setup``) or the id of an existing job; or give it a :class:`~mixtera_core.job.Job`
directly. Each rank gets the data of its data-parallel group: ``dp_group =
trainer.global_rank`` and ``node = 0``, so for pure DDP the job must be executed with
``dp_groups = trainer.world_size`` (pass ``dp_group``/``node`` explicitly with tensor or
pipeline parallelism). Batches are dicts of ``input_ids``, ``targets`` (the next token of
every input: already shifted, compute ``cross_entropy(logits, targets)`` and do not let the
model shift again) and ``key_ids`` (the mixture key of every target token), each
``LongTensor[batch, seq_len]``, and ``chunk_index`` (``LongTensor[batch]``, which the feedback
callback sends as the step's position). The DataLoader has exactly ``job.spec.num_workers``
workers.

**Several processes, one local catalog.** ``MixteraClient.local(db)`` created on every rank
(``torchrun``, or Lightning's own ``strategy="ddp"`` launcher, which sets ``LOCAL_RANK`` in
the processes it starts) works as is: only global rank 0 opens the catalog and builds and
owns the job; ``execute`` on the other ranks waits for rank 0's job directory and follows its
mixture log, so they never take DuckDB's lock. Register datasets on rank 0 only (or before
the run). The feedback is summed over all ranks and sent by rank 0; a checkpoint's mixture
state is restored by rank 0 and followed by the others.

**Exact resume.** Lightning fetches one batch ahead of the training step, so the
loader's own position at checkpoint time is one batch too far. The module therefore
attaches the loader state to every batch and keeps, in ``on_before_batch_transfer``
(called for the batch the step is about to train on), the state after the last batch
actually trained on. :meth:`MixteraDataModule.state_dict` (gathered from all ranks, since
only rank 0 writes the checkpoint) goes into every Lightning checkpoint and
``Trainer.fit(model, datamodule=dm, ckpt_path=...)`` continues the stream exactly after
the last trained batch. With a dynamic mixture, the job's mixture log and algorithm state
(``client.checkpoint``, taken on rank 0) are stored too and restored on load (by rank 0; the
other ranks wait for it and follow the restored log).

**Evaluation on held-out data.** With ``holdout=Holdout(fraction, seed)`` (see
:mod:`mixtera_core.holdout`) the training job is built from ``holdout.train(query)``, so it never
contains a held-out sample, and an eval job ``<job id>-eval`` from ``holdout.eval(query, ...)``:
a static mixture over the training job's keys (``eval_mixture``; default equal weights, so every
domain gets as many eval tokens), the same tokenizer, ``seq_len`` and seed, one stream,
``on_exhausted="redistribute"``. Or pass an existing eval job (``eval_job=``: its id with a
client, a :class:`~mixtera_core.job.Job` otherwise). ``val_dataloader`` then yields the first
``val_sequences`` sequences of the eval job (None: all of it), the same ones at every
validation, each rank its share (:class:`~mixtera_core.torch.MixteraEvalDataset`);
:class:`~mixtera_integrations.lightning.MixteraFeedbackCallback` logs the loss of each domain.

Feedback, logging and the per-token losses the LightningModule provides:
:mod:`mixtera_integrations.lightning.callback`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

try:
    import lightning as L
    import torch.utils.data as tud
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mixtera_integrations.lightning needs Lightning: pip install 'mixtera[lightning]'"
    ) from e

from mixtera_core.errors import MixteraError
from mixtera_core.holdout import Holdout, execute_split
from mixtera_core.job import Job
from mixtera_core.mixture import DynamicMixture
from mixtera_core.torch import MixteraDataLoader, MixteraDataset, MixteraEvalDataset

from .._distributed import global_rank, restore_job

__all__ = ["MixteraDataModule", "MixteraFeedbackCallback"]

#: batch key carrying the loader state after that batch (removed before the step sees the batch)
STATE_KEY = "mixtera_loader_state"


class _BatchesWithState:
    """Iterates a :class:`MixteraDataLoader`, attaching its state after each batch to the batch.

    Deliberately not a DataLoader and without ``state_dict``: Lightning neither re-creates it
    (distributed sampler injection) nor saves its (prefetched, one batch too far) state.
    """

    def __init__(self, loader: MixteraDataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            batch[STATE_KEY] = copy.deepcopy(self.loader.state_dict())
            yield batch


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MixteraDataModule(L.LightningDataModule):
    """A Mixtera job as a Lightning data module; see the module docstring.

    ``source`` is a client (with ``query``, or with ``job_id``) or a :class:`Job`.
    ``execute_options`` (``chunk_size``, ``seed``, ``dp_groups``, ``num_workers``,
    ``on_exhausted``, ...) go to ``client.execute`` together with ``tokenizer`` and
    ``seq_len``. ``loader_options`` go to the DataLoader (``pin_memory``, ...).

    Held-out evaluation (see the module docstring): ``holdout`` (with a query) or ``eval_job``
    (a job id with a client, or a :class:`Job`), ``eval_mixture`` (default: equal weights over the
    training keys), ``val_sequences`` (None: the whole eval job) and ``val_batch_size``
    (default ``batch_size``).
    """

    def __init__(
        self,
        source: Any,
        *,
        query: Any = None,
        mixture: Any = None,
        job_id: str | None = None,
        tokenizer: Any = None,
        seq_len: int | None = None,
        batch_size: int = 8,
        dp_group: int | None = None,
        node: int | None = None,
        drop_last: bool = True,
        loader_options: Mapping[str, Any] | None = None,
        holdout: Holdout | None = None,
        eval_job: str | Job | None = None,
        eval_mixture: Any = None,
        val_sequences: int | None = None,
        val_batch_size: int | None = None,
        **execute_options: Any,
    ) -> None:
        super().__init__()
        self.client: Any = None
        self.job: Job | None = None
        self.eval_job: Job | None = eval_job if isinstance(eval_job, Job) else None
        self.eval_job_id: str | None = eval_job if isinstance(eval_job, str) else None
        if holdout is not None and (query is None or eval_job is not None):
            raise MixteraError(
                "MixteraDataModule: holdout= splits the query into a training and an eval job; pass it "
                "with query= and without eval_job="
            )
        if isinstance(eval_job, str) and isinstance(source, Job):
            raise MixteraError("MixteraDataModule: with a Job as source, pass the eval job as a Job too")
        self.holdout, self.eval_mixture = holdout, eval_mixture
        self.val_sequences, self.val_batch_size = val_sequences, val_batch_size
        if isinstance(source, Job):
            if query is not None:
                raise MixteraError("MixteraDataModule: pass a query with a client, not with a Job")
            self.job = source
            self.job_id: str | None = source.spec.job_id
        else:
            self.client = source
            if (query is None) == (job_id is None):
                raise MixteraError(
                    "MixteraDataModule needs either query= (to execute a job) or job_id= (to attach to one)"
                )
            self.job_id = job_id
        self.query, self.mixture = query, mixture
        self.execute_options = dict(execute_options)
        if tokenizer is not None:
            self.execute_options["tokenizer"] = tokenizer
        if seq_len is not None:
            self.execute_options["seq_len"] = seq_len
        self.batch_size = batch_size
        self.dp_group, self.node = dp_group, node
        self.drop_last = drop_last
        self.loader_options = dict(loader_options or {})
        self.loader: MixteraDataLoader | None = None
        self._consumed: dict[str, Any] | None = None  # loader state after the last trained batch
        self._to_load: dict[str, Any] | None = None  # this rank's loader state from a checkpoint

    # ------------------------------------------------------------------ job

    def _execute(self) -> str:
        assert self.client is not None
        if self.holdout is None:
            job_id: str = self.client.execute(self.query, self.mixture, **self.execute_options)
            return job_id
        job_id, self.eval_job_id = execute_split(
            self.client, self.query, self.mixture, self.holdout, eval_mixture=self.eval_mixture,
            **self.execute_options,
        )  # fmt: skip
        return job_id

    def prepare_data(self) -> None:
        """The catalog's owner builds the job (once; executing the same spec again attaches to it).

        Lightning calls this on local rank 0 of every node. A rank-aware local client owns the
        catalog on global rank 0 only (``client.owner``); the other nodes' local rank 0 leave the
        job to it and attach in :meth:`setup`, like every rank (a server builds a job once anyway).
        """
        if self.job is None and self.query is not None and getattr(self.client, "owner", True):
            self.job_id = self._execute()

    def setup(self, stage: str | None = None) -> None:
        if self.job is None:
            if self.query is not None:
                # rank 0: the job exists by now, this attaches; other ranks wait for rank 0's job
                self.job_id = self._execute()
            assert self.job_id is not None
            self.job = self.client.job(self.job_id)
        if self.eval_job is None and self.eval_job_id is not None:
            self.eval_job = self.client.job(self.eval_job_id)

    def _topology(self) -> tuple[int | None, int | None]:
        if self.dp_group is not None or self.node is not None:
            return self.dp_group, self.node
        trainer = self._trainer_or_none()
        if trainer is None:
            return None, None  # MixteraDataset falls back to torch.distributed
        assert self.job is not None
        world, groups = trainer.world_size, self.job.spec.dp_groups
        if world != groups:
            raise MixteraError(
                f"the Lightning trainer has world size {world} but job {self.job.spec.job_id!r} has "
                f"dp_groups={groups}; execute the job with dp_groups={world} (pure data parallelism), "
                f"or pass dp_group= and node= to MixteraDataModule (tensor/pipeline parallelism)"
            )
        return trainer.global_rank, 0

    def _trainer_or_none(self) -> Any:
        return getattr(self, "trainer", None)

    # ------------------------------------------------------------------ data

    def train_dataloader(self) -> Any:
        if self.job is None:
            self.setup("fit")
        assert self.job is not None
        dp_group, node = self._topology()
        dataset = MixteraDataset(self.job, dp_group, node, output="text", drop_last=self.drop_last)
        workers = self.job.spec.num_workers
        self.loader = MixteraDataLoader(
            dataset, self.batch_size, num_workers=workers if workers > 1 else 0, **self.loader_options
        )
        if self._to_load is not None:
            self.loader.load_state_dict(self._to_load)
            self._consumed, self._to_load = copy.deepcopy(self._to_load), None
        return _BatchesWithState(self.loader)

    def val_dataloader(self) -> Any:
        """The eval job's first ``val_sequences`` sequences, this rank's share; ``[]`` without an eval job."""
        if self.job is None:
            self.setup("fit")
        if self.eval_job is None:
            return []
        rank, world = _world()
        trainer = self._trainer_or_none()
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        dataset = MixteraEvalDataset(
            self.eval_job, self.val_sequences, shard=(rank, world) if world > 1 else None
        )
        return tud.DataLoader(
            dataset, batch_size=self.val_batch_size or self.batch_size, collate_fn=MixteraDataset.collate
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and STATE_KEY in batch:
            self._consumed = batch.pop(STATE_KEY)
        return batch

    # ------------------------------------------------------------------ state

    def _local_state(self) -> dict[str, Any] | None:
        if self._consumed is not None:
            return self._consumed
        if self._to_load is not None:
            return self._to_load
        return None

    def state_dict(self) -> dict[str, Any]:
        """``{"job_id", "streams": {"<dp_group>/<node>": loader state}, "job": client checkpoint or None}``.

        Collective under torch.distributed (every rank's stream state is gathered), as
        Lightning calls it on every rank and rank 0 writes the checkpoint; ``job`` (the mixture
        log and algorithm state of a dynamic mixture) is taken on rank 0, which owns the log.
        """
        import torch.distributed as dist

        local = self._local_state()
        states: list[Any] = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
        streams = {f"{s['dp_group']}/{s['node']}": s for s in states if s is not None}
        job_state = None
        if (
            self.client is not None
            and self.job is not None
            and isinstance(self.job.mixture, DynamicMixture)
            and hasattr(self.client, "checkpoint")
            and global_rank() == 0
        ):
            job_state = self.client.checkpoint(self.job.spec.job_id)
        return {"job_id": self.job_id, "streams": streams, "job": job_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's stream position (and the job's mixture state) from :meth:`state_dict`.

        Collective under torch.distributed when the checkpoint holds a mixture state: rank 0
        restores it (``client.restore`` runs where the log is owned) and the other ranks then
        follow the restored log (:func:`~mixtera_integrations._distributed.restore_job`).
        """
        if self.job is None:
            self.setup("fit")
        assert self.job is not None
        if state_dict.get("job_id") not in (None, self.job.spec.job_id):
            raise MixteraError(
                f"the checkpoint's data state is for job {state_dict.get('job_id')!r}, "
                f"this data module streams {self.job.spec.job_id!r}"
            )
        if state_dict.get("job") is not None and self.client is not None:
            self.job = restore_job(self.client, self.job, state_dict["job"])
        dp_group, node = self._topology()
        if dp_group is None:
            dp_group = _world()[0] if self.job.spec.dp_groups > 1 else 0
        mine = state_dict.get("streams", {}).get(f"{dp_group}/{node or 0}")
        self._to_load = mine
        self._consumed = None
        if self.loader is not None and mine is not None:  # loader exists already: restore it now
            self.loader.load_state_dict(mine)
            self._consumed, self._to_load = copy.deepcopy(mine), None


from .callback import MixteraFeedbackCallback  # noqa: E402  (its old home)
