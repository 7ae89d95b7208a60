"""``MixteraTrainer``, ``MixteraTrainerCallback`` and a data collator for ``transformers.Trainer``.

**Data.** A :class:`~mixtera_core.torch.MixteraDataset` (a torch ``IterableDataset``) of a
token-mode job is the ``train_dataset``; :func:`mixtera_dataset` makes one. Items are
``input_ids``, ``labels`` (already shifted by one), ``key_ids`` (the mixture key of every
label token) and ``chunk_index`` (what the callback sends as the step's position; the
trainer removes it before the model sees the batch). Use :class:`MixteraTrainer`: its ``get_train_dataloader`` returns a
:class:`~mixtera_core.torch.MixteraDataLoader` with exactly ``job.spec.num_workers``
workers (``args.dataloader_num_workers`` is not used) and no Accelerate re-sharding, and
gives rank ``args.process_index`` the data of its dp_group when the job has
``dp_groups == args.world_size`` (pure data parallelism). Set ``max_steps``: the stream
has no length.

**Per-token losses.** :meth:`MixteraTrainer.compute_loss` runs the model on
``input_ids`` (plus ``attention_mask`` if present) *without* ``labels`` (labels are
already shifted: a causal LM would shift them again), computes the per-token cross
entropy itself and hands it with the batch's ``key_ids`` to the
:class:`MixteraTrainerCallback`, which sends per-domain loss sums and token counts once
per optimizer step (:class:`~mixtera_core.feedback.FeedbackReporter`: summed over all
ranks, sent by rank 0, with the highest ``chunk_index`` trained on over all ranks as the
position; the sums live on the CPU, so on GPUs, whose default process group is NCCL-only,
they are reduced over a gloo group). A ``ScheduleMixture`` without ``samples_per_step`` switches on the training step:
the callback reports the step (with that position) once per optimizer step instead, without
which the streams would wait at the mixture log's seal. Other static mixtures get nothing.

**Several processes, one local catalog.** Under ``torchrun`` (or ``accelerate launch``),
``MixteraClient.local(db)`` created on every rank works as is: only global rank 0 opens the
catalog and builds and owns the job; ``client.execute`` on the other ranks waits for rank 0's
job directory and follows its mixture log, so they never take DuckDB's lock. Execute the
job on every rank (same query, mixture and options) and register datasets on rank 0 only
(or before the run).

**Checkpoints.** On every save the callback writes ``mixtera_state.json`` into the
trainer's checkpoint directory: the stream position of every rank after the last batch
trained on and, with a dynamic mixture, the job's mixture log and algorithm state (taken on
rank 0). ``trainer.train(resume_from_checkpoint=...)`` (a path or ``True``) reads it back
(rank 0 restores the mixture state, the other ranks wait for it and follow the restored
log), so the data continues exactly after the checkpoint; the Trainer's own
"skip the first batches" replay is switched off (``args.ignore_data_skip = True``).

With the plain ``transformers.Trainer`` the dataset works too (set
``dataloader_num_workers`` to the job's ``num_workers``, 0 for one, and
``data_collator=MixteraDataCollator()``), but resuming then replays the skipped batches
and per-domain feedback needs your own ``compute_loss``.
"""

from __future__ import annotations

import json
import os
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_integrations.hf needs transformers: pip install 'mixtera[hf]'") from e

from mixtera_core.errors import MixteraError
from mixtera_core.feedback import FeedbackReporter
from mixtera_core.mixture import DynamicMixture
from mixtera_core.torch import IGNORE_INDEX, STATE_KEY, WORKER_KEY, MixteraDataLoader, MixteraDataset

from .._distributed import StepReporter, feedback_group, global_rank, restore_job

__all__ = ["MixteraDataCollator", "MixteraTrainer", "MixteraTrainerCallback", "mixtera_dataset"]

#: file written into every trainer checkpoint directory
STATE_FILE = "mixtera_state.json"
#: batch key carrying the loader state after that batch (removed before the model sees the batch)
LOADER_STATE_KEY = "mixtera_loader_state"


def mixtera_dataset(client: Any, job_id: str, **options: Any) -> MixteraDataset:
    """The ``train_dataset`` of a job: ``MixteraDataset(client.job(job_id), **options)``."""
    return MixteraDataset(client.job(job_id), **options)


class MixteraDataCollator:
    """Stacks ``input_ids``, ``labels`` and ``key_ids`` (and any other tensors) of a list of items.

    Drops Mixtera's bookkeeping keys, for a plain DataLoader or ``transformers.Trainer``;
    :class:`MixteraTrainer` needs no collator (its loader uses ``MixteraDataset.collate``).
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = MixteraDataset.collate(features)
        batch.pop(WORKER_KEY, None)
        batch.pop(STATE_KEY, None)
        return batch


class _BatchesWithState:
    """Iterates a :class:`MixteraDataLoader`, attaching its state after each batch to the batch."""

    def __init__(self, loader: MixteraDataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        for batch in self.loader:
            batch[LOADER_STATE_KEY] = json.loads(json.dumps(self.loader.state_dict()))
            yield batch


class MixteraTrainerCallback(TrainerCallback):
    """Per-domain feedback once per optimizer step, and ``mixtera_state.json`` on every save.

    Bound to a :class:`MixteraTrainer` (which creates one unless ``callbacks`` holds one);
    ``client`` defaults to the trainer's ``mixtera_client``; ``every`` accumulates that
    many optimizer steps into one feedback message. A schedule switched by the step gets the
    step reported once per optimizer step instead. Every rank runs it: the sums and the
    position are all-reduced, rank 0 sends.
    """

    def __init__(self, client: Any = None, *, every: int = 1) -> None:
        self.client, self.every = client, every
        self.trainer: MixteraTrainer | None = None
        self.reporter: FeedbackReporter | None = None
        self.step_reporter: StepReporter | None = None
        self.sent = 0
        self._losses: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self._chunks: list[torch.Tensor] = []

    def bind(self, trainer: MixteraTrainer) -> None:
        self.trainer = trainer
        if self.client is None:
            self.client = trainer.mixtera_client
        job = trainer.mixtera_job
        if not job.spec.dynamic:
            return
        if self.client is None:
            kind, what = (
                ("a dynamic mixture", "feedback")
                if isinstance(job.mixture, DynamicMixture)
                else ("a schedule switched by the training step", "the step")
            )
            raise MixteraError(
                f"job {job.spec.job_id!r} has {kind}: pass mixtera_client= to MixteraTrainer "
                f"(or client= to MixteraTrainerCallback) so that {what} can be sent"
            )
        group = feedback_group()  # collective: bind() runs on every rank, in MixteraTrainer.__init__
        if isinstance(job.mixture, DynamicMixture):
            self.reporter = FeedbackReporter(
                self.client, job.spec.job_id, len(job.key_names), every=self.every, group=group
            )
        else:  # a schedule switched by the step
            self.step_reporter = StepReporter(self.client, job.spec.job_id, group)

    def record(
        self, token_loss: torch.Tensor, key_ids: torch.Tensor, chunk_index: torch.Tensor | None = None
    ) -> None:
        """Per-token losses, key ids and chunk indices of one micro-batch (called by ``compute_loss``)."""
        if self.reporter is not None:
            self._losses.append(token_loss.detach().reshape(-1))
            self._keys.append(key_ids.reshape(-1))
        if (self.reporter is not None or self.step_reporter is not None) and chunk_index is not None:
            self._chunks.append(chunk_index.reshape(-1))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.step_reporter is not None:
            chunks = torch.cat(self._chunks) if self._chunks else None
            self._chunks = []
            self.step_reporter.step(state.global_step, chunks)
        if self.reporter is None or not self._losses:
            return
        losses, keys = torch.cat(self._losses), torch.cat(self._keys)
        chunks = torch.cat(self._chunks) if self._chunks else None  # the reporter sends their max
        self._losses, self._keys, self._chunks = [], [], []
        if self.reporter.step(state.global_step, losses, keys, chunks) is not None:
            self.sent += 1

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            return
        data = self.trainer.mixtera_state_dict()  # collective: every rank calls it
        if state.is_world_process_zero:
            directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, STATE_FILE)
            with open(path + ".tmp", "w") as fh:
                json.dump(data, fh)
            os.replace(path + ".tmp", path)


class MixteraTrainer(Trainer):
    """``transformers.Trainer`` over a :class:`MixteraDataset`: exact data resume and per-domain feedback.

    ``train_dataset`` must be a token-mode :class:`MixteraDataset`; ``mixtera_client`` is
    needed for dynamic mixtures (feedback) and to checkpoint their mixture state.
    """

    def __init__(self, *args: Any, mixtera_client: Any = None, **kwargs: Any) -> None:
        dataset = kwargs.get("train_dataset")
        if not isinstance(dataset, MixteraDataset):
            raise MixteraError(
                f"MixteraTrainer needs train_dataset=MixteraDataset(...), got {type(dataset).__name__}"
            )
        if not dataset.job.spec.token_mode:
            raise MixteraError(
                f"job {dataset.job.spec.job_id!r} streams samples, not tokens; execute it with tokenizer= "
                f"and seq_len= for MixteraTrainer"
            )
        kwargs.setdefault("data_collator", MixteraDataCollator())
        super().__init__(*args, **kwargs)
        self.args.ignore_data_skip = True  # the loader resumes itself; never replay batches
        self.mixtera_client = mixtera_client
        self.mixtera_job = dataset.job
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, MixteraTrainerCallback)]
        self.mixtera_callback = found[0] if found else MixteraTrainerCallback()
        if not found:
            self.add_callback(self.mixtera_callback)
        self.mixtera_callback.bind(self)
        self.mixtera_loader: MixteraDataLoader | None = None
        self._mixtera_consumed: dict[str, Any] | None = None  # loader state after the last trained batch
        self._mixtera_to_load: dict[str, Any] | None = None

    # ------------------------------------------------------------------ data

    def _mixtera_topology(self) -> tuple[int, int]:
        ds: MixteraDataset = self.train_dataset  # type: ignore[assignment]
        world = self.args.world_size
        if world > 1 and world == ds.job.spec.dp_groups:
            return self.args.process_index, 0
        if world > 1 and ds.job.spec.dp_groups == 1:
            raise MixteraError(
                f"the Trainer runs {world} processes but job {ds.job.spec.job_id!r} has dp_groups=1; "
                f"execute it with dp_groups={world}"
            )
        return ds.dp_group, ds.node

    def get_train_dataloader(self) -> Any:
        ds: MixteraDataset = self.train_dataset  # type: ignore[assignment]
        dp_group, node = self._mixtera_topology()
        if (dp_group, node) != (ds.dp_group, ds.node):
            ds = MixteraDataset(
                ds.job, dp_group, node, output=ds.output, decode=ds.decode, prefetch=ds.prefetch,
                drop_last=ds.drop_last, mixture_timeout=ds.mixture_timeout,
            )  # fmt: skip
        workers = ds.job.spec.num_workers
        self.mixtera_loader = MixteraDataLoader(
            ds,
            self._train_batch_size,
            num_workers=workers if workers > 1 else 0,
            pin_memory=bool(self.args.dataloader_pin_memory and torch.cuda.is_available()),
        )
        if self._mixtera_to_load is not None:
            self.mixtera_loader.load_state_dict(self._mixtera_to_load)
            self._mixtera_consumed, self._mixtera_to_load = self._mixtera_to_load, None
        return _BatchesWithState(self.mixtera_loader)

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        state = inputs.pop(LOADER_STATE_KEY, None)
        if state is not None:
            self._mixtera_consumed = state
        return super().training_step(model, inputs, *args, **kwargs)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        inputs = dict(inputs)
        inputs.pop(LOADER_STATE_KEY, None)
        key_ids = inputs.pop("key_ids")
        chunk_index = inputs.pop("chunk_index", None)
        labels = inputs.pop("targets")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        token_loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX
        ).view_as(labels)
        if num_items_in_batch is not None:
            loss = token_loss.sum() / num_items_in_batch
        else:
            loss = token_loss.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
        if model.training:
            self.mixtera_callback.record(token_loss, key_ids, chunk_index)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------ state

    def mixtera_state_dict(self) -> dict[str, Any]:
        """``{"job_id", "streams": {"<dp_group>/<node>": loader state}, "job": client checkpoint or None}``.

        Collective under torch.distributed: every rank's stream state is gathered; ``job`` (the
        mixture log and algorithm state of a dynamic mixture) is taken on rank 0, which owns the
        log and writes the file.
        """
        import torch.distributed as dist

        local = self._mixtera_consumed if self._mixtera_consumed is not None else self._mixtera_to_load
        states: list[Any] = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
        job = self.mixtera_job
        job_state = None
        if self.mixtera_client is not None and isinstance(job.mixture, DynamicMixture) and global_rank() == 0:
            job_state = self.mixtera_client.checkpoint(job.spec.job_id)
        return {
            "job_id": job.spec.job_id,
            "streams": {f"{s['dp_group']}/{s['node']}": s for s in states if s is not None},
            "job": job_state,
        }

    def mixtera_load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``get_train_dataloader`` continue from ``state`` (see :meth:`mixtera_state_dict`).

        Collective under torch.distributed when ``state`` holds a mixture state: rank 0 restores
        it and the other ranks then follow the restored log
        (:func:`~mixtera_integrations._distributed.restore_job`).
        """
        job = self.mixtera_job
        if state.get("job_id") != job.spec.job_id:
            raise MixteraError(
                f"{STATE_FILE} is for job {state.get('job_id')!r}, this trainer streams {job.spec.job_id!r}"
            )
        if state.get("job") is not None and self.mixtera_client is not None:
            job = self.mixtera_job = restore_job(self.mixtera_client, job, state["job"])
            self.train_dataset.job = job  # type: ignore[union-attr]  # (ranks > 0: a fresh copy) stream it
        dp_group, node = self._mixtera_topology()
        self._mixtera_to_load = state.get("streams", {}).get(f"{dp_group}/{node}")
        self._mixtera_consumed = None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no valid checkpoint found in output directory ({self.args.output_dir})")
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, STATE_FILE)
            if not os.path.exists(path):
                raise MixteraError(
                    f"{path} does not exist: the checkpoint was not written by a MixteraTrainer, so the "
                    f"data position cannot be restored"
                )
            with open(path) as fh:
                self.mixtera_load_state_dict(json.load(fh))
        return super().train(resume_from_checkpoint, *args, **kwargs)
