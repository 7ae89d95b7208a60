"""Helpers formats use to turn records into typed property tables.

Two paths, one result. The *fast path* hands a native reader (pyarrow's JSON or parquet
reader) an Arrow schema built from the parser's field map and lifts the mapped columns
out of the resulting nested table. The *slow path* walks Python records one by one; it is
used for Python parsers, and to locate the exact line/sample when the fast path refuses a
block, so errors always name where the problem is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import MalformedRecordError, MissingFieldError
from .interfaces import FieldRef, MetadataParser
from .properties import PropertyType

_MISSING = object()


def extract(record: Any, ref: FieldRef) -> Any:
    """Follow a dotted path into nested mappings; None when any step is absent or null."""
    cur = record
    for part in ref.path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part, _MISSING)
        if cur is _MISSING or cur is None:
            return None
    return cur


def coerce(value: Any, ptype: PropertyType) -> Any:
    """Coerce a Python value to a property type, or raise ValueError saying why.

    A scalar given for a list property becomes a one-element list, because metadata in
    the wild mixes ``"language": "en"`` and ``"language": ["en", "de"]``.
    """
    if value is None:
        return None
    if ptype.is_list:
        items = value if isinstance(value, list | tuple) else [value]
        return [coerce(v, ptype.element) for v in items]
    name = ptype.name
    if name == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return str(value)
    elif name == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got boolean {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif name == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    raise ValueError(f"expected {name}, got {type(value).__name__} {value!r:.80}")


class PropertyColumns:
    """Accumulates per-sample property values (slow path) into a typed Arrow table."""

    def __init__(self, schema: Mapping[str, PropertyType], path: str, unit: str = "line") -> None:
        self.schema = dict(schema)
        self.path = path
        self.unit = unit
        self.sample_index: list[int] = []
        self.values: dict[str, list[Any]] = {p: [] for p in self.schema}

    def where(self, sample_index: int) -> str:
        # Lines are reported 1-based like editors do; other units by their 0-based index.
        return f"line {sample_index + 1}" if self.unit == "line" else f"{self.unit} {sample_index}"

    def convert(self, sample_index: int, props: Mapping[str, Any]) -> dict[str, Any]:
        """Validate one sample's properties; raises MalformedRecordError naming the sample."""
        out = {}
        for prop, ptype in self.schema.items():
            try:
                out[prop] = coerce(props.get(prop), ptype)
            except ValueError as e:
                raise MalformedRecordError(
                    self.path,
                    self.where(sample_index),
                    f"property {prop!r}: {e}",
                    "fix the value, declare another type in the parser options, or register with on_error='skip'",
                ) from None
        return out

    def add(self, sample_index: int, props: Mapping[str, Any]) -> None:
        """Append one sample; call ``convert`` first if the sample may be skipped on error."""
        self.sample_index.append(sample_index)
        for prop in self.schema:
            self.values[prop].append(props.get(prop))

    def add_record(self, sample_index: int, record: Any, parser: MetadataParser) -> None:
        """Extract (declaratively or via ``parser.parse``) and append one sample."""
        self.add(sample_index, self.convert(sample_index, record_values(record, parser, self.path)))

    def __len__(self) -> int:
        return len(self.sample_index)

    def to_table(self) -> pa.Table:
        cols = {"sample_index": pa.array(self.sample_index, type=pa.int64())}
        for prop, ptype in self.schema.items():
            cols[prop] = pa.array(self.values[prop], type=ptype.arrow)
        return pa.table(cols)


def record_values(record: Any, parser: MetadataParser, path: str) -> dict[str, Any]:
    fm = parser.field_map()
    if fm is not None:
        return {prop: extract(record, ref) for prop, ref in fm.items()}
    return dict(parser.parse(record, path) or {})


def arrow_read_schema(field_map: Mapping[str, FieldRef], schema: Mapping[str, PropertyType]) -> pa.Schema:
    """The nested Arrow schema that makes a native reader parse only the mapped fields."""
    tree: dict[str, Any] = {}
    for prop, ref in field_map.items():
        node = tree
        for part in ref.path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"field {ref} is mapped both as a value and as an object")
            node = child
        if ref.path[-1] in node and node[ref.path[-1]] != schema[prop].arrow:
            raise ValueError(f"field {ref} is mapped twice with different types")
        node[ref.path[-1]] = schema[prop].arrow

    def build(node: dict[str, Any]) -> list[pa.Field]:
        return [
            pa.field(k, pa.struct(build(v)) if isinstance(v, dict) else v, nullable=True)
            for k, v in node.items()
        ]

    return pa.schema(build(tree))


def lift_fields(
    table: pa.Table, field_map: Mapping[str, FieldRef], schema: Mapping[str, PropertyType], path: str
) -> dict[str, pa.Array]:
    """Pull each mapped (possibly nested) field out of a table read by a native reader.

    Raises :class:`MissingFieldError` when a top-level column is absent (parquet) and
    ``ValueError`` when a value cannot be cast to the declared type.
    """
    out: dict[str, pa.Array] = {}
    for prop, ref in field_map.items():
        top = ref.path[0]
        if top not in table.column_names:
            raise MissingFieldError(path, str(ref), table.column_names)
        col: Any = table.column(top)
        for part in ref.path[1:]:
            if not pa.types.is_struct(col.type) or col.type.get_field_index(part) < 0:
                raise MissingFieldError(path, str(ref))
            col = pc.struct_field(col, part)
        target = schema[prop].arrow
        if not col.type.equals(target):
            if pa.types.is_null(col.type):
                col = pa.nulls(len(col), target)
            elif (
                schema[prop].is_list
                and not pa.types.is_list(col.type)
                and not pa.types.is_large_list(col.type)
            ):
                raise ValueError(f"field {ref} holds {col.type} values, declared {schema[prop].name}")
            else:
                col = col.cast(target)  # raises ArrowInvalid on a lossy/invalid cast
        out[prop] = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return out
