"""PyTorch integration: a resumable ``IterableDataset`` and a ``DataLoader`` that checkpoints exactly.

This is the only module of ``mixtera_core`` that imports torch; nothing in the core
imports it, so the core keeps working without torch (``pip install 'mixtera[torch]'``; on
a CPU-only machine ``pip install torch==2.13.0`` first).

Typical use in a trainer::

    from mixtera_core.torch import MixteraDataLoader, MixteraDataset

    job = client.job("run-1")  # or MixteraDataset((client, "run-1"))
    dataset = MixteraDataset(job)
    loader = MixteraDataLoader(dataset, batch_size=8, num_workers=job.spec.num_workers)
    for step, batch in enumerate(loader):
        ...
        if step % 1000 == 0:
            torch.save({"model": ..., "data": loader.state_dict()}, path)

    # after a restart: a new dataset and loader, then
    loader.load_state_dict(torch.load(path)["data"])  # the next iteration continues exactly

**Topology.** A job is streamed by ``dp_groups x nodes_per_group x num_workers`` streams
(see :mod:`mixtera_core.streaming`). The dataset is the data of one (dp_group, node); each
DataLoader worker iterates one stream worker of it, so the DataLoader must have exactly
``job.spec.num_workers`` workers (``num_workers=0`` counts as one, in-process). Without
explicit ``dp_group``/``node``, an initialized ``torch.distributed`` gives ``dp_group =
rank`` and ``node = 0`` (and its world size must equal ``dp_groups``); that fits pure data
parallelism. With tensor or pipeline parallelism, ranks of one data-parallel replica must
see the same data: pass ``dp_group`` (the data-parallel rank) and ``node`` (the rank
within the replica, ``< nodes_per_group``) explicitly. Without torch.distributed both are 0.
Create the dataset after ``init_process_group``.

**Items.** Token mode, in one of two conventions (``convention=``), each tensor a
``LongTensor[seq_len]`` cut from a packed sequence of ``seq_len + 1`` tokens:

- ``"shifted"`` (default; plain torch, Lightning): ``input_ids`` (tokens ``0..seq_len-1``),
  ``targets`` (tokens ``1..seq_len``: the next token of every input, already shifted, so the
  loss is ``cross_entropy(logits, targets)`` without shifting again) and ``key_ids`` (the
  mixture key id of every *target*).
- ``"causal_lm"`` (Hugging Face ``*ForCausalLM`` models, which shift their ``labels``
  themselves): ``input_ids`` (tokens ``0..seq_len-1``), ``labels`` (the same tokens: the model
  predicts ``labels[1:]`` from ``input_ids[:-1]``) and ``key_ids`` (the key of every token).
  The last token of each packed sequence is not used in this convention.

The shifted targets are deliberately not called ``labels``: a Hugging Face model that got them
as ``labels`` would shift them once more and silently train on the token after next. (Before
this convention existed the shifted targets were named ``labels``; reading ``batch["labels"]``
of a shifted batch raises a ``KeyError`` that says so.)
Sample mode: ``text`` (``output="text"``) or ``record`` (``output="record"``), ``key``
(the mixture key as a string) and ``key_id``. Both modes add ``chunk_index`` (a scalar
``LongTensor``: the global chunk the item came from; the feedback helpers send its maximum
as the ``position`` of a step, which makes mixture changes replayable — see
:meth:`MixteraClient.feedback`). Every item also carries ``mixtera_worker``
(its stream worker) and ``mixtera_state`` (that stream's state right after the item);
:meth:`MixteraDataset.collate` keeps those of the batch's last item and
:class:`MixteraDataLoader` strips them before the batch reaches the trainer.

**Exact resume.** torch's DataLoader (``in_order=True``, its default) takes batches
round-robin from its workers 0, 1, ..., W-1, skipping workers that have run out. After a
restart it starts again at worker 0, while the uninterrupted run would have continued at
the worker after the one that produced the last batch. The loader therefore records the
state of every stream worker after the last batch it handed out, and the stream worker
the next batch would come from (``next_worker``); after a restore DataLoader worker ``i``
serves stream worker ``(i + next_worker) mod W``, so the round-robin continues where it
stopped. Workers that had run out before the checkpoint restore at their end and are
skipped at once, in the same cyclic order, so the resumed loader yields exactly the
batches of the uninterrupted one (tested, also near the end of streams of different
lengths). Limits: the batch order is only reproducible with ``in_order=True``
(``in_order=False`` or a restarted crashed worker changes the order of batches, before
or after a restore). What does not depend on the order holds always: every stream resumes from its own recorded position, so no sample
(token) is ever lost or repeated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

try:
    import torch
    import torch.utils.data as tud
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "mixtera_core.torch needs PyTorch: pip install 'mixtera[torch]' "
        "(on a CPU-only machine run `pip install torch==2.13.0` first)"
    ) from e

from .errors import MixteraError
from .job import Job
from .streaming import JobStream, StreamSample, TokenSequence, load_tokenizer

__all__ = ["MixteraBatch", "MixteraDataLoader", "MixteraDataset", "MixteraEvalDataset"]

WORKER_KEY = "mixtera_worker"
STATE_KEY = "mixtera_state"
#: label value of padding (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)
IGNORE_INDEX = -100
#: item layouts of token mode (see the module docstring)
CONVENTIONS = ("shifted", "causal_lm")


class MixteraBatch(dict):  # type: ignore[type-arg]
    """A batch (a plain ``dict`` of tensors) whose missing ``labels`` / ``targets`` say why.

    A shifted batch has ``targets`` and no ``labels`` (and a causal-LM one the reverse); code
    written for the other convention, or for items before ``targets`` existed, gets a
    ``KeyError`` naming the convention to use instead of a bare key name.
    """

    def __missing__(self, key: Any) -> Any:
        if key == "labels" and "targets" in self:
            raise KeyError(
                "'labels': this batch is in the 'shifted' convention, whose next-token targets are "
                "batch['targets'] (they were called 'labels' before); for a Hugging Face model that "
                "shifts labels itself use MixteraDataset(..., convention='causal_lm')"
            )
        if key == "targets" and "labels" in self:
            raise KeyError(
                "'targets': this batch is in the 'causal_lm' convention (unshifted 'labels', the model "
                "shifts them); use MixteraDataset(..., convention='shifted') for shifted targets"
            )
        raise KeyError(key)


def token_item(
    seq: TokenSequence, convention: str, seq_len: int, pad_id: Callable[[], int]
) -> dict[str, torch.Tensor]:
    """The tensors of one packed sequence in ``convention``; a short final sequence (a stream with
    ``drop_last=False``) is padded to ``seq_len`` (inputs with ``pad_id()``, labels/targets with
    ``IGNORE_INDEX``, key ids with ``-1``)."""
    tokens = torch.from_numpy(seq.tokens)
    keys = torch.from_numpy(seq.key_ids)
    if convention == "shifted":
        out = {"input_ids": tokens[:-1], "targets": tokens[1:], "key_ids": keys[1:]}
    else:  # causal_lm: the model shifts; the last token of the sequence is left out
        n = min(len(tokens), seq_len)
        out = {"input_ids": tokens[:n], "labels": tokens[:n].clone(), "key_ids": keys[:n]}
    short = seq_len - len(out["input_ids"])
    if short > 0:
        fill = {"input_ids": pad_id(), "targets": IGNORE_INDEX, "labels": IGNORE_INDEX, "key_ids": -1}
        out = {k: torch.cat([v, torch.full((short,), fill[k], dtype=torch.long)]) for k, v in out.items()}
    return out


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise MixteraError(
            f"convention must be one of {', '.join(CONVENTIONS)} ('shifted': input_ids/targets for plain "
            f"torch and Lightning; 'causal_lm': unshifted labels for Hugging Face models), got {convention!r}"
        )


def _resolve_job(job: Any) -> Job:
    if isinstance(job, Job):
        return job
    if isinstance(job, tuple) and len(job) == 2:
        client, job_id = job
        resolved = client.job(job_id)
        if not isinstance(resolved, Job):
            raise MixteraError(f"client.job({job_id!r}) returned {type(resolved).__name__}, not a Job")
        return resolved
    raise MixteraError(
        f"MixteraDataset needs a Job (client.job(job_id)) or a (client, job_id) pair, got {type(job).__name__}"
    )


def _distributed_topology(job: Job) -> tuple[int, int] | None:
    """(dp_group, node) from an initialized torch.distributed, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != job.spec.dp_groups:
        raise MixteraError(
            f"torch.distributed has world size {world} but job {job.spec.job_id!r} has dp_groups="
            f"{job.spec.dp_groups}; execute the job with dp_groups={world}, or (tensor/pipeline "
            f"parallelism) pass dp_group= and node= to MixteraDataset explicitly"
        )
    return rank, 0


class MixteraDataset(tud.IterableDataset[dict[str, Any]]):
    """The stream of one (dp_group, node) of a job, one stream worker per DataLoader worker.

    Holds the :class:`~mixtera_core.job.Job` (self-contained, picklable) and never a client
    or database handle, so DataLoader workers receive it whether they fork or spawn.

    ``output`` / ``decode`` (sample mode) and ``prefetch`` / ``drop_last`` are passed to
    :class:`~mixtera_core.streaming.JobStream`. With a dynamic mixture every worker's copy of
    the job follows the owner's mixture log (the job directory of a local catalog, or the
    server) and waits, at most ``mixture_timeout`` seconds (default ``MIXTERA_MIXTURE_TIMEOUT``
    or 600), for the feedback that decides a chunk's mixture before planning it.
    ``convention`` (token mode): ``"shifted"`` (``input_ids``, ``targets``, ``key_ids``) or
    ``"causal_lm"`` (``input_ids``, unshifted ``labels``, ``key_ids``); see the module docstring.
    With ``drop_last=False`` in token mode a stream's final, shorter sequence is padded to
    ``seq_len``: ``input_ids`` with the tokenizer's EOS id (0 without one), ``targets`` /
    ``labels`` with ``-100`` and ``key_ids`` with ``-1``.

    In-process use (no DataLoader workers) can checkpoint with :meth:`state_dict` /
    :meth:`load_state_dict`; with DataLoader workers use :class:`MixteraDataLoader`'s,
    since the workers' progress is not visible to this object in the main process.
    """

    def __init__(
        self,
        job: Job | tuple[Any, str],
        dp_group: int | None = None,
        node: int | None = None,
        *,
        output: str = "text",
        decode: str | None = None,
        prefetch: int = 2,
        drop_last: bool = True,
        mixture_timeout: float | None = None,
        convention: str = "shifted",
    ) -> None:
        super().__init__()
        _check_convention(convention)
        self.convention = convention
        self.job = _resolve_job(job)
        spec = self.job.spec
        inferred = _distributed_topology(self.job) if dp_group is None or node is None else None
        if dp_group is None:
            dp_group = inferred[0] if inferred else 0
        if node is None:
            node = inferred[1] if inferred else 0
        for name, v, n, option in (
            ("dp_group", dp_group, spec.dp_groups, "dp_groups"),
            ("node", node, spec.nodes_per_group, "nodes_per_group"),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
                raise MixteraError(
                    f"{name} {v!r} is out of range for job {spec.job_id!r}, which has {option}={n} "
                    f"(valid: 0..{n - 1})"
                )
        self.dp_group, self.node = int(dp_group), int(node)
        self.output, self.decode = output, decode
        self.prefetch, self.drop_last = prefetch, drop_last
        self.mixture_timeout = mixture_timeout
        # stream topology: the job's, or that of loaded states (e.g. made by streaming.reshard)
        self.dp_groups, self.num_streams = spec.dp_groups, spec.num_workers
        # resume point: stream worker -> state, and the rotation DataLoader worker -> stream worker
        self._states: dict[int, dict[str, Any]] = {}
        self._next_worker = 0
        self._pad_id: int | None = None
        self._make_stream(0)  # validates output/decode now rather than in a worker

    # -------------------------------------------------------------- streams

    def _make_stream(self, worker: int) -> JobStream:
        return JobStream(
            self.job,
            self.dp_group,
            self.node,
            worker,
            prefetch=self.prefetch,
            output=self.output,
            decode=self.decode,
            dp_groups=self.dp_groups,
            num_workers=self.num_streams,
            drop_last=self.drop_last,
            mixture_timeout=self.mixture_timeout,
        )

    def check_num_workers(self, num_workers: int) -> None:
        """Raise unless a DataLoader with ``num_workers`` workers fits this job's streams."""
        if max(1, num_workers) != self.num_streams:
            raise MixteraError(
                f"the DataLoader has num_workers={num_workers} but job {self.job.spec.job_id!r} is streamed "
                f"by num_workers={self.num_streams} stream(s) per node; use "
                f"num_workers={self.num_streams if self.num_streams > 1 else 0} in the DataLoader "
                f"(0 or 1 for a single stream), or execute the job with num_workers={max(1, num_workers)}"
            )

    def _stream_worker(self) -> int:
        info = tud.get_worker_info()
        loader_workers = 0 if info is None else info.num_workers
        self.check_num_workers(loader_workers)
        loader_worker = 0 if info is None else info.id
        return (loader_worker + self._next_worker) % self.num_streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = self._stream_worker()
        stream = self._make_stream(worker)
        state = self._states.get(worker)
        if state is not None:
            stream.load_state_dict(state)
        token_mode = self.job.spec.token_mode
        for item in stream:
            out = self._token_item(item) if token_mode else self._sample_item(item)
            state = stream.state_dict()
            self._states[worker] = state  # in-process use: dataset.state_dict() follows the stream
            out[WORKER_KEY] = worker
            out[STATE_KEY] = state
            yield out

    def _sample_item(self, item: StreamSample) -> dict[str, Any]:
        return {
            self.output: item.data,
            "key": item.key,
            "key_id": item.key_id,
            "chunk_index": torch.tensor(item.chunk, dtype=torch.long),
        }

    def _token_item(self, item: TokenSequence) -> dict[str, Any]:
        out: dict[str, Any] = token_item(
            item, self.convention, int(self.job.spec.seq_len or 0), self._padding_id
        )
        out["chunk_index"] = torch.tensor(item.chunk, dtype=torch.long)
        return out

    def _padding_id(self) -> int:
        if self._pad_id is None:
            assert self.job.spec.tokenizer is not None
            eos = load_tokenizer(self.job.spec.tokenizer).eos_id
            self._pad_id = 0 if eos is None else int(eos)
        return self._pad_id

    # -------------------------------------------------------------- batches

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch: tensors stacked, everything else as lists; the last item's worker and state."""
        if not items:
            raise MixteraError("cannot collate an empty batch")
        batch: dict[str, Any] = MixteraBatch()
        for key, first in items[0].items():
            if key in (WORKER_KEY, STATE_KEY):
                continue
            values = [it[key] for it in items]
            batch[key] = torch.stack(values) if isinstance(first, torch.Tensor) else values
        last = items[-1]
        if WORKER_KEY in last:
            batch[WORKER_KEY] = last[WORKER_KEY]
            batch[STATE_KEY] = last[STATE_KEY]
        return batch

    # -------------------------------------------------------------- state

    def _fresh_state(self, worker: int) -> dict[str, Any]:
        return JobStream(
            self.job,
            self.dp_group,
            self.node,
            worker,
            dp_groups=self.dp_groups,
            num_workers=self.num_streams,
        ).state_dict()

    def _full_state(
        self, states: dict[int, dict[str, Any]], next_worker: int, batches: int
    ) -> dict[str, Any]:
        return {
            "job_id": self.job.spec.job_id,
            "dp_group": self.dp_group,
            "node": self.node,
            "num_workers": self.num_streams,
            "workers": {
                w: states[w] if w in states else self._fresh_state(w) for w in range(self.num_streams)
            },
            "next_worker": next_worker,
            "batches": batches,
        }

    def state_dict(self) -> dict[str, Any]:
        """Position of the in-process stream (no DataLoader workers) after the last item it produced.

        Same layout as :meth:`MixteraDataLoader.state_dict` (``batches`` counts nothing here).
        """
        return self._full_state(self._states, self._next_worker, 0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (this class's or :class:`MixteraDataLoader`'s) on the next iteration.

        Every stream worker restores its recorded position; DataLoader worker ``i`` serves
        stream worker ``(i + state["next_worker"]) mod num_workers``. The worker states may
        also come from :func:`mixtera_core.streaming.reshard` (a new number of workers).
        """
        spec = self.job.spec
        if state.get("job_id") != spec.job_id:
            raise MixteraError(f"state is for job {state.get('job_id')!r}, not {spec.job_id!r}")
        if int(state["dp_group"]) != self.dp_group:
            raise MixteraError(
                f"state is for dp_group {state['dp_group']}, this dataset is dp_group {self.dp_group}; "
                f"restore each rank's own state, or use mixtera_core.streaming.reshard() for a new topology"
            )
        workers = {int(w): st for w, st in state["workers"].items()}  # JSON turns the keys into strings
        topology = {(int(st["dp_groups"]), int(st["num_workers"])) for st in workers.values()}
        if len(topology) > 1:
            raise MixteraError(f"the worker states mix several topologies: {sorted(topology)}")
        dp_groups, num_streams = topology.pop() if topology else (self.dp_groups, self.num_streams)
        for w, st in workers.items():
            if not 0 <= w < num_streams or int(st["worker"]) != w or int(st["dp_group"]) != self.dp_group:
                raise MixteraError(
                    f"state of stream worker {w} is for dp_group {st['dp_group']} worker {st['worker']} "
                    f"of {num_streams}; it does not belong to dp_group {self.dp_group}"
                )
        self.dp_groups, self.num_streams = dp_groups, num_streams
        self._states = workers
        self._next_worker = int(state.get("next_worker", 0)) % num_streams


class MixteraEvalDataset(tud.IterableDataset[dict[str, Any]]):
    """A fixed evaluation set: the first ``limit`` sequences of a (static, token-mode) job, the
    same ones on every iteration.

    Each iteration starts the job's streams of ``dp_group`` afresh and yields their sequences
    item by item in turn (stream worker 0, 1, ..., 0, ...) until ``limit`` (None: until the job
    ends; build eval jobs with ``on_exhausted="stop"`` or ``"redistribute"``). Nothing is
    checkpointed: evaluating twice evaluates the same sequences. Items are those of
    :class:`MixteraDataset` in ``convention`` (without ``chunk_index``).

    ``shard=(rank, world)`` keeps sequences ``rank, rank + world, ...`` of that set (each rank of
    a data-parallel run evaluates its share of the same set); leave it None when the trainer
    shards an iterable dataset itself (Accelerate under the HF Trainer). In DataLoader workers
    only worker 0 reads; the others yield nothing, so the set does not depend on their number.
    """

    def __init__(
        self,
        job: Job | tuple[Any, str],
        limit: int | None = None,
        *,
        dp_group: int = 0,
        convention: str = "shifted",
        shard: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        _check_convention(convention)
        self.job = _resolve_job(job)
        spec = self.job.spec
        if not spec.token_mode:
            raise MixteraError(f"job {spec.job_id!r} streams samples; an eval set needs a token-mode job")
        if spec.dynamic:
            raise MixteraError(
                f"job {spec.job_id!r} has a mixture that changes with feedback or steps; an eval set needs a "
                f"fixed one (e.g. StaticMixture over the training keys)"
            )
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise MixteraError(f"limit must be a positive number of sequences or None, got {limit!r}")
        if not 0 <= dp_group < spec.dp_groups:
            raise MixteraError(f"dp_group {dp_group} is out of range for job {spec.job_id!r}")
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            raise MixteraError(f"shard is (rank, world) with 0 <= rank < world, got {shard!r}")
        self.limit, self.dp_group, self.convention, self.shard = limit, dp_group, convention, shard
        self._pad_id: int | None = None

    def _padding_id(self) -> int:
        if self._pad_id is None:
            assert self.job.spec.tokenizer is not None
            eos = load_tokenizer(self.job.spec.tokenizer).eos_id
            self._pad_id = 0 if eos is None else int(eos)
        return self._pad_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = tud.get_worker_info()
        if info is not None and info.id != 0:
            return
        spec = self.job.spec
        rank, world = self.shard or (0, 1)
        with contextlib.ExitStack() as stack:
            streams = []
            for w in range(spec.num_workers):
                it = iter(JobStream(self.job, self.dp_group, 0, w))
                stack.callback(getattr(it, "close", lambda: None))
                streams.append(it)
            n = 0
            while streams and (self.limit is None or n < self.limit):
                for it in list(streams):
                    if self.limit is not None and n >= self.limit:
                        break
                    seq = next(it, None)
                    if seq is None:
                        streams.remove(it)
                        continue
                    if n % world == rank:
                        yield token_item(seq, self.convention, int(spec.seq_len or 0), self._padding_id)
                    n += 1


class MixteraDataLoader(tud.DataLoader[dict[str, Any]]):
    """A ``torch.utils.data.DataLoader`` over a :class:`MixteraDataset` with exact checkpoints.

    ``num_workers`` must equal the job's ``num_workers`` (0 or 1 for a single stream). Extra
    keyword arguments go to the DataLoader (``pin_memory``, ``prefetch_factor``, ...);
    ``collate_fn`` is the dataset's and ``persistent_workers`` is not supported (each
    iteration hands the workers the loader's state when they start).

    Iterating again continues after the last batch handed out, like a
    :class:`~mixtera_core.streaming.JobStream`. :meth:`state_dict` is small (one stream
    position per worker) and JSON-able; :meth:`load_state_dict` on a new loader (after a
    restart) makes its next iteration yield exactly the batches the old one would have.
    """

    dataset: MixteraDataset

    def __init__(self, dataset: MixteraDataset, batch_size: int, num_workers: int = 0, **kwargs: Any) -> None:
        if not isinstance(dataset, MixteraDataset):
            raise MixteraError(f"MixteraDataLoader needs a MixteraDataset, got {type(dataset).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise MixteraError(f"batch_size must be a positive integer, got {batch_size!r}")
        if kwargs.get("collate_fn") is not None:
            raise MixteraError("MixteraDataLoader uses MixteraDataset.collate; do not pass collate_fn")
        if kwargs.get("persistent_workers"):
            raise MixteraError(
                "MixteraDataLoader does not support persistent_workers=True: every iteration starts the "
                "workers from the loader's state (start-up is cheap: a Job is small)"
            )
        kwargs.pop("collate_fn", None)
        dataset.check_num_workers(num_workers)
        super().__init__(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=dataset.collate, **kwargs
        )
        self._states: dict[int, dict[str, Any]] = dict(dataset._states)
        self._next_worker = dataset._next_worker
        self._batches = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        ds = self.dataset
        ds.check_num_workers(self.num_workers)
        # hand the resume point to the dataset before torch forks/spawns the workers
        ds._states = dict(self._states)
        ds._next_worker = self._next_worker
        for batch in super().__iter__():
            worker = batch.pop(WORKER_KEY)
            self._states[worker] = batch.pop(STATE_KEY)
            self._next_worker = (worker + 1) % ds.num_streams
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"job_id", "dp_group", "node", "num_workers", "workers": {stream worker: state},
        "next_worker", "batches"}`` after the last batch handed out."""
        return self.dataset._full_state(self._states, self._next_worker, self._batches)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue exactly after the batches ``state`` had handed out."""
        self.dataset.load_state_dict(state)
        self.dataset.check_num_workers(self.num_workers)
        self._states = dict(self.dataset._states)
        self._next_worker = self.dataset._next_worker
        self._batches = int(state.get("batches", 0))
