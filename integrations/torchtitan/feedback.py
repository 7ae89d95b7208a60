"""Per-domain losses for a dynamic mixture, the torchtitan way (torch only; no torchtitan import).

torchtitan hands a loss function nothing but ``(pred, labels, global_valid_tokens)``, and
between the dataloader and the loss its trainer moves, splits and shards the labels
(gradient-accumulation microbatches, pipeline microbatches, context-parallel shards,
``ChunkedLossWrapper`` sequence chunks). So that the mixture key of every token survives
all of that, a Mixtera dataloader with feedback switched on puts the key id into the
high 32 bits of each label (:func:`encode_labels`): whatever torchtitan does to the labels
it does to the key ids. :class:`~mixtera_integrations.torchtitan.trainer.MixteraCrossEntropyLoss`
splits them again (:func:`decode_labels`), computes the per-token cross entropy once
(:func:`token_cross_entropy`; its sum is the training loss, exactly as torchtitan's own
cross entropy) and hands the detached per-token losses to a :class:`StepFeedback`, which
sends one message per optimizer step through :class:`mixtera_core.feedback.FeedbackReporter`
(per-key sums with ``domain_loss_sums``, summed over all ranks with ``all_reduce_feedback``,
sent by rank 0 only).

Padding labels (``-100``) are left as they are and carry no key (``-1``).
"""

from __future__ import annotations

import inspect
from typing import Any

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_integrations.torchtitan needs torch: pip install 'mixtera[torchtitan]'") from e

from mixtera_core.feedback import FeedbackReporter

#: whether this Mixtera's FeedbackReporter.step takes the consumed chunk index (replayable changes)
_STEP_TAKES_POSITION = "chunk_index" in inspect.signature(FeedbackReporter.step).parameters

__all__ = [
    "IGNORE_INDEX",
    "KEY_SHIFT",
    "StepFeedback",
    "decode_labels",
    "encode_labels",
    "token_cross_entropy",
]

#: label of tokens without a target (torch's and torchtitan's cross-entropy ignore_index)
IGNORE_INDEX = -100
#: key ids live above this bit of an encoded label; token ids must be below 2**KEY_SHIFT
KEY_SHIFT = 32
_TOKEN_MASK = (1 << KEY_SHIFT) - 1


def encode_labels(labels: torch.Tensor, key_ids: torch.Tensor) -> torch.Tensor:
    """``labels + key_id * 2**32`` for every real label; ``-100`` (padding) stays ``-100``."""
    if labels.shape != key_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and key_ids {tuple(key_ids.shape)} differ")
    labels = labels.to(torch.long)
    if bool((labels > _TOKEN_MASK).any()):
        raise ValueError(f"token ids must be < 2**{KEY_SHIFT} to carry a key id")
    encoded = labels + (key_ids.to(torch.long).clamp(min=0) << KEY_SHIFT)
    return torch.where(labels < 0, labels, encoded)


def decode_labels(encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`encode_labels`: (labels, key ids), ``-1`` as the key of ignored labels."""
    ignored = encoded < 0
    labels = torch.where(ignored, encoded, encoded & _TOKEN_MASK)
    keys = torch.where(ignored, torch.full_like(encoded, -1), encoded >> KEY_SHIFT)
    return labels, keys


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of every token (float32, shape of ``labels``; 0 where the label is -100).

    ``logits`` has the shape of ``labels`` plus the vocabulary; the sum of the result is what
    torchtitan's ``cross_entropy_loss`` (reduction ``sum``) returns.
    """
    flat = F.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), reduction="none", ignore_index=IGNORE_INDEX
    )
    return flat.view(labels.shape)


class StepFeedback:
    """Collects the per-token losses of one optimizer step and reports them at its end.

    The trainer calls :meth:`begin` before the step (from then on :meth:`add` records),
    the loss calls :meth:`add` for every (micro)batch or chunk, and the trainer calls
    :meth:`end` after the optimizer step. ``contributes=False`` ranks (pipeline stages
    without the loss, tensor-parallel replicas of a rank that does report) add nothing
    but still take part in the reduction, so that every rank calls :meth:`end`.
    ``reporter`` may be None to only collect (tests, custom senders).
    """

    def __init__(self, reporter: FeedbackReporter | None, num_keys: int, *, contributes: bool = True) -> None:
        self.reporter = reporter
        self.num_keys = num_keys
        self.contributes = contributes
        self.active = False
        self._losses: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self.steps_sent = 0

    def begin(self) -> None:
        self._losses.clear()
        self._keys.clear()
        self.active = True

    def add(self, token_losses: torch.Tensor, key_ids: torch.Tensor) -> None:
        if not (self.active and self.contributes):
            return
        if token_losses.shape != key_ids.shape:
            raise ValueError(
                f"token_losses {tuple(token_losses.shape)} and key_ids {tuple(key_ids.shape)} differ"
            )
        self._losses.append(token_losses.detach().reshape(-1))
        self._keys.append(key_ids.detach().reshape(-1))

    def collected(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token losses, key ids) recorded since :meth:`begin`, flattened."""
        if not self._losses:
            return torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.long)
        return torch.cat(self._losses), torch.cat(self._keys)

    def end(self, step: int, position: int | None = None) -> Any:
        """Stop recording and hand the step to the reporter (which sums, reduces and sends).

        ``position``: the highest chunk index this rank has trained on (the reporter sends
        the maximum over the ranks, so that the mixture change lands at a chunk that
        depends on the data alone); None when unknown.
        """
        self.active = False
        losses, keys = self.collected()
        self._losses.clear()
        self._keys.clear()
        if self.reporter is None:
            return None
        if _STEP_TAKES_POSITION and position is not None and position >= 0:
            sent = self.reporter.step(step, losses, keys, position)
        else:
            sent = self.reporter.step(step, losses, keys)
        if sent is not None:
            self.steps_sent += 1
        return sent
