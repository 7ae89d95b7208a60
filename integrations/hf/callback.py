"""``MixteraCallback``: a Mixtera job in an unmodified ``transformers.Trainer`` (or a subclass).

Typical use::

    mixtera = MixteraCallback(client, train_job_id, eval_job=eval_job_id, eval_sequences=256)
    trainer = transformers.Trainer(
        model=model, args=args,                                  # max_steps=...: a stream has no length
        train_dataset=mixtera.train_dataset, eval_dataset=mixtera.eval_dataset,
        data_collator=mixtera.collator, callbacks=[mixtera],
    )
    mixtera.attach(trainer)  # ahead of the loggers, and Accelerate's batch dispatching off
    trainer.train()          # resume_from_checkpoint=... continues the data exactly

**The model's own loss.** Batches hold ``input_ids`` and unshifted ``labels`` (see
:mod:`mixtera_integrations.hf.data`); the model computes its loss as usual (shifting the labels,
adding auxiliary terms such as a mixture-of-experts router loss), and so does any
``compute_loss`` a Trainer subclass defines. The callback only *observes*: a forward pre-hook on
the model takes the ``mixtera`` bookkeeping out of the keyword arguments, a forward hook computes
the per-token next-token cross entropy of the model's logits (in float32, without gradients, one
sequence at a time) and adds it up per mixture key.

**Feedback.** Once per optimizer step the per-key loss sums and token counts of its micro-batches
go to the job's mixing algorithm (:class:`~mixtera_core.feedback.FeedbackReporter`: summed over
all ranks, sent by rank 0, with the highest chunk trained on over all ranks as the position). A
``ScheduleMixture`` switched by the step gets the step reported instead.

**Several ranks.** With ``dp_groups == args.world_size`` rank ``r`` streams dp group ``r`` (set
when training starts). Accelerate would otherwise re-shard an iterable dataset: with batch
dispatching (its default for iterable datasets) rank 0 reads everything and sends slices, without
it every rank reads everything and keeps a slice. :meth:`MixteraCallback.attach` turns dispatching
off (``args.accelerator_config.dispatch_batches = False``); when training starts the callback
makes Accelerate's per-rank slicing of the training data a pass-through, as each rank's stream is
its share already. Without ``attach`` under several ranks, set ``accelerator_config=
{"dispatch_batches": False}`` yourself (the callback stops with that message otherwise). The eval
set is the same on every rank and Accelerate gives each rank its slice of its batches.

**Exact resume.** The position of every stream after the last batch the model ran forward on is
kept (from the bookkeeping, not from the loader, which reads ahead) and, when the Trainer is about
to save, gathered from all ranks into ``trainer_state.json`` (``stateful_callbacks["mixtera"]``,
with the job's mixture log and algorithm state for a dynamic mixture). Resuming, the callback
restores the mixture state (rank 0; the others follow) and starts each rank's stream there;
``args.ignore_data_skip`` is set, so the Trainer does not replay the batches before the checkpoint.

**Logs.** On every training log the callback adds ``loss/<key>`` (the mean loss of that key's
tokens since the last log, over all ranks) and ``mixture_weight/<key>`` (the weights in force at
the highest chunk trained on); on every evaluation ``<prefix>loss/<key>`` (``eval_loss/<key>``:
the eval set's per-domain loss). They go into the same log record as the Trainer's own values,
so TensorBoard, W&B and ``trainer.state.log_history`` get them; :meth:`~MixteraCallback.attach`
puts the callback ahead of the reporting callbacks, which otherwise have seen the record already.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_integrations.hf needs transformers: pip install 'mixtera[hf]'") from e

from mixtera_core.errors import MixteraError
from mixtera_core.feedback import FeedbackReporter, domain_loss_sums
from mixtera_core.job import Job
from mixtera_core.mixture import DynamicMixture
from mixtera_core.torch import IGNORE_INDEX

from .._distributed import StepReporter, feedback_group, global_rank, restore_job
from .._domain_metrics import DomainLosses, weight_metrics
from .data import BOOKKEEPING_KEY, MixteraCollator, MixteraTrainDataset, mixtera_eval_dataset

__all__ = ["MixteraCallback", "STATE_NAME"]

log = logging.getLogger("mixtera.hf")

#: the key of the data state in ``trainer_state.json``'s ``stateful_callbacks``
STATE_NAME = "mixtera"


def next_token_losses(output: Any, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token losses ``[batch, seq_len - 1]`` of a causal LM's output for unshifted
    ``labels`` (position ``i`` predicts ``labels[:, i + 1]``; ``-100`` targets give 0)."""
    targets = labels[:, 1:]
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    with torch.no_grad():
        if logits is not None:
            rows = [
                F.cross_entropy(
                    logits[i, :-1].float(),
                    targets[i].to(logits.device),
                    reduction="none",
                    ignore_index=IGNORE_INDEX,
                )
                for i in range(logits.shape[0])
            ]
            return torch.stack(rows)
    raise MixteraError(
        "MixteraCallback: the model's output has no logits, so per-domain losses cannot be computed; do "
        "not pass logits_to_keep, or use a model that returns logits"
    )


class MixteraCallback(TrainerCallback):
    """Streams a Mixtera job into a ``transformers.Trainer``; see the module docstring.

    ``job``: a job id (with ``client``) or a :class:`Job`; ``client`` is needed for dynamic
    mixtures (feedback, checkpoints of the mixture state) and to log the weights of one.
    ``eval_job`` (id or Job) with ``eval_sequences`` (None: all of it) makes
    :attr:`eval_dataset`. ``every`` accumulates that many optimizer steps per feedback message.
    ``dataset_options`` go to :class:`~mixtera_core.torch.MixteraDataset` (``prefetch``,
    ``mixture_timeout``, ``drop_last``, ...).
    """

    def __init__(
        self,
        client: Any = None,
        job: str | Job | None = None,
        *,
        eval_job: str | Job | None = None,
        eval_sequences: int | None = None,
        every: int = 1,
        dataset_options: Mapping[str, Any] | None = None,
    ) -> None:
        if job is None:
            raise MixteraError("MixteraCallback needs the training job: a job id (with client=) or a Job")
        self.client = client
        self.train_dataset = MixteraTrainDataset(self._job(job), **dict(dataset_options or {}))
        self.job: Job = self.train_dataset.job
        eval_source = None if eval_job is None else self._job(eval_job)
        self.eval_dataset = None if eval_source is None else mixtera_eval_dataset(eval_source, eval_sequences)
        self.collator = MixteraCollator()
        self.every = every
        spec = self.job.spec
        if (isinstance(self.job.mixture, DynamicMixture) or spec.dynamic) and client is None:
            raise MixteraError(
                f"job {spec.job_id!r} changes its mixture with feedback or steps: pass client= to "
                f"MixteraCallback so that they can be sent"
            )
        self.reporter: FeedbackReporter | None = None
        self.step_reporter: StepReporter | None = None
        self.sent = 0  # feedback messages sent (rank 0)
        self.trainer: Any = None
        self._hooks: list[Any] = []
        self._model: Any = None
        self._pending: Mapping[str, Any] | None = None  # bookkeeping of the forward running now
        self._labels: torch.Tensor | None = None
        num_keys = len(self.job.key_names)
        self._step_sums = torch.zeros(num_keys, dtype=torch.float64)  # this optimizer step's micro-batches
        self._step_counts = torch.zeros(num_keys, dtype=torch.float64)
        self._step_position = -1
        self.train_losses = DomainLosses(self.job.key_names)
        self.eval_losses = DomainLosses((eval_source or self.job).key_names)
        self._consumed: dict[str, Any] | None = None  # MixteraDataLoader-style state after the last batch
        self._group: Any = None
        self.legacy_state: dict[str, Any] | None = None

    def _job(self, job: str | Job) -> Job:
        if isinstance(job, Job):
            return job
        if self.client is None:
            raise MixteraError(f"MixteraCallback: job {job!r} is an id; pass client= too (or a Job)")
        resolved: Job = self.client.job(job)
        return resolved

    # ------------------------------------------------------------------ wiring

    def attach(self, trainer: Any) -> MixteraCallback:
        """Put this callback right after the Trainer's flow callback (ahead of the loggers, which then
        see the per-domain metrics) and turn Accelerate's batch dispatching off. Call before
        ``train()``; adds the callback if ``callbacks=`` did not."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        else:
            self.on_init_end(trainer.args, trainer.state, trainer.control, model=trainer.model)
        flow = [i for i, cb in enumerate(handler.callbacks) if type(cb).__name__ == "DefaultFlowCallback"]
        handler.callbacks.insert(flow[-1] + 1 if flow else 0, self)
        trainer.args.accelerator_config.dispatch_batches = False
        trainer.accelerator.dataloader_config.dispatch_batches = False
        self.trainer = trainer
        return self

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        args.ignore_data_skip = True  # the callback restores the stream; never replay batches
        if model is not None and self._model is not model:
            for h in self._hooks:
                h.remove()
            self._hooks = [
                model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
                model.register_forward_hook(self._after_forward, with_kwargs=True),
            ]
            self._model = model
        self.collator.armed = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        spec = self.job.spec
        world = int(args.world_size)
        if world > 1 and spec.dp_groups == world:
            self.train_dataset.bind(int(args.process_index))
        elif world > 1:
            raise MixteraError(
                f"the Trainer runs {world} processes but job {spec.job_id!r} has dp_groups={spec.dp_groups}; "
                f"execute it with dp_groups={world}"
            )
        elif self.train_dataset.dp_group is None:
            self.train_dataset.bind(0)
        if world > 1:
            self._unshard(kwargs.get("train_dataloader"))
        self._group = feedback_group()  # collective the first time: every rank runs on_train_begin
        if isinstance(self.job.mixture, DynamicMixture):
            self.reporter = FeedbackReporter(
                self.client, spec.job_id, len(self.job.key_names), every=self.every, group=self._group
            )
        elif spec.dynamic:
            self.step_reporter = StepReporter(self.client, spec.job_id, self._group)
        saved = state.stateful_callbacks.get(STATE_NAME) if state.global_step > 0 else None
        if saved is None and state.global_step > 0:
            saved = self.legacy_state  # a checkpoint of the earlier MixteraTrainer (mixtera_state.json)
        if saved is not None:
            self._restore(saved)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a finite stream ran out and the Trainer starts another epoch: continue after the last
        # trained batch (the streams' ends), never from the start again
        if self._consumed is not None:
            self.train_dataset.resume(self._consumed)

    def _unshard(self, loader: Any) -> None:
        """Make Accelerate's per-rank slicing of the training batches a pass-through."""
        if loader is None:
            return
        if type(loader).__name__ == "DataLoaderDispatcher":
            raise MixteraError(
                "Accelerate dispatches the batches of the training data from rank 0, but each rank streams its "
                "own dp group: call MixteraCallback.attach(trainer) before train(), or pass "
                "TrainingArguments(accelerator_config={'dispatch_batches': False})"
            )
        shard: Any = getattr(loader, "dataset", None)
        if (
            type(shard).__name__ == "IterableDatasetShard"
            and getattr(shard, "dataset", None) is self.train_dataset
        ):
            shard.num_processes, shard.process_index = 1, 0

    # ------------------------------------------------------------------ the model's forward

    def _before_forward(self, module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        info = kwargs.pop(BOOKKEEPING_KEY, None)
        self._pending = info
        self._labels = kwargs.get("labels")
        if self._labels is None:
            self._labels = kwargs.get("input_ids")
        if info is not None and module.training and "state" in info:
            self._consume(info)
        return args, kwargs

    def _consume(self, info: Mapping[str, Any]) -> None:
        """Advance the saved position past a batch the model runs forward on (MixteraDataLoader's layout)."""
        worker, state = int(info["worker"]), info["state"]
        workers = int(state["num_workers"])
        if self._consumed is None:
            self._consumed = self.train_dataset.dataset().state_dict()
        self._consumed["workers"][worker] = state
        self._consumed["next_worker"] = (worker + 1) % workers
        self._consumed["batches"] = int(self._consumed.get("batches", 0)) + 1

    def _after_forward(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        info, labels = self._pending, self._labels
        self._pending, self._labels = None, None
        if info is None or labels is None:
            return
        losses = self.token_losses(output, labels, info)
        keys = info["key_ids"].to(losses.device)[:, 1:]
        keys = torch.where(labels[:, 1:].to(losses.device) == IGNORE_INDEX, -1, keys)
        if not module.training:
            self.eval_losses.add(losses, keys)
            return
        chunk = info.get("chunk_index")
        self.train_losses.add(losses, keys, chunk)
        sums, counts = domain_loss_sums(losses, keys, len(self.job.key_names))
        self._step_sums += sums.cpu()
        self._step_counts += counts.cpu()
        if chunk is not None:
            self._step_position = max(self._step_position, int(chunk.max()))

    def token_losses(self, output: Any, labels: torch.Tensor, info: Mapping[str, Any]) -> torch.Tensor:
        """Per-token losses ``[batch, seq_len - 1]`` of one forward, what the feedback and the logs
        add up per key (position ``i``: the prediction of ``labels[:, i + 1]``, whose key is
        ``info["key_ids"][:, i + 1]``). Override to weight them differently."""
        return next_token_losses(output, labels)

    # ------------------------------------------------------------------ steps and saves

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        position = self._step_position
        sums, counts = self._step_sums, self._step_counts
        self._step_sums, self._step_counts = torch.zeros_like(sums), torch.zeros_like(counts)
        self._step_position = -1
        if self.step_reporter is not None:
            self.step_reporter.step(state.global_step, position if position >= 0 else None)
        if self.reporter is not None and self.reporter.step_sums(state.global_step, sums, counts, position):
            self.sent += 1
        self._keep_for_save(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._keep_for_save(args, state, control)

    def _keep_for_save(self, args: Any, state: Any, control: Any) -> None:
        """Before a possible save (the Trainer decided it in this event; a "best" save follows an
        evaluation): put the data state where the Trainer saves its own (``trainer_state.json``)."""
        if args.save_strategy != "no" and (control.should_save or control.should_evaluate):
            state.stateful_callbacks[STATE_NAME] = self.state_dict()  # collective under several ranks

    def state_dict(self) -> dict[str, Any]:
        """``{"job_id", "streams": {"<dp_group>/<node>": loader state}, "job": checkpoint or None}``:
        every rank's position after its last trained batch (gathered: collective) and, on rank 0,
        the mixture state of a dynamic job."""
        import torch.distributed as dist

        local = self._consumed if self._consumed is not None else self.train_dataset._start
        states: list[Any] = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
        job_state = None
        if self.client is not None and isinstance(self.job.mixture, DynamicMixture) and global_rank() == 0:
            job_state = self.client.checkpoint(self.job.spec.job_id)
        data = {
            "job_id": self.job.spec.job_id,
            "streams": {f"{s['dp_group']}/{s['node']}": s for s in states if s is not None},
            "job": job_state,
        }
        loaded: dict[str, Any] = json.loads(json.dumps(data))  # JSON keys, as trainer_state.json holds them
        return loaded

    def _restore(self, saved: Mapping[str, Any]) -> None:
        """Resume: the mixture state (rank 0 restores, the others follow) and this rank's stream position."""
        if saved.get("job_id") != self.job.spec.job_id:
            raise MixteraError(
                f"the checkpoint's data state is for job {saved.get('job_id')!r}, this run streams "
                f"{self.job.spec.job_id!r}"
            )
        if saved.get("job") is not None and self.client is not None:
            self.job = restore_job(self.client, self.job, saved["job"])
            self.train_dataset.job = self.job
        ds = self.train_dataset
        mine = saved.get("streams", {}).get(f"{ds.dp_group}/{ds.node or 0}")
        if mine is not None:  # JSON made the stream workers' keys strings
            mine = {
                **json.loads(json.dumps(mine)),
                "workers": {int(w): st for w, st in mine["workers"].items()},
            }
        ds.resume(mine)
        self._consumed = mine

    # ------------------------------------------------------------------ logs

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs is None:
            return
        extra: dict[str, float] = {}
        if "loss" in logs:  # a training log: every rank logs at the same steps
            sums, counts, position = self.train_losses.reduce(self._group)
            extra.update(self.train_losses.means(sums, counts, ""))
            extra.update(weight_metrics(self._weights(max(position, 0))))
        prefix = next((k[: -len("loss")] for k in logs if k.endswith("_loss") and k.startswith("eval")), None)
        if prefix is not None:  # an evaluation's log
            sums, counts, _ = self.eval_losses.reduce(self._group)
            extra.update(self.eval_losses.means(sums, counts, prefix))
        if not extra:
            return
        logs.update(extra)
        if state.log_history and all(
            state.log_history[-1].get(k) == v for k, v in logs.items() if k not in extra
        ):
            state.log_history[-1].update(extra)

    def _weights(self, chunk: int) -> dict[str, float]:
        if self.client is not None:
            weights: dict[str, float] = self.client.mixture_weights(self.job.spec.job_id, chunk=chunk)
            return weights
        return dict(self.job.key_weights(self.job.log.at(chunk)))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.eval_losses.sums.zero_()  # (logged in on_log already; nothing carries over)
        self.eval_losses.counts.zero_()
