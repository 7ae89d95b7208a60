"""Registration into the DuckDB catalog: reports, atomicity, errors, removal, persistence."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import (
    CorruptFileError,
    DatasetExistsError,
    DatasetLocationError,
    InvalidPropertyError,
    MalformedRecordError,
    MissingFieldError,
    UnknownDatasetError,
    UnknownFormatError,
    UnknownParserError,
)

FIELDS = {"language": "meta.language", "license": "meta.license"}


def rec(i: int, language: str, license: str = "mit") -> dict:
    return {"text": f"sample {i}", "meta": {"language": language, "license": license}}


def make_corpus(root: Path) -> Path:
    write_jsonl(root / "a" / "part0.jsonl", [rec(i, "python") for i in range(5)])
    write_jsonl(root / "a" / "part1.jsonl.zst", [rec(i, "c", "bsd") for i in range(3)], "zst")
    write_jsonl(root / "b" / "deep" / "part2.jsonl.gz", [rec(i, "en") for i in range(4)], "gz")
    (root / "notes.txt").write_text("not a dataset file")
    return root


def catalog_snapshot(client: MixteraClient) -> tuple:
    con = client.catalog.cursor()
    tables = {}
    for t in ("datasets", "files", "samples", "properties", "dataset_properties"):
        tables[t] = sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall()))
    cols = [r[0] for r in con.execute("DESCRIBE samples").fetchall()]
    return client.catalog.version, cols, tables


def test_register_directory_recursively(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    report = client.register_dataset("corpus", root, parser_options=FIELDS)
    assert (report.files, report.samples, report.skipped) == (3, 12, 0)
    assert report.properties == {"language": "str", "license": "str"}
    [info] = client.list_datasets()
    assert (info.name, info.num_files, info.num_samples, info.format, info.parser) == (
        "corpus",
        3,
        12,
        "jsonl",
        "fields",
    )
    assert info.parser_options == FIELDS
    paths = [f.path for f in client.catalog.files().values()]
    assert all(os.path.isabs(p) for p in paths)
    assert not any(p.endswith("notes.txt") for p in paths)
    assert client.properties() == {
        "language": {"c": 3, "en": 4, "python": 5},
        "license": {"bsd": 3, "mit": 9},
    }


def test_register_glob_and_list_of_locations(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    report = client.register_dataset("g", str(root / "**" / "*.jsonl*"), parser_options=FIELDS)
    assert report.files == 3
    report = client.register_dataset("l", [root / "a" / "part0.jsonl", root / "b"], parser_options=FIELDS)
    assert (report.files, report.samples) == (2, 9)


def test_file_level_properties_from_path_and_constant(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    client.register_dataset(
        "c",
        root,
        parser_options={
            "language": "meta.language",
            "shard": {"path_regex": r"data/(\w)/"},
            "source": {"value": "web"},
        },
    )
    props = client.properties()
    assert props["shard"] == {"a": 8, "b": 4}
    assert props["source"] == {"web": 12}


def test_same_name_twice_needs_replace(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    client.register_dataset("c", root, parser_options=FIELDS)
    with pytest.raises(DatasetExistsError, match="replace=True"):
        client.register_dataset("c", root, parser_options=FIELDS)
    report = client.register_dataset("c", root / "a", parser_options=FIELDS, replace=True)
    assert report.samples == 8
    [info] = client.list_datasets()
    assert info.num_samples == 8
    assert client.catalog.cursor().execute("SELECT count(*) FROM samples").fetchall() == [(8,)]


def test_remove_dataset_drops_its_rows_and_orphan_properties(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    client.register_dataset("a", root / "a", parser_options=FIELDS)
    client.register_dataset(
        "b", root / "b", parser_options={"language": "meta.language", "extra": {"value": "x"}}
    )
    assert set(client.properties()) == {"language", "license", "extra"}
    client.remove_dataset("b")
    assert [d.name for d in client.list_datasets()] == ["a"]
    assert set(client.properties()) == {"language", "license"}
    assert client.explain(Query.for_job("j")).total_samples == 8
    with pytest.raises(UnknownDatasetError, match=r"no dataset named 'b' \(registered: a\)"):
        client.remove_dataset("b")


def test_failed_registration_leaves_catalog_unchanged(client, tmp_path):
    root = make_corpus(tmp_path / "data")
    client.register_dataset("good", root / "a", parser_options=FIELDS)
    before = catalog_snapshot(client)
    bad = tmp_path / "bad"
    write_jsonl(bad / "0.jsonl", [rec(i, "go") for i in range(10)])
    write_jsonl(bad / "1.jsonl", [rec(0, "go"), '{"text": "broken', rec(2, "go")])
    with pytest.raises(MalformedRecordError, match=r"1\.jsonl:line 2"):
        client.register_dataset(
            "bad", bad, parser_options={"language": "meta.language", "newprop": {"value": 1, "type": "int"}}
        )
    assert catalog_snapshot(client) == before
    # a failing replace keeps the old dataset intact too
    with pytest.raises(MalformedRecordError):
        client.register_dataset("good", bad, parser_options=FIELDS, replace=True)
    assert catalog_snapshot(client) == before


def test_on_error_skip_counts_and_omits(client, tmp_path):
    bad = tmp_path / "bad"
    write_jsonl(bad / "1.jsonl", [rec(0, "go"), "{not json", rec(2, "go"), "", rec(4, "rust")])
    report = client.register_dataset("bad", bad, parser_options=FIELDS, on_error="skip")
    assert (report.samples, report.skipped) == (3, 1)
    assert report.skipped_by_file == {str(bad / "1.jsonl"): 1}
    assert client.list_datasets()[0].num_skipped == 1
    records = [r for _, r in client.peek(Query.for_job("j"), n=10)]
    assert sorted(r["text"] for r in records) == ["sample 0", "sample 2", "sample 4"]


def test_property_type_clash_between_datasets(client, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"meta": {"year": 2020, "language": "en"}}])
    client.register_dataset(
        "x", tmp_path / "x.jsonl", parser_options={"year": {"path": "meta.year", "type": "int"}}
    )
    with pytest.raises(
        InvalidPropertyError, match="'year' is int in the catalog but parser 'fields' declares str"
    ):
        client.register_dataset("y", tmp_path / "x.jsonl", parser_options={"year": "meta.year"})


@pytest.mark.parametrize("name", ["1abc", "has space", "semi;colon", "sample_index", "dataset", ""])
def test_invalid_property_names(client, tmp_path, name):
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    with pytest.raises(InvalidPropertyError):
        client.register_dataset("x", tmp_path / "x.jsonl", parser_options={name: "a"})
    assert client.list_datasets() == []


def test_location_errors(client, tmp_path):
    with pytest.raises(DatasetLocationError, match="does not exist"):
        client.register_dataset("x", tmp_path / "missing", parser_options=FIELDS)
    with pytest.raises(DatasetLocationError, match="matches no jsonl file"):
        client.register_dataset("x", str(tmp_path / "*.jsonl"), parser_options=FIELDS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.parquet").write_bytes(b"")
    with pytest.raises(DatasetLocationError, match="holds no jsonl file"):
        client.register_dataset("x", tmp_path / "empty", parser_options=FIELDS)


def test_unknown_plugins_list_what_is_installed(client, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    with pytest.raises(
        UnknownFormatError, match=r"no format plugin named 'jsnl' \(installed: jsonl, parquet, webdataset"
    ):
        client.register_dataset("x", tmp_path / "x.jsonl", format="jsnl")
    with pytest.raises(UnknownParserError, match=r"installed: fields, pile, slimpajama"):
        client.register_dataset("x", tmp_path / "x.jsonl", parser="nope")


def test_corrupt_zst_and_missing_parquet_column_are_atomic(client, tmp_path):
    write_jsonl(tmp_path / "z" / "a.jsonl.zst", [rec(0, "en")], "zst")
    (tmp_path / "z" / "b.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfdgarbage-not-zstd")
    with pytest.raises(CorruptFileError, match=r"b\.jsonl\.zst"):
        client.register_dataset("z", tmp_path / "z", parser_options=FIELDS)
    pq.write_table(pa.table({"text": ["a"], "lang": ["en"]}), tmp_path / "p.parquet")
    with pytest.raises(MissingFieldError, match=r"p\.parquet: field 'language'"):
        client.register_dataset(
            "p", tmp_path / "p.parquet", format="parquet", parser_options={"language": "language"}
        )
    assert client.list_datasets() == [] and client.catalog.version == 0


def test_catalog_persists_and_version_counts_changes(tmp_path):
    root = make_corpus(tmp_path / "data")
    with MixteraClient.local(tmp_path / "db") as c:
        assert c.catalog.version == 0
        c.register_dataset("a", root / "a", parser_options=FIELDS)
        c.register_dataset("b", root / "b", parser_options=FIELDS)
        c.remove_dataset("a")
        assert c.catalog.version == 3
    with MixteraClient.local(tmp_path / "db") as c:
        assert [d.name for d in c.list_datasets()] == ["b"]
        assert c.properties()["language"] == {"en": 4}
        assert c.catalog.version == 3


def test_list_valued_and_nullable_properties(client, tmp_path):
    write_jsonl(
        tmp_path / "x.jsonl",
        [
            {"meta": {"langs": ["en", "de"]}},
            {"meta": {"langs": "fr"}},
            {"meta": {}},
            {"meta": {"langs": None}},
        ],
    )
    report = client.register_dataset(
        "x", tmp_path / "x.jsonl", parser_options={"langs": {"path": "meta.langs", "type": "list[str]"}}
    )
    assert report.samples == 4
    assert client.properties() == {"langs": {"de": 1, "en": 1, "fr": 1}}


def test_parallel_registration_is_deterministic(tmp_path):
    root = tmp_path / "data"
    for i in range(12):
        write_jsonl(root / f"{i:02d}.jsonl", [rec(j, ["python", "c", "en"][(i + j) % 3]) for j in range(50)])
    snaps = []
    for workers in (1, 4):
        with MixteraClient.local(tmp_path / f"db{workers}") as c:
            c.register_dataset("d", root, parser_options=FIELDS, workers=workers)
            snaps.append(catalog_snapshot(c)[2]["samples"])
    assert snaps[0] == snaps[1]
