"""Built-in tokenizers: ``hf`` (Hugging Face ``tokenizers`` / transformers) and ``tiktoken``.

The backend packages are optional (``pip install 'mixtera[tokenizers]'``) and imported only
when a tokenizer is loaded, so listing plugins never needs them.
"""

from __future__ import annotations

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import TokenizerFactory

from ._common import LoadedTokenizer, TokenizerLoadError, TokenizerNotFoundError
from .hf import HFTokenizer, HFTokenizerFactory
from .tiktoken_bpe import TiktokenFactory, TiktokenTokenizer


@hookimpl
def mixtera_tokenizers() -> list[TokenizerFactory]:
    return [HFTokenizerFactory(), TiktokenFactory()]


__all__ = [
    "HFTokenizer",
    "HFTokenizerFactory",
    "LoadedTokenizer",
    "TiktokenFactory",
    "TiktokenTokenizer",
    "TokenizerLoadError",
    "TokenizerNotFoundError",
]
