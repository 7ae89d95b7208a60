"""Deterministic chunk planning: the global chunk sequence of a job, by index arithmetic.

Chunk ``i`` is a pure function of (the index, the per-component cursors after chunk
``i - 1``, the weights in force at ``i``, the seed, ``i``). Every stream of a job runs its
own replica of the planner and materializes only the chunks assigned to it, so no
coordination, arrival order, time or pid can change what a rank sees.

**Sample order inside a component.** A component's intervals are cut into blocks of at
most ``block_size`` consecutive samples; each epoch visits the blocks in a seeded
permutation (seed, component key, epoch). A cursor is one integer, the position in the
current epoch's order, so cursors are tiny and restoring never replays chunks.

**Chunk size** is ``chunk_size`` samples, or (token mode, ``chunk_tokens``) as many samples as
make ``chunk_tokens`` tokens at the weights in force (from the calibrated tokens per sample),
so that a chunk lasts a fixed number of training steps however long the documents are.

**Quotas.** Each chunk splits its samples over the components by largest
remainder, and the fractional remainders are carried into the next chunk: over ``n``
chunks a component's count stays within one sample of ``weight * n * chunk_size``, so a
0.1% component is served every ~1000 samples rather than rounded away.

**Running dry** (``on_exhausted``): ``"stop"`` ends the stream before the first chunk
that cannot be filled; ``"redistribute"`` gives the shortfall to the components that
still have data, in proportion to their weights, until all are dry; ``"repeat"`` starts
the component's next epoch with a fresh seeded order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .index import ChunkerIndex
from .mixture_log import WeightsLog

ON_EXHAUSTED = ("stop", "redistribute", "repeat")
__all__ = ["ON_EXHAUSTED", "Chunk", "ChunkPlanner", "ComponentOrders", "WeightsLog", "largest_remainder"]


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *words])))


def stable_id(text: str) -> int:
    """A process-independent 32-bit id of a string (Python's hash() is randomized)."""
    return zlib.crc32(text.encode())


@dataclass
class Chunk:
    """One chunk: pieces ``(component, file_id, start, stop)`` in component-order."""

    index: int
    comps: np.ndarray
    file_ids: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

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

    def interleaved(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample arrays in the chunk's seeded interleave order (components mixed)."""
        comps, files, idx = self.samples()
        perm = _rng(seed, 1, self.index).permutation(len(comps))
        return comps[perm], files[perm], idx[perm]


class ComponentOrders:
    """Blocks of each component and their seeded order per epoch."""

    def __init__(self, index: ChunkerIndex, seed: int, block_size: int) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.index = index
        self.seed = seed
        self.block_size = block_size
        self.sizes = index.component_sizes().astype(np.int64)
        self.key_ids = [stable_id(k) for k in index.component_keys()]
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._orders: dict[int, tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _component_blocks(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if c not in self._blocks:
            fids, starts, stops = self.index.intervals(c)
            n = -(-(stops - starts) // self.block_size)  # blocks per interval
            first = np.repeat(starts, n)
            within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
            bstart = first + within * self.block_size
            bstop = np.minimum(bstart + self.block_size, np.repeat(stops, n))
            self._blocks[c] = (np.repeat(fids, n), bstart, bstop)
        return self._blocks[c]

    def _order(self, c: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cached = self._orders.get(c)
        if cached is None or cached[0] != epoch:
            fids, bstart, bstop = self._component_blocks(c)
            perm = _rng(self.seed, 2, self.key_ids[c], epoch).permutation(len(bstart))
            f, s, e = fids[perm], bstart[perm], bstop[perm]
            cum = np.concatenate(([0], np.cumsum(e - s)))
            cached = (epoch, f, s, e, cum)
            self._orders[c] = cached
        return cached[1:]

    def take(self, c: int, epoch: int, pos: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pieces covering positions ``[pos, pos + count)`` of component ``c``'s epoch order."""
        f, s, e, cum = self._order(c, epoch)
        lo = int(np.searchsorted(cum, pos, side="right")) - 1
        hi = int(np.searchsorted(cum, pos + count, side="left"))
        ps, pe, pf = s[lo:hi].copy(), e[lo:hi].copy(), f[lo:hi]
        ps[0] += pos - cum[lo]
        pe[-1] -= cum[hi] - (pos + count)
        return pf, ps, pe


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

    ``sample_scale`` converts the weights of the log into sample weights (token mode:
    ``1 / tokens_per_sample`` per component, so that weights hold in tokens).
    """

    def __init__(
        self,
        orders: ComponentOrders,
        log: WeightsLog,
        chunk_size: int,
        on_exhausted: str = "stop",
        sample_scale: np.ndarray | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        if on_exhausted not in ON_EXHAUSTED:
            raise ValueError(f"on_exhausted must be one of {ON_EXHAUSTED}, got {on_exhausted!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.orders = orders
        self.log = log
        self.chunk_size = chunk_size
        self.chunk_tokens = chunk_tokens
        self.on_exhausted = on_exhausted
        n = len(orders.sizes)
        self.sample_scale = np.ones(n) if sample_scale is None else np.asarray(sample_scale, dtype=np.float64)
        self.next_index = 0
        self.epoch = np.zeros(n, dtype=np.int64)
        self.pos = np.zeros(n, dtype=np.int64)
        self.carry = np.zeros(n, dtype=np.float64)
        self.exhausted = np.zeros(n, dtype=bool)
        self.done = False

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_index": self.next_index,
            "epoch": self.epoch.tolist(),
            "pos": self.pos.tolist(),
            "carry": self.carry.tolist(),
            "exhausted": self.exhausted.tolist(),
            "done": self.done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(self.orders.sizes)
        if len(state["pos"]) != n:
            raise ValueError(f"planner state is for {len(state['pos'])} components, this job has {n}")
        self.next_index = int(state["next_index"])
        self.epoch = np.asarray(state["epoch"], dtype=np.int64)
        self.pos = np.asarray(state["pos"], dtype=np.int64)
        self.carry = np.asarray(state["carry"], dtype=np.float64)
        self.exhausted = np.asarray(state["exhausted"], dtype=bool)
        self.done = bool(state["done"])

    # -------------------------------------------------------------- planning

    def _sample_weights(self, index: int) -> np.ndarray:
        w = self.log.at(index) * self.sample_scale
        w = np.where(self.exhausted, 0.0, w)
        total = w.sum()
        return w / total if total > 0 else w

    def _samples_in_chunk(self, sample_weights: np.ndarray) -> int:
        if self.chunk_tokens is None:
            return self.chunk_size
        tokens_per_sample = float((sample_weights / self.sample_scale).sum())  # at these weights
        return max(1, int(round(self.chunk_tokens / max(tokens_per_sample, 1e-9))))

    def next_chunk(self, materialize: bool = True) -> Chunk | None:
        """Plan the next chunk (advance cursors); None once the stream has ended."""
        if self.done:
            return None
        index = self.next_index
        weights = self._sample_weights(index)
        if weights.sum() <= 0:
            self.done = True
            return None
        counts, carry = largest_remainder(weights, self._samples_in_chunk(weights), self.carry)
        sizes = self.orders.sizes
        if self.on_exhausted == "stop" and np.any(counts > sizes - self.pos):
            # the first chunk that cannot be filled is not emitted
            self.done = True
            return None
        pieces: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
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
                    if materialize:
                        pieces.append((c, *self.orders.take(c, int(self.epoch[c]), int(self.pos[c]), take)))
                    self.pos[c] += take
                    want -= take
            if shortfall == 0:
                break
            rest = self._sample_weights(index)
            if rest.sum() <= 0:
                self.done = True  # everything is dry: emit what we have as the last chunk
                break
            pending, _ = largest_remainder(rest, shortfall, np.zeros_like(rest))
        self.carry = np.where(self.exhausted, 0.0, carry)
        self.next_index += 1
        if not materialize:
            return None
        if not pieces:
            return None
        comps = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in pieces])
        return Chunk(
            index,
            comps,
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]),
            np.concatenate([p[3] for p in pieces]),
        )

    def skip(self) -> bool:
        """Advance past one chunk without materializing it; False once the stream has ended."""
        if self.done:
            return False
        before = self.next_index
        self.next_chunk(materialize=False)
        return self.next_index > before
