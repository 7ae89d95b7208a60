"""``ado``: Adaptive Data Optimization (Jiang et al., 2024, arXiv:2410.11820).

ADO fits, per mixture key (domain) ``k``, a scaling law of the training loss in the amount of
that domain's data seen so far,

    L_k(n) = eps_k + beta_k * n ** (-alpha_k),

and gives more data to domains whose loss is still falling fast. Every feedback call, with
``n_k`` the domain's cumulative count divided by ``count_normalizer``:

1. *learning potential* ``g_k = alpha_k * (L_k(n_k) - eps_k) / n_k`` (minus the slope of the
   fitted law at ``n_k``);
2. *credit* ``h_k``: an exponential moving average (factor ``gamma1``) of the realized share of
   the domain in each step (its count over the step's total count);
3. *preference* ``rho_k`` proportional to ``mu_k * h_k ** s * g_k`` (``mu``: the prior, i.e. the
   initial weights), floored at ``delta_min`` and renormalized;
4. *policy* ``pi = gamma2 * rho + (1 - gamma2) * pi_bar``, where ``pi_bar`` is the running
   time-average of the past preferences, started at the prior (see below).

Until ``warmup`` the mixture is the initial one (``update`` returns None). The laws are fitted
at the first step at or after ``warmup`` and again every ``refit_every`` steps; between fits
``update`` is O(number of keys).

Options (all optional): ``gamma1=0.1``, ``gamma2=0.1``, ``s=0.5``, ``delta_min=0.01``,
``warmup=1000``, ``refit_every=1000``, ``subsample=10``, ``ignore_steps`` (default
``warmup // 2``), ``savgol_window=101`` (steps; 0 turns smoothing off), ``savgol_polyorder=3``,
``huber_delta=1e-3``, ``alpha_bounds=(0, 0.8)``, ``log_beta_bounds=(-10, 6.5)``,
``log_eps_bounds=(-5, 5)``, ``alpha_floor=0.05``, ``n_starts=4``, ``max_points=500``,
``count_normalizer=1``, ``same_step_size=False``.

What we took from the official code and where we deviate
--------------------------------------------------------
References: the paper (arXiv:2410.11820) and its official implementation,
``github.com/yidingjiang/ado``, ``src/data_selectors/ado.py`` (``AdoSelector``) with the
loader config ``configs/loader/pile_ado.yaml``.

* **Defaults.** ``gamma1 = gamma2 = 0.1``, ``s = 0.5``, ``delta_min = 0.01``, refit every 1000
  steps, subsample every 10th step, Savitzky-Golay window 101 / polynomial order 3, Huber
  delta 1e-3, ``max(alpha, 0.05)`` in the learning potential: all as in the official code.
* **Fit.** As in the official code the law is fitted in log space:
  ``log L = logsumexp(log beta - alpha log n, log eps)`` against ``log loss`` with a Huber loss
  (delta 1e-3). The official code runs L-BFGS (jaxopt, 200 iterations) from *every* point of
  an 8 x 8 x 8 grid (``log beta`` in -2..5, ``log eps`` in -2..1.5, ``alpha`` in 0..0.7) and keeps
  the best. We evaluate the (vectorized) objective on the same grid, then run SciPy's L-BFGS-B
  with the analytic gradient only from the ``n_starts`` best grid points: far cheaper, and on
  clean power laws it finds the same optimum. The official code sums the Huber loss over the
  points; we minimize the mean divided by delta (same minimizer, gradients scaled for the
  optimizer's tolerances).
* **Bounds.** The official code adds penalty terms for ``alpha > 0.8``, ``alpha < 0``,
  ``log beta > 6.5`` and ``log eps < 0.5`` (i.e. ``eps >= 1.65``, a prior that suits language-model
  cross-entropy in nats). We use hard L-BFGS-B box bounds instead: ``alpha`` in [0, 0.8] and
  ``log beta <= 6.5`` as there, a lower bound of -10 on ``log beta``, and ``log eps`` in [-5, 5] by
  default, because Mixtera's losses need not be LM cross-entropies; pass
  ``log_eps_bounds=(0.5, 5)`` to reproduce the official prior.
* **What n is.** The paper defines ``n`` as the amount of data of the domain seen so far; we use
  the cumulative count per domain (samples or tokens, whatever the trainer reports), divided by
  ``count_normalizer``. The official code counts sequences (of 1024 tokens) and, by default
  (``use_same_step_size=True``), advances every domain's ``n`` by the *total* batch size each
  step, i.e. ``n`` is the total amount of data for every domain. ``same_step_size=True``
  reproduces that; the default follows the paper. Set ``count_normalizer`` to the tokens per
  sequence when reporting tokens, so that the bounds and the grid mean what they mean in the
  official code (which counts sequences): counts scaled by ``c`` with ``count_normalizer=c`` give
  exactly the same mixture.
* **Which losses are fitted.** The official code stores every step, smooths the per-step mean
  loss with a Savitzky-Golay filter, drops the first ``ignore_steps`` (1000) steps and keeps every
  10th. We never store per-step history: steps from ``ignore_steps`` on are averaged into bins of
  ``subsample`` steps (loss sum / count per domain, mean ``n``), the Savitzky-Golay filter runs on
  the bin means with its window converted from steps to bins, and when more than ``max_points``
  bins exist, neighbouring bins are merged pairwise (the bin width doubles). The algorithm state
  thus stays bounded (O(max_points x keys)) however long training runs, as Mixtera's job state
  must. A domain absent from a bin takes the previous bin's loss (the official code imputes the
  previous step's loss in the same way).
* **Warm-up.** The official config sets both the ignored prefix and the start step to 1000,
  which leaves its first fit (at step 1000) with a single point. We ignore ``warmup // 2`` steps
  by default, so the first fit at ``warmup`` sees half of the warm-up. A fit needs at least 4
  points per domain; until a domain has them it counts as unfitted, and until some domain is
  fitted the mixture stays the initial one.
* **Prior.** The official prior ``mu`` is the natural (token-count) or the uniform distribution;
  ours is the job's initial mixture.
* **Credit.** The paper, as we read it, writes ``lambda_k = h_k ** s`` with ``h`` a moving average
  of the policy; the official code averages the *realized* per-step shares (``p_history``, factor
  0.9 = 1 - gamma1) and uses ``(h (1 - h)) ** 0.5``. We average the realized shares (from the reported counts) as
  the official code does and use ``h ** s`` as the paper does. When one feedback call covers
  several steps (step jumps by ``d``), the factor becomes ``1 - (1 - gamma1) ** d``.
* **pi_bar.** The paper, as we read it, describes ``pi_bar`` as an average of past policies. The
  official code (``p_avg``) averages the floored preference ``rho`` with weight ``1 / (t + 1)`` at
  step ``t``, starting from the prior, so the prior keeps the weight of the steps before the first update;
  we do exactly that, with weight ``d / (t + 1)`` when the step jumps by ``d``.
* **Floor.** The official ``clip_min_probability`` clips ``rho`` at ``delta_min`` and renormalizes,
  which leaves clipped entries slightly *below* ``delta_min``. We project exactly (clipped entries
  are ``delta_min``, the others are scaled to fill the rest), for ``rho`` and again for ``pi`` (so the
  guarantee also holds for priors below ``delta_min``). Keys with initial weight 0 stay at 0:
  the prior says not to train on them (the official code floors every domain).
* **Unfitted domains.** A domain without a fit (too little data, or never seen) gets the largest
  learning potential of the fitted ones, so that it is explored rather than starved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.signal import savgol_filter

from mixtera_core.interfaces import MixingAlgorithm

# Initial grid of the official implementation: log beta in -2..5, log eps in -2..1.5, alpha in 0..0.7.
_GRID_LOG_BETA = np.arange(-2.0, 6.0, 1.0)
_GRID_LOG_EPS = np.arange(-2.0, 2.0, 0.5)
_GRID_ALPHA = np.arange(0.0, 0.8, 0.1)
_MIN_FIT_POINTS = 4

_DEFAULTS: dict[str, Any] = {
    "gamma1": 0.1,
    "gamma2": 0.1,
    "s": 0.5,
    "delta_min": 0.01,
    "warmup": 1000,
    "refit_every": 1000,
    "subsample": 10,
    "ignore_steps": None,
    "savgol_window": 101,
    "savgol_polyorder": 3,
    "huber_delta": 1e-3,
    "alpha_bounds": (0.0, 0.8),
    "log_beta_bounds": (-10.0, 6.5),
    "log_eps_bounds": (-5.0, 5.0),
    "alpha_floor": 0.05,
    "n_starts": 4,
    "max_points": 500,
    "count_normalizer": 1.0,
    "same_step_size": False,
}


# --------------------------------------------------------------------------- the scaling-law fit


class ScalingLaw(NamedTuple):
    """A fitted ``L(n) = eps + beta * n ** (-alpha)``; ``objective`` is the fit's Huber loss."""

    eps: float
    beta: float
    alpha: float
    objective: float

    def predict(self, n: Any) -> Any:
        return self.eps + self.beta * np.asarray(n, dtype=np.float64) ** (-self.alpha)


def _huber_objective(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Mean Huber loss / delta of ``logsumexp(a - alpha x, e) - y`` and its gradient in (a, e, alpha)."""
    a, e, alpha = float(theta[0]), float(theta[1]), float(theta[2])
    u = a - alpha * x
    pred = np.logaddexp(u, e)
    r = pred - y
    ar = np.abs(r)
    h = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))
    m = len(x)
    psi = np.clip(r, -delta, delta) / (delta * m)  # d(objective) / d(pred) per point
    sig = np.exp(u - pred)  # d(pred) / d(u): the share of the reducible term
    g_a = float(psi @ sig)
    grad = np.array([g_a, float(psi.sum()) - g_a, -float(psi @ (sig * x))])
    return float(h.sum() / (delta * m)), grad


def fit_scaling_law(
    n: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    *,
    alpha_bounds: tuple[float, float] = (0.0, 0.8),
    log_beta_bounds: tuple[float, float] = (-10.0, 6.5),
    log_eps_bounds: tuple[float, float] = (-5.0, 5.0),
    huber_delta: float = 1e-3,
    n_starts: int = 4,
) -> ScalingLaw | None:
    """Fit ``L(n) = eps + beta * n ** (-alpha)`` to points ``(n, loss)`` in log space.

    Huber loss on ``log L``, L-BFGS-B within the bounds from the ``n_starts`` best points of the
    official initial grid. Points with ``n <= 0`` or a loss that is not positive and finite are
    ignored; returns None with fewer than 4 usable points or when no start converges to a
    finite value.
    """
    n_a = np.asarray(n, dtype=np.float64)
    l_a = np.asarray(losses, dtype=np.float64)
    ok = np.isfinite(n_a) & np.isfinite(l_a) & (n_a > 0) & (l_a > 0)
    if int(ok.sum()) < _MIN_FIT_POINTS:
        return None
    x, y = np.log(n_a[ok]), np.log(l_a[ok])
    bounds = [
        tuple(map(float, log_beta_bounds)),
        tuple(map(float, log_eps_bounds)),
        tuple(map(float, alpha_bounds)),
    ]
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    grid = np.stack(np.meshgrid(_GRID_LOG_BETA, _GRID_LOG_EPS, _GRID_ALPHA, indexing="ij"), -1).reshape(-1, 3)
    grid = np.unique(np.clip(grid, lo, hi), axis=0)
    # the objective on the whole grid at once: (grid points) x (data points)
    pred = np.logaddexp(grid[:, :1] - grid[:, 2:] * x[None, :], grid[:, 1:2])
    ar = np.abs(pred - y[None, :])
    d = float(huber_delta)
    f_grid = np.where(ar <= d, 0.5 * ar * ar, d * (ar - 0.5 * d)).mean(axis=1)
    starts = grid[np.argsort(f_grid, kind="stable")[: max(1, int(n_starts))]]
    best: tuple[float, np.ndarray] | None = None
    for start in starts:
        res = minimize(
            _huber_objective,
            start,
            args=(x, y, d),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 200, "ftol": 1e-12, "gtol": 1e-9},
        )
        theta = np.clip(np.asarray(res.x, dtype=np.float64), lo, hi)
        fun = float(res.fun)
        if np.all(np.isfinite(theta)) and math.isfinite(fun) and (best is None or fun < best[0]):
            best = (fun, theta)
    if best is None:
        return None
    fun, (a, e, alpha) = best
    return ScalingLaw(float(np.exp(e)), float(np.exp(a)), float(alpha), fun)


# --------------------------------------------------------------------------- helpers


def _prior(name: str, initial_weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(list(initial_weights), dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError(f"{name}: initial weights must be a non-empty list of numbers")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{name}: initial weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def _number(name: str, key: str, value: Any, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: option {key} must be {kind}, got {value!r}")
    if integer and float(value) != int(value):
        raise ValueError(f"{name}: option {key} must be an integer, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: option {key} must be finite, got {value!r}")
    return float(value)


def _bounds(name: str, key: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name}: option {key} must be a pair (low, high), got {value!r}")
    lo, hi = _number(name, key, value[0]), _number(name, key, value[1])
    if not lo < hi:
        raise ValueError(f"{name}: option {key} needs low < high, got {value!r}")
    return lo, hi


def floor_weights(weights: np.ndarray, floor: float, support: np.ndarray) -> np.ndarray:
    """The distribution closest to ``weights`` (renormalized) with every supported entry >= ``floor``.

    Entries that would fall below the floor are set to it; the others are scaled to fill the
    rest. Unsupported entries are 0.
    """
    w = np.where(support, np.maximum(weights, 0.0), 0.0)
    if w.sum() <= 0:
        w = support.astype(np.float64)
    w = w / w.sum()
    if floor <= 0:
        return w
    fixed = np.zeros_like(support)
    for _ in range(len(w) + 1):
        free = support & ~fixed
        mass = w[free].sum()
        room = 1.0 - floor * fixed.sum()
        scaled = np.where(free, w * (room / mass if mass > 0 else 0.0), 0.0)
        low = free & (scaled < floor)
        if not low.any():
            out = np.where(fixed, floor, scaled)
            return out / out.sum()
        fixed = fixed | low
    out = np.where(support, floor, 0.0)  # only reached when floor * keys == 1
    return out / out.sum()


# --------------------------------------------------------------------------- the algorithm


class ADO(MixingAlgorithm):
    """Adaptive Data Optimization; see the module docstring for the algorithm and its options."""

    name = "ado"

    def __init__(self, initial_weights: Sequence[float], **options: Any) -> None:
        super().__init__(initial_weights, **options)
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"ado: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_DEFAULTS))})"
            )
        o = {**_DEFAULTS, **options}
        self.mu = _prior("ado", initial_weights)
        self.support = self.mu > 0
        k = len(self.mu)
        num = _number
        self.gamma1 = num("ado", "gamma1", o["gamma1"])
        self.gamma2 = num("ado", "gamma2", o["gamma2"])
        for key, v in (("gamma1", self.gamma1), ("gamma2", self.gamma2)):
            if not 0 < v <= 1:
                raise ValueError(f"ado: option {key} must be in (0, 1], got {v}")
        self.s = num("ado", "s", o["s"])
        self.delta_min = num("ado", "delta_min", o["delta_min"])
        self.alpha_floor = num("ado", "alpha_floor", o["alpha_floor"])
        if self.s < 0 or self.alpha_floor < 0:
            raise ValueError("ado: options s and alpha_floor must be >= 0")
        if not 0 <= self.delta_min * int(self.support.sum()) <= 1:
            raise ValueError(
                f"ado: delta_min {self.delta_min} must be >= 0 and at most 1 / {int(self.support.sum())} "
                f"(the number of keys with a positive initial weight)"
            )
        self.warmup = int(num("ado", "warmup", o["warmup"], integer=True))
        self.refit_every = int(num("ado", "refit_every", o["refit_every"], integer=True))
        self.subsample = int(num("ado", "subsample", o["subsample"], integer=True))
        ignore = o["ignore_steps"]
        self.ignore_steps = (
            self.warmup // 2 if ignore is None else int(num("ado", "ignore_steps", ignore, integer=True))
        )
        self.savgol_window = int(num("ado", "savgol_window", o["savgol_window"], integer=True))
        self.savgol_polyorder = int(num("ado", "savgol_polyorder", o["savgol_polyorder"], integer=True))
        self.n_starts = int(num("ado", "n_starts", o["n_starts"], integer=True))
        self.max_points = int(num("ado", "max_points", o["max_points"], integer=True))
        for key, v, least in (
            ("warmup", self.warmup, 0),
            ("refit_every", self.refit_every, 1),
            ("subsample", self.subsample, 1),
            ("ignore_steps", self.ignore_steps, 0),
            ("savgol_window", self.savgol_window, 0),
            ("savgol_polyorder", self.savgol_polyorder, 0),
            ("n_starts", self.n_starts, 1),
            ("max_points", self.max_points, 8),
        ):
            if v < least:
                raise ValueError(f"ado: option {key} must be >= {least}, got {v}")
        self.huber_delta = num("ado", "huber_delta", o["huber_delta"])
        self.count_normalizer = num("ado", "count_normalizer", o["count_normalizer"])
        if self.huber_delta <= 0 or self.count_normalizer <= 0:
            raise ValueError("ado: options huber_delta and count_normalizer must be > 0")
        self.alpha_bounds = _bounds("ado", "alpha_bounds", o["alpha_bounds"])
        self.log_beta_bounds = _bounds("ado", "log_beta_bounds", o["log_beta_bounds"])
        self.log_eps_bounds = _bounds("ado", "log_eps_bounds", o["log_eps_bounds"])
        if self.alpha_bounds[0] < 0:
            raise ValueError(f"ado: alpha_bounds must be >= 0, got {self.alpha_bounds}")
        if not isinstance(o["same_step_size"], bool):
            raise ValueError(f"ado: option same_step_size must be True or False, got {o['same_step_size']!r}")
        self.same_step_size = o["same_step_size"]
        self._width = 3 * k + 1  # a bin: loss sums (k), count sums (k), sums of n (k), records
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        k = len(self.mu)
        self.step: int | None = None
        self.updates = 0
        self.cum = np.zeros(k)
        self.h = self.mu.copy()
        self.pi = self.mu.copy()
        self.pi_bar = self.mu.copy()
        self.params = np.full((k, 3), np.nan)  # per key: log beta, log eps, alpha (NaN: not fitted)
        self.last_fit: int | None = None
        self.bin_width = self.subsample
        self._bins = np.zeros((self.max_points + 1, self._width))
        self._nbins = 0
        self._acc = np.zeros(self._width)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "updates": self.updates,
            "cum": self.cum.tolist(),
            "h": self.h.tolist(),
            "pi": self.pi.tolist(),
            "pi_bar": self.pi_bar.tolist(),
            "params": [None if np.isnan(p[0]) else p.tolist() for p in self.params],
            "last_fit": self.last_fit,
            "bin_width": self.bin_width,
            "bins": self._bins[: self._nbins].tolist(),
            "acc": self._acc.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = len(self.mu)
        try:
            arrays = {
                key: np.asarray(state[key], dtype=np.float64) for key in ("cum", "h", "pi", "pi_bar", "acc")
            }
            bins = np.asarray(state["bins"], dtype=np.float64).reshape(-1, self._width)
            params = np.array([[np.nan] * 3 if p is None else p for p in state["params"]], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ado: not a state of this algorithm ({e})") from e
        if any(a.shape != (k,) for key, a in arrays.items() if key != "acc") or arrays["acc"].shape != (
            self._width,
        ):
            raise ValueError(f"ado: the state is for another number of keys (this mixture has {k})")
        if params.shape != (k, 3) or len(bins) > self.max_points:
            raise ValueError("ado: the state does not match this algorithm's keys or max_points")
        self.step = None if state["step"] is None else int(state["step"])
        self.updates = int(state["updates"])
        self.cum, self.h, self.pi, self.pi_bar = arrays["cum"], arrays["h"], arrays["pi"], arrays["pi_bar"]
        self._acc = arrays["acc"]
        self.params = params
        self.last_fit = None if state["last_fit"] is None else int(state["last_fit"])
        self.bin_width = int(state["bin_width"])
        self._bins = np.zeros((self.max_points + 1, self._width))
        self._bins[: len(bins)] = bins
        self._nbins = len(bins)

    # ------------------------------------------------------------------ feedback

    def update(self, step: int, losses: Sequence[float], counts: Sequence[float]) -> list[float] | None:
        k = len(self.mu)
        loss_a = np.asarray(losses, dtype=np.float64)
        count_a = np.asarray(counts, dtype=np.float64)
        if loss_a.shape != (k,) or count_a.shape != (k,):
            raise ValueError(
                f"ado: expected {k} losses and {k} counts, got {loss_a.shape} and {count_a.shape}"
            )
        if not (np.all(np.isfinite(loss_a)) and np.all(np.isfinite(count_a))) or np.any(count_a < 0):
            raise ValueError("ado: losses and counts must be finite and counts >= 0")
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"ado: step must be an integer >= 0, got {step!r}")
        step = int(step)
        jump = 1 if self.step is None else max(1, step - self.step)
        self.step = step
        self.updates += 1

        self.cum += count_a
        total = count_a.sum()
        if total > 0:
            g1 = 1.0 - (1.0 - self.gamma1) ** jump
            self.h = g1 * (count_a / total) + (1.0 - g1) * self.h
        if step >= self.ignore_steps:
            self._record(loss_a, count_a)

        if step < self.warmup:
            return None
        if self.last_fit is None or step - self.last_fit >= self.refit_every:
            self._refit(step)
        g = self._potential()
        if g is None:
            return None
        raw = self.mu * self.h**self.s * g
        if not (np.all(np.isfinite(raw)) and raw.sum() > 0):
            raw = self.mu
        rho = floor_weights(raw, self.delta_min, self.support)
        pi = floor_weights(
            self.gamma2 * rho + (1.0 - self.gamma2) * self.pi_bar, self.delta_min, self.support
        )
        w = min(1.0, jump / (step + 1.0))
        self.pi_bar = (1.0 - w) * self.pi_bar + w * rho
        self.pi = pi
        return pi.tolist()

    def _n(self) -> np.ndarray:
        """The current ``n`` per key (normalized cumulative counts)."""
        if self.same_step_size:
            return np.full(len(self.mu), self.cum.sum() / self.count_normalizer)
        return self.cum / self.count_normalizer

    def _record(self, losses: np.ndarray, counts: np.ndarray) -> None:
        k = len(self.mu)
        acc = self._acc
        acc[:k] += losses
        acc[k : 2 * k] += counts
        acc[2 * k : 3 * k] += self._n()
        acc[3 * k] += 1
        if acc[3 * k] < self.bin_width:
            return
        self._bins[self._nbins] = acc
        self._nbins += 1
        self._acc = np.zeros(self._width)
        if self._nbins > self.max_points:  # merge neighbours: the bin width doubles
            pairs = self._nbins // 2
            merged = self._bins[0 : 2 * pairs : 2] + self._bins[1 : 2 * pairs : 2]
            if self._nbins % 2:  # an odd last bin (half the new width) goes back to be filled up
                self._acc = self._bins[self._nbins - 1].copy()
            self._bins[:] = 0.0
            self._bins[:pairs] = merged
            self._nbins = pairs
            self.bin_width *= 2

    def fit_points(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per key, the ``(n, loss)`` points the next fit uses (imputed and smoothed bin means)."""
        k = len(self.mu)
        bins = self._bins[: self._nbins]
        loss_sum, cnt, n_sum, rec = bins[:, :k], bins[:, k : 2 * k], bins[:, 2 * k : 3 * k], bins[:, 3 * k]
        out = []
        for d in range(k):
            n = n_sum[:, d] / np.maximum(rec, 1.0)
            seen = cnt[:, d] > 0
            if not seen.any():
                out.append((np.zeros(0), np.zeros(0)))
                continue
            first = int(np.argmax(seen))
            # forward-fill bins in which the key did not appear with the previous bin's loss
            idx = np.where(seen, np.arange(len(seen)), 0)
            np.maximum.accumulate(idx, out=idx)
            mean = loss_sum[:, d] / np.where(seen, cnt[:, d], 1.0)
            loss = mean[idx][first:]
            n = n[first:]
            window = self.savgol_window // self.bin_width
            window = min(window, len(loss))
            if window % 2 == 0:
                window -= 1
            if self.savgol_window > 0 and window > self.savgol_polyorder:
                loss = savgol_filter(loss, window, self.savgol_polyorder)
            out.append((n, loss))
        return out

    def _refit(self, step: int) -> None:
        fitted = False
        options = {
            "alpha_bounds": self.alpha_bounds,
            "log_beta_bounds": self.log_beta_bounds,
            "log_eps_bounds": self.log_eps_bounds,
            "huber_delta": self.huber_delta,
            "n_starts": self.n_starts,
        }
        points = [(d, n, loss) for d, (n, loss) in enumerate(self.fit_points()) if self.support[d]]
        if self.executor is not None:  # e.g. the server's process pool: the GIL stays free
            futures = [self.executor.submit(_fit, n, loss, options) for _, n, loss in points]
            laws = [f.result() for f in futures]
        else:
            laws = [_fit(n, loss, options) for _, n, loss in points]
        for (d, _, _), law in zip(points, laws, strict=True):
            if law is not None:
                self.params[d] = (math.log(law.beta), math.log(law.eps), law.alpha)
                fitted = True
        if fitted:
            self.last_fit = step

    def _potential(self) -> np.ndarray | None:
        """Learning potential per key, or None while no key has a fitted law."""
        n = self._n()
        a, _, alpha = self.params.T
        known = self.support & ~np.isnan(a) & (n > 0)
        if not known.any():
            return None
        g = np.zeros(len(self.mu))
        nk = n[known]
        reducible = np.exp(a[known]) * nk ** (-alpha[known])  # L(n) - eps
        g[known] = np.maximum(alpha[known], self.alpha_floor) * reducible / nk
        g[self.support & ~known] = g[known].max()
        return g

    def scaling_laws(self) -> list[ScalingLaw | None]:
        """The laws fitted so far, per key (None where none is)."""
        return [
            None
            if np.isnan(p[0])
            else ScalingLaw(float(np.exp(p[1])), float(np.exp(p[0])), float(p[2]), math.nan)
            for p in self.params
        ]


def _fit(n: np.ndarray, loss: np.ndarray, options: dict[str, Any]) -> ScalingLaw | None:
    """One domain's refit: a picklable module-level function for ``MixingAlgorithm.executor``."""
    return fit_scaling_law(n, loss, **options)


__all__ = ["ADO", "ScalingLaw", "fit_scaling_law", "floor_weights"]
