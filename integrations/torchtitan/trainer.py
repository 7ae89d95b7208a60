"""torchtitan 0.3.0 integration: a ``[mixtera]`` config section, a dataloader, a loss and a trainer.

torchtitan 0.3.0 configures a run with Python config dataclasses (``Trainer.Config``,
returned by a ``config_registry`` function that ``--module``/``--config`` select, every field
overridable on the command line as ``--section.field``) and builds each component from
its ``Configurable.Config``. Its own models extend it by subclassing ``Trainer`` and
``Trainer.Config`` (``FluxTrainer``, ``FaultTolerantTrainer``); Mixtera does the same:

- :class:`MixteraTrainer` is a ``Trainer`` whose ``Config`` has a ``mixtera`` section
  (:class:`~mixtera_integrations.torchtitan.config.MixteraConfig`, ``--mixtera.<field>``) and
  a :class:`MixteraDataLoader` as its ``dataloader``. Before torchtitan builds the
  components it hands the section to the dataloader config and swaps torchtitan's
  ``CrossEntropyLoss`` (also inside a ``ChunkedLossWrapper``) for
  :class:`MixteraCrossEntropyLoss`, which computes the same loss.
- :class:`MixteraDataLoader` is a ``BaseDataLoader`` (``Configurable`` + ``Stateful``) built by
  torchtitan with ``dp_world_size``/``dp_rank`` of its ``batch`` mesh; it connects to the job
  (:func:`~mixtera_integrations.torchtitan.data.connect`) and iterates a
  :class:`~mixtera_integrations.torchtitan.data.TokenBatchLoader`.
- With a dynamic mixture, :meth:`MixteraTrainer.train_step` records the per-token losses of
  every step through the loss and sends per-domain loss sums and token counts at its end
  (:class:`~mixtera_integrations.torchtitan.feedback.StepFeedback`). A schedule mixture
  without ``samples_per_step`` gets the step reported instead.
- :func:`with_mixtera` turns any torchtitan ``Trainer.Config`` (``llama3_8b()``, ...) into a
  :class:`MixteraTrainer.Config`; :mod:`mixtera_integrations.torchtitan.config_registry` does
  it for every config function of torchtitan's models, so ``--module mixtera_integrations.torchtitan
  --config llama3_8b`` works.

Not supported with a dynamic mixture: tensor parallelism (torchtitan shards the logits over
the vocabulary for its loss-parallel cross entropy; per-token losses would need the
gathered logits) and DTensor logits (``parallelism.spmd_backend = "full_dtensor"``).
Static and scheduled mixtures work with every parallelism.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

try:
    import torch
    import tyro
    from torchtitan.components.dataloader import BaseDataLoader
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.config import CompileConfig
    from torchtitan.trainer import Trainer
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mixtera_integrations.torchtitan.trainer needs torchtitan 0.3.0: pip install 'mixtera[torchtitan]' "
        "(on a CPU-only machine: pip install torch==2.13.0 first)"
    ) from e

from mixtera_core.errors import MixteraError
from mixtera_core.feedback import FeedbackReporter

from .config import MixteraConfig
from .data import MixteraSession, TokenBatchLoader, connect
from .feedback import StepFeedback, decode_labels, token_cross_entropy

__all__ = ["MixteraCrossEntropyLoss", "MixteraDataLoader", "MixteraTrainer", "with_mixtera"]

logger = logging.getLogger(__name__)


class MixteraDataLoader(TokenBatchLoader, BaseDataLoader):
    """torchtitan's dataloader for a Mixtera job (see :class:`~mixtera_integrations.torchtitan.data.TokenBatchLoader`).

    ``Config.mixtera`` (the ``[mixtera]`` section) and ``Config.hf_assets_path`` are filled
    in by :class:`MixteraTrainer`; with the plain ``Trainer`` set them yourself (static
    mixtures: feedback needs :class:`MixteraTrainer`).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        mixtera: Annotated[MixteraConfig | None, tyro.conf.Suppress] = None
        """The [mixtera] section (set from MixteraTrainer.Config.mixtera)."""

        hf_assets_path: Annotated[str | None, tyro.conf.Suppress] = None
        """torchtitan's tokenizer directory: the default Mixtera tokenizer (hf:<path>)."""

    def __init__(
        self,
        config: Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        tokenizer: Any = None,
        seq_len: int,
        local_batch_size: int,
        **kwargs: Any,
    ) -> None:
        section = config.mixtera
        if section is None:
            raise MixteraError(
                "MixteraDataLoader.Config has no [mixtera] section: use MixteraTrainer (its config's "
                "mixtera field), or set MixteraDataLoader.Config(mixtera=MixteraConfig(...))"
            )
        session = connect(
            section,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            seq_len=seq_len,
            hf_assets_path=config.hf_assets_path,
        )
        TokenBatchLoader.__init__(
            self,
            session,
            local_batch_size=local_batch_size,
            document_positions=section.document_positions,
        )
        _check_vocab(session, tokenizer)


def _check_vocab(session: MixteraSession, titan_tokenizer: Any) -> None:
    """Warn when Mixtera's tokenizer can produce ids that torchtitan's tokenizer does not know."""
    get = getattr(titan_tokenizer, "get_vocab_size", None)
    spec = session.job.spec.tokenizer
    if get is None or spec is None:
        return
    try:
        from mixtera_core.streaming import load_tokenizer

        ours, theirs = int(load_tokenizer(spec).vocab_size), int(get())
    except Exception:  # noqa: BLE001 - a best-effort check
        return
    if ours > theirs:
        logger.warning(
            "Mixtera tokenizer %s:%s has %d ids but torchtitan's tokenizer has %d: token ids beyond the "
            "model's vocabulary fail in the embedding; point [mixtera] tokenizer at the model's tokenizer",
            spec.name,
            spec.source,
            ours,
            theirs,
        )


class MixteraCrossEntropyLoss(CrossEntropyLoss):
    """torchtitan's cross entropy (sum over tokens / global valid tokens) that also reports per-domain losses.

    While :attr:`feedback` is set and active (inside :meth:`MixteraTrainer.train_step`), the
    labels carry key ids (:func:`~mixtera_integrations.torchtitan.feedback.encode_labels`):
    the loss splits them off, computes every token's cross entropy once and hands the
    detached values to the feedback; the returned loss is their sum, as in torchtitan.
    Otherwise (validation, static mixtures) it is exactly ``CrossEntropyLoss``.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(CrossEntropyLoss.Config):
        pass

    def __init__(self, config: Config, *, compile_config: CompileConfig | None = None) -> None:
        super().__init__(config, compile_config=compile_config)
        self.feedback: StepFeedback | None = None

    def __call__(
        self,
        pred: torch.Tensor,
        labels: torch.Tensor,
        global_valid_tokens: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feedback = self.feedback
        if feedback is None or not feedback.active:
            return super().__call__(pred, labels, global_valid_tokens, **kwargs)
        from torch.distributed.tensor import DTensor

        if isinstance(pred, DTensor) or isinstance(labels, DTensor):
            raise MixteraError(
                "per-domain feedback needs plain (local) logits; got a DTensor. Use "
                "parallelism.spmd_backend other than full_dtensor, no tensor parallelism, or a static mixture"
            )
        vocab = self.global_vocab_size
        if vocab is not None and pred.shape[-1] != vocab:
            raise MixteraError(
                f"the logits have {pred.shape[-1]} classes but the vocabulary has {vocab} (vocab-sharded "
                f"logits?): per-domain feedback does not support tensor parallelism"
            )
        tokens, keys = decode_labels(labels)
        token_loss = token_cross_entropy(pred, tokens)
        feedback.add(token_loss.detach(), keys)
        loss = token_loss.sum()
        if global_valid_tokens is not None:
            loss = loss / global_valid_tokens
        return loss, {}


def _swap_loss(loss: Any) -> Any:
    """torchtitan's CrossEntropyLoss config (alone or inside ChunkedLossWrapper) -> the Mixtera one."""
    if isinstance(loss, MixteraCrossEntropyLoss.Config):
        return loss
    if type(loss) is CrossEntropyLoss.Config:
        return MixteraCrossEntropyLoss.Config(global_vocab_size=loss.global_vocab_size)
    if isinstance(loss, ChunkedLossWrapper.Config):
        return dataclasses.replace(loss, loss_fn=_swap_loss(loss.loss_fn))
    return loss


def _find_mixtera_loss(loss_fn: Any) -> MixteraCrossEntropyLoss | None:
    if isinstance(loss_fn, MixteraCrossEntropyLoss):
        return loss_fn
    inner = getattr(loss_fn, "loss_fn", None)  # ChunkedLossWrapper
    return inner if isinstance(inner, MixteraCrossEntropyLoss) else None


def _feedback_group() -> Any:
    """A process group that can all-reduce CPU tensors (FeedbackReporter's sums live on the CPU).

    None (the default group) without torch.distributed or when the default group has a CPU
    backend; else a gloo group over all ranks (torchtitan's default group is NCCL-only, which
    cannot reduce CPU tensors, not even with one rank). Collective: every rank calls it.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    if "gloo" in str(dist.get_backend()):
        return None
    return dist.new_group(backend="gloo")


class MixteraTrainer(Trainer):
    """A torchtitan ``Trainer`` fed by Mixtera; see the module docstring."""

    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        mixtera: MixteraConfig = field(default_factory=MixteraConfig)
        """The [mixtera] section: server or db, job_id, spec file, chunk_size, tokenizer, seq_len, seed."""

        dataloader: MixteraDataLoader.Config = field(  # pyrefly: ignore [bad-override]
            default_factory=MixteraDataLoader.Config
        )

    config: Config
    dataloader: MixteraDataLoader

    @staticmethod
    def prepare_config(config: Config) -> Config:
        """Wire a config before torchtitan builds from it (in place; :meth:`__init__` calls it).

        The dataloader gets the ``[mixtera]`` section and ``hf_assets_path`` (the default
        tokenizer); torchtitan's ``CrossEntropyLoss`` becomes :class:`MixteraCrossEntropyLoss`.
        """
        if not isinstance(config.dataloader, MixteraDataLoader.Config):
            config.dataloader = MixteraDataLoader.Config()
        config.dataloader.mixtera = config.mixtera
        config.dataloader.hf_assets_path = config.hf_assets_path
        config.loss = _swap_loss(config.loss)
        return config

    def __init__(self, config: Config) -> None:
        super().__init__(self.prepare_config(config))
        self.mixtera_feedback: StepFeedback | None = None
        session = self.dataloader.session
        if session.dynamic:
            self._setup_feedback(session)

    def _setup_feedback(self, session: MixteraSession) -> None:
        loss = _find_mixtera_loss(self.loss_fn)
        if loss is None:
            raise MixteraError(
                f"job {session.job_id!r} has a dynamic mixture, which needs per-token losses: use torchtitan's "
                f"CrossEntropyLoss (MixteraTrainer swaps it for MixteraCrossEntropyLoss) or "
                f"MixteraCrossEntropyLoss.Config as the loss, got {type(self.loss_fn).__name__}"
            )
        if self.parallel_dims.tp_enabled:
            raise MixteraError(
                "per-domain feedback (a dynamic mixture) does not support tensor parallelism: torchtitan shards the "
                "logits over the vocabulary; use tensor_parallel_degree=1 (FSDP/HSDP/PP/CP work) or a static mixture"
            )
        contributes = not self.parallel_dims.pp_enabled or bool(getattr(self, "pp_has_last_stage", False))
        reporter = FeedbackReporter(
            session.client,
            session.job_id,
            len(session.job.key_names),
            every=self.config.mixtera.feedback_every,
            group=_feedback_group(),
        )
        self.mixtera_feedback = StepFeedback(reporter, len(session.job.key_names), contributes=contributes)
        loss.feedback = self.mixtera_feedback
        self.dataloader.encode_key_ids = True

    def train_step(self, data_iterator: Any) -> None:
        feedback = self.mixtera_feedback
        if feedback is not None:
            feedback.begin()
            try:
                super().train_step(data_iterator)
            finally:
                feedback.active = False
            feedback.end(self.step, self.dataloader.consumed_chunk)
        else:
            super().train_step(data_iterator)
        session = self.dataloader.session
        if session.scheduled and session.client is not None and session.rank == 0:
            position = self.dataloader.consumed_chunk
            if position >= 0 and "position" in inspect.signature(session.client.report_step).parameters:
                session.client.report_step(session.job_id, self.step, position=position)
            else:
                session.client.report_step(session.job_id, self.step)

    def close(self) -> None:
        """torchtitan's close, then the dataloader's (its streams stop, its client reports and closes)."""
        try:
            super().close()
        finally:
            dataloader = getattr(self, "dataloader", None)
            if isinstance(dataloader, TokenBatchLoader):
                dataloader.close()


def with_mixtera(config: Any, mixtera: MixteraConfig | None = None) -> MixteraTrainer.Config:
    """A :class:`MixteraTrainer.Config` with every setting of ``config`` (a ``Trainer.Config``) but the dataloader.

    ``mixtera`` is the ``[mixtera]`` section (default: empty, to be set with ``--mixtera.*``).
    """
    if isinstance(config, MixteraTrainer.Config):
        return dataclasses.replace(config, mixtera=mixtera) if mixtera is not None else config
    if type(config) is not Trainer.Config:
        raise MixteraError(
            f"with_mixtera() wraps a torchtitan Trainer.Config, got {type(config).__qualname__}; for a trainer "
            f"subclass of your own, subclass MixteraTrainer instead"
        )
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    values.pop("dataloader", None)
    return MixteraTrainer.Config(
        **values,
        mixtera=mixtera if mixtera is not None else MixteraConfig(),
        dataloader=MixteraDataLoader.Config(),
    )
