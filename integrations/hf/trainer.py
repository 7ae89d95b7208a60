"""``MixteraTrainer``: ``transformers.Trainer`` with a :class:`MixteraCallback` attached (kept for
code written against it; a plain ``Trainer`` with the callback does the same).

Migration from the earlier ``MixteraTrainer`` (whose own ``compute_loss`` computed the loss from
shifted labels): the model now computes its own loss from unshifted ``labels`` (auxiliary loss
terms included), per-domain losses are observed by the callback's forward hook, and the data
state lives in ``trainer_state.json`` (``stateful_callbacks["mixtera"]``). Checkpoints written by
the earlier version (``mixtera_state.json`` next to it) still resume.
"""

from __future__ import annotations

import json
import os
from typing import Any

try:
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_integrations.hf needs transformers: pip install 'mixtera[hf]'") from e

from mixtera_core.errors import MixteraError
from mixtera_core.torch import MixteraDataset

from .callback import STATE_NAME, MixteraCallback
from .data import MixteraTrainDataset

__all__ = ["MixteraTrainer", "mixtera_dataset"]

#: where checkpoints of the earlier MixteraTrainer kept the data state
LEGACY_STATE_FILE = "mixtera_state.json"


def mixtera_dataset(client: Any, job_id: str, **options: Any) -> MixteraTrainDataset:
    """The ``train_dataset`` of a job for the Trainer (``causal_lm`` items; see :mod:`.data`)."""
    return MixteraTrainDataset(client.job(job_id), **options)


class MixteraTrainer(Trainer):
    """A ``Trainer`` over a Mixtera job: ``train_dataset`` is a :class:`MixteraTrainDataset` (or a
    :class:`~mixtera_core.torch.MixteraDataset`, whose job is used); ``mixtera_client`` is needed
    for dynamic mixtures. A :class:`MixteraCallback` among ``callbacks`` is used, else one is made."""

    def __init__(self, *args: Any, mixtera_client: Any = None, **kwargs: Any) -> None:
        dataset = kwargs.get("train_dataset")
        if not isinstance(dataset, MixteraTrainDataset | MixteraDataset):
            raise MixteraError(
                f"MixteraTrainer needs train_dataset=mixtera_dataset(client, job_id), got {type(dataset).__name__}"
            )
        callbacks = list(kwargs.get("callbacks") or [])
        found = [cb for cb in callbacks if isinstance(cb, MixteraCallback)]
        callback = found[0] if found else MixteraCallback(mixtera_client, dataset.job)
        if not found:
            callbacks.append(callback)
        kwargs["callbacks"] = callbacks
        kwargs["train_dataset"] = callback.train_dataset
        kwargs.setdefault("data_collator", callback.collator)
        super().__init__(*args, **kwargs)
        callback.attach(self)
        self.mixtera_callback = callback
        self.mixtera_client = mixtera_client
        self.mixtera_job = callback.job

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        path = resume_from_checkpoint
        if path is True:
            path = get_last_checkpoint(self.args.output_dir)
        if isinstance(path, str):
            legacy = os.path.join(path, LEGACY_STATE_FILE)
            trainer_state = os.path.join(path, "trainer_state.json")
            if os.path.exists(legacy) and os.path.exists(trainer_state):
                with open(trainer_state) as fh:
                    stored = json.load(fh).get("stateful_callbacks", {})
                if STATE_NAME not in stored:
                    with open(legacy) as fh:
                        self.mixtera_callback.legacy_state = json.load(fh)
        return super().train(resume_from_checkpoint, *args, **kwargs)
