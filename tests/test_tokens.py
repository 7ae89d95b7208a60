"""Token mode: shares hold in tokens, packing carries leftovers, resume is exact."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest
from test_streaming import WEIGHTS, corpus, doc  # noqa: F401  (module fixture reused)

from mixtera_core import MixteraClient, Query
from mixtera_core.plugins import get_plugin_manager
from mixtera_core.streaming import (
    _FileReaders,
    chunk_records,
    document_piece,
    load_tokenizer,
    record_text,
    reshard,
)

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("tok") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def seqs(stream, n=None):
    out = []
    for item in stream:
        out.append((item.tokens.copy(), item.key_ids.copy()))
        if n is not None and len(out) == n:
            break
    return out


def test_token_shares_hold_within_one_percent_over_a_million_tokens(tclient, small_bpe):
    job = tclient.execute(
        Query.for_job("tok-fid"),
        WEIGHTS,
        chunk_size=256,
        seed=0,
        on_exhausted="repeat",
        tokenizer=("hf", str(small_bpe)),
        seq_len=1024,
    )
    counts = np.zeros(3)
    total = 0
    for item in tclient.stream(job):
        assert item.tokens.shape == (1025,) and item.key_ids.shape == (1025,)
        counts += np.bincount(item.key_ids, minlength=3)
        total += len(item.tokens)
        if total >= 1_000_000:
            break
    shares = counts / counts.sum()
    target = np.array([0.5, 0.2, 0.3])  # key ids follow the mixture's key order
    assert np.abs(shares - target).max() < 0.01, shares
    # in samples the same job is far from the weights (documents differ 10x in length)
    spec = tclient.job(job)
    assert spec.tokens_per_sample.max() / spec.tokens_per_sample.min() > 5


def test_packing_carries_leftovers_and_drops_nothing(tclient, small_bpe):
    job = tclient.execute(
        Query.for_job("tok-pack"),
        WEIGHTS,
        chunk_size=20,
        seed=1,
        on_exhausted="stop",
        tokenizer=("hf", str(small_bpe)),
        seq_len=64,
        add_bos=True,
        add_eos=True,
    )
    tok = load_tokenizer(tclient.job(job).spec.tokenizer)
    pieces = [
        (k, document_piece(np.asarray([tok.bos_id, *tok.encode_batch([t])[0], tok.eos_id]), lo, hi))
        for k, t, lo, hi in _documents(tclient, job)
    ]
    assert any(len(p) for _, p in pieces)
    expected = np.concatenate([p for _, p in pieces])
    expected_keys = np.concatenate([np.full(len(p), k) for k, p in pieces])
    got = seqs(tclient.stream(job, drop_last=False))
    assert all(len(t) == 65 for t, _ in got[:-1]) and 0 < len(got[-1][0]) <= 65
    assert np.array_equal(np.concatenate([t for t, _ in got]), expected)
    assert np.array_equal(np.concatenate([k for _, k in got]), expected_keys)


def _documents(client, job_id):
    """The job's documents (or parts of them: spans) in delivery order, read chunk by chunk from
    its own plan."""
    job = client.job(job_id)
    planner = job.planner()
    readers = _FileReaders(job, get_plugin_manager())
    key_ids = job.component_key_ids()
    while (chunk := planner.next_chunk()) is not None:
        spans = chunk.spans if chunk.spans is not None else np.tile([0.0, 1.0], (len(chunk.comps), 1))
        for (c, f, i, rec), (lo, hi) in zip(chunk_records(job, chunk, readers), spans.tolist(), strict=True):
            yield int(key_ids[c]), record_text(rec, "text", (job.files[f].path, i)), lo, hi


def test_token_resume_at_random_points_with_workers(tclient, small_bpe):
    job = tclient.execute(
        Query.for_job("tok-res"),
        WEIGHTS,
        chunk_size=40,
        seed=2,
        on_exhausted="repeat",
        num_workers=2,
        tokenizer=("hf", str(small_bpe)),
        seq_len=100,
    )
    full = seqs(tclient.stream(job, worker=1), 300)
    for cut in sorted(random.Random(1).sample(range(1, 290), 6)):
        s = tclient.stream(job, worker=1, prefetch=2)
        seqs(s, cut)
        resumed = seqs(tclient.stream(job, worker=1, state=s.state_dict()), 300 - cut)
        assert all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            for a, b in zip(resumed, full[cut:], strict=True)
        )


def test_token_elastic_resume_keeps_every_token_once(tclient, small_bpe):
    job = tclient.execute(
        Query.for_job("tok-el"),
        WEIGHTS,
        chunk_size=30,
        seed=3,
        on_exhausted="redistribute",
        dp_groups=2,
        tokenizer=("hf", str(small_bpe)),
        seq_len=50,
    )

    def tokens(items):
        return collections.Counter(
            zip(
                np.concatenate([t for t, _ in items]).tolist(),
                np.concatenate([k for _, k in items]).tolist(),
                strict=True,
            )
        )

    full = tokens([x for g in range(2) for x in seqs(tclient.stream(job, g, drop_last=False))])
    got: collections.Counter = collections.Counter()
    states = []
    for g, n in ((0, 170), (1, 55)):
        s = tclient.stream(job, g, drop_last=False)
        got.update(tokens(seqs(s, n)))
        states.append(s.state_dict())
    for st in reshard(tclient.job(job), states, 3, 1):
        got.update(tokens(seqs(tclient.stream(job, st["dp_group"], state=st, drop_last=False))))
    assert got == full
