"""Streams: determinism, assignment, fidelity, resume (same and new topology), schedules, feedback."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest
from conftest import write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtera_core import MixteraClient, Query
from mixtera_core.errors import MixteraError
from mixtera_core.job import JobError
from mixtera_core.mixture import DynamicMixture, MixtureError, ScheduleMixture, StaticMixture
from mixtera_core.streaming import reshard

WEIGHTS = {"language=python": 0.5, "language=c": 0.2, "language=en": 0.3}
LENGTHS = {"python": 60, "c": 200, "en": 15}  # words per document: very different token counts


def doc(lang: str, i: int, rng: random.Random) -> dict:
    words = " ".join(
        f"{lang}{rng.randint(0, 50)}" for _ in range(rng.randint(LENGTHS[lang] // 2, LENGTHS[lang]))
    )
    return {
        "text": f"{lang} doc {i}: {words}",
        "meta": {"language": lang, "license": rng.choice(["mit", "psf"])},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for lang, n, shards in (("python", 900, 3), ("c", 400, 2), ("en", 1500, 3)):
        per = n // shards
        for s in range(shards):
            recs = [doc(lang, s * per + i, rng) for i in range(per)]
            write_jsonl(root / f"{lang}-{s}.jsonl.zst", recs, "zst")
    return root


@pytest.fixture
def mclient(corpus, tmp_path):
    c = MixteraClient.local(tmp_path / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def take(stream, n=None):
    out = []
    for item in stream:
        out.append((item.key, item.data))
        if n is not None and len(out) == n:
            break
    return out


def test_two_runs_are_identical_and_seed_matters(mclient):
    a = mclient.execute(Query.for_job("a"), WEIGHTS, chunk_size=50, seed=1, on_exhausted="repeat")
    b = mclient.execute(Query.for_job("b"), WEIGHTS, chunk_size=50, seed=1, on_exhausted="repeat")
    c = mclient.execute(Query.for_job("c"), WEIGHTS, chunk_size=50, seed=2, on_exhausted="repeat")
    ra, rb, rc = take(mclient.stream(a), 600), take(mclient.stream(b), 600), take(mclient.stream(c), 600)
    assert ra == rb and ra != rc
    # a fresh process-like client on the same catalog attaches to the persisted job and streams the same
    other = MixteraClient.local(mclient.catalog.db_dir)
    assert take(other.stream(a), 600) == ra


def test_sample_shares_are_exact(mclient):
    job = mclient.execute(Query.for_job("s"), WEIGHTS, chunk_size=64, seed=0, on_exhausted="repeat")
    counts = collections.Counter(k for k, _ in take(mclient.stream(job), 6400))
    assert counts == {"language=python": 3200, "language=c": 1280, "language=en": 1920}


def test_assignment_groups_nodes_workers(mclient):
    single = mclient.execute(Query.for_job("one"), WEIGHTS, chunk_size=20, seed=3)
    multi = mclient.execute(
        Query.for_job("many"), WEIGHTS, chunk_size=20, seed=3, dp_groups=2, nodes_per_group=2, num_workers=3
    )
    whole = take(mclient.stream(single))
    chunks = [whole[i : i + 20] for i in range(0, len(whole), 20)]
    for g in range(2):
        per_worker = [take(mclient.stream(multi, g, 0, w)) for w in range(3)]
        assert take(mclient.stream(multi, g, 1, 0)) == per_worker[0]  # nodes of a group see the same data
        for w in range(3):
            mine = [chunks[i] for i in range(len(chunks)) if i % 2 == g and (i // 2) % 3 == w]
            assert per_worker[w] == [x for ch in mine for x in ch]


def test_resume_at_random_points_is_identical(mclient):
    job = mclient.execute(
        Query.for_job("r"), WEIGHTS, chunk_size=33, seed=4, on_exhausted="repeat", num_workers=2
    )
    full = take(mclient.stream(job, worker=1), 900)
    rng = random.Random(0)
    for cut in sorted(rng.sample(range(1, 880), 8)):
        s = mclient.stream(job, worker=1, prefetch=3)
        take(s, cut)
        state = s.state_dict()
        resumed = mclient.stream(job, worker=1, state=state)
        assert take(resumed, 900 - cut) == full[cut:], cut


def test_reshard_with_streams_that_never_started(mclient):
    job = mclient.execute(
        Query.for_job("ns"), WEIGHTS, chunk_size=10, dp_groups=3, on_exhausted="redistribute"
    )
    full = collections.Counter(x for g in range(3) for x in take(mclient.stream(job, g)))
    got: collections.Counter = collections.Counter()
    states = []
    for g, n in ((0, 25), (1, 0), (2, 0)):
        s = mclient.stream(job, g)
        if n:
            got.update(take(s, n))
        states.append(s.state_dict())
    for state in reshard(mclient.job(job), states, 2, 1):
        got.update(take(mclient.stream(job, state["dp_group"], state=state)))
    assert got == full


def test_elastic_resume_loses_and_repeats_nothing(mclient):
    job = mclient.execute(Query.for_job("el"), WEIGHTS, chunk_size=37, seed=5, dp_groups=2, num_workers=2)
    full = collections.Counter(
        x for g in range(2) for w in range(2) for x in take(mclient.stream(job, g, 0, w))
    )
    rng = random.Random(3)
    got: collections.Counter = collections.Counter()
    states = []
    for g in range(2):
        for w in range(2):
            s = mclient.stream(job, g, 0, w)
            got.update(take(s, rng.randint(1, 400)))
            states.append(s.state_dict())
    for dp, workers in ((3, 1), (1, 1)):
        new_states = reshard(mclient.job(job), states, dp, workers)
        assert len(new_states) == dp * workers
        if dp == 3:  # consume part, then reshard again to a single stream
            states = []
            for st in new_states:
                s = mclient.stream(job, st["dp_group"], 0, st["worker"], state=st)
                got.update(take(s, rng.randint(1, 200)))
                states.append(s.state_dict())
        else:
            s = mclient.stream(job, 0, 0, 0, state=new_states[0])
            got.update(take(s))
    assert got == full


def test_redistribute_streams_everything_once(mclient):
    job = mclient.execute(Query.for_job("red"), WEIGHTS, chunk_size=40, on_exhausted="redistribute")
    items = take(mclient.stream(job))
    assert collections.Counter(k for k, _ in items) == {
        "language=python": 900,
        "language=c": 400,
        "language=en": 1500,
    }
    assert len(set(items)) == len(items)


def test_schedule_switches_at_the_right_step(mclient):
    sched = ScheduleMixture(
        [
            (0, {"language=python": 1.0, "language=c,en": 0.0}),
            (3, {"language=python": 0.0, "language=c,en": 1.0}),
        ]
    )
    job = mclient.execute(
        Query.for_job("sch"), sched, chunk_size=10, samples_per_step=20, on_exhausted="repeat"
    )
    keys = [k for k, _ in take(mclient.stream(job), 100)]
    assert set(keys[:60]) == {"language=python"} and set(keys[60:]) == {"language=c,en"}
    # without samples_per_step, step reports decide the switch: it lands feedback_delay chunks
    # after the position (the highest chunk consumed) of the step that reached the switch
    job2 = mclient.execute(
        Query.for_job("sch2"), sched, chunk_size=10, on_exhausted="repeat", feedback_delay=2
    )
    keys, step, position = [], 0, -1
    for item in mclient.stream(job2, prefetch=1):
        keys.append(item.key)
        position = max(position, item.chunk)
        if len(keys) % 10 == 0:  # a training step of 10 samples
            step += 1
            mclient.report_step(job2, step, position=position)
        if len(keys) == 120:
            break
    (change,) = mclient.job(job2).changes
    assert change["step"] == 3 and change["chunk"] == change["position"] + 3 == 5
    assert set(keys[:50]) == {"language=python"} and set(keys[50:]) == {"language=c,en"}


def test_dynamic_mixture_feedback_changes_the_log(mclient):
    dyn = DynamicMixture(
        {"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}, "loss_weighted", prior_mix=0.0
    )
    job = mclient.execute(Query.for_job("dyn"), dyn, chunk_size=50, on_exhausted="repeat")
    s = mclient.stream(job, prefetch=1)
    take(s, 50)
    mclient.feedback(job, step=1, losses=[1.0, 30.0, 1.0], counts=[10, 10, 10], position=0)
    mclient.report_step(job, 2, position=1000)  # later steps: no feedback, the mixture stays decided
    j = mclient.job(job)
    assert len(j.log.entries) == 2 and j.changes[-1]["step"] == 1
    later = collections.Counter(k for k, _ in take(s, 1000)[-500:])
    assert later["language=c"] > 350
    ck = mclient.checkpoint(job)
    # the checkpoint keeps only the mixture a stream can still need: here the latest weights
    assert ck["algorithm"]["updates"] == 1 and ck["log"][-1][1] == j.log.last[1].tolist()


def test_checkpoint_restore_in_a_new_catalog_handle(mclient, tmp_path):
    job = mclient.execute(Query.for_job("ck"), WEIGHTS, chunk_size=25, on_exhausted="repeat")
    s = mclient.stream(job)
    head = take(s, 130)
    state, job_state = s.state_dict(), mclient.checkpoint(job)
    full = head + take(s, 200)
    other = MixteraClient.local(mclient.catalog.db_dir)
    other.restore(job, job_state)
    assert take(other.stream(job, state=state), 200) == full[130:]


def test_job_spec_errors(mclient):
    mclient.execute(Query.for_job("dup"), WEIGHTS, chunk_size=10)
    assert mclient.execute(Query.for_job("dup"), WEIGHTS, chunk_size=10) == "dup"
    with pytest.raises(JobError, match="exists with another spec"):
        mclient.execute(Query.for_job("dup"), WEIGHTS, chunk_size=11)
    with pytest.raises(JobError, match="chunk_size must be an integer"):
        mclient.execute(Query.for_job("neg"), WEIGHTS, chunk_size=-5)
    with pytest.raises(JobError, match="on_exhausted"):
        mclient.execute(Query.for_job("x"), WEIGHTS, on_exhausted="loop")
    with pytest.raises(JobError, match="job id"):
        mclient.execute(Query.for_job("../etc"), WEIGHTS)
    with pytest.raises(MixtureError, match="matches no samples"):
        mclient.execute(Query.for_job("y"), {"language=rust": 1.0})
    with pytest.raises(JobError, match="no job 'nope'"):
        mclient.stream("nope")
    with pytest.raises(MixteraError, match="worker 3 is out of range"):
        mclient.stream("dup", worker=3)
    with pytest.raises(JobError, match="token mode needs both"):
        mclient.execute(Query.for_job("z"), WEIGHTS, seq_len=128)


def test_record_output_and_static_mixture_object(mclient):
    job = mclient.execute(Query.for_job("rec"), StaticMixture(WEIGHTS), chunk_size=10)
    item = next(iter(mclient.stream(job, output="record")))
    assert isinstance(item.data, dict) and item.data["meta"]["language"] in ("python", "c", "en")
    assert item.key_id == ["language=python", "language=c", "language=en"].index(item.key)
    assert np.isfinite(item.key_id)


@pytest.fixture(scope="module")
def shared_client(corpus, tmp_path_factory):
    c = MixteraClient.local(tmp_path_factory.mktemp("shared") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


@settings(max_examples=12, deadline=None)
@given(
    topo=st.tuples(st.integers(1, 3), st.integers(1, 2)),
    new=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    cuts=st.lists(st.integers(0, 300), min_size=6, max_size=6),
    chunk_size=st.integers(5, 60),
)
def test_resume_property_no_loss_no_duplicate(shared_client, topo, new, cuts, chunk_size):
    c = shared_client
    job_id = f"h-{topo[0]}-{topo[1]}-{chunk_size}"
    job = c.execute(
        Query.for_job(job_id),
        WEIGHTS,
        chunk_size=chunk_size,
        seed=9,
        dp_groups=topo[0],
        num_workers=topo[1],
        on_exhausted="redistribute",
    )
    full = collections.Counter(
        x for g in range(topo[0]) for w in range(topo[1]) for x in take(c.stream(job, g, 0, w))
    )
    got: collections.Counter = collections.Counter()
    states = []
    for i, (g, w) in enumerate((g, w) for g in range(topo[0]) for w in range(topo[1])):
        s = c.stream(job, g, 0, w)
        if cuts[i]:
            got.update(take(s, cuts[i]))
        states.append(s.state_dict())
    for state in reshard(c.job(job), states, *new):
        got.update(take(c.stream(job, state["dp_group"], 0, state["worker"], state=state)))
    assert got == full


def test_explain_with_mixture_budget_and_warnings(mclient):
    q = Query.for_job("ex")
    ex = mclient.explain(
        q, {"language=python": 0.5, "language=c": 0.5, "language=en": 0.0}, samples=2000, per_step=100
    )
    by = {c.key: c for c in ex.components}
    assert by["language=c"].weight == 0.5 and by["language=c"].epochs == pytest.approx(2000 * 0.5 / 400)
    assert by["language=python"].dry_step == pytest.approx(900 / 50)
    assert by["language=en"].dry_step == float("inf")
    assert any("language=en has weight 0" in w for w in ex.warnings)
    ex2 = mclient.explain(q, {"language=python": 1.0})
    assert any("matches no key: it is left out" in w for w in ex2.warnings)
    text = str(ex)
    assert "epochs" in text and "dry at step" in text and "warning:" in text


def test_report_counts_what_was_delivered_and_persists(mclient, tmp_path):
    job = mclient.execute(Query.for_job("rep"), WEIGHTS, chunk_size=50, on_exhausted="repeat")
    take(mclient.stream(job), 1000)
    rep = mclient.report(job)
    assert rep.delivered == [500, 200, 300] and rep.target == pytest.approx([0.5, 0.2, 0.3])
    assert "language=python" in str(rep)
    mclient.close()
    again = MixteraClient.local(mclient.catalog.db_dir)
    assert again.report(job).delivered == [500, 200, 300]
    pytest.importorskip("matplotlib")
    png = rep.plot(str(tmp_path / "r.png"))
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
