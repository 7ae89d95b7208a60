"""The demo corpus: deterministic, multi-domain, and written the way real corpora are."""

from __future__ import annotations

import io
import json
import sysconfig
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from mixtera_core import demo
from mixtera_core.demo import build_demo_corpus

CAP = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("demo"), max_samples_per_domain=CAP)


def _digests(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(data: bytes) -> int:
    """Count the zstd frames of a file by decompressing them one by one."""
    n, rest = 0, data
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(rest)
        assert dobj.eof, "truncated zstd frame"
        rest = dobj.unused_data
        n += 1
    return n


def _jsonl_records(path: str) -> list[dict]:
    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    return [json.loads(line) for line in raw.splitlines()]


def test_builds_are_byte_identical(tmp_path):
    a = build_demo_corpus(tmp_path / "a", max_samples_per_domain=25)
    b = build_demo_corpus(tmp_path / "b", max_samples_per_domain=25)
    files_a, files_b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert files_a and files_a == files_b
    assert {n: d.counts for n, d in a.datasets.items()} == {n: d.counts for n, d in b.datasets.items()}
    # Rebuilding in place replaces the shards instead of adding to them.
    build_demo_corpus(tmp_path / "a", max_samples_per_domain=25)
    assert _digests(tmp_path / "a") == files_a


def test_seed_changes_the_selection(tmp_path):
    build_demo_corpus(tmp_path / "s0", max_samples_per_domain=10, seed=0)
    build_demo_corpus(tmp_path / "s1", max_samples_per_domain=10, seed=1)
    assert (
        _digests(tmp_path / "s0")["code/code-00000.jsonl.zst"]
        != _digests(tmp_path / "s1")["code/code-00000.jsonl.zst"]
    )


def test_domains_and_counts(corpus):
    assert set(corpus.datasets) == {"code", "docstrings", "reference"}
    code = corpus.datasets["code"]
    assert code.counts["python"] == CAP
    has_headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    if has_headers:
        assert code.counts["c"] == CAP
    else:
        assert "c" in corpus.missing and "c" not in code.counts
    assert corpus.datasets["docstrings"].counts == {"en": CAP}
    assert corpus.datasets["reference"].counts == {"en": CAP}
    assert corpus.domain_counts["en"] == 2 * CAP
    assert corpus.num_samples == sum(corpus.domain_counts.values())
    # counts describe the files exactly
    records = [r for f in code.files for r in _jsonl_records(f)]
    assert len(records) == code.num_samples
    langs = {r["meta"]["language"] for r in records}
    assert langs == ({"python", "c"} if has_headers else {"python"})
    for r in records:
        assert r["text"].strip() and r["text"].count("\n") <= demo.PYTHON_PIECE_LINES
        assert r["meta"]["license"] == "psf"
        assert isinstance(r["meta"]["topics"], list) and len(r["meta"]["topics"]) == 2
    assert "code" in corpus.summary()


def test_default_size_is_a_few_thousand_samples(tmp_path):
    c = build_demo_corpus(tmp_path)
    assert 1000 <= c.num_samples <= 5000
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert size < 20 * 2**20


def test_missing_headers_are_recorded_not_fatal(tmp_path, monkeypatch):
    real = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {**real, "include": str(tmp_path / "nowhere")})
    c = build_demo_corpus(tmp_path / "out", max_samples_per_domain=5)
    assert "c" in c.missing
    assert c.datasets["code"].counts == {"python": 5}


def test_jsonl_zst_shards_have_several_frames(corpus):
    code = corpus.datasets["code"]
    assert code.format == "jsonl" and len(code.files) > 1
    for f in code.files:
        assert f.endswith(".jsonl.zst")
        assert _frames(Path(f).read_bytes()) > 1
    assert code.parser_options["language"] == "meta.language"
    assert code.parser_options["topics"] == {"path": "meta.topics", "type": "list[str]"}


def test_parquet_has_row_groups_and_a_meta_struct(corpus):
    docs = corpus.datasets["docstrings"]
    assert docs.format == "parquet" and len(docs.files) > 1
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in docs.files]
    assert max(groups) > 1
    table = pq.read_table(docs.files[0])
    assert table.column_names == ["text", "meta"]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["meta"]["language"] == "en" and row["meta"]["source"] == "docstrings"
    assert len(row["text"]) >= demo.MIN_DOCSTRING_CHARS


def test_tar_members_are_grouped_by_key(corpus):
    ref = corpus.datasets["reference"]
    assert ref.format == "webdataset" and ref.parser_options["language"] == "json.language"
    total = 0
    for f in ref.files:
        with tarfile.open(f) as tf:
            names = [m.name for m in tf.getmembers()]
            assert all(m.mtime == tf.getmembers()[0].mtime for m in tf.getmembers())
            keys = [n.rsplit(".", 1)[0] for n in names]
            assert names == [n for k in dict.fromkeys(keys) for n in (f"{k}.json", f"{k}.txt")]
            assert all("." not in k for k in keys)
            meta = json.load(io.BytesIO(tf.extractfile(names[0]).read()))
            assert meta["language"] == "en" and meta["source"] == "reference"
            assert tf.extractfile(names[1]).read().decode().strip()
            total += len(names) // 2
    assert total == ref.num_samples


@pytest.mark.parametrize("name", ["code", "docstrings", "reference"])
def test_scan_through_the_format_plugins(corpus, name):
    """Each dataset can be scanned by its format with the `fields` parser and its options."""
    from mixtera_core.plugins import PluginManager

    pm = PluginManager(load_entrypoints=False)
    ds = corpus.datasets[name]
    if ds.format not in pm.names("format"):
        pytest.skip(f"format plugin {ds.format!r} is not written yet")
    fmt = pm.format(ds.format)
    parser = pm.parser("fields", **ds.parser_options)
    seen: dict[str, int] = {}
    for f in ds.files:
        assert fmt.matches(f)
        scan = fmt.scan(f, parser)
        assert scan.skipped == 0
        rows = scan.properties.to_pylist()
        assert [r["sample_index"] for r in rows] == list(range(len(rows)))
        for r in rows:
            assert r["license"] == "psf" and len(r["topics"]) == 2
            seen[r["language"]] = seen.get(r["language"], 0) + 1
        # reading everything back gives the same number of samples
        assert sum(1 for _ in fmt.read(f, [(0, len(rows))], scan.read_index)) == len(rows)
    assert dict(sorted(seen.items())) == ds.counts
