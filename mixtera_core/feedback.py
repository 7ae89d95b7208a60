"""Turning a training step's per-token losses into Mixtera feedback (torch).

A dynamic mixture needs, per mixture key, the summed loss and the token count of each
step, over the whole data-parallel job. :func:`domain_loss_sums` computes them on one rank
with ``index_add_`` (no Python loop over tokens); :func:`all_reduce_feedback` sums them
over the data-parallel group; :class:`FeedbackReporter` does both and sends one message per
step from one rank only (rank 0 of the group), so the server sees each step once.

Typical use in a training step::

    logits = model(batch["input_ids"]).logits
    token_loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
    reporter.step(step, token_loss.view_as(batch["targets"]), batch["key_ids"], batch["chunk_index"])

Passing the batch's ``chunk_index`` lets the server place the resulting mixture change at a
chunk derived from the data consumed (``position + 1 + feedback_delay``), so a rerun with the
same feedback produces the same chunks; see :meth:`MixteraClient.feedback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_core.feedback needs torch: pip install 'mixtera[torch]'") from e


def domain_loss_sums(
    token_losses: torch.Tensor, key_ids: torch.Tensor, num_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-key loss sums and token counts (float64) of one step.

    ``token_losses`` and ``key_ids`` have the same shape; tokens with a negative key id
    (padding) are ignored. Gradients are not tracked.
    """
    if token_losses.shape != key_ids.shape:
        raise ValueError(
            f"token_losses {tuple(token_losses.shape)} and key_ids {tuple(key_ids.shape)} differ"
        )
    with torch.no_grad():
        losses = token_losses.detach().reshape(-1).to(torch.float64)
        # the batch's key ids may still be on the CPU while the losses are on an accelerator
        keys = key_ids.reshape(-1).to(device=losses.device, dtype=torch.long)
        valid = keys >= 0
        if bool((keys[valid] >= num_keys).any()):
            raise ValueError(f"key ids must be < num_keys={num_keys}, got {int(keys.max())}")
        keys, losses = keys[valid], losses[valid]
        sums = torch.zeros(num_keys, dtype=torch.float64, device=losses.device).index_add_(0, keys, losses)
        counts = torch.zeros(num_keys, dtype=torch.float64, device=losses.device).index_add_(
            0, keys, torch.ones_like(losses)
        )
    return sums, counts


def all_reduce_feedback(
    sums: torch.Tensor, counts: torch.Tensor, group: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-key losses and counts over the data-parallel group (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return sums, counts
    both = torch.cat([sums, counts]).to(_collective_device(group))
    dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
    both = both.to(sums.device)
    n = sums.numel()
    return both[:n], both[n:]


def _collective_device(group: Any = None) -> torch.device:
    """Where a tensor must live for a collective of ``group``: NCCL only reduces CUDA tensors."""
    import torch.distributed as dist

    if "nccl" in str(dist.get_backend(group)).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_position(position: int, group: Any = None) -> int:
    """The highest consumed chunk index over the data-parallel group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return position
    t = torch.tensor([position], dtype=torch.int64, device=_collective_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


class FeedbackReporter:
    """Computes, all-reduces and sends per-key feedback; only rank ``sender_rank`` sends.

    ``every`` accumulates that many steps into one message (fewer round trips to a
    server); the step sent is the last one of the window. Streams plan at most
    ``feedback_delay`` chunks past the last position sent, so with ``every > 1`` the job's
    ``feedback_delay`` must cover ``every`` steps of data too (or they wait for the message).
    """

    def __init__(
        self,
        client: Any,
        job_id: str,
        num_keys: int,
        *,
        every: int = 1,
        group: Any = None,
        sender_rank: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.client = client
        self.job_id = job_id
        self.num_keys = num_keys
        self.every = every
        self.group = group
        self.sender_rank = sender_rank
        self._sums = torch.zeros(num_keys, dtype=torch.float64)
        self._counts = torch.zeros(num_keys, dtype=torch.float64)
        self._pending = 0
        self._position: int | None = None

    def _is_sender(self) -> bool:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return True
        return (
            dist.get_rank(self.group) == self.sender_rank
            if self.group is not None
            else dist.get_rank() == self.sender_rank
        )

    def step(
        self,
        step: int,
        token_losses: torch.Tensor,
        key_ids: torch.Tensor,
        chunk_index: torch.Tensor | int | None = None,
    ) -> tuple[list[float], list[float]] | None:
        """Account one step; returns the (losses, counts) sent, or None when nothing was sent.

        ``chunk_index``: the batch's ``chunk_index`` (every rank passes it, or none does);
        its maximum over the window and the group is sent as the feedback's ``position``.
        """
        sums, counts = domain_loss_sums(token_losses, key_ids, self.num_keys)
        return self.step_sums(step, sums, counts, chunk_index)

    def step_sums(
        self,
        step: int,
        sums: torch.Tensor,
        counts: torch.Tensor,
        chunk_index: torch.Tensor | int | None = None,
    ) -> tuple[list[float], list[float]] | None:
        """:meth:`step` for a step whose per-key loss sums and token counts are summed already
        (e.g. over the micro-batches of a gradient-accumulation step, by :func:`domain_loss_sums`)."""
        self._sums += sums.detach().to("cpu", torch.float64)
        self._counts += counts.detach().to("cpu", torch.float64)
        self._pending += 1
        if chunk_index is not None:
            here = int(chunk_index.max()) if isinstance(chunk_index, torch.Tensor) else int(chunk_index)
            self._position = here if self._position is None else max(self._position, here)
        if self._pending < self.every:
            return None
        total_sums, total_counts = all_reduce_feedback(self._sums, self._counts, self.group)
        position = None if self._position is None else all_reduce_position(self._position, self.group)
        self._position = None
        self._sums = torch.zeros_like(self._sums)
        self._counts = torch.zeros_like(self._counts)
        self._pending = 0
        losses: Sequence[float] = total_sums.tolist()
        tokens: Sequence[float] = total_counts.tolist()
        if self._is_sender():
            self.client.feedback(
                self.job_id, step=step, losses=list(losses), counts=list(tokens), position=position
            )
            return list(losses), list(tokens)
        return None
