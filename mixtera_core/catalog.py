"""The DuckDB catalog: datasets, files, and one metadata row per sample.

Layout (in ``DB_DIR/catalog.duckdb``)::

    datasets(id, name, location, format, parser, parser_options, num_files, num_samples, num_skipped)
    files(id, dataset_id, path, num_samples, num_skipped, size_bytes, read_index, sample_bytes)
    samples(dataset_id, file_id, sample_index, <one nullable column per property>)
    properties(name, type)                 -- the property columns of ``samples``
    dataset_properties(dataset_id, name)   -- which dataset uses which property
    meta(key, value)                       -- schema version, catalog version

A registration runs inside one transaction: a failure anywhere (a malformed line in the
last file, a type clash) rolls back everything, so the catalog never holds half a
dataset. The catalog version increases with every committed change; jobs record it.

``files.sample_bytes`` holds every sample's size in bytes (see
:class:`~mixtera_core.interfaces.FileScan`) as a zstd-compressed little-endian ``uint32``
array indexed by ``sample_index`` (sizes clipped at 2**32 - 1; skipped samples 0), or NULL
when the format did not tell (and for files registered before the column existed).
:meth:`Catalog.sample_bytes` returns them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import zstandard

from .errors import DatasetExistsError, InvalidPropertyError, MixteraError, UnknownDatasetError
from .interfaces import ON_ERROR_CHOICES, DatasetFormat, FileScan, MetadataParser
from .locations import resolve_files
from .properties import PropertyType, type_from_duckdb, validate_property_name

SCHEMA_VERSION = 1
CATALOG_FILE = "catalog.duckdb"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    location: str
    format: str
    parser: str
    parser_options: dict[str, Any]
    num_files: int
    num_samples: int
    num_skipped: int


@dataclass(frozen=True)
class FileInfo:
    id: int
    dataset: str
    path: str
    format: str
    num_samples: int


@dataclass
class RegistrationReport:
    """What a registration did: files, samples, skipped samples and per-file detail."""

    dataset: str
    files: int = 0
    samples: int = 0
    skipped: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    skipped_by_file: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f"registered {self.dataset!r}: {self.files} files, {self.samples} samples"
        if self.skipped:
            s += f", {self.skipped} skipped"
        return s


ProgressCallback = Callable[[str, int, int], None]  # (path, files done, files total)


class Catalog:
    """One DuckDB database holding the metadata of every registered dataset.

    Thread-safe for use by one process: calls are serialized on an internal lock (DuckDB
    allows one writer per database file).
    """

    def __init__(self, db_dir: str | os.PathLike[str]) -> None:
        self.db_dir = os.path.abspath(os.fspath(db_dir))
        os.makedirs(self.db_dir, exist_ok=True)
        self.path = os.path.join(self.db_dir, CATALOG_FILE)
        self._con = duckdb.connect(self.path)
        self._lock = threading.RLock()
        self._init_schema()

    # ------------------------------------------------------------------ setup

    def _init_schema(self) -> None:
        with self._lock:
            c = self._con
            c.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            row = _first(c.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
            if row is not None and int(row[0]) != SCHEMA_VERSION:
                raise MixteraError(
                    f"{self.path} has catalog schema version {row[0]}, this Mixtera expects {SCHEMA_VERSION}; "
                    f"re-register the datasets into a new DB_DIR"
                )
            c.execute("""CREATE TABLE IF NOT EXISTS datasets (
                id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, location VARCHAR, format VARCHAR,
                parser VARCHAR, parser_options VARCHAR, num_files BIGINT, num_samples BIGINT, num_skipped BIGINT)""")
            c.execute("""CREATE TABLE IF NOT EXISTS files (
                id BIGINT PRIMARY KEY, dataset_id INTEGER NOT NULL, path VARCHAR NOT NULL,
                num_samples BIGINT, num_skipped BIGINT, size_bytes BIGINT, read_index BLOB)""")
            # Added without a schema-version bump: catalogs created before it get the column
            # (NULL, i.e. unknown, for the files they hold).
            c.execute("ALTER TABLE files ADD COLUMN IF NOT EXISTS sample_bytes BLOB")
            c.execute("""CREATE TABLE IF NOT EXISTS samples (
                dataset_id INTEGER NOT NULL, file_id BIGINT NOT NULL, sample_index BIGINT NOT NULL)""")
            c.execute(
                "CREATE TABLE IF NOT EXISTS properties (name VARCHAR PRIMARY KEY, type VARCHAR NOT NULL)"
            )
            c.execute("CREATE TABLE IF NOT EXISTS dataset_properties (dataset_id INTEGER, name VARCHAR)")
            if row is None:
                c.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?), ('version', '0')", [str(SCHEMA_VERSION)]
                )

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for read-only queries; hold ``lock`` while using it."""
        return self._con

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    # ------------------------------------------------------------------ reading the catalog

    @property
    def version(self) -> int:
        with self._lock:
            return int(_one(self._con.execute("SELECT value FROM meta WHERE key = 'version'")))

    def property_types(self) -> dict[str, PropertyType]:
        with self._lock:
            rows = self._con.execute("SELECT name, type FROM properties ORDER BY name").fetchall()
        return {name: type_from_duckdb(t) for name, t in rows}

    def list_datasets(self) -> list[DatasetInfo]:
        with self._lock:
            rows = self._con.execute(
                "SELECT name, location, format, parser, parser_options, num_files, num_samples, num_skipped "
                "FROM datasets ORDER BY name"
            ).fetchall()
        return [DatasetInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def files(self, file_ids: Sequence[int] | None = None) -> dict[int, FileInfo]:
        sql = "SELECT f.id, d.name, f.path, d.format, f.num_samples FROM files f JOIN datasets d ON f.dataset_id = d.id"
        params: list[Any] = []
        if file_ids is not None:
            sql += " WHERE list_contains(?::BIGINT[], f.id)"
            params.append([int(i) for i in file_ids])
        with self._lock:
            rows = self._con.execute(sql + " ORDER BY f.id", params).fetchall()
        return {r[0]: FileInfo(*r) for r in rows}

    def read_index(self, file_id: int) -> bytes | None:
        with self._lock:
            row = _first(self._con.execute("SELECT read_index FROM files WHERE id = ?", [file_id]))
        if row is None:
            raise MixteraError(f"file id {file_id} is not in the catalog (was its dataset removed?)")
        return row[0]

    def sample_bytes(self, file_ids: Sequence[int]) -> dict[int, np.ndarray | None]:
        """Per file id, each sample's size in bytes as an ``int64`` array indexed by
        ``sample_index`` (0 for samples not in the catalog), or None when unknown.

        One query for all ids; an id that is not in the catalog raises MixteraError.
        """
        ids = sorted({int(i) for i in file_ids})
        if not ids:
            return {}
        with self._lock:
            rows = self._con.execute(
                "SELECT f.id, f.sample_bytes FROM files f "
                "JOIN (SELECT unnest(?::BIGINT[]) AS id) q ON f.id = q.id",
                [ids],
            ).fetchall()
        found = {int(i): blob for i, blob in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise MixteraError(f"file ids {missing[:10]} are not in the catalog (was their dataset removed?)")
        return {i: None if found[i] is None else _decode_sizes(found[i]) for i in ids}

    def properties(self) -> dict[str, dict[Any, int]]:
        """property -> value -> number of samples having it (a list value counts once per element)."""
        out: dict[str, dict[Any, int]] = {}
        with self._lock:
            for name, ptype in self.property_types().items():
                col = _q(name)
                expr = f"unnest({col})" if ptype.is_list else col
                rows = self._con.execute(
                    f"SELECT v, count(*) FROM (SELECT {expr} AS v FROM samples WHERE {col} IS NOT NULL) "
                    f"WHERE v IS NOT NULL GROUP BY v ORDER BY v"
                ).fetchall()
                out[name] = {v: n for v, n in rows}
        return out

    # ------------------------------------------------------------------ registration

    def register(
        self,
        name: str,
        location: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        fmt: DatasetFormat,
        parser: MetadataParser,
        parser_name: str,
        parser_options: dict[str, Any],
        *,
        on_error: str = "fail",
        replace: bool = False,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> RegistrationReport:
        """Scan every file of ``location`` with ``fmt``/``parser`` and add the dataset atomically."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        try:
            options_json = json.dumps(parser_options, sort_keys=True)
        except TypeError as e:
            raise ValueError(
                f"parser_options must be JSON-serializable (they are stored in the catalog): {e}"
            ) from None
        schema = parser.schema
        for prop in schema:
            validate_property_name(prop)
        if not replace and self._dataset_id(name) is not None:
            raise DatasetExistsError(
                f"dataset {name!r} is registered already; pass replace=True to re-register it"
            )
        existing = self.property_types()
        for prop, ptype in schema.items():
            if prop in existing and existing[prop] != ptype:
                raise InvalidPropertyError(
                    f"property {prop!r} is {existing[prop].name} in the catalog but parser {parser_name!r} "
                    f"declares {ptype.name}; use the same type or another property name"
                )
        paths = resolve_files(location, fmt.matches, fmt.name, fmt.suffixes)
        report = RegistrationReport(dataset=name, properties={p: t.name for p, t in schema.items()})
        workers = max(1, workers or min(len(paths), os.cpu_count() or 1))
        record_props = set(parser.record_schema())

        def scan(path: str) -> tuple[FileScan, bytes | None]:
            result = _with_file_properties(
                fmt.scan(path, parser, on_error), path, parser, schema, record_props
            )
            return result, _encode_sizes(result)  # compressed in the worker, off the insert path

        with self._transaction() as c, ThreadPoolExecutor(max_workers=workers) as pool:
            old = self._dataset_id(name)
            if old is not None:
                self._delete_dataset(c, old)
                existing = self.property_types()  # the old dataset's own properties are gone
            for prop, ptype in schema.items():
                if prop not in existing:
                    c.execute(f"ALTER TABLE samples ADD COLUMN {_q(prop)} {ptype.duckdb}")
                    c.execute("INSERT INTO properties VALUES (?, ?)", [prop, ptype.duckdb])
            dataset_id = _one(c.execute("SELECT coalesce(max(id), 0) + 1 FROM datasets"))
            next_file = _one(c.execute("SELECT coalesce(max(id), 0) + 1 FROM files"))
            c.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0)",
                [dataset_id, name, _location_str(location), fmt.name, parser_name, options_json],
            )
            c.executemany("INSERT INTO dataset_properties VALUES (?, ?)", [[dataset_id, p] for p in schema])
            # map() keeps file order, so file ids are a function of the sorted paths alone.
            for i, (path, (result, sizes)) in enumerate(zip(paths, pool.map(scan, paths), strict=True)):
                file_id = next_file + i
                c.execute(
                    "INSERT INTO files (id, dataset_id, path, num_samples, num_skipped, size_bytes, "
                    "read_index, sample_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        file_id,
                        dataset_id,
                        path,
                        result.num_samples,
                        result.skipped,
                        os.path.getsize(path),
                        result.read_index,
                        sizes,
                    ],
                )
                n = result.num_samples
                if n:
                    batch = result.properties.add_column(
                        0, "dataset_id", pa.repeat(pa.scalar(dataset_id, pa.int32()), n)
                    )
                    batch = batch.add_column(1, "file_id", pa.repeat(pa.scalar(file_id, pa.int64()), n))
                    c.register("_mixtera_batch", batch)
                    c.execute("INSERT INTO samples BY NAME SELECT * FROM _mixtera_batch")
                    c.unregister("_mixtera_batch")
                report.files += 1
                report.samples += n
                report.skipped += result.skipped
                if result.skipped:
                    report.skipped_by_file[path] = result.skipped
                if progress is not None:
                    progress(path, i + 1, len(paths))
            c.execute(
                "UPDATE datasets SET num_files = ?, num_samples = ?, num_skipped = ? WHERE id = ?",
                [report.files, report.samples, report.skipped, dataset_id],
            )
            self._bump_version(c)
        return report

    def remove(self, name: str) -> None:
        """Remove a dataset, its files and samples; drop properties no other dataset uses."""
        with self._transaction() as c:
            dataset_id = self._dataset_id(name)
            if dataset_id is None:
                raise UnknownDatasetError(self._unknown_message(name))
            self._delete_dataset(c, dataset_id)
            self._bump_version(c)

    # ------------------------------------------------------------------ internals

    def _unknown_message(self, name: str) -> str:
        names = [d.name for d in self.list_datasets()]
        return f"no dataset named {name!r} (registered: {', '.join(names) or 'none'})"

    def _dataset_id(self, name: str) -> int | None:
        with self._lock:
            row = _first(self._con.execute("SELECT id FROM datasets WHERE name = ?", [name]))
        return None if row is None else int(row[0])

    def _delete_dataset(self, c: duckdb.DuckDBPyConnection, dataset_id: int) -> None:
        c.execute("DELETE FROM samples WHERE dataset_id = ?", [dataset_id])
        c.execute("DELETE FROM files WHERE dataset_id = ?", [dataset_id])
        c.execute("DELETE FROM datasets WHERE id = ?", [dataset_id])
        c.execute("DELETE FROM dataset_properties WHERE dataset_id = ?", [dataset_id])
        orphans = c.execute(
            "SELECT name FROM properties WHERE name NOT IN (SELECT name FROM dataset_properties) ORDER BY name"
        ).fetchall()
        for (prop,) in orphans:
            c.execute(f"ALTER TABLE samples DROP COLUMN {_q(prop)}")
            c.execute("DELETE FROM properties WHERE name = ?", [prop])

    def _bump_version(self, c: duckdb.DuckDBPyConnection) -> None:
        c.execute("UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) WHERE key = 'version'")


def _first(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of a result, consuming all of it (DuckDB 2 refuses new work while rows are pending)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _one(cursor: duckdb.DuckDBPyConnection) -> Any:
    """The single value of a single-row result."""
    row = _first(cursor)
    assert row is not None, "query returned no row"
    return row[0]


def _q(identifier: str) -> str:
    """Quote a validated identifier for SQL (property names are checked at registration)."""
    return '"' + identifier.replace('"', '""') + '"'


def _location_str(location: Any) -> str:
    if isinstance(location, str | os.PathLike):
        return os.fspath(location)
    return json.dumps([os.fspath(p) for p in location])


def _with_file_properties(
    scan: FileScan, path: str, parser: MetadataParser, schema: dict[str, PropertyType], record_props: set[str]
) -> FileScan:
    """Add the file-level properties (constant per file) as columns, and check the format's table."""
    table = scan.properties
    expected = ["sample_index", *[p for p in schema if p in record_props]]
    if table.column_names != expected:
        raise MixteraError(
            f"format plugin returned columns {table.column_names} for {path}, expected {expected}; "
            f"this is a bug in the format plugin"
        )
    file_level = {p: v for p, v in parser.file_properties(path).items() if p not in record_props}
    unknown = set(file_level) - set(schema)
    if unknown:
        raise MixteraError(f"parser {parser.name!r} returned undeclared file properties {sorted(unknown)}")
    n = table.num_rows
    for prop, ptype in schema.items():
        if prop in record_props:
            continue
        value = file_level.get(prop)
        col = pa.nulls(n, ptype.arrow) if value is None else pa.repeat(pa.scalar(value, ptype.arrow), n)
        table = table.append_column(prop, col)
    sizes = scan.sample_bytes
    if sizes is not None:
        sizes = np.asarray(sizes)
        if sizes.shape != (n,) or (n and not np.issubdtype(sizes.dtype, np.integer)):
            raise MixteraError(
                f"format plugin returned sample_bytes of shape {sizes.shape} ({sizes.dtype}) for {n} samples "
                f"of {path}; this is a bug in the format plugin"
            )
    return FileScan(properties=table, skipped=scan.skipped, read_index=scan.read_index, sample_bytes=sizes)


_SIZE_MAX = 2**32 - 1


def _encode_sizes(scan: FileScan) -> bytes | None:
    """``scan.sample_bytes`` as the ``files.sample_bytes`` value: a zstd-compressed
    little-endian uint32 array indexed by sample_index (absent samples 0), or None."""
    if scan.sample_bytes is None:
        return None
    index = scan.properties.column("sample_index").to_numpy()
    dense = np.zeros(int(index.max()) + 1 if len(index) else 0, dtype="<u4")
    dense[index] = np.clip(scan.sample_bytes, 0, _SIZE_MAX)
    return zstandard.ZstdCompressor(level=1).compress(dense.tobytes())


def _decode_sizes(blob: bytes) -> np.ndarray:
    return np.frombuffer(zstandard.ZstdDecompressor().decompress(blob), dtype="<u4").astype(np.int64)


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run a parameterless query and return its result as an Arrow table, without a DB-API copy."""
    rel = con.sql(sql)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow  # DuckDB 2 / DuckDB 1.x
    return fetch()
