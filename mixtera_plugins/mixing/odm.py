"""``odm``: Online Data Mixing (Albalak et al., 2023, "Efficient Online Data Mixing for Language
Model Pre-Training", arXiv:2312.02406), a multi-armed bandit over the mixture keys.

Each mixture key with a positive initial weight is an arm; the reward of an arm is the training
loss on its data (high loss: more to learn). With ``K`` arms and ``t`` the number of feedback
calls so far, every call

1. forms the per-key mean loss ``L_k = losses_k / counts_k`` of the step and the estimated
   reward ``r_k = reward_scale * f(L_k) * share_k / pi_k``, with ``share_k`` the key's share of the
   step's counts, ``pi_k`` the current weight and ``f`` the identity (``reward="loss"``) or
   ``exp`` (``reward="exp_loss"``); keys absent from the step have ``r_k = 0``;
2. updates the estimated rewards ``R``: ``R_k <- smoothing * R_k + (1 - smoothing) * r_k``
   (``estimator="smoothed"``, the default) or ``R_k <- R_k + r_k`` (``estimator="cumulative"``);
3. sets the exploration rate ``eps_t = min(1/K, sqrt(ln K / (K t)))`` and the weights

       pi = (1 - K eps_t) * softmax(eps_{t-1} * R) + eps_t        (``policy="exp3"``, default)
       pi = (1 - K eps_t) * R / sum(R) + eps_t                    (``policy="proportional"``)

   with ``eps_0 = 1/K``.

Options: ``smoothing=0.9``, ``estimator="smoothed"``, ``reward="loss"``, ``reward_scale=1.0``,
``importance_weighting=True``, ``policy="exp3"``, ``warmup=0`` (no new weights before this step;
rewards are still collected) and ``update_every=1`` (new weights every that many calls).

What we took from the paper and the released code, and where we deviate
-----------------------------------------------------------------------
References: the paper, and its released code ``github.com/alon-albalak/online-data-mixing``,
``megatron/data/data_sampling_utils.py``: the ``exp3`` updater (``Exp3WeightUpdater``) and the
``smoothed_mean`` updater (``SmoothedMeanWeightUpdater``, the one run by the repository's
``scripts/train_1B_ema_0.5smoothing.sh``; the revision of that file we could open predates it,
so we read it in later copies of the file).

* **Exploration and policy.** ``eps_t = min(1/K, sqrt(ln K / (K t)))``, ``eps_0 = 1/K`` and
  ``pi = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t`` are the paper's and both updaters'.
  The released code counts ``t`` in training iterations; we count feedback calls (identical when
  feedback comes every step from step 1, and well defined when it does not).
* **Rewards.** The released ``exp3`` updater adds ``(loss / 10) / pi_k`` to a *cumulative* reward
  of the one domain that made up the batch (``estimator="cumulative", reward_scale=0.1``). The
  ``smoothed_mean`` updater instead keeps a moving average (``smoothing_factor``, 0.9 by default,
  0.5 in the 1B script) of ``exp(loss)`` without importance weighting. The paper's algorithm, as
  we read it, smooths the importance-weighted loss ``loss / pi_k`` by a moving average; that is
  our default (``estimator="smoothed", reward="loss", importance_weighting=True``).
* **Several domains per step.** The released code's ``update`` assumes one domain per batch;
  Mixtera's feedback has per-key loss sums and counts. We use the per-key mean loss and importance
  weight by ``share_k / pi_k`` (the realized share over the intended one), which reduces to
  ``1 / pi_k`` for a batch of one domain and keeps ``R_k`` an unbiased estimate of ``f(L_k)`` when
  shares fluctuate. With importance weighting, a key absent from the step counts with reward 0
  (that is what makes the estimate unbiased); without it, absent keys keep their ``R_k``, as in the
  released ``group_update`` for mixed minibatches.
* **Mixed-minibatch variant of the released code.** The released ``group_update`` (used with
  ``mixed_minibatches``) normalizes ``R`` linearly instead of through a softmax: ``policy=
  "proportional"``. ``reward="exp_loss", importance_weighting=False, policy="proportional"``
  reproduces that path. Note that with a smoothed (bounded) ``R`` the ``exp3`` policy flattens
  towards uniform as ``eps_{t-1}`` decays; use ``estimator="cumulative"`` for the classic EXP3
  behaviour or ``policy="proportional"`` for a tilt that does not decay.
* **Prior.** As in the released code, the initial weights are only the policy until the first
  update (``pi_k`` of the first importance weights); keys with initial weight 0 are not arms and
  stay at 0. Keys absent from every step so far keep ``R_k = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mixtera_core.interfaces import MixingAlgorithm

_DEFAULTS: dict[str, Any] = {
    "smoothing": 0.9,
    "estimator": "smoothed",
    "reward": "loss",
    "reward_scale": 1.0,
    "importance_weighting": True,
    "policy": "exp3",
    "warmup": 0,
    "update_every": 1,
}
_CHOICES = {
    "estimator": ("smoothed", "cumulative"),
    "reward": ("loss", "exp_loss"),
    "policy": ("exp3", "proportional"),
}


def exploration_rate(arms: int, t: int) -> float:
    """``min(1/K, sqrt(ln K / (K t)))`` for ``K = arms`` and ``t >= 1``."""
    if arms < 1 or t < 1:
        raise ValueError(f"exploration_rate needs arms >= 1 and t >= 1, got {arms}, {t}")
    return min(1.0 / arms, math.sqrt(math.log(arms) / (arms * t)))


class ODM(MixingAlgorithm):
    """Online Data Mixing (EXP3 bandit); see the module docstring for the algorithm and options."""

    name = "odm"

    def __init__(self, initial_weights: Sequence[float], **options: Any) -> None:
        super().__init__(initial_weights, **options)
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"odm: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_DEFAULTS))})"
            )
        o = {**_DEFAULTS, **options}
        w = np.asarray(list(initial_weights), dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"odm: initial weights must be finite, >= 0 and not all 0, got {list(initial_weights)}"
            )
        self.mu = w / w.sum()
        self.arms = self.mu > 0
        for key, choices in _CHOICES.items():
            if o[key] not in choices:
                raise ValueError(f"odm: option {key} must be one of {', '.join(choices)}, got {o[key]!r}")
        self.estimator, self.reward, self.policy = o["estimator"], o["reward"], o["policy"]
        for key in ("smoothing", "reward_scale"):
            v = o[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"odm: option {key} must be a finite number, got {v!r}")
        if not 0 <= o["smoothing"] < 1:
            raise ValueError(f"odm: option smoothing must be in [0, 1), got {o['smoothing']}")
        if o["reward_scale"] <= 0:
            raise ValueError(f"odm: option reward_scale must be > 0, got {o['reward_scale']}")
        self.smoothing, self.reward_scale = float(o["smoothing"]), float(o["reward_scale"])
        if not isinstance(o["importance_weighting"], bool):
            raise ValueError(
                f"odm: option importance_weighting must be True or False, got {o['importance_weighting']!r}"
            )
        self.importance_weighting = o["importance_weighting"]
        for key, least in (("warmup", 0), ("update_every", 1)):
            v = o[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"odm: option {key} must be an integer >= {least}, got {v!r}")
        self.warmup, self.update_every = int(o["warmup"]), int(o["update_every"])
        k_arms = int(self.arms.sum())
        self.t = 0
        self.eps = 1.0 / k_arms
        self.prev_eps = self.eps
        self.R = np.zeros(len(self.mu))
        self.pi = self.mu.copy()

    @property
    def num_arms(self) -> int:
        return int(self.arms.sum())

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "eps": self.eps,
            "prev_eps": self.prev_eps,
            "rewards": self.R.tolist(),
            "pi": self.pi.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = len(self.mu)
        try:
            rewards = np.asarray(state["rewards"], dtype=np.float64)
            pi = np.asarray(state["pi"], dtype=np.float64)
            t, eps, prev = int(state["t"]), float(state["eps"]), float(state["prev_eps"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"odm: not a state of this algorithm ({e})") from e
        if rewards.shape != (k,) or pi.shape != (k,):
            raise ValueError(f"odm: the state is for another number of keys (this mixture has {k})")
        self.t, self.eps, self.prev_eps, self.R, self.pi = t, eps, prev, rewards, pi

    def update(self, step: int, losses: Sequence[float], counts: Sequence[float]) -> list[float] | None:
        k = len(self.mu)
        loss_a = np.asarray(losses, dtype=np.float64)
        count_a = np.asarray(counts, dtype=np.float64)
        if loss_a.shape != (k,) or count_a.shape != (k,):
            raise ValueError(
                f"odm: expected {k} losses and {k} counts, got {loss_a.shape} and {count_a.shape}"
            )
        if not (np.all(np.isfinite(loss_a)) and np.all(np.isfinite(count_a))) or np.any(count_a < 0):
            raise ValueError("odm: losses and counts must be finite and counts >= 0")
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"odm: step must be an integer >= 0, got {step!r}")
        present = self.arms & (count_a > 0)
        total = count_a[self.arms].sum()
        if total <= 0:
            return None  # nothing observed: no information, the bandit does not advance
        mean = np.divide(loss_a, count_a, out=np.zeros(k), where=present)
        value = np.exp(np.minimum(mean, 700.0)) if self.reward == "exp_loss" else mean
        if self.importance_weighting:
            r = np.where(
                present, self.reward_scale * value * (count_a / total) / np.maximum(self.pi, 1e-300), 0.0
            )
            touched = self.arms
        else:
            r = np.where(present, self.reward_scale * value, 0.0)
            touched = present
        if self.estimator == "smoothed":
            self.R = np.where(touched, self.smoothing * self.R + (1.0 - self.smoothing) * r, self.R)
        else:
            self.R = np.where(touched, self.R + r, self.R)

        self.t += 1
        self.prev_eps, self.eps = self.eps, exploration_rate(self.num_arms, self.t)
        if step < self.warmup or self.t % self.update_every:
            return None
        self.pi = self._policy()
        return self.pi.tolist()

    def _policy(self) -> np.ndarray:
        k_arms = self.num_arms
        if k_arms == 1:
            return self.arms.astype(np.float64)
        if self.policy == "exp3":
            z = np.where(self.arms, self.prev_eps * self.R, -np.inf)
            e = np.exp(z - z[self.arms].max())
            p = e / e.sum()
        else:
            mass = np.where(self.arms, np.maximum(self.R, 0.0), 0.0)
            p = mass / mass.sum() if mass.sum() > 0 else self.arms / k_arms
        pi = np.where(self.arms, (1.0 - k_arms * self.eps) * p + self.eps, 0.0)
        return pi / pi.sum()


__all__ = ["ODM", "exploration_rate"]
