"""ChunkerIndex: islands are exact, maximal, sorted and deterministic."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import write_jsonl

from mixtera_core import ChunkerIndex, Query
from mixtera_core.errors import QueryError


def lang_runs(tmp_path, client):
    # file 0: python x3, c x2, python x2, (malformed skipped), python x1  -> islands split by the skip
    write_jsonl(
        tmp_path / "d" / "0.jsonl",
        [{"l": "python"}] * 3 + [{"l": "c"}] * 2 + [{"l": "python"}] * 2 + ["{bad"] + [{"l": "python"}],
    )
    write_jsonl(tmp_path / "d" / "1.jsonl", [{"l": "c"}, {"l": "python"}, {"l": "c"}, {"l": "c"}])
    client.register_dataset("d", tmp_path / "d", parser_options={"l": "l"}, on_error="skip")
    return {f.path.rsplit("/", 1)[1]: fid for fid, f in client.catalog.files().items()}


def test_islands_are_exact(client, tmp_path):
    fid = lang_runs(tmp_path, client)
    idx = client.chunker_index(Query.for_job("j"))
    assert idx.component_keys() == ["l=c", "l=python"]
    assert idx.file_ranges(0) == {fid["0.jsonl"]: [(3, 5)], fid["1.jsonl"]: [(0, 1), (2, 4)]}
    assert idx.file_ranges(1) == {fid["0.jsonl"]: [(0, 3), (5, 7), (8, 9)], fid["1.jsonl"]: [(1, 2)]}
    assert idx.component_sizes().tolist() == [5, 7]
    assert idx.num_samples == 12


def test_no_properties_gives_one_component_of_everything(client, tmp_path):
    fid = lang_runs(tmp_path, client)
    idx = client.chunker_index(Query.for_job("j"), properties=[])
    assert idx.num_components == 1 and idx.component_keys() == ["<all>"]
    assert idx.file_ranges(0) == {fid["0.jsonl"]: [(0, 7), (8, 9)], fid["1.jsonl"]: [(0, 4)]}


def test_empty_result(client, tmp_path):
    lang_runs(tmp_path, client)
    for props in (None, []):
        idx = client.chunker_index(Query.for_job("j").select(("l", "==", "rust")), properties=props)
        assert idx.num_components == 0 and idx.num_samples == 0
    assert (
        str(client.explain(Query.for_job("j").select(("l", "==", "rust")))) == "the query selects no samples"
    )


def test_unknown_index_property(client, tmp_path):
    lang_runs(tmp_path, client)
    with pytest.raises(QueryError, match="unknown properties"):
        client.chunker_index(Query.for_job("j"), properties=["nope"])


def test_random_index_matches_python_and_is_maximal(client, tmp_path):
    rng = random.Random(3)
    truth: dict[tuple, set] = {}
    files = {}
    for f in range(6):
        recs = []
        for i in range(rng.randint(0, 400)):
            # long runs and random noise, nulls and lists
            lang = (
                rng.choice(["python", "c", None])
                if rng.random() < 0.15
                else ["python", "c", None][(i // 37 + f) % 3]
            )
            tags = sorted(rng.sample(["x", "y"], rng.randint(0, 2))) if rng.random() < 0.3 else None
            recs.append({"lang": lang, "tags": tags, "lic": rng.choice(["mit", "psf"])})
        files[f"{f}.jsonl"] = recs
        write_jsonl(tmp_path / "r" / f"{f}.jsonl", recs)
    client.register_dataset(
        "r",
        tmp_path / "r",
        parser_options={"lang": "lang", "lic": "lic", "tags": {"path": "tags", "type": "list[str]"}},
    )
    fid = {f.path.rsplit("/", 1)[1]: i for i, f in client.catalog.files().items()}
    query = Query.for_job("j").select(("lic", "==", "mit")).select(("lang", "==", "c"))
    for name, recs in files.items():
        for i, r in enumerate(recs):
            if r["lic"] == "mit" or r["lang"] == "c":
                key = (r["lang"], tuple(r["tags"]) if r["tags"] is not None else None)
                truth.setdefault(key, set()).add((fid[name], i))
    idx = client.chunker_index(query, properties=["lang", "tags"])
    got = {}
    for c in range(idx.num_components):
        v = idx.component_values(c)
        key = (v["lang"], tuple(v["tags"]) if v["tags"] is not None else None)
        fids, starts, stops = idx.intervals(c)
        got[key] = {(int(f), j) for f, s, e in zip(fids, starts, stops, strict=True) for j in range(s, e)}
        # sorted and maximal: consecutive intervals of one file never touch
        order = np.lexsort((starts, fids))
        assert (order == np.arange(len(order))).all()
        same_file = fids[1:] == fids[:-1]
        assert (starts[1:][same_file] > stops[:-1][same_file]).all()
    assert got == truth
    assert sum(len(s) for s in truth.values()) == idx.num_samples


def test_index_serialization_roundtrip_and_determinism(client, tmp_path):
    lang_runs(tmp_path, client)
    a = client.chunker_index(Query.for_job("j"))
    b = client.chunker_index(Query.for_job("j"))
    assert a.to_bytes() == b.to_bytes()
    c = ChunkerIndex.from_bytes(a.to_bytes())
    assert c.component_keys() == a.component_keys()
    assert c.properties == a.properties and c.catalog_version == a.catalog_version
    for arr in ("comp_offsets", "file_ids", "starts", "stops"):
        assert np.array_equal(getattr(c, arr), getattr(a, arr))


def test_explain_and_peek(client, tmp_path):
    lang_runs(tmp_path, client)
    ex = client.explain(Query.for_job("j"))
    assert [(c.key, c.samples, c.files, c.intervals) for c in ex.components] == [
        ("l=c", 5, 2, 3),
        ("l=python", 7, 2, 4),
    ]
    assert ex.total_samples == 12
    text = str(ex)
    assert "l=python" in text and "58.33%" in text
    peeked = client.peek(Query.for_job("j"), n=2)
    assert [(k, r["l"]) for k, r in peeked] == [
        ("l=c", "c"),
        ("l=c", "c"),
        ("l=python", "python"),
        ("l=python", "python"),
    ]
