"""Helpers shared by the built-in formats: result tables and the read-index container.

Every built-in format stores its read index in the same small self-describing container,
so that an index written by one version of Mixtera can be recognised (and refused with a
clear message, or upgraded) by another::

    b"MXRI" | uint32 LE header length | header (UTF-8 JSON) | payload

The header names the format (``kind``), the layout ``version`` of that format's index, the
payload ``compression`` (``"zstd"`` or ``null``), free-form ``meta`` values and the list of
``arrays`` ``[name, numpy dtype, length]`` that the payload holds back to back.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from mixtera_core import storage
from mixtera_core.errors import FileChangedError, MalformedRecordError
from mixtera_core.interfaces import ON_ERROR_CHOICES
from mixtera_core.properties import PropertyType
from mixtera_core.records import PropertyColumns

MAGIC = b"MXRI"
_HEADER_LEN = struct.Struct("<I")
#: Payloads smaller than this are stored uncompressed (compression would not pay off).
_COMPRESS_MIN = 4096


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")


def result_schema(schema: Mapping[str, PropertyType]) -> pa.Schema:
    """``sample_index`` (int64) followed by one column per record-level property."""
    return pa.schema(
        [pa.field("sample_index", pa.int64())] + [pa.field(p, t.arrow) for p, t in schema.items()]
    )


def make_table(
    sample_index: np.ndarray | Sequence[int], columns: Mapping[str, Any], schema: Mapping[str, PropertyType]
) -> pa.Table:
    arrays = [pa.array(np.asarray(sample_index, dtype=np.int64), type=pa.int64())]
    for prop, ptype in schema.items():
        col = columns[prop]
        arrays.append(col if isinstance(col, pa.Array) else pa.array(col, type=ptype.arrow))
    return pa.Table.from_arrays(arrays, schema=result_schema(schema))


def concat_tables(tables: Sequence[pa.Table], schema: Mapping[str, PropertyType]) -> pa.Table:
    """Concatenate per-block tables into the FileScan.properties table (possibly empty)."""
    target = result_schema(schema)
    if not tables:
        return target.empty_table()
    return pa.concat_tables([t if t.schema.equals(target) else t.cast(target) for t in tables])


_ARROW_ERRORS = (pa.ArrowException, UnicodeError, OverflowError, TypeError)


def columns_to_table(
    cols: PropertyColumns, on_error: str, skipped: list[int], hint: str = ""
) -> pa.Table | None:
    """``cols.to_table()``, or None when empty; a value Arrow refuses (an integer beyond
    int64, a lone surrogate in a string) is reported for its sample, or the sample skipped."""
    if not len(cols):
        return None
    try:
        return cols.to_table()
    except _ARROW_ERRORS:
        pass
    kept = PropertyColumns(cols.schema, cols.path, cols.unit)
    for row, idx in enumerate(cols.sample_index):
        values = {prop: cols.values[prop][row] for prop in cols.schema}
        for prop, ptype in cols.schema.items():
            try:
                pa.array([values[prop]], type=ptype.arrow)
            except _ARROW_ERRORS as e:
                if on_error == "fail":
                    raise MalformedRecordError(
                        cols.path, cols.where(idx), f"property {prop!r}: {type(e).__name__}: {e}", hint
                    ) from None
                skipped.append(idx)
                break
        else:
            kept.add(idx, values)
    return kept.to_table() if len(kept) else None


# --------------------------------------------------------------------------- read index container


def pack_index(
    kind: str, version: int, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], compress: bool = True
) -> bytes:
    """Serialise a read index: a JSON header plus raw little-endian numpy arrays."""
    specs = []
    parts = []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dtype, copy=False)
        specs.append([name, dtype.str, int(arr.size)])
        parts.append(arr.tobytes())
    payload = b"".join(parts)
    compression = None
    if compress and len(payload) >= _COMPRESS_MIN:
        payload = zstandard.ZstdCompressor(level=3).compress(payload)
        compression = "zstd"
    header = json.dumps(
        {"kind": kind, "version": version, "compression": compression, "meta": dict(meta), "arrays": specs},
        separators=(",", ":"),
    ).encode()
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + payload


@functools.lru_cache(maxsize=64)
def _unpack_cached(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if data[:4] != MAGIC or len(data) < 8:
        raise ValueError("not a Mixtera read index (bad magic); re-register the dataset")
    (hlen,) = _HEADER_LEN.unpack_from(data, 4)
    header = json.loads(data[8 : 8 + hlen])
    payload = data[8 + hlen :]
    if header.get("compression") == "zstd":
        payload = zstandard.ZstdDecompressor().decompress(payload)
    elif header.get("compression") is not None:
        raise ValueError(f"read index uses unknown compression {header['compression']!r}; upgrade mixtera")
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for name, dtype, length in header["arrays"]:
        dt = np.dtype(dtype)
        arr = np.frombuffer(payload, dtype=dt, count=length, offset=pos)
        arr.flags.writeable = False
        arrays[name] = arr
        pos += dt.itemsize * length
    return header, arrays


def unpack_index(data: bytes, kind: str, max_version: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a read index written by :func:`pack_index`; returns (header, arrays).

    Decoded indexes are cached (formats are asked to read many ranges of the same file).
    """
    header, arrays = _unpack_cached(bytes(data))
    if header.get("kind") != kind:
        raise ValueError(
            f"read index was written by format {header.get('kind')!r}, not {kind!r}; re-register the dataset"
        )
    if int(header.get("version", 0)) > max_version:
        raise ValueError(
            f"{kind} read index version {header.get('version')} is newer than this mixtera understands "
            f"(<= {max_version}); upgrade mixtera or re-register the dataset"
        )
    return header, arrays


def check_unchanged(path: str, registered_size: int) -> None:
    """Refuse to read a file whose size differs from registration: its indices would be wrong.

    A cheap guard for every reader of the format (the catalog's fingerprint, checked by the
    streams, also catches same-size rewrites); raises FileChangedError."""
    try:
        now = storage.size(path)
    except FileNotFoundError:
        raise FileChangedError(path, "it no longer exists") from None
    if now != registered_size:
        raise FileChangedError(path, f"its size is {now} bytes, registration saw {registered_size}")
