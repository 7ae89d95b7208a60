"""Deterministic chunk planning: the global chunk sequence of a job, by index arithmetic.

Chunk ``i`` is a pure function of (the index, the per-component cursors after chunk
``i - 1``, the weights in force at ``i``, the seed, ``i``). Every stream of a job runs its
own replica of the planner and materializes only the chunks assigned to it, so no
coordination, arrival order, time or pid can change what a rank sees.

**Sample order inside a component.** A component's intervals are cut into blocks of at
most ``block_size`` consecutive samples; each epoch visits the blocks in a seeded
permutation (seed, component key, epoch). A cursor is one integer, the position in the
current epoch's order, so cursors are tiny and restoring never replays chunks.

**Chunk size** is ``chunk_size`` samples. In token mode it is a token budget,
``chunk_tokens`` (or ``chunk_size`` samples' worth at the weights in force), so that a chunk
lasts a fixed number of training steps however long the documents are.

**Quotas.** Sample mode: each chunk splits its samples over the components by largest
remainder, and the fractional remainders are carried into the next chunk: over ``n``
chunks a component's count stays within one sample of ``weight * n * chunk_size``, so a
0.1% component is served every ~1000 samples rather than rounded away. Token mode: the
same in tokens, from each sample's token count (exact from a token index, else estimated
from its size in bytes); a component's quota is filled with the samples whose tokens come
nearest to it, and the difference is carried.

**Running dry** (``on_exhausted``): ``"stop"`` ends the stream before the first chunk
that cannot be filled; ``"redistribute"`` gives the shortfall to the components that
still have data, in proportion to their weights, until all are dry; ``"repeat"`` starts
the component's next epoch with a fresh seeded order.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PlannerStateError
from .index import ChunkerIndex
from .mixture_log import WeightsLog

ON_EXHAUSTED = ("stop", "redistribute", "repeat")
#: Token mode without chunk_tokens: the first chunks hold 1/RAMP_UP, 2/RAMP_UP, ... of the budget.
RAMP_UP = 16
#: The largest chunk index, cursor or epoch a planner state may hold.
MAX_STATE_INDEX = 2**53
__all__ = ["ON_EXHAUSTED", "Chunk", "ChunkPlanner", "ComponentOrders", "WeightsLog", "largest_remainder"]


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *words])))


def stable_id(text: str) -> int:
    """A process-independent 32-bit id of a string (Python's hash() is randomized)."""
    return zlib.crc32(text.encode())


@dataclass
class Chunk:
    """One chunk: pieces ``(component, file_id, start, stop)``; sample mode in component order,
    token mode one piece per sample (or part of one) in delivery order."""

    index: int
    comps: np.ndarray
    file_ids: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    # token mode: per piece (one sample each) the part of the document it holds, as fractions
    # ``[from, to)`` of the document's tokens; None: whole samples
    spans: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return int((self.stops - self.starts).sum())

    def samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample (component, file_id, sample_index), in piece order."""
        lengths = self.stops - self.starts
        comps = np.repeat(self.comps, lengths)
        files = np.repeat(self.file_ids, lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return comps, files, np.repeat(self.starts, lengths) + offsets

    def starts_per_piece(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(component, file id, sample index) per piece of a chunk of one-sample pieces."""
        assert np.all(self.stops - self.starts == 1), "pieces of one sample each"
        return self.comps, self.file_ids, self.starts

    def interleaved(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample arrays in the chunk's seeded interleave order (components mixed); sample
        mode. Token-mode chunks are planned in delivery order already (see ``samples``)."""
        comps, files, idx = self.samples()
        perm = _rng(seed, 1, self.index).permutation(len(comps))
        return comps[perm], files[perm], idx[perm]


class ComponentOrders:
    """Blocks of each component and their seeded order per epoch.

    ``sample_sizes`` (token mode): the tokens of every sample (exact from a token index, or
    estimated), in the index's interval order (:meth:`ChunkerIndex.gather`). With them the
    orders also answer "how many samples from here make ``q`` tokens" by index arithmetic:
    cumulative token counts per block of the epoch order, and within one block a cumsum.
    """

    def __init__(
        self, index: ChunkerIndex, seed: int, block_size: int, sample_sizes: np.ndarray | None = None
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.index = index
        self.seed = seed
        self.block_size = block_size
        self.sizes = index.component_sizes().astype(np.int64)
        self.key_ids = [stable_id(k) for k in index.component_keys()]
        if sample_sizes is not None and len(sample_sizes) != int(self.sizes.sum()):
            raise ValueError(
                f"sample_sizes has {len(sample_sizes)} entries, the index {int(self.sizes.sum())} samples"
            )
        self.sample_sizes = None if sample_sizes is None else np.asarray(sample_sizes, dtype=np.float64)
        # first sample of each component in interval order (where its sizes start)
        self._comp_first = np.concatenate(([0], np.cumsum(self.sizes)))
        self._comp_tokens: np.ndarray | None = None
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._orders: dict[int, tuple[int, tuple[np.ndarray, ...]]] = {}

    @property
    def token_mode(self) -> bool:
        return self.sample_sizes is not None

    def set_sample_sizes(self, sample_sizes: np.ndarray) -> None:
        """Replace the per-sample token counts (a refined estimate); the orders stay the same."""
        if len(sample_sizes) != len(self.sample_sizes if self.sample_sizes is not None else ()):
            raise ValueError("set_sample_sizes needs one count per sample, in token mode")
        self.sample_sizes = np.asarray(sample_sizes, dtype=np.float64)
        self._comp_tokens = None
        self._orders.clear()

    def component_tokens(self) -> np.ndarray:
        """Tokens per component (token mode)."""
        assert self.sample_sizes is not None
        if self._comp_tokens is None:
            cum = np.concatenate(([0.0], np.cumsum(self.sample_sizes)))
            self._comp_tokens = cum[self._comp_first[1:]] - cum[self._comp_first[:-1]]
        return self._comp_tokens

    def _component_blocks(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(file ids, starts, stops, first sample within the component) of component ``c``'s blocks."""
        if c not in self._blocks:
            fids, starts, stops = self.index.intervals(c)
            lengths = stops - starts
            n = -(-lengths // self.block_size)  # blocks per interval
            first = np.repeat(starts, n)
            within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
            bstart = first + within * self.block_size
            bstop = np.minimum(bstart + self.block_size, np.repeat(stops, n))
            local = np.repeat(np.cumsum(lengths) - lengths, n) + within * self.block_size
            self._blocks[c] = (np.repeat(fids, n), bstart, bstop, local)
        return self._blocks[c]

    def _order(self, c: int, epoch: int) -> tuple[np.ndarray, ...]:
        """The epoch's block order: file ids, starts, stops, cumulative samples, and (token
        mode) each block's first sample within the component and cumulative tokens."""
        cached = self._orders.get(c)
        if cached is None or cached[0] != epoch:
            fids, bstart, bstop, local = self._component_blocks(c)
            perm = _rng(self.seed, 2, self.key_ids[c], epoch).permutation(len(bstart))
            f, s, e, lo = fids[perm], bstart[perm], bstop[perm], local[perm]
            cum = np.concatenate(([0], np.cumsum(e - s)))
            parts: tuple[np.ndarray, ...] = (f, s, e, cum)
            if self.sample_sizes is not None:
                sizes = self._local_sizes(c)
                block_tokens = np.add.reduceat(sizes, local) if len(local) else np.zeros(0)
                parts += (lo, np.concatenate(([0.0], np.cumsum(block_tokens[perm]))))
            cached = (epoch, parts)
            self._orders[c] = cached
        return cached[1]

    def _local_sizes(self, c: int) -> np.ndarray:
        assert self.sample_sizes is not None
        return self.sample_sizes[self._comp_first[c] : self._comp_first[c + 1]]

    def take(self, c: int, epoch: int, pos: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pieces covering positions ``[pos, pos + count)`` of component ``c``'s epoch order."""
        f, s, e, cum = self._order(c, epoch)[:4]
        lo = int(np.searchsorted(cum, pos, side="right")) - 1
        hi = int(np.searchsorted(cum, pos + count, side="left"))
        ps, pe, pf = s[lo:hi].copy(), e[lo:hi].copy(), f[lo:hi]
        ps[0] += pos - cum[lo]
        pe[-1] -= cum[hi] - (pos + count)
        return pf, ps, pe

    def sizes_of(self, c: int, epoch: int, pos: int, count: int) -> np.ndarray:
        """Token counts of positions ``[pos, pos + count)`` of component ``c``'s epoch order."""
        _, _, _, cum, local, _ = self._order(c, epoch)
        lo = int(np.searchsorted(cum, pos, side="right")) - 1
        hi = int(np.searchsorted(cum, pos + count, side="left"))
        first = local[lo:hi] + np.maximum(pos - cum[lo:hi], 0)
        last = local[lo:hi] + np.minimum(cum[lo + 1 : hi + 1], pos + count) - cum[lo:hi]
        sizes = self._local_sizes(c)
        return np.concatenate([sizes[a:b] for a, b in zip(first.tolist(), last.tolist(), strict=True)])

    def tokens_before(self, c: int, epoch: int, pos: int) -> float:
        """Tokens of positions ``[0, pos)`` of component ``c``'s epoch order."""
        _, _, _, cum, local, tcum = self._order(c, epoch)
        if pos >= cum[-1]:
            return float(tcum[-1])
        b = int(np.searchsorted(cum, pos, side="right")) - 1
        within = pos - int(cum[b])
        sizes = self._local_sizes(c)
        return float(tcum[b] + sizes[local[b] : local[b] + within].sum())

    def size_at(self, c: int, epoch: int, pos: int) -> float:
        """Tokens of the sample at position ``pos`` (0 past the end of the epoch)."""
        _, _, _, cum, local, _ = self._order(c, epoch)
        if pos >= cum[-1]:
            return 0.0
        b = int(np.searchsorted(cum, pos, side="right")) - 1
        return float(self._local_sizes(c)[local[b] + pos - int(cum[b])])

    def position_tokens(self, c: int, epoch: int, pos: int, frac: float) -> float:
        """Tokens before a cursor: ``pos`` whole samples and ``frac`` of the next one."""
        base = self.tokens_before(c, epoch, pos)
        return base + frac * self.size_at(c, epoch, pos) if frac else base

    def advance(
        self,
        c: int,
        epoch: int,
        pos: int,
        frac: float,
        quota: float,
        split_above: float = float("inf"),
        at_least_one: bool = False,
    ) -> tuple[int, float, float]:
        """Move a cursor (``pos`` samples and ``frac`` of the next) by about ``quota`` tokens:
        returns the new cursor and the tokens passed. The cursor stops at the sample boundary
        nearest to the quota (ties: the earlier), unless the sample there holds more than
        ``split_above`` tokens: then it stops inside it, at the quota exactly. At most to the end
        of the epoch; ``at_least_one``: at least to the end of the current sample."""
        _, _, _, cum, local, tcum = self._order(c, epoch)
        end = int(cum[-1])
        if pos >= end:
            return pos, 0.0, 0.0
        start = self.position_tokens(c, epoch, pos, frac)
        target = start + max(quota, 0.0)
        if target >= tcum[-1]:
            return end, 0.0, float(tcum[-1]) - start
        b = int(np.searchsorted(tcum, target, side="right")) - 1
        block = self._local_sizes(c)[local[b] : local[b] + int(cum[b + 1] - cum[b])]
        bounds = tcum[b] + np.concatenate(([0.0], np.cumsum(block)))
        j = min(int(np.searchsorted(bounds, target, side="right")) - 1, len(block) - 1)
        sample = int(cum[b]) + j
        size = float(bounds[j + 1] - bounds[j])
        new_pos, new_frac = sample, 0.0
        if size > split_above:
            new_frac = (target - float(bounds[j])) / size
            if new_frac >= 1.0:
                new_pos, new_frac = sample + 1, 0.0
        elif bounds[j + 1] - target < target - bounds[j]:
            new_pos = sample + 1
        if (new_pos, new_frac) <= (pos, frac):
            new_pos, new_frac = (pos + 1, 0.0) if at_least_one else (pos, frac)
        return new_pos, new_frac, self.position_tokens(c, epoch, new_pos, new_frac) - start


def _token_order(chunk: Chunk, tokens: np.ndarray, seed: int) -> Chunk:
    """The chunk in delivery order (one piece per sample or part of one): each component's
    pieces in a seeded shuffle, the components merged so that every prefix of the chunk holds
    each of them in proportion to its tokens (a piece is placed at the middle of the span it
    takes in its component's share of the chunk). A stream cut anywhere in a chunk then still
    matches the weights to within about a document, instead of a random draw's spread."""
    comps, files, idx = chunk.starts_per_piece()
    spans = chunk.spans if chunk.spans is not None else np.tile([0.0, 1.0], (len(comps), 1))
    key = _rng(seed, 1, chunk.index).permutation(len(comps))
    by_comp = np.lexsort((key, comps))  # each component's pieces together, shuffled
    comps, files, idx, tokens, spans = (
        comps[by_comp],
        files[by_comp],
        idx[by_comp],
        tokens[by_comp],
        spans[by_comp],
    )
    firsts = np.flatnonzero(np.concatenate(([True], comps[1:] != comps[:-1])))
    lasts = np.concatenate((firsts[1:], [len(comps)]))
    when = np.empty(len(comps), dtype=np.float64)
    for a, b in zip(firsts.tolist(), lasts.tolist(), strict=True):
        t = np.maximum(tokens[a:b], 1e-9)
        when[a:b] = (np.cumsum(t) - t / 2) / t.sum()
    order = np.lexsort((comps, when))
    return Chunk(chunk.index, comps[order], files[order], idx[order], idx[order] + 1, spans[order])


def largest_remainder(weights: np.ndarray, n: int, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` by ``weights`` (summing to 1 over the active entries), carrying remainders.

    Returns (counts, new carry). Entries of weight 0 get 0 and lose their carry.
    """
    active = weights > 0
    ideal = np.where(active, weights * n + carry, 0.0)
    counts = np.where(active, np.floor(np.maximum(ideal, 0.0)), 0.0).astype(np.int64)
    rest = n - int(counts.sum())
    frac = ideal - counts
    if rest > 0:
        cand = np.flatnonzero(active)
        order = cand[np.argsort(-frac[cand], kind="stable")]
        counts[order[:rest]] += 1
    elif rest < 0:  # float rounding pushed the floors above n: take back from the smallest remainders
        cand = np.flatnonzero(counts > 0)
        order = cand[np.argsort(frac[cand], kind="stable")]
        counts[order[:-rest]] -= 1
    new_carry = np.where(active, ideal - counts, 0.0)
    return counts, new_carry


class ChunkPlanner:
    """Generates the global chunk sequence one chunk at a time; state is O(components).

    Sample mode splits ``chunk_size`` samples by the weights. Token mode (the orders carry
    per-sample token counts) splits a chunk's token budget instead, ``chunk_tokens`` or
    ``chunk_size`` samples' worth at the weights in force, and fills each component's quota
    with the samples whose tokens come nearest to it; a document longer than ``split_tokens``
    and than ``split_fraction`` of the budget that straddles the quota is split there, its rest
    opening the component's share of a later chunk (streams that tokenize on the fly tokenize a
    split document for each of its chunks: they split only long documents; streams reading a
    token index split every document longer than a sequence). What a component got over or under its quota is
    carried, in tokens, into the next chunk: over any run of chunks a component's tokens stay
    within half a short document of ``weight * tokens`` (exact counts from a token index;
    estimated counts otherwise), and documents far longer than a chunk are spread over chunks
    instead of making one chunk long and the next ones without that component.
    """

    def __init__(
        self,
        orders: ComponentOrders,
        log: WeightsLog,
        chunk_size: int,
        on_exhausted: str = "stop",
        chunk_tokens: int | None = None,
        staged: tuple[Callable[[float], int], Callable[[int], np.ndarray]] | None = None,
        split_tokens: float = float("inf"),
        split_fraction: float = 1 / 16,
    ) -> None:
        if on_exhausted not in ON_EXHAUSTED:
            raise ValueError(f"on_exhausted must be one of {ON_EXHAUSTED}, got {on_exhausted!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if chunk_tokens is not None and not orders.token_mode:
            raise ValueError("chunk_tokens needs per-sample token counts (token mode)")
        self.orders = orders
        self.log = log
        self.chunk_size = chunk_size
        self.chunk_tokens = chunk_tokens
        self.on_exhausted = on_exhausted
        n = len(orders.sizes)
        # estimated token counts refined as the job goes: (tokens planned -> stage, stage ->
        # per-sample tokens)
        self._staged = staged
        self.planned = 0.0  # token mode: tokens planned so far, all components
        self.stage = 0
        self._update_mean_tokens()
        self.next_index = 0
        self.epoch = np.zeros(n, dtype=np.int64)
        self.pos = np.zeros(n, dtype=np.int64)
        # token mode: the part of the sample at ``pos`` already planned (documents longer than
        # split_tokens are split between chunks)
        self.frac = np.zeros(n, dtype=np.float64)
        self.split_tokens = split_tokens
        self.split_fraction = split_fraction
        self.carry = np.zeros(n, dtype=np.float64)  # samples (sample mode) or tokens (token mode)
        self.exhausted = np.zeros(n, dtype=bool)
        self.done = False

    # -------------------------------------------------------------- state

    def _update_mean_tokens(self) -> None:
        orders = self.orders
        n = len(orders.sizes)
        self._mean_tokens = (
            orders.component_tokens() / np.maximum(orders.sizes, 1) if orders.token_mode else np.ones(n)
        )

    def _set_stage(self, stage: int, carry_over: bool) -> None:
        """Plan with the token estimate of ``stage``. ``carry_over``: re-count the tokens handed
        out so far with the new estimate and carry the difference (the early error is paid back)."""
        if self._staged is None or stage == self.stage:
            return
        before = self._tokens_taken() if carry_over else None
        self.orders.set_sample_sizes(self._staged[1](stage))
        self._update_mean_tokens()
        if before is not None:
            self.carry = np.where(self.exhausted, 0.0, self.carry + before - self._tokens_taken())
        self.stage = stage

    def _tokens_taken(self) -> np.ndarray:
        """Tokens handed out per component (all epochs) under the current counts."""
        orders = self.orders
        total = orders.component_tokens()
        return np.asarray(
            [
                self.epoch[c] * total[c]
                + orders.position_tokens(c, int(self.epoch[c]), int(self.pos[c]), float(self.frac[c]))
                for c in range(len(total))
            ]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "next_index": self.next_index,
            "epoch": self.epoch.tolist(),
            "pos": self.pos.tolist(),
            "frac": self.frac.tolist(),
            "planned": self.planned,
            "carry": self.carry.tolist(),
            "exhausted": self.exhausted.tolist(),
            "done": self.done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`; keys it does not know are ignored).

        Every value is checked against this job before anything changes (lengths, integer
        cursors within their components, fractions in [0, 1), finite carries no larger than a
        chunk's worth plus a component, a known estimate stage): a malformed or out-of-range
        state raises :class:`~mixtera_core.errors.PlannerStateError` and leaves the planner as
        it was, so no state can make planning fail or run away later."""
        values = self._checked_state(state)
        self._set_stage(values.pop("stage"), carry_over=False)
        for name, value in values.items():
            setattr(self, name, value)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        n = len(self.orders.sizes)
        if not isinstance(state, dict):
            raise PlannerStateError(f"a planner state is a JSON object, got {type(state).__name__}")
        missing = [k for k in ("next_index", "epoch", "pos", "carry", "exhausted", "done") if k not in state]
        if missing:
            raise PlannerStateError(
                f"planner state lacks {missing}; send a stream state's snapshot unchanged"
            )

        def array(key: str, default: Any = None) -> np.ndarray:
            raw = state.get(key, default)
            try:
                arr = np.asarray(raw)
            except (ValueError, TypeError) as e:
                raise PlannerStateError(f"planner state: {key} is not a list of numbers ({e})") from None
            if arr.shape != (n,):
                raise PlannerStateError(
                    f"planner state is for {arr.shape[0] if arr.ndim == 1 else '?'} components ({key}), "
                    f"this job has {n}"
                )
            if n and arr.dtype.kind not in "biuf":
                raise PlannerStateError(f"planner state: {key} holds {arr.dtype} values, not numbers")
            return arr

        def integers(key: str, hi: float) -> np.ndarray:
            arr = array(key)
            if n and arr.dtype.kind == "b":
                raise PlannerStateError(f"planner state: {key} holds booleans, not integers")
            f = arr.astype(np.float64)
            if not np.all(np.isfinite(f)) or np.any(f != np.floor(f)) or np.any(f < 0) or np.any(f > hi):
                raise PlannerStateError(f"planner state: {key} must be integers in [0, {int(hi)}]")
            return arr.astype(np.int64)

        def scalar(key: str, default: Any, lo: float, hi: float, integer: bool) -> float:
            v = state.get(key, default)
            ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)
            if ok:
                f = float(v)
                ok = math.isfinite(f) and lo <= f <= hi and (not integer or f.is_integer())
            if not ok:
                kind = "an integer" if integer else "a finite number"
                raise PlannerStateError(f"planner state: {key} must be {kind} in [{lo:g}, {hi:g}], got {v!r}")
            return float(v)

        next_index = int(scalar("next_index", None, 0, MAX_STATE_INDEX, True))
        sizes = np.asarray(self.orders.sizes, dtype=np.int64)
        repeat = self.on_exhausted == "repeat"
        epoch = integers("epoch", MAX_STATE_INDEX if repeat else 0)
        pos = integers("pos", MAX_STATE_INDEX)
        if np.any(pos > sizes):
            c = int(np.flatnonzero(pos > sizes)[0])
            raise PlannerStateError(
                f"planner state: cursor {int(pos[c])} of component {c} is beyond its {int(sizes[c])} samples"
            )
        frac = array("frac", [0.0] * n).astype(np.float64)
        if not np.all(np.isfinite(frac)) or np.any(frac < 0) or np.any(frac >= 1):
            raise PlannerStateError("planner state: frac must be fractions in [0, 1)")
        if np.any((frac > 0) & ((pos >= sizes) | (not self.orders.token_mode))):
            raise PlannerStateError("planner state: a frac > 0 needs a token-mode sample at its cursor")
        carry = array("carry").astype(np.float64)
        if not np.all(np.isfinite(carry)) or np.any(np.abs(carry) > self._carry_bounds()):
            raise PlannerStateError("planner state: carry must be finite and at most about a chunk's worth")
        exhausted = array("exhausted")
        if n and exhausted.dtype.kind != "b":
            raise PlannerStateError("planner state: exhausted must be booleans")
        done = state["done"]
        if not isinstance(done, bool | np.bool_):
            raise PlannerStateError(f"planner state: done must be a boolean, got {done!r}")
        planned = scalar("planned", 0.0, 0.0, 2.0**62, False)
        top = self._staged[0](float("inf")) if self._staged is not None else 0
        stage = int(scalar("stage", 0, 0, top, True))
        return {
            "stage": stage,
            "next_index": next_index,
            "epoch": epoch,
            "pos": pos,
            "frac": frac,
            "planned": planned,
            "carry": carry,
            "exhausted": exhausted.astype(bool),
            "done": bool(done),
        }

    def _carry_bounds(self) -> np.ndarray:
        """The largest carry a component can have: a chunk's worth (sample mode: samples; token
        mode: tokens, plus a whole component, which bounds a document over its quota and the
        re-count of an estimate stage), with a wide margin. A larger one would make a single
        chunk plan for ever."""
        n = len(self.orders.sizes)
        if not self.orders.token_mode:
            return np.full(n, float(self.chunk_size + n + 2))
        tokens = self.orders.component_tokens()
        budget = float(self.chunk_tokens) if self.chunk_tokens is not None else 0.0
        if self.chunk_tokens is None:
            budget = float(self.chunk_size) * float(np.max(self._mean_tokens, initial=1.0))
        return 16.0 * (budget + tokens + float(1 << 20))

    # -------------------------------------------------------------- planning

    def _weights(self, index: int) -> np.ndarray:
        w = np.where(self.exhausted, 0.0, self.log.at(index))
        total = w.sum()
        return w / total if total > 0 else w

    def token_budget(self, weights: np.ndarray, index: int | None = None) -> float:
        """Tokens in chunk ``index`` at these weights: ``chunk_tokens``, else ``chunk_size``
        samples' worth, ramped up over the first chunks (1/16, 1/8, 1/4, 1/2 of it) so that a
        stream's first sequence needs only a small chunk read and tokenized."""
        if self.chunk_tokens is not None:
            return float(self.chunk_tokens)
        samples_per_token = float((weights / np.maximum(self._mean_tokens, 1e-9)).sum())
        ramp = 1.0 if index is None else min(1.0, 2.0**index / RAMP_UP)
        return ramp * self.chunk_size / max(samples_per_token, 1e-12)

    def next_chunk(self, materialize: bool = True) -> Chunk | None:
        """Plan the next chunk (advance cursors); None once the stream has ended."""
        if self.done:
            return None
        index = self.next_index
        if self._staged is not None:
            self._set_stage(self._staged[0](self.planned), carry_over=True)
        weights = self._weights(index)
        if weights.sum() <= 0:
            self.done = True
            return None
        pieces: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._token_pieces: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        if self.orders.token_mode:
            planned = self._fill_tokens(weights, materialize)
        else:
            planned = self._fill_samples(weights, pieces, materialize)
        if not planned:
            return None
        self.next_index += 1
        if not materialize:
            return None
        if self.orders.token_mode:
            return self._token_chunk(index)
        if not pieces:
            return None
        return Chunk(
            index,
            np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in pieces]),
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]),
            np.concatenate([p[3] for p in pieces]),
        )

    def _token_chunk(self, index: int) -> Chunk | None:
        parts = self._token_pieces
        if not parts:
            return None
        idx = np.concatenate([p[2] for p in parts])
        chunk = Chunk(
            index,
            np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in parts]),
            np.concatenate([p[1] for p in parts]),
            idx,
            idx + 1,
            np.concatenate([p[3] for p in parts]),
        )
        return _token_order(chunk, np.concatenate([p[4] for p in parts]), self.orders.seed)

    def _move(self, c: int, new_pos: int, new_frac: float, materialize: bool) -> None:
        """Token mode: plan component ``c`` from its cursor to (new_pos, new_frac), one piece per
        sample: whole samples, and parts of the first and last where the cursors stand inside."""
        pos, frac = int(self.pos[c]), float(self.frac[c])
        if (new_pos, new_frac) <= (pos, frac):
            return
        if materialize:
            epoch = int(self.epoch[c])
            count = new_pos - pos + (1 if new_frac > 0 else 0)
            fids, starts, stops = self.orders.take(c, epoch, pos, count)
            lengths = stops - starts
            files = np.repeat(fids, lengths)
            within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            samples = np.repeat(starts, lengths) + within
            spans = np.tile([0.0, 1.0], (count, 1))
            spans[0, 0] = frac
            if new_frac > 0:
                spans[-1, 1] = new_frac
            sizes = self.orders.sizes_of(c, epoch, pos, count) * (spans[:, 1] - spans[:, 0])
            self._token_pieces.append((c, files, samples, spans, sizes))
        self.pos[c], self.frac[c] = new_pos, new_frac

    def _take(
        self, c: int, n: int, pieces: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], materialize: bool
    ) -> None:
        if n > 0:
            if materialize:
                pieces.append((c, *self.orders.take(c, int(self.epoch[c]), int(self.pos[c]), n)))
            self.pos[c] += n

    def _fill_samples(
        self,
        weights: np.ndarray,
        pieces: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
        materialize: bool,
    ) -> bool:
        """Sample mode: ``chunk_size`` samples split by largest remainder. False: the stream ended."""
        counts, carry = largest_remainder(weights, self.chunk_size, self.carry)
        sizes = self.orders.sizes
        if self.on_exhausted == "stop" and np.any(counts > sizes - self.pos):
            # the first chunk that cannot be filled is not emitted
            self.done = True
            return False
        pending = counts
        while True:
            shortfall = 0
            for comp in np.flatnonzero(pending).tolist():
                c = int(comp)
                want = int(pending[c])
                while want > 0:
                    avail = int(sizes[c] - self.pos[c])
                    if avail == 0:
                        if self.on_exhausted == "repeat":
                            self.epoch[c] += 1
                            self.pos[c] = 0
                            continue
                        self.exhausted[c] = True
                        shortfall += want
                        break
                    take = min(want, avail)
                    self._take(c, take, pieces, materialize)
                    want -= take
            if shortfall == 0:
                break
            rest = self._weights(self.next_index)
            if rest.sum() <= 0:
                self.done = True  # everything is dry: emit what we have as the last chunk
                break
            pending, _ = largest_remainder(rest, shortfall, np.zeros_like(rest))
        self.carry = np.where(self.exhausted, 0.0, carry)
        return True

    def _fill_tokens(self, weights: np.ndarray, materialize: bool) -> bool:
        """Token mode: the chunk's token budget split by the weights, plus each component's carry;
        each quota is filled up to the nearest document boundary, or exactly by splitting a
        document longer than ``split_tokens`` and ``split_fraction`` of the budget. False: the stream
        ended."""
        orders = self.orders
        budget = self.token_budget(weights, self.next_index)
        split_above = max(self.split_tokens, budget * self.split_fraction)
        target = np.where(weights > 0, weights * budget + self.carry, 0.0)
        if self.on_exhausted == "stop":
            for c in np.flatnonzero(target > 0).tolist():
                left = float(orders.component_tokens()[c]) - self._cursor_tokens(c)
                if target[c] > left + 1e-6:
                    self.done = True  # the first chunk that cannot be filled is not emitted
                    return False
        taken = np.zeros_like(target)
        pending = target.copy()
        while True:
            shortfall = 0.0
            for c in np.flatnonzero(pending > 0).tolist():
                want = float(pending[c])
                while True:
                    new_pos, new_frac, got = orders.advance(
                        c, int(self.epoch[c]), int(self.pos[c]), float(self.frac[c]), want, split_above
                    )
                    self._move(c, new_pos, new_frac, materialize)
                    taken[c] += got
                    want -= got
                    if self.pos[c] < orders.sizes[c] or want <= 0:
                        break
                    if self.on_exhausted == "repeat":  # dry wanting more: the next epoch
                        self.epoch[c] += 1
                        self.pos[c] = 0
                        continue
                    self.exhausted[c] = True
                    shortfall += want
                    break
            if shortfall <= 0:
                break
            rest = self._weights(self.next_index)
            if rest.sum() <= 0:
                self.done = True  # everything is dry: emit what we have as the last chunk
                break
            pending = rest * shortfall
            target += pending
        if taken.sum() == 0 and not self.done:
            # every quota rounded to nothing: the rest of one document of the component owed
            # most, so that every chunk holds data
            active = np.flatnonzero(~self.exhausted & (weights > 0))
            c = int(active[np.argmax(target[active])])
            if self.pos[c] >= orders.sizes[c]:  # only "repeat" leaves a dry component active
                self.epoch[c] += 1
                self.pos[c] = 0
            new_pos, new_frac, got = orders.advance(
                c, int(self.epoch[c]), int(self.pos[c]), float(self.frac[c]), 0.0, at_least_one=True
            )
            self._move(c, new_pos, new_frac, materialize)
            taken[c] += got
        self.carry = np.where(self.exhausted, 0.0, target - taken)
        self.planned += float(taken.sum())
        return True

    def _cursor_tokens(self, c: int) -> float:
        return self.orders.position_tokens(c, int(self.epoch[c]), int(self.pos[c]), float(self.frac[c]))

    def skip(self) -> bool:
        """Advance past one chunk without materializing it; False once the stream has ended."""
        if self.done:
            return False
        before = self.next_index
        self.next_chunk(materialize=False)
        return self.next_index > before
