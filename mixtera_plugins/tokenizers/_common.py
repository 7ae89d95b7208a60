"""What the tokenizer backends share: the spec, pickling by re-loading, option checks, errors."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

from mixtera_core.errors import MixteraError
from mixtera_core.interfaces import TokenizerFactory

#: ``(factory name, source, options)``: everything needed to load the same tokenizer again.
TokenizerSpec = tuple[str, str, dict[str, Any]]


#: Special-token names tried in order when neither an option nor a config names BOS / EOS.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|bos|>")


class TokenizerLoadError(MixteraError, ValueError):
    """A tokenizer cannot be loaded: bad source, bad option, or a missing optional package."""


class TokenizerNotFoundError(TokenizerLoadError, FileNotFoundError):
    """A tokenizer source path does not exist."""


def require(module: str, factory: str, extra: str = "tokenizers") -> ModuleType:
    """Import an optional backend package or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TokenizerLoadError(
            f"the {factory!r} tokenizer needs the Python package {module!r}, which is not installed "
            f"({e}); install it with: pip install 'mixtera[{extra}]'"
        ) from None


def check_options(factory: str, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TokenizerLoadError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for the {factory!r} tokenizer "
            f"(accepted: {', '.join(allowed)})"
        )


def _reload(factory: TokenizerFactory, source: str, options: dict[str, Any]) -> Any:
    return factory.load(source, **options)


class LoadedTokenizer:
    """Base of the built-in tokenizers (see :class:`mixtera_core.interfaces.Tokenizer`).

    ``spec`` is ``(factory_name, source, options)``. Pickling stores only the factory and
    the spec, and unpickling loads the tokenizer again from its source: native tokenizer
    objects never go through pickle, and a torch DataLoader worker started with ``spawn``
    pays one load, as it would with ``fork``.
    """

    factory: ClassVar[TokenizerFactory]

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    spec: TokenizerSpec

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, ...]:
        name, source, options = self.spec
        return (_reload, (self.factory, source, dict(options)))

    def __repr__(self) -> str:
        name, source, options = self.spec
        opts = "".join(f", {k}={v!r}" for k, v in options.items())
        return (
            f"<{type(self).__name__} {name}:{source!r}{opts} vocab_size={self.vocab_size} "
            f"bos_id={self.bos_id} eos_id={self.eos_id}>"
        )
