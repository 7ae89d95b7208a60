"""torch integration: MixteraDataset / MixteraDataLoader on real jobs, workers, exact resume, gloo ranks."""

from __future__ import annotations

import collections
import json
import random
from collections import deque

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_streaming import WEIGHTS, corpus  # noqa: E402, F401  (module fixture reused)

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.errors import MixteraError  # noqa: E402
from mixtera_core.mixture import DynamicMixture  # noqa: E402
from mixtera_core.streaming import JobStream, reshard  # noqa: E402
from mixtera_core.torch import MixteraDataLoader, MixteraDataset, MixteraEvalDataset  # noqa: E402


@pytest.fixture(scope="module")
def mclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("torch") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def sample_job(client, job_id, **options):
    options = {"chunk_size": 20, "seed": 7, "on_exhausted": "stop", **options}
    return client.job(client.execute(Query.for_job(job_id), WEIGHTS, **options))


def token_job(client, job_id, small_bpe, **options):
    options = {"chunk_size": 16, "seed": 3, "on_exhausted": "repeat", "seq_len": 32, **options}
    return client.job(
        client.execute(Query.for_job(job_id), WEIGHTS, tokenizer=("hf", str(small_bpe)), **options)
    )


def round_robin(per_worker: list[list], start: int = 0) -> list:
    """torch's DataLoader order: one batch per worker in turn, skipping workers that ran out."""
    queues = [deque(per_worker[(i + start) % len(per_worker)]) for i in range(len(per_worker))]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.popleft())
    return out


def batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def sample_rows(batch) -> list[tuple]:
    chunks = batch["chunk_index"].tolist()
    return list(zip(batch["key"], batch["key_id"], batch["text"], chunks, strict=True))


def take(loader, n=None) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def same_token_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------------------------- sample mode


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_sample_batches_are_the_streams_in_round_robin_order(mclient, num_workers):
    job = sample_job(mclient, f"s-w{num_workers}", num_workers=max(1, num_workers))
    streams = [
        [(s.key, s.key_id, s.data, s.chunk) for s in JobStream(job, 0, 0, w)]
        for w in range(job.spec.num_workers)
    ]
    expected = round_robin([batched(items, 7) for items in streams])
    runs = []
    for _ in range(2):
        loader = MixteraDataLoader(MixteraDataset(job), batch_size=7, num_workers=num_workers)
        batches = take(loader)
        assert all(set(b) == {"text", "key", "key_id", "chunk_index"} for b in batches)
        runs.append([sample_rows(b) for b in batches])
    assert runs[0] == runs[1] == expected
    assert sum(len(b) for b in expected) == sum(len(s) for s in streams) > 1000


def test_record_output_and_plain_dataset_iteration(mclient):
    job = sample_job(mclient, "s-rec")
    items = []
    for item in MixteraDataset(job, output="record"):
        items.append(item)
        if len(items) == 5:
            break
    first = list(JobStream(job, output="record"))[:5]
    assert [it["record"] for it in items] == [s.data for s in first]
    assert [it["key"] for it in items] == [s.key for s in first]
    assert all(it["mixtera_worker"] == 0 and it["mixtera_state"]["sample"] >= 1 for it in items)


def test_in_process_dataset_checkpoint_and_loader_reiteration(mclient):
    job = sample_job(mclient, "s-inproc")
    full = [(s.key, s.data) for s in JobStream(job)]
    ds = MixteraDataset((mclient, job.spec.job_id))
    head = []
    for item in ds:
        head.append((item["key"], item["text"]))
        if len(head) == 123:
            break
    state = json.loads(json.dumps(ds.state_dict()))
    fresh = MixteraDataset(job)
    fresh.load_state_dict(state)
    assert head + [(it["key"], it["text"]) for it in fresh] == full
    # a loader that stops early continues on the next iteration
    loader = MixteraDataLoader(MixteraDataset(job), batch_size=10)
    first = take(loader, 4)
    rest = take(loader)
    rows = [(k, t) for b in first + rest for k, t in zip(b["key"], b["text"], strict=True)]
    assert rows == full and loader.state_dict()["batches"] == len(first) + len(rest)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("chunk_size", [23, 29])
def test_resume_near_the_end_with_workers_that_ran_out(mclient, chunk_size):
    """Streams of different lengths: resume at points before and after some worker is exhausted."""
    job = sample_job(
        mclient, f"s-end{chunk_size}", num_workers=3, chunk_size=chunk_size, on_exhausted="redistribute"
    )
    full = [sample_rows(b) for b in take(MixteraDataLoader(MixteraDataset(job), batch_size=6, num_workers=3))]
    per_worker = [-(-len(list(JobStream(job, 0, 0, w))) // 6) for w in range(3)]
    assert max(per_worker) - min(per_worker) >= 3  # the point: the last batches come after a worker ran out
    cuts = sorted(
        {
            1,
            len(full) - 1,
            len(full) - 2,
            len(full) - 3,
            *random.Random(chunk_size).sample(range(2, len(full) - 4), 3),
        }
    )
    for k in cuts:
        loader = MixteraDataLoader(MixteraDataset(job), batch_size=6, num_workers=3)
        take(loader, k)
        resumed = MixteraDataLoader(MixteraDataset(job), batch_size=6, num_workers=3)
        resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
        assert [sample_rows(b) for b in take(resumed)] == full[k:], k


def test_spawned_workers_receive_the_job_and_the_resume_point(mclient):
    job = sample_job(mclient, "s-spawn", num_workers=2)
    forked = MixteraDataLoader(MixteraDataset(job), batch_size=16, num_workers=2)
    head = take(forked, 3)
    state = forked.state_dict()
    expected = take(forked, 5)  # re-iterating continues after the batches handed out
    spawned = MixteraDataLoader(
        MixteraDataset(job), batch_size=16, num_workers=2, multiprocessing_context="spawn"
    )
    spawned.load_state_dict(state)
    assert [sample_rows(b) for b in take(spawned, 5)] == [sample_rows(b) for b in expected]
    assert len(head) == 3 and state["next_worker"] == 1


def test_loader_state_reshards_to_fewer_workers(mclient):
    job = sample_job(mclient, "s-reshard", num_workers=2)
    full = collections.Counter(
        r for b in take(MixteraDataLoader(MixteraDataset(job), 9, num_workers=2)) for r in sample_rows(b)
    )
    loader = MixteraDataLoader(MixteraDataset(job), 9, num_workers=2)
    got = collections.Counter(r for b in take(loader, 13) for r in sample_rows(b))
    state = loader.state_dict()
    (single,) = reshard(job, list(state["workers"].values()), dp_groups=1, num_workers=1)
    ds = MixteraDataset(job)
    ds.load_state_dict({**state, "workers": {0: single}, "next_worker": 0})
    got.update(r for b in take(MixteraDataLoader(ds, 9, num_workers=0)) for r in sample_rows(b))
    assert got == full


# ---------------------------------------------------------------------------------------------- token mode


@pytest.mark.parametrize("num_workers", [0, 2])
def test_token_batches_are_the_streams_in_round_robin_order(mclient, small_bpe, num_workers):
    job = token_job(mclient, f"t-w{num_workers}", small_bpe, num_workers=max(1, num_workers))
    n_batches, bs = 10, 4
    per_worker = []
    for w in range(job.spec.num_workers):
        seqs = []
        for seq in JobStream(job, 0, 0, w):
            seqs.append(
                (torch.from_numpy(seq.tokens.copy()), torch.from_numpy(seq.key_ids.copy()), seq.chunk)
            )
            if len(seqs) == n_batches * bs:
                break
        per_worker.append(
            [
                {
                    "input_ids": torch.stack([t[:-1] for t, _, _ in b]),
                    "targets": torch.stack([t[1:] for t, _, _ in b]),
                    "key_ids": torch.stack([k[1:] for _, k, _ in b]),
                    "chunk_index": torch.tensor([c for _, _, c in b]),
                }
                for b in batched(seqs, bs)
            ]
        )
    expected = round_robin(per_worker)[:n_batches]
    runs = [
        take(MixteraDataLoader(MixteraDataset(job), bs, num_workers=num_workers), n_batches) for _ in range(2)
    ]
    for batches in runs:
        assert same_token_batches(batches, expected)
        for b in batches:
            assert b["input_ids"].shape == b["targets"].shape == b["key_ids"].shape == (bs, 32)
            assert b["input_ids"].dtype == b["targets"].dtype == b["key_ids"].dtype == torch.long
            assert torch.equal(b["input_ids"][:, 1:], b["targets"][:, :-1])
            assert int(b["key_ids"].min()) >= 0 and int(b["key_ids"].max()) < 3


def test_token_resume_after_random_batches_is_exact(mclient, small_bpe):
    job = token_job(mclient, "t-resume", small_bpe, num_workers=2, chunk_size=12, seq_len=24)
    total = 26
    full = take(MixteraDataLoader(MixteraDataset(job), 3, num_workers=2), total)
    for k in sorted(random.Random(5).sample(range(1, total - 1), 4)):
        loader = MixteraDataLoader(MixteraDataset(job), 3, num_workers=2)
        assert same_token_batches(take(loader, k), full[:k])
        state = loader.state_dict()
        assert state["batches"] == k and state["next_worker"] == k % 2 and set(state["workers"]) == {0, 1}
        # a process restart: a new dataset and loader, the state through JSON
        resumed = MixteraDataLoader(MixteraDataset(job), 3, num_workers=2)
        resumed.load_state_dict(json.loads(json.dumps(state)))
        if k % 2:  # resume a resumed loader once more, at an odd offset again
            more = take(resumed, 3)
            again = MixteraDataLoader(MixteraDataset(job), 3, num_workers=2)
            again.load_state_dict(resumed.state_dict())
            rest = more + take(again, total - k - 3)
        else:
            rest = take(resumed, total - k)
        assert same_token_batches(rest, full[k:]), k


def test_token_final_short_sequence_is_padded(mclient, small_bpe):
    job = token_job(mclient, "t-pad", small_bpe, on_exhausted="stop", chunk_size=40, seq_len=64)
    tail = list(JobStream(job, drop_last=False))[-1]
    last = take(MixteraDataLoader(MixteraDataset(job, drop_last=False), 5))[-1]
    n = len(tail.tokens) - 1
    assert 0 < n < 64
    assert torch.equal(last["input_ids"][-1, :n], torch.from_numpy(tail.tokens[:-1]))
    assert torch.equal(last["targets"][-1, n:], torch.full((64 - n,), -100))
    assert torch.equal(last["key_ids"][-1, n:], torch.full((64 - n,), -1))
    hf = take(MixteraDataLoader(MixteraDataset(job, drop_last=False, convention="causal_lm"), 5))[-1]
    assert torch.equal(hf["input_ids"][-1, : n + 1], torch.from_numpy(tail.tokens))
    assert torch.equal(hf["labels"][-1, : n + 1], hf["input_ids"][-1, : n + 1])
    assert torch.equal(hf["labels"][-1, n + 1 :], torch.full((63 - n,), -100))


def test_the_two_conventions_cut_the_same_sequences(mclient, small_bpe):
    """shifted: targets[i] is the token after input_ids[i] and key_ids its key; causal_lm: labels are
    the inputs themselves (the model shifts) and key_ids the key of each token. A batch of either
    says which key to read when code asks for the other convention's."""
    job = token_job(mclient, "t-conv", small_bpe)
    seqs = [s for _, s in zip(range(8), JobStream(job), strict=False)]
    shifted = take(MixteraDataLoader(MixteraDataset(job), 8), 1)[0]
    causal = take(MixteraDataLoader(MixteraDataset(job, convention="causal_lm"), 8), 1)[0]
    tokens = torch.from_numpy(np.stack([s.tokens for s in seqs]))
    keys = torch.from_numpy(np.stack([s.key_ids for s in seqs]))
    assert torch.equal(shifted["input_ids"], tokens[:, :-1]) and torch.equal(
        shifted["targets"], tokens[:, 1:]
    )
    assert torch.equal(shifted["key_ids"], keys[:, 1:])
    assert torch.equal(causal["input_ids"], tokens[:, :-1]) and torch.equal(causal["labels"], tokens[:, :-1])
    assert torch.equal(causal["key_ids"], keys[:, :-1])
    assert set(shifted) == {"input_ids", "targets", "key_ids", "chunk_index"}
    assert set(causal) == {"input_ids", "labels", "key_ids", "chunk_index"}
    with pytest.raises(KeyError, match="'shifted' convention.*batch\\['targets'\\]"):
        shifted["labels"]
    with pytest.raises(KeyError, match="'causal_lm' convention"):
        causal["targets"]
    with pytest.raises(KeyError, match="^'other'$"):
        causal["other"]
    with pytest.raises(MixteraError, match="convention must be one of"):
        MixteraDataset(job, convention="hf")


def test_an_eval_set_is_the_same_sequences_every_time(mclient, small_bpe):
    job = token_job(mclient, "t-eval", small_bpe, num_workers=2, on_exhausted="stop")
    streams = [list(JobStream(job, 0, 0, w)) for w in range(2)]
    interleaved = [s.tokens[:-1].tolist() for pair in zip(*streams, strict=False) for s in pair]
    ds = MixteraEvalDataset(job, 10)
    for workers in (0, 2, 0):  # again, and with DataLoader workers (only worker 0 reads)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=ds_collate)
        got = [row for b in loader for row in b["input_ids"].tolist()]
        assert got == interleaved[:10]
    shards = [
        [it["input_ids"].tolist() for it in MixteraEvalDataset(job, 10, shard=(r, 3))] for r in range(3)
    ]
    assert shards == [interleaved[r:10:3] for r in range(3)]
    everything = [it["input_ids"].tolist() for it in MixteraEvalDataset(job)]
    assert len(everything) == sum(len(s) for s in streams) and everything[:10] == interleaved[:10]
    with pytest.raises(MixteraError, match="fixed one"):
        MixteraEvalDataset(mclient.job(mclient.execute(
            Query.for_job("t-eval-dyn"), DynamicMixture(WEIGHTS, "loss_weighted"),
            tokenizer=("hf", str(small_bpe)), seq_len=32,
        )))  # fmt: skip
    with pytest.raises(MixteraError, match="samples"):
        MixteraEvalDataset(sample_job(mclient, "t-eval-samples"))


def ds_collate(items):
    return MixteraDataset.collate(items)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_worker_count_and_topology_errors(mclient):
    job = sample_job(mclient, "s-err", num_workers=2, dp_groups=2)
    ds = MixteraDataset(job, dp_group=1)
    with pytest.raises(MixteraError, match=r"num_workers=1 .*num_workers=2"):
        MixteraDataLoader(ds, 4, num_workers=1)
    with pytest.raises(MixteraError, match=r"num_workers=0 .*num_workers=2"):
        next(iter(ds))  # in-process: one stream, the job has two
    plain = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=3, collate_fn=ds.collate)
    with pytest.raises(MixteraError, match=r"num_workers=3 .*num_workers=2"):
        next(iter(plain))
    with pytest.raises(MixteraError, match="dp_group 2 is out of range.*dp_groups=2"):
        MixteraDataset(job, dp_group=2)
    with pytest.raises(MixteraError, match="node 1 is out of range"):
        MixteraDataset(job, 0, 1)
    with pytest.raises(MixteraError, match="persistent_workers"):
        MixteraDataLoader(ds, 4, num_workers=2, persistent_workers=True)
    other = MixteraDataset(job, dp_group=0)
    with pytest.raises(MixteraError, match="state is for dp_group 1"):
        other.load_state_dict(MixteraDataLoader(ds, 4, num_workers=2).state_dict())


# ---------------------------------------------------------------------------------------------- distributed


def _distributed_rank(rank: int, jobs: dict, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ds = MixteraDataset(jobs["two"])  # dp_group from the rank
        rows = [list(r) for b in MixteraDataLoader(ds, batch_size=8) for r in sample_rows(b)]
        try:
            MixteraDataset(jobs["one"])
            error = None
        except MixteraError as e:
            error = str(e)
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"dp_group": ds.dp_group, "node": ds.node, "rows": rows, "error": error}, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_torch_distributed_ranks_get_their_dp_group(mclient, tmp_path):
    jobs = {"two": sample_job(mclient, "s-dist", dp_groups=2), "one": sample_job(mclient, "s-dist1")}
    torch.multiprocessing.spawn(
        _distributed_rank, args=(jobs, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    seen = set()
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as fh:
            res = json.load(fh)
        expected = [[s.key, s.key_id, s.data, s.chunk] for s in JobStream(jobs["two"], rank)]
        assert (res["dp_group"], res["node"]) == (rank, 0)
        assert res["rows"] == expected and len(expected) > 500
        assert "world size 2" in res["error"] and "dp_groups=1" in res["error"]
        texts = {r[2] for r in res["rows"]}
        assert not texts & seen
        seen |= texts
