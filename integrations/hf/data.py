"""Datasets and the collator for the Hugging Face ``Trainer``: the HF label convention, and
bookkeeping that never reaches the model by accident.

**Items** are those of :class:`~mixtera_core.torch.MixteraDataset` in the ``"causal_lm"``
convention: ``input_ids`` and ``labels`` (the same tokens; a ``*ForCausalLM`` model shifts them
itself), plus ``key_ids`` (the mixture key of every token) and, for training, ``chunk_index``
and the stream's position. They are :class:`MixteraItem` mappings, not ``dict`` s: the Trainer's
``remove_unused_columns`` drops dict keys the model's ``forward`` does not name, which would
drop the key ids before the collator sees them.

**Batches** (:class:`MixteraCollator`) hold ``input_ids`` and ``labels`` for the model. The
bookkeeping (key ids, chunk indices, stream positions) rides along under one key,
``mixtera``, only while a :class:`~mixtera_integrations.hf.MixteraCallback` is attached to the
model: the callback's forward pre-hook takes that key out of the model's keyword arguments
before ``forward`` runs. Models accept and ignore unknown keyword arguments (``**kwargs``), so a
batch with bookkeeping and no hook would reach them silently; without the callback the
collator therefore emits ``input_ids`` and ``labels`` only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch.utils.data as tud

from mixtera_core.errors import MixteraError
from mixtera_core.job import Job
from mixtera_core.torch import STATE_KEY, WORKER_KEY, MixteraDataset, MixteraEvalDataset

__all__ = ["BOOKKEEPING_KEY", "MixteraCollator", "MixteraItem", "MixteraTrainDataset", "mixtera_eval_dataset"]

#: the batch key of everything that is not for the model (taken out by the callback's pre-hook)
BOOKKEEPING_KEY = "mixtera"
MODEL_KEYS = ("input_ids", "labels")


class MixteraItem(Mapping[str, Any]):
    """One sequence's tensors and bookkeeping; a read-only mapping that is not a ``dict``."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getstate__(self) -> dict[str, Any]:
        return self._data

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._data = state


class MixteraTrainDataset(tud.IterableDataset[MixteraItem]):
    """A token-mode job's training stream for the Trainer (one (dp_group, node) of it).

    ``dp_group``/``node`` None: decided by the callback when training starts (``args.process_index``
    for a job with ``dp_groups == args.world_size``, else 0), or from an initialized
    ``torch.distributed``. Every iteration starts at the position set by :meth:`resume` (the
    start of the job by default), so looking at the first item (as some trainers do) does not
    move the stream. Other options go to :class:`~mixtera_core.torch.MixteraDataset`.
    """

    def __init__(
        self, job: Job | tuple[Any, str], dp_group: int | None = None, node: int | None = None, **options: Any
    ) -> None:
        super().__init__()
        probe = MixteraDataset(job, 0, 0, convention="causal_lm", **options)  # validates job and options
        if not probe.job.spec.token_mode:
            raise MixteraError(
                f"job {probe.job.spec.job_id!r} streams samples, not tokens; execute it with tokenizer= and "
                f"seq_len= for the Trainer"
            )
        self.job, self.options = probe.job, options
        self.dp_group, self.node = dp_group, node
        self._start: dict[str, Any] | None = None  # a MixteraDataLoader state to start from

    def bind(self, dp_group: int, node: int = 0) -> None:
        """Stream ``dp_group`` (set before the first iteration)."""
        self.dp_group, self.node = dp_group, node

    def resume(self, state: dict[str, Any] | None) -> None:
        """Start every following iteration at ``state`` (a :class:`MixteraDataLoader` state)."""
        self._start = copy.deepcopy(state)

    def dataset(self) -> MixteraDataset:
        """The underlying stream of this (dp_group, node) at the resume position."""
        ds = MixteraDataset(
            self.job, self.dp_group, self.node, convention="causal_lm", **self.options
        )  # (dp_group None: torch.distributed's rank, in the main process)
        if self._start is not None:
            ds.load_state_dict(self._start)
        return ds

    def __iter__(self) -> Iterator[MixteraItem]:
        for item in self.dataset():
            yield MixteraItem(item)


def mixtera_eval_dataset(
    job: Job | tuple[Any, str], limit: int | None = None, **options: Any
) -> tud.IterableDataset[MixteraItem]:
    """The ``eval_dataset`` of an eval job: its first ``limit`` sequences, the same at every
    evaluation (:class:`~mixtera_core.torch.MixteraEvalDataset`, ``causal_lm`` convention). Not
    sharded over ranks here: Accelerate gives each rank its share of the batches."""
    return _EvalItems(MixteraEvalDataset(job, limit, convention="causal_lm", **options))


class _EvalItems(tud.IterableDataset[MixteraItem]):
    def __init__(self, inner: MixteraEvalDataset) -> None:
        super().__init__()
        self.inner = inner
        self.job = inner.job

    def __iter__(self) -> Iterator[MixteraItem]:
        items = iter(self.inner)
        try:
            for item in items:
                yield MixteraItem(item)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # stop the streams' background threads now


class MixteraCollator:
    """Stacks items into ``{"input_ids", "labels"}`` (+ ``"mixtera"`` bookkeeping when armed).

    :class:`~mixtera_integrations.hf.MixteraCallback` arms it when it has hooked the model (the
    hook removes the bookkeeping before ``forward``). The bookkeeping is a dict of ``key_ids``
    (``LongTensor[batch, seq_len]``) and, for training batches, ``chunk_index``
    (``LongTensor[batch]``), ``worker`` and ``state`` (the stream worker that made the batch and
    its position after it).
    """

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        items = [dict(f) for f in features]
        batch = MixteraDataset.collate(items)
        out: dict[str, Any] = {k: batch[k] for k in MODEL_KEYS}
        if self.armed:
            info: dict[str, Any] = {"key_ids": batch["key_ids"]}
            if "chunk_index" in batch:
                info["chunk_index"] = batch["chunk_index"]
            if WORKER_KEY in batch:
                info["worker"] = int(batch[WORKER_KEY])
                info["state"] = batch[STATE_KEY]
            out[BOOKKEEPING_KEY] = info
        return out
