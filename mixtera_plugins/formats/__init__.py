"""Built-in dataset formats: ``jsonl`` (plain/gzip/zstd), ``parquet`` and ``webdataset``.

They are registered through the same ``mixtera_formats`` hook a third-party package uses.
"""

from __future__ import annotations

from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import DatasetFormat

from .jsonl import JsonlFormat
from .parquet import ParquetFormat
from .webdataset import WebDatasetFormat


@hookimpl
def mixtera_formats() -> list[DatasetFormat]:
    return [JsonlFormat(), ParquetFormat(), WebDatasetFormat()]


__all__ = ["JsonlFormat", "ParquetFormat", "WebDatasetFormat"]
