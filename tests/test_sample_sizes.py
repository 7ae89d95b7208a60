"""Every sample's size in bytes is recorded at registration (``Catalog.sample_bytes``).

The size is the one :class:`~mixtera_core.interfaces.FileScan` documents: the byte length of
the line (jsonl: an upper bound of the text's UTF-8 size), the UTF-8 size of the ``text``
column (parquet) and of the ``txt``/``text`` member (webdataset), with the documented
fallbacks. Every test writes real files and registers them through ``MixteraClient.local``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from mixtera_core import MixteraClient
from mixtera_core.errors import MixteraError
from mixtera_core.hookspecs import hookimpl
from mixtera_core.interfaces import FileScan, MetadataParser
from mixtera_core.properties import property_type
from mixtera_plugins.formats import JsonlFormat
from mixtera_plugins.parsers import FieldsParser

LONG = ("Lorem ipsum dolor sit amet, Привет, 你好世界 😀 " * 3000)[:150_000]
TEXTS = [
    "hello world",
    "Привет, мир! Как дела?",
    "你好世界，这是一个测试。",
    "emoji 😀🎉 and ñ é ü",
    "",
    LONG,
    'line\nbreaks\tand "quotes" \\ back',
]


def utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def line_size(line: str, text: str | None = None) -> int:
    """A jsonl sample's size: its line; never below the UTF-8 size of its text."""
    size = len(line.encode("utf-8"))
    assert text is None or size >= utf8(text) + len('{"text": ""}')
    return size


def jsonl_corpus() -> tuple[list[str], list[int | None]]:
    """Raw lines and each line's expected size (None: not a sample / skipped, so 0)."""
    lines: list[str] = []
    sizes: list[int | None] = []

    def add(line: str, size: int | None) -> None:
        lines.append(line)
        sizes.append(size)

    for i, text in enumerate(TEXTS):
        rec: dict[str, Any] = {"text": text, "meta": {"lang": ["en", "ru", "zh"][i % 3]}}
        line = json.dumps(rec)  # non-ASCII escaped as \uXXXX
        add(line, line_size(line, text))
        line = json.dumps(rec, ensure_ascii=False)  # raw UTF-8
        add(line, line_size(line, text))
        if text == LONG:  # nearly all of the line is text
            assert line_size(line) - utf8(text) < 50
    extra = {"id": 7, "text": "Ünïcödé with extras", "meta": {"lang": "de", "n": [1, 2]}, "score": 0.5}
    line = json.dumps(extra, ensure_ascii=False)
    add(line, line_size(line, extra["text"]))
    line = json.dumps({"meta": {"lang": "en"}, "text": "ok"})  # text after meta
    add(line, line_size(line, "ok"))
    line = json.dumps({"content": "no text field here", "meta": {"lang": "en"}})
    add(line, line_size(line))
    line = json.dumps({"text": None, "meta": {"lang": "en"}})
    add(line, line_size(line))
    add("", None)  # a blank line is not a sample
    add("   ", None)  # neither is a line of spaces
    add('{"text": "broken", "meta": ', None)  # malformed: skipped
    line = json.dumps({"text": "after the broken one", "meta": {"lang": "fr"}})
    add(line, line_size(line, "after the broken one"))
    return lines, sizes


def expected_dense(sizes: list[int | None]) -> np.ndarray:
    last = max(i for i, s in enumerate(sizes) if s is not None)
    return np.array([s or 0 for s in sizes[: last + 1]], dtype=np.int64)


def only_sizes(client: MixteraClient) -> dict[int, np.ndarray | None]:
    files = client.catalog.files()
    return client.catalog.sample_bytes(list(files))


# --------------------------------------------------------------------------- jsonl


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
@pytest.mark.parametrize(
    "options",
    [
        {"lang": "meta.lang"},
        {"lang": "meta.lang", "body": "text"},  # the parser maps "text" itself
        {"lang": {"path": "meta.lang", "type": "list[str]"}},  # scalar retry of the native reader
    ],
)
def test_jsonl_sizes_are_the_line_lengths(tmp_path: Path, compression, options) -> None:
    lines, sizes = jsonl_corpus()
    suffix = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compression]
    write_jsonl(tmp_path / "data" / f"a{suffix}", lines, compression)
    with MixteraClient.local(tmp_path / "db") as client:
        report = client.register_dataset("d", tmp_path / "data", parser_options=options, on_error="skip")
        assert report.skipped == 1
        (got,) = only_sizes(client).values()
    assert got is not None and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected_dense(sizes))


@pytest.mark.parametrize("block_size", [64, 4096, 1 << 20])
@pytest.mark.parametrize("map_text", [False, True])
def test_jsonl_sizes_on_the_native_and_the_python_path_agree(
    tmp_path: Path, block_size: int, map_text: bool
) -> None:
    """Blocks pyarrow refuses (a number for the text, a lone surrogate) are split and parsed in
    Python; the sizes stay aligned with the rows of the properties table, also when Arrow
    refuses a value the Python path extracted (a lone surrogate in a mapped text)."""
    lines, sizes = jsonl_corpus()
    number_text = json.dumps({"text": 12345, "meta": {"lang": "en"}})
    object_text = json.dumps({"text": {"a": "b"}, "meta": {"lang": "en"}})
    lone = '{"text": "a\\ud800b", "meta": {"lang": "en"}}'  # a lone surrogate
    bad_lang = json.dumps({"text": "wrong type", "meta": {"lang": {"x": 1}}})  # skipped
    more = [number_text, object_text, lone, bad_lang]
    more_sizes: list[int | None] = [len(number_text), len(object_text), len(lone), None]
    if map_text:  # an object is no str, and Arrow refuses a lone surrogate: both skipped
        more_sizes = [len(number_text), None, None, None]
    many = lines + more + lines * 20  # several blocks of every kind
    many_sizes = sizes + more_sizes + sizes * 20
    path = tmp_path / "a.jsonl"
    path.write_bytes("\n".join(many).encode())  # the last line has no newline
    parser = FieldsParser(lang="meta.lang", **({"body": "text"} if map_text else {}))
    scan = JsonlFormat(block_size=block_size).scan(str(path), parser, on_error="skip")
    assert scan.sample_bytes is not None and len(scan.sample_bytes) == scan.num_samples
    index = scan.properties.column("sample_index").to_pylist()
    assert index == [i for i, s in enumerate(many_sizes) if s is not None]
    assert scan.sample_bytes.tolist() == [s for s in many_sizes if s is not None]


class TextLengthParser(MetadataParser):
    """A Python parser (every line takes the ``json.loads`` path)."""

    name = "text_length_sizes_test"

    @property
    def schema(self):
        return {"n_chars": property_type("int")}

    def parse(self, record: Mapping[str, Any], path: str) -> dict[str, Any]:
        text = record.get("text")
        return {"n_chars": len(text) if isinstance(text, str) else None}


class _Plugin:
    @hookimpl
    def mixtera_parsers(self) -> list[type[MetadataParser]]:
        return [TextLengthParser]


def test_jsonl_sizes_with_a_python_parser(tmp_path: Path) -> None:
    lines, sizes = jsonl_corpus()
    write_jsonl(tmp_path / "data" / "a.jsonl.zst", lines, "zst")
    with MixteraClient.local(tmp_path / "db") as client:
        client.plugins.register(_Plugin())
        client.register_dataset("d", tmp_path / "data", parser=TextLengthParser.name, on_error="skip")
        (got,) = only_sizes(client).values()
    assert got is not None
    np.testing.assert_array_equal(got, expected_dense(sizes))


def test_jsonl_sizes_of_many_files_come_back_per_file(tmp_path: Path) -> None:
    texts = {f"f{k}.jsonl": [("é" * (k + 1)) * (i + 1) for i in range(5 + k)] for k in range(4)}
    for name, ts in texts.items():
        write_jsonl(tmp_path / "data" / name, [{"text": t, "k": 1} for t in ts])
    with MixteraClient.local(tmp_path / "db") as client:
        client.register_dataset("d", tmp_path / "data", parser_options={"k": {"path": "k", "type": "int"}})
        files = client.catalog.files()
        got = client.catalog.sample_bytes([*files, *files])  # duplicates are fine
        assert client.catalog.sample_bytes([]) == {}
        with pytest.raises(MixteraError, match="not in the catalog"):
            client.catalog.sample_bytes([max(files) + 1])
    assert set(got) == set(files)
    for fid, info in files.items():
        expected = [line_size(json.dumps({"text": t, "k": 1}), t) for t in texts[Path(info.path).name]]
        assert got[fid] is not None and got[fid].tolist() == expected


def test_an_empty_file_has_empty_sizes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_bytes(b"\n\n")
    with MixteraClient.local(tmp_path / "db") as client:
        client.register_dataset("d", tmp_path / "data", parser_options={"lang": "meta.lang"})
        (got,) = only_sizes(client).values()
    assert got is not None and got.tolist() == []


# --------------------------------------------------------------------------- parquet


def parquet_texts() -> list[str | None]:
    return [*TEXTS, None, "tail"]


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string(), pa.binary()])
@pytest.mark.parametrize(
    "options",
    [{"lang": "meta.lang"}, {"body": "text"}, {"const": {"value": "x"}}],
    ids=["meta", "text", "const"],
)
def test_parquet_sizes_are_the_byte_length_of_the_text_column(tmp_path: Path, text_type, options) -> None:
    texts = parquet_texts()
    values = [None if t is None else (t.encode() if pa.types.is_binary(text_type) else t) for t in texts]
    table = pa.table(
        {
            "id": pa.array(range(len(texts)), pa.int64()),
            "text": pa.array(values, text_type),
            "meta": pa.array([{"lang": "en", "n": i} for i in range(len(texts))]),
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "a.parquet", row_group_size=3)
    with MixteraClient.local(tmp_path / "db") as client:
        client.register_dataset("d", tmp_path / "data", format="parquet", parser_options=options)
        (got,) = only_sizes(client).values()
    assert got is not None
    assert got.tolist() == [0 if t is None else utf8(t) for t in texts]


def test_parquet_skipped_rows_are_zero_and_no_text_column_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    texts = ["ok", "Привет", "你好", "skip me", LONG]
    pq.write_table(
        pa.table({"text": texts, "year": ["2001", "2002", "2003", "not a year", "2005"]}),
        tmp_path / "data" / "a.parquet",
    )
    pq.write_table(pa.table({"content": ["x", "y"], "year": ["1", "2"]}), tmp_path / "data" / "b.parquet")
    pq.write_table(pa.table({"text": [1, 2], "year": ["1", "2"]}), tmp_path / "data" / "c.parquet")
    with MixteraClient.local(tmp_path / "db") as client:
        report = client.register_dataset(
            "d",
            tmp_path / "data",
            format="parquet",
            parser_options={"year": {"path": "year", "type": "int"}},
            on_error="skip",
        )
        assert report.skipped == 1
        files = {Path(f.path).name: fid for fid, f in client.catalog.files().items()}
        got = client.catalog.sample_bytes(list(files.values()))
    a = got[files["a.parquet"]]
    assert a is not None and a.tolist() == [2, 12, 6, 0, utf8(LONG)]
    assert got[files["b.parquet"]] is None  # no text column
    assert got[files["c.parquet"]] is None  # a text column that holds no text


# --------------------------------------------------------------------------- webdataset


def write_tar(path: Path, samples: list[dict[str, bytes]], keys: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for key, sample in zip(keys, samples, strict=True):
            for ext, data in sample.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def test_webdataset_sizes_are_the_txt_member(tmp_path: Path) -> None:
    samples: list[dict[str, bytes]] = []
    expected: list[int] = []
    for i, text in enumerate(TEXTS):
        meta = json.dumps({"lang": "en", "i": i}).encode()
        samples.append({"txt": text.encode(), "json": meta, "jpg": b"\xff" * (100 + i)})
        expected.append(utf8(text))
    samples.append({"text": "Привет".encode(), "json": b'{"lang": "ru"}'})  # a .text member
    expected.append(12)
    samples.append({"json": b'{"lang": "xx"}', "bin": b"\0" * 33})  # no text: all members
    expected.append(len(b'{"lang": "xx"}') + 33)
    samples.append({"txt": b"skipped", "json": b'{"lang": '})  # malformed json: skipped
    expected.append(0)
    samples.append({"TXT": b"upper-case ext", "json": b'{"lang": "en"}'})  # webdataset lower-cases
    expected.append(14)
    keys = [f"s/{i:04d}" for i in range(len(samples))]
    write_tar(tmp_path / "data" / "a.tar", samples, keys)
    with MixteraClient.local(tmp_path / "db") as client:
        report = client.register_dataset(
            "d", tmp_path / "data", format="webdataset", parser_options={"lang": "json.lang"}, on_error="skip"
        )
        assert report.skipped == 1
        (got,) = only_sizes(client).values()
    assert got is not None and got.tolist() == expected


# --------------------------------------------------------------------------- catalog


def test_a_catalog_without_the_column_opens_and_gets_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "old" / "a.jsonl", [{"text": "old", "meta": {"lang": "en"}}] * 3)
    write_jsonl(tmp_path / "new" / "b.jsonl", [{"text": "новый", "meta": {"lang": "ru"}}] * 2)
    with MixteraClient.local(tmp_path / "db") as client:
        client.register_dataset("old", tmp_path / "old", parser_options={"lang": "meta.lang"})
    # What a catalog written before the column existed looks like.
    con = duckdb.connect(str(tmp_path / "db" / "catalog.duckdb"))
    con.execute("ALTER TABLE files DROP COLUMN sample_bytes")
    assert "sample_bytes" not in [r[0] for r in con.execute("DESCRIBE files").fetchall()]
    con.close()
    with MixteraClient.local(tmp_path / "db") as client:
        (old_id,) = client.catalog.files()
        assert client.catalog.sample_bytes([old_id]) == {old_id: None}
        assert client.list_datasets()[0].num_samples == 3
        client.register_dataset("new", tmp_path / "new", parser_options={"lang": "meta.lang"})
        got = only_sizes(client)
    assert got[old_id] is None
    (new_id,) = set(got) - {old_id}
    line = json.dumps({"text": "новый", "meta": {"lang": "ru"}})
    assert got[new_id] is not None and got[new_id].tolist() == [line_size(line)] * 2


def test_a_format_that_gives_no_sizes_still_registers(tmp_path: Path) -> None:
    class NoSizes(JsonlFormat):
        name = "jsonl_no_sizes"

        def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
            scan = super().scan(path, parser, on_error)
            return FileScan(scan.properties, scan.skipped, scan.read_index)

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "x", "meta": {"lang": "en"}}] * 4)
    with MixteraClient.local(tmp_path / "db") as client:
        parser = FieldsParser(lang="meta.lang")
        client.catalog.register("d", tmp_path / "data", NoSizes(), parser, "fields", {"lang": "meta.lang"})
        assert list(only_sizes(client).values()) == [None]


def test_sizes_beyond_uint32_are_clipped_and_a_wrong_length_is_refused(tmp_path: Path) -> None:
    class Sized(JsonlFormat):
        name = "jsonl_sized"

        def __init__(self, sizes: list[int]) -> None:
            super().__init__()
            self.sizes = sizes

        def scan(self, path: str, parser: MetadataParser, on_error: str = "fail") -> FileScan:
            scan = super().scan(path, parser, on_error)
            return FileScan(scan.properties, scan.skipped, scan.read_index, np.array(self.sizes, np.int64))

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "x", "meta": {"lang": "en"}}] * 3)
    parser = FieldsParser(lang="meta.lang")
    with MixteraClient.local(tmp_path / "db") as client:
        client.catalog.register("d", tmp_path / "data", Sized([1, 2**40, 3]), parser, "fields", {})
        assert [a.tolist() for a in only_sizes(client).values() if a is not None] == [[1, 2**32 - 1, 3]]
        with pytest.raises(MixteraError, match="sample_bytes"):
            client.catalog.register("e", tmp_path / "data", Sized([1, 2]), parser, "fields", {})
