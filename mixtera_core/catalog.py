"""The DuckDB catalog: datasets, files, and one metadata row per sample.

Layout (in ``DB_DIR/catalog.duckdb``)::

    datasets(id, name, location, format, parser, parser_options, num_files, num_samples, num_skipped)
    files(id, dataset_id, path, num_samples, num_skipped, size_bytes, read_index, sample_bytes,
          mtime_ns, content_hash)
    samples(dataset_id, file_id, sample_index, <one nullable column per property>)
    properties(name, type)                 -- the property columns of ``samples``
    dataset_properties(dataset_id, name)   -- which dataset uses which property
    meta(key, value)                       -- schema version, catalog version

A registration scans its files first (in a thread pool, without holding the catalog lock),
then checks and writes in one transaction, one writer at a time: whether the name is taken
and whether the declared property types agree with the catalog are decided inside that
transaction, so of two concurrent registrations of one name exactly one succeeds (the other
gets :class:`~mixtera_core.errors.DatasetExistsError`). A failure anywhere (a malformed line
in the last file, a parser exception, a type clash) rolls back everything, so the catalog
never holds half a dataset. The catalog version increases with every committed change; jobs
record it. Within a process every :class:`Catalog` of one file shares one lock; DuckDB lets
only one process open the file (another gets :class:`~mixtera_core.errors.CatalogLockedError`).

``files.size_bytes``, ``files.mtime_ns`` and ``files.content_hash`` are what registration saw
of each file (:class:`FileFingerprint`); streams refuse a file that no longer matches
(:class:`~mixtera_core.errors.FileChangedError`). ``mtime_ns``/``content_hash`` are NULL for
files registered before the columns existed: those get the size check only.

``files.sample_bytes`` holds every sample's size in bytes (see
:class:`~mixtera_core.interfaces.FileScan`) as a zstd-compressed little-endian ``uint32``
array indexed by ``sample_index`` (sizes clipped at 2**32 - 1; skipped samples 0), or NULL
when the format did not tell (and for files registered before the column existed).
:meth:`Catalog.sample_bytes` returns them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import zstandard

from . import storage
from .errors import (
    CatalogLockedError,
    DatasetExistsError,
    FileChangedError,
    InvalidPropertyError,
    MixteraError,
    UnknownDatasetError,
)
from .interfaces import ON_ERROR_CHOICES, DatasetFormat, FileScan, MetadataParser
from .locations import resolve_files
from .properties import PropertyType, type_from_duckdb, validate_property_name

if TYPE_CHECKING:
    from .executors import ScanExecutor

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


#: Bytes hashed at each end of a file for its content fingerprint.
FINGERPRINT_BLOCK = 64 * 1024
#: How a format's files are fingerprinted: ``"ends"`` hashes the first and the last
#: FINGERPRINT_BLOCK bytes (the whole file when it is at most twice that), ``"footer"`` the last
#: FINGERPRINT_BLOCK bytes only (parquet: the footer metadata describes every row group). A
#: format plugin chooses with a ``fingerprint_region`` class attribute (default ``"ends"``).
FINGERPRINT_REGIONS = ("ends", "footer")


@dataclass(frozen=True)
class FileFingerprint:
    """What registration saw of a data file: its size, modification time and a content hash.

    ``content_hash`` is ``"<region>:blake2b:<hex>"`` (see FINGERPRINT_REGIONS). ``mtime_ns`` and
    ``content_hash`` are None for files registered before fingerprints existed: those are only
    checked for their size.
    """

    size: int
    mtime_ns: int | None = None
    content_hash: str | None = None

    @classmethod
    def of(cls, path: str, region: str = "ends") -> FileFingerprint:
        """The fingerprint of ``path`` as it is now. For a remote object (a URL) it is the size
        and the version the store gives it (``content_hash`` ``"version:<ETag or equivalent>"``)."""
        if storage.is_remote(path):
            info = storage.object_info(path)
            return cls(info.size, info.mtime_ns, None if info.version is None else f"version:{info.version}")
        st = os.stat(path)
        return cls(int(st.st_size), int(st.st_mtime_ns), _content_hash(path, region, int(st.st_size)))

    def verify(self, path: str) -> None:
        """Raise :class:`~mixtera_core.errors.FileChangedError` when ``path`` no longer matches.

        Cheap enough to call on every open: a ``stat`` compares the size; the content hash (at
        most 128 KiB read) is computed once per process for each state (size, mtime, ctime,
        inode) of the file, so a file is hashed again only after it was written or touched. A
        file rewritten with the same size and new content is refused even when its mtime was
        restored (the ctime moves); a file merely touched is hashed once more and accepted.
        A remote object is compared by size and version, once per process (see
        :mod:`~mixtera_core.storage`: later range reads are conditional on that version).
        """
        if storage.is_remote(path):
            storage.verify(path, self.object_info())
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileChangedError(path, "it no longer exists") from None
        if st.st_size != self.size:
            raise FileChangedError(path, f"its size is {st.st_size} bytes, registration saw {self.size}")
        if self.content_hash is None:
            return  # registered before fingerprints: the size is all we know
        region = self.content_hash.split(":", 1)[0]
        if region not in FINGERPRINT_REGIONS:
            return  # written by a newer Mixtera: the size check is all this one can do
        # ctime too: a rewrite that restores the mtime (os.utime) still moves the ctime
        state = (int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))
        key = (path, self)
        with _VERIFIED_LOCK:
            if _VERIFIED.get(key) == state:
                return
        now = _content_hash(path, region, int(st.st_size))
        if now != self.content_hash:
            mtime = (
                "and modification time"
                if st.st_mtime_ns == self.mtime_ns
                else f"but modification time {st.st_mtime_ns} ns (was {self.mtime_ns})"
            )
            raise FileChangedError(
                path, f"same size ({st.st_size} bytes) {mtime}, but its content differs (content hash)"
            )
        with _VERIFIED_LOCK:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            _VERIFIED[key] = state

    def object_info(self) -> storage.ObjectInfo:
        """This fingerprint as the storage layer's :class:`~mixtera_core.storage.ObjectInfo`."""
        version = None
        if self.content_hash is not None and self.content_hash.startswith("version:"):
            version = self.content_hash[len("version:") :]
        return storage.ObjectInfo(self.size, version, self.mtime_ns)


# (path, fingerprint) -> the (size, mtime_ns, ctime_ns, inode) whose content hash matched, in
# this process
_VERIFIED: dict[tuple[str, FileFingerprint], tuple[int, int, int, int]] = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 1 << 20


def _content_hash(path: str, region: str, size: int) -> str:
    """``"<region>:blake2b:<hex>"`` of ``path`` (``size`` bytes long); see FINGERPRINT_REGIONS."""
    if region not in FINGERPRINT_REGIONS:
        raise ValueError(f"fingerprint region must be one of {FINGERPRINT_REGIONS}, got {region!r}")
    h = hashlib.blake2b(digest_size=16)
    block = FINGERPRINT_BLOCK
    with open(path, "rb") as fh:
        if region == "footer":
            fh.seek(max(size - block, 0))
            h.update(fh.read(min(size, block)))
        elif size <= 2 * block:
            h.update(fh.read(size))
        else:
            h.update(fh.read(block))
            fh.seek(size - block)
            h.update(fh.read(block))
    return f"{region}:blake2b:{h.hexdigest()}"


@dataclass(frozen=True)
class FileInfo:
    id: int
    dataset: str
    path: str
    format: str
    num_samples: int
    #: what registration saw of the file; None when its size was not recorded either
    fingerprint: FileFingerprint | None = None


@dataclass
class RegistrationReport:
    """What a registration did: files, samples, skipped samples and per-file detail."""

    dataset: str
    files: int = 0
    samples: int = 0
    skipped: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    skipped_by_file: dict[str, int] = field(default_factory=dict)
    # property -> samples that have a value for it (0: the mapping matched nothing, likely a typo)
    values_found: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # files whose scan an interrupted earlier run of this registration had finished (not rescanned)
    resumed: int = 0
    # wall time of the scan (the executor's part), and the executor that ran it
    scan_seconds: float = 0.0
    executor: str = "local"

    def __str__(self) -> str:
        s = f"registered {self.dataset!r}: {self.files} files, {self.samples} samples"
        if self.skipped:
            s += f", {self.skipped} skipped"
        if self.resumed:
            s += f" ({self.resumed} files resumed from an interrupted run)"
        return "\n".join([s, *(f"warning: {w}" for w in self.warnings)])


ProgressCallback = Callable[[str, int, int], None]  # (path, files done, files total)


class Catalog:
    """One DuckDB database holding the metadata of every registered dataset.

    Thread-safe for use by one process: calls are serialized on a lock that every Catalog of
    the same file in this process shares (DuckDB allows one writer process per database file;
    another process opening it gets :class:`~mixtera_core.errors.CatalogLockedError`).
    """

    def __init__(self, db_dir: str | os.PathLike[str]) -> None:
        self.db_dir = os.path.abspath(os.fspath(db_dir))
        os.makedirs(self.db_dir, exist_ok=True)
        self.path = os.path.join(self.db_dir, CATALOG_FILE)
        self._lock = _lock_for(self.path)
        with self._lock:
            self._con = _connect(self.path)
            try:
                self._init_schema()
            except BaseException:
                self._con.close()
                raise
            _OPEN_CATALOGS[os.path.realpath(self.db_dir)] = self
        for prefix, options in self.storage_options().items():
            storage.use_stored(prefix, options)

    @classmethod
    def opened(cls, db_dir: str | os.PathLike[str]) -> Catalog | None:
        """A Catalog of ``db_dir`` open in this process, or None."""
        return _OPEN_CATALOGS.get(os.path.realpath(os.fspath(db_dir)))

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
            # the file fingerprints (see FileFingerprint), likewise NULL for older files
            c.execute("ALTER TABLE files ADD COLUMN IF NOT EXISTS mtime_ns BIGINT")
            c.execute("ALTER TABLE files ADD COLUMN IF NOT EXISTS content_hash VARCHAR")
            # object storage: the dataset's public filesystem options, {"s3://bucket": {...}} (JSON)
            c.execute("ALTER TABLE datasets ADD COLUMN IF NOT EXISTS storage_options VARCHAR")
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
            key = os.path.realpath(self.db_dir)
            if _OPEN_CATALOGS.get(key) is self:
                del _OPEN_CATALOGS[key]

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
            return _property_types(self._con)

    def list_datasets(self) -> list[DatasetInfo]:
        with self._lock:
            rows = self._con.execute(
                "SELECT name, location, format, parser, parser_options, num_files, num_samples, num_skipped "
                "FROM datasets ORDER BY name"
            ).fetchall()
        return [DatasetInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def storage_options(self) -> dict[str, dict[str, Any]]:
        """The public filesystem options stored with the datasets, by URL prefix."""
        with self._lock:
            rows = self._con.execute(
                "SELECT storage_options FROM datasets WHERE storage_options IS NOT NULL ORDER BY id"
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for (blob,) in rows:
            out.update(json.loads(blob))
        return out

    def files(self, file_ids: Sequence[int] | None = None) -> dict[int, FileInfo]:
        sql = (
            "SELECT f.id, d.name, f.path, d.format, f.num_samples, f.size_bytes, f.mtime_ns, f.content_hash "
            "FROM files f JOIN datasets d ON f.dataset_id = d.id"
        )
        params: list[Any] = []
        if file_ids is not None:
            sql += " WHERE list_contains(?::BIGINT[], f.id)"
            params.append([int(i) for i in file_ids])
        with self._lock:
            rows = self._con.execute(sql + " ORDER BY f.id", params).fetchall()
        out = {}
        for fid, dataset, path, fmt, n, size, mtime_ns, content_hash in rows:
            fp = None if size is None else FileFingerprint(int(size), mtime_ns, content_hash)
            out[fid] = FileInfo(fid, dataset, path, fmt, n, fp)
        return out

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
        storage_options: dict[str, Any] | None = None,
        executor: str | ScanExecutor = "local",
    ) -> RegistrationReport:
        """Scan every file of ``location`` with ``fmt``/``parser`` and add the dataset atomically.

        ``storage_options`` (fsspec's, e.g. ``{"endpoint_url": ...}``) apply to the location's
        URLs: all of them in this process (:func:`mixtera_core.storage.configure`), and all
        but the secrets (keys, tokens, ...) are stored with the dataset for other processes.

        The files are scanned (and fingerprinted) by ``executor`` without holding the catalog
        lock: ``"local"`` (``workers`` threads of this process) or ``"ray"`` (tasks on a Ray
        cluster, see :mod:`mixtera_core.ray_executor`), or a
        :class:`~mixtera_core.executors.ScanExecutor`. Each finished file's scan is kept under
        ``DB_DIR/registrations/`` until the dataset is committed, so an interrupted or failed
        registration run again rescans only the files not done (or changed) since. Then, in one transaction under the lock, the name and the property types
        are checked again and everything is written. So two concurrent registrations of one
        name (threads, or clients of one server) cannot both succeed: the later one raises
        :class:`~mixtera_core.errors.DatasetExistsError` (``replace=False``), and a property
        declared with another type than the catalog's raises
        :class:`~mixtera_core.errors.InvalidPropertyError`. Any failure leaves the catalog as
        it was.
        """
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
        fingerprint_region(fmt)  # a bad one fails before the scan
        stored: dict[str, dict[str, Any]] = {}
        if storage_options:
            items = [location] if isinstance(location, str | os.PathLike) else list(location)
            for url in {storage.bucket(os.fspath(i)) for i in items if storage.is_remote(os.fspath(i))}:
                storage.configure(url, **storage_options)
                stored[url] = storage.public_options(storage_options)
                storage.use_stored(url, stored[url])
        try:
            stored_json = json.dumps(stored, sort_keys=True) if stored else None
        except TypeError as e:
            raise ValueError(
                f"storage_options must be JSON-serializable (stored in the catalog): {e}"
            ) from None
        # Fail fast, before the (slow) scan; decided again inside the transaction below.
        with self._lock:
            self._check_registrable(self._con, name, schema, parser_name, replace)
        paths = resolve_files(location, fmt.matches, fmt.name, fmt.suffixes)
        report = RegistrationReport(
            dataset=name,
            properties={p: t.name for p, t in schema.items()},
            values_found=dict.fromkeys(schema, 0),
        )
        from .executors import ScanJob, get_executor, scan_with_resume

        job = ScanJob(
            fmt=fmt,
            parser=parser,
            format_name=fmt.name,
            parser_name=parser_name,
            parser_options=dict(parser_options),
            on_error=on_error,
            schema=schema,
            stored_options={**storage.stored_options(), **stored},
            workers=workers,
        )
        scanned, spill = scan_with_resume(
            self.db_dir, name, options_json, job, paths, get_executor(executor), progress, report
        )
        try:
            with self._transaction() as c:
                old = self._check_registrable(c, name, schema, parser_name, replace)
                if old is not None:
                    self._delete_dataset(c, old)
                existing = _property_types(c)  # without the replaced dataset's own properties
                self._check_types(c, name, schema, parser_name, existing)
                self._insert(
                    c, name, location, fmt, parser_name, options_json, schema, paths, scanned, report
                )
                if stored_json is not None:
                    c.execute("UPDATE datasets SET storage_options = ? WHERE name = ?", [stored_json, name])
                self._bump_version(c)
        except duckdb.Error as e:
            raise MixteraError(
                f"registering dataset {name!r} failed in the catalog {self.path} ({type(e).__name__}: {e}); "
                f"nothing was written. Try again; if it persists, check the catalog file"
            ) from e
        spill.remove()  # committed: nothing left to resume
        return report

    def _insert(
        self,
        c: duckdb.DuckDBPyConnection,
        name: str,
        location: Any,
        fmt: DatasetFormat,
        parser_name: str,
        options_json: str,
        schema: dict[str, PropertyType],
        paths: list[str],
        scanned: list[_Scanned],
        report: RegistrationReport,
    ) -> None:
        """Write a scanned dataset (inside the registration's transaction)."""
        existing = _property_types(c)
        for prop, ptype in schema.items():
            if prop not in existing:
                c.execute(f"ALTER TABLE samples ADD COLUMN {_q(prop)} {ptype.duckdb}")
                c.execute("INSERT INTO properties VALUES (?, ?)", [prop, ptype.duckdb])
        dataset_id = _one(c.execute("SELECT coalesce(max(id), 0) + 1 FROM datasets"))
        next_file = _one(c.execute("SELECT coalesce(max(id), 0) + 1 FROM files"))
        c.execute(
            "INSERT INTO datasets (id, name, location, format, parser, parser_options, num_files, num_samples, "
            "num_skipped) VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0)",
            [dataset_id, name, _location_str(location), fmt.name, parser_name, options_json],
        )
        c.executemany("INSERT INTO dataset_properties VALUES (?, ?)", [[dataset_id, p] for p in schema])
        # file ids follow the sorted paths, so they are a function of the paths alone
        for i, (path, item) in enumerate(zip(paths, scanned, strict=True)):
            result, fp = item.scan, item.fingerprint
            file_id = next_file + i
            c.execute(
                "INSERT INTO files (id, dataset_id, path, num_samples, num_skipped, size_bytes, "
                "read_index, sample_bytes, mtime_ns, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    file_id,
                    dataset_id,
                    path,
                    result.num_samples,
                    result.skipped,
                    fp.size,
                    result.read_index,
                    item.sizes,
                    fp.mtime_ns,
                    fp.content_hash,
                ],
            )
            n = result.num_samples
            if n:
                batch = result.properties.add_column(
                    0, "dataset_id", pa.repeat(pa.scalar(dataset_id, pa.int32()), n)
                )
                batch = batch.add_column(1, "file_id", pa.repeat(pa.scalar(file_id, pa.int64()), n))
                c.register("_mixtera_batch", batch)
                try:
                    c.execute("INSERT INTO samples BY NAME SELECT * FROM _mixtera_batch")
                finally:
                    c.unregister("_mixtera_batch")
            for prop in schema if n else ():
                report.values_found[prop] += n - result.properties.column(prop).null_count
            report.files += 1
            report.samples += n
            report.skipped += result.skipped
            if result.skipped:
                report.skipped_by_file[path] = result.skipped
        c.execute(
            "UPDATE datasets SET num_files = ?, num_samples = ?, num_skipped = ? WHERE id = ?",
            [report.files, report.samples, report.skipped, dataset_id],
        )

    def _check_registrable(
        self,
        c: duckdb.DuckDBPyConnection,
        name: str,
        schema: dict[str, PropertyType],
        parser_name: str,
        replace: bool,
    ) -> int | None:
        """Raise unless ``name`` may be registered with ``schema``; the id of the dataset a
        ``replace`` removes, or None. Hold the lock (inside the transaction for the final say)."""
        row = _first(c.execute("SELECT id FROM datasets WHERE name = ?", [name]))
        old = None if row is None else int(row[0])
        if old is not None and not replace:
            raise DatasetExistsError(
                f"dataset {name!r} is registered already; pass replace=True to re-register it"
            )
        # the types of the properties other datasets use (a replaced dataset's own may change)
        rows = c.execute(
            "SELECT DISTINCT p.name, p.type FROM properties p JOIN dataset_properties dp ON dp.name = p.name "
            "WHERE dp.dataset_id IS DISTINCT FROM ?",
            [old],
        ).fetchall()
        self._check_types(c, name, schema, parser_name, {p: type_from_duckdb(t) for p, t in rows}, old)
        return old

    @staticmethod
    def _check_types(
        c: duckdb.DuckDBPyConnection,
        name: str,
        schema: dict[str, PropertyType],
        parser_name: str,
        existing: dict[str, PropertyType],
        replaced: int | None = None,
    ) -> None:
        """Raise InvalidPropertyError for the first property ``schema`` declares with another
        type than ``existing``; the message names the datasets (but ``replaced``) using it."""
        for prop, ptype in schema.items():
            have = existing.get(prop)
            if have is None or have == ptype:
                continue
            users = [
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT d.name FROM dataset_properties dp JOIN datasets d ON d.id = dp.dataset_id "
                    "WHERE dp.name = ? AND d.id IS DISTINCT FROM ? ORDER BY d.name",
                    [prop, replaced],
                ).fetchall()
            ]
            if len(users) == 1:
                used_by = f"dataset {users[0]!r} uses it"
            elif users:
                used_by = f"datasets {', '.join(map(repr, users))} use it"
            else:
                used_by = "the catalog has it"
            raise InvalidPropertyError(
                f"property {prop!r} is {have.name} in the catalog but parser {parser_name!r} declares "
                f"{ptype.name} for dataset {name!r} ({used_by} as {have.name}); declare it as {have.name}, "
                f"use another property name, or remove the datasets that use it first"
            )

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


# one lock per catalog file in this process: every Catalog of that file shares it, so that their
# transactions (DuckDB shares one database between the connections of a process) never overlap
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
# the Catalog objects open in this process, by real DB_DIR (see Catalog.opened)
_OPEN_CATALOGS: weakref.WeakValueDictionary[str, Catalog] = weakref.WeakValueDictionary()


def _lock_for(path: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(path), threading.RLock())


def _connect(path: str) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(path)``; a file another process holds raises CatalogLockedError."""
    try:
        return duckdb.connect(path)
    except duckdb.Error as e:
        msg = str(e)
        if "lock" in msg.lower():
            raise CatalogLockedError(
                f"the catalog {path} is open in another process ({msg.splitlines()[0]}). DuckDB lets one "
                f"process open a catalog: register and read through that process (e.g. serve the catalog "
                f"with mixtera-server and use MixteraClient.remote), or close it first"
            ) from None
        raise MixteraError(f"cannot open the catalog {path}: {type(e).__name__}: {e}") from e


def _property_types(c: duckdb.DuckDBPyConnection) -> dict[str, PropertyType]:
    rows = c.execute("SELECT name, type FROM properties ORDER BY name").fetchall()
    return {name: type_from_duckdb(t) for name, t in rows}


@dataclass
class _Scanned:
    """One file scanned for registration: its scan, encoded sample sizes and fingerprint."""

    scan: FileScan
    sizes: bytes | None
    fingerprint: FileFingerprint


def fingerprint_region(fmt: DatasetFormat) -> str:
    """How ``fmt``'s files are fingerprinted (see FINGERPRINT_REGIONS)."""
    region = getattr(fmt, "fingerprint_region", "ends")
    if region not in FINGERPRINT_REGIONS:
        raise MixteraError(
            f"format plugin {fmt.name!r} has fingerprint_region {region!r}; "
            f"it must be one of {FINGERPRINT_REGIONS} (a bug in the format plugin)"
        )
    return str(region)


def scan_file(fmt: DatasetFormat, parser: MetadataParser, path: str, on_error: str) -> _Scanned:
    """Scan and fingerprint one file for registration: what every executor runs per file (in
    this process, or on a Ray worker with the plugins found there by name)."""
    region = fingerprint_region(fmt)
    before = FileFingerprint.of(path, region)
    result = _with_file_properties(
        fmt.scan(path, parser, on_error), path, parser, parser.schema, set(parser.record_schema())
    )
    now: tuple[Any, ...]
    seen: tuple[Any, ...]
    if storage.is_remote(path):
        after = FileFingerprint.of(path, region)
        now, seen = (after.size, after.content_hash), (before.size, before.content_hash)
    else:
        st = os.stat(path)
        now, seen = (st.st_size, st.st_mtime_ns), (before.size, before.mtime_ns)
    if now != seen:
        raise FileChangedError(
            path,
            "it was modified while it was being registered; register the dataset once it is complete",
        )
    return _Scanned(result, _encode_sizes(result), before)  # sizes compressed off the insert path


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
