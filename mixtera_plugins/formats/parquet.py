"""Parquet files (``.parquet``): a sample is a row, its ``sample_index`` the 0-based row number.

**Registration.** For a declarative parser only the mapped columns are read, down to the
mapped nested leaves (``meta.language`` reads that leaf of the ``meta`` struct, not its
siblings), batch by batch, and lifted into typed columns by pyarrow. A mapped column that
the file lacks raises :class:`~mixtera_core.errors.MissingFieldError` listing the columns it
has. When a batch cannot be cast to the declared types (or a list property holds scalars),
that batch goes through the Python path, which coerces exactly like the JSON path does and
names the first offending row and column (``on_error="fail"``) or drops the rows that
cannot be coerced (``on_error="skip"``). Python parsers get every row as a dict.

**Sample sizes** (``FileScan.sample_bytes``): the byte length of each row's ``text`` column
(string or binary; null counts 0), read on its own, batch by batch, and measured by
pyarrow; a file without a ``text`` column of such a type has no sizes (None).

**Read index.** The footer already maps rows to row groups, so a range read only reads the
row groups it intersects, batch by batch. The read index is ``None`` unless rows were
skipped at registration; then it lists them (kind ``parquet`` container) so that reads never
yield them.

**Changed files.** The catalog fingerprints a parquet file by its footer (the last 64 KiB,
``fingerprint_region = "footer"``); streams refuse a file whose size or footer changed since
registration (:class:`~mixtera_core.errors.FileChangedError`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixtera_core import storage
from mixtera_core.errors import CorruptFileError, MalformedRecordError, MissingFieldError
from mixtera_core.interfaces import DatasetFormat, FieldRef, FileScan, MetadataParser
from mixtera_core.records import PropertyColumns, coerce, extract, lift_fields

from ._common import check_on_error, columns_to_table, concat_tables, make_table, pack_index, unpack_index

INDEX_VERSION = 1
#: The column whose byte length is a sample's size (FileScan.sample_bytes).
_TEXT = "text"
_HINT = "fix the value, declare another type in the parser options, or register with on_error='skip'"


#: footers parsed already, by (path, size, mtime_ns or version): a stream opens a file for
#: every chunk, and parsing its footer again each time costs as much as reading a row group
_FOOTERS: OrderedDict[tuple[str, int, Any], pq.FileMetaData] = OrderedDict()
_FOOTERS_LOCK = threading.Lock()
_MAX_FOOTERS = 256


def _open(path: str, source: Any = None) -> pq.ParquetFile:
    """``path`` as a ParquetFile; a remote one is read through ``source`` (a
    :class:`~mixtera_core.storage.RemoteFile`, opened here unless given)."""
    try:
        if storage.is_remote(path):
            src = source if source is not None else storage.open_input(path)
            key = (path, int(src.size), src.version)
        else:
            src = path
            st = os.stat(path)
            key = (path, int(st.st_size), int(st.st_mtime_ns))
        with _FOOTERS_LOCK:
            md = _FOOTERS.get(key)
        pf = pq.ParquetFile(src, metadata=md)
        if md is None:
            with _FOOTERS_LOCK:
                _FOOTERS[key] = pf.metadata
                while len(_FOOTERS) > _MAX_FOOTERS:
                    _FOOTERS.popitem(last=False)
        return pf
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise CorruptFileError(path, f"not a readable parquet file: {e}") from None


def _groups(md: pq.FileMetaData, ranges: Sequence[tuple[int, int]]) -> set[int]:
    """The row groups that hold rows of ``ranges``."""
    group_end = np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])
    num_rows = int(group_end[-1]) if len(group_end) else 0
    groups: set[int] = set()
    for a, b in ranges:
        a, b = max(int(a), 0), min(int(b), num_rows)
        if b > a:
            lo = int(np.searchsorted(group_end, a, side="right"))
            hi = int(np.searchsorted(group_end, b - 1, side="right"))
            groups.update(range(lo, min(hi, md.num_row_groups - 1) + 1))
    return groups


def _group_spans(md: pq.FileMetaData, groups: set[int]) -> list[tuple[int, int]]:
    """The byte span of each row group's column chunks (dictionary pages included)."""
    spans = []
    for g in sorted(groups):
        rg = md.row_group(g)
        lo, hi = None, 0
        for j in range(rg.num_columns):
            cc = rg.column(j)
            start = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
            if start is None:
                continue
            lo = start if lo is None else min(lo, start)
            hi = max(hi, start + cc.total_compressed_size)
        if lo is not None and hi > lo:
            spans.append((int(lo), int(hi)))
    return spans


def _columns_for(path: str, schema: pa.Schema, field_map: dict[str, FieldRef]) -> list[str]:
    """The (nested) column paths to read; raises MissingFieldError for absent fields."""
    wanted: list[tuple[str, ...]] = []
    for ref in field_map.values():
        if ref.path[0] not in schema.names:
            raise MissingFieldError(path, str(ref), schema.names)
        typ = schema.field(ref.path[0]).type
        for part in ref.path[1:]:
            if not pa.types.is_struct(typ) or typ.get_field_index(part) < 0:
                raise MissingFieldError(path, str(ref))
            typ = typ.field(part).type
        wanted.append(ref.path)
    # Reading a struct already reads its children: keep only the shortest prefixes.
    kept: list[tuple[str, ...]] = []
    for p in sorted(set(wanted), key=len):
        if not any(p[: len(q)] == q for q in kept):
            kept.append(p)
    return [".".join(p) for p in kept]


class ParquetFormat(DatasetFormat):
    """Parquet files. See the module docstring."""

    name = "parquet"
    suffixes = (".parquet",)
    #: the catalog fingerprints a parquet file by its last 64 KiB: the footer metadata, which
    #: describes (offsets, sizes, statistics) every row group
    fingerprint_region = "footer"

    def __init__(self, batch_size: int = 65536, read_batch_size: int = 8192) -> None:
        """
        Args:
            batch_size: rows per batch at registration.
            read_batch_size: rows decoded at a time when reading ranges.
        """
        if batch_size < 1 or read_batch_size < 1:
            raise ValueError("batch_size and read_batch_size must be positive")
        self.batch_size = batch_size
        self.read_batch_size = read_batch_size

    def __repr__(self) -> str:
        return f"ParquetFormat(batch_size={self.batch_size})"

    # ---- registration

    def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
        check_on_error(on_error)
        pf = _open(path)
        schema = parser.record_schema()
        field_map = parser.field_map()
        num_rows = pf.metadata.num_rows
        if field_map is not None:
            columns: list[str] | None = _columns_for(path, pf.schema_arrow, field_map)
            if not columns:  # nothing to read per row
                return FileScan(
                    make_table(np.arange(num_rows), {}, schema), sample_bytes=self._sizes(path, pf)
                )
        else:
            columns = None
        tables: list[pa.Table] = []
        skipped: list[int] = []
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=self.batch_size, columns=columns):
                n = batch.num_rows
                if field_map is not None:
                    try:
                        cols = lift_fields(pa.Table.from_batches([batch]), field_map, schema, path)
                        tables.append(make_table(np.arange(row, row + n), cols, schema))
                    except (ValueError, pa.ArrowException):
                        tables.extend(
                            self._slow_fields(path, batch, row, field_map, schema, on_error, skipped)
                        )
                else:
                    tables.extend(self._slow_parser(path, batch, row, parser, schema, on_error, skipped))
                row += n
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(path, f"cannot read parquet data near row {row}: {e}") from None
        index = None
        if skipped:
            index = pack_index(
                "parquet",
                INDEX_VERSION,
                {"rows": num_rows},
                {"skipped": np.sort(np.asarray(skipped, dtype=np.int64))},
            )
        table = concat_tables(tables, schema)
        sizes = self._sizes(path, pf)
        if sizes is not None and skipped:
            sizes = sizes[table.column("sample_index").to_numpy()]
        return FileScan(table, len(skipped), index, sizes)

    def _sizes(self, path: str, pf: pq.ParquetFile) -> np.ndarray | None:
        """The byte length of every row's ``text`` (null: 0), or None without such a column."""
        schema = pf.schema_arrow
        i = schema.get_field_index(_TEXT)
        if i < 0:
            return None
        typ = schema.field(i).type
        if not (
            pa.types.is_string(typ)
            or pa.types.is_large_string(typ)
            or pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ)
        ):
            return None
        out = np.zeros(pf.metadata.num_rows, dtype=np.int64)
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=self.batch_size, columns=[_TEXT]):
                n = batch.num_rows
                out[row : row + n] = pc.fill_null(pc.binary_length(batch.column(0)), 0).to_numpy()
                row += n
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(
                path, f"cannot read parquet column {_TEXT!r} near row {row}: {e}"
            ) from None
        return out

    @staticmethod
    def _slow_fields(
        path: str,
        batch: pa.RecordBatch,
        row0: int,
        field_map: dict[str, FieldRef],
        schema: dict[str, Any],
        on_error: str,
        skipped: list[int],
    ) -> list[pa.Table]:
        cols = PropertyColumns(schema, path, unit="row")
        for i, record in enumerate(batch.to_pylist()):
            row = row0 + i
            values = {}
            try:
                for prop, ref in field_map.items():
                    try:
                        values[prop] = coerce(extract(record, ref), schema[prop])
                    except ValueError as e:
                        raise MalformedRecordError(
                            path, cols.where(row), f"column {str(ref)!r} (property {prop!r}): {e}", _HINT
                        ) from None
            except MalformedRecordError:
                if on_error == "fail":
                    raise
                skipped.append(row)
                continue
            cols.add(row, values)
        table = columns_to_table(cols, on_error, skipped, _HINT)
        return [] if table is None else [table]

    @staticmethod
    def _slow_parser(
        path: str,
        batch: pa.RecordBatch,
        row0: int,
        parser: MetadataParser,
        schema: dict[str, Any],
        on_error: str,
        skipped: list[int],
    ) -> list[pa.Table]:
        cols = PropertyColumns(schema, path, unit="row")
        for i, record in enumerate(batch.to_pylist()):
            row = row0 + i
            try:
                try:
                    cols.add_record(row, record, parser)
                except MalformedRecordError:
                    raise
                except Exception as e:
                    raise MalformedRecordError(
                        path, cols.where(row), f"parser {parser.name!r} failed: {type(e).__name__}: {e}"
                    ) from e
            except MalformedRecordError:
                if on_error == "fail":
                    raise
                skipped.append(row)
        table = columns_to_table(cols, on_error, skipped, _HINT)
        return [] if table is None else [table]

    # ---- streaming

    def read(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, Any]]:
        skipped: frozenset[int] = frozenset()
        if read_index is not None:
            _, arrays = unpack_index(read_index, "parquet", INDEX_VERSION)
            skipped = frozenset(arrays["skipped"].tolist())
        source = storage.open_input(path) if storage.is_remote(path) else None
        pf = _open(path, source)
        return self._read(path, pf, ranges, skipped, source)

    def byte_spans(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> list[tuple[int, int]] | None:
        """The column chunks of the row groups the ranges touch (reads the footer: for a remote
        file that fetch is cached, and the read reuses it)."""
        md = _open(path).metadata
        return _group_spans(md, _groups(md, ranges))

    def _read(
        self,
        path: str,
        pf: pq.ParquetFile,
        ranges: Sequence[tuple[int, int]],
        skipped: frozenset[int],
        source: Any = None,
    ) -> Iterator[tuple[int, Any]]:
        md = pf.metadata
        group_rows = np.array([md.row_group(g).num_rows for g in range(md.num_row_groups)], dtype=np.int64)
        group_end = np.cumsum(group_rows)  # exclusive end row of each row group
        num_rows = int(group_end[-1]) if len(group_end) else 0
        batches: Iterator[pa.RecordBatch] | None = None
        group = -1  # row group the batch iterator is in
        pos = 0  # first row of `batch`
        batch: pa.RecordBatch | None = None
        if source is not None:  # a remote file: the row groups' column chunks, fetched at once
            storage.will_need(source, _group_spans(md, _groups(md, ranges)))
        try:
            for a, b in ranges:
                a, b = max(int(a), 0), min(int(b), num_rows)
                while a < b:
                    # Is row a in the decoded batch? Otherwise move the iterator to its row group.
                    if batch is None or not (pos <= a < pos + batch.num_rows):
                        g = int(np.searchsorted(group_end, a, side="right"))
                        if batches is None or g != group or a < pos:
                            batches = pf.iter_batches(batch_size=self.read_batch_size, row_groups=[g])
                            group = g
                            pos = int(group_end[g] - group_rows[g])
                            batch = None
                        elif batch is not None:
                            pos += batch.num_rows
                        batch = next(batches, None)
                        while batch is not None and pos + batch.num_rows <= a:
                            pos += batch.num_rows
                            batch = next(batches, None)
                        if batch is None:
                            raise CorruptFileError(path, f"row group {g} ends before row {a}")
                    stop = min(b, pos + batch.num_rows)
                    rows = batch.slice(a - pos, stop - a).to_pylist()
                    for i, record in enumerate(rows, start=a):
                        if i not in skipped:
                            yield i, record
                    a = stop
        except (OSError, pa.ArrowException) as e:
            raise CorruptFileError(path, f"cannot read parquet data: {e}") from None
