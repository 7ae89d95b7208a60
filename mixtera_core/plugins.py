"""The plugin manager: built-ins plus everything installed under the entry-point group ``mixtera``."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from . import hookspecs
from .errors import UnknownFormatError, UnknownParserError, UnknownPluginError
from .interfaces import (
    DatasetFormat,
    MetadataParser,
    MixingAlgorithm,
    TokenizerFactory,
    TrainerAdapter,
    check_plugin_name,
)

#: Built-in plugin modules, loaded by name exactly like pytest loads its defaults. The
#: core never imports them directly; they use the same hooks as any third-party package.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "mixtera_plugins.formats",
    "mixtera_plugins.parsers",
    "mixtera_plugins.tokenizers",
    "mixtera_plugins.mixing",
)

KINDS: dict[str, str] = {
    "format": "mixtera_formats",
    "parser": "mixtera_parsers",
    "tokenizer": "mixtera_tokenizers",
    "mixing_algorithm": "mixtera_mixing_algorithms",
    "trainer_adapter": "mixtera_trainer_adapters",
}


class PluginManager:
    """Collects the plugins of each kind and finds them by name.

    ``load_entrypoints=False`` gives a manager with the built-ins only (handy in tests);
    ``extra`` registers additional plugin objects or modules programmatically.
    """

    def __init__(self, load_entrypoints: bool = True, extra: Iterable[Any] = ()) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        for modname in BUILTIN_PLUGINS:
            self._pm.register(importlib.import_module(modname), name=modname)
        if load_entrypoints:
            self._pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
        for plugin in extra:
            self._pm.register(plugin)
        self._cache: dict[str, dict[str, tuple[Any, str]]] = {}
        self._lock = threading.Lock()

    def register(self, plugin: Any, name: str | None = None) -> None:
        """Register a plugin module/object at run time (e.g. from a notebook)."""
        with self._lock:
            self._pm.register(plugin, name=name)
            self._cache.clear()

    def _collect(self, kind: str) -> dict[str, tuple[Any, str]]:
        with self._lock:
            if kind in self._cache:
                return self._cache[kind]
            hook = getattr(self._pm.hook, KINDS[kind])
            found: dict[str, tuple[Any, str]] = {}
            # Call each implementation separately so that a duplicate can name both providers.
            for impl in hook.get_hookimpls():
                provider = self._pm.get_name(impl.plugin) or repr(impl.plugin)
                for obj in impl.function() or ():
                    name = check_plugin_name(kind, obj)
                    if name in found:
                        raise ValueError(
                            f"two {kind} plugins are named {name!r}: provided by {found[name][1]} and "
                            f"by {provider}; uninstall one of them"
                        )
                    found[name] = (obj, provider)
            self._cache[kind] = found
            return found

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect(kind))

    def describe(self) -> dict[str, list[tuple[str, str]]]:
        """kind -> sorted (name, providing plugin) pairs, for ``mixtera plugins``."""
        return {kind: sorted((n, prov) for n, (_, prov) in self._collect(kind).items()) for kind in KINDS}

    def _get(self, kind: str, name: str, error: Callable[[str, list[str]], Exception] | None = None) -> Any:
        found = self._collect(kind)
        if name not in found:
            if error is not None:
                raise error(name, sorted(found))
            raise UnknownPluginError(kind.replace("_", " "), name, found)
        return found[name][0]

    def format(self, name: str) -> DatasetFormat:
        return self._get("format", name, UnknownFormatError)

    def parser(self, name: str, **options: Any) -> MetadataParser:
        cls = self._get("parser", name, UnknownParserError)
        return cls(**options)

    def tokenizer_factory(self, name: str) -> TokenizerFactory:
        return self._get("tokenizer", name)

    def mixing_algorithm(self, name: str) -> type[MixingAlgorithm]:
        return self._get("mixing_algorithm", name)

    def trainer_adapter(self, name: str) -> TrainerAdapter:
        return self._get("trainer_adapter", name)


_default: PluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (built-ins + entry points), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PluginManager()
        return _default
