"""Reading samples back through format plugins, by (file id, ranges of sample indices)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .catalog import Catalog, FileInfo
from .plugins import PluginManager


class SampleReader:
    """Reads ranges of samples of catalog files; caches file metadata and read indexes."""

    def __init__(self, catalog: Catalog, plugins: PluginManager) -> None:
        self.catalog = catalog
        self.plugins = plugins
        self._files: dict[int, FileInfo] = {}
        self._read_index: dict[int, bytes | None] = {}

    def file(self, file_id: int) -> FileInfo:
        if file_id not in self._files:
            self._files.update(self.catalog.files([file_id]))
            if file_id not in self._files:
                raise KeyError(f"file id {file_id} is not in the catalog (was its dataset removed?)")
        return self._files[file_id]

    def read(self, file_id: int, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, Any]]:
        """Yield ``(sample_index, record)`` for the half-open ``ranges`` of one file."""
        info = self.file(file_id)
        if file_id not in self._read_index:
            self._read_index[file_id] = self.catalog.read_index(file_id)
        fmt = self.plugins.format(info.format)
        yield from fmt.read(info.path, ranges, self._read_index[file_id])
