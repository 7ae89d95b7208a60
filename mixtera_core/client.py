"""MixteraClient: one interface to a Mixtera catalog, embedded (local) or, later, remote.

``MixteraClient.local(db_dir)`` runs everything in this process on an embedded DuckDB
catalog. A remote client will implement the same abstract interface over gRPC, so
training code does not change when it moves from one GPU to a cluster.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .catalog import Catalog, DatasetInfo, ProgressCallback, RegistrationReport
from .index import ChunkerIndex, build_chunker_index
from .plugins import PluginManager, get_plugin_manager
from .query import Query
from .reading import SampleReader

Location = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class ComponentInfo:
    key: str
    values: dict[str, Any]
    samples: int
    files: int
    intervals: int


@dataclass
class Explanation:
    """What a query selects: samples per component (distinct property combination)."""

    properties: list[str]
    components: list[ComponentInfo] = field(default_factory=list)

    @property
    def total_samples(self) -> int:
        return sum(c.samples for c in self.components)

    def __str__(self) -> str:
        if not self.components:
            return "the query selects no samples"
        width = max(len(c.key) for c in self.components)
        lines = [f"{'component':<{width}}  {'samples':>10}  {'share':>7}  {'files':>6}  {'intervals':>9}"]
        total = self.total_samples
        for c in self.components:
            share = c.samples / total if total else 0.0
            lines.append(f"{c.key:<{width}}  {c.samples:>10}  {share:>7.2%}  {c.files:>6}  {c.intervals:>9}")
        lines.append(f"{'total':<{width}}  {total:>10}")
        return "\n".join(lines)


class MixteraClient(ABC):
    """The operations every Mixtera client offers, local or remote."""

    @staticmethod
    def local(db_dir: str | os.PathLike[str], plugins: PluginManager | None = None) -> LocalMixteraClient:
        """A client running on an embedded catalog in ``db_dir`` (created if needed)."""
        return LocalMixteraClient(db_dir, plugins)

    @abstractmethod
    def register_dataset(
        self,
        name: str,
        location: Location,
        *,
        format: str = "jsonl",
        parser: str = "fields",
        parser_options: dict[str, Any] | None = None,
        on_error: str = "fail",
        replace: bool = False,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> RegistrationReport:
        """Index every sample of ``location`` (file, directory, glob, or a list of them).

        ``format`` and ``parser`` name plugins; ``parser_options`` go to the parser (for
        ``fields``: property -> field path). ``on_error="skip"`` skips malformed samples
        and counts them instead of failing. Atomic: on error the catalog is unchanged.
        """

    @abstractmethod
    def list_datasets(self) -> list[DatasetInfo]: ...

    @abstractmethod
    def remove_dataset(self, name: str) -> None: ...

    @abstractmethod
    def properties(self) -> dict[str, dict[Any, int]]:
        """property -> value -> number of samples with that value."""

    @abstractmethod
    def explain(self, query: Query, properties: Sequence[str] | None = None) -> Explanation:
        """Samples per component that ``query`` selects (components over ``properties``)."""

    @abstractmethod
    def peek(
        self, query: Query, n: int = 3, properties: Sequence[str] | None = None
    ) -> list[tuple[str, Any]]:
        """The first ``n`` samples of each component, as (component key, record)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (database handles, connections)."""

    def __enter__(self) -> MixteraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalMixteraClient(MixteraClient):
    """Embedded client: catalog, query execution and reading in this process."""

    def __init__(self, db_dir: str | os.PathLike[str], plugins: PluginManager | None = None) -> None:
        self.plugins = plugins or get_plugin_manager()
        self.catalog = Catalog(db_dir)

    def register_dataset(
        self,
        name: str,
        location: Location,
        *,
        format: str = "jsonl",
        parser: str = "fields",
        parser_options: dict[str, Any] | None = None,
        on_error: str = "fail",
        replace: bool = False,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> RegistrationReport:
        fmt = self.plugins.format(format)
        options = dict(parser_options or {})
        parser_obj = self.plugins.parser(parser, **options)
        return self.catalog.register(
            name,
            location,
            fmt,
            parser_obj,
            parser,
            options,
            on_error=on_error,
            replace=replace,
            workers=workers,
            progress=progress,
        )

    def list_datasets(self) -> list[DatasetInfo]:
        return self.catalog.list_datasets()

    def remove_dataset(self, name: str) -> None:
        self.catalog.remove(name)

    def properties(self) -> dict[str, dict[Any, int]]:
        return self.catalog.properties()

    def chunker_index(self, query: Query, properties: Sequence[str] | None = None) -> ChunkerIndex:
        return build_chunker_index(self.catalog, query, properties)

    def explain(self, query: Query, properties: Sequence[str] | None = None) -> Explanation:
        index = self.chunker_index(query, properties)
        sizes = index.component_sizes()
        out = Explanation(properties=index.properties)
        for c, key in enumerate(index.component_keys()):
            fids, _, _ = index.intervals(c)
            out.components.append(
                ComponentInfo(
                    key=key,
                    values=index.component_values(c),
                    samples=int(sizes[c]),
                    files=len(set(fids.tolist())),
                    intervals=len(fids),
                )
            )
        return out

    def peek(
        self, query: Query, n: int = 3, properties: Sequence[str] | None = None
    ) -> list[tuple[str, Any]]:
        index = self.chunker_index(query, properties)
        reader = SampleReader(self.catalog, self.plugins)
        out: list[tuple[str, Any]] = []
        for c, key in enumerate(index.component_keys()):
            taken = 0
            for file_id, ranges in index.file_ranges(c).items():
                want: list[tuple[int, int]] = []
                budget = n - taken
                for s, e in ranges:
                    if budget <= 0:
                        break
                    want.append((s, min(e, s + budget)))
                    budget -= want[-1][1] - s
                for _, record in reader.read(file_id, want):
                    out.append((key, record))
                    taken += 1
                if taken >= n:
                    break
        return out

    def close(self) -> None:
        self.catalog.close()
