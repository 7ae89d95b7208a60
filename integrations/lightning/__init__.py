"""PyTorch Lightning integration: a resumable ``LightningDataModule`` and a feedback ``Callback``.

``pip install 'mixtera[lightning]'``. Importing this package does not import Lightning;
the classes are loaded on first use (so the ``lightning`` trainer-adapter plugin can be
listed without Lightning installed).

Typical use::

    from mixtera_integrations.lightning import MixteraDataModule, MixteraFeedbackCallback

    dm = MixteraDataModule(client, query=Query.for_job("run-1"), mixture=mixture,
                           tokenizer=("hf", "tokenizer.json"), seq_len=128, batch_size=8)
    trainer = L.Trainer(max_steps=1000, callbacks=[MixteraFeedbackCallback()])
    trainer.fit(model, datamodule=dm)                        # ckpt_path=... resumes the data exactly

See :mod:`mixtera_integrations.lightning.datamodule` (data, held-out evaluation, resume) and
:mod:`mixtera_integrations.lightning.callback` (feedback and logged metrics; how per-token losses
reach the callback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callback import MixteraFeedbackCallback
    from .datamodule import MixteraDataModule

__all__ = ["MixteraDataModule", "MixteraFeedbackCallback"]


def __getattr__(name: str) -> Any:
    if name == "MixteraDataModule":
        from .datamodule import MixteraDataModule

        return MixteraDataModule
    if name == "MixteraFeedbackCallback":
        from .callback import MixteraFeedbackCallback

        return MixteraFeedbackCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
