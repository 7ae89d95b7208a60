"""mixtera-csv-plugin: an example third-party Mixtera plugin.

Mixtera finds this module through the entry point ``csv`` in the group ``mixtera`` (see
``pyproject.toml``) and calls its hook implementations; nothing in Mixtera names it.
"""

from __future__ import annotations

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import DatasetFormat, MetadataParser

from .format import CsvFormat
from .parsers import LengthBucketParser

__all__ = ["CsvFormat", "LengthBucketParser"]


@hookimpl
def mixtera_formats() -> list[DatasetFormat]:
    return [CsvFormat()]


@hookimpl
def mixtera_parsers() -> list[type[MetadataParser]]:
    return [LengthBucketParser]
