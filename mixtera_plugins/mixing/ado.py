"""``ado``: Adaptive Data Optimization (Jiang et al., 2024, arXiv:2410.11820).

ADO fits, per mixture key (domain) ``k``, a scaling law of the training loss in the amount of
data seen so far,

    L_k(n) = eps_k + beta_k * n ** (-alpha_k),

and gives more data to domains whose loss is still falling fast. Every feedback call, with ``n``
the cumulative count divided by ``count_normalizer`` (by default the *total* count, the same for
every domain):

1. *learning potential* ``g_k = max(alpha_k, alpha_floor) * (L_k(n) - eps_k) / n`` (minus the
   slope of the fitted law at ``n``);
2. *credit* ``h_k <- gamma1 * pi_k + (1 - gamma1) * h_k``: an exponential moving average of the
   policy ``pi`` in force during the step (the one the previous call returned; the initial
   weights before the first), started at the initial weights;
3. *preference* ``rho_k`` proportional to ``mu_k * h_k ** s * g_k`` (``mu``: the prior, i.e. the
   initial weights), floored at ``delta_min``;
4. *policy* ``pi = gamma2 * rho + (1 - gamma2) * pi_bar``, floored at ``delta_min``, where ``pi_bar``
   is the running time-average of the past preferences, started at the prior:
   ``pi_bar <- (1 - 1 / (t + 1)) * pi_bar + rho / (t + 1)`` at step ``t``, after ``pi``.

Until ``warmup`` the mixture is the initial one (``update`` returns None). The laws are fitted at
the first step at or after ``warmup`` and again every ``refit_every`` steps; between fits
``update`` is O(number of keys). ``details()`` returns ``n``, ``g``, ``h``, ``rho``, ``pi`` and
``pi_bar`` of the last call.

**The fit** (as in the official code): in log space, ``log L = logsumexp(log beta - alpha log n,
log eps)`` against the log of the smoothed losses, minimizing the *sum* of Huber losses (delta
``huber_delta``) plus the official penalties ``max(alpha - 0.8, 0) + max(0.001 - alpha, 0) +
max(log beta - 6.5, 0) + max(0.5 - log eps, 0)`` (the official alpha term differs by a constant;
the last term is the prior ``eps >= e ** 0.5`` on the irreducible loss, which suits language-model
cross-entropy in nats), by L-BFGS (history 10, stopping when the gradient norm is at most
``fit_tol`` or after ``fit_max_iter`` iterations) started from *every* point of the official
8 x 8 x 8 grid (``log beta`` in -2..5, ``log eps`` in -2..1.5, ``alpha`` in 0..0.7), keeping the
lowest objective. The runs from all starts (and, inline, of all keys) advance together,
vectorized with NumPy in float64; each run's result does not depend on the others, so fitting
keys together, one by one, or one per ``executor`` job gives the same bits. A refit with 500
points costs about 0.3-0.4 s of one CPU core per key.

Options and defaults
--------------------
``gamma1=0.1``, ``gamma2=0.1``, ``s=0.5``, ``delta_min=0.01``, ``warmup=1000``,
``refit_every=1000``, ``subsample=10``, ``savgol_window=101`` (steps; 0 turns smoothing off),
``savgol_polyorder=3``, ``huber_delta=1e-3``, ``alpha_floor=0.05``, ``fit_tol=1e-5``,
``fit_max_iter=200``, ``alpha_bounds=(0.001, 0.8)``, ``log_beta_bounds=(None, 6.5)``,
``log_eps_bounds=(0.5, None)`` (None: no bound on that side), ``bound_mode="penalty"``,
``n_starts=None`` (every grid point), ``same_step_size=True``, ``credit="policy"``: the settings
of the paper and of its official implementation, ``github.com/yidingjiang/ado``,
``src/data_selectors/ado.py`` (``AdoSelector``) with ``configs/loader/pile_ado.yaml``. Where the
paper's text and that code differ, the other reading is an option:

* ``credit="realized"``: the paper's credit is a moving average of the *policy* (the default);
  the official code averages the *realized* share of each key in the step (its count over the
  step's total count, ``p_history``).
* ``same_step_size=False``: ``n`` is each key's own cumulative count, as the paper's text reads,
  instead of the total count of the official code's reference setting
  (``use_same_step_size=True``, the default).

Cheaper or relaxed variants, all off by default: ``n_starts=k`` runs L-BFGS only from the ``k``
grid points with the lowest initial objective (``n_starts=16`` is about 10 times cheaper, but on
our test traces it missed the best optimum in about one fit in six); ``log_eps_bounds=(None,
None)`` drops the irreducible-loss prior (for losses that are not LM cross-entropies), and any
bound can move or be dropped the same way; ``bound_mode="box"`` makes the bounds hard
(projected L-BFGS) instead of penalties; a larger ``fit_tol`` stops the runs earlier.

Remaining deviations from the official code, each with the option that controls it
-----------------------------------------------------------------------------------
* ``ignore_steps`` (default ``warmup // 2``): the official config ignores the first 1000 steps and
  first fits at step 1000, i.e. on a single point. We ignore half the warm-up, so the first fit
  sees the second half of it; ``ignore_steps=warmup`` is the official setting (a fit then waits
  for 4 points per key).
* ``max_points`` (500) and ``subsample`` (10): the official code stores every step, smooths the
  per-step loss with a Savitzky-Golay filter and fits every 10th step. We never store per-step
  history, so that the state stays bounded however long training runs: steps from
  ``ignore_steps`` on are averaged into bins of ``subsample`` steps (loss sum / count per key,
  mean ``n``), the filter runs on the bin means with its window converted from steps to bins,
  and beyond ``max_points`` bins neighbouring bins merge pairwise (the bin width doubles). Each
  bin weighs ``steps in it / subsample`` in the Huber sum, so the sum keeps the official scale
  relative to the penalties. A key absent from a bin takes the previous bin's loss (the official
  code imputes the previous step's loss). The state grows until the bins are full (about step
  5,500 at the defaults) and stays flat after; ``max_points=64`` keeps a job's checkpoint at step
  100,000 within 2x of its size at step 1,000 (``benchmarks/mixture_log.py``) at the price of
  coarser fit points.
* ``floor`` (default ``"exact"``): ``rho`` and ``pi`` are projected exactly onto ``>= delta_min``
  (floored entries equal ``delta_min``, the others are scaled to fill the rest), so the floor also
  holds for priors below ``delta_min``. ``floor="clip"`` is the official ``clip_min_probability``
  (``max(rho, delta_min)``, renormalized, which leaves floored entries slightly below it) on
  ``rho`` only.
* ``count_normalizer`` (1): ``n`` is whatever the trainer counts (samples or tokens); the official
  code counts 1024-token sequences. Set it to the tokens per sequence when reporting tokens, so
  that the grid, the penalties and the ``alpha`` floor mean what they mean there.
* The prior ``mu`` is the job's initial mixture (the official code uses the natural token
  distribution or the uniform one); keys with initial weight 0 stay at 0 (the official code
  floors every domain).

Details that are not options: float64 instead of JAX's float32, and an Armijo backtracking line
search instead of jaxopt's zoom search (same objective, starts and stopping rule; the iterates
differ); a fit needs at least 4 points per key; a key whose fit fails keeps its previous law (the
official code drops the whole refit), and a key without a law gets the largest learning
potential of the fitted ones, so that it is explored rather than starved. Refits come every
``refit_every`` steps after the last successful one (the official code refits at multiples of its
interval: the same steps when every step is reported). When one feedback call covers ``d``
steps, the credit factor becomes ``1 - (1 - gamma1) ** d`` and ``pi_bar`` weighs ``rho`` by
``d / (t + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mixtera_core.interfaces import MixingAlgorithm

# Initial grid of the official implementation: log beta in -2..5, log eps in -2..1.5, alpha in 0..0.7.
_GRID = np.stack(
    np.meshgrid(
        np.arange(-2.0, 6.0, 1.0), np.arange(-2.0, 2.0, 0.5), np.arange(0.0, 0.8, 0.1), indexing="ij"
    ),
    -1,
).reshape(-1, 3)
_MIN_FIT_POINTS = 4
_HISTORY = 10  # L-BFGS memory (jaxopt's default)
_MAX_LINE_SEARCH = 30
_ARMIJO = 1e-4

Bounds = tuple[float | None, float | None]

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
    "alpha_bounds": (0.001, 0.8),
    "log_beta_bounds": (None, 6.5),
    "log_eps_bounds": (0.5, None),
    "bound_mode": "penalty",
    "n_starts": None,
    "fit_tol": 1e-5,
    "fit_max_iter": 200,
    "alpha_floor": 0.05,
    "max_points": 500,
    "count_normalizer": 1.0,
    "same_step_size": True,
    "credit": "policy",
    "floor": "exact",
}
_CHOICES = {"bound_mode": ("penalty", "box"), "credit": ("policy", "realized"), "floor": ("exact", "clip")}


# --------------------------------------------------------------------------- the scaling-law fit


class ScalingLaw(NamedTuple):
    """A fitted ``L(n) = eps + beta * n ** (-alpha)``; ``objective`` is the fit's objective."""

    eps: float
    beta: float
    alpha: float
    objective: float

    def predict(self, n: Any) -> Any:
        return self.eps + self.beta * np.asarray(n, dtype=np.float64) ** (-self.alpha)


class _Objective:
    """The fit's objective for batches of parameter rows ``(log beta, log eps, alpha)``.

    Per row: the weighted sum of Huber losses of ``log(beta n^-alpha + eps) - log loss`` over the
    points of the row's problem (one domain's fit), plus a penalty of slope 1 beyond each bound
    in ``lo``/``hi`` (infinite: none); value and gradient. Each row is computed on its own (no
    BLAS, row-wise reductions), so its result depends on nothing but its own parameters and
    problem: fitting domains together or one by one gives the same bits.
    """

    def __init__(
        self,
        problems: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
        delta: float,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        self.problems = [(x, y, None if np.all(w == 1.0) else w) for x, y, w in problems]
        self.delta = delta
        self.lo, self.hi = lo, hi
        self.penalized = bool(np.isfinite(lo).any() or np.isfinite(hi).any())
        self._buffer = np.empty(0)  # reused: fresh large arrays cost page faults

    def __call__(self, theta: np.ndarray, pid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective and gradient of each row; ``pid``: the rows' problems, in non-decreasing order."""
        f = np.empty(len(theta))
        grad = np.empty((len(theta), 3))
        cuts = [0, *(np.flatnonzero(np.diff(pid)) + 1).tolist(), len(theta)]
        for lo_row, hi_row in zip(cuts[:-1], cuts[1:], strict=True):
            if hi_row > lo_row:
                sl = slice(lo_row, hi_row)
                f[sl], grad[sl] = self._huber(theta[sl], *self.problems[int(pid[lo_row])])
        if self.penalized:
            below, above = theta < self.lo, theta > self.hi
            f += np.where(below, self.lo - theta, 0.0).sum(axis=1)
            f += np.where(above, theta - self.hi, 0.0).sum(axis=1)
            grad += above.astype(np.float64) - below
        return f, grad

    def _huber(
        self, theta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        delta = self.delta
        rows, size = len(theta), 3 * len(theta) * len(x)
        if self._buffer.size < size:
            self._buffer = np.empty(size)
        z, r, psi = self._buffer[:size].reshape(3, rows, len(x))
        a, e, alpha = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            np.multiply(alpha, x, out=z)
            np.subtract(a, z, out=z)
            np.exp(z, out=z)  # beta n^-alpha
            np.add(z, np.exp(e), out=r)  # the predicted loss
            np.divide(z, r, out=z)  # d log L / d log beta: the reducible share of the prediction
            np.log(r, out=r)
            np.subtract(r, y, out=r)  # the residuals
            np.clip(r, -delta, delta, out=psi)  # Huber'(r)
            if w is None:
                f = np.einsum("ij,ij->i", psi, r) - 0.5 * np.einsum("ij,ij->i", psi, psi)
            else:
                f = np.einsum("ij,ij,j->i", psi, r, w) - 0.5 * np.einsum("ij,ij,j->i", psi, psi, w)
                np.multiply(psi, w, out=psi)
            g_sum = psi.sum(axis=1)
            g_a = np.einsum("ij,ij->i", psi, z)
            g_alpha = -np.einsum("ij,ij,j->i", psi, z, x)
        return f, np.stack([g_a, g_sum - g_a, g_alpha], axis=1)


def _lbfgs(
    fun: _Objective,
    x0: np.ndarray,
    pid: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS from every row of ``x0`` at once; returns the final points and objectives.

    Each row runs its own L-BFGS (history ``_HISTORY``, Armijo backtracking from the unit step,
    iterates projected onto ``[lo, hi]``) on the objective of its problem ``pid`` until the norm
    of its (projected) gradient is at most ``tol``, its line search fails, or ``max_iter``
    iterations; rows only share the array operations. Rows whose start is not finite end with an
    objective of NaN.
    """
    size = len(x0)
    x = np.clip(x0, lo, hi)
    f, g = fun(x, pid)
    f = np.where(np.isfinite(f) & np.isfinite(g).all(axis=1), f, np.nan)
    s_hist = np.zeros((size, _HISTORY, 3))
    y_hist = np.zeros((size, _HISTORY, 3))
    rho_hist = np.zeros((size, _HISTORY))  # 1 / (s.y); 0 marks an unused or skipped pair
    gamma = np.ones(size)  # the initial inverse Hessian scale, s.y / y.y of the last pair
    last_step = np.ones(size)  # the step each row accepted last
    active = np.nonzero(np.isfinite(f))[0]
    for it in range(max_iter):
        xa, fa, ga = x[active], f[active], g[active]
        free = ~(((xa <= lo) & (ga > 0)) | ((xa >= hi) & (ga < 0)))
        gf = ga * free
        going = np.sqrt((gf * gf).sum(axis=1)) > tol
        active, xa, fa, ga, free, gf = active[going], xa[going], fa[going], ga[going], free[going], gf[going]
        if not active.size:
            break
        # the two-loop recursion, newest pair first
        q = gf.copy()
        slots = [(it - 1 - j) % _HISTORY for j in range(min(it, _HISTORY))]
        s_a, y_a, rho_a = s_hist[active], y_hist[active], rho_hist[active]
        coefs = []
        for j in slots:
            c = rho_a[:, j] * np.einsum("ij,ij->i", s_a[:, j], q)
            q -= c[:, None] * y_a[:, j]
            coefs.append(c)
        q *= gamma[active, None]
        for j, c in zip(reversed(slots), reversed(coefs), strict=True):
            b = rho_a[:, j] * np.einsum("ij,ij->i", y_a[:, j], q)
            q += (c - b)[:, None] * s_a[:, j]
        d = -q * free
        uphill = ~((d * gf).sum(axis=1) < 0)
        if uphill.any():  # not a descent direction: forget the history, follow the gradient
            d[uphill] = -gf[uphill]
            rho_hist[active[uphill]] = 0.0
            gamma[active[uphill]] = 1.0
        # Armijo backtracking, halving the step, on the rows not yet accepted; a row starts from
        # the unit step, or 10 times its last accepted step where that was below 0.1. A round
        # tries 1, 2, 4, ... halvings of each pending row at once and keeps the longest step that
        # passes: the same steps and the same choice as trying them one by one, in fewer calls.
        step = np.minimum(1.0, 10.0 * last_step[active])
        accepted = np.zeros(len(active), dtype=bool)
        xn, fn, gn = xa.copy(), fa.copy(), ga.copy()
        pending = np.arange(len(active))
        tried, width = 0, 1
        while pending.size and tried < _MAX_LINE_SEARCH:
            width = min(width, _MAX_LINE_SEARCH - tried)
            t = step[pending, None] * 0.5 ** np.arange(width)  # (pending, width)
            base = xa[pending, None, :]
            xt = np.clip(base + t[:, :, None] * d[pending, None, :], lo, hi)
            ft, gt = fun(xt.reshape(-1, 3), np.repeat(pid[active[pending]], width))
            ft, gt = ft.reshape(t.shape), gt.reshape(xt.shape)
            moved = xt - base
            ok = (
                np.isfinite(ft)
                & np.isfinite(gt).all(axis=2)
                & (ft <= fa[pending, None] + _ARMIJO * (moved * ga[pending, None, :]).sum(axis=2))
                & (moved != 0).any(axis=2)
            )
            hit = np.nonzero(ok.any(axis=1))[0]
            j = ok[hit].argmax(axis=1)
            done = pending[hit]
            xn[done], fn[done], gn[done] = xt[hit, j], ft[hit, j], gt[hit, j]
            step[done] = t[hit, j]
            accepted[done] = True
            pending = pending[~ok.any(axis=1)]
            step[pending] *= 0.5**width
            tried += width
            width *= 2
        # rows whose line search failed stop where they are
        idx = np.nonzero(accepted)[0]
        rows = active[idx]
        s_new, y_new = xn[idx] - xa[idx], gn[idx] - ga[idx]
        sy, yy = (s_new * y_new).sum(axis=1), (y_new * y_new).sum(axis=1)
        good = sy > 1e-10 * np.sqrt((s_new * s_new).sum(axis=1) * yy)
        slot = it % _HISTORY
        s_hist[rows, slot], y_hist[rows, slot] = s_new, y_new
        rho_hist[rows, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[rows[good]] = sy[good] / yy[good]
        x[rows], f[rows], g[rows] = xn[idx], fn[idx], gn[idx]
        last_step[rows] = step[idx]
        active = rows
        if not active.size:
            break
    return x, f


def _bound_array(bounds: Sequence[Bounds]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([-np.inf if b[0] is None else float(b[0]) for b in bounds])
    hi = np.array([np.inf if b[1] is None else float(b[1]) for b in bounds])
    return lo, hi


def fit_scaling_law(
    n: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    alpha_bounds: Bounds = (0.001, 0.8),
    log_beta_bounds: Bounds = (None, 6.5),
    log_eps_bounds: Bounds = (0.5, None),
    bound_mode: str = "penalty",
    huber_delta: float = 1e-3,
    n_starts: int | None = None,
    tol: float = 1e-5,
    max_iter: int = 200,
) -> ScalingLaw | None:
    """Fit ``L(n) = eps + beta * n ** (-alpha)`` to points ``(n, loss)`` as the official ADO code does.

    Minimizes ``sum(weights * huber(log L(n) - log loss)) + penalties`` (see the module
    docstring) by L-BFGS from every point of the official grid, or from its ``n_starts`` best
    points, and returns the lowest objective found. ``bound_mode="box"`` turns the bounds into
    hard ones. Points with ``n <= 0``, a loss that is not positive and finite, or weight 0 are
    ignored; returns None with fewer than 4 usable points or when no run ends finite.
    """
    (fit,) = _fit_many(
        [(n, losses, weights)],
        alpha_bounds=alpha_bounds,
        log_beta_bounds=log_beta_bounds,
        log_eps_bounds=log_eps_bounds,
        bound_mode=bound_mode,
        huber_delta=huber_delta,
        n_starts=n_starts,
        tol=tol,
        max_iter=max_iter,
    )
    if fit is None:
        return None
    (a, e, alpha), objective = fit
    return ScalingLaw(math.exp(e), math.exp(a), alpha, objective)


Points = tuple[
    Sequence[float] | np.ndarray, Sequence[float] | np.ndarray, Sequence[float] | np.ndarray | None
]


def _fit_many(
    problems: Sequence[Points],
    *,
    alpha_bounds: Bounds,
    log_beta_bounds: Bounds,
    log_eps_bounds: Bounds,
    bound_mode: str,
    huber_delta: float,
    n_starts: int | None,
    tol: float,
    max_iter: int,
) -> list[tuple[tuple[float, float, float], float] | None]:
    """:func:`fit_scaling_law` of several ``(n, losses, weights)`` at once, in log parameters:
    ``((log beta, log eps, alpha), objective)`` or None per problem. One L-BFGS run advances all
    starts of all problems together; each problem's result is the same as alone."""
    lo, hi = _bound_array([log_beta_bounds, log_eps_bounds, alpha_bounds])
    if bound_mode == "penalty":
        grid, pen_lo, pen_hi = _GRID, lo, hi
        lo, hi = np.full(3, -np.inf), np.full(3, np.inf)
    elif bound_mode == "box":
        grid, pen_lo, pen_hi = (
            np.unique(np.clip(_GRID, lo, hi), axis=0),
            np.full(3, -np.inf),
            np.full(3, np.inf),
        )
    else:
        raise ValueError(f"bound_mode must be 'penalty' or 'box', got {bound_mode!r}")
    data, index = [], []  # the usable problems, and their positions in ``problems``
    for i, (n, losses, weights) in enumerate(problems):
        n_a = np.asarray(n, dtype=np.float64)
        l_a = np.asarray(losses, dtype=np.float64)
        w_a = np.ones_like(n_a) if weights is None else np.asarray(weights, dtype=np.float64)
        ok = np.isfinite(n_a) & np.isfinite(l_a) & np.isfinite(w_a) & (n_a > 0) & (l_a > 0) & (w_a > 0)
        if int(ok.sum()) >= _MIN_FIT_POINTS:
            data.append((np.log(n_a[ok]), np.log(l_a[ok]), w_a[ok]))
            index.append(i)
    out: list[tuple[tuple[float, float, float], float] | None] = [None] * len(problems)
    if not data:
        return out
    fun = _Objective(data, float(huber_delta), pen_lo, pen_hi)
    starts, pid = [], []
    for p in range(len(data)):
        rows = grid
        if n_starts is not None and n_starts < len(grid):  # the grid points with the lowest objective
            f0, _ = fun(grid, np.full(len(grid), p))
            f0 = np.where(np.isfinite(f0), f0, np.inf)
            rows = grid[np.sort(np.argsort(f0, kind="stable")[: max(1, int(n_starts))])]
        starts.append(rows)
        pid.append(np.full(len(rows), p))
    pid_a = np.concatenate(pid)
    theta, f = _lbfgs(fun, np.concatenate(starts), pid_a, lo, hi, float(tol), int(max_iter))
    for p, i in enumerate(index):
        mine = np.flatnonzero(pid_a == p)
        if np.isfinite(f[mine]).any():
            best = mine[int(np.nanargmin(f[mine]))]
            a, e, alpha = (float(v) for v in theta[best])
            out[i] = ((a, e, alpha), float(f[best]))
    return out


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


def _bounds(name: str, key: str, value: Any) -> Bounds:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(
            f"{name}: option {key} must be a pair (low, high), either may be None, got {value!r}"
        )
    lo, hi = (None if v is None else _number(name, key, v) for v in value)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"{name}: option {key} needs low < high, got {value!r}")
    return lo, hi


def floor_weights(weights: np.ndarray, floor: float, support: np.ndarray) -> np.ndarray:
    """The distribution closest to ``weights`` (renormalized) with every supported entry >= ``floor``.

    Entries that would fall below the floor are set to it; the others are scaled to fill the
    rest. Unsupported entries are 0.
    """
    w = np.where(support, np.maximum(weights, 0.0), 0.0)
    total = w.sum()
    if total <= 0:
        w = support.astype(np.float64)
        total = w.sum()
    w = w / total
    if floor <= 0 or w.min(where=support, initial=1.0) >= floor:
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


def clip_weights(weights: np.ndarray, floor: float, support: np.ndarray) -> np.ndarray:
    """The official ``clip_min_probability``: ``max(w, floor)`` on the supported entries, renormalized."""
    w = np.where(support, np.maximum(weights, 0.0), 0.0)
    if w.sum() <= 0:
        w = support.astype(np.float64)
    w = np.where(support, np.maximum(w / w.sum(), floor), 0.0)
    return w / w.sum()


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
        starts = o["n_starts"]
        self.n_starts = None if starts is None else int(num("ado", "n_starts", starts, integer=True))
        self.fit_max_iter = int(num("ado", "fit_max_iter", o["fit_max_iter"], integer=True))
        self.max_points = int(num("ado", "max_points", o["max_points"], integer=True))
        for key, v, least in (
            ("warmup", self.warmup, 0),
            ("refit_every", self.refit_every, 1),
            ("subsample", self.subsample, 1),
            ("ignore_steps", self.ignore_steps, 0),
            ("savgol_window", self.savgol_window, 0),
            ("savgol_polyorder", self.savgol_polyorder, 0),
            ("n_starts", 1 if self.n_starts is None else self.n_starts, 1),
            ("fit_max_iter", self.fit_max_iter, 1),
            ("max_points", self.max_points, 8),
        ):
            if v < least:
                raise ValueError(f"ado: option {key} must be >= {least}, got {v}")
        self.huber_delta = num("ado", "huber_delta", o["huber_delta"])
        self.fit_tol = num("ado", "fit_tol", o["fit_tol"])
        self.count_normalizer = num("ado", "count_normalizer", o["count_normalizer"])
        if self.huber_delta <= 0 or self.count_normalizer <= 0 or self.fit_tol <= 0:
            raise ValueError("ado: options huber_delta, fit_tol and count_normalizer must be > 0")
        self.alpha_bounds = _bounds("ado", "alpha_bounds", o["alpha_bounds"])
        self.log_beta_bounds = _bounds("ado", "log_beta_bounds", o["log_beta_bounds"])
        self.log_eps_bounds = _bounds("ado", "log_eps_bounds", o["log_eps_bounds"])
        for key, choices in _CHOICES.items():
            if o[key] not in choices:
                raise ValueError(
                    f"ado: option {key} must be one of {', '.join(map(repr, choices))}, got {o[key]!r}"
                )
        self.bound_mode: str = o["bound_mode"]
        self.credit: str = o["credit"]
        self.floor: str = o["floor"]
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
        self._details: dict[str, list[float] | None] | None = None

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
        self._details = None

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
        g1 = 1.0 - (1.0 - self.gamma1) ** jump
        if self.credit == "policy":  # the policy in force during the step(s) just reported
            self.h = g1 * self.pi + (1.0 - g1) * self.h
        elif total > 0:  # "realized": the step's share of each key
            self.h = g1 * (count_a / total) + (1.0 - g1) * self.h
        n = self._n()
        if step >= self.ignore_steps:
            self._record(loss_a, count_a, n)

        if step < self.warmup:
            return None
        if self.last_fit is None or step - self.last_fit >= self.refit_every:
            self._refit(step)
        g = self._potential(n)
        if g is None:
            return None
        raw = self.mu * self.h**self.s * g
        if not (np.all(np.isfinite(raw)) and raw.sum() > 0):
            raw = self.mu
        if self.floor == "exact":
            rho = floor_weights(raw, self.delta_min, self.support)
            pi = floor_weights(
                self.gamma2 * rho + (1.0 - self.gamma2) * self.pi_bar, self.delta_min, self.support
            )
        else:  # "clip": the official code floors rho only
            rho = clip_weights(raw, self.delta_min, self.support)
            pi = self.gamma2 * rho + (1.0 - self.gamma2) * self.pi_bar
        w = min(1.0, jump / (step + 1.0))
        self.pi_bar = (1.0 - w) * self.pi_bar + w * rho
        self.pi = pi
        self._details = {
            "n": n.tolist(),
            "potential": g.tolist(),
            "credit": self.h.tolist(),
            "preference": rho.tolist(),
            "policy": pi.tolist(),
            "policy_average": self.pi_bar.tolist(),
        }
        return pi.tolist()

    def details(self) -> dict[str, list[float] | None] | None:
        """What the last ``update`` that returned weights computed, per key: ``n``, the learning
        ``potential`` g, the ``credit`` h, the ``preference`` rho, the ``policy`` pi and the
        ``policy_average`` pi_bar after the update. None before the first such update (and after
        ``load_state_dict``: they are not part of the state)."""
        return None if self._details is None else dict(self._details)

    def _n(self) -> np.ndarray:
        """The current ``n`` per key (normalized cumulative counts)."""
        if self.same_step_size:
            return np.full(len(self.mu), self.cum.sum() / self.count_normalizer)
        return self.cum / self.count_normalizer

    def _record(self, losses: np.ndarray, counts: np.ndarray, n: np.ndarray) -> None:
        k = len(self.mu)
        acc = self._acc
        acc[:k] += losses
        acc[k : 2 * k] += counts
        acc[2 * k : 3 * k] += n
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

    def fit_points(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per key, the ``(n, loss, weight)`` points the next fit uses: imputed and smoothed bin
        means, each weighing its number of records over ``subsample``."""
        k = len(self.mu)
        bins = self._bins[: self._nbins]
        loss_sum, cnt, n_sum, rec = bins[:, :k], bins[:, k : 2 * k], bins[:, 2 * k : 3 * k], bins[:, 3 * k]
        out = []
        for d in range(k):
            seen = cnt[:, d] > 0
            if not seen.any():
                out.append((np.zeros(0), np.zeros(0), np.zeros(0)))
                continue
            first = int(np.argmax(seen))
            # forward-fill bins in which the key did not appear with the previous bin's loss
            idx = np.where(seen, np.arange(len(seen)), 0)
            np.maximum.accumulate(idx, out=idx)
            mean = loss_sum[:, d] / np.where(seen, cnt[:, d], 1.0)
            loss = mean[idx][first:]
            n = (n_sum[:, d] / np.maximum(rec, 1.0))[first:]
            window = min(self.savgol_window // self.bin_width, len(loss))
            if window % 2 == 0:
                window -= 1
            if self.savgol_window > 0 and window > self.savgol_polyorder:
                # imported here: scipy takes ~1 s to import, and loading the plugins (any CLI command,
                # any client) must not pay for it
                from scipy.signal import savgol_filter

                loss = savgol_filter(loss, window, self.savgol_polyorder)
            out.append((n, loss, rec[first:] / self.subsample))
        return out

    def fit_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fit_scaling_law` this algorithm's refits use."""
        return {
            "alpha_bounds": self.alpha_bounds,
            "log_beta_bounds": self.log_beta_bounds,
            "log_eps_bounds": self.log_eps_bounds,
            "bound_mode": self.bound_mode,
            "huber_delta": self.huber_delta,
            "n_starts": self.n_starts,
            "tol": self.fit_tol,
            "max_iter": self.fit_max_iter,
        }

    def _refit(self, step: int) -> None:
        options = self.fit_options()
        points = [(d, *p) for d, p in enumerate(self.fit_points()) if self.support[d]]
        if self.executor is not None:  # e.g. the server's process pool: the GIL stays free
            futures = [self.executor.submit(_fit, [(n, loss, w)], options) for _, n, loss, w in points]
            fits = [fit for future in futures for fit in future.result()]
        else:  # all keys in one run (the same results, less overhead)
            fits = _fit(((n, loss, w) for _, n, loss, w in points), options)
        fitted = False
        for (d, *_), fit in zip(points, fits, strict=True):
            if fit is not None:
                self.params[d] = fit[0]
                fitted = True
        if fitted:
            self.last_fit = step

    def _potential(self, n: np.ndarray) -> np.ndarray | None:
        """Learning potential per key at ``n``, or None while no key has a fitted law."""
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


def _fit(
    problems: Iterable[Points], options: dict[str, Any]
) -> list[tuple[tuple[float, float, float], float] | None]:
    """Refits of some keys: a picklable module-level function for ``MixingAlgorithm.executor``."""
    return _fit_many(list(problems), **options)


__all__ = ["ADO", "ScalingLaw", "clip_weights", "fit_scaling_law", "floor_weights"]
