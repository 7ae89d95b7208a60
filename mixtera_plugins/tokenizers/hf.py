"""The ``hf`` tokenizer: Hugging Face ``tokenizers`` from a local ``tokenizer.json`` or model directory.

``source`` is a local path, never a hub name (Mixtera does not download at run time):

- a ``tokenizer.json`` file, loaded with ``tokenizers.Tokenizer.from_file``;
- a directory written by ``save_pretrained``: loaded with
  ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)`` when transformers is
  installed, otherwise the directory's ``tokenizer.json`` is loaded with ``tokenizers`` and the
  special tokens are read from ``tokenizer_config.json`` / ``special_tokens_map.json``.

Options:

- ``bos_token`` / ``eos_token``: token strings, or None for "no such token". By default they
  come from transformers' ``bos_token``/``eos_token`` (or the directory's config files), and for
  a bare ``tokenizer.json`` from the first of the usual names present in the vocabulary
  (``<|endoftext|>``, ``</s>``, ... for EOS; ``<s>``, ``<|begin_of_text|>``, ... for BOS).
- ``split_special_tokens``: when True, special-token strings that occur inside a document
  (say a literal ``<|endoftext|>``) are encoded as plain text instead of as the special id.
  Default False, which is what ``tokenizers`` itself does.

``encode_batch`` runs the Rust batch encoder (parallel, without the GIL) with
``add_special_tokens=False``: BOS/EOS are added by the packer, not here. Truncation and
padding stored in a ``tokenizer.json`` are switched off so that no document is cut.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixtera_core.interfaces import TokenizerFactory

from ._common import (
    BOS_CANDIDATES,
    EOS_CANDIDATES,
    LoadedTokenizer,
    TokenizerLoadError,
    TokenizerNotFoundError,
    check_options,
    require,
)

OPTIONS = ("bos_token", "eos_token", "split_special_tokens")

_UNSET: Any = object()


class HFTokenizer(LoadedTokenizer):
    """A loaded ``hf`` tokenizer. Build it with ``tokenizer_factory("hf").load(path)``."""

    def __init__(
        self,
        spec: tuple[str, str, dict[str, Any]],
        vocab_size: int,
        bos_id: int | None,
        eos_id: int | None,
        backend: Any = None,
        slow: Any = None,
    ) -> None:
        self.spec = spec
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._slow = slow
        self._encode: Callable[..., Any] | None = None
        if backend is not None:
            # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets.
            self._encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        batch = texts if isinstance(texts, list) else list(texts)
        if self._encode is not None:
            return [enc.ids for enc in self._encode(batch, add_special_tokens=False)]
        return [list(ids) for ids in self._slow(batch, add_special_tokens=False)["input_ids"]]


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string, or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_special_tokens(directory: Path) -> dict[str, str | None]:
    """bos_token / eos_token named by a save_pretrained directory's config files."""
    found: dict[str, str | None] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = directory / fname
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerLoadError(f"{f}: cannot read the tokenizer config: {e}") from None
        for key in ("bos_token", "eos_token"):
            if key in data and key not in found:
                found[key] = _token_content(data[key])
    return found


def _resolve(
    factory: str,
    source: str,
    role: str,
    requested: Any,
    default: str | None,
    token_to_id: Callable[[str], int | None],
    special: Sequence[str],
) -> int | None:
    if requested is _UNSET:
        return None if default is None else token_to_id(default)
    if requested is None:
        return None
    if not isinstance(requested, str):
        raise TokenizerLoadError(f"option {role}_token of the {factory!r} tokenizer must be a string or None")
    tid = token_to_id(requested)
    if tid is None:
        raise TokenizerLoadError(
            f"{role}_token={requested!r} is not in the vocabulary of tokenizer {source!r} "
            f"(its special tokens: {', '.join(special) or 'none'}); pass one of them, or None"
        )
    return tid


def _first_present(candidates: Sequence[str], token_to_id: Callable[[str], int | None]) -> str | None:
    return next((c for c in candidates if token_to_id(c) is not None), None)


class HFTokenizerFactory(TokenizerFactory):
    """Loads ``hf`` tokenizers: a local ``tokenizer.json`` or a ``save_pretrained`` directory."""

    name = "hf"

    def load(self, source: str, **options: Any) -> HFTokenizer:
        check_options(self.name, options, OPTIONS)
        spec = (self.name, str(source), dict(options))
        path = Path(source).expanduser()
        if not path.exists():
            raise TokenizerNotFoundError(
                f"hf tokenizer source {str(source)!r} does not exist: pass the local path of a "
                f"tokenizer.json file or of a directory written by save_pretrained() (Mixtera never "
                f"downloads from a model hub; save a hub tokenizer once with "
                f"AutoTokenizer.from_pretrained(name).save_pretrained(directory))"
            )
        if path.is_dir() and importlib.util.find_spec("transformers") is not None:
            return self._load_transformers(path, spec, options)
        tk = require("tokenizers", self.name)
        defaults: dict[str, str | None] = {}
        json_path = path
        if path.is_dir():
            json_path = path / "tokenizer.json"
            if not json_path.is_file():
                raise TokenizerNotFoundError(
                    f"directory {str(path)!r} has no tokenizer.json; pass a tokenizer.json file or a "
                    f"directory saved by a fast tokenizer's save_pretrained() (slow, sentencepiece-only "
                    f"tokenizers need transformers installed)"
                )
            defaults = _config_special_tokens(path)
        try:
            backend = tk.Tokenizer.from_file(str(json_path))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise TokenizerLoadError(f"{json_path}: not a valid tokenizer.json: {e}") from None
        backend.no_truncation()
        backend.no_padding()
        if options.get("split_special_tokens"):
            backend.encode_special_tokens = True
        special = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        token_to_id = backend.token_to_id
        if "bos_token" not in defaults:
            defaults["bos_token"] = _first_present(BOS_CANDIDATES, token_to_id)
        if "eos_token" not in defaults:
            defaults["eos_token"] = _first_present(EOS_CANDIDATES, token_to_id)
        bos_id, eos_id = (
            _resolve(
                self.name,
                str(source),
                role,
                options.get(f"{role}_token", _UNSET),
                defaults[f"{role}_token"],
                token_to_id,
                special,
            )
            for role in ("bos", "eos")
        )
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
        return HFTokenizer(spec, vocab_size, bos_id, eos_id, backend=backend)

    def _load_transformers(self, path: Path, spec: Any, options: Mapping[str, Any]) -> HFTokenizer:
        transformers = require("transformers", self.name, extra="hf")
        kwargs: dict[str, Any] = {"local_files_only": True}
        if options.get("split_special_tokens"):
            kwargs["split_special_tokens"] = True
        try:
            hf_tok = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception as e:
            raise TokenizerLoadError(
                f"{path}: transformers cannot load a tokenizer from this directory: {e}"
            ) from None
        backend = getattr(hf_tok, "backend_tokenizer", None) if getattr(hf_tok, "is_fast", False) else None
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
            if options.get("split_special_tokens"):
                backend.encode_special_tokens = True
        vocab = hf_tok.get_vocab()

        def token_to_id(token: str) -> int | None:
            tid = vocab.get(token)
            return int(tid) if tid is not None else None

        special = list(getattr(hf_tok, "all_special_tokens", []))
        bos_id, eos_id = (
            _resolve(
                self.name,
                str(path),
                role,
                options.get(f"{role}_token", _UNSET),
                _token_content(getattr(hf_tok, f"{role}_token", None)),
                token_to_id,
                special,
            )
            for role in ("bos", "eos")
        )
        slow = None if backend is not None else hf_tok
        return HFTokenizer(spec, len(hf_tok), bos_id, eos_id, backend=backend, slow=slow)


HFTokenizer.factory = HFTokenizerFactory()
