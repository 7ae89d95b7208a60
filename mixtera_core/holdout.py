"""A held-out evaluation split that training never sees, defined per sample by a seeded hash.

A sample belongs to the held-out part of ``Holdout(fraction, seed)`` exactly when the first 32
bits of ``md5(f"{seed}:{path}:{sample_index}")`` (the file's path as the catalog records it, the
sample's index in that file) are below ``fraction * 2**32``. Why this definition:

- **Per sample, not per file**: every domain (mixture key) gives up about ``fraction`` of its
  samples, also a domain that lives in one file.
- **No state**: nothing is stored or sampled; the split is a pure function of the sample's
  identity and the seed, computed inside DuckDB (``md5`` is the same in every DuckDB version and
  in Python's ``hashlib``), so a training job and an eval job built from the same query are
  complementary by construction, on a local catalog and through a server alike.
- **Stable**: registering more datasets, other queries or mixtures do not move a sample from one
  part to the other; re-registering the same files at the same paths gives the same split.
  Moving the files (another path) draws a new one.

Use :meth:`Holdout.train` and :meth:`Holdout.eval` on the query of a job::

    holdout = Holdout(0.01, seed=7)
    train_job = client.execute(holdout.train(query), mixture, ...)
    eval_job = client.execute(holdout.eval(query, "run-1-eval"), eval_mixture, ...)

or :func:`execute_split`, which builds both (the eval job static, over the training keys).

Cost: the index of a split job has more intervals (each held-out sample cuts a run of
consecutive samples in two): about ``2 * fraction`` intervals per sample.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import QueryError

if TYPE_CHECKING:
    from .query import Query

__all__ = ["Holdout", "PARTS", "execute_split"]

#: the two parts of a split: the samples training may use, and the held-out ones
PARTS = ("train", "eval")
_BITS = 32


@dataclass(frozen=True)
class Holdout:
    """``fraction`` (0 < fraction < 1) of every sample set held out for evaluation, chosen by ``seed``."""

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or not 0 < f < 1:
            raise QueryError(f"holdout fraction must be a number with 0 < fraction < 1, got {f!r}")
        if self.threshold == 0:
            raise QueryError(f"holdout fraction {f!r} is below 2**-32: nothing would be held out")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise QueryError(f"holdout seed must be an integer in [0, 2**63), got {s!r}")

    @property
    def threshold(self) -> int:
        """A sample is held out when the first 32 bits of its hash are below this."""
        return int(round(self.fraction * 2**_BITS))

    def _threshold_hex(self) -> str:
        # fixed-width lowercase hex compares like the number it spells
        return format(min(self.threshold, 2**_BITS - 1), "08x")

    def held_out(self, path: str, sample_index: int) -> bool:
        """Whether sample ``sample_index`` of the file at ``path`` is held out (the reference for the SQL)."""
        digest = hashlib.md5(f"{self.seed}:{path}:{int(sample_index)}".encode()).hexdigest()
        return digest[:8] < self._threshold_hex()

    def to_sql(self) -> tuple[str, list[Any]]:
        """A boolean SQL expression over the catalog's ``samples`` table: the sample is held out."""
        sql = (
            "substr(md5(concat(?::VARCHAR, ':', (SELECT f.path FROM files f WHERE f.id = samples.file_id), "
            "':', samples.sample_index::VARCHAR)), 1, 8) < ?::VARCHAR"
        )
        return sql, [str(self.seed), self._threshold_hex()]

    # ------------------------------------------------------------------ queries

    def train(self, query: Query) -> Query:
        """``query`` without the held-out samples (same job id)."""
        return query.with_split(self, "train")

    def eval(self, query: Query, job_id: str) -> Query:
        """The held-out samples of ``query``, as the query of job ``job_id`` (not the training job's)."""
        if job_id == query.job_id:
            raise QueryError(f"the eval job needs a job id of its own, not the training job's {job_id!r}")
        return query.with_split(self, "eval", job_id=job_id)

    def to_json(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": self.seed}

    @classmethod
    def from_json(cls, data: Any) -> Holdout:
        if not isinstance(data, dict) or set(data) - {"fraction", "seed"} or "fraction" not in data:
            raise QueryError(f"a holdout is {{'fraction': f, 'seed': s}}, got {data!r}")
        return cls(data["fraction"], data.get("seed", 0))


#: job options an eval job takes over from its training job (the rest: one stream, static, redistribute)
EVAL_SHARED_OPTIONS = (
    "tokenizer", "tokenizer_options", "seq_len", "seed", "chunk_size", "chunk_tokens", "add_bos", "add_eos",
    "text_field", "block_size", "token_estimate_samples",
)  # fmt: skip


def execute_split(
    client: Any,
    query: Query,
    mixture: Any,
    holdout: Holdout,
    *,
    eval_job_id: str | None = None,
    eval_mixture: Any = None,
    **options: Any,
) -> tuple[str, str]:
    """Build a training job without and an eval job with the held-out samples of ``query``.

    The training job is ``client.execute(holdout.train(query), mixture, **options)``. The eval job
    (``eval_job_id``, default ``<job id>-eval``) reads ``holdout.eval(query, ...)`` with a static
    mixture over the training job's keys (``eval_mixture``; default equal weights, so each domain
    gets as many eval tokens), the training job's tokenizer, ``seq_len``, seed and chunking, one
    stream (``dp_groups=1``, ``num_workers=1``) and ``on_exhausted="redistribute"`` (every held-out
    sample once). Returns ``(training job id, eval job id)``. Executing both again attaches to
    them; on a rank that does not own a local catalog both wait for rank 0's jobs.
    """
    train_id: str = client.execute(holdout.train(query), mixture, **options)
    keys = client.job(train_id).key_names
    weights = eval_mixture if eval_mixture is not None else {key: 1.0 / len(keys) for key in keys}
    shared = {k: v for k, v in options.items() if k in EVAL_SHARED_OPTIONS}
    eval_query = holdout.eval(query, eval_job_id or f"{query.job_id}-eval")
    eval_id: str = client.execute(eval_query, weights, on_exhausted="redistribute", **shared)
    return train_id, eval_id
