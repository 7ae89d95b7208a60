"""Query semantics checked against a plain-Python evaluation of the same records."""

from __future__ import annotations

import random

import pytest
from conftest import write_jsonl

from mixtera_core import Query, col
from mixtera_core.errors import QueryError
from mixtera_core.query import Condition, parse_condition

LANGS = ["python", "c", "en", None]
LICENSES = ["mit", "psf", "bsd"]


def records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        meta = {
            "language": rng.choice(LANGS),
            "license": rng.choice(LICENSES),
            "year": rng.randint(2015, 2024),
        }
        if rng.random() < 0.8:
            meta["tags"] = rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))
        out.append({"text": str(i), "meta": meta})
    return out


OPTIONS = {
    "language": "meta.language",
    "license": "meta.license",
    "year": {"path": "meta.year", "type": "int"},
    "tags": {"path": "meta.tags", "type": "list[str]"},
}


@pytest.fixture
def loaded(client, tmp_path):
    recs_a, recs_b = records(300, 1), records(200, 2)
    write_jsonl(tmp_path / "a" / "x.jsonl", recs_a)
    write_jsonl(tmp_path / "b" / "y.jsonl.zst", recs_b, "zst")
    client.register_dataset("a", tmp_path / "a", parser_options=OPTIONS)
    client.register_dataset("b", tmp_path / "b", parser_options=OPTIONS)
    truth = [("a", r) for r in recs_a] + [("b", r) for r in recs_b]
    return client, truth


def matches(dataset: str, r: dict, cond: tuple) -> bool:
    prop, op, value = cond
    v = dataset if prop == "dataset" else r["meta"].get(prop)
    if v is None:
        return False
    vals = v if isinstance(v, list) else [v]
    if op == "!=":
        return value not in vals if isinstance(v, list) else v != value
    fn = {
        "==": lambda x: x == value,
        "<": lambda x: x < value,
        ">": lambda x: x > value,
        "<=": lambda x: x <= value,
        ">=": lambda x: x >= value,
        "in": lambda x: x in value,
    }[op]
    return any(fn(x) for x in vals)


def selected_texts(client, query) -> list[str]:
    return sorted(r["text"] + ds for ds, r in _all(client, query))


def _all(client, query):
    # dataset name is recovered from the record text suffix (a/b), since peek yields records
    idx = client.chunker_index(query, properties=[])
    out = []
    from mixtera_core.reading import SampleReader

    reader = SampleReader(client.catalog, client.plugins)
    if idx.num_components:
        for fid, ranges in idx.file_ranges(0).items():
            ds = reader.file(fid).dataset
            out.extend((ds, r) for _, r in reader.read(fid, ranges))
    return out


CONDITIONS = [
    ("language", "==", "python"),
    ("language", "!=", "python"),
    ("license", "in", ["mit", "bsd"]),
    ("year", ">=", 2020),
    ("year", "<", 2018),
    ("year", "<=", 2018),
    ("year", ">", 2023),
    ("tags", "==", "a"),
    ("tags", "!=", "b"),
    ("tags", "in", ["c", "d"]),
    ("tags", ">", "b"),
    ("dataset", "==", "b"),
]


@pytest.mark.parametrize("cond", CONDITIONS, ids=lambda c: f"{c[0]}{c[1]}{c[2]}")
def test_single_condition_matches_python(loaded, cond):
    client, truth = loaded
    got = selected_texts(client, Query.for_job("j").select(cond))
    want = sorted(r["text"] + ds for ds, r in truth if matches(ds, r, cond))
    assert got == want and want  # every condition selects something in this corpus


def test_random_combinations_match_python(loaded):
    client, truth = loaded
    rng = random.Random(7)
    for _ in range(25):
        groups = [rng.sample(CONDITIONS, rng.randint(1, 2)) for _ in range(rng.randint(1, 3))]
        q = Query.for_job("j")
        for g in groups:
            q = q.select(*g)
        want = sorted(
            r["text"] + ds for ds, r in truth if any(all(matches(ds, r, c) for c in g) for g in groups)
        )
        assert selected_texts(client, q) == want, groups


def test_expression_form_equals_tuple_form(loaded):
    client, truth = loaded
    expr = (col("language").isin(["python", "c"]) & (col("year") >= 2019)) | ~(col("license") == "psf")
    got = selected_texts(client, Query.for_job("j").select(expr))
    want = sorted(
        r["text"] + ds
        for ds, r in truth
        if (r["meta"]["language"] in ("python", "c") and r["meta"]["year"] >= 2019)
        or r["meta"]["license"] != "psf"
    )
    assert got == want
    # the same via JSON (the wire format)
    q = Query.from_json(Query.for_job("j").select(expr).to_json())
    assert selected_texts(client, q) == want


def test_no_select_selects_everything_and_chained_selects_are_ored(loaded):
    client, truth = loaded
    assert len(selected_texts(client, Query.for_job("j"))) == len(truth)
    q = Query.for_job("j").select(("language", "==", "python")).select(("language", "==", "c"))
    want = sorted(r["text"] + ds for ds, r in truth if r["meta"]["language"] in ("python", "c"))
    assert selected_texts(client, q) == want


def test_values_are_bound_not_interpolated(loaded):
    client, _ = loaded
    evil = "python' OR 1=1 --"
    assert selected_texts(client, Query.for_job("j").select(("language", "==", evil))) == []
    sql, params = Query.for_job("j").select(("language", "==", evil)).to_sql(client.catalog.property_types())
    assert evil not in sql and params == [evil]


def test_query_errors(loaded):
    client, _ = loaded
    schema = client.catalog.property_types()
    with pytest.raises(
        QueryError, match=r"unknown property 'lang' \(known: dataset, language, license, tags, year\)"
    ):
        Query.for_job("j").select(("lang", "==", "x")).to_sql(schema)
    with pytest.raises(QueryError, match="unknown operator '=~'"):
        Query.for_job("j").select(("language", "=~", "x"))
    with pytest.raises(QueryError, match=r"value for 'year' \(int\)"):
        Query.for_job("j").select(("year", ">", "soon")).to_sql(schema)
    with pytest.raises(QueryError, match="non-empty list"):
        Query.for_job("j").select(("language", "in", "python"))
    with pytest.raises(QueryError, match="use 'in'"):
        Query.for_job("j").select(("language", "==", ["python"]))
    with pytest.raises(TypeError, match="use & | ~"):
        bool(col("a") == 1)
    with pytest.raises(QueryError, match="job id"):
        Query.for_job("")


def test_parse_condition():
    assert parse_condition("language==python").to_json() == ["language", "==", "python"]
    assert parse_condition("year >= 2020").to_json() == ["year", ">=", "2020"]
    assert parse_condition("license in mit, psf").to_json() == ["license", "in", ["mit", "psf"]]
    assert isinstance(parse_condition("a=b"), Condition)
    with pytest.raises(QueryError):
        parse_condition("nonsense")
