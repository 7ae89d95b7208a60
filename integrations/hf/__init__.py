"""Hugging Face ``transformers.Trainer`` integration.

``pip install 'mixtera[hf]'``. Importing this package does not import transformers; the
classes are loaded on first use (so the ``hf`` trainer-adapter plugin can be listed
without it). See :mod:`mixtera_integrations.hf.callback` (the callback and how it works with an
unmodified Trainer) and :mod:`mixtera_integrations.hf.data` (items, batches, the label convention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callback import MixteraCallback
    from .data import MixteraCollator, MixteraTrainDataset, mixtera_eval_dataset
    from .trainer import MixteraTrainer, mixtera_dataset

    MixteraTrainerCallback = MixteraCallback
    MixteraDataCollator = MixteraCollator

__all__ = [
    "MixteraCallback",
    "MixteraCollator",
    "MixteraDataCollator",
    "MixteraTrainDataset",
    "MixteraTrainer",
    "MixteraTrainerCallback",
    "mixtera_dataset",
    "mixtera_eval_dataset",
]

_HOMES = {
    "MixteraCallback": ("callback", "MixteraCallback"),
    "MixteraTrainerCallback": ("callback", "MixteraCallback"),  # its earlier name
    "MixteraCollator": ("data", "MixteraCollator"),
    "MixteraDataCollator": ("data", "MixteraCollator"),  # its earlier name
    "MixteraTrainDataset": ("data", "MixteraTrainDataset"),
    "mixtera_eval_dataset": ("data", "mixtera_eval_dataset"),
    "MixteraTrainer": ("trainer", "MixteraTrainer"),
    "mixtera_dataset": ("trainer", "mixtera_dataset"),
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        module, attr = _HOMES[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
