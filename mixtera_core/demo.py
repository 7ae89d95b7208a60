"""A small, real, multi-domain demo corpus built from text every Python installation ships.

Examples, tests and benchmarks need data with several *domains* in several *formats*
without downloading anything. Every CPython installation carries plenty of real text:

- ``language=python``: the standard library's ``.py`` sources (test suites, site-packages
  and build-specific files left out), one sample per file, big files split into pieces of
  at most :data:`PYTHON_PIECE_LINES` lines;
- ``language=c``: CPython's C headers (``sysconfig.get_paths()["include"]``); a Python
  without headers simply has no ``c`` domain, recorded in :attr:`DemoCorpus.missing`;
- ``language=en``: English prose, namely the module/class/function docstrings of the
  standard library (extracted with :mod:`ast`, never imported) and the language reference
  topics bundled for ``help()`` in ``pydoc_data/topics.py``.

:func:`build_demo_corpus` writes them as three datasets in three formats, each with the
``parser_options`` the built-in ``fields`` parser needs to register it:

=========== ============================== ================ ======================================
dataset     files                          format           samples
=========== ============================== ================ ======================================
code        ``code/code-NNNNN.jsonl.zst``  ``jsonl``        python + c, ``{"text", "meta": {...}}``,
                                                            each shard several zstd frames
docstrings  ``docstrings/*.parquet``       ``parquet``      en, columns ``text`` + struct ``meta``,
                                                            several row groups per shard
reference   ``reference/*.tar``            ``webdataset``   en, ``KEY.txt`` + ``KEY.json``
=========== ============================== ================ ======================================

Every sample has the properties ``language``, ``license`` (``psf``), ``source`` and the
list-valued ``topics`` (e.g. ``["asyncio", "package"]``: top-level module and kind).
The output is a pure function of the Python installation, ``max_samples_per_domain`` and
``seed``: file lists are sorted, sampling uses a seeded :class:`random.Random`, archives
carry fixed timestamps, so building twice gives byte-identical files.

Run ``python -m mixtera_core.demo OUT_DIR`` to build one and print what was written.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import sys
import sysconfig
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

#: Samples per domain and dataset when ``max_samples_per_domain`` is None.
DEFAULT_SAMPLES_PER_DOMAIN = 1000
#: Python and C files are split into pieces of at most this many lines.
PYTHON_PIECE_LINES = 200
#: Reference topics are split at paragraph boundaries into pieces of about this many lines.
PROSE_PIECE_LINES = 60
#: Docstrings shorter than this are not prose worth training on.
MIN_DOCSTRING_CHARS = 80
#: A new zstd frame starts every this many lines of a jsonl.zst shard (fewer for tiny shards).
LINES_PER_FRAME = 256
#: Parquet row groups hold at most this many rows (fewer for tiny shards).
ROWS_PER_GROUP = 128

LICENSE = "psf"
_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "lib-dynload",
        "pydoc_data",
    }
)
_TAR_MTIME = 1_700_000_000  # fixed, so tars do not depend on the clock

_META_TYPE = pa.struct(
    [
        ("language", pa.string()),
        ("license", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("kind", pa.string()),
        ("name", pa.string()),
        ("topics", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class DemoDataset:
    """One written dataset: register it with ``location``, ``format`` and ``parser="fields"``."""

    name: str
    location: str
    format: str
    parser_options: dict[str, Any]
    #: language (the domain) -> number of samples.
    counts: dict[str, int]
    files: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class DemoCorpus:
    """What :func:`build_demo_corpus` wrote."""

    root: str
    datasets: dict[str, DemoDataset]
    #: domain -> why it has no samples on this installation (e.g. no C headers installed).
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def domain_counts(self) -> dict[str, int]:
        """language -> samples over all datasets."""
        out: dict[str, int] = {}
        for ds in self.datasets.values():
            for lang, n in ds.counts.items():
                out[lang] = out.get(lang, 0) + n
        return dict(sorted(out.items()))

    @property
    def num_samples(self) -> int:
        return sum(ds.num_samples for ds in self.datasets.values())

    def summary(self) -> str:
        lines = [f"demo corpus in {self.root}: {self.num_samples} samples"]
        for ds in self.datasets.values():
            counts = ", ".join(f"{k}={v}" for k, v in ds.counts.items())
            lines.append(f"  {ds.name:<11} {ds.format:<11} {len(ds.files)} files  {counts}")
        for domain, why in self.missing.items():
            lines.append(f"  (no {domain}: {why})")
        return "\n".join(lines)


def _parser_options(first: str) -> dict[str, Any]:
    return {
        "language": f"{first}.language",
        "license": f"{first}.license",
        "source": f"{first}.source",
        "topics": {"path": f"{first}.topics", "type": "list[str]"},
    }


def build_demo_corpus(
    out_dir: str | os.PathLike[str], *, max_samples_per_domain: int | None = None, seed: int = 0
) -> DemoCorpus:
    """Write the demo corpus under ``out_dir`` and describe it.

    ``max_samples_per_domain`` caps the samples of each language in each dataset
    (default :data:`DEFAULT_SAMPLES_PER_DOMAIN`); which files are taken when the cap bites
    depends only on ``seed``. Shards from an earlier build in the same place are replaced.
    """
    cap = DEFAULT_SAMPLES_PER_DOMAIN if max_samples_per_domain is None else int(max_samples_per_domain)
    if cap < 1:
        raise ValueError(f"max_samples_per_domain must be at least 1, got {max_samples_per_domain!r}")
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    include = Path(paths["include"])
    missing: dict[str, str] = {}

    py_files = _python_files(stdlib)
    python = _take(_code_samples(stdlib, _shuffled(py_files, seed, "python"), "python"), cap)
    headers = sorted(include.rglob("*.h")) if include.is_dir() else []
    if headers:
        c = _take(_code_samples(include, _shuffled(headers, seed, "c"), "c"), cap)
    else:
        c = []
        missing["c"] = f"no C headers under {include} (install the Python development headers)"
    docs = _take(_docstring_samples(stdlib, _shuffled(py_files, seed, "docstrings")), cap)
    topics_file = stdlib / "pydoc_data" / "topics.py"
    reference = _take(_reference_samples(topics_file), cap) if topics_file.is_file() else []
    if not docs:
        missing["en/docstrings"] = f"no docstrings found under {stdlib}"
    if not reference:
        missing["en/reference"] = f"no readable {topics_file}"

    datasets: dict[str, DemoDataset] = {}
    code = sorted(python + c, key=_order)
    if code:
        datasets["code"] = _write_jsonl_zst(root / "code", "code", code)
    if docs:
        datasets["docstrings"] = _write_parquet(root / "docstrings", "docstrings", sorted(docs, key=_order))
    if reference:
        datasets["reference"] = _write_webdataset(
            root / "reference", "reference", sorted(reference, key=_order)
        )
    return DemoCorpus(root=str(root), datasets=datasets, missing=missing)


# --------------------------------------------------------------------------- collecting samples


def _order(sample: dict[str, Any]) -> tuple[Any, ...]:
    m = sample["meta"]
    return (m["language"], m["path"], m["kind"], m["name"])


def _shuffled(files: Sequence[Path], seed: int, stream: str) -> list[Path]:
    out = sorted(files)
    random.Random(f"mixtera-demo:{seed}:{stream}").shuffle(out)
    return out


def _take(samples: Iterator[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in samples:
        if len(out) >= cap:
            break
        out.append(s)
    return out


def _python_files(stdlib: Path) -> list[Path]:
    out: list[Path] = []
    if not stdlib.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith((".", "config-"))
        )
        for name in sorted(filenames):
            # _sysconfigdata_* holds this machine's build paths, not library code.
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                out.append(Path(dirpath, name))
    return out


def _read_text(path: Path) -> str | None:
    try:
        with tokenize.open(path) if path.suffix == ".py" else open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError, SyntaxError):
        return None


def _meta(language: str, source: str, path: str, kind: str, name: str, topics: list[str]) -> dict[str, Any]:
    return {
        "language": language,
        "license": LICENSE,
        "source": source,
        "path": path,
        "kind": kind,
        "name": name,
        "topics": topics,
    }


def _code_samples(base: Path, files: Iterable[Path], language: str) -> Iterator[dict[str, Any]]:
    """Pieces of at most PYTHON_PIECE_LINES lines of each file, in the given file order."""
    for path in files:
        text = _read_text(path)
        if text is None or not text.strip():
            continue
        rel = path.relative_to(base).as_posix()
        parts = rel.split("/")
        if language == "python":
            source = "stdlib"
            topics = [parts[0].removesuffix(".py"), "package" if len(parts) > 1 else "module"]
        else:
            source = "headers"
            topics = [parts[0] if len(parts) > 1 else "capi", "header"]
        lines = text.splitlines(keepends=True)
        for i in range(0, len(lines), PYTHON_PIECE_LINES):
            piece = "".join(lines[i : i + PYTHON_PIECE_LINES])
            if piece.strip():
                name = f"{rel}:{i + 1}"
                yield {"text": piece, "meta": _meta(language, source, rel, "file", name, topics)}


def _docstring_samples(stdlib: Path, files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Module, class and function docstrings of at least MIN_DOCSTRING_CHARS, in source order."""
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        rel = path.relative_to(stdlib).as_posix()
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        top = module.split(".")[0]
        for kind, qualname, node in _documented(tree, module):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                yield {"text": doc, "meta": _meta("en", "docstrings", rel, kind, qualname, [top, kind])}


def _documented(node: ast.AST, qualname: str, kind: str = "module") -> Iterator[tuple[str, str, Any]]:
    yield kind, qualname, node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            yield from _documented(child, f"{qualname}.{child.name}", "class")
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _documented(child, f"{qualname}.{child.name}", "function")


def _reference_samples(topics_file: Path) -> Iterator[dict[str, Any]]:
    """The language reference topics of ``help()``, split at paragraphs into short pieces."""
    try:
        tree = ast.parse(topics_file.read_bytes())
        topics = next(
            ast.literal_eval(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "topics" for t in n.targets)
        )
    except (OSError, SyntaxError, ValueError, StopIteration):
        return
    rel = "pydoc_data/topics.py"
    for topic in sorted(topics):
        text = topics[topic]
        if not isinstance(text, str):
            continue
        for part, piece in enumerate(_paragraph_pieces(text, PROSE_PIECE_LINES)):
            meta = _meta(
                "en", "reference", rel, "topic", f"{topic}-{part:03d}", [topic.split("-")[0], "reference"]
            )
            yield {"text": piece, "meta": meta}


def _paragraph_pieces(text: str, max_lines: int) -> Iterator[str]:
    paragraphs = [p.strip("\n") for p in text.split("\n\n")]
    piece: list[str] = []
    n = 0
    for p in paragraphs:
        if not p.strip():
            continue
        k = p.count("\n") + 1
        if piece and n + k > max_lines:
            yield "\n\n".join(piece) + "\n"
            piece, n = [], 0
        piece.append(p)
        n += k + 1
    if piece:
        yield "\n\n".join(piece) + "\n"


# --------------------------------------------------------------------------- writing datasets


def _prepare_dir(directory: Path, name: str, suffix: str) -> None:
    """Create the dataset directory and drop shards an earlier build left there."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{name}-*{suffix}"):
        old.unlink()


def _shards(samples: Sequence[dict[str, Any]], max_shards: int) -> list[list[dict[str, Any]]]:
    """Round-robin samples over shards, so that every shard mixes the domains."""
    n = max(1, min(max_shards, len(samples)))
    return [list(samples[i::n]) for i in range(n)]


def _counts(samples: Iterable[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        lang = s["meta"]["language"]
        out[lang] = out.get(lang, 0) + 1
    return dict(sorted(out.items()))


def _write_jsonl_zst(directory: Path, name: str, samples: Sequence[dict[str, Any]]) -> DemoDataset:
    _prepare_dir(directory, name, ".jsonl.zst")
    cctx = zstandard.ZstdCompressor(level=3)
    files = []
    for i, shard in enumerate(_shards(samples, 4)):
        lines = [json.dumps(s, ensure_ascii=False).encode("utf-8") + b"\n" for s in shard]
        # Several independent frames per shard, like real corpora written in blocks:
        # the reader must not assume one frame per file.
        per_frame = max(1, min(LINES_PER_FRAME, math.ceil(len(lines) / 4)))
        path = directory / f"{name}-{i:05d}.jsonl.zst"
        with open(path, "wb") as f:
            for start in range(0, len(lines), per_frame):
                f.write(cctx.compress(b"".join(lines[start : start + per_frame])))
        files.append(str(path))
    return DemoDataset(name, str(directory), "jsonl", _parser_options("meta"), _counts(samples), tuple(files))


def _write_parquet(directory: Path, name: str, samples: Sequence[dict[str, Any]]) -> DemoDataset:
    _prepare_dir(directory, name, ".parquet")
    schema = pa.schema([("text", pa.string()), ("meta", _META_TYPE)])
    files = []
    for i, shard in enumerate(_shards(samples, 3)):
        table = pa.table(
            {"text": [s["text"] for s in shard], "meta": [s["meta"] for s in shard]}, schema=schema
        )
        per_group = max(1, min(ROWS_PER_GROUP, math.ceil(len(shard) / 3)))
        path = directory / f"{name}-{i:05d}.parquet"
        pq.write_table(table, path, row_group_size=per_group, compression="zstd")
        files.append(str(path))
    return DemoDataset(
        name, str(directory), "parquet", _parser_options("meta"), _counts(samples), tuple(files)
    )


def _write_webdataset(directory: Path, name: str, samples: Sequence[dict[str, Any]]) -> DemoDataset:
    from webdataset import TarWriter  # imported lazily: it pulls in a lot

    _prepare_dir(directory, name, ".tar")
    files = []
    for i, shard in enumerate(_shards(samples, 2)):
        path = directory / f"{name}-{i:05d}.tar"
        with open(path, "wb") as f, TarWriter(f, encoder=False, mtime=_TAR_MTIME) as sink:
            for s in shard:
                # Keys may not contain dots: webdataset splits member names at the first one.
                key = s["meta"]["name"].replace(".", "_")
                meta = json.dumps(s["meta"], ensure_ascii=False).encode("utf-8")
                sink.write({"__key__": key, "txt": s["text"].encode("utf-8"), "json": meta})
        files.append(str(path))
    return DemoDataset(
        name, str(directory), "webdataset", _parser_options("json"), _counts(samples), tuple(files)
    )


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mixtera_core.demo", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--max-samples-per-domain", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    corpus = build_demo_corpus(
        args.out_dir, max_samples_per_domain=args.max_samples_per_domain, seed=args.seed
    )
    print(corpus.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
