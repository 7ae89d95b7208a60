"""Property types: the small closed set of value types a sample property can have.

A property is a named, nullable column of the catalog's ``samples`` table. It is either
single-valued (``str``, ``int``, ``float``, ``bool``) or multi-valued (``list[str]``,
``list[int]``), e.g. several languages in one sample. Keeping the set closed lets every
format and parser agree on Arrow and DuckDB types without negotiating.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from .errors import InvalidPropertyError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Columns of the samples table that a property may not shadow.
RESERVED_NAMES = frozenset({"dataset_id", "file_id", "sample_index", "dataset", "file", "rowid"})


@dataclass(frozen=True)
class PropertyType:
    name: str  # our spelling: "str", "list[str]", ...
    arrow: pa.DataType
    duckdb: str

    @property
    def is_list(self) -> bool:
        return self.name.startswith("list[")

    @property
    def element(self) -> PropertyType:
        """The element type of a list type (the type itself for scalars)."""
        return PROPERTY_TYPES[self.name[5:-1]] if self.is_list else self


PROPERTY_TYPES: dict[str, PropertyType] = {
    "str": PropertyType("str", pa.string(), "VARCHAR"),
    "int": PropertyType("int", pa.int64(), "BIGINT"),
    "float": PropertyType("float", pa.float64(), "DOUBLE"),
    "bool": PropertyType("bool", pa.bool_(), "BOOLEAN"),
    "list[str]": PropertyType("list[str]", pa.list_(pa.string()), "VARCHAR[]"),
    "list[int]": PropertyType("list[int]", pa.list_(pa.int64()), "BIGINT[]"),
}

_DUCKDB_TO_TYPE = {t.duckdb: t for t in PROPERTY_TYPES.values()}


def property_type(name: str) -> PropertyType:
    """Look up a property type by its spelling (``"str"``, ``"list[int]"``, ...)."""
    try:
        return PROPERTY_TYPES[name]
    except KeyError:
        raise InvalidPropertyError(
            f"unknown property type {name!r}; use one of {', '.join(PROPERTY_TYPES)}"
        ) from None


def type_from_duckdb(duckdb_type: str) -> PropertyType:
    return _DUCKDB_TO_TYPE[duckdb_type]


def validate_property_name(name: str) -> str:
    """Property names become SQL column names, so they must be plain identifiers."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidPropertyError(
            f"property name {name!r} is not a valid identifier; use letters, digits and '_' "
            f"(not starting with a digit, at most 63 characters)"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidPropertyError(
            f"property name {name!r} is reserved for the catalog ({', '.join(sorted(RESERVED_NAMES))}); rename it"
        )
    return name
