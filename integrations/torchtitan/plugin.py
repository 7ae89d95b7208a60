"""The ``torchtitan`` trainer-adapter plugin (loaded by name; imports torch only when used).

``build_data(client, job_id, dp_rank=..., local_batch_size=...)`` returns a
:class:`~mixtera_integrations.torchtitan.data.TokenBatchLoader` over an existing token-mode
job: an object with torchtitan's dataloader protocol (``(input_dict, labels)`` batches,
``state_dict``/``load_state_dict`` keyed per dp rank). A torchtitan run normally builds
its dataloader from the ``[mixtera]`` section instead (``MixteraTrainer``); see
``docs/torchtitan.md``.
"""

from __future__ import annotations

from typing import Any

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import TrainerAdapter


class TorchtitanAdapter(TrainerAdapter):
    """``build_data(client, job_id, dp_rank=0, node=0, local_batch_size=8, ...)`` -> ``TokenBatchLoader``."""

    name = "torchtitan"
    description = (
        "torchtitan 0.3.0: MixteraTrainer with a [mixtera] config section, a Stateful dataloader keyed "
        "per dp rank, per-domain feedback through MixteraCrossEntropyLoss"
    )

    def build_data(self, client: Any, job_id: str, **options: Any) -> Any:
        from .data import MixteraSession, TokenBatchLoader

        job = client.job(job_id)
        dp_rank = int(options.pop("dp_rank", 0))
        node = int(options.pop("node", 0))
        session = MixteraSession(
            job,
            client,
            dp_rank=dp_rank,
            dp_world_size=job.spec.dp_groups,
            node=node,
            nodes_per_group=job.spec.nodes_per_group,
        )
        options.setdefault("local_batch_size", 8)
        return TokenBatchLoader(session, **options)


@hookimpl
def mixtera_trainer_adapters() -> list[TrainerAdapter]:
    return [TorchtitanAdapter()]
