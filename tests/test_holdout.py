"""Held-out evaluation splits: checked on the samples and tokens the jobs deliver."""

from __future__ import annotations

import collections
import json
import re

import pytest
from test_streaming import WEIGHTS, corpus  # noqa: F401  (module fixture reused)

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import QueryError
from mixtera_core.holdout import Holdout
from mixtera_core.properties import property_type
from mixtera_core.streaming import JobStream

SHARDS = {"python": (900, 3), "c": (400, 2), "en": (1500, 3)}  # test_streaming's corpus
DOC = re.compile(r"\b(python|c|en) doc (\d+):")


@pytest.fixture(scope="module")
def hclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("holdout") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def reference(corpus, holdout: Holdout) -> set[tuple[str, int]]:  # noqa: F811
    """The held-out documents by the definition (hashlib md5 of seed, path, line), not by SQL."""
    out = set()
    for lang, (n, shards) in SHARDS.items():
        per = n // shards
        for s in range(shards):
            path = str(corpus / f"{lang}-{s}.jsonl.zst")
            out |= {(lang, s * per + i) for i in range(per) if holdout.held_out(path, i)}
    return out


def delivered(client, job_id: str) -> list[tuple[str, int]]:
    """Every document the job's one stream hands out (sample mode), as (language, doc number)."""
    docs = []
    for item in client.stream(job_id):
        m = DOC.match(item.data)
        assert m is not None, item.data[:80]
        docs.append((m.group(1), int(m.group(2))))
    return docs


def test_the_jobs_deliver_complementary_parts(hclient, corpus):  # noqa: F811
    holdout = Holdout(0.1, seed=7)
    query = Query.for_job("ho-train")
    options = dict(chunk_size=64, seed=1, on_exhausted="redistribute")  # every sample exactly once
    train = delivered(hclient, hclient.execute(holdout.train(query), WEIGHTS, **options))
    held = delivered(hclient, hclient.execute(holdout.eval(query, "ho-eval"), WEIGHTS, **options))
    assert len(train) == len(set(train)) and len(held) == len(set(held))
    expected = reference(corpus, holdout)
    assert set(held) == expected  # the SQL computes exactly the documented hash
    assert not set(train) & set(held)
    everything = {(lang, i) for lang, (n, _) in SHARDS.items() for i in range(n)}
    assert set(train) | set(held) == everything
    per_domain = collections.Counter(lang for lang, _ in held)
    for lang, (n, _) in SHARDS.items():  # about 10% of every domain (binomial: 3 sigma)
        sigma = (n * 0.1 * 0.9) ** 0.5
        assert abs(per_domain[lang] - 0.1 * n) < 3 * sigma, (lang, per_domain)
    # another seed holds out other documents, about as many
    other = reference(corpus, Holdout(0.1, seed=8))
    assert other != expected and len(other & expected) < 0.3 * len(expected)


def test_training_tokens_never_contain_held_out_documents(hclient, corpus, small_bpe):  # noqa: F811
    """Token mode, repeating for several epochs: decode what the training stream packs and look
    for the documents' own headers ("python doc 12:")."""
    holdout = Holdout(0.2, seed=3)
    query = Query.for_job("ho-tok")
    job_id = hclient.execute(
        holdout.train(query), WEIGHTS, tokenizer=("hf", str(small_bpe)), seq_len=64, chunk_size=32,
        seed=2, on_exhausted="repeat",
    )  # fmt: skip
    tokenizer = pytest.importorskip("tokenizers").Tokenizer.from_file(str(small_bpe))
    stream = iter(JobStream(hclient.job(job_id)))
    tokens: list[int] = []
    for _ in range(2500):  # ~ 160k tokens
        tokens.extend(next(stream).tokens.tolist())
    stream.close()
    text = tokenizer.decode(tokens, skip_special_tokens=False)  # EOS between documents
    seen = {(m.group(1), int(m.group(2))) for m in DOC.finditer(text)}
    held = reference(corpus, holdout)
    assert not seen & held
    # most training documents were seen: without the split, about as large a share of the
    # ~560 held-out ones would have been too
    assert len(seen) > 0.6 * (sum(n for n, _ in SHARDS.values()) - len(held))


def test_a_server_builds_the_same_split(hclient, corpus, tmp_path):  # noqa: F811
    from test_server import Server

    holdout = Holdout(0.1, seed=7)
    query = Query.for_job("ho-remote")
    options = dict(chunk_size=64, seed=1, on_exhausted="redistribute")
    local = delivered(hclient, hclient.execute(holdout.eval(query, "ho-remote-eval"), WEIGHTS, **options))
    db = tmp_path / "db"
    server = Server(db, "--allowed-root", str(corpus))
    try:
        with MixteraClient.remote("127.0.0.1", server.port) as remote:
            remote.register_dataset(
                "d", str(corpus), parser_options={"language": "meta.language", "license": "meta.license"}
            )
            job_id = remote.execute(holdout.eval(query, "ho-remote-eval"), WEIGHTS, **options)
            assert delivered(remote, job_id) == local
            assert remote.job(job_id).spec.query["split"] == {"fraction": 0.1, "seed": 7, "part": "eval"}
    finally:
        assert server.stop() == 0


def test_queries_carry_the_split_and_refuse_bad_ones():
    q = Query.for_job("q").select(("language", "==", "c"))
    train = Holdout(0.25, seed=4).train(q)
    assert Query.from_json(json.loads(json.dumps(train.to_json()))).to_json() == train.to_json()
    assert "split" not in q.to_json()  # specs of unsplit queries are unchanged
    assert train.select(("license", "==", "mit")).split == train.split
    sql, params = train.to_sql({"language": property_type("str")})
    assert "NOT (substr(md5(" in sql and params[-2:] == ["4", format(2**30, "08x")]
    for bad in (0, 1, 1.5, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(QueryError, match="fraction"):
            Holdout(bad)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="seed"):
        Holdout(0.1, seed=-1)
    with pytest.raises(QueryError, match="split already"):
        Holdout(0.1).eval(train, "other")
    with pytest.raises(QueryError, match="job id of its own"):
        Holdout(0.1).eval(q, "q")
    for raw in (
        {"fraction": 0.1, "part": "test"},
        {"seed": 1, "part": "eval"},
        {"fraction": 2, "part": "eval"},
    ):
        with pytest.raises(QueryError):
            Query.from_json({"job_id": "q", "selects": [], "split": raw})
