"""Built-in metadata parsers: ``fields`` (declarative mapping), ``slimpajama`` and ``pile``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mixtera_core.errors import InvalidPropertyError
from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import FieldRef, MetadataParser
from mixtera_core.properties import PropertyType, property_type, validate_property_name
from mixtera_core.records import coerce


class FieldsParser(MetadataParser):
    """Declarative mapping from property names to where their values live.

    Each option maps a property to one of:

    - ``"meta.language"``: a dotted path into the record (JSON keys, parquet (nested)
      columns, or ``json.key`` for the ``.json`` member of a webdataset sample), type ``str``;
    - ``{"path": "meta.year", "type": "int"}``: the same with an explicit type
      (``str``, ``int``, ``float``, ``bool``, ``list[str]``, ``list[int]``);
    - ``{"path_regex": r"data/(\\w+)/"}``: the first group of a regex searched in the
      file's absolute path (null when it does not match);
    - ``{"value": "wiki"}``: a constant for the whole dataset.

    Record paths are handed to the format as a field map, so jsonl and parquet extraction
    runs inside pyarrow's native readers rather than a Python loop.
    """

    name = "fields"

    def __init__(self, **mapping: Any) -> None:
        super().__init__(**mapping)
        if not mapping:
            raise InvalidPropertyError(
                "the 'fields' parser needs at least one property mapping, e.g. "
                "parser_options={'language': 'meta.language'}"
            )
        self._schema: dict[str, PropertyType] = {}
        self._fields: dict[str, FieldRef] = {}
        self._regex: dict[str, re.Pattern[str]] = {}
        self._const: dict[str, Any] = {}
        for prop, spec in mapping.items():
            validate_property_name(prop)
            if isinstance(spec, str):
                spec = {"path": spec}
            if not isinstance(spec, Mapping):
                raise InvalidPropertyError(
                    f"mapping for property {prop!r} must be a dotted path or a dict with 'path', "
                    f"'path_regex' or 'value', got {spec!r}"
                )
            sources = [k for k in ("path", "path_regex", "value") if k in spec]
            unknown = set(spec) - {"path", "path_regex", "value", "type"}
            if len(sources) != 1 or unknown:
                raise InvalidPropertyError(
                    f"mapping for property {prop!r} needs exactly one of 'path', 'path_regex', 'value' "
                    f"(plus an optional 'type'), got keys {sorted(spec)}"
                )
            ptype = property_type(spec.get("type", "str"))
            self._schema[prop] = ptype
            if "path" in spec:
                self._fields[prop] = FieldRef.parse(spec["path"])
            elif "path_regex" in spec:
                try:
                    rx = re.compile(spec["path_regex"])
                except re.error as e:
                    raise InvalidPropertyError(f"path_regex of property {prop!r} is invalid: {e}") from None
                if rx.groups < 1:
                    raise InvalidPropertyError(
                        f"path_regex of property {prop!r} needs a capturing group, e.g. 'data/(\\w+)/'"
                    )
                self._regex[prop] = rx
            else:
                try:
                    self._const[prop] = coerce(spec["value"], ptype)
                except ValueError as e:
                    raise InvalidPropertyError(f"value of property {prop!r}: {e}") from None

    @property
    def schema(self) -> dict[str, PropertyType]:
        return dict(self._schema)

    def field_map(self) -> dict[str, FieldRef]:
        return dict(self._fields)

    def file_property_names(self) -> list[str]:
        return [*self._regex, *self._const]

    def file_properties(self, path: str) -> dict[str, Any]:
        out = dict(self._const)
        for prop, rx in self._regex.items():
            m = rx.search(path)
            out[prop] = coerce(m.group(1), self._schema[prop]) if m and m.group(1) is not None else None
        return out


class SlimPajamaParser(FieldsParser):
    """SlimPajama / RedPajama records: ``meta.redpajama_set_name`` -> ``redpajama_set_name``.

    Extra options add more mappings with the same syntax as the ``fields`` parser.
    """

    name = "slimpajama"

    def __init__(self, **extra: Any) -> None:
        super().__init__(redpajama_set_name="meta.redpajama_set_name", **extra)


class PileParser(FieldsParser):
    """The Pile's records: ``meta.pile_set_name`` -> ``pile_set_name``."""

    name = "pile"

    def __init__(self, **extra: Any) -> None:
        super().__init__(pile_set_name="meta.pile_set_name", **extra)


@hookimpl
def mixtera_parsers() -> list[type[MetadataParser]]:
    return [FieldsParser, SlimPajamaParser, PileParser]
