from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import zstandard

# a stream waiting for a mixture no feedback decides fails fast in tests (inherited by workers)
os.environ.setdefault("MIXTERA_MIXTURE_TIMEOUT", "30")

from mixtera_core import MixteraClient  # noqa: E402


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


_CYRILLIC = dict(
    zip(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "абцдефгхіжклмнопкрстувшхйзАБЦДЕФГХІЖКЛМНОПКРСТУВШХЙЗ",
        strict=True,
    )
)


def hetero_corpus(root: Path, per_key: int = 600) -> dict[str, Any]:
    """A corpus whose documents differ on purpose in length, script and file format.

    - ``lang=python`` (jsonl.zst, 2 shards): standard-library sources cut at ``def``/``class``
      lines: a one-line stub next to a 300-line function.
    - ``lang=c`` (parquet, 2 files): CPython's C headers cut at blank lines, plus whole headers
      (up to 8 kB).
    - ``lang=uk`` (jsonl.gz): standard-library docstrings in Cyrillic letters (2-byte UTF-8),
      a few dozen characters to several pages (up to 8,000 characters).

    Returns ``{"root": root, "register": [(name, location, format, parser_options)]}``.
    """
    import ast
    import os
    import re
    import sysconfig

    import pyarrow as pa
    import pyarrow.parquet as pq

    stdlib = sorted(Path(os.__file__).parent.glob("*.py"))
    python: list[str] = []
    docstrings: list[str] = []
    for f in stdlib:
        text = f.read_text(encoding="utf-8", errors="replace")
        python.extend(p for p in re.split(r"\n(?=def |class )", text) if p.strip())
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    docstrings.append(doc)
        if len(python) >= per_key and len(docstrings) >= per_key:
            break
    headers = sorted(Path(sysconfig.get_paths()["include"]).rglob("*.h"))
    c_docs: list[str] = []
    for h in headers:
        text = h.read_text(encoding="utf-8", errors="replace")
        c_docs.append(text[:8000])  # whole headers (cut at 8 kB)
        c_docs.extend(p for p in text.split("\n\n") if p.strip())
        if len(c_docs) >= per_key:
            break
    uk: list[str] = []
    for i, doc in enumerate(docstrings[:per_key]):
        body = "".join(_CYRILLIC.get(ch, ch) for ch in doc)
        uk.append((body * (1 + (i % 7 == 0) * 6))[:8000])  # every 7th document several pages long
    python, c_docs = python[:per_key], c_docs[:per_key]
    half = len(python) // 2
    write_jsonl(
        root / "python" / "a.jsonl.zst", [{"text": t, "lang": "python"} for t in python[:half]], "zst"
    )
    write_jsonl(
        root / "python" / "b.jsonl.zst", [{"text": t, "lang": "python"} for t in python[half:]], "zst"
    )
    (root / "c").mkdir(parents=True, exist_ok=True)
    third = len(c_docs) // 3
    for name, part in (("a", c_docs[:third]), ("b", c_docs[third:])):
        pq.write_table(pa.table({"text": part, "lang": ["c"] * len(part)}), root / "c" / f"{name}.parquet")
    write_jsonl(root / "uk" / "a.jsonl.gz", [{"text": t, "lang": "uk"} for t in uk], "gz")
    fields = {"lang": "lang"}
    return {
        "root": root,
        "register": [
            ("python", str(root / "python"), "jsonl", fields),
            ("c", str(root / "c"), "parquet", fields),
            ("uk", str(root / "uk"), "jsonl", fields),
        ],
    }


def register_corpus(client: Any, corpus: dict[str, Any]) -> None:
    for name, location, fmt, fields in corpus["register"]:
        client.register_dataset(name, location, format=fmt, parser_options=fields)


_CJK = {ch: chr(0x4E00 + i * 37) for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz")}


def skewed_corpus(root: Path, longest: int = 20_000) -> dict[str, Any]:
    """A corpus built to break token estimates: within each component, shards differ in
    document length *and* script, and components differ in format. ``longest`` caps every
    document (in characters).

    - ``lang=prose`` (jsonl.zst, 3 shards): short English docstrings; the same docstrings in
      Cyrillic letters repeated to several pages; medium ones in CJK characters (3-byte UTF-8).
    - ``lang=code`` (jsonl.gz, 2 shards): one-line ``def`` stubs; whole standard-library
      modules (up to 20 kB).
    - ``lang=c`` (parquet, 2 files): paragraphs of CPython's C headers; whole headers.
    """
    import ast
    import os
    import sysconfig

    import pyarrow as pa
    import pyarrow.parquet as pq

    sources = sorted(Path(os.__file__).parent.glob("*.py"))[:120]
    docs: list[str] = []
    stubs: list[str] = []
    modules: list[str] = []
    for f in sources:
        text = f.read_text(encoding="utf-8", errors="replace")
        modules.append(text[:20_000])
        stubs.extend(line for line in text.splitlines() if line.startswith("def "))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        docs.extend(
            d
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and (d := ast.get_docstring(node))
        )
    short = [d[:300] for d in docs[:900]]
    cyrillic = [("".join(_CYRILLIC.get(ch, ch) for ch in d) + "\n") * 12 for d in docs[900:1000]]
    cjk = ["".join(_CJK.get(ch, ch) for ch in d)[:1500] for d in docs[1000:1300]]

    def docs_of(texts: list[str], lang: str) -> list[dict[str, str]]:
        return [{"text": t[:longest], "lang": lang} for t in texts]

    write_jsonl(root / "prose" / "a.jsonl.zst", docs_of(short, "prose"), "zst")
    write_jsonl(root / "prose" / "b.jsonl.zst", docs_of([t[:6000] for t in cyrillic], "prose"), "zst")
    write_jsonl(root / "prose" / "c.jsonl.zst", docs_of(cjk, "prose"), "zst")
    write_jsonl(root / "code" / "a.jsonl.gz", docs_of(stubs[:1500], "code"), "gz")
    write_jsonl(root / "code" / "b.jsonl.gz", docs_of(modules, "code"), "gz")
    headers = sorted(Path(sysconfig.get_paths()["include"]).rglob("*.h"))[:150]
    paragraphs = [p for h in headers for p in h.read_text(errors="replace").split("\n\n") if p.strip()][:2000]
    whole = [h.read_text(errors="replace")[: min(12_000, longest)] for h in headers]
    paragraphs = [p[:longest] for p in paragraphs]
    (root / "c").mkdir(parents=True, exist_ok=True)
    for name, part in (("a", paragraphs), ("b", whole)):
        pq.write_table(pa.table({"text": part, "lang": ["c"] * len(part)}), root / "c" / f"{name}.parquet")
    fields = {"lang": "lang"}
    return {
        "root": root,
        "register": [
            ("prose", str(root / "prose"), "jsonl", fields),
            ("code", str(root / "code"), "jsonl", fields),
            ("c", str(root / "c"), "parquet", fields),
        ],
    }
