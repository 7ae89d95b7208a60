"""One mixture truth in every topology a trainer uses.

A dynamic mixture is driven by a trainer-like loop: every step takes one batch per dp group
(from DataLoader worker ``step % W``, as torch's in-order DataLoader does), computes a
"loss" per key from the batch (the favoured key's samples cost 3, the others 1), and sends
the summed feedback with the highest chunk consumed as its position. The favoured key's
share must rise, and the delivered batches must be *identical* whether the streams run
in-process, in DataLoader workers (fork and spawn), in two DDP processes on a local
catalog, or against a server (remote streams and a torch dataset over a remote job).
The corpus mixes formats (jsonl.zst, parquet, jsonl.gz), scripts and document lengths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import hetero_corpus, register_corpus

torch = pytest.importorskip("torch")

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.mixture import DynamicMixture  # noqa: E402
from mixtera_core.torch import MixteraDataLoader, MixteraDataset  # noqa: E402

KEYS = ("lang=c", "lang=python", "lang=uk")
FAVOURED = "lang=uk"
BATCH = 8
STEPS = 24
ROOT = Path(__file__).resolve().parents[1]


def mixture(initial: dict[str, float] | None = None) -> DynamicMixture:
    return DynamicMixture(
        initial or {k: 1 / 3 for k in KEYS},
        "loss_weighted",
        ema=0.0,
        power=4.0,
        prior_mix=0.0,
        min_weight=0.02,
    )


def options(dp_groups: int, num_workers: int) -> dict:
    # one chunk = one rank's batch: a change lands 4 * num_workers steps after its feedback
    return dict(
        chunk_size=BATCH, seed=11, on_exhausted="repeat", dp_groups=dp_groups, num_workers=num_workers
    )


def execute(client, job_id: str, dp_groups: int, num_workers: int) -> str:
    return client.execute(Query.for_job(job_id), mixture(), **options(dp_groups, num_workers))


def step_feedback(job_keys: list[str], batches: list[list[tuple]]) -> tuple[list, list, int]:
    """Loss sums, counts and position of one step over the batches of every dp group."""
    losses, counts, position = np.zeros(len(job_keys)), np.zeros(len(job_keys)), -1
    for rows in batches:
        for key, _, chunk in rows:
            k = job_keys.index(key)
            counts[k] += 1
            losses[k] += 3.0 if key == FAVOURED else 1.0
            position = max(position, int(chunk))
    return losses.tolist(), counts.tolist(), position


def reference(client, job_id: str, dp_groups: int, num_workers: int) -> list[list[list[tuple]]]:
    """In-process: the streams of every (group, worker) in this process, DataLoader order."""
    names = client.job(job_id).key_names
    streams = [
        [iter(client.stream(job_id, g, 0, w, prefetch=2)) for w in range(num_workers)]
        for g in range(dp_groups)
    ]
    out: list[list[list[tuple]]] = [[] for _ in range(dp_groups)]
    for step in range(STEPS):
        batches = []
        for g in range(dp_groups):
            rows = []
            for _ in range(BATCH):
                item = next(streams[g][step % num_workers])
                rows.append((item.key, item.data, item.chunk))
            out[g].append(rows)
            batches.append(rows)
        losses, counts, position = step_feedback(names, batches)
        client.feedback(job_id, step + 1, losses, counts, position=position)
    for group in streams:
        for it in group:
            it.close()
    return out


def loader_run(client, job_id: str, num_workers: int, context: str | None, dataset_job=None) -> list:
    """One dp group through MixteraDataLoader with ``num_workers`` worker processes."""
    dataset = MixteraDataset(dataset_job if dataset_job is not None else client.job(job_id), dp_group=0)
    kwargs = {"multiprocessing_context": context} if context else {}
    loader = MixteraDataLoader(dataset, batch_size=BATCH, num_workers=num_workers, **kwargs)
    return train(client, job_id, loader, 0, STEPS)


def train(client, job_id: str, loader, first: int, last: int) -> list:
    """Steps ``first..last-1`` of the trainer loop over ``loader``: its batches as rows."""
    names = client.job(job_id).key_names
    out = []
    for step, batch in enumerate(loader, start=first):
        rows = list(zip(batch["key"], batch["text"], batch["chunk_index"].tolist(), strict=True))
        out.append(rows)
        losses, counts, position = step_feedback(names, [rows])
        client.feedback(job_id, step + 1, losses, counts, position=position)
        if step + 1 == last:
            break
    return out


def share(batches: list[list[tuple]], key: str) -> float:
    rows = [r for b in batches for r in b]
    return sum(r[0] == key for r in rows) / len(rows)


def assert_shifted(batches: list[list[tuple]]) -> None:
    early, late = share(batches[:3], FAVOURED), share(batches[-8:], FAVOURED)
    assert early < 0.5 and late > 0.8, (early, late)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return hetero_corpus(tmp_path_factory.mktemp("hetero"))


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory):
    c = MixteraClient.local(tmp_path_factory.mktemp("topo") / "db", rank=0)
    register_corpus(c, corpus)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ref_w2(local):
    job = execute(local, "ref-g1w2", 1, 2)
    return reference(local, job, 1, 2)[0]


def test_in_process_feedback_moves_the_data(ref_w2, local):
    assert_shifted(ref_w2)
    history = local.mixture_history("ref-g1w2")
    assert len(history) > 1 and history[0][1][FAVOURED] == pytest.approx(1 / 3)
    assert local.mixture_weights("ref-g1w2")[FAVOURED] > 0.9
    # every change landed exactly feedback_delay chunks after the position its feedback named
    delay = local.job("ref-g1w2").spec.delay
    assert all(c["chunk"] == c["position"] + 1 + delay for c in local.checkpoint("ref-g1w2")["changes"])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_follow_the_mixture(local, ref_w2, context):
    job = execute(local, f"loader-{context}", 1, 2)
    got = loader_run(local, job, 2, context)
    assert_shifted(got)
    assert got == ref_w2


def test_dataloader_resume_after_a_crash_repeats_and_loses_nothing(local, ref_w2):
    """Checkpoint at step 12 (loader state + job state), train on (the log moves past the
    checkpoint), "crash", restore both: the resumed run is the uninterrupted one."""
    job = execute(local, "resume-fork", 1, 2)

    def loader():
        dataset = MixteraDataset(local.job(job))
        return MixteraDataLoader(dataset, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")

    first = loader()
    head = train(local, job, first, 0, 12)
    data_state, job_state = first.state_dict(), local.checkpoint(job)
    lost = train(local, job, first, 12, 18)  # trained on, then lost in the crash
    assert lost == ref_w2[12:18]
    local.restore(job, job_state)
    resumed = loader()
    resumed.load_state_dict(data_state)
    assert head + train(local, job, resumed, 12, STEPS) == ref_w2


def test_token_mode_dataloader_workers_follow_the_mixture(local, small_bpe):
    """Token mode: chunks sized in tokens (one batch each), sequences packed across chunk
    boundaries, shares counted in tokens."""
    kw = dict(
        tokenizer=("hf", str(small_bpe)),
        seq_len=128,
        chunk_tokens=2048,
        seed=2,
        on_exhausted="repeat",
        feedback_delay=12,
    )
    weight = {n: 3.0 if n == FAVOURED else 1.0 for n in KEYS}

    def feedback(job, names, step, key_ids, position):
        counts = np.bincount(np.asarray(key_ids).flatten(), minlength=len(names)).astype(float)
        losses = counts * np.array([weight[n] for n in names])
        local.feedback(job, step + 1, losses.tolist(), counts.tolist(), position=position)
        return float(counts[names.index(FAVOURED)] / counts.sum())

    start = {"lang=c": 0.45, "lang=python": 0.45, "lang=uk": 0.1}
    job = local.execute(Query.for_job("tok-fork"), mixture(start), num_workers=2, **kw)
    names = local.job(job).key_names
    loader = MixteraDataLoader(
        MixteraDataset(local.job(job)), batch_size=8, num_workers=2, multiprocessing_context="fork"
    )
    got, shares = [], []
    for step, batch in enumerate(loader):
        shares.append(feedback(job, names, step, batch["key_ids"].numpy(), int(batch["chunk_index"].max())))
        got.append(batch["input_ids"].tolist())
        if step == 119:
            break
    # documents of up to ~8k tokens make short windows noisy: judge the last 60k tokens, against
    # the same job with the starting weights kept (a static mixture)
    assert np.mean(shares[-60:]) > 0.8, np.round(shares, 2).tolist()
    static = local.execute(Query.for_job("tok-static"), start, num_workers=2, **kw)
    streams = [iter(local.stream(static, 0, 0, w)) for w in range(2)]
    kept = [
        np.mean(
            [
                np.mean(s.key_ids[1:] == names.index(FAVOURED))
                for s in (next(streams[step % 2]) for _ in range(8))
            ]
        )
        for step in range(120)
    ]
    for it in streams:
        it.close()
    assert np.mean(kept[-60:]) < 0.5, np.round(kept, 2).tolist()

    twin_job = local.execute(Query.for_job("tok-twin"), mixture(start), num_workers=2, **kw)
    streams = [iter(local.stream(twin_job, 0, 0, w)) for w in range(2)]
    twin = []
    for step in range(120):
        batch = [next(streams[step % 2]) for _ in range(8)]
        feedback(twin_job, names, step, np.stack([s.key_ids[1:] for s in batch]), max(s.chunk for s in batch))
        twin.append([s.tokens[:-1].tolist() for s in batch])
    for it in streams:
        it.close()
    assert twin == got


def test_a_worker_waits_for_the_mixture_and_then_fails_clearly(local):
    """No feedback at all: the workers stop at the seal instead of guessing the weights."""
    job = execute(local, "no-feedback", 1, 2)
    dataset = MixteraDataset(local.job(job), mixture_timeout=2)
    loader = MixteraDataLoader(dataset, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(Exception, match="mixture of chunk 8 is not decided"):
        for _ in loader:
            pass


# ---------------------------------------------------------------------- 2-process DDP, local catalog

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from test_dynamic_topologies import BATCH, STEPS, execute, step_feedback
    from mixtera_core import MixteraClient
    from mixtera_core.feedback import all_reduce_feedback, all_reduce_position
    from mixtera_core.torch import MixteraDataLoader, MixteraDataset

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    client = MixteraClient.local(sys.argv[1])  # rank 0 owns the catalog; rank 1 follows it
    job = execute(client, "ddp", 2, 2)
    names = client.job(job).key_names
    loader = MixteraDataLoader(
        MixteraDataset(client.job(job)), batch_size=BATCH, num_workers=2, multiprocessing_context="fork"
    )
    out = []
    for step, batch in enumerate(loader):
        rows = list(zip(batch["key"], batch["text"], batch["chunk_index"].tolist()))
        out.append(rows)
        losses, counts, position = step_feedback(names, [rows])
        sums, cnts = all_reduce_feedback(torch.tensor(losses, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64))
        position = all_reduce_position(position)
        if rank == 0:
            client.feedback(job, step + 1, sums.tolist(), cnts.tolist(), position=position)
        if step + 1 == STEPS:
            break
    with open(f"{sys.argv[2]}/rank{rank}.json", "w") as fh:
        json.dump(out, fh)
    client.close()
    dist.destroy_process_group()
    """
)


def test_two_ddp_processes_on_a_local_catalog_see_one_mixture(corpus, local, tmp_path):
    db = tmp_path / "db"
    owner = MixteraClient.local(db, rank=0)
    register_corpus(owner, corpus)
    owner.close()  # the DDP job's rank 0 opens it
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(db),
            str(tmp_path),
            str(ROOT / "tests"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    got = [[[tuple(row) for row in b] for b in rank] for rank in got]
    want = reference(local, execute(local, "ref-g2w2", 2, 2), 2, 2)
    assert got == want
    for rank in got:
        assert_shifted(rank)


# ---------------------------------------------------------------------- a server and remote clients


@pytest.fixture(scope="module")
def server(corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("served") / "db"
    c = MixteraClient.local(db, rank=0)
    register_corpus(c, corpus)
    c.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixtera_core.server",
            str(db),
            "--port",
            "0",
            "--allowed-root",
            str(corpus["root"]),
            "--refit-processes",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, (line, proc.poll())
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_remote_streams_and_a_remote_torch_dataset_follow_the_server(server, ref_w2):
    rc = MixteraClient.remote("127.0.0.1", server)
    try:
        job = execute(rc, "remote-streams", 1, 2)
        got = reference(rc, job, 1, 2)[0]
        assert got == ref_w2
        job = execute(rc, "remote-dataset", 1, 2)
        got = loader_run(rc, job, 2, "fork")
        assert got == ref_w2
        assert rc.mixture_weights(job)[FAVOURED] > 0.9
        assert rc.mixture_history(job) == rc.mixture_history("remote-streams")
    finally:
        rc.close()


def test_other_ranks_never_open_the_catalog_and_say_what_to_do(local, ref_w2, tmp_path):
    db = Path(local.db_dir)
    follower = MixteraClient.local(db, rank=1, job_timeout=1)
    try:
        # rank 0 (this module's client) holds DuckDB's lock: rank 1 still gets the job
        job = execute(follower, "ref-g1w2", 1, 2)
        assert follower.job(job).spec == local.job(job).spec
        assert follower.mixture_history(job) == local.mixture_history(job)
        with pytest.raises(Exception, match="only rank 0 opens the catalog"):
            follower.list_datasets()
        with pytest.raises(Exception, match="runs on rank 0"):
            follower.feedback(job, 1, [1.0] * 3, [1.0] * 3, position=0)
        with pytest.raises(Exception, match="filesystem all nodes share"):
            execute(follower, "never-built", 1, 2)
    finally:
        follower.close()
    with pytest.raises(Exception, match="filesystem all nodes share"):
        execute(MixteraClient.local(tmp_path / "not-shared", rank=3, job_timeout=0.2), "x", 1, 2)


def test_a_long_run_keeps_log_and_checkpoint_small_and_followers_in_step(local, ref_w2):
    """Noisy feedback changes the weights at every step: the client folds away the history no
    stream can need, the checkpoint stays flat, and a follower (another process's copy of the
    job) plans every chunk it can still need with the owner's weights throughout."""
    from mixtera_core.client import COMPACT_ENTRIES
    from mixtera_core.job import Job

    job = execute(local, "long-run", 1, 1)
    owner = local.job(job)
    follower = Job.load(owner.home, owner=False)
    rng = np.random.default_rng(0)
    sizes = {}
    for step in range(1, 1201):
        local.feedback(job, step, (1 + rng.random(3)).tolist(), [1.0, 1.0, 1.0], position=step - 1)
        if step % 50 == 0:
            follower.follower.refresh(follower)
            assert follower.log.sealed == owner.log.sealed
            for chunk in range(owner.history_floor, owner.log.sealed):
                assert follower.log.at(chunk).tolist() == owner.log.at(chunk).tolist()
        if step in (300, 1200):
            sizes[step] = len(json.dumps(local.checkpoint(job)))
    assert len(owner.changes) > 0 and len(owner.log.entries) <= 2 * COMPACT_ENTRIES
    assert sizes[1200] < 2 * sizes[300], sizes
    assert len(Path(owner.home, "job.json").read_bytes()) < 100_000


def test_a_follower_takes_a_restore_that_moves_the_mixture_back(local, ref_w2):
    """A restore rewrites the job directory with an earlier log and a lower seal: followers
    (other ranks, workers) must take it as it is, not keep what they had seen."""
    from mixtera_core.job import Job

    job = execute(local, "restored", 1, 1)
    owner = local.job(job)
    follower = Job.load(owner.home, owner=False)  # loaded before any change: no log.jsonl yet
    for step in range(1, 4):
        local.feedback(job, step, [1.0, 1.0, 3.0], [1.0, 1.0, 1.0], position=step - 1)
    saved = local.checkpoint(job)
    for step in range(4, 9):
        local.feedback(job, step, [3.0, 1.0, 1.0], [1.0, 1.0, 1.0], position=step - 1)
    follower.follower.refresh(follower)
    assert follower.log.sealed == owner.log.sealed == 12
    local.restore(job, saved)
    follower.follower.refresh(follower)
    assert follower.log.sealed == owner.log.sealed == 7
    assert follower.log.to_json() == owner.log.to_json()


def test_a_follower_reads_a_job_directory_written_before_seals(local, ref_w2):
    """Job directories of earlier versions have no seal file and no generations in log.jsonl."""
    from mixtera_core.job import Job
    from mixtera_core.mixture_log import DirectoryFollower

    job = execute(local, "legacy", 1, 1)
    owner = local.job(job)
    for step in range(1, 4):
        local.feedback(job, step, [1.0, 1.0, 3.0], [1.0, 1.0, 1.0], position=step - 1)
    home = Path(owner.home)
    lines = [json.loads(x) for x in (home / "log.jsonl").read_text().splitlines()]
    (home / "log.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in c.items() if k != "generation"}) + "\n" for c in lines)
    )
    (home / "seal").unlink()
    meta = json.loads((home / "job.json").read_text())
    del meta["generation"]
    (home / "job.json").write_text(json.dumps(meta))
    copy = Job.load(str(home), owner=True)
    assert copy.log.to_json() == owner.log.to_json()
    copy.follower = DirectoryFollower(str(home))
    copy.follower.refresh(copy)
    assert copy.log.to_json() == owner.log.to_json() and len(lines) > 0
