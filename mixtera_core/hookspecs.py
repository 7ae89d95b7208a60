"""Hook specifications: every extension point of Mixtera.

A plugin is any module or object with functions marked ``@hookimpl`` whose names match
the specifications below. Mixtera's own formats and parsers (``mixtera_plugins``) are
plugins of exactly this kind; a third-party package adds its own by declaring

.. code-block:: toml

    [project.entry-points.mixtera]
    my_plugin = "my_package.mixtera_plugin"

Each hook returns a list of plugin objects; every object has a ``name`` attribute, and
names must be unique per kind across all installed plugins. Plugins are looked up by
name on the machine where the work runs (the client, or the server): no code ever
crosses the network.
"""

from __future__ import annotations

import pluggy

from .interfaces import DatasetFormat, MetadataParser, MixingAlgorithm, TokenizerFactory, TrainerAdapter

PROJECT_NAME = "mixtera"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def mixtera_formats() -> list[DatasetFormat]:
    """Dataset formats: instances of :class:`~mixtera_core.interfaces.DatasetFormat`.

    A format enumerates the samples of a file at registration (``scan``) and reads
    half-open ranges of sample indices when streaming (``read``).
    """


@hookspec
def mixtera_parsers() -> list[type[MetadataParser]]:
    """Metadata parsers: subclasses of :class:`~mixtera_core.interfaces.MetadataParser`.

    Classes, not instances: the user's ``parser_options`` are passed to the constructor.
    """


@hookspec
def mixtera_tokenizers() -> list[TokenizerFactory]:
    """Tokenizer factories: instances of :class:`~mixtera_core.interfaces.TokenizerFactory`.

    A factory loads a tokenizer from a local path or a packaged encoding; the streaming
    path loads it once per worker process.
    """


@hookspec
def mixtera_mixing_algorithms() -> list[type[MixingAlgorithm]]:
    """Dynamic mixing algorithms: subclasses of :class:`~mixtera_core.interfaces.MixingAlgorithm`.

    ``DynamicMixture(initial, algorithm=name, **options)`` instantiates the class with the
    initial weights and the options.
    """


@hookspec
def mixtera_trainer_adapters() -> list[TrainerAdapter]:
    """Trainer adapters: instances of :class:`~mixtera_core.interfaces.TrainerAdapter`."""
