from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from mixtera_core import MixteraClient


def write_jsonl(path: Path, records: Iterable[Any], compression: str | None = None) -> Path:
    """Write records (dicts, or raw strings written verbatim) as one JSON line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    data = ("\n".join(lines) + "\n").encode()
    if compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    elif compression == "gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


@pytest.fixture
def client(tmp_path: Path):
    c = MixteraClient.local(tmp_path / "db")
    yield c
    c.close()


def stdlib_text(max_bytes: int = 300_000) -> str:
    """Deterministic natural-ish text: the first Python standard-library sources, sorted by name."""
    import os

    out: list[str] = []
    size = 0
    for f in sorted(Path(os.__file__).parent.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        size += len(text.encode())
        if size >= max_bytes:
            break
    return "".join(out)[:max_bytes]


@pytest.fixture(scope="session")
def small_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (vocab 1000) trained on stdlib sources, saved as tokenizer.json.

    Special tokens: ``<|endoftext|>`` (id 0) and ``<s>`` (id 1). Needs ``tokenizers``
    (``pip install 'mixtera[tokenizers]'``); tests using it are skipped without it.
    """
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = stdlib_text()
    tok.train_from_iterator((text[i : i + 4096] for i in range(0, len(text), 4096)), trainer=trainer)
    path = tmp_path_factory.mktemp("small_bpe") / "tokenizer.json"
    tok.save(str(path))
    return path
