"""The ``length_bucket`` parser: a Python parser (no field map), so formats take their slow path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixtera_core.errors import InvalidPropertyError, MissingFieldError
from mixtera_core.interfaces import MetadataParser
from mixtera_core.properties import PropertyType, property_type


class LengthBucketParser(MetadataParser):
    """``length_bucket``: ``"short"``, ``"medium"`` or ``"long"`` from the length of a text field.

    Options: ``text_field`` (default ``"text"``; for webdataset samples the member extension,
    e.g. ``"txt"``), ``short_max`` (default 256) and ``medium_max`` (default 2048), inclusive
    upper bounds in characters of the short and medium buckets.
    """

    name = "length_bucket"

    def __init__(self, text_field: str = "text", short_max: int = 256, medium_max: int = 2048) -> None:
        super().__init__(text_field=text_field, short_max=short_max, medium_max=medium_max)
        if not isinstance(text_field, str) or not text_field:
            raise InvalidPropertyError(
                f"length_bucket: text_field must be a non-empty string, got {text_field!r}"
            )
        for opt, v in (("short_max", short_max), ("medium_max", medium_max)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidPropertyError(f"length_bucket: {opt} must be a non-negative integer, got {v!r}")
        if short_max >= medium_max:
            raise InvalidPropertyError(
                f"length_bucket: short_max ({short_max}) must be smaller than medium_max ({medium_max})"
            )
        self.text_field = text_field
        self.short_max = short_max
        self.medium_max = medium_max

    @property
    def schema(self) -> dict[str, PropertyType]:
        return {"length_bucket": property_type("str")}

    def bucket(self, length: int) -> str:
        if length <= self.short_max:
            return "short"
        return "medium" if length <= self.medium_max else "long"

    def parse(self, record: Mapping[str, Any], path: str) -> dict[str, Any]:
        if self.text_field not in record:
            raise MissingFieldError(path, self.text_field, [str(k) for k in record])
        text = record[self.text_field]
        if text is None:
            return {"length_bucket": None}
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8", errors="replace")
        return {"length_bucket": self.bucket(len(str(text)))}
