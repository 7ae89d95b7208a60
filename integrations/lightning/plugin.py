"""The ``lightning`` trainer-adapter plugin (loaded by name; imports Lightning only when used)."""

from __future__ import annotations

from typing import Any

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import TrainerAdapter


class LightningAdapter(TrainerAdapter):
    """``build_data(client, job_id, batch_size=..., ...)`` -> :class:`MixteraDataModule`."""

    name = "lightning"
    description = (
        "PyTorch Lightning: MixteraDataModule (exact resume from checkpoints) + MixteraFeedbackCallback"
    )

    def build_data(self, client: Any, job_id: str, **options: Any) -> Any:
        from .datamodule import MixteraDataModule

        return MixteraDataModule(client, job_id=job_id, **options)


@hookimpl
def mixtera_trainer_adapters() -> list[TrainerAdapter]:
    return [LightningAdapter()]
