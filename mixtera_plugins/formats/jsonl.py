"""JSON Lines, plain or compressed with gzip or zstd (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ...).

A sample is one non-blank line; its ``sample_index`` is the 0-based line number in the
decompressed file (blank and whitespace-only lines are not samples but keep their numbers,
so indices are stable and errors can say ``line N`` like an editor does). A line must hold
one JSON object.

**Registration** reads the decompressed stream in large blocks cut at the last newline. For
a declarative parser (``field_map()``) each block goes through pyarrow's native JSON reader
with an explicit schema that holds only the mapped fields, so no Python code runs per line;
numpy finds the line starts. If pyarrow refuses a block (malformed line, a value of another
type, ...) the block is split into smaller pieces and the pieces pyarrow still refuses go
through the Python slow path (``json.loads`` per line), which
coerces values exactly like a Python parser would and names the offending line, or skips it
with ``on_error="skip"``. Python parsers always take the slow path. Metadata often holds
``"en"`` where ``list[str]`` is declared: when the declared types fail, a block is retried
with list properties read as their element type and wrapped into one-element lists (what
the slow path's coercion does), so such files stay on the native path.

**Read index.** Reading a range must not re-parse the file from its start. The index keeps

* the decompressed byte offset of every ``stride``-th line (lines ``0, stride, 2*stride, ...``;
  stride 32 by default): a range read seeks to the checkpoint at or before its first line and
  splits at most ``stride - 1`` lines to get there. Storing every line would cost 8 bytes a
  line in the catalog for no measurable gain; the offsets are delta-encoded and compressed;
* the line numbers skipped at registration (``on_error="skip"``), so that reads never yield
  them (blank lines are recognised while reading);
* for compressed files, the ``(compressed offset, decompressed offset)`` of frame starts
  (zstd frames, gzip members), at least ``min_frame_gap`` decompressed bytes apart. Files
  written as many independent frames (by ``pzstd``, seekable-zstd writers, ``bgzip``, or
  writers that close a frame every N documents) can then be decompressed from the frame
  that holds the wanted line instead of from the beginning of the file. A single-frame file has one entry; a read then streams it
  once per call, in order (callers pass the ranges of a file sorted, which makes that one
  pass; any order is still correct, just slower);
* the line count, the decompressed size and the file size (a file that changed since it was
  registered is refused instead of yielding the wrong samples).

The index is a versioned :mod:`~mixtera_plugins.formats._common` container (kind ``jsonl``).

**Sample sizes** (``FileScan.sample_bytes``) are the byte lengths of the samples' lines
(without the ``\\n``), which numpy has found anyway: free. A line holds the text plus the JSON
around it (keys, metadata, quotes, escapes; ``json.dumps`` writes each non-ASCII character
as a 6-byte ``\\uXXXX``), so where there is a ``text`` field the size is an upper bound of its
UTF-8 size, and close to it for text-dominated records. Measuring the ``text`` field itself
(adding it to pyarrow's read schema and taking ``binary_length``) makes pyarrow materialise
every text: that cost about 14% more CPU and 24% more wall time on
``benchmarks/registration.py``, the line lengths nothing measurable. Estimates of tokens per
byte must therefore be calibrated on these sizes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import zstandard

from mixtera_core import storage
from mixtera_core.background import prefetch
from mixtera_core.errors import CorruptFileError, MalformedRecordError
from mixtera_core.interfaces import DatasetFormat, FieldRef, FileScan, MetadataParser
from mixtera_core.properties import PROPERTY_TYPES, PropertyType
from mixtera_core.records import PropertyColumns, arrow_read_schema, extract, lift_fields

from ._common import (
    check_on_error,
    check_unchanged,
    columns_to_table,
    concat_tables,
    make_table,
    pack_index,
    unpack_index,
)

INDEX_VERSION = 1
_STR = PROPERTY_TYPES["str"]
_READ_SIZE = 64 << 10  # compressed bytes per decompressor call when reading ranges
_NEWLINE = 10
_OPEN_BRACE = 123
_BOM = b"\xef\xbb\xbf"
_HINT = "fix or remove the line, or register with on_error='skip'"
#: Output produced per zlib call (bounds memory on highly compressible gzip data).
_GZIP_MAX_OUT = 8 << 20


def _codec(path: str) -> str:
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


# --------------------------------------------------------------------------- decompression


def _iter_frames(
    f: BinaryIO,
    codec: str,
    path: str,
    comp_off: int = 0,
    dec_off: int = 0,
    read_size: int = 1 << 20,
    on_frame: Callable[[int, int], None] | None = None,
) -> Iterator[bytes]:
    """Decompressed chunks of a zstd/gzip file from the frame starting at ``comp_off``.

    Concatenated frames (zstd) and members (gzip) are decompressed one after the other;
    ``on_frame(compressed offset, decompressed offset)`` is called at the start of every
    frame after the first. Garbage, truncation and trailing junk raise CorruptFileError.
    """
    if codec == "zstd":
        # Allow the large windows of ``zstd --long=31`` (memory is only used if a frame needs it).
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        new: Callable[[], Any] = dctx.decompressobj
        errors: tuple[type[BaseException], ...] = (zstandard.ZstdError,)
    else:

        def new() -> Any:
            return zlib.decompressobj(31)

        errors = (zlib.error,)
    f.seek(comp_off)
    obj = new()
    fed = False  # has the current decompressor been fed any byte?
    comp = comp_off  # compressed offset of data[0]
    dec = dec_off
    data = b""
    try:
        while True:
            if not data:
                data = f.read(read_size)
                if not data:
                    break
            out = obj.decompress(data) if codec == "zstd" else obj.decompress(data, _GZIP_MAX_OUT)
            fed = True
            if out:
                dec += len(out)
                yield out
            if obj.eof:
                rest = obj.unused_data
                comp += len(data) - len(rest)
                data = rest or f.read(read_size)
                obj = new()
                fed = False
                if not data:
                    break
                if codec == "gzip" and data[0] == 0:
                    # gzip files may be padded with zeros after the last member.
                    if data.strip(b"\0"):
                        raise CorruptFileError(path, f"unexpected data after the gzip padding at byte {comp}")
                    _check_zero_tail(f, path, comp)
                    break
                if on_frame is not None:
                    on_frame(comp, dec)
            elif codec == "gzip" and obj.unconsumed_tail:
                tail = obj.unconsumed_tail
                comp += len(data) - len(tail)
                data = tail
            else:
                comp += len(data)
                data = b""
        if fed and codec == "gzip":
            # zlib may hold output back when a call hit the output limit exactly.
            out = obj.flush()
            if out:
                yield out
            if obj.eof and not obj.unused_data:
                fed = False
    except errors as e:
        raise CorruptFileError(path, f"corrupt {codec} data near compressed byte {comp}: {e}") from None
    if fed:
        raise CorruptFileError(path, f"truncated {codec} file: it ends inside a compressed frame")


def _check_zero_tail(f: BinaryIO, path: str, pos: int) -> None:
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return
        if chunk.strip(b"\0"):
            raise CorruptFileError(path, f"unexpected data after the gzip padding at byte {pos}")


@functools.lru_cache(maxsize=256)
def _parsed_index(
    read_index: bytes,
) -> tuple[int, int, np.ndarray, frozenset[int], np.ndarray, np.ndarray, int]:
    """The read index, unpacked once per file and process (streams read a file chunk after chunk)."""
    header, arrays = unpack_index(read_index, "jsonl", INDEX_VERSION)
    meta = header["meta"]
    return (
        int(meta["stride"]),
        int(meta["lines"]),
        np.cumsum(arrays["offsets_delta"]),
        frozenset(arrays["skipped"].tolist()),
        arrays["frames_comp"],
        arrays["frames_dec"],
        int(meta["file_size"]),
    )


class _OpenCursors(threading.local):
    """Each thread's open line cursors, by path (at most ``keep``, least recently used closed).

    A stream reads a file chunk after chunk, and consecutive chunks often continue the same
    block of lines: a cursor kept open there continues decompressing where the last read
    stopped, instead of reopening the file and decompressing its frame from the start again.
    A cursor is taken out while a read uses it, so two reads of one file never share one.
    """

    keep = 16

    def __init__(self) -> None:  # runs once in every thread that uses it
        self.cursors = _Cursors()

    def take(self, path: str, make: Callable[[], _LineCursor], frames_dec: np.ndarray) -> _LineCursor:
        cur = self.cursors.pop(path, None)
        if cur is not None and cur.src.frames_dec is frames_dec:  # same (cached) read index
            return cur
        if cur is not None:
            cur.src.close()
        return make()

    def put(self, path: str, cur: _LineCursor) -> None:
        self.cursors[path] = cur
        while len(self.cursors) > self.keep:
            self.cursors.pop(next(iter(self.cursors))).src.close()


class _Cursors(dict[str, "_LineCursor"]):
    """One thread's cursors; a thread's local data is freed when it ends, and this closes its files."""

    def __del__(self) -> None:
        for cur in self.values():
            cur.src.close()


_OPEN = _OpenCursors()


def _forget_cursors_after_fork() -> None:
    """A forked child (a DataLoader worker) shares the parent's file offsets: it must never
    read through the cursors it inherited, so it starts with none."""
    _OPEN.cursors = _Cursors()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_cursors_after_fork)


class _ByteSource:
    """Decompressed bytes of a file from any decompressed offset.

    Plain files seek. Compressed files restart at the last frame at or before the target,
    unless the stream already open is positioned between that frame and the target, in
    which case it decompresses forward (so sorted ranges cost one pass).
    """

    def __init__(self, path: str, codec: str, frames_comp: np.ndarray, frames_dec: np.ndarray) -> None:
        self.path = path
        self.codec = codec
        self.frames_comp = frames_comp
        self.frames_dec = frames_dec
        self.f: BinaryIO = storage.open_input(path)
        self.pos = 0  # decompressed offset of the next byte read() returns
        self._gen: Iterator[bytes] | None = None
        self._head = b""  # decompressed bytes already produced but not returned yet

    def close(self) -> None:
        self.f.close()

    def seek(self, target: int) -> None:
        if self.codec == "none":
            self.f.seek(target)
            self.pos = target
            return
        k = int(np.searchsorted(self.frames_dec, target, side="right")) - 1
        k = max(k, 0)
        if self._gen is None or not (int(self.frames_dec[k]) <= self.pos <= target):
            # small compressed reads: a range read stops decompressing soon after its last line
            self._gen = _iter_frames(
                self.f,
                self.codec,
                self.path,
                int(self.frames_comp[k]),
                int(self.frames_dec[k]),
                read_size=_READ_SIZE,
            )
            self._head = b""
            self.pos = int(self.frames_dec[k])
        while self.pos < target:
            chunk = self._head or next(self._gen, b"")
            if not chunk:
                return  # past the end
            self._head = b""
            if self.pos + len(chunk) > target:
                self._head = chunk[target - self.pos :]
                self.pos = target
                return
            self.pos += len(chunk)

    def read(self) -> bytes:
        if self.codec == "none":
            chunk = self.f.read(64 << 10)
        elif self._head:
            chunk, self._head = self._head, b""
        else:
            if self._gen is None:
                self.seek(self.pos)
            assert self._gen is not None
            chunk = next(self._gen, b"")
        self.pos += len(chunk)
        return chunk


class _LineCursor:
    """Iterates lines (split at b'\\n' only) from a line start of a :class:`_ByteSource`."""

    def __init__(self, src: _ByteSource) -> None:
        self.src = src
        self.buf = b""
        self.i = 0
        self.buf_off = 0  # decompressed offset of buf[0]
        self.line = -1  # number of the line next_line() returns; -1: not positioned

    def goto(self, line: int, off: int) -> None:
        if self.line >= 0 and self.buf_off <= off <= self.buf_off + len(self.buf):
            self.i = off - self.buf_off
        else:
            self.src.seek(off)
            self.buf = b""
            self.i = 0
            self.buf_off = off
        self.line = line

    def take_block(self, stop: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        """Lines ``self.line .. stop - 1`` as one bytes block, with each line's start and end in it."""
        need = stop - self.line
        have = self.buf.count(b"\n", self.i)
        parts: list[bytes] = []
        while have < need:
            more = self.src.read()
            if not more:
                break
            parts.append(more)
            have += more.count(b"\n")
        if parts:  # one join: appending piece by piece would copy the block over and over
            self.buf_off += self.i
            self.buf = b"".join([self.buf[self.i :], *parts])
            self.i = 0
        view = np.frombuffer(self.buf, dtype=np.uint8)[self.i :]
        nl = np.flatnonzero(view == _NEWLINE)[:need]
        ends = nl
        if len(nl) < need and len(view) > (int(nl[-1]) + 1 if len(nl) else 0):
            ends = np.append(nl, len(view))  # a last line without a trailing newline
        starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
        end = int(ends[-1]) if len(ends) else 0
        block = self.buf[self.i : self.i + end]
        self.i = min(self.i + end + 1, len(self.buf)) if len(ends) else self.i
        self.line += len(ends)
        return block, starts.astype(np.int64), ends.astype(np.int64)

    def next_line(self) -> bytes | None:
        j = self.buf.find(b"\n", self.i)
        while j < 0:
            more = self.src.read()
            if not more:
                if self.i < len(self.buf):  # last line without a trailing newline
                    raw = self.buf[self.i :]
                    self.i = len(self.buf)
                    self.line += 1
                    return raw
                return None
            searched = len(self.buf) - self.i
            self.buf_off += self.i
            self.buf = self.buf[self.i :] + more
            self.i = 0
            j = self.buf.find(b"\n", searched)
        raw = self.buf[self.i : j]
        self.i = j + 1
        self.line += 1
        return raw


def _range_lines(cur: _LineCursor, stop: int, skipped: frozenset[int]) -> Iterator[tuple[int, bytes]]:
    while cur.line < stop:
        line = cur.line
        raw = cur.next_line()
        if raw is None:
            return
        if line in skipped or (raw[:1] != b"{" and not raw.strip()):
            continue
        yield line, raw


def _byte_spans(
    ranges: Sequence[tuple[int, int]],
    codec: str,
    stride: int,
    lines: int,
    offsets: np.ndarray,
    frames_comp: np.ndarray,
    frames_dec: np.ndarray,
    file_size: int,
) -> list[tuple[int, int]]:
    """The stored (compressed) byte spans that reading ``ranges`` of lines touches: from the
    checkpoint (and, compressed, the frame) at or before each range's first line to the one
    after its last. What a remote file fetches at once (:func:`mixtera_core.storage.will_need`).
    None for a compressed file of one frame: any line of it is decompressed from the start, and
    the reader's readahead serves that pass."""
    spans: list[tuple[int, int]] = []
    if codec != "none" and len(frames_dec) < 2:
        return spans
    for a, b in ranges:
        a, b = max(int(a), 0), min(int(b), lines)
        if a >= b:
            continue
        lo = int(offsets[min(a // stride, len(offsets) - 1)])
        k_hi = -(-b // stride)
        hi = int(offsets[k_hi]) if k_hi < len(offsets) else None
        if codec != "none":
            f_lo = max(int(np.searchsorted(frames_dec, lo, side="right")) - 1, 0)
            f_hi = int(np.searchsorted(frames_dec, hi, side="left")) if hi is not None else len(frames_dec)
            spans.append(
                (int(frames_comp[f_lo]), int(frames_comp[f_hi]) if f_hi < len(frames_comp) else file_size)
            )
        else:
            spans.append((lo, hi if hi is not None else file_size))
    return spans


def _parse_line(path: str, line: int, raw: bytes) -> Any:
    try:
        return _loads(raw)
    except ValueError as e:
        raise MalformedRecordError(
            path, f"line {line + 1}", f"invalid JSON: {e}", "the file changed since registration?"
        ) from None


def _loads(raw: bytes) -> Any:
    """Parse one line; invalid UTF-8 is replaced rather than refused (one bad byte in a text
    field does not cost the sample)."""
    if raw.startswith(_BOM):
        raw = raw[3:]
    return json.loads(raw.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- scan state


class _Scan:
    """Per-file registration state."""

    def __init__(self, fmt: JsonlFormat, path: str, parser: MetadataParser, on_error: str) -> None:
        self.fmt = fmt
        self.path = path
        self.parser = parser
        self.on_error = on_error
        self.schema = parser.record_schema()
        self.field_map = parser.field_map()
        # Attempts for the native reader: the declared types, and, when list properties are
        # declared, the same with their element type (metadata often holds "en" where
        # ["en"] is declared); values read that way are wrapped into one-element lists.
        self.attempts: list[tuple[pajson.ParseOptions, dict[str, PropertyType]]] = []
        if self.field_map is not None:
            scalar = {p: t.element for p, t in self.schema.items()}
            for schema in (self.schema, scalar) if scalar != self.schema else (self.schema,):
                try:
                    read_schema = arrow_read_schema(self.field_map, schema)
                except ValueError:
                    break  # overlapping paths: extract in Python instead
                opts = pajson.ParseOptions(explicit_schema=read_schema, unexpected_field_behavior="ignore")
                self.attempts.append((opts, schema))
        self.tables: list[pa.Table] = []
        self.sizes: list[np.ndarray] = []  # the line lengths of each table's samples, row for row
        self.checkpoints: list[np.ndarray] = []
        self.skipped_lines: list[int] = []
        self.lines = 0  # lines seen so far (the number of the next line)
        self.size = 0  # decompressed bytes seen so far

    # ---- one block of whole lines

    def block(self, block: memoryview) -> None:
        """Process ``block`` (whole lines, ending with b'\\n') starting at line ``self.lines``."""
        first_line = self.lines
        arr = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(arr == _NEWLINE)
        n = len(ends)
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        stride = self.fmt.index_stride
        self.checkpoints.append(starts[(-first_line) % stride :: stride] + self.size)

        # Every line starting with '{' is a sample; look at the few others in Python.
        odd = np.flatnonzero(arr[starts] != _OPEN_BRACE)
        is_sample = np.ones(n, dtype=bool)
        # Lines pyarrow would accept but the contract refuses (``null``) or that it would report
        # without a line number: the pieces holding them take the Python path.
        not_object = np.zeros(n, dtype=bool)
        for i in odd.tolist():
            text = bytes(block[starts[i] : ends[i]]).strip()
            if first_line + i == 0 and text.startswith(_BOM):
                text = text[3:].strip()
            if not text:
                is_sample[i] = False
            elif text[0] != _OPEN_BRACE:
                not_object[i] = True

        lines = _Lines(block, starts, ends, is_sample, not_object, first_line)
        if not self.attempts:
            self._slow(lines, 0, n)
        else:
            self._fast(lines, 0, n, depth=0)
        self.lines += n
        self.size += len(block)

    def _fast(self, lines: _Lines, lo: int, hi: int, depth: int) -> None:
        """pyarrow over lines [lo, hi) of the block; on refusal, split and/or fall back."""
        sample_pos = np.flatnonzero(lines.is_sample[lo:hi]) + lo
        if len(sample_pos) == 0:
            return
        cols = None
        if not lines.not_object[lo:hi].any():
            b0, b1 = int(lines.starts[lo]), int(lines.ends[hi - 1]) + 1
            longest = int((lines.ends[lo:hi] - lines.starts[lo:hi]).max())
            read_options = pajson.ReadOptions(block_size=max(self.fmt.json_chunk_size, longest + 2))
            for k, (parse_options, schema) in enumerate(self.attempts):
                try:
                    table = pajson.read_json(
                        pa.BufferReader(pa.py_buffer(lines.block[b0:b1])),
                        read_options=read_options,
                        parse_options=parse_options,
                    )
                    if table.num_rows != len(sample_pos):
                        continue  # e.g. two objects on one line
                    assert self.field_map is not None
                    cols = lift_fields(table, self.field_map, schema, self.path)
                except (pa.ArrowException, ValueError):
                    continue
                if schema is not self.schema:
                    cols = {p: _one_element_lists(c, self.schema[p]) for p, c in cols.items()}
                if k:  # try what worked first next time
                    self.attempts.insert(0, self.attempts.pop(k))
                break
        if cols is None:
            pieces = self.fmt.fallback_pieces
            if depth == 0 and hi - lo >= 4 * pieces:
                bounds = np.linspace(lo, hi, pieces + 1).astype(np.int64).tolist()
                for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                    if b > a:
                        self._fast(lines, a, b, depth + 1)
            else:
                self._slow(lines, lo, hi)
            return
        self._add(lines, make_table(sample_pos + lines.first_line, cols, self.schema))

    def _add(self, lines: _Lines, table: pa.Table) -> None:
        """Keep a table of samples of the block, and the lengths of their lines."""
        self.tables.append(table)
        rows = table.column("sample_index").to_numpy() - lines.first_line
        self.sizes.append(lines.ends[rows] - lines.starts[rows])

    def _slow(self, lines: _Lines, lo: int, hi: int) -> None:
        """json.loads per line over lines [lo, hi): exact coercion, exact error locations."""
        cols = PropertyColumns(self.schema, self.path, unit="line")
        parser, path = self.parser, self.path
        b0 = int(lines.starts[lo])
        chunk = bytes(lines.block[b0 : int(lines.ends[hi - 1]) + 1])
        st = (lines.starts[lo:hi] - b0).tolist()
        en = (lines.ends[lo:hi] - b0).tolist()
        for i in np.flatnonzero(lines.is_sample[lo:hi]).tolist():
            line = lines.first_line + lo + i
            try:
                record = _loads(chunk[st[i] : en[i]])
            except (ValueError, RecursionError) as e:
                err = MalformedRecordError(path, cols.where(line), f"invalid JSON: {e}", _HINT)
            else:
                if not isinstance(record, dict):
                    err = MalformedRecordError(
                        path, cols.where(line), f"expected a JSON object, got {type(record).__name__}", _HINT
                    )
                else:
                    try:
                        cols.add_record(line, record, parser)
                        continue
                    except MalformedRecordError as e:
                        err = e
                    except Exception as e:  # a Python parser failing on this record
                        err = MalformedRecordError(
                            path,
                            cols.where(line),
                            f"parser {parser.name!r} failed: {type(e).__name__}: {e}",
                            _HINT,
                        )
                        err.__cause__ = e
            if self.on_error == "fail":
                raise err
            self.skipped_lines.append(line)
        table = columns_to_table(cols, self.on_error, self.skipped_lines, _HINT)
        if table is not None:
            self._add(lines, table)


def _one_element_lists(values: pa.Array, ptype: PropertyType) -> pa.Array:
    """Scalars read for a list property -> one-element lists (nulls stay null)."""
    if not ptype.is_list:
        return values
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, type=ptype.arrow, mask=values.is_null())


class _Lines:
    """One block of whole lines and what numpy found out about them."""

    __slots__ = ("block", "starts", "ends", "is_sample", "not_object", "first_line")

    def __init__(
        self,
        block: memoryview,
        starts: np.ndarray,
        ends: np.ndarray,
        is_sample: np.ndarray,
        not_object: np.ndarray,
        first_line: int,
    ) -> None:
        self.block = block
        self.starts = starts  # offset of each line in the block
        self.ends = ends  # offset of each line's b"\n"
        self.is_sample = is_sample  # False for blank lines
        self.not_object = not_object  # non-blank, but does not start with "{"
        self.first_line = first_line  # line number of the block's first line


# --------------------------------------------------------------------------- the format


class JsonlFormat(DatasetFormat):
    """JSON Lines files, plain, gzip or zstd compressed. See the module docstring."""

    name = "jsonl"
    suffixes = (
        ".jsonl",
        ".jsonl.gz",
        ".jsonl.zst",
        ".jsonl.zstd",
        ".ndjson",
        ".ndjson.gz",
        ".ndjson.zst",
        ".ndjson.zstd",
        # Common names for JSON Lines in published corpora (C4, Dolma, ...).
        ".json.gz",
        ".json.zst",
        ".json.zstd",
    )

    def __init__(
        self,
        block_size: int = 16 << 20,
        index_stride: int = 32,
        min_frame_gap: int = 64 << 10,
        json_chunk_size: int = 1 << 20,
        fallback_pieces: int = 16,
    ) -> None:
        """
        Args:
            block_size: bytes read at once during registration (plain files; compressed files
                are read block_size/4 compressed bytes at a time, about block_size or more
                decompressed). Each block's whole lines go to pyarrow in one call.
            index_stride: one offset checkpoint every this many lines in the read index.
            min_frame_gap: frame starts of compressed files are indexed at least this many
                decompressed bytes apart (0 indexes every frame).
            json_chunk_size: pyarrow's JSON chunk (its unit of parallelism).
            fallback_pieces: a block pyarrow refuses is retried in this many pieces before the
                refused pieces take the Python path.
        """
        if block_size < 1 or index_stride < 1 or min_frame_gap < 0 or fallback_pieces < 1:
            raise ValueError("block_size, index_stride and fallback_pieces must be positive")
        self.block_size = block_size
        self.index_stride = index_stride
        self.min_frame_gap = min_frame_gap
        self.json_chunk_size = json_chunk_size
        self.fallback_pieces = fallback_pieces

    def __repr__(self) -> str:
        return f"JsonlFormat(block_size={self.block_size}, index_stride={self.index_stride})"

    # ---- registration

    def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
        check_on_error(on_error)
        codec = _codec(path)
        st = _Scan(self, path, parser, on_error)
        frames: list[tuple[int, int]] = [(0, 0)]

        def on_frame(comp: int, dec: int) -> None:
            if dec - frames[-1][1] >= self.min_frame_gap and dec > frames[-1][1]:
                frames.append((comp, dec))

        with contextlib.ExitStack() as stack:
            f = stack.enter_context(storage.open_input(path))
            file_size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if codec == "none":
                chunks: Iterator[bytes] = iter(lambda: f.read(self.block_size), b"")
            else:
                # Text compresses 3-10x: compressed reads of block_size/4 give blocks of about
                # block_size or more, decompressed straight into one buffer each.
                read_size = max(1024, self.block_size // 4)
                chunks = _iter_frames(f, codec, path, read_size=read_size, on_frame=on_frame)
            # Whole lines of each decompressed chunk go to block() without being copied; only
            # the line that straddles two chunks is assembled (and processed on its own).
            carry: list[bytes] = []
            prefetched = prefetch(chunks)
            stack.callback(prefetched.close)  # stop the reader thread before closing the file
            for chunk in prefetched:
                start = 0
                if carry:
                    j = chunk.find(b"\n")
                    if j < 0:  # a line longer than a chunk
                        carry.append(chunk)
                        continue
                    carry.append(chunk[: j + 1])
                    st.block(memoryview(b"".join(carry)))
                    carry = []
                    start = j + 1
                cut = chunk.rfind(b"\n") + 1
                if cut > start:
                    st.block(memoryview(chunk)[start:cut])
                else:
                    cut = start
                if cut < len(chunk):
                    carry.append(chunk[cut:])
            if carry:  # a last line without a trailing newline
                st.block(memoryview(b"".join(carry) + b"\n"))
                st.size -= 1

        offsets = np.concatenate(st.checkpoints) if st.checkpoints else np.zeros(0, dtype=np.int64)
        fr = np.asarray(frames, dtype=np.int64).reshape(-1, 2)
        index = pack_index(
            "jsonl",
            INDEX_VERSION,
            {
                "codec": codec,
                "stride": self.index_stride,
                "lines": st.lines,
                "size": st.size,
                "file_size": file_size,
            },
            {
                "offsets_delta": np.diff(offsets, prepend=0) if len(offsets) else offsets,
                "skipped": np.sort(np.asarray(st.skipped_lines, dtype=np.int64)),
                "frames_comp": fr[:, 0],
                "frames_dec": fr[:, 1],
            },
        )
        sizes = np.concatenate(st.sizes).astype(np.int64) if st.sizes else np.zeros(0, dtype=np.int64)
        return FileScan(concat_tables(st.tables, st.schema), len(st.skipped_lines), index, sizes)

    # ---- streaming

    def read(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, Any]]:
        for _, b, cur, skipped in self._raw_ranges(path, ranges, read_index):
            for line, raw in _range_lines(cur, b, skipped):
                yield line, _parse_line(path, line, raw)

    def byte_spans(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> list[tuple[int, int]] | None:
        if read_index is None:
            return None
        stride, lines, offsets, _, frames_comp, frames_dec, size = _parsed_index(read_index)
        return (
            _byte_spans(ranges, _codec(path), stride, lines, offsets, frames_comp, frames_dec, size) or None
        )

    def read_field(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None, field: FieldRef
    ) -> Iterator[tuple[int, Any]]:
        """One field of each sample, a whole range per pyarrow call.

        The range's lines are cut out of the decompressed buffer in one piece (numpy finds the
        newlines) and parsed by pyarrow's JSON reader with a schema holding only the field, in
        C++ and outside the GIL. A range with blank or skipped lines, or one pyarrow refuses (a
        value of another type), is parsed line by line like ``read``.
        """
        schema = arrow_read_schema({"v": field}, {"v": _STR})
        opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        # one range is one small block: pyarrow's own threads cost more than they save here,
        # and the stream already reads in a background thread
        read_opts = pajson.ReadOptions(use_threads=False, block_size=1 << 24)
        for a, b, cur, skipped in self._raw_ranges(path, ranges, read_index):
            block, starts, ends = cur.take_block(b)
            n = len(starts)
            if n == 0:
                continue
            values: list[Any] | None = None
            lengths = ends - starts
            clean = bool((lengths > 0).all()) and (not skipped or skipped.isdisjoint(range(a, a + n)))
            if clean and not block.startswith(_BOM):
                first = np.frombuffer(block, dtype=np.uint8)[starts]
                if (first == _OPEN_BRACE).all():
                    try:
                        table = pajson.read_json(
                            pa.BufferReader(block), read_options=read_opts, parse_options=opts
                        )
                        if table.num_rows == n:
                            values = lift_fields(table, {"v": field}, {"v": _STR}, path)["v"].to_pylist()
                    except (pa.ArrowInvalid, ValueError, KeyError):
                        values = None
            if values is not None:
                yield from zip(range(a, a + n), values, strict=True)
                continue
            for k in range(n):
                line, raw = a + k, block[starts[k] : ends[k]]
                if line in skipped or (raw[:1] != b"{" and not raw.strip()):
                    continue
                yield line, extract(_parse_line(path, line, raw), field)

    def _raw_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, int, _LineCursor, frozenset[int]]]:
        """Per range, (start, stop, a cursor standing at line ``start``, the skipped lines)."""
        codec = _codec(path)
        if read_index is None:  # no index: stream from the start
            stride, lines = 1 << 62, None
            offsets = np.zeros(1, dtype=np.int64)
            skipped: frozenset[int] = frozenset()
            frames_comp = frames_dec = np.zeros(1, dtype=np.int64)
        else:
            stride, lines, offsets, skipped, frames_comp, frames_dec, size = _parsed_index(read_index)
            check_unchanged(path, size)
        cur = _OPEN.take(
            path, lambda: _LineCursor(_ByteSource(path, codec, frames_comp, frames_dec)), frames_dec
        )
        keep = read_index is not None
        if lines is not None and storage.is_remote(path):
            spans = _byte_spans(ranges, codec, stride, lines, offsets, frames_comp, frames_dec, size)
            storage.will_need(cur.src.f, spans)
        try:
            for a, b in ranges:
                a = max(int(a), 0)
                b = int(b) if lines is None else min(int(b), lines)
                if a >= b:
                    continue
                k = min(a // stride, len(offsets) - 1)
                if not (k * stride <= cur.line <= a):
                    cur.goto(k * stride, int(offsets[k]))
                while cur.line < a:
                    if cur.next_line() is None:
                        break
                yield a, b, cur, skipped
        except GeneratorExit:  # the reader stopped early: the cursor is at a line start still
            raise
        except BaseException:
            keep = False  # e.g. a corrupt frame: do not reuse a cursor in an unknown state
            raise
        finally:
            if keep:
                _OPEN.put(path, cur)
            else:
                cur.src.close()
