"""The dynamic mixing algorithms ``ado`` and ``odm``: fits, dynamics, invariances, state, and
replay / restore through a real job."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl

from mixtera_core import MixteraClient, Query
from mixtera_core.job import JobError
from mixtera_core.mixture import DynamicMixture
from mixtera_core.plugins import PluginManager
from mixtera_plugins.mixing.ado import ADO, fit_scaling_law, floor_weights
from mixtera_plugins.mixing.odm import ODM, exploration_rate

# --------------------------------------------------------------------------- simulation helpers


def power_law(eps: float, beta: float, alpha: float):
    return lambda n: eps + beta * np.maximum(n, 1.0) ** (-alpha)


def simulate(algo, laws, steps, *, per_step=100.0, scale=1.0, noise=0.0, seed=0, check=None):
    """Train a fake model: each step, key k gets ``share_k * per_step`` samples and its mean loss
    follows its own law in its cumulative samples. Returns the weights after every step."""
    rng = np.random.default_rng(seed)
    w = np.asarray(algo.initial_weights, dtype=np.float64)
    w = w / w.sum()
    cum = np.zeros(len(laws))
    history = []
    for step in range(1, steps + 1):
        counts = w * per_step
        cum += counts
        mean = np.array([law(c) for law, c in zip(laws, cum, strict=True)])
        if noise:
            mean = mean * np.exp(noise * rng.standard_normal(len(laws)))
        out = algo.update(step, (mean * counts * scale).tolist(), (counts * scale).tolist())
        if out is not None:
            w = np.asarray(out)
            assert abs(w.sum() - 1) < 1e-9 and np.all(np.isfinite(w)) and np.all(w >= 0)
        if check is not None:
            check(step, out, w)
        history.append(w.copy())
    return np.array(history)


SMALL = {"warmup": 100, "refit_every": 50, "subsample": 2, "savgol_window": 11}


# --------------------------------------------------------------------------- ADO: the fit


@pytest.mark.parametrize(
    "eps,beta,alpha",
    [(1.8, 6.0, 0.4), (2.5, 3.0, 0.25), (0.5, 20.0, 0.6), (3.0, 1.0, 0.1), (1.2, 100.0, 0.75)],
)
def test_fit_recovers_noiseless_power_laws(eps, beta, alpha):
    n = np.geomspace(5, 20000, 200)
    # without the default prior eps >= e^0.5 (the official one, for LM cross-entropy in nats)
    law = fit_scaling_law(n, eps + beta * n ** (-alpha), log_eps_bounds=(None, None))
    assert law is not None
    assert law.eps == pytest.approx(eps, rel=0.01)
    assert law.beta == pytest.approx(beta, rel=0.01)
    assert law.alpha == pytest.approx(alpha, rel=0.01)
    assert np.allclose(law.predict(n), eps + beta * n ** (-alpha), rtol=1e-4)


def test_fit_stays_inside_the_bounds_and_needs_points():
    n = np.geomspace(1, 1000, 50)
    law = fit_scaling_law(n, 1.0 + 5.0 * n**-1.5, alpha_bounds=(0.0, 0.8), log_beta_bounds=(-10.0, 6.5))
    assert law is not None and 0.0 <= law.alpha <= 0.8 + 1e-12 and law.beta <= math.exp(6.5) * (1 + 1e-9)
    assert fit_scaling_law([1, 2, 3], [3.0, 2.0, 1.5]) is None  # fewer than 4 points
    assert fit_scaling_law([0, -1, 2, 3], [1.0, 1.0, 1.0, 1.0]) is None  # n <= 0 is ignored


def test_floor_weights_is_an_exact_floor():
    w = floor_weights(np.array([0.97, 0.02, 0.01, 0.0]), 0.05, np.array([True, True, True, False]))
    assert w[3] == 0 and w.sum() == pytest.approx(1) and w.min(where=w > 0, initial=1) >= 0.05 - 1e-15
    assert w[1] == pytest.approx(0.05) and w[2] == pytest.approx(0.05)


# --------------------------------------------------------------------------- ADO: dynamics


def test_ado_improving_domain_gains_flat_domain_keeps_the_floor():
    steep, flat = power_law(1.8, 8.0, 0.5), power_law(2.0, 0.05, 0.1)  # eps >= e^0.5: the default prior
    algo = ADO([0.5, 0.5], **SMALL)
    seen = []

    def check(step, out, w):
        if step < SMALL["warmup"]:
            assert out is None
        seen.append(w)

    hist = simulate(algo, [steep, flat], 600, check=check)
    assert np.all(hist[: SMALL["warmup"] - 1] == 0.5)  # before warm-up: the initial mixture
    after = hist[SMALL["warmup"] :]
    assert after[:, 0].max() > 0.55 and after[-1, 0] > 0.5  # the improving domain rises above its prior
    assert after[:, 1].min() >= algo.delta_min - 1e-12  # the flat one never drops below delta_min
    laws = algo.scaling_laws()
    assert laws[0] is not None and laws[0].alpha == pytest.approx(0.5, rel=0.02)


def test_ado_floor_holds_even_for_a_tiny_prior():
    algo = ADO([0.995, 0.005], delta_min=0.05, **SMALL)
    hist = simulate(algo, [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.01, 0.05)], 300)
    assert hist[SMALL["warmup"] :, 1].min() >= 0.05 - 1e-12


@pytest.mark.parametrize("noise,seed", [(0.0, 0), (0.002, 1), (0.002, 2), (0.002, 3)])
def test_ado_identical_laws_stay_near_uniform(noise, seed):
    # 0.2% noise on a domain's mean loss per step: what a batch of ~10^5 tokens per domain gives
    law = power_law(2.0, 5.0, 0.3)
    algo = ADO([1 / 3] * 3, **SMALL)
    hist = simulate(algo, [law, law, law], 500, noise=noise, seed=seed)
    assert np.abs(hist - 1 / 3).max() < 0.05


def test_ado_unit_invariance():
    laws = [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2), power_law(2.5, 3.0, 0.3)]
    prior = [0.2, 0.3, 0.5]
    base = simulate(ADO(prior, **SMALL), laws, 300)
    # counts (and the loss sums over them) in tokens, 1024 per sequence: exactly the same mixture
    tokens = simulate(ADO(prior, count_normalizer=1024, **SMALL), laws, 300, scale=1024.0)
    assert np.array_equal(base, tokens)
    # a scale that is not a power of two: equal up to rounding. The optimizer's path differs in
    # the last digits, which moves the fitted laws slightly at every refit; over 300 steps the
    # weights drift apart by ~1.2e-4 (scipy 1.17), against a movement of ~0.3: the bound is
    # half a percent of how far the weights moved
    other = simulate(ADO(prior, count_normalizer=1000, **SMALL), laws, 300, scale=1000.0)
    moved = np.abs(base - base[0]).max()
    assert moved > 0.2
    assert np.abs(base - other).max() < 0.005 * moved


def test_ado_state_round_trip_continues_identically():
    laws = [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2), power_law(2.5, 3.0, 0.3)]
    options = {**SMALL, "max_points": 16}  # also exercises the merging of history bins
    a = ADO([0.2, 0.3, 0.5], **options)
    simulate(a, laws, 150)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able, floats round-trip exactly
    b = ADO([0.2, 0.3, 0.5], **options)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    rng = np.random.default_rng(5)
    outs_a, outs_b = [], []
    for step in range(151, 351):
        counts = rng.uniform(0, 40, 3)
        losses = (2 + rng.uniform(0, 1, 3)) * counts
        outs_a.append(a.update(step, losses.tolist(), counts.tolist()))
        outs_b.append(b.update(step, losses.tolist(), counts.tolist()))
    assert outs_a == outs_b and all(o is not None for o in outs_a)
    assert a.state_dict() == b.state_dict()
    assert a.bin_width > options["subsample"]  # bins were merged: the state stays bounded
    assert len(a.state_dict()["bins"]) <= options["max_points"]


def test_ado_refits_in_a_process_pool_give_the_same_mixture():
    """The server runs refits in a spawned process (MixingAlgorithm.executor) so that they never
    hold its GIL; the mixture must not depend on where the fit ran."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    laws = [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2), power_law(2.5, 3.0, 0.3)]
    inline = simulate(ADO([0.2, 0.3, 0.5], **SMALL), laws, 250)
    algo = ADO([0.2, 0.3, 0.5], **SMALL)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        algo.executor = pool
        pooled = simulate(algo, laws, 250)
    assert np.array_equal(inline, pooled)
    assert algo.last_fit is not None and np.abs(pooled[-1] - pooled[0]).max() > 0.01  # it refitted


def test_ado_state_is_bounded_and_updates_are_cheap_between_fits():
    algo = ADO([0.5, 0.5], warmup=10, refit_every=10_000, subsample=1, max_points=64)
    simulate(algo, [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2)], 2000)
    assert len(algo.state_dict()["bins"]) <= 64 and algo.last_fit == 10


def test_ado_weights_sum_to_one_under_noise_and_missing_domains():
    algo = ADO([0.1, 0.2, 0.3, 0.4], **SMALL)
    rng = np.random.default_rng(2)
    for step in range(1, 400):
        counts = rng.integers(0, 30, 4).astype(float)
        counts[rng.integers(0, 4)] = 0.0  # some key is missing from every step
        losses = rng.uniform(1, 5, 4) * counts
        out = algo.update(step, losses.tolist(), counts.tolist())
        if step < SMALL["warmup"]:
            assert out is None
        else:
            assert out is not None and abs(sum(out) - 1) < 1e-9 and min(out) >= 0.01 - 1e-12
            assert all(math.isfinite(x) for x in out)


def test_ado_zero_prior_key_stays_off():
    algo = ADO([0.5, 0.5, 0.0], **SMALL)
    hist = simulate(algo, [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2), power_law(3, 9, 0.6)], 200)
    assert np.all(hist[:, 2] == 0)


def test_ado_same_step_size_uses_the_total_count():
    algo = ADO([0.5, 0.5], same_step_size=True, **SMALL)
    simulate(algo, [power_law(1.5, 8.0, 0.5), power_law(2.0, 0.5, 0.2)], 150)
    n = algo._n()
    assert n[0] == n[1] == pytest.approx(150 * 100)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"warm_up": 5}, "unknown option"),
        ({"gamma1": 0}, "gamma1"),
        ({"gamma2": 1.5}, "gamma2"),
        ({"delta_min": 0.6}, "delta_min"),
        ({"refit_every": 0}, "refit_every"),
        ({"warmup": 2.5}, "warmup must be an integer"),
        ({"alpha_bounds": (0.8, 0.1)}, "low < high"),
        ({"alpha_bounds": 3}, "pair"),
        ({"count_normalizer": 0}, "count_normalizer"),
        ({"s": "half"}, "must be a number"),
        ({"same_step_size": 1}, "same_step_size"),
    ],
)
def test_ado_option_errors(options, match):
    with pytest.raises(ValueError, match=match):
        ADO([0.5, 0.5], **options)


def test_ado_input_errors():
    algo = ADO([0.5, 0.5])
    with pytest.raises(ValueError, match="expected 2 losses"):
        algo.update(1, [1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        algo.update(1, [float("nan"), 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="step"):
        algo.update(-1, [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="initial weights"):
        ADO([0.0, 0.0])
    with pytest.raises(ValueError, match="another number of keys"):
        algo.load_state_dict(ADO([0.3, 0.3, 0.4]).state_dict())


# --------------------------------------------------------------------------- ODM


def test_odm_exploration_rate_and_policy_formula():
    assert exploration_rate(3, 1) == pytest.approx(1 / 3)
    assert exploration_rate(3, 100) == pytest.approx(math.sqrt(math.log(3) / 300))
    assert exploration_rate(22, 10_000) == pytest.approx(math.sqrt(math.log(22) / 220_000))
    algo = ODM([0.2, 0.3, 0.5])
    rng = np.random.default_rng(0)
    for t in range(1, 60):
        before = np.array(algo.pi)
        counts = rng.uniform(1, 20, 3)
        losses = rng.uniform(1, 4, 3) * counts
        r = 0.9 * algo.R + 0.1 * (losses / counts) * (counts / counts.sum()) / before
        prev = algo.eps
        out = np.array(algo.update(t, losses.tolist(), counts.tolist()))
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * t)))
        assert algo.eps == pytest.approx(eps) and algo.prev_eps == prev
        soft = np.exp(prev * r) / np.exp(prev * r).sum()
        assert np.allclose(out, (1 - 3 * eps) * soft + eps)
        assert np.allclose(algo.R, r)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"estimator": "cumulative", "reward_scale": 0.1},
        {"reward": "exp_loss", "importance_weighting": False, "policy": "proportional"},
    ],
)
def test_odm_higher_loss_gets_more_weight_and_weights_sum_to_one(options):
    algo = ODM([1 / 3] * 3, **options)
    rng = np.random.default_rng(3)
    w = np.full(3, 1 / 3)
    for step in range(1, 501):
        counts = rng.multinomial(60, w).astype(float)
        mean = np.array([3.0, 2.0, 2.0]) + 0.05 * rng.standard_normal(3)
        out = algo.update(step, (mean * counts).tolist(), counts.tolist())
        assert out is not None
        w = np.array(out)
        assert abs(w.sum() - 1) < 1e-12 and np.all(w >= algo.eps - 1e-12) and np.all(np.isfinite(w))
    assert w[0] > w[1] and w[0] > w[2]


def test_odm_cumulative_estimator_concentrates_on_the_high_loss_domain():
    algo = ODM([0.5, 0.5], estimator="cumulative")
    for step in range(1, 301):
        counts = 60 * algo.pi  # the batch follows the policy
        algo.update(step, (np.array([3.0, 2.0]) * counts).tolist(), counts.tolist())
    assert algo.pi[0] > 0.9 and algo.pi[1] >= algo.eps - 1e-12


def test_odm_warmup_update_every_and_state_round_trip():
    algo = ODM([0.5, 0.25, 0.25], warmup=10, update_every=3)
    outs = [algo.update(s, [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]) for s in range(1, 20)]
    assert all(o is None for o in outs[:9])
    assert [o is not None for o in outs[9:]] == [(t % 3 == 0) for t in range(10, 20)]
    twin = ODM([0.5, 0.25, 0.25], warmup=10, update_every=3)
    twin.load_state_dict(json.loads(json.dumps(algo.state_dict())))
    rng = np.random.default_rng(4)
    for step in range(20, 220):
        counts = rng.uniform(0, 10, 3)
        losses = rng.uniform(1, 3, 3) * counts
        assert algo.update(step, losses.tolist(), counts.tolist()) == twin.update(
            step, losses.tolist(), counts.tolist()
        )
    assert algo.state_dict() == twin.state_dict()


def test_odm_edge_cases_and_errors():
    algo = ODM([0.5, 0.5, 0.0])
    assert algo.update(1, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) is None and algo.t == 0  # nothing observed
    out = algo.update(2, [3.0, 0.0, 5.0], [1.0, 0.0, 1.0])
    assert out is not None and out[2] == 0 and sum(out) == pytest.approx(1)
    assert ODM([1.0, 0.0]).update(1, [1.0, 1.0], [1.0, 1.0]) == [1.0, 0.0]
    for options, match in (
        ({"smoothing": 1.0}, "smoothing"),
        ({"estimator": "sum"}, "estimator"),
        ({"policy": "greedy"}, "policy"),
        ({"reward_scale": 0}, "reward_scale"),
        ({"warmup": -1}, "warmup"),
        ({"explore": 1}, "unknown option"),
    ):
        with pytest.raises(ValueError, match=match):
            ODM([0.5, 0.5], **options)
    with pytest.raises(ValueError, match="expected 2 losses"):
        ODM([0.5, 0.5]).update(1, [1.0, 2.0, 3.0], [1.0, 1.0])


def test_both_are_registered_plugins():
    pm = PluginManager(load_entrypoints=False)
    assert pm.mixing_algorithm("ado") is ADO and pm.mixing_algorithm("odm") is ODM
    assert pm.mixing_algorithm("loss_weighted").name == "loss_weighted"


# --------------------------------------------------------------------------- through a real job

KEYS = ["language=python", "language=c", "language=en"]
WEIGHTS = {"language=python": 0.4, "language=c": 0.3, "language=en": 0.3}
CHUNK = 20
ALGOS = {
    "ado": {"warmup": 6, "refit_every": 5, "subsample": 1, "ignore_steps": 0, "savgol_window": 0},
    "odm": {"estimator": "cumulative", "reward_scale": 0.5},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixcorpus")
    rng = random.Random(0)
    for lang, n in (("python", 300), ("c", 200), ("en", 300)):
        recs = [
            {
                "text": f"{lang} {i} " + " ".join(str(rng.randint(0, 99)) for _ in range(8)),
                "meta": {"language": lang},
            }
            for i in range(n)
        ]
        write_jsonl(root / f"{lang}.jsonl", recs)
    return root


@pytest.fixture
def mclient(corpus, tmp_path):
    c = MixteraClient.local(tmp_path / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language"})
    yield c
    c.close()


def take(stream, n):
    out = []
    for item in stream:
        out.append((item.key, item.data))
        if len(out) == n:
            break
    return out


def recorded_feedback(steps):
    """A fixed synthetic feedback sequence: python keeps improving, c is flat, en is in between."""
    laws = [power_law(1.5, 8.0, 0.6), power_law(2.5, 0.05, 0.1), power_law(2.0, 2.0, 0.3)]
    cum = np.zeros(3)
    out = []
    for step in range(1, steps + 1):
        counts = np.array([8.0, 6.0, 6.0]) + (step % 3)
        cum += counts
        mean = np.array([law(c) for law, c in zip(laws, cum, strict=True)])
        out.append(((mean * counts).tolist(), counts.tolist()))
    return out


def feed(client, job, stream, feedback, steps):
    """One training step = one chunk consumed, then that step's feedback, which names the
    highest chunk consumed as its position: the change lands at a chunk derived from the data
    (position + 1 + feedback_delay), not at however far the prefetch thread has got."""
    items = []
    for i in steps:
        position = -1
        for item in stream:
            items.append((item.key, item.data))
            position = max(position, item.chunk)
            if len(items) % CHUNK == 0:
                break
        losses, counts = feedback[i]
        client.feedback(job, step=i + 1, losses=losses, counts=counts, position=position)
    return items


@pytest.mark.parametrize("algorithm", ["ado", "odm"])
def test_feedback_replay_is_deterministic(mclient, algorithm):
    feedback = recorded_feedback(24)
    runs = []
    for job_id in ("replay-a", "replay-b"):
        mixture = DynamicMixture(WEIGHTS, algorithm, **ALGOS[algorithm])
        job = mclient.execute(Query.for_job(job_id), mixture, chunk_size=CHUNK, seed=7, on_exhausted="repeat")
        stream = mclient.stream(job, prefetch=3)
        fed = feed(mclient, job, stream, feedback, range(24))
        mclient.report_step(job, 25, position=30)  # training goes on without feedback
        runs.append(fed + take(stream, 5 * CHUNK))
    assert runs[0] == runs[1]
    log_a, log_b = (mclient.job(j).log.to_json() for j in ("replay-a", "replay-b"))
    assert log_a == log_b and len(log_a) > 2  # the mixture did move, identically
    assert log_a[-1][1] != log_a[0][1]
    delay = mclient.job("replay-a").spec.delay
    for change in mclient.checkpoint("replay-a")["changes"]:
        assert change["chunk"] == change["position"] + 1 + delay and "late" not in change


@pytest.mark.parametrize("algorithm", ["ado", "odm"])
def test_checkpoint_restore_mid_run_continues_identically(mclient, algorithm):
    feedback = recorded_feedback(24)
    mixture = DynamicMixture(WEIGHTS, algorithm, **ALGOS[algorithm])
    job = mclient.execute(
        Query.for_job(f"ck-{algorithm}"), mixture, chunk_size=CHUNK, seed=3, on_exhausted="repeat"
    )
    stream = mclient.stream(job, prefetch=1)
    feed(mclient, job, stream, feedback, range(10))
    stream_state, job_state = stream.state_dict(), mclient.checkpoint(job)
    json.dumps(job_state)  # the whole job state, algorithm included, is JSON
    rest = feed(mclient, job, stream, feedback, range(10, 24))
    mclient.report_step(job, 25, position=30)  # training goes on without feedback
    rest += take(stream, 5 * CHUNK)
    final = mclient.checkpoint(job)

    other = MixteraClient.local(mclient.catalog.db_dir)
    try:
        other.restore(job, job_state)
        resumed = other.stream(job, state=stream_state, prefetch=1)
        again = feed(other, job, resumed, feedback, range(10, 24))
        other.report_step(job, 25, position=30)
        again += take(resumed, 5 * CHUNK)
        assert again == rest
        assert other.checkpoint(job)["algorithm"] == final["algorithm"]
        assert other.checkpoint(job)["log"] == final["log"]
    finally:
        other.close()


def test_streams_never_plan_past_the_decided_mixture(mclient):
    """With feedback_delay=1 a change lands right after the chunk after the consumed position,
    so a stream with read-ahead must wait for each step's feedback to plan one chunk further."""
    mixture = DynamicMixture(WEIGHTS, "ado", **ALGOS["ado"])
    job = mclient.execute(
        Query.for_job("sealed"), mixture, chunk_size=CHUNK, seed=1, on_exhausted="repeat", feedback_delay=1
    )
    stream = mclient.stream(job, prefetch=3)
    feedback = recorded_feedback(12)
    feed(mclient, job, stream, feedback, range(12))  # positions 0..11
    changes = mclient.checkpoint(job)["changes"]
    assert changes and all(c["chunk"] == c["position"] + 2 for c in changes)
    assert mclient.job(job).log.sealed == 13 and stream.planned_up_to <= 13
    # a position below the highest one so far: the change lands where the mixture is undecided
    mclient.feedback(job, step=13, losses=feedback[0][0], counts=feedback[0][1], position=3)
    assert mclient.job(job).log.sealed == 13
    assert all(c["chunk"] >= 13 for c in mclient.checkpoint(job)["changes"][len(changes) :])
    with pytest.raises(JobError, match="feedback_delay must be an integer >= 1"):
        mclient.execute(Query.for_job("no-delay"), mixture, chunk_size=CHUNK, feedback_delay=0)
    with pytest.raises(JobError, match="position must be"):
        mclient.feedback(job, step=14, losses=feedback[0][0], counts=feedback[0][1], position=-5)


def test_changes_are_appended_to_the_log_file_and_reloaded(mclient):
    mixture = DynamicMixture(WEIGHTS, "ado", **ALGOS["ado"])
    job = mclient.execute(Query.for_job("appended"), mixture, chunk_size=CHUNK, seed=2, on_exhausted="repeat")
    stream = mclient.stream(job)
    feed(mclient, job, stream, recorded_feedback(16), range(16))
    state = mclient.checkpoint(job)
    directory = Path(mclient.catalog.db_dir) / "jobs" / job
    lines = (directory / "log.jsonl").read_text().splitlines()
    # one line per change, job.json is not rewritten (the checkpoint leaves out old history)
    assert len(lines) == len(mclient.job(job).changes) > 2
    other = MixteraClient.local(mclient.catalog.db_dir)
    try:
        again = other.checkpoint(job)
        assert again["log"] == state["log"] and again["changes"] == state["changes"]
        assert again["algorithm"] == state["algorithm"]
    finally:
        other.close()
