"""Hardening of the catalog: atomic, serialized registrations and file fingerprints.

Real DuckDB, real files, real threads and processes: two registrations of one name at once,
type clashes at once, failures in the last file, files rewritten with the same size (every
format) and catalogs made before fingerprints existed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import write_jsonl

from mixtera_core import MixteraClient, Query
from mixtera_core.catalog import Catalog, FileFingerprint
from mixtera_core.errors import (
    CatalogLockedError,
    CorruptFileError,
    DatasetExistsError,
    FileChangedError,
    InvalidPropertyError,
    MalformedRecordError,
    MixteraError,
)
from mixtera_core.interfaces import FieldRef, MetadataParser
from mixtera_core.job import Job
from mixtera_core.plugins import get_plugin_manager
from mixtera_core.properties import PropertyType, property_type

TABLES = ("datasets", "files", "samples", "properties", "dataset_properties")


def snapshot(cat: Catalog) -> tuple:
    """Every table's rows, the samples columns and the catalog version."""
    with cat.lock:
        con = cat.cursor()
        tables = {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall())) for t in TABLES}
        cols = [r[0] for r in con.execute("DESCRIBE samples").fetchall()]
    return cat.version, cols, tables


def counts(cat: Catalog) -> dict[str, int]:
    with cat.lock:
        con = cat.cursor()
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


class GateParser(MetadataParser):
    """A real parser plugin: ``lang`` from each record, ``shard`` per file. Its file
    properties wait at ``gate`` (so that two registrations are scanning at the same moment)
    and raise ``fail_on`` for the file named so."""

    name = "gate"

    def __init__(
        self,
        gate: threading.Barrier | None = None,
        lang_type: str = "str",
        fail_on: str | None = None,
        **options: Any,
    ):
        super().__init__(**options)
        self.gate = gate
        self.fail_on = fail_on
        self._schema = {"lang": property_type(lang_type), "shard": property_type("str")}

    @property
    def schema(self) -> dict[str, PropertyType]:
        return self._schema

    def field_map(self) -> dict[str, FieldRef]:
        return {"lang": FieldRef.parse("lang")}

    def file_property_names(self) -> list[str]:
        return ["shard"]

    def file_properties(self, path: str) -> dict[str, Any]:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail_on is not None and path.endswith(self.fail_on):
            raise RuntimeError(f"parser plugin failed on {path}")
        return {"shard": os.path.basename(path)}


def register(cat: Catalog, name: str, location: Any, parser: MetadataParser, **kw: Any):
    fmt = get_plugin_manager().format(kw.pop("format", "jsonl"))
    return cat.register(name, location, fmt, parser, parser.name, {}, **kw)


def corpus(root: Path, files: int = 3, per: int = 5) -> Path:
    for f in range(files):
        write_jsonl(root / f"part{f}.jsonl", [{"text": f"doc {f}-{i}", "lang": "en"} for i in range(per)])
    return root


def race(*calls: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Run the calls in threads at once; per call ("ok", result) or ("error", exception)."""
    out: list[tuple[str, Any]] = [("none", None)] * len(calls)

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            out[i] = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out[i] = ("error", e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


# --------------------------------------------------------------------------- concurrent registration


@pytest.mark.parametrize("catalogs", ["one", "two"])
def test_two_threads_register_one_name_exactly_one_wins(tmp_path, catalogs):
    """Both registrations pass the early check and scan at the same time (the gate); the
    check-and-insert decides: one dataset, the other gets DatasetExistsError."""
    data = corpus(tmp_path / "data")
    first = Catalog(tmp_path / "db")
    second = first if catalogs == "one" else Catalog(tmp_path / "db")  # two Catalogs, one file
    gate = threading.Barrier(2)
    results = race(
        lambda: register(first, "same", data, GateParser(gate), workers=1),
        lambda: register(second, "same", data, GateParser(gate), workers=1),
    )
    assert sorted(kind for kind, _ in results) == ["error", "ok"], results
    [err] = [e for kind, e in results if kind == "error"]
    assert isinstance(err, DatasetExistsError) and "'same'" in str(err) and "replace=True" in str(err)
    [info] = first.list_datasets()
    assert (info.name, info.num_files, info.num_samples) == ("same", 3, 15)
    assert counts(first) == {
        "datasets": 1,
        "files": 3,
        "samples": 15,
        "properties": 2,
        "dataset_properties": 2,
    }
    assert first.version == 1
    assert first.properties()["shard"] == {"part0.jsonl": 5, "part1.jsonl": 5, "part2.jsonl": 5}
    for cat in {id(first): first, id(second): second}.values():
        cat.close()


_CHILD = """
import os, sys, time
from mixtera_core import MixteraClient
from mixtera_core.errors import CatalogLockedError, DatasetExistsError
from mixtera_core.plugins import get_plugin_manager
db, data, ready, go = sys.argv[1:5]
get_plugin_manager().format("jsonl")  # the slow imports, before the race
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
try:
    with MixteraClient.local(db) as c:
        c.register_dataset("same", data, parser_options={"lang": "lang"})
    print("OK")
except DatasetExistsError as e:
    print("EXISTS", e)
except CatalogLockedError as e:
    print("LOCKED", e)
"""


def test_two_processes_register_one_name(tmp_path):
    """DuckDB lets one process open the file: the other process gets CatalogLockedError (or,
    when the first one was done already, DatasetExistsError); never two datasets or a raw
    DuckDB error, and the catalog is consistent afterwards."""
    data = corpus(tmp_path / "data", files=4, per=50)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / "db"), str(data), str(r), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.write_text("go")  # both start at once
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    verdicts = sorted(out.split()[0] for out, _ in outs)
    assert verdicts in (["EXISTS", "OK"], ["LOCKED", "OK"]), outs
    for out, _ in outs:
        if out.startswith("LOCKED"):
            assert "catalog.duckdb" in out and "another process" in out
    cat = Catalog(tmp_path / "db")
    [info] = cat.list_datasets()
    assert (info.name, info.num_files, info.num_samples) == ("same", 4, 200)
    assert counts(cat)["samples"] == 200 and counts(cat)["files"] == 4 and cat.version == 1
    cat.close()


def test_catalog_held_by_another_process_is_a_clear_error(tmp_path):
    Catalog(tmp_path / "db").close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            str(tmp_path / "db" / "catalog.duckdb"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(CatalogLockedError, match="open in another process") as info:
            Catalog(tmp_path / "db")
        assert "catalog.duckdb" in str(info.value) and "MixteraClient.remote" in str(info.value)
        assert not isinstance(info.value, duckdb.Error)
    finally:
        holder.communicate("", timeout=30)
    Catalog(tmp_path / "db").close()  # free again once the other process is gone


def test_concurrent_property_type_clash_one_wins_with_a_clear_error(tmp_path):
    """Two datasets declare ``lang`` as str and as int, registering at the same moment."""
    write_jsonl(tmp_path / "s" / "a.jsonl", [{"lang": "en"}, {"lang": "de"}])
    write_jsonl(tmp_path / "i" / "a.jsonl", [{"lang": 1}, {"lang": 2}])
    cat = Catalog(tmp_path / "db")
    gate = threading.Barrier(2)
    results = race(
        lambda: register(cat, "strings", tmp_path / "s", GateParser(gate, "str")),
        lambda: register(cat, "ints", tmp_path / "i", GateParser(gate, "int")),
    )
    assert sorted(kind for kind, _ in results) == ["error", "ok"], results
    [err] = [e for kind, e in results if kind == "error"]
    assert isinstance(err, InvalidPropertyError) and not isinstance(err, duckdb.Error)
    [winner] = cat.list_datasets()
    have, declared = ("str", "int") if winner.name == "strings" else ("int", "str")
    msg = str(err)
    assert f"'lang' is {have} in the catalog but parser 'gate' declares {declared}" in msg
    assert f"dataset '{winner.name}' uses it" in msg and f"declare it as {have}" in msg
    assert cat.property_types()["lang"].name == have
    assert counts(cat) == {"datasets": 1, "files": 1, "samples": 2, "properties": 2, "dataset_properties": 2}
    assert cat.version == 1
    cat.close()


def test_replace_may_change_the_type_of_a_property_only_it_uses(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"lang": 1}])
    cat = Catalog(tmp_path / "db")
    register(cat, "d", tmp_path / "a.jsonl", GateParser(lang_type="int"))
    register(cat, "other", tmp_path / "a.jsonl", GateParser(lang_type="int"))
    with pytest.raises(InvalidPropertyError, match="dataset 'other' uses it as int"):
        register(cat, "d", tmp_path / "a.jsonl", GateParser(lang_type="str"), replace=True)
    cat.remove("other")
    register(cat, "d", tmp_path / "a.jsonl", GateParser(lang_type="str"), replace=True)
    assert cat.property_types()["lang"].name == "str" and cat.properties()["lang"] == {"1": 1}
    cat.close()


# --------------------------------------------------------------------------- failures leave nothing


def test_failures_in_the_last_file_leave_the_catalog_unchanged(tmp_path):
    cat = Catalog(tmp_path / "db")
    register(cat, "good", corpus(tmp_path / "good"), GateParser())
    before = snapshot(cat)

    bad = corpus(tmp_path / "bad", files=4)
    write_jsonl(bad / "part3.jsonl", [{"lang": "en"}, '{"lang": "br', {"lang": "en"}])  # malformed last file
    fmt = get_plugin_manager().format("jsonl")
    parser = get_plugin_manager().parser("fields", lang="lang", newprop={"value": 1, "type": "int"})
    with pytest.raises(MalformedRecordError, match=r"part3\.jsonl:line 2"):
        cat.register("bad", bad, fmt, parser, "fields", {}, workers=2)
    assert snapshot(cat) == before

    # a parser plugin raising in the last file (not a MixteraError: it passes through as is)
    ok = corpus(tmp_path / "ok", files=4)
    with pytest.raises(RuntimeError, match="parser plugin failed"):
        register(cat, "plugin", ok, GateParser(fail_on="part3.jsonl"), workers=2)
    assert snapshot(cat) == before
    # the same, replacing the existing dataset: the old one stays as it was
    with pytest.raises(RuntimeError, match="parser plugin failed"):
        register(cat, "good", ok, GateParser(fail_on="part3.jsonl"), replace=True)
    assert snapshot(cat) == before

    # a file that vanishes between listing and scanning
    def vanish(path: str, done: int, total: int) -> None:
        if done == 1:
            os.remove(ok / "part3.jsonl")

    with pytest.raises(FileNotFoundError):
        register(cat, "gone", ok, GateParser(), workers=1, progress=vanish)
    assert snapshot(cat) == before

    # a file written to while it is being scanned (here by the parser itself)
    class Appending(GateParser):
        def file_properties(self, path: str) -> dict[str, Any]:
            if path.endswith("part2.jsonl"):
                with open(path, "a") as fh:
                    fh.write(json.dumps({"lang": "late"}) + "\n")
            return super().file_properties(path)

    with pytest.raises(FileChangedError, match=r"part2\.jsonl.*modified while it was being registered"):
        register(cat, "growing", corpus(tmp_path / "growing"), Appending())
    assert snapshot(cat) == before
    register(cat, "fine", corpus(tmp_path / "fine"), GateParser())
    assert cat.version == before[0] + 1
    cat.close()


# --------------------------------------------------------------------------- fingerprints


def _records(n: int) -> list[dict[str, Any]]:
    return [{"text": f"document {i:03d} abcdefgh", "lang": ["en", "de"][i % 2]} for i in range(n)]


def _edit(recs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The records with the last one's text numbered ``k``: same length, new content."""
    out = [dict(r) for r in recs]
    out[-1]["text"] = f"document {k:03d} abcdefgh"
    return out


def _jsonl(recs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in recs).encode()


def _tar(recs: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i, r in enumerate(recs):
            for ext, data in (
                ("txt", r["text"].encode()),
                ("json", json.dumps({"lang": r["lang"]}).encode()),
            ):
                ti = tarfile.TarInfo(f"s{i:04d}.{ext}")
                ti.size, ti.mtime = len(data), 0
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _parquet(recs: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(recs), buf, compression="none")
    return buf.getvalue()


def _encoder(variant: str) -> Callable[[list[dict[str, Any]]], bytes]:
    return {
        "jsonl": _jsonl,
        "jsonl.zst": lambda recs: zstandard.ZstdCompressor(level=3).compress(_jsonl(recs)),
        "jsonl.gz": lambda recs: gzip.compress(_jsonl(recs), mtime=0),
        "parquet": _parquet,
        "webdataset": _tar,
    }[variant]


FORMATS = {  # variant -> (suffix, format, parser options)
    "jsonl": (".jsonl", "jsonl", {"lang": "lang"}),
    "jsonl.zst": (".jsonl.zst", "jsonl", {"lang": "lang"}),
    "jsonl.gz": (".jsonl.gz", "jsonl", {"lang": "lang"}),
    "parquet": (".parquet", "parquet", {"lang": "lang"}),
    "webdataset": (".tar", "webdataset", {"lang": "json.lang"}),
}


def _same_size_rewrite(variant: str, recs: list[dict[str, Any]]) -> bytes:
    """Content of another file of the same size as ``recs`` encoded (a compressor may need a
    few numbers tried before one compresses to exactly the same size)."""
    encode = _encoder(variant)
    size = len(encode(recs))
    for k in range(len(recs), 1000):
        data = encode(_edit(recs, k))
        if len(data) == size:
            return data
    raise AssertionError(f"no same-size variant of the {variant} file")


def _stream_all(client: MixteraClient, job_id: str) -> list[Any]:
    job = client.execute(Query.for_job(job_id), chunk_size=10)
    return [item.data for item in client.stream(job)]


@pytest.fixture
def registered(tmp_path, request):
    """(client, path, records) of a one-file dataset ``d`` in the format of ``request.param``."""
    variant = request.param
    suffix, fmt, options = FORMATS[variant]
    recs = _records(40)
    path = tmp_path / "data" / f"f{suffix}"
    path.parent.mkdir()
    path.write_bytes(_encoder(variant)(recs))
    client = MixteraClient.local(tmp_path / "db")
    client.register_dataset("d", path, format=fmt, parser_options=options)
    yield client, path, recs, variant
    client.close()


@pytest.mark.parametrize("registered", list(FORMATS), indirect=True)
@pytest.mark.parametrize("mtime", ["kept", "changed"])
def test_same_size_rewrite_is_refused(registered, mtime):
    client, path, recs, variant = registered
    assert len(_stream_all(client, "before")) == 40  # verified (and cached) in this process
    st = os.stat(path)
    new = _same_size_rewrite(variant, recs)
    assert len(new) == st.st_size and new != path.read_bytes()
    path.write_bytes(new)
    if mtime == "kept":
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    with pytest.raises(FileChangedError) as info:
        _stream_all(client, "after")
    msg = str(info.value)
    assert str(path) in msg and "re-register the dataset" in msg and "content differs" in msg
    assert isinstance(info.value, CorruptFileError) and isinstance(info.value, MixteraError)
    # re-registered: a new job streams the new content
    _, fmt, options = FORMATS[variant]
    client.register_dataset("d", path, format=fmt, parser_options=options, replace=True)
    assert len(_stream_all(client, "again")) == 40


@pytest.mark.parametrize("registered", list(FORMATS), indirect=True)
def test_touched_file_streams_and_grown_file_is_refused(registered):
    client, path, recs, variant = registered
    job = client.execute(Query.for_job("j"), chunk_size=10)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))  # touched: same content
    first = [item.data for item in client.stream(job)]
    assert len(first) == 40
    # a fresh process-like client (job loaded from disk) streams the same
    with MixteraClient.local(client.catalog.db_dir) as other:
        assert [item.data for item in other.stream(job)] == first
    with open(path, "ab") as fh:  # grown: the size check refuses it
        fh.write(b"\0" * 10)
    with pytest.raises(FileChangedError, match=r"its size is \d+ bytes, registration saw"):
        list(client.stream(job))


def test_fingerprint_regions_and_process_cache(tmp_path):
    """Large files hash their ends only (parquet: the footer); a file is hashed once per state."""
    big = tmp_path / "big.bin"
    data = bytearray(os.urandom(300_000))
    big.write_bytes(bytes(data))
    ends = FileFingerprint.of(str(big))
    footer = FileFingerprint.of(str(big), "footer")
    assert ends.content_hash.startswith("ends:blake2b:") and footer.content_hash.startswith("footer:blake2b:")
    assert ends.size == 300_000 and ends.mtime_ns == os.stat(big).st_mtime_ns
    st = os.stat(big)
    data[150_000] ^= 0xFF  # the middle: outside both regions (a documented limit)
    big.write_bytes(bytes(data))
    ends.verify(str(big))
    footer.verify(str(big))
    data[10] ^= 0xFF  # the head: "ends" sees it, the footer does not
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(FileChangedError, match="same size .* and modification time"):
        ends.verify(str(big))
    footer.verify(str(big))
    data[-10] ^= 0xFF  # the tail: both see it
    big.write_bytes(bytes(data))
    with pytest.raises(FileChangedError):
        footer.verify(str(big))
    os.remove(big)
    with pytest.raises(FileChangedError, match="no longer exists"):
        ends.verify(str(big))
    # old rows (no mtime, no hash): size only
    small = tmp_path / "s.bin"
    small.write_bytes(b"abc")
    FileFingerprint(3).verify(str(small))
    small.write_bytes(b"xyz")
    FileFingerprint(3).verify(str(small))
    with pytest.raises(FileChangedError, match="registration saw 4"):
        FileFingerprint(4).verify(str(small))


# --------------------------------------------------------------------------- compatibility


def test_catalog_without_fingerprint_columns_opens_and_streams(tmp_path):
    data = corpus(tmp_path / "data", files=2, per=10)
    with MixteraClient.local(tmp_path / "db") as c:
        c.register_dataset("d", data, parser_options={"lang": "lang"})
        job = c.execute(Query.for_job("j"), chunk_size=10)
        files = c.job(job).files
        assert all(e.fingerprint is not None and e.fingerprint.content_hash for e in files.values())
    con = duckdb.connect(str(tmp_path / "db" / "catalog.duckdb"))  # a catalog made before the columns
    con.execute("ALTER TABLE files DROP COLUMN content_hash")
    con.execute("ALTER TABLE files DROP COLUMN mtime_ns")
    con.close()
    with MixteraClient.local(tmp_path / "db") as c:
        infos = c.catalog.files()
        assert all(i.fingerprint == FileFingerprint(i.fingerprint.size) for i in infos.values())
        old = c.execute(Query.for_job("old"), chunk_size=10)
        assert len([x.data for x in c.stream(old)]) == 20
        assert len([x.data for x in c.stream(job)]) == 20  # the job saved with fingerprints
        assert c.catalog.version == 1
        # registering into it again records fingerprints
        c.register_dataset("e", data, parser_options={"lang": "lang"})
        fresh = [i for i in c.catalog.files().values() if i.dataset == "e"]
        assert all(i.fingerprint.content_hash for i in fresh)


def test_job_files_without_fingerprints_load_and_skip_the_check(tmp_path):
    data = corpus(tmp_path / "data", files=2, per=10)
    with MixteraClient.local(tmp_path / "db") as c:
        c.register_dataset("d", data, parser_options={"lang": "lang"})
        job = c.job(c.execute(Query.for_job("j"), chunk_size=10))
        meta, index, files = job.to_parts()
        again = Job.from_parts(meta, index, files)
        assert {f: e.fingerprint for f, e in again.files.items()} == {
            f: e.fingerprint for f, e in job.files.items()
        }
        # a files table as written before fingerprints existed
        table = pa.ipc.open_stream(files).read_all().select(["file_id", "path", "format", "read_index"])
        buf = io.BytesIO()
        with pa.ipc.new_stream(buf, table.schema) as w:
            w.write_table(table)
        old = Job.from_parts(meta, index, buf.getvalue())
        assert all(e.fingerprint is None for e in old.files.values())
        assert {f: (e.path, e.read_index) for f, e in old.files.items()} == {
            f: (e.path, e.read_index) for f, e in job.files.items()
        }
        for e in old.files.values():
            e.check_unchanged()  # nothing to compare: no error
        path = next(iter(job.files.values())).path
        Path(path).write_bytes(Path(path).read_bytes().replace(b"doc 0-1", b"doc 0-X"))
        with pytest.raises(FileChangedError):
            job.files[min(job.files)].check_unchanged()
        old.files[min(old.files)].check_unchanged()


def test_token_index_check_refuses_a_file_whose_fingerprint_changed(tmp_path, small_bpe):
    from mixtera_core.errors import TokenIndexStaleError
    from mixtera_core.token_index import TokenIndex

    data = corpus(tmp_path / "data", files=2, per=10)
    with MixteraClient.local(tmp_path / "db") as c:
        c.register_dataset("d", data, parser_options={"lang": "lang"})
        report = c.tokenize("d", ("hf", str(small_bpe)))
        index = TokenIndex.open(c.db_dir, report.fingerprint)
        assert index is not None
        files: Mapping[int, str] = {fid: i.path for fid, i in c.catalog.files().items()}
        index.check(files)
        target = data / "part1.jsonl"
        st = os.stat(target)
        target.write_bytes(target.read_bytes().replace(b"doc 1-3", b"doc 1-Z"))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as tokenized
        with pytest.raises(TokenIndexStaleError, match="content differs") as info:
            index.check(files)  # fingerprints from the catalog open in this process
        assert str(target) in str(info.value) and "re-register" in str(info.value)
        with pytest.raises(TokenIndexStaleError):
            index.check(files, {fid: i.fingerprint for fid, i in c.catalog.files().items()})
