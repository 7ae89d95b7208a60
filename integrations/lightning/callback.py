"""``MixteraFeedbackCallback``: per-domain feedback, and mixture weights and per-domain losses in the logs.

**Per-token losses.** The LightningModule exposes the per-token losses of its training (and
validation) batches, same shape as ``batch["targets"]`` (positions whose target is ``-100`` may
hold any value: their key id is ``-1``), in one of two ways::

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"]).logits
        token_loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(),
                                     reduction="none").view_as(batch["targets"])
        return {"loss": token_loss.mean(), "token_loss": token_loss}   # 1. in the output dict
        # or: self.mixtera_token_loss = token_loss; return token_loss.mean()  # 2. an attribute

    def validation_step(self, batch, batch_idx):  # the same for the held-out data
        ...
        return {"token_loss": token_loss}

**Feedback.** At the end of every training batch the per-domain loss sums and token counts go
to the job's mixing algorithm (:class:`~mixtera_core.feedback.FeedbackReporter`: summed over
all ranks, sent by rank 0 only, with the highest ``chunk_index`` trained on over all ranks as
the position; the sums live on the CPU, so on GPUs, whose default process group is NCCL-only,
they are reduced over a gloo group). A ``ScheduleMixture`` without ``samples_per_step``
switches on the training step: the callback reports the step (with that position) instead,
without which the streams would wait at the mixture log's seal. Other static mixtures need no
feedback.

**Logs.** Every ``trainer.log_every_n_steps`` optimizer steps the callback writes, through the
trainer's own loggers (CSV, TensorBoard, W&B, ...), ``mixture_weight/<key>`` (the weights in
force at the highest chunk trained on) and, when the module gives per-token losses,
``train_loss/<key>`` (the mean loss of that key's tokens since the last write, over all ranks).
After each validation epoch it logs ``val_loss/<key>`` with ``LightningModule.log`` (so
checkpoints and early stopping can monitor it). ``log=False`` turns both off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import lightning as L
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mixtera_integrations.lightning needs Lightning: pip install 'mixtera[lightning]'"
    ) from e

from mixtera_core.errors import MixteraError
from mixtera_core.feedback import FeedbackReporter
from mixtera_core.mixture import DynamicMixture

from .._distributed import StepReporter, feedback_group
from .._domain_metrics import DomainLosses, weight_metrics

__all__ = ["MixteraFeedbackCallback"]


class MixteraFeedbackCallback(L.Callback):
    """Sends per-domain losses of every training batch to the job's mixing algorithm, and logs
    mixture weights and per-domain training and validation losses; see the module docstring.

    Per-token losses come from the step's output dict (``output_key``, default ``"token_loss"``)
    or else from the attribute ``attribute`` of the LightningModule (default
    ``mixtera_token_loss``); key ids from ``batch["key_ids"]``. The client and job are the
    :class:`~mixtera_integrations.lightning.MixteraDataModule`'s unless given. ``every``
    accumulates that many batches per feedback message. Every rank must run the callback: the
    sums and the position are all-reduced, rank 0 sends and writes the logs.
    """

    def __init__(
        self,
        client: Any = None,
        job_id: str | None = None,
        *,
        every: int = 1,
        output_key: str = "token_loss",
        attribute: str = "mixtera_token_loss",
        log: bool = True,
    ) -> None:
        self.client, self.job_id = client, job_id
        self.every, self.output_key, self.attribute = every, output_key, attribute
        self.log = log
        self.reporter: FeedbackReporter | None = None
        self.step_reporter: StepReporter | None = None
        self.sent = 0
        self.job: Any = None
        self.train_losses: DomainLosses | None = None
        self.val_losses: DomainLosses | None = None
        self._last_logged = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        client = self.client if self.client is not None else getattr(dm, "client", None)
        job = getattr(dm, "job", None)
        job_id = self.job_id or (job.spec.job_id if job is not None else None)
        if job_id is None or (client is None and job is None):
            raise MixteraError(
                "MixteraFeedbackCallback needs a client and a job: use a MixteraDataModule built from a "
                "client, or pass client= and job_id= to the callback"
            )
        if job is None or job.spec.job_id != job_id:
            if client is None:
                raise MixteraError(f"MixteraFeedbackCallback: job {job_id!r} needs client= to be found")
            job = client.job(job_id)
        self.client, self.job_id, self.job = client, job_id, job
        needs_client = isinstance(job.mixture, DynamicMixture) or job.spec.dynamic
        if needs_client and client is None:
            raise MixteraError(
                f"job {job_id!r} changes its mixture with feedback or steps: give the data module (or the "
                f"callback) a client so that they can be sent"
            )
        if isinstance(job.mixture, DynamicMixture):
            self.reporter = FeedbackReporter(
                client, job_id, len(job.key_names), every=self.every, group=feedback_group()
            )
        elif job.spec.dynamic:  # a schedule switched by the step
            self.step_reporter = StepReporter(client, job_id, feedback_group())
        if self.log:
            self.train_losses = DomainLosses(job.key_names)
            eval_job = getattr(dm, "eval_job", None)
            self.val_losses = DomainLosses(eval_job.key_names if eval_job is not None else job.key_names)

    # ------------------------------------------------------------------ training

    def _token_loss(self, outputs: Any, pl_module: L.LightningModule) -> torch.Tensor | None:
        token_loss = outputs.get(self.output_key) if isinstance(outputs, Mapping) else None
        if token_loss is None:
            token_loss = getattr(pl_module, self.attribute, None)
        return token_loss if isinstance(token_loss, torch.Tensor) else None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        position = batch.get("chunk_index") if isinstance(batch, Mapping) else None
        if self.step_reporter is not None:
            self.step_reporter.step(trainer.global_step, position)
        token_loss = self._token_loss(outputs, pl_module)
        if self.reporter is not None:
            if token_loss is None:
                raise MixteraError(
                    f"MixteraFeedbackCallback found no per-token losses: return {{'loss': ..., "
                    f"{self.output_key!r}: token_loss}} from training_step, or set self.{self.attribute} = "
                    f"token_loss (same shape as batch['targets'], reduction='none')"
                )
            if self.reporter.step(trainer.global_step, token_loss, batch["key_ids"], position) is not None:
                self.sent += 1
        if self.train_losses is None:
            return
        if token_loss is not None:
            self.train_losses.add(token_loss, batch["key_ids"], position)
        elif position is not None:
            self.train_losses.position = max(self.train_losses.position, int(position.max()))
        step = trainer.global_step
        if (
            step > 0
            and step != self._last_logged
            and step % max(1, int(getattr(trainer, "log_every_n_steps", 50))) == 0
        ):
            self._last_logged = step
            self._write_train_metrics(trainer, step)

    def _write_train_metrics(self, trainer: L.Trainer, step: int) -> None:
        """All ranks: reduce the window; rank 0: write weights and per-domain losses to the loggers."""
        assert self.train_losses is not None
        sums, counts, position = self.train_losses.reduce(feedback_group())
        if not trainer.is_global_zero or not trainer.loggers:
            return
        metrics = self.train_losses.means(sums, counts, "train_")
        metrics.update(weight_metrics(self._weights(max(position, 0))))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _weights(self, chunk: int) -> dict[str, float]:
        if self.client is not None:
            weights: dict[str, float] = self.client.mixture_weights(self.job_id, chunk=chunk)
            return weights
        return dict(self.job.key_weights(self.job.log.at(chunk)))

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.val_losses is not None:
            self._reset(self.val_losses)

    @staticmethod
    def _reset(losses: DomainLosses) -> None:
        losses.sums.zero_()
        losses.counts.zero_()
        losses.position = -1

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.val_losses is None or not isinstance(batch, Mapping) or "key_ids" not in batch:
            return
        token_loss = self._token_loss(outputs, pl_module)
        if token_loss is not None:
            self.val_losses.add(token_loss, batch["key_ids"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.val_losses is None or trainer.sanity_checking:
            return
        sums, counts, _ = self.val_losses.reduce(feedback_group())  # every rank: a collective
        for name, value in self.val_losses.means(sums, counts, "val_").items():
            pl_module.log(name, value, on_epoch=True, sync_dist=False, rank_zero_only=False)
