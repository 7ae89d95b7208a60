"""The ChunkerIndex: component -> file -> sorted half-open intervals of sample indices.

A *component* is one distinct combination of values of the chosen properties among the
samples a query selects (e.g. ``language=python;license=psf``). For each component the
index lists, per file, the runs of consecutive sample indices ("islands"), so a chunk
builder can take N samples of a component by walking intervals instead of rows.

The islands are computed inside DuckDB with the classic gaps-and-islands trick
(``sample_index - row_number()`` is constant along a run of consecutive indices) and land
in flat numpy arrays in CSR layout: component ``c`` owns intervals
``comp_offsets[c]:comp_offsets[c + 1]``, sorted by (file id, start). Memory is three int64
per interval, independent of the number of samples in a run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from .catalog import Catalog, _one, _q, query_arrow
from .errors import QueryError
from .query import Query


def component_key(values: dict[str, Any]) -> str:
    """Readable key of a component: ``language=python;license=psf`` (lists as ``[a|b]``)."""
    parts = []
    for prop, value in values.items():
        if isinstance(value, list):
            value = "[" + "|".join(map(str, value)) + "]"
        parts.append(f"{prop}={'<null>' if value is None else value}")
    return ";".join(parts) if parts else "<all>"


@dataclass
class ChunkerIndex:
    properties: list[str]
    components: pa.Table  # row c: the property values of component c
    comp_offsets: np.ndarray  # int64, len C + 1
    file_ids: np.ndarray  # int64, one per interval
    starts: np.ndarray  # int64, inclusive
    stops: np.ndarray  # int64, exclusive
    catalog_version: int

    @property
    def num_components(self) -> int:
        return self.components.num_rows

    @property
    def num_intervals(self) -> int:
        return len(self.starts)

    def component_values(self, c: int) -> dict[str, Any]:
        return {p: self.components.column(p)[c].as_py() for p in self.properties}

    def component_keys(self) -> list[str]:
        rows = self.components.to_pylist()
        return [component_key({p: r[p] for p in self.properties}) for r in rows]

    def component_sizes(self) -> np.ndarray:
        """Number of samples per component."""
        lengths = self.stops - self.starts
        cum = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        return cum[self.comp_offsets[1:]] - cum[self.comp_offsets[:-1]]

    @property
    def num_samples(self) -> int:
        return int((self.stops - self.starts).sum())

    def intervals(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file_ids, starts, stops) of component ``c`` (views, sorted by file then start)."""
        lo, hi = self.comp_offsets[c], self.comp_offsets[c + 1]
        return self.file_ids[lo:hi], self.starts[lo:hi], self.stops[lo:hi]

    def gather(self, per_file: Mapping[int, np.ndarray]) -> np.ndarray:
        """Per-sample values in interval order: ``per_file[f][s]`` for every sample ``s`` of every
        interval (component by component, as :meth:`intervals` lists them).

        ``per_file`` maps each file id of the index to an array indexed by sample index (e.g. the
        byte or token size of each sample). Vectorized: one gather over all files at once.
        """
        fids = np.unique(self.file_ids)
        missing = [int(f) for f in fids.tolist() if int(f) not in per_file]
        if missing:
            raise KeyError(f"no per-sample values for files {missing[:5]}")
        arrays = [np.asarray(per_file[int(f)]) for f in fids.tolist()]
        base = np.concatenate(([0], np.cumsum([len(a) for a in arrays], dtype=np.int64)))
        flat = np.concatenate(arrays) if arrays else np.zeros(0)
        lengths = self.stops - self.starts
        slot = np.searchsorted(fids, self.file_ids)
        if np.any(self.stops > base[slot + 1] - base[slot]):
            bad = int(self.file_ids[np.flatnonzero(self.stops > base[slot + 1] - base[slot])[0]])
            raise IndexError(f"per-sample values of file {bad} are shorter than its samples in the index")
        first = np.repeat(base[slot] + self.starts, lengths)
        within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(lengths) - lengths, lengths
        )
        return flat[first + within]

    def file_ranges(self, c: int) -> dict[int, list[tuple[int, int]]]:
        """Component ``c`` as file id -> [(start, stop), ...]."""
        out: dict[int, list[tuple[int, int]]] = {}
        fids, starts, stops = self.intervals(c)
        for f, s, e in zip(fids.tolist(), starts.tolist(), stops.tolist(), strict=True):
            out.setdefault(f, []).append((s, e))
        return out

    # -------------------------------------------------------------- serialization

    def to_bytes(self) -> bytes:
        """Arrow IPC: the components table and the interval arrays, with metadata."""
        meta = {"properties": self.properties, "catalog_version": self.catalog_version}
        intervals = pa.table(
            {"file_id": self.file_ids, "start": self.starts, "stop": self.stops},
        )
        sink = io.BytesIO()
        for table, extra in ((self.components, {"offsets": self.comp_offsets.tolist()}), (intervals, {})):
            table = table.replace_schema_metadata({"mixtera": json.dumps({**meta, **extra})})
            buf = io.BytesIO()
            with ipc.new_stream(buf, table.schema) as w:
                w.write_table(table)
            data = buf.getvalue()
            sink.write(len(data).to_bytes(8, "little"))
            sink.write(data)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkerIndex:
        tables = []
        pos = 0
        for _ in range(2):
            n = int.from_bytes(data[pos : pos + 8], "little")
            tables.append(ipc.open_stream(data[pos + 8 : pos + 8 + n]).read_all())
            pos += 8 + n
        comps, intervals = tables
        meta = json.loads(comps.schema.metadata[b"mixtera"])
        return cls(
            properties=meta["properties"],
            components=comps.replace_schema_metadata(None),
            comp_offsets=np.asarray(meta["offsets"], dtype=np.int64),
            file_ids=int64_column(intervals, "file_id"),
            starts=int64_column(intervals, "start"),
            stops=int64_column(intervals, "stop"),
            catalog_version=meta["catalog_version"],
        )


def build_chunker_index(
    catalog: Catalog, query: Query, properties: Sequence[str] | None = None
) -> ChunkerIndex:
    """Run ``query`` and collapse its samples into a :class:`ChunkerIndex`.

    ``properties`` chooses what defines a component (default: every property of the
    catalog). Fewer properties give fewer, larger components; a mixture over
    ``language`` only needs ``properties=["language"]``.
    """
    schema = catalog.property_types()
    props = list(schema) if properties is None else list(properties)
    unknown = [p for p in props if p not in schema]
    if unknown:
        raise QueryError(f"unknown properties {unknown} for the index (known: {', '.join(schema) or 'none'})")
    if len(set(props)) != len(props):
        raise QueryError(f"properties listed twice: {props}")
    where, params = query.to_sql(schema)
    cols = ", ".join(_q(p) for p in props)
    join_on = " AND ".join(f"s.{_q(p)} IS NOT DISTINCT FROM c.{_q(p)}" for p in props) or "TRUE"
    order = ", ".join(f"{_q(p)} ASC NULLS FIRST" for p in props)
    with catalog.lock:
        con = catalog.cursor()
        version = catalog.version
        con.execute("BEGIN TRANSACTION")  # one snapshot for both statements
        try:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _mixtera_sel AS
                    SELECT {cols + ", " if props else ""}file_id, sample_index FROM samples WHERE {where}""",
                params,
            )
            if props:
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE _mixtera_comps AS
                        SELECT {cols}, (row_number() OVER (ORDER BY {order}) - 1)::BIGINT AS comp
                        FROM (SELECT DISTINCT {cols} FROM _mixtera_sel)"""
                )
                comps = query_arrow(con, f"SELECT {cols} FROM _mixtera_comps ORDER BY comp")
                tagged = f"""SELECT c.comp, s.file_id, s.sample_index FROM _mixtera_sel s
                             JOIN _mixtera_comps c ON {join_on}"""
            else:
                n = _one(con.execute("SELECT count(*) FROM _mixtera_sel"))
                comps = _one_row_empty_table() if n else pa.table({})
                tagged = "SELECT 0::BIGINT AS comp, file_id, sample_index FROM _mixtera_sel"
            islands = query_arrow(
                con,
                f"""SELECT comp, file_id, min(sample_index) AS start, max(sample_index) + 1 AS stop
                    FROM (SELECT comp, file_id, sample_index,
                                 sample_index - row_number() OVER (PARTITION BY comp, file_id ORDER BY sample_index)
                                     AS island
                          FROM ({tagged}))
                    GROUP BY comp, file_id, island
                    ORDER BY comp, file_id, start""",
            )
            con.execute("DROP TABLE IF EXISTS _mixtera_sel")
            con.execute("DROP TABLE IF EXISTS _mixtera_comps")
        finally:
            con.execute("COMMIT")
    comp_ids = int64_column(islands, "comp")
    num_comps = comps.num_rows
    offsets = np.searchsorted(comp_ids, np.arange(num_comps + 1), side="left").astype(np.int64)
    return ChunkerIndex(
        properties=props,
        components=comps,
        comp_offsets=offsets,
        file_ids=int64_column(islands, "file_id"),
        starts=int64_column(islands, "start"),
        stops=int64_column(islands, "stop"),
        catalog_version=version,
    )


def int64_column(table: pa.Table, name: str) -> np.ndarray:
    """An integer column as a (read-only) int64 array. Non-null int64 columns are viewed in
    place from the Arrow buffer: pyarrow's ``to_numpy()`` imports pandas on first use (about
    0.25 s), which loading a job (``mixtera report``, ``mixtera jobs show``) should not pay."""
    col = table.column(name)
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.null_count or not pa.types.is_int64(arr.type):
        return np.asarray(col.to_numpy(), dtype=np.int64)
    return np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr), offset=arr.offset * 8)


def _one_row_empty_table() -> pa.Table:
    """A table with one row and no columns: the single component of an index over no properties."""
    return pa.table({"_": [None]}).drop_columns(["_"])
