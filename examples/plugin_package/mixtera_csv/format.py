"""The ``csv`` dataset format: comma-separated files with a header row.

A sample is one data row; its index is the row's position among the data rows (0-based,
header excluded), quoted values may span lines. Records are dicts of strings, as
:class:`csv.DictReader` would give them. Both scanning and reading use pyarrow's CSV reader.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mixtera_core.errors import CorruptFileError, MalformedRecordError, MissingFieldError, MixteraError
from mixtera_core.interfaces import ON_ERROR_CHOICES, DatasetFormat, FileScan, MetadataParser
from mixtera_core.records import PropertyColumns, record_values

_SKIP_HINT = "fix the row or register with on_error='skip'"


class _Rows:
    """The valid data rows of one CSV file, as strings, and their data-row indices."""

    def __init__(self, table: pa.Table, row_ids: np.ndarray, invalid: list[tuple[int, str]]) -> None:
        self.table = table
        self.row_ids = row_ids  # data-row index of each table row, ascending
        self.invalid = invalid  # (data-row index, reason) of rows the CSV parser rejected


def _header(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            names = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorruptFileError(path, f"cannot read the CSV header ({e})") from None
    if not names:
        raise CorruptFileError(path, "the file is empty; a CSV file needs a header row")
    return names


def _read_rows(path: str, columns: Sequence[str] | None = None) -> _Rows:
    names = _header(path)
    invalid: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        if row.number is None:  # pyarrow only leaves it unknown when reading in parallel
            raise CorruptFileError(path, "a malformed row could not be located")
        # pyarrow numbers rows from 1 including the header
        invalid.append((row.number - 2, f"expected {row.expected_columns} columns, got {row.actual_columns}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                include_columns=list(columns) if columns is not None else None,
                strings_can_be_null=False,
            ),
        )
    except MixteraError:
        raise
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptFileError(path, f"cannot parse the CSV file ({e})") from None
    bad = np.array(sorted(i for i, _ in invalid), dtype=np.int64)
    total = table.num_rows + len(bad)
    row_ids = np.setdiff1d(np.arange(total, dtype=np.int64), bad, assume_unique=True)
    return _Rows(table, row_ids, sorted(invalid))


class CsvFormat(DatasetFormat):
    """CSV files with a header row. Declarative parsers map properties to column names."""

    name = "csv"
    suffixes = (".csv",)

    def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        field_map = parser.field_map()
        schema = parser.record_schema()
        if field_map is not None:
            # A CSV has no nesting: the dotted path is the column name ("meta.lang" is a column).
            columns = {prop: str(ref) for prop, ref in field_map.items()}
            available = _header(path)
            for ref in columns.values():
                if ref not in available:
                    raise MissingFieldError(path, ref, available)
            rows = _read_rows(path, sorted(set(columns.values())))
        else:
            columns = {}
            rows = _read_rows(path)
        if rows.invalid and on_error == "fail":
            index, reason = rows.invalid[0]
            raise MalformedRecordError(path, f"row {index}", reason, _SKIP_HINT)
        skipped = len(rows.invalid)
        keep = np.ones(len(rows.row_ids), dtype=bool)

        if field_map is not None and not any(t.is_list for t in schema.values()):
            # Fast path: cast whole columns in Arrow; only a failing cast looks at single rows.
            values: dict[str, pa.Array] = {}
            for prop, column in columns.items():
                col = rows.table.column(column).combine_chunks()
                col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
                try:
                    values[prop] = col.cast(schema[prop].arrow)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    values[prop] = self._cast_rows(
                        path, col, schema[prop], rows.row_ids, keep, on_error, prop
                    )
            props = {p: v.filter(pa.array(keep)) for p, v in values.items()}
            table = pa.table({"sample_index": pa.array(rows.row_ids[keep]), **props})
        else:
            # Slow path: one dict per row through the parser (Python parsers, list-typed mappings).
            acc = PropertyColumns(schema, path, unit="row")
            records = rows.table.to_pylist()
            for row_id, record in zip(rows.row_ids.tolist(), records, strict=True):
                if field_map is not None:
                    record = {k: (v if v != "" else None) for k, v in record.items()}
                try:
                    try:
                        raw = record_values(record, parser, path)
                    except MixteraError as e:
                        raise MalformedRecordError(path, f"row {row_id}", str(e), _SKIP_HINT) from None
                    except (ValueError, KeyError, TypeError) as e:
                        raise MalformedRecordError(
                            path, f"row {row_id}", f"parser {parser.name!r} failed: {e!r}", _SKIP_HINT
                        ) from None
                    acc.add(row_id, acc.convert(row_id, raw))
                except MalformedRecordError:
                    if on_error == "fail":
                        raise
                    skipped += 1
            table = acc.to_table()

        skipped_ids = sorted(set(rows.row_ids.tolist()) - set(table.column("sample_index").to_pylist()))
        read_index = json.dumps({"skipped": skipped_ids}).encode() if skipped_ids else None
        return FileScan(properties=table, skipped=skipped + int((~keep).sum()), read_index=read_index)

    @staticmethod
    def _cast_rows(
        path: str, col: pa.Array, ptype: Any, row_ids: np.ndarray, keep: np.ndarray, on_error: str, prop: str
    ) -> pa.Array:
        """Cast value by value to name the row that fails (or drop it with on_error='skip')."""
        out = []
        for i, value in enumerate(col.to_pylist()):
            try:
                out.append(None if value is None else pa.scalar(value).cast(ptype.arrow).as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if on_error == "fail":
                    raise MalformedRecordError(
                        path,
                        f"row {int(row_ids[i])}",
                        f"property {prop!r}: expected {ptype.name}, got {value!r:.80}",
                        "fix the value, declare another type in the parser options, or register with "
                        "on_error='skip'",
                    ) from None
                keep[i] = False
                out.append(None)
        return pa.array(out, type=ptype.arrow)

    def read(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, dict[str, str]]]:
        rows = _read_rows(path)
        skipped = set(json.loads(read_index)["skipped"]) if read_index else set()
        for start, stop in ranges:
            lo, hi = np.searchsorted(rows.row_ids, [start, stop])
            if hi <= lo:
                continue
            ids = rows.row_ids[lo:hi].tolist()
            for row_id, record in zip(ids, rows.table.slice(lo, hi - lo).to_pylist(), strict=True):
                if row_id not in skipped:
                    yield row_id, record
