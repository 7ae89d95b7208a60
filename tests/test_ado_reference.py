"""``ado`` against the published method, recomputed independently on a recorded loss trace.

Everything ADO computes is recomputed here from the paper's formulas (Jiang et al. 2024,
arXiv:2410.11820) and the settings of its official code (github.com/yidingjiang/ado,
``src/data_selectors/ado.py``), written from scratch in this file and never by calling
``ado.py``'s internals:

* the fit points (history from ``ignore_steps`` on, means over 10-step bins, Savitzky-Golay
  smoothing) and the fit itself: the official objective (summed Huber loss of the log-space law
  plus the official penalties, among them ``log eps >= 0.5``) minimized by Nelder-Mead from the
  best points of the official 8 x 8 x 8 grid;
* the learning potential, the credit (a moving average of the policy), the preference, the
  policy and its time-average, step by step from the fitted laws;

plus the exact resume from a mid-trace state and the bounded size of the state.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.signal import savgol_filter

from mixtera_plugins.mixing import ado as ado_module
from mixtera_plugins.mixing.ado import ADO, fit_scaling_law

# --------------------------------------------------------------------------- the recorded trace

# the fourth domain's prior weight lies below delta_min, so that both floors are at work
PRIOR = np.array([0.5, 0.3, 0.195, 0.005])
# generating laws L(n) = eps + beta * n^-alpha in the total number of sequences n; the third
# domain's eps (1.4) lies below the official prior eps >= e^0.5 ~ 1.65
LAWS = [(2.2, 60.0, 0.35), (2.9, 25.0, 0.25), (1.4, 150.0, 0.45), (2.6, 40.0, 0.3)]
STEPS = 2001  # steps 0..2000: default warm-up 1000, refits at 1000 and 2000
RESUME_AT = 1500
# the paper's and the official code's settings (ADO's defaults)
GAMMA1, GAMMA2, S, DELTA_MIN, ALPHA_FLOOR = 0.1, 0.1, 0.5, 0.01, 0.05
WARMUP, REFIT, IGNORE, SUBSAMPLE, SAVGOL, ORDER, HUBER = 1000, 1000, 500, 10, 101, 3, 1e-3


def record_trace(steps: int, seed: int = 2024) -> tuple[np.ndarray, np.ndarray]:
    """Per step and domain: sequence counts (8..31) and loss sums (mean loss +-2% noise, times count)."""
    rng = np.random.default_rng(seed)  # Generator.random(): a stable stream of doubles
    counts = 8.0 + np.floor(24.0 * rng.random((steps, len(LAWS))))
    n_total = np.cumsum(counts.sum(axis=1))
    mean = np.stack([eps + beta * n_total ** (-alpha) for eps, beta, alpha in LAWS], axis=1)
    noise = 1.0 + 0.02 * (2.0 * rng.random((steps, len(LAWS))) - 1.0)
    return counts, mean * noise * counts


COUNTS, LOSS_SUMS = record_trace(STEPS)


@pytest.fixture(scope="module")
def run() -> dict:
    """ADO with its defaults over the whole trace: what it returns and reports at every step."""
    algo = ADO(PRIOR.tolist())
    out: dict = {"weights": [], "details": [], "laws": [], "state": None}
    for step in range(STEPS):
        out["weights"].append(algo.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist()))
        out["details"].append(algo.details())
        out["laws"].append(algo.scaling_laws())
        if step == RESUME_AT:
            out["state"] = json.dumps(algo.state_dict())
    out["last_fit"] = algo.last_fit
    return out


# --------------------------------------------------------------------------- independent reference


def reference_points(upto: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per domain the official fit points known after step ``upto``: from step ``IGNORE`` on, the
    count-weighted mean loss and the mean total count of each complete bin of ``SUBSAMPLE`` steps,
    the losses smoothed by a Savitzky-Golay filter of ``SAVGOL`` steps (in bins: odd, <= bins)."""
    bins = (upto + 1 - IGNORE) // SUBSAMPLE

    def per_bin(a: np.ndarray) -> np.ndarray:
        return a[IGNORE : IGNORE + bins * SUBSAMPLE].reshape(bins, SUBSAMPLE, *a.shape[1:]).sum(axis=1)

    n = per_bin(np.cumsum(COUNTS.sum(axis=1))) / SUBSAMPLE
    loss_sums, counts = per_bin(LOSS_SUMS), per_bin(COUNTS)
    points = []
    for d in range(len(LAWS)):
        loss = loss_sums[:, d] / counts[:, d]
        window = min(SAVGOL // SUBSAMPLE, bins)
        window -= 1 - window % 2
        points.append((n, savgol_filter(loss, window, ORDER)))
    return points


def official_objective(theta: np.ndarray, n: np.ndarray, loss: np.ndarray) -> float:
    """Sum of Huber losses of log(beta n^-alpha + eps) against log loss, plus the penalties of the
    official code: alpha > 0.8, alpha < 0.001, log beta > 6.5 and log eps < 0.5 (slope 1)."""
    log_beta, log_eps, alpha = theta
    pred = np.log(np.exp(log_beta) * n ** (-alpha) + np.exp(log_eps))
    r = np.abs(pred - np.log(loss))
    huber = np.where(r <= HUBER, 0.5 * r**2, HUBER * (r - 0.5 * HUBER)).sum()
    penalty = max(alpha - 0.8, 0) + max(0.001 - alpha, 0) + max(log_beta - 6.5, 0) + max(0.5 - log_eps, 0)
    return float(huber + penalty)


def reference_fit(n: np.ndarray, loss: np.ndarray, starts: int = 6) -> tuple[np.ndarray, float]:
    """Minimize the official objective by Nelder-Mead from the best points of the official grid."""
    grid = [
        np.array([b, e, a])
        for b in np.arange(-2.0, 6.0, 1.0)
        for e in np.arange(-2.0, 2.0, 0.5)
        for a in np.arange(0.0, 0.8, 0.1)
    ]
    grid.sort(key=lambda t: official_objective(t, n, loss))
    best = None
    for x0 in grid[:starts]:
        res = minimize(
            official_objective,
            x0,
            args=(n, loss),
            method="Nelder-Mead",
            options={"xatol": 1e-11, "fatol": 1e-16, "maxiter": 20_000, "maxfev": 20_000},
        )
        # restart once where it stopped: Nelder-Mead's simplex may have collapsed early
        res = minimize(
            official_objective,
            res.x,
            args=(n, loss),
            method="Nelder-Mead",
            options={"xatol": 1e-11, "fatol": 1e-16, "maxiter": 20_000, "maxfev": 20_000},
        )
        if best is None or res.fun < best[1]:
            best = (np.asarray(res.x), float(res.fun))
    assert best is not None
    return best


def exact_floor(w: np.ndarray, floor: float) -> np.ndarray:
    """max(floor, c * w) with c such that it sums to 1 (water-filling, smallest entries first)."""
    w = w / w.sum()
    order = np.argsort(w)
    for fixed in range(len(w) + 1):
        rest = w[order[fixed:]]
        c = (1.0 - floor * fixed) / rest.sum()
        if c * rest.min() >= floor:
            out = np.full(len(w), floor)
            out[order[fixed:]] = c * rest
            return out
    raise AssertionError("unreachable for floor * keys <= 1")


# --------------------------------------------------------------------------- (i) the fits


@pytest.fixture(scope="module")
def references(run) -> dict[int, list]:
    out = {}
    for step in (1000, 2000):
        out[step] = [(n, loss, *reference_fit(n, loss)) for n, loss in reference_points(step)]
    return out


def test_refits_happen_at_the_official_steps(run):
    assert all(w is None for w in run["weights"][:WARMUP])
    assert all(w is not None for w in run["weights"][WARMUP:])
    changed = [s for s in range(WARMUP, STEPS) if s == WARMUP or run["laws"][s] != run["laws"][s - 1]]
    assert changed == [1000, 2000] and run["last_fit"] == 2000


@pytest.mark.parametrize("step", [1000, 2000])
def test_fits_reach_the_optimum_of_the_official_objective(run, references, step):
    laws = run["laws"][step]
    for d, (n, loss, ref, ref_obj) in enumerate(references[step]):
        law = laws[d]
        ours = np.array([math.log(law.beta), math.log(law.eps), law.alpha])
        our_obj = official_objective(ours, n, loss)
        # the same optimum: ADO's L-BFGS (official tolerance 1e-5 on the gradient norm) vs
        # Nelder-Mead to the last digits
        assert our_obj <= ref_obj + 2e-9, (d, our_obj, ref_obj)
        assert our_obj >= ref_obj - 1e-13, (d, our_obj, ref_obj)  # else the reference is wrong
        pred = np.exp(ref[0]) * n ** (-ref[2]) + np.exp(ref[1])
        assert np.allclose(law.predict(n), pred, rtol=1e-5, atol=0)
        assert np.allclose(ours, ref, rtol=0, atol=[1e-2, 1e-3, 1e-3])
        if d != 2:  # the fitted curve follows the generating one
            eps, beta, alpha = LAWS[d]
            assert np.allclose(law.predict(n), eps + beta * n ** (-alpha), rtol=5e-3, atol=0)
    # the irreducible-loss prior: the third domain's eps (1.4) is held at e^0.5
    assert laws[2].eps == pytest.approx(math.exp(0.5), rel=1e-9)


def test_a_tight_fit_equals_the_reference_parameters(references):
    """With a tight optimizer tolerance the fit lands on the reference optimum itself: the
    objective, points and grid are the official ones, not merely close. (The third domain's
    optimum sits on two penalty kinks, where L-BFGS stops short of the last digits: the
    comparison above covers it.)"""
    for d, (n, loss, ref, ref_obj) in enumerate(references[2000]):
        law = fit_scaling_law(n, loss, tol=1e-10, max_iter=2000, n_starts=32)
        assert law is not None
        ours = np.array([math.log(law.beta), math.log(law.eps), law.alpha])
        # the objective ADO minimizes is the official one, value for value
        assert law.objective == pytest.approx(official_objective(ours, n, loss), rel=1e-12)
        if d != 2:
            assert official_objective(ours, n, loss) <= ref_obj * (1 + 1e-12)
            assert np.allclose(ours, ref, rtol=0, atol=[1e-6, 1e-7, 1e-7]), (ours, ref)


def test_the_fit_starts_from_every_grid_point_by_default(monkeypatch):
    sizes = []
    real = ado_module._lbfgs

    def spy(fun, x0, *args):
        sizes.append(len(x0))
        return real(fun, x0, *args)

    monkeypatch.setattr(ado_module, "_lbfgs", spy)
    n, loss = reference_points(1000)[0]
    fit_scaling_law(n, loss)
    fit_scaling_law(n, loss, n_starts=16)
    assert sizes == [512, 16]


def test_relaxing_the_eps_prior_is_an_option(references):
    n, loss, _, _ = references[2000][2]
    relaxed = fit_scaling_law(n, loss, log_eps_bounds=(None, None))
    assert relaxed is not None and relaxed.eps == pytest.approx(LAWS[2][0], rel=0.05)


# --------------------------------------------------------------------------- (ii) the policy


def test_potential_credit_preference_and_policy_follow_the_paper(run):
    k = len(PRIOR)
    h, pi, pi_bar = PRIOR.copy(), PRIOR.copy(), PRIOR.copy()
    n_total = 0.0
    checked = 0
    for step in range(STEPS):
        n_total += COUNTS[step].sum()
        h = GAMMA1 * pi + (1 - GAMMA1) * h  # credit: moving average of the policy in force
        if step < WARMUP:
            assert run["weights"][step] is None
            continue
        laws = run["laws"][step]
        eps = np.array([law.eps for law in laws])
        beta = np.array([law.beta for law in laws])
        alpha = np.array([law.alpha for law in laws])
        n = np.full(k, n_total)  # the total data count
        potential = np.maximum(alpha, ALPHA_FLOOR) * (eps + beta * n ** (-alpha) - eps) / n
        preference = exact_floor(PRIOR * h**S * potential, DELTA_MIN)
        pi = exact_floor(GAMMA2 * preference + (1 - GAMMA2) * pi_bar, DELTA_MIN)
        pi_bar = (1 - 1 / (step + 1)) * pi_bar + preference / (step + 1)
        got = run["details"][step]
        for key, want in (
            ("n", n),
            ("potential", potential),
            ("credit", h),
            ("preference", preference),
            ("policy", pi),
            ("policy_average", pi_bar),
        ):
            assert np.allclose(got[key], want, rtol=1e-10, atol=1e-300), (step, key, got[key], want)
        assert np.allclose(run["weights"][step], pi, rtol=1e-10, atol=0)
        checked += 1
    assert checked == STEPS - WARMUP
    final = np.asarray(run["weights"][-1])
    assert np.abs(final - PRIOR).max() > 0.02  # the mixture moved
    assert final[3] == pytest.approx(DELTA_MIN, rel=1e-12)  # the floor holds for a tiny prior


def test_the_potential_floors_alpha_at_0_05():
    """The official code's ``max(alpha, 0.05)`` in the learning potential (the reducible loss
    keeps the fitted alpha), on laws set through the state."""
    algo = ADO(PRIOR.tolist(), warmup=0, refit_every=10**6)
    state = algo.state_dict()
    params = [[2.0, 1.0, 0.01], [3.0, 0.8, 0.3], [1.0, 0.9, 0.0005], [2.5, 1.0, 0.2]]
    state.update(step=10, last_fit=10, params=params, cum=[100.0, 200.0, 300.0, 400.0])
    algo.load_state_dict(state)
    algo.update(11, [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    log_beta, _, alpha = np.array(params).T
    n = 1004.0
    want = np.maximum(alpha, 0.05) * np.exp(log_beta) * n ** (-alpha) / n
    assert np.allclose(algo.details()["potential"], want, rtol=1e-12)


def test_the_official_codes_realized_credit_is_an_option():
    algo = ADO(PRIOR.tolist(), credit="realized", warmup=10**6)
    h = PRIOR.copy()
    for step in range(50):
        algo.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist())
        h = 0.9 * h + 0.1 * COUNTS[step] / COUNTS[step].sum()
    assert np.allclose(algo.state_dict()["h"], h, rtol=1e-12)
    policy = ADO(PRIOR.tolist(), warmup=10**6)
    for step in range(50):
        policy.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist())
    assert np.allclose(policy.state_dict()["h"], PRIOR, rtol=1e-12)  # the policy stayed the prior


def test_per_domain_counts_are_an_option():
    algo = ADO(PRIOR.tolist(), same_step_size=False, warmup=10**6)
    total = ADO(PRIOR.tolist(), warmup=10**6)
    for step in range(20):
        algo.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist())
        total.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist())
    assert np.allclose(algo._n(), COUNTS[:20].sum(axis=0))
    assert np.allclose(total._n(), COUNTS[:20].sum())


# --------------------------------------------------------------------------- (iii) resume


def test_a_state_round_trip_mid_trace_continues_identically(run):
    resumed = ADO(PRIOR.tolist())
    resumed.load_state_dict(json.loads(run["state"]))
    for step in range(RESUME_AT + 1, STEPS):  # a refit after the resume
        got = resumed.update(step, LOSS_SUMS[step].tolist(), COUNTS[step].tolist())
        assert got == run["weights"][step], step


# --------------------------------------------------------------------------- (iv) bounded state


def test_the_state_stays_bounded_however_many_steps_are_fed():
    steps = 100_001
    counts, loss_sums = record_trace(steps, seed=7)
    # bins of single reports, so that the history bins are full (max_points) well before step
    # 1000; every step is reported up to step 1000, then every 10th step (with the sums of its 10
    # steps), which keeps this test quick
    algo = ADO(PRIOR.tolist(), warmup=100, refit_every=10**6, subsample=1)
    reports = [*range(1_001), *range(1_010, steps, 10)]
    sizes = {}
    last = -1
    for step in reports:
        algo.update(
            step, loss_sums[last + 1 : step + 1].sum(0).tolist(), counts[last + 1 : step + 1].sum(0).tolist()
        )
        last = step
        if step in (1_000, 100_000):
            sizes[step] = len(json.dumps(algo.state_dict()))
    assert sizes[100_000] <= 2 * sizes[1_000], sizes
    assert len(algo.state_dict()["bins"]) <= 500 and algo.last_fit == 100
