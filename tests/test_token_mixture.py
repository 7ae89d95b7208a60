"""Token mixtures on corpora built to break them: shares on the fly and from a token index.

The corpus (``conftest.skewed_corpus``) mixes, inside each component, shards whose documents
differ 100x in length and in script (English, Cyrillic, CJK; one-line stubs next to whole
modules), in jsonl.zst, jsonl.gz and parquet. Shares are measured on the tokens the stream
delivers, over a million of them.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from conftest import register_corpus, skewed_corpus

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import TokenIndexStaleError
from mixtera_core.plugins import get_plugin_manager
from mixtera_core.streaming import JobStream, _FileReaders, document_specials, load_tokenizer, record_text

pytest.importorskip("tokenizers")

WEIGHTS = {"lang=prose": 0.3, "lang=code": 0.2, "lang=c": 0.5}
TARGET = np.array([0.3, 0.2, 0.5])  # key ids follow the mixture's key order
MILLION = 1_000_000


def shares(stream, budget: int = MILLION) -> np.ndarray:
    counts = np.zeros(3)
    for item in stream:
        counts += np.bincount(item.key_ids, minlength=3)
        if counts.sum() >= budget:
            break
    return counts / counts.sum()


def execute(client, job_id, tokenizer, **options):
    options = {"seq_len": 1024, "on_exhausted": "repeat", "chunk_size": 256, **options}
    return client.execute(Query.for_job(job_id), WEIGHTS, tokenizer=("hf", str(tokenizer)), **options)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Documents up to 20,000 characters: the on-the-fly estimate's worst case."""
    root = tmp_path_factory.mktemp("skewed")
    client = MixteraClient.local(root / "db")
    register_corpus(client, skewed_corpus(root / "data"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, small_bpe):
    """Documents up to 1,000 characters (30x apart; ~2,000 tokens at most), with a token index."""
    root = tmp_path_factory.mktemp("indexed")
    client = MixteraClient.local(root / "db")
    register_corpus(client, skewed_corpus(root / "data", longest=1000))
    client.tokenize(["prose", "code", "c"], ("hf", str(small_bpe)))
    yield client
    client.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_the_fly_shares_hold_within_half_a_point(skewed, small_bpe, seed):
    job = execute(skewed, f"fly-{seed}", small_bpe, seed=seed)
    assert skewed.job(job).token_index is None
    got = shares(skewed.stream(job))
    assert np.abs(got - TARGET).max() < 0.005, got


def test_on_the_fly_without_sizes_per_document_misses(skewed, small_bpe):
    """The same job planned with one mean per component (no sizes, as before) is points off:
    the test above holds because of the per-sample sizes, not because the corpus is easy."""
    job = skewed.job(execute(skewed, "fly-nosizes", small_bpe, seed=0))
    sizes = np.asarray(job.sample_bytes)
    comp_first = np.concatenate(([0], np.cumsum(job.index.component_sizes())))
    flat = sizes.copy()
    for c in range(job.index.num_components):
        flat[comp_first[c] : comp_first[c + 1]] = sizes[comp_first[c] : comp_first[c + 1]].mean()
    job.sample_bytes = flat
    job._estimator = None
    assert np.abs(shares(JobStream(job)) - TARGET).max() > 0.01


def test_estimates_are_the_same_in_every_process(skewed, small_bpe):
    """A spawned worker measures the same stages and plans the same chunks as this process."""
    torch = pytest.importorskip("torch")
    from mixtera_core.torch import MixteraDataLoader, MixteraDataset

    job = skewed.job(execute(skewed, "fly-spawn", small_bpe, seed=4, num_workers=2, seq_len=256))
    per_worker = []
    for w in range(2):
        out = []
        for seq in JobStream(job, 0, 0, w):
            out.append(seq.tokens.copy())
            if len(out) == 48:  # past the last stage switch (chunk 4 * 2 * 2 = 16)
                break
        per_worker.append(out)
    loader = MixteraDataLoader(MixteraDataset(job), 8, num_workers=2, multiprocessing_context="spawn")
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 12:
            break
    for b, batch in enumerate(batches):
        expected = np.stack(per_worker[b % 2][(b // 2) * 8 : (b // 2 + 1) * 8])
        assert torch.equal(batch["input_ids"], torch.from_numpy(expected[:, :-1]).long())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_shares_hold_within_a_tenth_of_a_point(indexed, small_bpe, seed):
    job = execute(indexed, f"idx-{seed}", small_bpe, seed=seed)
    assert indexed.job(job).token_index is not None
    got = shares(indexed.stream(job))
    assert np.abs(got - TARGET).max() < 0.001, got


def test_index_tokens_are_the_tokenizer_output_and_pack_the_same(indexed, small_bpe):
    """Every sample read from the index is BOS + encode(text) + EOS, and a stream that reads the
    index hands out exactly the sequences of the same plan tokenized on the fly."""
    indexed.tokenize(["prose", "code", "c"], ("hf", str(small_bpe)), add_bos=True)  # an index of its own
    job = indexed.job(execute(indexed, "idx-pack", small_bpe, seed=5, on_exhausted="stop", add_bos=True))
    assert job.token_index is not None
    from_index = [(s.tokens.copy(), s.key_ids.copy()) for s in JobStream(job, drop_last=False)]
    readers = _FileReaders(job, get_plugin_manager())
    tokenized = [
        (s.tokens.copy(), s.key_ids.copy()) for s in JobStream(job, drop_last=False, readers=readers)
    ]
    assert len(from_index) == len(tokenized) > 100
    for (a, ka), (b, kb) in zip(from_index, tokenized, strict=True):
        assert np.array_equal(a, b) and np.array_equal(ka, kb)
    # the index per sample, against the tokenizer
    from mixtera_core.token_index import TokenIndex

    root = job.token_index
    index = TokenIndex.open(os.path.dirname(os.path.dirname(root)), os.path.basename(root))
    tok = load_tokenizer(job.spec.tokenizer)
    bos, eos = document_specials(tok, True, True)
    for fid, entry in job.files.items():
        n = int(job.index.stops[job.index.file_ids == fid].max())
        records = dict(readers.read(fid, [(0, n)]))
        for i, ids in index.read(fid, [(0, n)]):
            text = record_text(records[i], "text", (entry.path, i))
            assert ids.tolist() == bos + tok.encode_batch([text])[0] + eos


def test_index_resume_is_exact(indexed, small_bpe):
    job = execute(indexed, "idx-resume", small_bpe, seed=6, num_workers=2, seq_len=128)
    full = [s.tokens.copy() for _, s in zip(range(200), indexed.stream(job, worker=1), strict=False)]
    for cut in sorted(random.Random(0).sample(range(1, 190), 4)):
        stream = indexed.stream(job, worker=1)
        for _ in zip(range(cut), stream, strict=False):
            pass
        resumed = [
            s.tokens.copy()
            for _, s in zip(
                range(200 - cut), indexed.stream(job, worker=1, state=stream.state_dict()), strict=False
            )
        ]
        assert all(np.array_equal(a, b) for a, b in zip(resumed, full[cut:], strict=True))


def test_explain_reports_exact_tokens_with_an_index(indexed, small_bpe):
    explained = indexed.explain(
        Query.for_job("idx-explain"), WEIGHTS, tokens=MILLION, tokenizer=("hf", str(small_bpe))
    )
    assert explained.token_counts == "exact (token index)"
    job = indexed.job(execute(indexed, "idx-explain-job", small_bpe))
    exact = job.component_tokens
    for c, info in enumerate(explained.components):
        assert info.tokens == pytest.approx(exact[c])
        assert info.epochs == pytest.approx(MILLION * info.weight / exact[c])
    assert "tokens: exact (token index)" in str(explained)


def test_a_file_changed_after_tokenize_is_refused_by_name(tmp_path, small_bpe):
    client = MixteraClient.local(tmp_path / "db")
    try:
        register_corpus(client, skewed_corpus(tmp_path / "data", longest=300))
        client.tokenize(["prose", "code", "c"], ("hf", str(small_bpe)))
        changed = tmp_path / "data" / "code" / "a.jsonl.gz"
        os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
        with pytest.raises(TokenIndexStaleError, match="a.jsonl.gz"):
            execute(client, "stale", small_bpe)
    finally:
        client.close()


def test_a_server_plans_in_exact_tokens_for_remote_streams(small_bpe, tmp_path):
    """Remote clients read text from the server and tokenize it; the server plans from its index."""
    from test_server import Server

    local = MixteraClient.local(tmp_path / "db")
    register_corpus(local, skewed_corpus(tmp_path / "data", longest=1000))
    local.tokenize(["prose", "code", "c"], ("hf", str(small_bpe)))
    local.close()
    srv = Server(
        tmp_path / "db", "--allowed-root", str(tmp_path / "data"), "--allowed-root", str(small_bpe.parent)
    )
    remote = MixteraClient.remote("127.0.0.1", srv.port)
    try:
        job = execute(remote, "idx-remote", small_bpe, seed=7)
        got = shares(remote.stream(job))
        assert np.abs(got - TARGET).max() < 0.001, got
    finally:
        remote.close()
        srv.stop()
