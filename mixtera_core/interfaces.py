"""The contracts plugins implement.

The core knows formats, parsers, tokenizers, mixing algorithms and trainer adapters only
through these classes and by name (see :mod:`mixtera_core.hookspecs`). Built-ins in
``mixtera_plugins`` implement exactly the same contracts a third-party package would.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from .errors import InvalidPropertyError
from .properties import PropertyType, property_type, validate_property_name

ON_ERROR_CHOICES = ("fail", "skip")


# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class FieldRef:
    """A declarative source of one property inside a record.

    ``path`` is a dotted path: ``meta.language`` is ``record["meta"]["language"]`` in a JSON
    line, the nested column ``meta.language`` in parquet, and, in a webdataset sample, the key
    ``language`` of its ``.json`` member (the first path element names the member).
    """

    path: tuple[str, ...]

    @classmethod
    def parse(cls, dotted: str) -> FieldRef:
        parts = tuple(dotted.split("."))
        if not dotted or any(not p for p in parts):
            raise InvalidPropertyError(f"field path {dotted!r} is empty or has an empty part")
        return cls(parts)

    def __str__(self) -> str:
        return ".".join(self.path)


class MetadataParser(ABC):
    """Turns a sample (or a file's columns) into property values.

    A parser declares its properties and their types up front (``schema``) so that the
    catalog can create columns before any file is read. It provides values either
    declaratively (``field_map`` returns property -> :class:`FieldRef`), which lets a
    format push extraction down into a native reader (pyarrow / DuckDB), or per record
    through ``parse``. ``file_properties`` gives values that are constant for a file
    (for instance taken from its path).
    """

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @property
    @abstractmethod
    def schema(self) -> dict[str, PropertyType]:
        """Property name -> type, for every property this parser produces."""

    def field_map(self) -> dict[str, FieldRef] | None:
        """Record-level properties as declarative field references, or None to use ``parse``."""
        return None

    def file_properties(self, path: str) -> dict[str, Any]:
        """Properties that are constant over one file (e.g. derived from its path)."""
        return {}

    def parse(self, record: Mapping[str, Any], path: str) -> dict[str, Any]:
        """Record-level properties of one sample. Only called when ``field_map`` is None."""
        raise NotImplementedError(f"parser {self.name!r} declares neither field_map() nor parse()")

    def file_property_names(self) -> list[str]:
        """Names of the properties ``file_properties`` fills; override when it returns any."""
        return []

    def record_schema(self) -> dict[str, PropertyType]:
        """The properties a format must extract from records (everything not file-level)."""
        fm = self.field_map()
        if fm is not None:
            return {p: self.schema[p] for p in fm}
        file_level = set(self.file_property_names())
        return {p: t for p, t in self.schema.items() if p not in file_level}


def parse_schema(spec: Mapping[str, str | PropertyType]) -> dict[str, PropertyType]:
    """Validate a ``{name: type}`` mapping given by a user or a plugin."""
    out: dict[str, PropertyType] = {}
    for name, typ in spec.items():
        validate_property_name(name)
        out[name] = typ if isinstance(typ, PropertyType) else property_type(typ)
    return out


# --------------------------------------------------------------------------- formats


@dataclass
class FileScan:
    """What a format learned about one file at registration.

    ``properties`` has an ``int64`` column ``sample_index`` (the position of the sample in
    the file: line number for jsonl, row for parquet, sample for webdataset; indices of
    skipped samples are simply absent) followed by one typed column per parser property.
    ``read_index`` is opaque to the core: it is stored with the file and handed back to
    :meth:`DatasetFormat.read` so that range reads can seek instead of re-scanning.

    ``sample_bytes`` is each sample's size in bytes (``int64``, one per row of
    ``properties``, same samples in the same order), or None when the format cannot tell.
    Token-mode planning estimates a sample's tokens as its size times a tokens-per-byte
    ratio, so the size follows the text a stream reads. The built-in formats record:

    * jsonl (plain, gzip, zstd): the byte length of the sample's line without its ``\\n``
      (the JSON of the whole record; with a ``text`` field, an upper bound of its UTF-8
      size). Measuring the ``text`` field itself would make registration parse every text
      (about 15% slower); the line lengths are free;
    * parquet: the byte length of the ``text`` column (string or binary; null counts 0), or
      None for a file without such a column;
    * webdataset: the size of the sample's ``txt`` member, else of its ``text`` member, else
      the sum of all its members' sizes.

    A third-party format may leave it None; the catalog then records the sizes as unknown.
    """

    properties: pa.Table
    skipped: int = 0
    read_index: bytes | None = None
    sample_bytes: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return self.properties.num_rows


class DatasetFormat(ABC):
    """A file format Mixtera can index and read without converting it."""

    name: ClassVar[str]
    #: Suffixes of the files this format owns when a directory or glob is registered.
    suffixes: ClassVar[tuple[str, ...]] = ()

    def matches(self, path: str) -> bool:
        """True if ``path`` is a file of this format (used to filter directories and globs)."""
        return path.endswith(self.suffixes)

    @abstractmethod
    def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
        """Enumerate the samples of ``path`` and their properties.

        ``on_error="fail"`` raises :class:`~mixtera_core.errors.MalformedRecordError` naming
        the file and line/sample; ``"skip"`` leaves the sample out and counts it.
        A file that cannot be read at all raises :class:`~mixtera_core.errors.CorruptFileError`.
        """

    @abstractmethod
    def read(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(sample_index, record)`` for every registered sample in the half-open ranges.

        Ranges are visited in the order given; indices of samples that were skipped at
        registration are not yielded. The record is what the format calls a sample (a dict
        for jsonl and parquet, ``{"__key__": ..., ext: bytes}`` for webdataset).
        """

    def byte_spans(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None
    ) -> list[tuple[int, int]] | None:
        """The byte spans of ``path`` that reading ``ranges`` will touch, or None (unknown).

        Optional. For a remote file a stream fetches these spans at once, concurrently and
        ahead of the read (:func:`mixtera_core.storage.prefetch`), instead of one range request
        after the other as the read reaches them. Over-estimating costs bandwidth, leaving
        bytes out costs a round trip when the read gets there; both stay correct.
        """
        return None

    def read_field(
        self, path: str, ranges: Sequence[tuple[int, int]], read_index: bytes | None, field: FieldRef
    ) -> Iterator[tuple[int, Any]]:
        """Like :meth:`read` but yields only one field of each record (None where absent).

        Streams that need only the text use this; a format can override it with a native
        path that never builds the whole record in Python.
        """
        from .records import extract

        for index, record in self.read(path, ranges, read_index):
            yield index, extract(record, field) if isinstance(record, dict) else None


# --------------------------------------------------------------------------- tokenizers


@runtime_checkable
class Tokenizer(Protocol):
    """A loaded tokenizer, as the streaming path uses it (token mode)."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


class TokenizerFactory(ABC):
    """Loads a :class:`Tokenizer` by name, from a local path or a packaged encoding."""

    name: ClassVar[str]

    @abstractmethod
    def load(self, source: str, **options: Any) -> Tokenizer: ...


# --------------------------------------------------------------------------- mixing algorithms


class MixingAlgorithm(ABC):
    """Adapts mixture weights online from per-domain training feedback.

    ``update`` receives, for one training step, the summed loss and the token (or sample)
    count per mixture component and returns new weights or None to keep the current ones.
    Its whole state must round-trip through ``state_dict``/``load_state_dict`` so that a
    resumed job continues exactly.
    """

    name: ClassVar[str]
    #: Where to run heavy, pure computations (a refit), set by the host: the server gives a
    #: process pool, so a refit never holds the GIL that acknowledges feedback and serves
    #: chunks. Submit picklable module-level functions and wait for their results (the result
    #: must not depend on where it ran); None (embedded use): compute inline.
    executor: Executor | None = None

    def __init__(self, initial_weights: Sequence[float], **options: Any) -> None:
        self.initial_weights = list(initial_weights)
        self.options = options

    @abstractmethod
    def update(self, step: int, losses: Sequence[float], counts: Sequence[float]) -> list[float] | None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --------------------------------------------------------------------------- trainer adapters


class TrainerAdapter(ABC):
    """Connects a training framework (Lightning, HF Trainer, torchtitan) to a Mixtera job."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def build_data(self, client: Any, job_id: str, **options: Any) -> Any:
        """Return the framework's data object (DataModule, dataset, dataloader) for a job."""


_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


def check_plugin_name(kind: str, obj: Any) -> str:
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise TypeError(f"{kind} plugin {obj!r} needs a lowercase string attribute 'name', got {name!r}")
    return name


__all__ = [
    "ON_ERROR_CHOICES",
    "DatasetFormat",
    "FieldRef",
    "FileScan",
    "MetadataParser",
    "MixingAlgorithm",
    "Tokenizer",
    "TokenizerFactory",
    "TrainerAdapter",
    "parse_schema",
]
