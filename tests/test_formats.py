"""Built-in dataset formats: jsonl (plain/gz/zst), parquet, webdataset.

Every test writes real files into tmp_path and goes through the public contract:
``scan(path, parser, on_error) -> FileScan`` and ``read(path, ranges, read_index)``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixtera_core.errors import CorruptFileError, MalformedRecordError, MissingFieldError
from mixtera_core.interfaces import FileScan, MetadataParser
from mixtera_core.plugins import PluginManager
from mixtera_core.properties import property_type
from mixtera_plugins.formats import JsonlFormat, ParquetFormat, WebDatasetFormat
from mixtera_plugins.formats._common import pack_index, unpack_index
from mixtera_plugins.parsers import FieldsParser

LANGS = ["en", "de", "fr", "python"]

# --------------------------------------------------------------------------- helpers


def fields_parser() -> FieldsParser:
    return FieldsParser(
        language="meta.language",
        year={"path": "meta.year", "type": "int"},
        tags={"path": "tags", "type": "list[str]"},
        score={"path": "score", "type": "float"},
    )


class LengthParser(MetadataParser):
    """A Python parser: the language upper-cased and the length of the text."""

    name = "length_test"

    @property
    def schema(self):
        return {"lang": property_type("str"), "n_chars": property_type("int")}

    def parse(self, record: Mapping[str, Any], path: str) -> dict[str, Any]:
        lang = (record.get("meta") or {}).get("language")
        return {"lang": lang.upper() if lang else None, "n_chars": len(record["text"])}


def make_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"id": i, "text": f"doc {i} " + "x" * rng.randint(0, 80)}
        meta: dict[str, Any] = {"language": rng.choice(LANGS), "year": 1990 + i % 30}
        if i % 7 == 3:
            del meta["language"]  # missing -> null
        if i % 11 == 5:
            meta["year"] = None  # explicit null
        rec["meta"] = meta
        if i % 5 == 0:
            rec["tags"] = rng.choice(LANGS)  # scalar for a list property -> [scalar]
        elif i % 5 != 1:
            rec["tags"] = rng.sample(LANGS, 2)
        if i % 3:
            rec["score"] = i / 4
        out.append(rec)
    return out


def expected_fields(rec: dict[str, Any]) -> dict[str, Any]:
    meta = rec.get("meta") or {}
    tags = rec.get("tags")
    return {
        "language": meta.get("language"),
        "year": meta.get("year"),
        "tags": None if tags is None else (tags if isinstance(tags, list) else [tags]),
        "score": None if rec.get("score") is None else float(rec["score"]),
    }


def write_jsonl(path, lines: list[str], codec: str = "none", frame_lines: int | None = None) -> str:
    """Write raw lines (each gets a newline). zstd with ``frame_lines`` writes independent frames."""
    data = "".join(line + "\n" for line in lines).encode()
    path = str(path)
    if codec == "none":
        with open(path, "wb") as f:
            f.write(data)
    elif codec == "gzip":
        with open(path, "wb") as f:
            f.write(gzip.compress(data))
    elif codec == "zstd":
        cctx = zstandard.ZstdCompressor(level=3)
        with open(path, "wb") as f:
            if frame_lines is None:
                f.write(cctx.compress(data))
            else:
                for i in range(0, len(lines), frame_lines):
                    chunk = "".join(line + "\n" for line in lines[i : i + frame_lines]).encode()
                    f.write(cctx.compress(chunk))
    else:
        raise ValueError(codec)
    return path


SUFFIX = {"none": ".jsonl", "gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "zstd-multi": ".jsonl.zst"}


def jsonl_file(tmp_path, name: str, lines: list[str], variant: str) -> str:
    codec = "zstd" if variant == "zstd-multi" else variant
    frame_lines = 7 if variant == "zstd-multi" else None
    return write_jsonl(tmp_path / (name + SUFFIX[variant]), lines, codec, frame_lines)


def table_rows(scan: FileScan) -> dict[int, dict[str, Any]]:
    rows = scan.properties.to_pylist()
    return {r.pop("sample_index"): r for r in rows}


def read_all(fmt, path, ranges, index) -> list[tuple[int, Any]]:
    return list(fmt.read(path, ranges, index))


VARIANTS = ["none", "gzip", "zstd", "zstd-multi"]
# A small multi-frame friendly configuration: index every frame, checkpoint every 4 lines.
SMALL = JsonlFormat(block_size=4096, index_stride=4, min_frame_gap=0)


# --------------------------------------------------------------------------- plugin wiring


def test_builtin_formats_are_registered_through_the_hook():
    pm = PluginManager(load_entrypoints=False)
    assert pm.names("format") == ["jsonl", "parquet", "webdataset"]
    assert isinstance(pm.format("jsonl"), JsonlFormat)
    assert isinstance(pm.format("parquet"), ParquetFormat)
    assert isinstance(pm.format("webdataset"), WebDatasetFormat)
    jl = pm.format("jsonl")
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.jsonl.zstd", "a.ndjson", "a.json.gz"):
        assert jl.matches(name), name
    assert not jl.matches("a.parquet") and not jl.matches("a.json")
    assert pm.format("parquet").matches("x/y.parquet")
    assert pm.format("webdataset").matches("shard-000.tar")


def test_on_error_is_validated(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"a": 1}'])
    with pytest.raises(ValueError, match="on_error"):
        JsonlFormat().scan(path, FieldsParser(a="a"), on_error="ignore")


# --------------------------------------------------------------------------- jsonl: scan


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fmt", [JsonlFormat(), SMALL], ids=["default", "small-blocks"])
def test_jsonl_scan_fields_parser(tmp_path, variant, fmt):
    recs = make_records(300)
    lines = [json.dumps(r) for r in recs]
    # Blank and whitespace-only lines are not samples but keep their line numbers.
    lines[10:10] = ["", "   \t "]
    path = jsonl_file(tmp_path, "data", lines, variant)
    scan = fmt.scan(path, fields_parser())
    assert scan.properties.schema == pa.schema(
        [
            ("sample_index", pa.int64()),
            ("language", pa.string()),
            ("year", pa.int64()),
            ("tags", pa.list_(pa.string())),
            ("score", pa.float64()),
        ]
    )
    assert scan.skipped == 0
    assert scan.num_samples == 300
    rows = table_rows(scan)
    expected_index = [i for i in range(302) if i not in (10, 11)]
    assert list(rows) == expected_index
    for line_no, rec in zip(expected_index, recs, strict=True):
        assert rows[line_no] == expected_fields(rec), line_no


@pytest.mark.parametrize("variant", VARIANTS)
def test_jsonl_scan_python_parser(tmp_path, variant):
    recs = make_records(120)
    path = jsonl_file(tmp_path, "data", [json.dumps(r) for r in recs], variant)
    scan = SMALL.scan(path, LengthParser())
    assert scan.properties.column_names == ["sample_index", "lang", "n_chars"]
    assert scan.properties.schema.field("n_chars").type == pa.int64()
    rows = table_rows(scan)
    assert list(rows) == list(range(120))
    for i, rec in enumerate(recs):
        lang = rec["meta"].get("language")
        assert rows[i] == {"lang": lang.upper() if lang else None, "n_chars": len(rec["text"])}


@pytest.mark.parametrize("tags", ["lists", "scalars", "mixed"])
def test_jsonl_fast_and_slow_paths_agree(tmp_path, tags):
    """The pyarrow path and the per-line Python path give the same table.

    With lists (or only scalars) for the list property pyarrow takes every block; with both
    in one block, blocks fall back to the Python path piece by piece.
    """

    class SameAsFields(MetadataParser):
        name = "same_as_fields"

        @property
        def schema(self):
            return fields_parser().schema

        def parse(self, record, path):
            return {
                "language": (record.get("meta") or {}).get("language"),
                "year": (record.get("meta") or {}).get("year"),
                "tags": record.get("tags"),
                "score": record.get("score"),
            }

    recs = make_records(2000, seed=3)
    for r in recs:
        if tags == "lists" and isinstance(r.get("tags"), str):
            r["tags"] = [r["tags"]]
        elif tags == "scalars" and isinstance(r.get("tags"), list):
            r["tags"] = r["tags"][0] if r["id"] % 4 else None
    path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in recs])
    for fmt in (JsonlFormat(), JsonlFormat(block_size=8192)):
        fast = fmt.scan(path, fields_parser())
        slow = fmt.scan(path, SameAsFields())
        assert fast.num_samples == 2000
        assert fast.properties.equals(slow.properties)


def test_jsonl_mixed_types_are_coerced_like_the_slow_path(tmp_path):
    lines = [
        '{"meta": {"language": "en", "year": 2001}, "tags": ["a"]}',
        '{"meta": {"language": 5, "year": "2002"}, "tags": "b"}',  # number->str, "2002"->int, scalar->list
        '{"meta": {"year": 2003.0}, "score": 1}',  # 2003.0 -> int, int -> float
        '{"meta": null, "tags": null}',
    ]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    rows = table_rows(JsonlFormat().scan(path, fields_parser()))
    assert rows == {
        0: {"language": "en", "year": 2001, "tags": ["a"], "score": None},
        1: {"language": "5", "year": 2002, "tags": ["b"], "score": None},
        2: {"language": None, "year": 2003, "tags": None, "score": 1.0},
        3: {"language": None, "year": None, "tags": None, "score": None},
    }


def test_jsonl_edge_cases_of_lines(tmp_path):
    # CRLF line ends, a UTF-8 BOM, leading whitespace and no newline at the end of the file.
    data = b'\xef\xbb\xbf{"meta": {"language": "en"}}\r\n  {"meta": {"language": "de"}}\r\n\r\n{"meta": {}}'
    path = str(tmp_path / "a.jsonl")
    with open(path, "wb") as f:
        f.write(data)
    fmt = JsonlFormat()
    scan = fmt.scan(path, FieldsParser(language="meta.language"))
    assert table_rows(scan) == {0: {"language": "en"}, 1: {"language": "de"}, 3: {"language": None}}
    got = read_all(fmt, path, [(0, 10)], scan.read_index)
    assert got == [(0, {"meta": {"language": "en"}}), (1, {"meta": {"language": "de"}}), (3, {"meta": {}})]


def test_jsonl_empty_file_and_only_blank_lines(tmp_path):
    fmt = JsonlFormat()
    for name, data in (("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\n")):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(data)
        scan = fmt.scan(path, FieldsParser(language="meta.language"))
        assert scan.num_samples == 0 and scan.skipped == 0
        assert scan.properties.column_names == ["sample_index", "language"]
        assert read_all(fmt, path, [(0, 100)], scan.read_index) == []
    path = str(tmp_path / "empty.jsonl.zst")
    with open(path, "wb") as f:
        f.write(b"")
    assert fmt.scan(path, FieldsParser(language="meta.language")).num_samples == 0


def test_jsonl_lines_longer_than_a_block(tmp_path):
    recs = [{"text": "y" * (5000 + i), "meta": {"language": LANGS[i % 4]}} for i in range(20)]
    for variant in ("none", "zstd"):
        path = jsonl_file(tmp_path, f"long-{variant}", [json.dumps(r) for r in recs], variant)
        fmt = JsonlFormat(block_size=1024, index_stride=3)
        scan = fmt.scan(path, FieldsParser(language="meta.language"))
        assert [r["language"] for r in table_rows(scan).values()] == [LANGS[i % 4] for i in range(20)]
        assert read_all(fmt, path, [(4, 9), (15, 30)], scan.read_index) == [
            (i, recs[i]) for i in [*range(4, 9), *range(15, 20)]
        ]


def test_jsonl_no_field_map_properties_still_validates_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"a": 1}', "", '{"b": 2}'])
    parser = FieldsParser(source={"value": "web"})  # only a file-level property
    scan = JsonlFormat().scan(path, parser)
    assert scan.properties.column_names == ["sample_index"]
    assert scan.properties.column("sample_index").to_pylist() == [0, 2]


def test_jsonl_many_blocks_200k_lines(tmp_path):
    n = 200_000
    langs = np.array(LANGS)[np.arange(n) % 4]
    lines = [f'{{"id": {i}, "meta": {{"language": "{langs[i]}", "year": {i}}}}}' for i in range(n)]
    bad = [1234, 77_777, 150_001]
    for b in bad:
        lines[b] = '{"id": broken'
    lines[99_999] = '{"id": 99999, "meta": {"language": "en", "year": "not a year"}}'
    path = write_jsonl(tmp_path / "big.jsonl.zst", lines, "zstd", frame_lines=50_000)
    fmt = JsonlFormat(block_size=256 << 10, min_frame_gap=0)
    parser = FieldsParser(language="meta.language", year={"path": "meta.year", "type": "int"})
    with pytest.raises(MalformedRecordError, match=r"big\.jsonl\.zst:line 1235: invalid JSON"):
        fmt.scan(path, parser)
    scan = fmt.scan(path, parser, on_error="skip")
    assert scan.skipped == 4
    assert scan.num_samples == n - 4
    idx = scan.properties.column("sample_index").to_numpy()
    assert np.array_equal(idx, np.setdiff1d(np.arange(n), [*bad, 99_999]))
    assert scan.properties.column("language").to_pylist() == langs[idx].tolist()
    assert np.array_equal(scan.properties.column("year").to_numpy(), idx)
    header, arrays = unpack_index(scan.read_index, "jsonl", 1)
    assert len(arrays["frames_dec"]) == 4  # one entry per zstd frame
    assert header["meta"]["lines"] == n
    got = read_all(fmt, path, [(99_990, 100_010), (150_000, 150_003), (199_998, 300_000)], scan.read_index)
    want = [*range(99_990, 99_999), *range(100_000, 100_010), 150_000, 150_002, 199_998, 199_999]
    assert [i for i, _ in got] == want
    assert all(rec["id"] == i for i, rec in got)


# --------------------------------------------------------------------------- jsonl: read


@pytest.mark.parametrize("variant", VARIANTS)
def test_jsonl_read_ranges(tmp_path, variant):
    recs = make_records(200, seed=1)
    lines = [json.dumps(r) for r in recs]
    path = jsonl_file(tmp_path, "data", lines, variant)
    for fmt in (JsonlFormat(), SMALL):
        scan = fmt.scan(path, fields_parser())
        ranges = [(0, 3), (3, 5), (17, 40), (41, 42), (99, 130), (190, 250)]
        got = read_all(fmt, path, ranges, scan.read_index)
        want = [i for a, b in ranges for i in range(a, min(b, 200))]
        assert [i for i, _ in got] == want
        assert all(rec == recs[i] for i, rec in got)
        # Ranges are visited in the order given, even backwards.
        back = [(150, 153), (5, 7), (151, 152), (0, 1)]
        got = read_all(fmt, path, back, scan.read_index)
        assert got == [(i, recs[i]) for a, b in back for i in range(a, b)]
        assert read_all(fmt, path, [(10, 10), (300, 400)], scan.read_index) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_jsonl_reads_that_continue_a_kept_cursor_match_fresh_reads(tmp_path, variant):
    """A stream's consecutive chunks continue blocks of the same files; the open cursor each
    thread keeps per file must give exactly what a fresh read gives, in any order of calls."""
    from mixtera_core.interfaces import FieldRef

    texts = {name: [f"{name} doc {i} " * (i % 9 + 1) for i in range(300)] for name in ("a", "b")}
    paths, indexes = {}, {}
    for name, docs in texts.items():
        paths[name] = jsonl_file(tmp_path, name, [json.dumps({"text": t}) for t in docs], variant)
        indexes[name] = SMALL.scan(paths[name], fields_parser()).read_index
    rng = random.Random(3)
    text = FieldRef.parse("text")
    for step in range(60):
        name = rng.choice("ab")
        a = rng.randrange(0, 300) if step % 3 == 0 else rng.randrange(0, 40) + 100 * (step % 3)
        ranges = [(a, a + rng.randrange(1, 30)), (a + 40, a + 45)]
        want = [(i, texts[name][i]) for x, y in ranges for i in range(x, min(y, 300))]
        if step % 2:
            got = list(SMALL.read_field(paths[name], ranges, indexes[name], text))
        else:
            got = [(i, r["text"]) for i, r in SMALL.read(paths[name], ranges, indexes[name])]
        assert got == want, (step, name, ranges)
        if step % 7 == 0:  # a reader that stops early leaves the cursor usable
            it = SMALL.read_field(paths[name], [(0, 300)], indexes[name], text)
            assert next(it) == (0, texts[name][0])
            it.close()


def test_jsonl_corrupt_read_is_not_kept_for_the_next_read(tmp_path):
    lines = [json.dumps({"text": f"t{i}"}) for i in range(50)]
    path = write_jsonl(tmp_path / "c.jsonl.zst", lines, "zstd", frame_lines=10)
    index = SMALL.scan(path, fields_parser()).read_index
    with open(path, "rb") as f:
        data = bytearray(f.read())
    good = bytes(data)
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # same size: the index still matches
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises((CorruptFileError, MalformedRecordError)):  # a bad frame, or garbage lines
        list(SMALL.read(path, [(0, 50)], index))
    with open(path, "wb") as f:
        f.write(good)
    assert [i for i, _ in SMALL.read(path, [(0, 50)], index)] == list(range(50))


def test_jsonl_read_without_index_streams_from_start(tmp_path):
    recs = make_records(30)
    path = write_jsonl(tmp_path / "a.jsonl.gz", [json.dumps(r) for r in recs], "gzip")
    assert read_all(JsonlFormat(), path, [(3, 6), (28, 40)], None) == [
        (i, recs[i]) for i in (3, 4, 5, 28, 29)
    ]


def test_jsonl_plain_read_seeks_to_offsets(tmp_path):
    """After registration, a range read never touches the bytes before its checkpoint."""
    recs = make_records(100)
    lines = [json.dumps(r) for r in recs]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    fmt = JsonlFormat(index_stride=8)
    scan = fmt.scan(path, fields_parser())
    # Scribble over lines 0..63 keeping the size: only an index-driven seek still works.
    cut = sum(len(line) + 1 for line in lines[:64])
    with open(path, "r+b") as f:
        f.write(b"#" * cut)
    assert read_all(fmt, path, [(64, 70), (95, 100)], scan.read_index) == [
        (i, recs[i]) for i in [*range(64, 70), *range(95, 100)]
    ]


def test_jsonl_multiframe_zst_read_starts_at_the_right_frame(tmp_path):
    recs = make_records(100)
    lines = [json.dumps(r) for r in recs]
    path = write_jsonl(tmp_path / "a.jsonl.zst", lines, "zstd", frame_lines=10)
    fmt = JsonlFormat(index_stride=4, min_frame_gap=0)
    scan = fmt.scan(path, fields_parser())
    _, arrays = unpack_index(scan.read_index, "jsonl", 1)
    assert len(arrays["frames_comp"]) == 10
    assert np.all(np.diff(arrays["frames_comp"]) > 0) and np.all(np.diff(arrays["frames_dec"]) > 0)
    # Destroy the first frame (same size): reads in later frames must not decompress it.
    first_frame_end = int(arrays["frames_comp"][1])
    with open(path, "r+b") as f:
        f.write(b"\0" * first_frame_end)
    got = read_all(fmt, path, [(35, 38), (61, 62), (99, 100)], scan.read_index)
    assert got == [(i, recs[i]) for i in (35, 36, 37, 61, 99)]
    with pytest.raises(CorruptFileError, match="a.jsonl.zst"):
        read_all(fmt, path, [(2, 3)], scan.read_index)
    # Thinned frame index: with a large min_frame_gap only the first frame is kept.
    path2 = write_jsonl(tmp_path / "b.jsonl.zst", lines, "zstd", frame_lines=10)
    scan2 = JsonlFormat().scan(path2, fields_parser())
    assert len(unpack_index(scan2.read_index, "jsonl", 1)[1]["frames_comp"]) == 1


def test_jsonl_multimember_gzip_is_indexed_like_frames(tmp_path):
    recs = make_records(40)
    lines = [json.dumps(r) for r in recs]
    path = str(tmp_path / "a.jsonl.gz")
    with open(path, "wb") as f:
        for i in range(0, 40, 10):
            f.write(gzip.compress("".join(line + "\n" for line in lines[i : i + 10]).encode()))
        f.write(b"\0" * 100)  # zero padding after the last member is tolerated
    fmt = JsonlFormat(index_stride=4, min_frame_gap=0)
    scan = fmt.scan(path, fields_parser())
    assert scan.num_samples == 40
    assert len(unpack_index(scan.read_index, "jsonl", 1)[1]["frames_comp"]) == 4
    assert read_all(fmt, path, [(25, 27), (39, 45)], scan.read_index) == [(i, recs[i]) for i in (25, 26, 39)]


def test_jsonl_read_refuses_a_changed_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ['{"a": 1}', '{"a": 2}'])
    scan = JsonlFormat().scan(path, FieldsParser(a="a"))
    with open(path, "ab") as f:
        f.write(b'{"a": 3}\n')
    with pytest.raises(CorruptFileError, match="changed since it was registered"):
        list(JsonlFormat().read(path, [(0, 2)], scan.read_index))


# --------------------------------------------------------------------------- jsonl: bad input


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("python_parser", [False, True], ids=["fields", "python"])
def test_jsonl_malformed_line(tmp_path, variant, python_parser):
    recs = make_records(60)
    lines = [json.dumps(r) for r in recs]
    lines[22] = '{"text": "unterminated'
    path = jsonl_file(tmp_path, "bad", lines, variant)
    parser = LengthParser() if python_parser else fields_parser()
    with pytest.raises(MalformedRecordError) as exc:
        SMALL.scan(path, parser)
    assert f"{path}:line 23:" in str(exc.value)
    assert exc.value.path == path and exc.value.where == "line 23"

    scan = SMALL.scan(path, parser, on_error="skip")
    assert scan.skipped == 1
    assert scan.num_samples == 59
    assert 22 not in table_rows(scan)
    got = read_all(SMALL, path, [(20, 25), (58, 60)], scan.read_index)
    assert got == [(i, recs[i]) for i in (20, 21, 23, 24, 58, 59)]


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"meta": {"year": "MCMXC"}}', "property 'year'"),
        ('{"tags": {"a": 1}}', "property 'tags'"),
        ("[1, 2, 3]", "expected a JSON object"),
        ("42", "expected a JSON object"),
        ("null", "expected a JSON object"),
        ('{"a": 1} {"b": 2}', "invalid JSON"),
        ('{"a": 1,}', "invalid JSON"),
    ],
)
def test_jsonl_bad_values(tmp_path, bad_line, reason):
    lines = [json.dumps(r) for r in make_records(50)]
    lines[31] = bad_line
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(MalformedRecordError, match=rf"a\.jsonl:line 32: .*{reason}"):
        JsonlFormat().scan(path, fields_parser())
    scan = JsonlFormat().scan(path, fields_parser(), on_error="skip")
    assert scan.skipped == 1 and 31 not in table_rows(scan) and scan.num_samples == 49


@pytest.mark.parametrize(
    "bad_line, prop",
    [
        ('{"meta": {"year": 9223372036854775808}}', "year"),  # valid JSON, beyond int64
        ('{"meta": {"language": "\\ud800"}}', "language"),  # valid JSON, a lone surrogate
    ],
)
def test_jsonl_values_arrow_refuses(tmp_path, bad_line, prop):
    lines = [json.dumps(r) for r in make_records(30)]
    lines[12] = bad_line
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(MalformedRecordError, match=rf"a\.jsonl:line 13: property '{prop}'"):
        JsonlFormat().scan(path, fields_parser())
    scan = JsonlFormat().scan(path, fields_parser(), on_error="skip")
    assert scan.skipped == 1 and 12 not in table_rows(scan) and scan.num_samples == 29
    assert [i for i, _ in read_all(JsonlFormat(), path, [(11, 14)], scan.read_index)] == [11, 13]


def test_missing_files_raise_file_not_found(tmp_path):
    for fmt, name in (
        (JsonlFormat(), "a.jsonl.zst"),
        (ParquetFormat(), "a.parquet"),
        (WebDatasetFormat(), "a.tar"),
    ):
        with pytest.raises(FileNotFoundError):
            fmt.scan(str(tmp_path / name), FieldsParser(a="a"))


def test_jsonl_python_parser_exception_is_a_malformed_record(tmp_path):
    lines = [json.dumps(r) for r in make_records(10)]
    lines[4] = '{"meta": {}}'  # LengthParser needs "text"
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    with pytest.raises(MalformedRecordError, match=r"line 5: parser 'length_test' failed: KeyError"):
        JsonlFormat().scan(path, LengthParser())
    assert JsonlFormat().scan(path, LengthParser(), on_error="skip").skipped == 1


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_jsonl_corrupt_compressed_files(tmp_path, codec):
    lines = [json.dumps(r) for r in make_records(500)]
    good = write_jsonl(tmp_path / ("good" + SUFFIX[codec]), lines, codec)
    with open(good, "rb") as f:
        raw = f.read()
    suffix = SUFFIX[codec]
    cases = {
        "garbage": os.urandom(3000),
        "truncated": raw[: len(raw) // 2],
        "trailing-junk": raw + b"this is not compressed",
    }
    flipped = bytearray(raw)
    for k in range(len(raw) // 3, len(raw) // 3 + 64):
        flipped[k] ^= 0x5A
    cases["flipped-bytes"] = bytes(flipped)
    for name, data in cases.items():
        path = str(tmp_path / (name + suffix))
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(CorruptFileError) as exc:
            JsonlFormat().scan(path, fields_parser(), on_error="skip")
        assert path in str(exc.value), name


# --------------------------------------------------------------------------- parquet


def write_parquet(path, recs: list[dict[str, Any]], row_group_size: int = 64) -> str:
    table = pa.Table.from_pylist(
        recs,
        schema=pa.schema(
            [
                ("id", pa.int64()),
                ("text", pa.string()),
                ("meta", pa.struct([("language", pa.string()), ("year", pa.int64()), ("note", pa.string())])),
                ("tags", pa.list_(pa.string())),
                ("score", pa.float64()),
                ("label", pa.string()),
            ]
        ),
    )
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def parquet_records(n: int) -> list[dict[str, Any]]:
    out = []
    for rec in make_records(n, seed=7):
        tags = rec.get("tags")
        rec["tags"] = tags if tags is None or isinstance(tags, list) else [tags]
        rec["meta"] = {
            "language": rec["meta"].get("language"),
            "year": rec["meta"].get("year"),
            "note": "n" * 50,
        }
        rec.setdefault("score", None)
        rec["label"] = str(rec["id"] % 9)
        out.append(rec)
    return out


def test_parquet_scan_fields_parser(tmp_path):
    recs = parquet_records(300)
    path = write_parquet(tmp_path / "a.parquet", recs)
    parser = FieldsParser(
        language="meta.language",
        year={"path": "meta.year", "type": "int"},
        tags={"path": "tags", "type": "list[str]"},
        score={"path": "score", "type": "float"},
        label_int={"path": "label", "type": "int"},  # string column cast to int
        label_list={"path": "label", "type": "list[str]"},  # scalar column -> one-element lists
    )
    scan = ParquetFormat(batch_size=100).scan(path, parser)
    assert scan.properties.schema.names == [
        "sample_index",
        "language",
        "year",
        "tags",
        "score",
        "label_int",
        "label_list",
    ]
    assert scan.properties.schema.field("label_list").type == pa.list_(pa.string())
    assert scan.skipped == 0 and scan.read_index is None
    rows = table_rows(scan)
    assert list(rows) == list(range(300))
    for i, rec in enumerate(recs):
        assert rows[i] == {
            "language": rec["meta"]["language"],
            "year": rec["meta"]["year"],
            "tags": rec["tags"],
            "score": rec["score"],
            "label_int": int(rec["label"]),
            "label_list": [rec["label"]],
        }


def test_parquet_scan_python_parser(tmp_path):
    recs = parquet_records(150)
    path = write_parquet(tmp_path / "a.parquet", recs)
    rows = table_rows(ParquetFormat(batch_size=64).scan(path, LengthParser()))
    for i, rec in enumerate(recs):
        lang = rec["meta"]["language"]
        assert rows[i] == {"lang": lang.upper() if lang else None, "n_chars": len(rec["text"])}


def test_parquet_read_ranges_across_row_groups(tmp_path):
    recs = parquet_records(300)
    path = write_parquet(tmp_path / "a.parquet", recs, row_group_size=64)
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    fmt = ParquetFormat(read_batch_size=16)
    scan = fmt.scan(path, FieldsParser(language="meta.language"))
    ranges = [(0, 2), (2, 3), (60, 70), (70, 71), (100, 200), (250, 400)]
    got = read_all(fmt, path, ranges, scan.read_index)
    assert got == [(i, recs[i]) for a, b in ranges for i in range(a, min(b, 300))]
    back = [(200, 203), (10, 12), (201, 202), (63, 65)]
    assert read_all(fmt, path, back, scan.read_index) == [(i, recs[i]) for a, b in back for i in range(a, b)]


def test_parquet_missing_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", parquet_records(10))
    with pytest.raises(MissingFieldError) as exc:
        ParquetFormat().scan(path, FieldsParser(language="lang"))
    msg = str(exc.value)
    assert path in msg and "'lang'" in msg and "available: id, label, meta, score, tags, text" in msg
    with pytest.raises(MissingFieldError, match="meta.lang"):
        ParquetFormat().scan(path, FieldsParser(language="meta.lang"))
    with pytest.raises(MissingFieldError, match="text.x"):  # a path through a non-struct column
        ParquetFormat().scan(path, FieldsParser(language="text.x"))


def test_parquet_cast_failure(tmp_path):
    recs = parquet_records(200)
    recs[77]["label"] = "seventy-seven"
    recs[150]["label"] = "x"
    path = write_parquet(tmp_path / "a.parquet", recs, row_group_size=64)
    parser = FieldsParser(language="meta.language", label={"path": "label", "type": "int"})
    fmt = ParquetFormat(batch_size=50)
    with pytest.raises(MalformedRecordError) as exc:
        fmt.scan(path, parser)
    assert f"{path}:row 77:" in str(exc.value) and "column 'label'" in str(exc.value)
    scan = fmt.scan(path, parser, on_error="skip")
    assert scan.skipped == 2 and scan.num_samples == 198
    rows = table_rows(scan)
    assert 77 not in rows and 150 not in rows and rows[78]["label"] == int(recs[78]["label"])
    assert scan.read_index is not None
    got = read_all(fmt, path, [(75, 80), (149, 152)], scan.read_index)
    assert [i for i, _ in got] == [75, 76, 78, 79, 149, 151]


def test_parquet_broken_files(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", parquet_records(100))
    with open(path, "rb") as f:
        raw = f.read()
    pages = bytearray(raw)  # a valid footer, but a garbled page header in the second row group
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    for k in range(col.data_page_offset, col.data_page_offset + 32):
        pages[k] ^= 0x55
    cases = {"footer": raw[:-10], "garbage": os.urandom(2000), "empty": b"", "pages": bytes(pages)}
    for name, data in cases.items():
        bad = str(tmp_path / f"{name}.parquet")
        with open(bad, "wb") as f:
            f.write(data)
        with pytest.raises(CorruptFileError, match=name):
            ParquetFormat().scan(bad, FieldsParser(n="id"))


def test_parquet_file_level_only_parser(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", parquet_records(20))
    scan = ParquetFormat().scan(path, FieldsParser(source={"value": "web"}))
    assert scan.properties.column_names == ["sample_index"] and scan.num_samples == 20


# --------------------------------------------------------------------------- webdataset


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def wds_samples(n: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        s: dict[str, Any] = {"__key__": f"shard/{i:05d}"}
        s["txt"] = f"caption {i} ünïcode".encode()
        if i % 6 != 2:
            meta: dict[str, Any] = {"language": LANGS[i % 4], "year": 2000 + i}
            if i % 4 == 1:
                meta["tags"] = "solo"
            elif i % 4 == 2:
                meta["tags"] = ["a", "b"]
            s["json"] = json.dumps(meta).encode()
        s["png"] = rng.randbytes(rng.randint(10, 3000))
        out.append(s)
    return out


def write_tar(path, samples: list[dict[str, Any]], extra: list[tuple[str, bytes]] = ()) -> str:
    with tarfile.open(str(path), "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in extra:
            add_member(tf, name, data)
        for s in samples:
            for ext, data in s.items():
                if ext != "__key__":
                    add_member(tf, f"{s['__key__']}.{ext}", data)
    return str(path)


def test_webdataset_scan_fields_parser(tmp_path):
    samples = wds_samples(40)
    # webdataset ignores __meta__ members and members without an extension.
    path = write_tar(tmp_path / "s.tar", samples, extra=[("__info__", b"x"), ("README", b"hello")])
    parser = FieldsParser(
        language="json.language",
        year={"path": "json.year", "type": "int"},
        tags={"path": "json.tags", "type": "list[str]"},
        caption="txt",
        nested="txt.x",  # a path into a text member: null
        key="__key__",
    )
    scan = WebDatasetFormat().scan(path, parser)
    assert scan.properties.schema.names == [
        "sample_index",
        "language",
        "year",
        "tags",
        "caption",
        "nested",
        "key",
    ]
    rows = table_rows(scan)
    assert list(rows) == list(range(40))
    for i, s in enumerate(samples):
        meta = json.loads(s["json"]) if "json" in s else {}
        tags = meta.get("tags")
        assert rows[i] == {
            "language": meta.get("language"),
            "year": meta.get("year"),
            "tags": None if tags is None else (tags if isinstance(tags, list) else [tags]),
            "caption": s["txt"].decode(),
            "nested": None,
            "key": s["__key__"],
        }


def test_webdataset_python_parser_gets_lazy_records(tmp_path):
    samples = wds_samples(12)
    path = write_tar(tmp_path / "s.tar", samples)

    class WdsParser(MetadataParser):
        name = "wds_test"

        @property
        def schema(self):
            return {
                "key": property_type("str"),
                "n_png": property_type("int"),
                "exts": property_type("list[str]"),
            }

        def parse(self, record, path):
            return {
                "key": record["__key__"],
                "n_png": len(record["png"]),
                "exts": sorted(k for k in record if not k.startswith("__")),
            }

    rows = table_rows(WebDatasetFormat().scan(path, WdsParser()))
    for i, s in enumerate(samples):
        assert rows[i] == {
            "key": s["__key__"],
            "n_png": len(s["png"]),
            "exts": sorted(k for k in s if k != "__key__"),
        }


def test_webdataset_read_ranges(tmp_path):
    samples = wds_samples(50)
    path = write_tar(tmp_path / "s.tar", samples)
    fmt = WebDatasetFormat()
    scan = fmt.scan(path, FieldsParser(language="json.language"))
    ranges = [(0, 2), (10, 13), (13, 14), (45, 99), (5, 6)]
    got = read_all(fmt, path, ranges, scan.read_index)
    assert [i for i, _ in got] == [i for a, b in ranges for i in range(a, min(b, 50))]
    for i, rec in got:
        assert rec == {**samples[i], "__url__": path}
    assert read_all(fmt, path, [(3, 5)], None) == [(i, {**samples[i], "__url__": path}) for i in (3, 4)]


def test_webdataset_multi_dot_extensions_and_case(tmp_path):
    path = str(tmp_path / "s.tar")
    with tarfile.open(path, "w") as tf:
        add_member(tf, "a/0001.meta.json", b'{"language": "en"}')
        add_member(tf, "a/0001.JPG", b"\xff\xd8")
        add_member(tf, "a/0002.meta.json", b'{"language": "de"}')
        add_member(tf, "a/0002.jpg", b"\xff\xd9")
    fmt = WebDatasetFormat()
    scan = fmt.scan(path, FieldsParser(language="meta.json.language"))
    assert table_rows(scan) == {0: {"language": "en"}, 1: {"language": "de"}}
    got = read_all(fmt, path, [(0, 2)], scan.read_index)
    assert got[0][1] == {
        "__key__": "a/0001",
        "__url__": path,
        "meta.json": b'{"language": "en"}',
        "jpg": b"\xff\xd8",
    }


def test_webdataset_bad_json_sample(tmp_path):
    samples = wds_samples(20)
    samples[7]["json"] = b'{"language": '
    samples[9]["txt"] = b"\xff\xfe not utf-8"
    path = write_tar(tmp_path / "s.tar", samples)
    fmt = WebDatasetFormat()
    with pytest.raises(MalformedRecordError) as exc:
        fmt.scan(path, FieldsParser(language="json.language"))
    assert f"{path}:sample 7 (key shard/00007):" in str(exc.value) and "not valid JSON" in str(exc.value)
    scan = fmt.scan(path, FieldsParser(language="json.language", caption="txt"), on_error="skip")
    assert scan.skipped == 2 and 7 not in table_rows(scan) and 9 not in table_rows(scan)
    assert [i for i, _ in read_all(fmt, path, [(5, 11)], scan.read_index)] == [5, 6, 8, 10]
    # A bad type also names the sample and key.
    with pytest.raises(MalformedRecordError, match=r"sample 0 \(key shard/00000\): property 'language'"):
        fmt.scan(path, FieldsParser(language={"path": "json.language", "type": "int"}))


def test_webdataset_duplicate_extension_is_malformed(tmp_path):
    path = str(tmp_path / "s.tar")
    with tarfile.open(path, "w") as tf:
        add_member(tf, "k1.txt", b"a")
        add_member(tf, "k2.txt", b"b")
        add_member(tf, "k2.TXT", b"c")
        add_member(tf, "k3.txt", b"d")
    with pytest.raises(MalformedRecordError, match=r"sample 1 \(key k2\): .*repeats extension 'txt'"):
        WebDatasetFormat().scan(path, FieldsParser(t="txt"))
    scan = WebDatasetFormat().scan(path, FieldsParser(t="txt"), on_error="skip")
    assert table_rows(scan) == {0: {"t": "a"}, 2: {"t": "d"}}


def test_webdataset_broken_tars(tmp_path):
    samples = wds_samples(10)
    path = write_tar(tmp_path / "good.tar", samples)
    with open(path, "rb") as f:
        raw = f.read()
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    mid = members[len(members) // 2]
    corrupt_header = bytearray(raw)
    corrupt_header[mid.offset + 3] ^= 0xFF  # breaks the header checksum
    first_header = bytearray(raw)
    first_header[10] ^= 0xFF
    cases = {
        "truncated-member": raw[: mid.offset_data + mid.size // 2],
        "truncated-header": raw[: mid.offset + 100],
        "corrupt-header": bytes(corrupt_header),
        "corrupt-first-header": bytes(first_header),
        "garbage": os.urandom(5000),
    }
    parser = FieldsParser(language="json.language")
    for name, data in cases.items():
        bad = str(tmp_path / f"{name}.tar")
        with open(bad, "wb") as f:
            f.write(data)
        with pytest.raises(CorruptFileError) as exc:
            WebDatasetFormat().scan(bad, parser, on_error="skip")
        assert bad in str(exc.value), name


# --------------------------------------------------------------------------- read index container


def test_read_index_container_is_versioned():
    blob = pack_index(
        "jsonl", 1, {"a": 1}, {"x": np.arange(5000, dtype=np.int64), "y": np.zeros(0, np.int32)}
    )
    header, arrays = unpack_index(blob, "jsonl", 1)
    assert header["meta"] == {"a": 1} and header["compression"] == "zstd"
    assert np.array_equal(arrays["x"], np.arange(5000)) and arrays["y"].dtype == np.int32
    with pytest.raises(ValueError, match="written by format 'jsonl', not 'parquet'"):
        unpack_index(blob, "parquet", 1)
    newer = pack_index("jsonl", 2, {}, {})
    with pytest.raises(ValueError, match="newer than this mixtera understands"):
        unpack_index(newer, "jsonl", 1)
    with pytest.raises(ValueError, match="not a Mixtera read index"):
        unpack_index(b"garbage!", "jsonl", 1)


def test_jsonl_read_field_equals_read_on_awkward_files(tmp_path):
    """The block-wise native field path agrees with record reads: blank and skipped lines,
    non-string values, a missing field, CRLF, no final newline, BOM, compressed frames."""
    import random as _random

    import zstandard as _zstd

    from mixtera_core.interfaces import FieldRef
    from mixtera_core.plugins import get_plugin_manager

    rng = _random.Random(5)
    lines = []
    for i in range(700):
        r = rng.random()
        if r < 0.03:
            lines.append("")
        elif r < 0.05:
            lines.append("{broken")
        elif r < 0.08:
            lines.append(json.dumps({"text": i, "meta": {"l": "x"}}))  # not a string
        elif r < 0.1:
            lines.append(json.dumps({"meta": {"l": "x"}}))  # no text
        else:
            lines.append(json.dumps({"text": f"doc {i} " + "w" * rng.randint(0, 50), "meta": {"l": "x"}}))
    body = "\r\n".join(lines)  # CRLF and no final newline
    data = ("\ufeff" + body).encode()
    fmt = get_plugin_manager().format("jsonl")
    parser = get_plugin_manager().parser("fields", l="meta.l")
    frames = b"".join(_zstd.ZstdCompressor().compress(data[i : i + 4000]) for i in range(0, len(data), 4000))
    clean = "\n".join(json.dumps({"text": f"clean {i}"}) for i in range(700)).encode()
    clean_frames = b"".join(
        _zstd.ZstdCompressor().compress(clean[i : i + 3000]) for i in range(0, len(clean), 3000)
    )
    for name, payload in (
        ("a.jsonl", data),
        ("b.jsonl.zst", frames),
        ("c.jsonl", clean),
        ("d.jsonl.zst", clean_frames),
    ):
        path = tmp_path / name
        path.write_bytes(payload)
        scan = fmt.scan(str(path), parser, on_error="skip")
        for _ in range(20):
            a = rng.randrange(0, 700)
            ranges = [(a, min(700, a + rng.randint(1, 300)))]
            if rng.random() < 0.5:
                b = rng.randrange(ranges[0][1], 701)
                ranges.append((b, min(700, b + rng.randint(0, 80))))
            want = [(i, r.get("text")) for i, r in fmt.read(str(path), ranges, scan.read_index)]
            got = list(fmt.read_field(str(path), ranges, scan.read_index, FieldRef.parse("text")))
            assert got == want, (name, ranges)


def test_jsonl_forked_child_does_not_inherit_open_cursors(tmp_path):
    """A DataLoader worker forked after the parent read a file shares that file's offset with
    the parent: the child must open its own."""
    import multiprocessing

    from mixtera_plugins.formats import jsonl

    lines = [json.dumps({"text": f"t{i}"}) for i in range(40)]
    path = write_jsonl(tmp_path / "f.jsonl.zst", lines, "zstd", frame_lines=8)
    index = SMALL.scan(path, fields_parser()).read_index
    assert [i for i, _ in SMALL.read(path, [(0, 5)], index)] == list(range(5))
    assert path in jsonl._OPEN.cursors  # kept open in this thread

    def child(queue):
        inherited = len(jsonl._OPEN.cursors)
        got = [r["text"] for _, r in SMALL.read(path, [(5, 12)], index)]
        queue.put((inherited, got))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    inherited, got = queue.get(timeout=30)
    proc.join(30)
    assert inherited == 0 and got == [f"t{i}" for i in range(5, 12)]
    assert [r["text"] for _, r in SMALL.read(path, [(5, 8)], index)] == ["t5", "t6", "t7"]
