"""The ``hf`` trainer-adapter plugin (loaded by name; imports torch only when used)."""

from __future__ import annotations

from typing import Any

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import TrainerAdapter


class HFAdapter(TrainerAdapter):
    """``build_data(client, job_id, ...)`` -> the ``train_dataset`` of a job (causal-LM items)."""

    name = "hf"
    description = (
        "Hugging Face Trainer: MixteraCallback (any Trainer: data, exact resume, feedback, per-domain logs)"
    )

    def build_data(self, client: Any, job_id: str, **options: Any) -> Any:
        from .trainer import mixtera_dataset

        return mixtera_dataset(client, job_id, **options)


@hookimpl
def mixtera_trainer_adapters() -> list[TrainerAdapter]:
    return [HFAdapter()]
