"""torchtitan integration: a ``[mixtera]`` config section, a dataloader, per-domain feedback.

``pip install 'mixtera[torchtitan]'`` (torchtitan 0.3.0, Python >= 3.11). Importing this
package imports neither torch nor torchtitan; the names below load on first use, so the
``torchtitan`` trainer-adapter plugin can be listed without torchtitan installed.

- :class:`MixteraConfig`, :func:`load_spec` (:mod:`.config`, pure Python): the ``[mixtera]``
  section and the query/mixture spec file.
- :class:`TokenBatchLoader`, :func:`connect`, :func:`map_ranks` (:mod:`.data`, torch): batches
  in torchtitan's shape, exact state_dict round trips, dp rank -> (dp_group, node).
- :func:`encode_labels`, :func:`decode_labels`, :func:`token_cross_entropy`, :class:`StepFeedback`
  (:mod:`.feedback`, torch): per-domain losses for a dynamic mixture.
- :class:`MixteraTrainer`, :class:`MixteraDataLoader`, :class:`MixteraCrossEntropyLoss`,
  :func:`with_mixtera` (:mod:`.trainer`, torchtitan): the torchtitan components.

Launch: ``torchrun ... -m torchtitan.train --module mixtera_integrations.torchtitan --config
llama3_8b --mixtera.server HOST:PORT --mixtera.job_id ID --mixtera.spec mixture.toml``
(:mod:`.config_registry`); the guide is ``docs/torchtitan.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import MixteraConfig, MixtureSpec, load_spec
    from .data import MixteraSession, TokenBatchLoader, connect, document_positions, map_ranks
    from .feedback import StepFeedback, decode_labels, encode_labels, token_cross_entropy
    from .trainer import MixteraCrossEntropyLoss, MixteraDataLoader, MixteraTrainer, with_mixtera

_WHERE = {
    "MixteraConfig": "config",
    "MixtureSpec": "config",
    "load_spec": "config",
    "MixteraSession": "data",
    "TokenBatchLoader": "data",
    "connect": "data",
    "document_positions": "data",
    "map_ranks": "data",
    "StepFeedback": "feedback",
    "decode_labels": "feedback",
    "encode_labels": "feedback",
    "token_cross_entropy": "feedback",
    "MixteraCrossEntropyLoss": "trainer",
    "MixteraDataLoader": "trainer",
    "MixteraTrainer": "trainer",
    "with_mixtera": "trainer",
}

__all__ = [
    "MixteraConfig",
    "MixteraCrossEntropyLoss",
    "MixteraDataLoader",
    "MixteraSession",
    "MixteraTrainer",
    "MixtureSpec",
    "StepFeedback",
    "TokenBatchLoader",
    "connect",
    "decode_labels",
    "document_positions",
    "encode_labels",
    "load_spec",
    "map_ranks",
    "token_cross_entropy",
    "with_mixtera",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
