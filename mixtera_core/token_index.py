"""The token index: every sample of some datasets tokenized once, read back memory-mapped.

``tokenize(catalog, datasets, spec, ...)`` (``client.tokenize(...)``, ``mixtera tokenize``)
encodes each registered sample exactly as a token-mode stream would,
``bos + tok.encode_batch([text])[0] + eos`` (see :func:`~mixtera_core.streaming.document_specials`),
and stores the ids beside the catalog; :class:`TokenIndex` reads them back without tokenizing.

Layout, one directory per tokenizer fingerprint (:func:`tokenizer_fingerprint`)::

    DB_DIR/tokens/<fingerprint>/
        manifest.json       tokenizer spec, add_bos, add_eos, text_field, vocab_size, dtype, and
                            the identity the fingerprint hashes
        <file_id>.tokens    the token ids of every sample, back to back, little-endian
                            (uint16 when vocab_size <= 65536, else uint32)
        <file_id>.offsets   int64, max_sample_index + 2 entries: the tokens of sample s are
                            tokens[offsets[s]:offsets[s + 1]]; samples not in the catalog have none
        <file_id>.present   (only when some sample index below the highest is not in the catalog)
                            uint8 per sample index: 1 where the catalog has the sample
        <file_id>.json      written last, by atomic rename: the file is complete. Holds the data
                            file's path, size and mtime_ns when it was tokenized, its number of
                            samples and tokens, and a digest of its catalog registration

Every array is written to a ``.tmp`` file and renamed into place, tokens streamed to disk a
batch at a time. A crash leaves temporaries (overwritten next time) and files without their
``.json`` (tokenized again), so ``tokenize`` resumes where it stopped; a rerun skips the files
whose ``.json`` still matches the data file and its registration.

**Refusals.** A data file whose size differs from what registration saw, or whose size or
mtime differs from when it was tokenized, raises :class:`~mixtera_core.errors.TokenIndexStaleError`
naming the file (re-register the dataset, then tokenize again); the catalog keeps no mtime, so
the one recorded at tokenize time is what :meth:`TokenIndex.check` compares at every later use.
A directory whose manifest is corrupt or does not match the settings asked for raises
:class:`~mixtera_core.errors.TokenIndexManifestError`; ``tokenize`` never resumes into it.

**Fingerprint.** sha256 of a canonical JSON of the plugin name, its options, add_bos, add_eos,
text_field and the tokenizer's *content*: the sha256 of the source file (or of the tokenizer
files of a source directory) when the source is a path, which stands in for the path itself
(the same tokenizer.json anywhere gives the same index; another file at the same path another);
otherwise the source string (an encoding name) with the loaded tokenizer's vocab_size, BOS and
EOS ids and class.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import storage
from .catalog import Catalog, FileFingerprint
from .errors import (
    FileChangedError,
    TokenIndexError,
    TokenIndexManifestError,
    TokenIndexStaleError,
    UnknownDatasetError,
)
from .interfaces import DatasetFormat, FieldRef, Tokenizer
from .job import TokenizerSpec, atomic_write
from .plugins import PluginManager, get_plugin_manager
from .streaming import document_specials, load_tokenizer, record_text

TOKENS_DIR = "tokens"
MANIFEST = "manifest.json"
LAYOUT_VERSION = 1
#: documents encoded per ``encode_batch`` call (and written to disk at a time)
BATCH_DOCS = 1000
#: files whose arrays a TokenIndex keeps mapped at once (each mapping counts against vm.max_map_count)
MAX_OPEN_FILES = 1024
_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
#: files of a tokenizer *directory* that are not part of the tokenizer (not hashed)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def index_dir(db_dir: str | os.PathLike[str], fingerprint: str) -> str:
    """``DB_DIR/tokens/<fingerprint>``."""
    return os.path.join(os.path.abspath(os.fspath(db_dir)), TOKENS_DIR, fingerprint)


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32 (little-endian)."""
    return _DTYPES["uint16"] if int(vocab_size) <= 1 << 16 else _DTYPES["uint32"]


# ---------------------------------------------------------------------- fingerprint


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def _file_sha256(path: str) -> str:
    """sha256 of a file's bytes, cached per process by (real path, size, mtime_ns)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest


def _source_content(source: str) -> dict[str, Any] | None:
    """What the tokenizer at a path is: the sha256 of the file, or of each tokenizer file of a
    directory (model weights left out); None when ``source`` is not a path."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return {"sha256": _file_sha256(path)}
    if os.path.isdir(path):
        files = {}
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and not name.lower().endswith(_WEIGHT_SUFFIXES):
                files[name] = _file_sha256(full)
        return {"directory": files}
    return None


def tokenizer_identity(
    spec: TokenizerSpec,
    add_bos: bool,
    add_eos: bool,
    text_field: str = "text",
    plugins: PluginManager | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """The JSON document :func:`tokenizer_fingerprint` hashes (``tokenizer``: the loaded
    tokenizer, when the caller has it; only needed when the source is not a path)."""
    content = _source_content(str(spec.source))
    source: str | None = None
    if content is None:
        tok = tokenizer if tokenizer is not None else load_tokenizer(spec, plugins)
        source = str(spec.source)
        content = {
            "class": f"{type(tok).__module__}.{type(tok).__qualname__}",
            "vocab_size": int(tok.vocab_size),
            "bos_id": None if tok.bos_id is None else int(tok.bos_id),
            "eos_id": None if tok.eos_id is None else int(tok.eos_id),
        }
    return {
        "layout": LAYOUT_VERSION,
        "plugin": spec.name,
        "source": source,
        "options": json.loads(_canonical(dict(spec.options))),
        "add_bos": bool(add_bos),
        "add_eos": bool(add_eos),
        "text_field": str(text_field),
        "content": content,
    }


def _hash_identity(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()[:16]


def tokenizer_fingerprint(
    spec: TokenizerSpec,
    add_bos: bool,
    add_eos: bool,
    text_field: str = "text",
    plugins: PluginManager | None = None,
) -> str:
    """The name of the token index directory for these settings (16 hex digits); see the module
    documentation for what it covers. Loads the tokenizer only when the source is not a path."""
    return _hash_identity(tokenizer_identity(spec, add_bos, add_eos, text_field, plugins))


# ---------------------------------------------------------------------- manifest and per-file metadata


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _bad_manifest(directory: str, why: str) -> TokenIndexManifestError:
    return TokenIndexManifestError(
        f"{os.path.join(directory, MANIFEST)}: {why}. The token index in {directory} cannot be used; "
        f"delete that directory and run tokenize again"
    )


def load_manifest(directory: str, fingerprint: str) -> dict[str, Any]:
    """The manifest of an index directory, checked for consistency with its fingerprint."""
    try:
        manifest = _read_json(os.path.join(directory, MANIFEST))
    except (OSError, ValueError) as e:
        raise _bad_manifest(directory, f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict):
        raise _bad_manifest(directory, "not a JSON object")
    identity = manifest.get("identity")
    if not isinstance(identity, dict) or manifest.get("fingerprint") != fingerprint:
        raise _bad_manifest(directory, f"it does not describe fingerprint {fingerprint}")
    if _hash_identity(identity) != fingerprint:
        raise _bad_manifest(directory, f"its tokenizer settings do not hash to fingerprint {fingerprint}")
    for key in ("add_bos", "add_eos", "text_field"):
        if manifest.get(key) != identity.get(key):
            raise _bad_manifest(
                directory, f"{key} is {manifest.get(key)!r} but the fingerprint is of {identity.get(key)!r}"
            )
    tokenizer = manifest.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("name") != identity.get("plugin"):
        raise _bad_manifest(directory, f"the tokenizer plugin is not {identity.get('plugin')!r}")
    if _canonical(tokenizer.get("options")) != _canonical(identity.get("options")):
        raise _bad_manifest(directory, "the tokenizer options differ from those the fingerprint is of")
    vocab = manifest.get("vocab_size")
    dtype = manifest.get("dtype")
    if not isinstance(vocab, int) or vocab < 1 or dtype not in _DTYPES or _DTYPES[dtype] != dtype_for(vocab):
        raise _bad_manifest(
            directory, f"dtype {dtype!r} does not fit vocab_size {vocab!r} (uint16 up to 65536, else uint32)"
        )
    return manifest


def _meta_path(directory: str, file_id: int, ext: str) -> str:
    return os.path.join(directory, f"{int(file_id)}.{ext}")


def _stale(path: str, dataset: str | None, why: str) -> TokenIndexStaleError:
    which = f"dataset {dataset!r}" if dataset else "its dataset"
    return TokenIndexStaleError(
        f"{path}: {why}. Its samples in the catalog (and any tokens of it) no longer describe it: "
        f"re-register {which} (register_dataset(..., replace=True) / mixtera register --replace), "
        f"then tokenize again"
    )


# ---------------------------------------------------------------------- reading


@dataclass
class _Mapped:
    tokens: np.ndarray
    offsets: np.ndarray
    present: np.ndarray | None  # None: every sample index up to the highest is in the catalog


class TokenIndex:
    """A token index directory, read memory-mapped. Thread-safe; after a fork (DataLoader
    workers) a process opens its own mappings; picklable (the mappings are not pickled).

    ``read`` yields views of read-only memory maps: no copy, no per-token Python work."""

    def __init__(self, directory: str, fingerprint: str, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.manifest = manifest
        self.dtype: np.dtype = _DTYPES[manifest["dtype"]]
        self.vocab_size: int = int(manifest["vocab_size"])
        self._init_caches()

    def _init_caches(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._meta: dict[int, dict[str, Any]] = {}
        self._maps: OrderedDict[int, _Mapped] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "fingerprint": self.fingerprint, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["fingerprint"], state["manifest"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"<TokenIndex {self.fingerprint} {self.manifest['dtype']} vocab_size={self.vocab_size} at {self.directory}>"

    @classmethod
    def open(cls, db_dir: str | os.PathLike[str], fingerprint: str) -> TokenIndex | None:
        """The index of ``fingerprint`` under ``db_dir``, or None when there is none (no directory,
        or one that a tokenize run created without getting to write its manifest). Raises
        :class:`TokenIndexManifestError` for a corrupt or inconsistent manifest."""
        directory = index_dir(db_dir, fingerprint)
        if not os.path.isfile(os.path.join(directory, MANIFEST)):
            return None
        return cls(directory, fingerprint, load_manifest(directory, fingerprint))

    # ------------------------------------------------------------------ metadata

    def file_meta(self, file_id: int) -> dict[str, Any] | None:
        """The ``<file_id>.json`` of a complete file, or None when the file is not (yet) here."""
        file_id = int(file_id)
        meta = self._meta.get(file_id)
        if meta is not None:
            return meta
        try:
            meta = _read_json(_meta_path(self.directory, file_id, "json"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise TokenIndexError(
                f"{_meta_path(self.directory, file_id, 'json')}: unreadable ({e}); delete it and run "
                f"tokenize again (the file is tokenized again)"
            ) from None
        with self._lock:
            self._meta[file_id] = meta
        return meta

    def covers(self, files: Mapping[int, str]) -> bool:
        """Whether every file (file_id -> path) is complete here, tokenized from that path."""
        for fid, path in files.items():
            meta = self.file_meta(fid)
            if meta is None or meta.get("path") != path:
                return False
        return True

    def check(
        self, files: Mapping[int, str], fingerprints: Mapping[int, FileFingerprint | None] | None = None
    ) -> None:
        """Raise :class:`TokenIndexStaleError` for the first file whose size or mtime differs
        from when it was tokenized, or that no longer matches its catalog fingerprint
        (:class:`TokenIndexError` for one not tokenized here).

        ``fingerprints`` (file id -> the catalog's :class:`FileFingerprint`) default to those of
        the catalog of this index's DB_DIR when one is open in this process; without either,
        size and mtime are all that is compared."""
        if fingerprints is None:
            catalog = Catalog.opened(os.path.dirname(os.path.dirname(os.path.normpath(self.directory))))
            if catalog is not None:
                infos = catalog.files(list(files))
                fingerprints = {
                    fid: info.fingerprint for fid, info in infos.items() if info.path == files[fid]
                }
        for fid, path in files.items():
            meta = self.file_meta(fid)
            if meta is None or meta.get("path") != path:
                raise TokenIndexError(
                    f"{path} (file id {fid}) is not in the token index {self.fingerprint} ({self.directory}); "
                    f"run tokenize on its dataset with the same tokenizer and settings"
                )
            try:
                st = storage.stat(path)
            except FileNotFoundError:
                raise _stale(path, meta.get("dataset"), "the file no longer exists") from None
            if st.st_size != meta["size"] or st.st_mtime_ns != meta["mtime_ns"]:
                raise _stale(
                    path,
                    meta.get("dataset"),
                    f"it changed since it was tokenized (size {meta['size']} -> {st.st_size}, "
                    f"mtime_ns {meta['mtime_ns']} -> {st.st_mtime_ns})",
                )
            fp = None if fingerprints is None else fingerprints.get(fid)
            if fp is not None:
                try:
                    fp.verify(path)
                except FileChangedError as e:
                    raise _stale(
                        path, meta.get("dataset"), f"it changed since it was registered: {e.reason}"
                    ) from None

    # ------------------------------------------------------------------ arrays

    def _mapped(self, file_id: int) -> _Mapped:
        file_id = int(file_id)
        with self._lock:
            if self._pid != os.getpid():  # a forked child maps the files itself
                self._pid = os.getpid()
                self._maps = OrderedDict()
            m = self._maps.get(file_id)
            if m is not None:
                self._maps.move_to_end(file_id)
                return m
        meta = self.file_meta(file_id)
        if meta is None:
            raise TokenIndexError(
                f"file id {file_id} is not in the token index {self.fingerprint} ({self.directory}); "
                f"run tokenize on its dataset"
            )
        n = int(meta["max_sample_index"]) + 1
        m = _Mapped(
            self._map(file_id, "tokens", self.dtype, int(meta["tokens"])),
            self._map(file_id, "offsets", np.dtype("<i8"), n + 1),
            self._map(file_id, "present", np.dtype("u1"), n) if int(meta.get("absent", 0)) else None,
        )
        with self._lock:
            self._maps[file_id] = m
            while len(self._maps) > MAX_OPEN_FILES:
                self._maps.popitem(last=False)  # views handed out keep their mapping alive
        return m

    def _map(self, file_id: int, ext: str, dtype: np.dtype, count: int) -> np.ndarray:
        path = _meta_path(self.directory, file_id, ext)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = -1
        if size != count * dtype.itemsize:
            raise TokenIndexError(
                f"{path}: {size} bytes where {count * dtype.itemsize} are expected; the token index is "
                f"damaged: delete {_meta_path(self.directory, file_id, 'json')} and run tokenize again"
            )
        if count == 0:
            return np.zeros(0, dtype=dtype)
        # a plain ndarray view of the map: slicing it skips np.memmap's bookkeeping
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,)).view(np.ndarray)

    def sample_tokens(self, file_id: int) -> np.ndarray:
        """Tokens per sample index (int64, max_sample_index + 1 entries; 0 for samples not in the catalog)."""
        return np.diff(self._mapped(file_id).offsets).astype(np.int64, copy=False)

    def read(self, file_id: int, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
        """``(sample_index, token ids)`` for every sample of the catalog in the half-open ranges,
        in the order given; the ids are a read-only view of the memory map (``dtype``)."""
        m = self._mapped(file_id)
        tokens, offsets, present = m.tokens, m.offsets, m.present
        n = len(offsets) - 1
        for start, stop in ranges:
            s, e = max(int(start), 0), min(int(stop), n)
            if s >= e:
                continue
            offs = offsets[s : e + 1].tolist()
            if present is None:
                for j in range(e - s):
                    yield s + j, tokens[offs[j] : offs[j + 1]]
            else:
                for j in np.flatnonzero(present[s:e]).tolist():
                    yield s + j, tokens[offs[j] : offs[j + 1]]


# ---------------------------------------------------------------------- building


@dataclass
class TokenizeProgress:
    """Where a tokenize run stands: files done (skipped ones included), samples and tokens so
    far; ``path``: the file a batch was just written for (or finished)."""

    path: str
    files_done: int
    files_total: int
    samples_done: int
    samples_total: int
    tokens: int


TokenizeCallback = Callable[[TokenizeProgress], None]


@dataclass
class TokenizeReport:
    """What a tokenize run did. ``samples``/``tokens`` count every file of the datasets,
    ``files_skipped`` those complete from an earlier run."""

    fingerprint: str
    directory: str
    datasets: list[str]
    dtype: str
    vocab_size: int
    files: int = 0
    files_tokenized: int = 0
    files_skipped: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = f" ({self.files_skipped} already done)" if self.files_skipped else ""
        rate = ""
        if self.seconds > 0 and self.files_tokenized:
            rate = f", {self.tokens / self.seconds:,.0f} tokens/s"
        return (
            f"tokenized {', '.join(self.datasets)}: {self.files} files{skipped}, {self.samples:,} samples, "
            f"{self.tokens:,} tokens ({self.dtype}) in {self.seconds:.1f} s{rate}; "
            f"token index {self.fingerprint} at {self.directory}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _CatalogFile:
    id: int
    dataset: str
    format: str
    path: str
    num_samples: int
    size_bytes: int | None
    registration: str  # digest of the file's catalog row


class _Cancelled(Exception):
    pass


def catalog_files(catalog: Catalog, datasets: Sequence[str]) -> list[_CatalogFile]:
    """The catalog files of ``datasets`` (in file id order); unknown names raise UnknownDatasetError."""
    known = {d.name for d in catalog.list_datasets()}
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise UnknownDatasetError(
            f"no dataset named {unknown[0]!r} (registered: {', '.join(sorted(known)) or 'none'})"
        )
    sql = (
        "SELECT f.id, d.name, d.format, f.path, f.num_samples, f.num_skipped, f.size_bytes, {digest} "
        "FROM files f JOIN datasets d ON f.dataset_id = d.id "
        "WHERE list_contains(?::VARCHAR[], d.name) ORDER BY f.id"
    )
    with catalog.lock:
        con = catalog.cursor()
        try:
            rows = con.execute(sql.format(digest="sha256(f.read_index)"), [list(datasets)]).fetchall()
        except Exception:  # an older DuckDB without sha256(BLOB): hash here
            rows = [
                (*r[:7], None if r[7] is None else hashlib.sha256(r[7]).hexdigest())
                for r in con.execute(sql.format(digest="f.read_index"), [list(datasets)]).fetchall()
            ]
    out = []
    for fid, name, fmt, path, num_samples, num_skipped, size, index_digest in rows:
        registration = hashlib.sha256(
            _canonical([name, fmt, path, num_samples, num_skipped, size, index_digest]).encode()
        ).hexdigest()
        out.append(_CatalogFile(int(fid), name, fmt, path, int(num_samples), size, registration))
    return out


def _present_indices(catalog: Catalog, file_id: int) -> np.ndarray:
    with catalog.lock:
        rows = (
            catalog.cursor()
            .execute("SELECT sample_index FROM samples WHERE file_id = ? ORDER BY sample_index", [file_id])
            .fetchnumpy()
        )
    return np.asarray(rows["sample_index"], dtype=np.int64)


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Sorted sample indices as half-open ranges of consecutive ones."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


@contextlib.contextmanager
def _directory_lock(directory: str) -> Iterator[None]:
    """One tokenize run per index directory at a time (across threads and processes)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = os.path.join(directory, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TokenIndexError(
                f"another tokenize run is writing the token index {directory}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _file_texts(
    fmt: DatasetFormat, read_index: bytes | None, f: _CatalogFile, present: np.ndarray, text_ref: FieldRef
) -> Iterator[tuple[int, str]]:
    """(sample index, text) of every catalog sample of the file, checked against the catalog."""
    k = 0
    for i, value in fmt.read_field(f.path, _runs(present), read_index, text_ref):
        if k >= len(present) or int(i) != present[k]:
            raise _stale(
                f.path,
                f.dataset,
                f"the format returned sample {i} where the catalog has "
                f"{'no more samples' if k >= len(present) else f'sample {present[k]}'}",
            )
        k += 1
        if value is None:  # e.g. webdataset: no "text" field, but a txt member
            value = next((rec for _, rec in fmt.read(f.path, [(int(i), int(i) + 1)], read_index)), None)
        yield int(i), record_text(value, text_ref, (f.path, int(i)))
    if k < len(present):
        raise _stale(
            f.path, f.dataset, f"sample {present[k]} is in the catalog but the format did not return it"
        )


def _encode_batches(
    fmt: DatasetFormat,
    read_index: bytes | None,
    f: _CatalogFile,
    present: np.ndarray,
    tok: Tokenizer,
    bos: list[int],
    eos: list[int],
    text_ref: FieldRef,
    batch_size: int,
    dtype: np.dtype,
) -> Iterator[tuple[list[int], list[int], np.ndarray]]:
    """Per batch of documents: their sample indices, token counts and tokens (``dtype``), each
    document ``bos + encode(text) + eos``."""
    max_id = int(np.iinfo(dtype).max)
    extra = len(bos) + len(eos)
    idx: list[int] = []
    texts: list[str] = []

    def encode() -> tuple[list[int], list[int], np.ndarray]:
        ids = tok.encode_batch(texts)
        flat: list[int] = []
        for doc in ids:
            flat.extend(bos)
            flat.extend(doc)
            flat.extend(eos)
        arr = np.asarray(flat, dtype=np.int64)
        if arr.size and (int(arr.max()) > max_id or int(arr.min()) < 0):
            raise TokenIndexError(
                f"{f.path}: the tokenizer produced id {int(arr.max())}, beyond {dtype.name} "
                f"although its vocab_size is {tok.vocab_size}; the tokenizer plugin reports a "
                f"wrong vocab_size"
            )
        return list(idx), [len(doc) + extra for doc in ids], arr.astype(dtype)

    for i, text in _file_texts(fmt, read_index, f, present, text_ref):
        idx.append(i)
        texts.append(text)
        if len(texts) >= batch_size:
            yield encode()
            idx.clear()
            texts.clear()
    if texts:
        yield encode()


@dataclass
class _EncodedFile:
    """A file tokenized on a remote worker: its tokens, per-sample-index token counts, and the
    data file's size and mtime when it was read."""

    tokens: np.ndarray
    lengths: np.ndarray
    size: int
    mtime_ns: int


def encode_file_remote(
    spec: TokenizerSpec,
    add_bos: bool,
    add_eos: bool,
    text_field: str,
    fingerprint: str,
    f: _CatalogFile,
    present: np.ndarray,
    read_index: bytes | None,
    dtype_name: str,
    batch_size: int,
) -> _EncodedFile:
    """Tokenize one file on a remote worker (a Ray task): the plugins are found by name there,
    and the tokenizer must be the same as the driver's (its fingerprint is checked)."""
    from .errors import UnknownPluginError, WorkerPluginError
    from .ray_executor import _where

    plugins = get_plugin_manager()
    try:
        fmt = plugins.format(f.format)
        tok = load_tokenizer(spec, plugins)
    except UnknownPluginError as e:
        raise WorkerPluginError(
            f"{e.kind} plugin {e.name!r} is not installed on the Ray worker {_where()} (its {e.kind} plugins: "
            f"{', '.join(e.installed) or 'none'}): install the package that provides it on every node of "
            f"the Ray cluster, or tokenize with executor='local'"
        ) from None
    here = _hash_identity(tokenizer_identity(spec, add_bos, add_eos, text_field, plugins, tokenizer=tok))
    if here != fingerprint:
        raise TokenIndexError(
            f"the tokenizer {spec.name}:{spec.source} on the Ray worker {_where()} has fingerprint {here}, "
            f"the driver's has {fingerprint}: every node must see the same tokenizer file (a shared path) "
            f"and the same tokenizer plugin version"
        )
    bos, eos = document_specials(tok, add_bos, add_eos)
    dtype = _DTYPES[dtype_name]
    before = storage.stat(f.path)
    n = int(present[-1]) + 1 if len(present) else 0
    lengths = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    for idx, doc_lengths, arr in _encode_batches(
        fmt, read_index, f, present, tok, bos, eos, FieldRef.parse(text_field), batch_size, dtype
    ):
        lengths[idx] = doc_lengths
        parts.append(arr)
    after = storage.stat(f.path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise _stale(f.path, f.dataset, "it changed while it was being tokenized")
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return _EncodedFile(tokens, lengths, int(before.st_size), int(before.st_mtime_ns))


class _Builder:
    """Tokenizes the files of one run; workers report to the calling thread through a queue."""

    def __init__(
        self,
        catalog: Catalog,
        plugins: PluginManager,
        directory: str,
        tok: Tokenizer,
        add_bos: bool,
        add_eos: bool,
        text_field: str,
        dtype: np.dtype,
        catalog_version: int,
        batch_size: int,
        cancel: threading.Event,
    ) -> None:
        self.catalog = catalog
        self.plugins = plugins
        self.directory = directory
        self.tok = tok
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.bos, self.eos = document_specials(tok, add_bos, add_eos)
        self.text_ref = FieldRef.parse(text_field)
        self.dtype = dtype
        self.catalog_version = catalog_version
        self.batch_size = max(1, int(batch_size))
        self.cancel = cancel
        self.events: queue.Queue[tuple[str, _CatalogFile, Any]] = queue.Queue()

    def run(self, f: _CatalogFile) -> None:
        try:
            meta = self._file(f)
        except BaseException as e:
            self.events.put(("error", f, e))
        else:
            self.events.put(("done", f, meta))

    def _file(self, f: _CatalogFile) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(
                _meta_path(self.directory, f.id, "json")
            )  # no reader may pair new arrays with the old record
        before = storage.stat(f.path)
        present = _present_indices(self.catalog, f.id)
        n = int(present[-1]) + 1 if len(present) else 0
        lengths = np.zeros(n, dtype=np.int64)
        total = 0
        tmp_tokens = _meta_path(self.directory, f.id, "tokens.tmp")
        fmt = self.plugins.format(f.format)
        read_index = self.catalog.read_index(f.id)
        with open(tmp_tokens, "wb") as out:
            for idx, doc_lengths, arr in _encode_batches(
                fmt,
                read_index,
                f,
                present,
                self.tok,
                self.bos,
                self.eos,
                self.text_ref,
                self.batch_size,
                self.dtype,
            ):
                if self.cancel.is_set():
                    raise _Cancelled()
                out.write(arr.tobytes())
                lengths[idx] = doc_lengths
                total += int(arr.size)
                self.events.put(("batch", f, (len(idx), int(arr.size))))
            out.flush()
            os.fsync(out.fileno())
        after = storage.stat(f.path)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise _stale(f.path, f.dataset, "it changed while it was being tokenized")
        return self._commit(f, present, lengths, total, int(before.st_size), int(before.st_mtime_ns))

    def write_remote(self, f: _CatalogFile, present: np.ndarray, result: _EncodedFile) -> dict[str, Any]:
        """Write a file a remote worker tokenized (:func:`encode_file_remote`)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(_meta_path(self.directory, f.id, "json"))
        tokens = np.asarray(result.tokens)
        if tokens.dtype != self.dtype:
            raise TokenIndexError(f"{f.path}: a worker returned {tokens.dtype} tokens, expected {self.dtype}")
        self._write_array(_meta_path(self.directory, f.id, "tokens"), tokens)
        return self._commit(f, present, result.lengths, int(tokens.size), result.size, result.mtime_ns)

    def _commit(
        self, f: _CatalogFile, present: np.ndarray, lengths: np.ndarray, total: int, size: int, mtime_ns: int
    ) -> dict[str, Any]:
        """The arrays besides the tokens, then the file's ``.json`` (written last)."""
        d = self.directory
        tmp_tokens = _meta_path(d, f.id, "tokens.tmp")
        if os.path.exists(tmp_tokens):
            os.replace(tmp_tokens, _meta_path(d, f.id, "tokens"))
        n = len(lengths)
        offsets = np.zeros(n + 1, dtype="<i8")
        np.cumsum(lengths, out=offsets[1:])
        absent = n - len(present)
        self._write_array(_meta_path(d, f.id, "offsets"), offsets)
        if absent:
            mask = np.zeros(n, dtype="u1")
            mask[present] = 1
            self._write_array(_meta_path(d, f.id, "present"), mask)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(_meta_path(d, f.id, "present"))  # of an earlier registration
        meta = {
            "file_id": f.id,
            "dataset": f.dataset,
            "path": f.path,
            "size": size,
            "mtime_ns": mtime_ns,
            "num_samples": len(present),
            "max_sample_index": n - 1,
            "absent": absent,
            "tokens": total,
            "registration": f.registration,
            "catalog_version": self.catalog_version,
        }
        atomic_write(_meta_path(d, f.id, "json"), json.dumps(meta, indent=1).encode())
        return meta

    @staticmethod
    def _write_array(path: str, arr: np.ndarray) -> None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(arr.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _plan(
    directory: str, files: Sequence[_CatalogFile], version: int
) -> tuple[list[_CatalogFile], list[dict[str, Any]]]:
    """(files to tokenize, metadata of the files complete already); refuses changed files."""
    todo: list[_CatalogFile] = []
    done: list[dict[str, Any]] = []
    for f in files:
        try:
            st = storage.stat(f.path)
        except FileNotFoundError:
            raise _stale(f.path, f.dataset, "the file no longer exists") from None
        if f.size_bytes is not None and st.st_size != f.size_bytes:
            raise _stale(
                f.path, f.dataset, f"its size is {st.st_size} bytes, registration saw {f.size_bytes}"
            )
        meta = None
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            meta = _read_json(_meta_path(directory, f.id, "json"))
        if (
            not isinstance(meta, dict)
            or meta.get("path") != f.path
            or meta.get("registration") != f.registration
        ):
            todo.append(f)  # new, or the file id now stands for another registration
            continue
        if (meta.get("size"), meta.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            done.append(meta)
            continue
        if meta.get("catalog_version") == version:
            # the same registration, nothing re-registered since: the file changed under the catalog
            raise _stale(
                f.path,
                f.dataset,
                f"it changed since it was tokenized (mtime_ns {meta.get('mtime_ns')} -> {st.st_mtime_ns})",
            )
        todo.append(f)  # the catalog changed since (possibly a re-registration): tokenize again
    return todo, done


def tokenize(
    catalog: Catalog,
    datasets: str | Sequence[str],
    tokenizer: TokenizerSpec,
    *,
    add_bos: bool = False,
    add_eos: bool = True,
    text_field: str = "text",
    workers: int | None = None,
    progress: TokenizeCallback | None = None,
    plugins: PluginManager | None = None,
    batch_size: int = BATCH_DOCS,
    cancel: threading.Event | None = None,
    executor: Any = "local",
) -> TokenizeReport:
    """Tokenize every catalog sample of ``datasets`` into ``DB_DIR/tokens/<fingerprint>``.

    Files are tokenized by ``workers`` threads (default: one per core); ``progress`` is called
    in the calling thread after every batch and file (an exception from it stops the run,
    which a later call resumes); setting ``cancel`` stops it too (TokenIndexError).
    ``executor="ray"`` (or a :class:`~mixtera_core.ray_executor.RayExecutor`) tokenizes one file
    per Ray task instead; this process reads the catalog and writes the index (progress per file).
    """
    start = time.monotonic()
    names = [datasets] if isinstance(datasets, str) else list(dict.fromkeys(datasets))
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TokenIndexError(f"tokenize needs dataset names, got {datasets!r}")
    plugins = plugins or get_plugin_manager()
    FieldRef.parse(text_field)  # refuse a malformed field path before any work
    files = catalog_files(catalog, names)
    # loaded afresh (not load_tokenizer's per-process cache, which keeps serving a tokenizer
    # file that changed since): the same plugin call a stream makes, on the file as it is now
    tok = plugins.tokenizer_factory(tokenizer.name).load(tokenizer.source, **tokenizer.options)
    identity = tokenizer_identity(tokenizer, add_bos, add_eos, text_field, plugins, tokenizer=tok)
    fingerprint = _hash_identity(identity)
    dtype = dtype_for(tok.vocab_size)
    dtype_name = "uint16" if dtype == _DTYPES["uint16"] else "uint32"
    directory = index_dir(catalog.db_dir, fingerprint)
    os.makedirs(directory, exist_ok=True)
    report = TokenizeReport(fingerprint, directory, names, dtype_name, int(tok.vocab_size), files=len(files))
    with _directory_lock(directory):
        manifest_path = os.path.join(directory, MANIFEST)
        if os.path.exists(manifest_path):
            manifest = load_manifest(directory, fingerprint)
            if _canonical(manifest["identity"]) != _canonical(identity):
                raise _bad_manifest(directory, "its tokenizer settings differ from those asked for")
            if manifest["vocab_size"] != int(tok.vocab_size):
                raise _bad_manifest(
                    directory,
                    f"it was written for vocab_size {manifest['vocab_size']}, the tokenizer has "
                    f"{tok.vocab_size}; refusing to resume into it",
                )
        else:
            manifest = {
                "fingerprint": fingerprint,
                "tokenizer": {
                    "name": tokenizer.name,
                    "source": str(tokenizer.source),
                    "options": identity["options"],
                },
                "add_bos": bool(add_bos),
                "add_eos": bool(add_eos),
                "text_field": str(text_field),
                "vocab_size": int(tok.vocab_size),
                "bos_id": tok.bos_id,
                "eos_id": tok.eos_id,
                "dtype": dtype_name,
                "identity": identity,
            }
            atomic_write(manifest_path, json.dumps(manifest, indent=1).encode())
        version = catalog.version
        todo, done = _plan(directory, files, version)
        report.files_skipped = len(done)
        samples_total = sum(f.num_samples for f in files)
        state = TokenizeProgress(
            "",
            len(done),
            len(files),
            sum(int(m["num_samples"]) for m in done),
            samples_total,
            sum(int(m["tokens"]) for m in done),
        )
        cancel = cancel or threading.Event()
        builder = _Builder(
            catalog, plugins, directory, tok, add_bos, add_eos, text_field, dtype, version, batch_size, cancel
        )
        n_workers = max(1, min(int(workers or os.cpu_count() or 1), len(todo) or 1))
        if progress is not None:
            progress(TokenizeProgress(**asdict(state)))
        if executor is not None and executor != "local":
            _tokenize_remote(
                executor, builder, todo, tokenizer, fingerprint, dtype_name, batch_size, state, progress
            )
            report.files_tokenized = len(todo)
            todo = []
        with ThreadPoolExecutor(n_workers, thread_name_prefix="mixtera-tokenize") as pool:
            futures = [pool.submit(builder.run, f) for f in todo]
            try:
                remaining = len(todo)
                while remaining:
                    try:
                        kind, f, value = builder.events.get(timeout=0.5)
                    except queue.Empty:
                        if cancel.is_set():
                            raise TokenIndexError("tokenize was cancelled; run it again to resume") from None
                        continue
                    state.path = f.path
                    if kind == "error":
                        if isinstance(value, _Cancelled):
                            raise TokenIndexError("tokenize was cancelled; run it again to resume")
                        raise value
                    if kind == "batch":
                        state.samples_done += value[0]
                        state.tokens += value[1]
                    else:
                        remaining -= 1
                        state.files_done += 1
                        report.files_tokenized += 1
                    if progress is not None:
                        progress(TokenizeProgress(**asdict(state)))
            except BaseException:
                cancel.set()  # workers stop at their next batch; their temporaries stay behind
                for fut in futures:
                    fut.cancel()
                raise
    report.samples, report.tokens = state.samples_done, state.tokens
    report.seconds = time.monotonic() - start
    return report


def _tokenize_remote(
    executor: Any,
    builder: _Builder,
    todo: list[_CatalogFile],
    spec: TokenizerSpec,
    fingerprint: str,
    dtype_name: str,
    batch_size: int,
    state: TokenizeProgress,
    progress: TokenizeCallback | None,
) -> None:
    """Tokenize ``todo`` as Ray tasks; the results are written here as they arrive."""
    from .executors import get_executor
    from .ray_executor import RayExecutor, tokenize_task

    runner = get_executor(executor)
    if not isinstance(runner, RayExecutor):
        raise ValueError(f"tokenize: executor must be 'local', 'ray' or a RayExecutor, got {executor!r}")
    presents = [_present_indices(builder.catalog, f.id) for f in todo]
    calls = [
        (
            k,
            f.path,
            (
                spec,
                builder.add_bos,
                builder.add_eos,
                str(builder.text_ref),
                fingerprint,
                f,
                presents[k],
                builder.catalog.read_index(f.id),
                dtype_name,
                batch_size,
            ),
        )
        for k, f in enumerate(todo)
    ]

    def deliver(k: int, result: _EncodedFile) -> None:
        f = todo[k]
        builder.write_remote(f, presents[k], result)
        state.path = f.path
        state.files_done += 1
        state.samples_done += len(presents[k])
        state.tokens += int(result.tokens.size)
        if progress is not None:
            progress(TokenizeProgress(**asdict(state)))

    runner.run_tokenize(tokenize_task, calls, deliver)


__all__ = [
    "BATCH_DOCS",
    "TokenIndex",
    "TokenizeCallback",
    "TokenizeProgress",
    "TokenizeReport",
    "dtype_for",
    "index_dir",
    "load_manifest",
    "tokenize",
    "tokenizer_fingerprint",
    "tokenizer_identity",
]
