"""WebDataset shards (plain ``.tar``): a sample is a run of consecutive members sharing a key.

Members are grouped exactly like ``webdataset`` does it: the key is the member path up to
the first dot of its basename and the extension is the rest, lower-cased
(:func:`webdataset.tariterators.base_plus_ext`); non-regular members and ``__meta__``-style
members are ignored; a new key starts a new sample. ``sample_index`` is the 0-based ordinal
of the sample in the tar. A record, for a Python parser and for :meth:`WebDatasetFormat.read`,
is ``{"__key__": key, "__url__": path, ext: bytes, ...}`` (for parsers the member bytes are
loaded lazily, on first access).

**Declarative parsers.** The first element(s) of a field path name a member extension:
``json.language`` is ``json.loads(sample["json"])["language"]`` and ``txt`` is the member
decoded as UTF-8 (multi-dot extensions such as ``meta.json.language`` resolve to the
longest extension the sample has; ``__key__`` is the sample key). Members with a
``json``/``jsn`` extension are parsed as JSON; others are decoded as UTF-8 text, unstripped.
A sample without the member gives null. Only the members a field map mentions are read at
registration; images and other payloads are never touched.

**Corruption.** Tar headers are walked with :mod:`tarfile` (which knows GNU/PAX long
names); a bad header, a member that runs past the end of the file, or non-zero bytes after
the last readable header (``tarfile`` would silently stop there) raise
:class:`~mixtera_core.errors.CorruptFileError`. A member that is not valid JSON / UTF-8, or an
extension repeated within one sample, is a malformed sample (``sample N (key K)``).

**Sample sizes** (``FileScan.sample_bytes``) come from the tar headers, for free: the size of
the sample's ``txt`` member, else of its ``text`` member, else the sum of all its members'.

**Read index.** ``webdataset``'s own iterators do not expose member offsets, so the scan
records, per sample, its key and its members' ``(extension, data offset, size)`` in numpy
arrays (kind ``webdataset`` container). A range read seeks to each sample and reads its
members in one contiguous read.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from mixtera_core import storage
from mixtera_core.errors import CorruptFileError, MalformedRecordError
from mixtera_core.interfaces import DatasetFormat, FileScan, MetadataParser
from mixtera_core.properties import PropertyType
from mixtera_core.records import PropertyColumns, extract

from ._common import (
    check_on_error,
    check_unchanged,
    columns_to_table,
    concat_tables,
    pack_index,
    unpack_index,
)

INDEX_VERSION = 1
_HINT = "fix or remove the sample, or register with on_error='skip'"
#: webdataset's default ``skip_meta`` pattern (``tar_file_iterator``).
_SKIP_META = re.compile(r"__[^/]*__($|/)")
_JSON_EXTS = frozenset({"json", "jsn"})


class _Sample:
    __slots__ = ("key", "exts", "offsets", "sizes", "error")

    def __init__(self, key: str) -> None:
        self.key = key
        self.exts: list[str] = []
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.error: str | None = None


def _enumerate(path: str) -> tuple[list[_Sample], int]:
    """Group the tar's members into samples; returns (samples, file size)."""
    # imported here: the webdataset package imports torch (seconds), which a process that
    # never enumerates a tar should not pay for when the plugins load
    from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

    samples: list[_Sample] = []
    cur: _Sample | None = None
    with storage.open_input(path) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for ti in tf:
                    tf.members = []  # type: ignore[attr-defined]  # do not keep every TarInfo alive
                    if ti.offset_data + ti.size > size:
                        raise CorruptFileError(path, f"member {ti.name!r} runs past the end of the file")
                    if not ti.isreg():
                        continue
                    fname = ti.name
                    if "/" not in fname and fname.startswith(meta_prefix) and fname.endswith(meta_suffix):
                        continue
                    if _SKIP_META.match(fname):
                        continue
                    prefix, suffix = base_plus_ext(fname)
                    if prefix is None:
                        continue
                    suffix = suffix.lower()
                    if cur is None or prefix != cur.key:
                        cur = _Sample(prefix)
                        samples.append(cur)
                    if suffix in cur.exts:
                        cur.error = (
                            cur.error or f"member {fname!r} repeats extension {suffix!r} in its sample"
                        )
                        continue
                    cur.exts.append(suffix)
                    cur.offsets.append(ti.offset_data)
                    cur.sizes.append(ti.size)
                end = tf.offset
        except tarfile.TarError as e:
            raise CorruptFileError(path, f"broken tar archive: {e}") from None
        # tarfile stops silently at the first bad header after the first one: whatever
        # follows the last member must be the zero blocks that end an archive.
        f.seek(end)
        pos = end
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            if chunk.strip(b"\0"):
                bad = pos + len(chunk) - len(chunk.lstrip(b"\0"))
                raise CorruptFileError(path, f"broken tar archive: unreadable header at byte {bad}")
            pos += len(chunk)
    return samples, size


def _member_spans(
    ranges: Sequence[tuple[int, int]], n: int, arrays: dict[str, np.ndarray]
) -> list[tuple[int, int]]:
    """The byte span of each range's members in the tar."""
    first, offs, sizes = arrays["first_member"], arrays["member_offset"], arrays["member_size"]
    spans = []
    for a, b in ranges:
        a, b = max(int(a), 0), min(int(b), n)
        m0, m1 = (int(first[a]), int(first[b])) if a < b else (0, 0)
        if m1 > m0:
            spans.append((int(offs[m0:m1].min()), int((offs[m0:m1] + sizes[m0:m1]).max())))
    return spans


def _sample_size(s: _Sample) -> int:
    """The size of the ``txt`` member, else of the ``text`` member, else of all members."""
    for ext in ("txt", "text"):
        if ext in s.exts:
            return s.sizes[s.exts.index(ext)]
    return sum(s.sizes)


class _LazySample(Mapping[str, Any]):
    """A sample whose member bytes are read from the tar on first access."""

    def __init__(self, f: BinaryIO, url: str, sample: _Sample) -> None:
        self._f = f
        self._url = url
        self._s = sample
        self._cache: dict[str, bytes] = {}

    def __getitem__(self, name: str) -> Any:
        if name == "__key__":
            return self._s.key
        if name == "__url__":
            return self._url
        if name not in self._cache:
            try:
                i = self._s.exts.index(name)
            except ValueError:
                raise KeyError(name) from None
            self._f.seek(self._s.offsets[i])
            self._cache[name] = self._f.read(self._s.sizes[i])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        yield "__key__"
        yield "__url__"
        yield from self._s.exts

    def __len__(self) -> int:
        return 2 + len(self._s.exts)


class _SampleColumns(PropertyColumns):
    """PropertyColumns whose error locations read ``sample N (key K)``."""

    def __init__(self, schema: Mapping[str, PropertyType], path: str, samples: list[_Sample]) -> None:
        super().__init__(schema, path, unit="sample")
        self.samples = samples

    def where(self, sample_index: int) -> str:
        return f"sample {sample_index} (key {self.samples[sample_index].key})"


def _decode(ext: str, data: bytes) -> Any:
    """A member's value for field paths: parsed JSON for json members, UTF-8 text otherwise."""
    if ext.rsplit(".", 1)[-1] in _JSON_EXTS:
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"member .{ext} is not valid JSON: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"member .{ext} is not UTF-8 text: {e}") from None


class WebDatasetFormat(DatasetFormat):
    """WebDataset tar shards. See the module docstring."""

    name = "webdataset"
    suffixes = (".tar",)

    def __repr__(self) -> str:
        return "WebDatasetFormat()"

    # ---- registration

    def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
        check_on_error(on_error)
        samples, size = _enumerate(path)
        schema = parser.record_schema()
        field_map = parser.field_map()
        cols = _SampleColumns(schema, path, samples)
        skipped: list[int] = []
        with storage.open_input(path) as f:
            for idx, s in enumerate(samples):
                try:
                    if s.error is not None:
                        raise MalformedRecordError(path, cols.where(idx), s.error, _HINT)
                    if field_map is not None:
                        values = self._field_values(f, s, field_map)
                        cols.add(idx, cols.convert(idx, values))
                    else:
                        try:
                            cols.add_record(idx, _LazySample(f, path, s), parser)
                        except MalformedRecordError:
                            raise
                        except Exception as e:
                            raise MalformedRecordError(
                                path,
                                cols.where(idx),
                                f"parser {parser.name!r} failed: {type(e).__name__}: {e}",
                                _HINT,
                            ) from e
                except ValueError as e:  # MalformedRecordError is a ValueError too
                    if on_error == "fail":
                        if isinstance(e, MalformedRecordError):
                            raise
                        raise MalformedRecordError(path, cols.where(idx), str(e), _HINT) from None
                    skipped.append(idx)
        table = columns_to_table(cols, on_error, skipped, _HINT)
        skipped.sort()
        sizes = np.zeros(0, dtype=np.int64)
        if table is not None:
            sizes = np.fromiter(
                (_sample_size(samples[i]) for i in table.column("sample_index").to_pylist()),
                dtype=np.int64,
                count=table.num_rows,
            )
        return FileScan(
            concat_tables([] if table is None else [table], schema),
            len(skipped),
            self._index(samples, skipped, size),
            sizes,
        )

    @staticmethod
    def _field_values(f: BinaryIO, s: _Sample, field_map: Mapping[str, Any]) -> dict[str, Any]:
        decoded: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for prop, ref in field_map.items():
            parts = ref.path
            if parts == ("__key__",):
                values[prop] = s.key
                continue
            for k in range(len(parts), 0, -1):  # longest extension first
                ext = ".".join(parts[:k])
                if ext in s.exts:
                    break
            else:
                values[prop] = None
                continue
            if ext not in decoded:
                i = s.exts.index(ext)
                f.seek(s.offsets[i])
                decoded[ext] = _decode(ext, f.read(s.sizes[i]))
            value = decoded[ext]
            rest = parts[k:]
            values[prop] = extract(value, type(ref)(rest)) if rest else value
        return values

    @staticmethod
    def _index(samples: list[_Sample], skipped: list[int], size: int) -> bytes:
        exts: dict[str, int] = {}
        first = np.zeros(len(samples) + 1, dtype=np.int64)
        ext_ids: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        for i, s in enumerate(samples):
            ext_ids.extend(exts.setdefault(e, len(exts)) for e in s.exts)
            offsets.extend(s.offsets)
            sizes.extend(s.sizes)
            first[i + 1] = len(offsets)
        keys = "\0".join(s.key for s in samples).encode("utf-8", "surrogateescape")
        return pack_index(
            "webdataset",
            INDEX_VERSION,
            {"exts": list(exts), "file_size": size, "samples": len(samples)},
            {
                "first_member": first,
                "member_ext": np.asarray(ext_ids, dtype=np.int32),
                "member_offset": np.asarray(offsets, dtype=np.int64),
                "member_size": np.asarray(sizes, dtype=np.int64),
                "skipped": np.asarray(skipped, dtype=np.int64),
                "keys": np.frombuffer(keys, dtype=np.uint8),
            },
        )

    # ---- streaming

    def read(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, Any]]:
        if read_index is None:
            samples, size = _enumerate(path)
            read_index = self._index(samples, [], size)
        header, arrays = unpack_index(read_index, "webdataset", INDEX_VERSION)
        meta = header["meta"]
        check_unchanged(path, meta["file_size"])
        keys = arrays["keys"].tobytes().decode("utf-8", "surrogateescape").split("\0")
        return self._read(path, ranges, meta, arrays, keys)

    def byte_spans(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> list[tuple[int, int]] | None:
        if read_index is None:
            return None
        header, arrays = unpack_index(read_index, "webdataset", INDEX_VERSION)
        return _member_spans(ranges, int(header["meta"]["samples"]), arrays)

    @staticmethod
    def _read(
        path: str,
        ranges: Sequence[tuple[int, int]],
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        keys: list[str],
    ) -> Iterator[tuple[int, Any]]:
        exts: list[str] = meta["exts"]
        n = int(meta["samples"])
        first = arrays["first_member"]
        ext_ids, offs, sizes = arrays["member_ext"], arrays["member_offset"], arrays["member_size"]
        skipped = frozenset(arrays["skipped"].tolist())
        with storage.open_input(path) as f:
            if storage.is_remote(path):  # a remote tar: its members fetched at once
                storage.will_need(f, _member_spans(ranges, n, arrays))
            for a, b in ranges:
                for idx in range(max(int(a), 0), min(int(b), n)):
                    if idx in skipped:
                        continue
                    m0, m1 = int(first[idx]), int(first[idx + 1])
                    record: dict[str, Any] = {"__key__": keys[idx], "__url__": path}
                    if m1 > m0:
                        start = int(offs[m0:m1].min())
                        end = int((offs[m0:m1] + sizes[m0:m1]).max())
                        f.seek(start)
                        blob = f.read(end - start)
                        if len(blob) != end - start:
                            raise CorruptFileError(path, f"sample {idx} (key {keys[idx]}) is cut off")
                        for m in range(m0, m1):
                            o = int(offs[m]) - start
                            record[exts[int(ext_ids[m])]] = blob[o : o + int(sizes[m])]
                    yield idx, record
