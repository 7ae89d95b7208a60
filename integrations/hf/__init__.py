"""Hugging Face ``transformers.Trainer`` integration.

``pip install 'mixtera[hf]'``. Importing this package does not import transformers; the
classes are loaded on first use (so the ``hf`` trainer-adapter plugin can be listed
without it). See :mod:`mixtera_integrations.hf.trainer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import MixteraDataCollator, MixteraTrainer, MixteraTrainerCallback, mixtera_dataset

__all__ = ["MixteraDataCollator", "MixteraTrainer", "MixteraTrainerCallback", "mixtera_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
