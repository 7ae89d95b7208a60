"""Per-domain losses and mixture weights as metrics, the same for the Lightning and HF adapters.

A trainer logs one loss, averaged over every token of a step. What a mixture changes is how
much of each domain (mixture key) it trains on, so the adapters also log, per key, the mean
loss of that key's tokens (``<prefix>loss/<key>``: training, and evaluation on held-out data)
and the weight in force (``mixture_weight/<key>``). :class:`DomainLosses` accumulates the sums
and token counts of a window on every rank; :meth:`DomainLosses.reduce` sums them over the
ranks (a collective: every rank calls it at the same point), so the logged mean is the mean
over all tokens of all ranks, not a mean of the ranks' means.
"""

from __future__ import annotations

from typing import Any

import torch

from mixtera_core.feedback import all_reduce_feedback, all_reduce_position, domain_loss_sums

__all__ = ["DomainLosses", "weight_metrics"]


class DomainLosses:
    """Per-key loss sums and token counts of the tokens seen since the last :meth:`reduce`."""

    def __init__(self, key_names: list[str]) -> None:
        self.key_names = list(key_names)
        self.sums = torch.zeros(len(key_names), dtype=torch.float64)
        self.counts = torch.zeros(len(key_names), dtype=torch.float64)
        self.position = -1  # highest chunk index seen (-1: none)

    def add(self, token_loss: torch.Tensor, key_ids: torch.Tensor, chunk_index: Any = None) -> None:
        """One batch: per-token losses and the key id of each token (negative: ignored)."""
        sums, counts = domain_loss_sums(token_loss, key_ids, len(self.key_names))
        self.sums += sums.cpu()
        self.counts += counts.cpu()
        if chunk_index is not None:
            here = int(chunk_index.max()) if isinstance(chunk_index, torch.Tensor) else int(chunk_index)
            self.position = max(self.position, here)

    def reduce(self, group: Any = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sums, counts and highest chunk over all ranks (collective), then start a new window."""
        sums, counts = all_reduce_feedback(self.sums, self.counts, group)
        position = all_reduce_position(self.position, group)
        self.sums = torch.zeros_like(self.sums)
        self.counts = torch.zeros_like(self.counts)
        self.position = -1
        return sums, counts, position

    def means(self, sums: torch.Tensor, counts: torch.Tensor, prefix: str) -> dict[str, float]:
        """``{f"{prefix}loss/{key}": mean}`` for every key with tokens."""
        return {
            f"{prefix}loss/{key}": float(s / c)
            for key, s, c in zip(self.key_names, sums.tolist(), counts.tolist(), strict=True)
            if c > 0
        }


def weight_metrics(weights: dict[str, float]) -> dict[str, float]:
    """``{f"mixture_weight/{key}": weight}``."""
    return {f"mixture_weight/{key}": float(w) for key, w in weights.items()}
