"""torchtitan's model configs, fed by Mixtera: ``--module mixtera_integrations.torchtitan --config NAME``.

torchtitan 0.3.0 selects a run's config with ``--module`` (a module holding a
``config_registry``) and ``--config`` (a function in it returning a ``Trainer.Config``). This
module answers every config function of torchtitan's own models
(``torchtitan.models.<model>.config_registry``: ``llama3_debugmodel``, ``llama3_8b``,
``qwen3_1_7b``, ...) with the same config turned into a
:class:`~mixtera_integrations.torchtitan.trainer.MixteraTrainer.Config` by
:func:`~mixtera_integrations.torchtitan.trainer.with_mixtera`; the ``[mixtera]`` section then
comes from the command line::

    torchrun --nproc_per_node 8 -m torchtitan.train \\
        --module mixtera_integrations.torchtitan --config llama3_8b \\
        --mixtera.server 10.0.0.5:7878 --mixtera.job_id run-1 --mixtera.spec mixture.toml

Only configs of the plain ``Trainer`` can be wrapped (not e.g. Flux's own trainer).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__: list[str] = []


def _find(name: str) -> Any:
    from torchtitan.models import _supported_models

    # try the models whose name prefixes the config name first (llama3_8b -> llama3), longest first
    ordered = sorted(_supported_models, key=lambda m: (not name.startswith(m + "_"), -len(m), m))
    for model in ordered:
        try:
            registry = importlib.import_module(f"torchtitan.models.{model}.config_registry")
        except Exception:  # noqa: BLE001 - a model whose optional dependencies are missing
            continue
        fn = getattr(registry, name, None)
        if callable(fn):
            return fn
    return None


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    fn = _find(name)
    if fn is None:
        raise AttributeError(
            f"module {__name__!r} wraps torchtitan's model config functions, and none is named {name!r}"
        )

    def config() -> Any:
        from .trainer import with_mixtera

        return with_mixtera(fn())

    config.__name__ = name
    config.__doc__ = f"torchtitan's {fn.__module__}.{name}() with a Mixtera dataloader and [mixtera] section."
    return config
