"""Built-in dynamic mixing algorithms.

``loss_weighted``: a simple, transparent baseline. Keeps an exponential moving average of
each key's mean loss (loss sum / count) and sets the weights proportional to
``ema_loss ** power``, mixed with the initial weights (``prior_mix``) and floored at
``min_weight``. Keys with a higher loss get more data; a key no batch has held yet scores as
the average of the others.

``ado``: Adaptive Data Optimization (per-domain scaling laws), see :mod:`.ado`.

``odm``: Online Data Mixing (an EXP3 bandit on the training loss), see :mod:`.odm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import MixingAlgorithm

from .ado import ADO
from .odm import ODM


class LossWeighted(MixingAlgorithm):
    name = "loss_weighted"

    def __init__(
        self,
        initial_weights: Sequence[float],
        *,
        ema: float = 0.9,
        power: float = 1.0,
        prior_mix: float = 0.2,
        min_weight: float = 0.01,
        update_every: int = 1,
    ) -> None:
        super().__init__(initial_weights, ema=ema, power=power, prior_mix=prior_mix, min_weight=min_weight)
        if not 0 <= ema < 1 or not 0 <= prior_mix <= 1 or update_every < 1:
            raise ValueError("loss_weighted: need 0 <= ema < 1, 0 <= prior_mix <= 1, update_every >= 1")
        k = len(self.initial_weights)
        if min_weight * k > 1:
            raise ValueError(f"loss_weighted: min_weight {min_weight} is too large for {k} keys")
        self.ema, self.power, self.prior_mix, self.min_weight = ema, power, prior_mix, min_weight
        self.update_every = update_every
        self.avg = np.full(k, np.nan)
        self.updates = 0

    def update(self, step: int, losses: Sequence[float], counts: Sequence[float]) -> list[float] | None:
        losses_a = np.asarray(losses, dtype=np.float64)
        counts_a = np.asarray(counts, dtype=np.float64)
        if losses_a.shape != self.avg.shape or counts_a.shape != self.avg.shape:
            raise ValueError(f"loss_weighted: expected {len(self.avg)} losses and counts")
        seen = counts_a > 0
        mean = np.divide(losses_a, counts_a, out=np.zeros_like(losses_a), where=seen)
        fresh = seen & np.isnan(self.avg)
        self.avg[fresh] = mean[fresh]
        old = seen & ~fresh
        self.avg[old] = self.ema * self.avg[old] + (1 - self.ema) * mean[old]
        self.updates += 1
        if np.isnan(self.avg).all() or self.updates % self.update_every:
            return None
        # keys no batch has held yet (rare domains, long documents) score as the average key,
        # so that they neither stall the algorithm nor win or lose before they are seen
        avg = np.where(np.isnan(self.avg), np.nanmean(self.avg), self.avg)
        score = np.maximum(avg, 1e-12) ** self.power
        w = (1 - self.prior_mix) * score / score.sum() + self.prior_mix * np.asarray(self.initial_weights)
        w = np.maximum(w, self.min_weight)
        return (w / w.sum()).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"avg": [None if np.isnan(x) else float(x) for x in self.avg], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg = np.array([np.nan if x is None else x for x in state["avg"]], dtype=np.float64)
        self.updates = int(state["updates"])


@hookimpl
def mixtera_mixing_algorithms() -> list[type[MixingAlgorithm]]:
    return [LossWeighted, ADO, ODM]
