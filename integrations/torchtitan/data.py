"""Mixtera batches in torchtitan's shape, with exact resume (torch only; no torchtitan import).

:class:`TokenBatchLoader` is what every torchtitan rank iterates: batches
``({"input": LongTensor[B, L]}, labels LongTensor[B, L])`` (plus ``"positions"`` with
``document_positions``), cut from the token-mode stream(s) of the rank's data-parallel
group. It has torchtitan's dataloader protocol (``__iter__``, ``state_dict``,
``load_state_dict``) on its own; :class:`~mixtera_integrations.torchtitan.trainer.MixteraDataLoader`
adds torchtitan's ``Configurable`` build on top.

**Topology.** torchtitan gives the dataloader its data-parallel rank and degree (the
``batch`` mesh: ``dp_replicate x dp_shard``); the job has ``dp_groups = dp degree`` and
chunk ``i`` belongs to dp_group ``i mod dp_groups``. Ranks that share a dp rank
(tensor-, pipeline- and context-parallel peers) must see the same data: they are the
*nodes* of that group, numbered in global-rank order (:func:`map_ranks`), and the job has
``nodes_per_group = world size / dp degree``.

**Streams.** Each rank reads the job's ``num_workers`` streams of its (group, node) in this
process (every stream prefetches and tokenizes in background threads) and takes
sequences from them round-robin, one sequence at a time; nothing is read ahead of the
training loop's ``next()`` beyond the streams' own prefetch, so the state after a batch
is exact.

**State** (torchtitan keys it per dp rank, as its own dataloaders do)::

    {"dp_rank_<r>": JSON of {"job_id", "dp_group", "dp_groups", "num_workers",
                             "next_worker", "batches", "streams": [stream state, ...]},
     "world_size": dp degree,
     "mixtera_job": JSON of client.checkpoint(job)}   # global rank 0, dynamic mixtures only

Stream states are stored with ``node = 0``, so the copies that tensor/pipeline peers write
under the same key are identical. Restoring regenerates one chunk per stream and
continues exactly after the last batch handed out; ``mixtera_job`` restores the mixture
log and the mixing algorithm's state (rank 0 restores it, then every rank waits at a
barrier before reading on).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("mixtera_integrations.torchtitan needs torch: pip install 'mixtera[torchtitan]'") from e

import numpy as np

from mixtera_core.client import MixteraClient
from mixtera_core.errors import MixteraError
from mixtera_core.job import Job
from mixtera_core.mixture import DynamicMixture, ScheduleMixture
from mixtera_core.streaming import JobStream, TokenSequence, load_tokenizer

from .config import MixteraConfig, MixtureSpec, SpecError, execute_options, load_spec
from .feedback import encode_labels

__all__ = [
    "MixteraSession",
    "TokenBatchLoader",
    "connect",
    "document_positions",
    "map_ranks",
    "rank_topology",
]

logger = logging.getLogger(__name__)

#: key of the job-level state (mixture log, algorithm state) in rank 0's dataloader state
JOB_STATE_KEY = "mixtera_job"


# ---------------------------------------------------------------------------- topology


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def map_ranks(dp_ranks: Sequence[int], dp_world_size: int) -> tuple[int, list[int]]:
    """``(nodes_per_group, node of every global rank)`` from the dp rank of every global rank.

    ``dp_ranks[g]`` is the data-parallel rank of global rank ``g``. Ranks with the same dp
    rank form one Mixtera dp_group; inside it they are nodes ``0, 1, ...`` in global-rank
    order. Every dp rank must occur, and equally often.
    """
    counts = Counter(int(r) for r in dp_ranks)
    if set(counts) != set(range(dp_world_size)):
        raise MixteraError(
            f"the ranks' data-parallel ranks {sorted(counts)} do not cover 0..{dp_world_size - 1} "
            f"(dp degree {dp_world_size})"
        )
    sizes = set(counts.values())
    if len(sizes) != 1:
        raise MixteraError(f"data-parallel ranks are not equally populated: {dict(sorted(counts.items()))}")
    seen: Counter[int] = Counter()
    nodes = []
    for r in dp_ranks:
        nodes.append(seen[int(r)])
        seen[int(r)] += 1
    return sizes.pop(), nodes


def rank_topology(dp_rank: int, dp_world_size: int) -> tuple[int, int]:
    """``(nodes_per_group, node)`` of this process (gathers every rank's dp rank when needed)."""
    if not 0 <= dp_rank < dp_world_size:
        raise MixteraError(f"dp_rank {dp_rank} is out of range for dp degree {dp_world_size}")
    rank, world = _world()
    if world == 1:
        return 1, 0  # one process (it may stand in for any dp rank: tests, debugging)
    if world % dp_world_size:
        raise MixteraError(f"world size {world} is not a multiple of the dp degree {dp_world_size}")
    if world == dp_world_size:
        return 1, 0
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, dp_rank)
    nodes, node_of = map_ranks(gathered, dp_world_size)
    return nodes, node_of[rank]


def _rank0_first(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and broadcast its result (or its error) to every rank."""
    import torch.distributed as dist

    rank, world = _world()
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", f"{type(e).__name__}: {e}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise MixteraError(f"rank 0 failed to prepare the Mixtera job: {value}")
    return value


# ---------------------------------------------------------------------------- session


@dataclass
class MixteraSession:
    """The job a rank streams, and how it opens its streams.

    ``client`` is None on ranks > 0 of a multi-process run on a local catalog (only rank 0
    opens the catalog; the others stream from a copy of the job).
    """

    job: Job
    client: Any
    dp_rank: int
    dp_world_size: int
    node: int = 0
    nodes_per_group: int = 1
    rank: int = 0
    world_size: int = 1
    #: the client was opened by :func:`connect` (and is closed with the loader)
    owns_client: bool = False

    @property
    def job_id(self) -> str:
        return self.job.spec.job_id

    @property
    def dynamic(self) -> bool:
        return isinstance(self.job.mixture, DynamicMixture)

    @property
    def scheduled(self) -> bool:
        return isinstance(self.job.mixture, ScheduleMixture) and not self.job.spec.samples_per_step

    def open_stream(self, worker: int, state: dict[str, Any] | None = None) -> JobStream:
        """Stream ``worker`` of this rank's (dp_group, node), optionally restored to ``state``."""
        if self.client is not None:
            return self.client.stream(self.job_id, self.dp_rank, self.node, worker, state=state)
        stream = JobStream(self.job, self.dp_rank, self.node, worker)
        if state is not None:
            stream.load_state_dict(state)
        return stream


def connect(
    section: MixteraConfig,
    *,
    dp_rank: int,
    dp_world_size: int,
    seq_len: int,
    hf_assets_path: str | None = None,
    spec: MixtureSpec | None = None,
) -> MixteraSession:
    """Open (or attach to) the job of a ``[mixtera]`` section on this rank.

    Rank 0 executes the job first (a new job is planned once); the other ranks then attach
    to it (executing the same spec again is a no-op that checks their spec is the same).
    Collective under torch.distributed: every rank must call it.
    """
    section.validate()
    spec = spec if spec is not None else load_spec(section.spec)
    query = spec.query(section.job_id or None)
    rank, world = _world()
    nodes_per_group, node = rank_topology(dp_rank, dp_world_size)
    options = execute_options(
        section,
        spec,
        seq_len=seq_len,
        dp_groups=dp_world_size,
        nodes_per_group=nodes_per_group,
        hf_assets_path=hf_assets_path,
    )
    topology = {
        "dp_rank": dp_rank,
        "dp_world_size": dp_world_size,
        "node": node,
        "nodes_per_group": nodes_per_group,
        "rank": rank,
        "world_size": world,
    }
    if section.server:
        host, port = section.address()
        client = MixteraClient.remote(
            host,
            port,
            token=section.auth_token(),
            tls_ca=section.tls_ca or None,
            ship_samples=section.ship_samples,
        )
        job_id = _rank0_first(lambda: client.execute(query, spec.mixture, **options))
        if rank != 0:
            client.execute(query, spec.mixture, **options)  # attaches; fails if this rank's spec differs
        return MixteraSession(client.job(job_id), client, owns_client=True, **topology)
    central = spec.dynamic or (
        isinstance(spec.mixture, ScheduleMixture) and not spec.options.get("samples_per_step")
    )
    if world > 1 and central:
        kind = "dynamic mixture" if spec.dynamic else "schedule without samples_per_step"
        raise SpecError(
            f"{spec.source}: a {kind} with {world} ranks needs a mixtera-server ([mixtera] server = host:port): "
            f"with a local catalog (db) only rank 0 sees the mixture changes, the other ranks plan from a copy"
        )
    if world == 1:
        local_client = MixteraClient.local(section.db)
        job_id = local_client.execute(query, spec.mixture, **options)
        return MixteraSession(local_client.job(job_id), local_client, owns_client=True, **topology)
    local: dict[str, Any] = {}

    def build() -> Job:
        local["client"] = MixteraClient.local(section.db)
        job_id = local["client"].execute(query, spec.mixture, **options)
        job: Job = local["client"].job(job_id)
        return job

    job = _rank0_first(build)  # the other ranks stream from a copy of the job: no catalog handle
    return MixteraSession(job, local.get("client"), owns_client=True, **topology)


# ---------------------------------------------------------------------------- batches


def document_positions(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Per-document positions: 0 at the start of a sequence and after every EOS, else +1."""
    length = input_ids.shape[-1]
    idx = torch.arange(length, dtype=torch.long).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[..., 0] = True
    starts[..., 1:] = input_ids[..., :-1] == eos_id
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - last_start


class TokenBatchLoader:
    """The batches of one rank of a torchtitan job; see the module docstring.

    ``session`` opens the rank's streams; ``encode_key_ids`` (switched on by the trainer
    when it sends feedback) puts every label's mixture key id into its high bits
    (:func:`~mixtera_integrations.torchtitan.feedback.encode_labels`).
    """

    def __init__(
        self,
        session: MixteraSession,
        *,
        local_batch_size: int,
        document_positions: bool = False,
        encode_key_ids: bool = False,
    ) -> None:
        job = session.job
        spec = job.spec
        if not spec.token_mode:
            raise MixteraError(
                f"job {spec.job_id!r} is in sample mode; torchtitan needs tokens: execute it with a tokenizer "
                f"and seq_len"
            )
        if spec.dp_groups != session.dp_world_size:
            raise MixteraError(
                f"job {spec.job_id!r} has dp_groups={spec.dp_groups} but torchtitan's dp degree is "
                f"{session.dp_world_size}; use a job executed for this dp degree"
            )
        if not isinstance(local_batch_size, int) or local_batch_size < 1:
            raise MixteraError(f"local_batch_size must be a positive integer, got {local_batch_size!r}")
        self.session = session
        self.job = job
        self.client = session.client
        self.job_id = spec.job_id
        self.dp_rank, self.dp_world_size, self.node = session.dp_rank, session.dp_world_size, session.node
        self.batch_size = local_batch_size
        self.num_workers = spec.num_workers
        self.seq_len = int(spec.seq_len or 0)
        self.encode_key_ids = encode_key_ids
        self._eos: int | None = None
        if document_positions:
            assert spec.tokenizer is not None
            eos = load_tokenizer(spec.tokenizer).eos_id
            if eos is None or not spec.add_eos:
                raise MixteraError(
                    f"document_positions needs documents that end in EOS: the tokenizer of job {spec.job_id!r} "
                    f"has {'no EOS token' if eos is None else 'EOS'} and add_eos={spec.add_eos}"
                )
            self._eos = int(eos)
        self._streams: list[JobStream] | None = None
        self._iters: list[Iterator[TokenSequence]] = []
        self._exhausted: set[int] = set()
        self._pending: dict[int, dict[str, Any]] = {}
        self._next_worker = 0
        self._batches = 0
        #: highest (global) chunk index of the sequences handed out by this loader (-1: none/unknown)
        self.consumed_chunk = -1

    @property
    def key_names(self) -> list[str]:
        return self.job.key_names

    # ------------------------------------------------------------------ iteration

    def _open(self) -> None:
        self._streams = [self.session.open_stream(w, self._pending.get(w)) for w in range(self.num_workers)]
        self._iters = [iter(s) for s in self._streams]
        self._exhausted = set()
        self._pending = {}

    def _drop_streams(self) -> None:
        """Stop the streams' background readers, keeping their positions for state_dict()."""
        if self._streams is not None:
            self._pending = {w: s.state_dict() for w, s in enumerate(self._streams)}
        for it in self._iters:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self._streams = None
        self._iters = []
        self._exhausted = set()

    def close(self) -> None:
        """Stop reading; a client that :func:`connect` opened is closed too (it reports the
        delivered counts to the job). ``state_dict()`` still works, and iterating reopens."""
        self._drop_streams()
        if self.session.owns_client and self.client is not None:
            self.client.close()

    def _next_sequence(self) -> TokenSequence | None:
        if self._streams is None:  # restored or closed since this iteration began
            self._open()
        for _ in range(self.num_workers):
            w = self._next_worker
            self._next_worker = (w + 1) % self.num_workers
            if w in self._exhausted:
                continue
            try:
                return next(self._iters[w])
            except StopIteration:
                self._exhausted.add(w)
        return None

    def _collate(self, seqs: list[TokenSequence]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        tokens = torch.from_numpy(np.stack([s.tokens for s in seqs]))
        inputs = tokens[:, :-1].contiguous()
        labels = tokens[:, 1:].contiguous()
        if self.encode_key_ids:
            keys = torch.from_numpy(np.stack([s.key_ids for s in seqs]))[:, 1:]
            labels = encode_labels(labels, keys)
        input_dict = {"input": inputs}
        if self._eos is not None:
            input_dict["positions"] = document_positions(inputs, self._eos)
        return input_dict, labels

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Batches until every stream of this rank has ended; iterating again continues."""
        while True:
            seqs: list[TokenSequence] = []
            while len(seqs) < self.batch_size:
                seq = self._next_sequence()
                if seq is None:
                    return  # the job's data is used up (on_exhausted="stop"); a partial batch is dropped
                seqs.append(seq)
            self._batches += 1
            self.consumed_chunk = max(self.consumed_chunk, *(int(getattr(s, "chunk", -1)) for s in seqs))
            yield self._collate(seqs)

    # ------------------------------------------------------------------ state

    @property
    def state_key(self) -> str:
        return f"dp_rank_{self.dp_rank}"

    def _stream_state(self, worker: int) -> dict[str, Any]:
        if self._streams is not None:
            state = self._streams[worker].state_dict()
        elif worker in self._pending:
            state = self._pending[worker]
        else:
            state = JobStream(self.job, self.dp_rank, self.node, worker).state_dict()
        return {**state, "node": 0}

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (see the module docstring for the layout)."""
        payload = {
            "job_id": self.job_id,
            "dp_group": self.dp_rank,
            "dp_groups": self.dp_world_size,
            "num_workers": self.num_workers,
            "next_worker": self._next_worker,
            "batches": self._batches,
            "streams": [self._stream_state(w) for w in range(self.num_workers)],
        }
        out: dict[str, Any] = {self.state_key: json.dumps(payload), "world_size": self.dp_world_size}
        if self.session.dynamic and self.session.rank == 0 and self.client is not None:
            out[JOB_STATE_KEY] = json.dumps(self.client.checkpoint(self.job_id))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue exactly after the batches that ``state_dict`` had handed out."""
        if not state_dict:
            return
        if self.state_key not in state_dict:
            logger.warning(
                "Mixtera dataloader: no state for %s in the checkpoint; starting job %r from the beginning",
                self.state_key,
                self.job_id,
            )
            return
        if int(state_dict.get("world_size", self.dp_world_size)) != self.dp_world_size:
            raise MixteraError(
                f"the checkpoint's data state is for dp degree {state_dict['world_size']}, this run has "
                f"{self.dp_world_size}; resuming on another dp degree is not supported through torchtitan's "
                f"checkpoint (mixtera_core.streaming.reshard() converts the stream states)"
            )
        raw = state_dict[self.state_key]
        payload = json.loads(raw) if isinstance(raw, str | bytes) else raw
        if payload.get("job_id") != self.job_id:
            raise MixteraError(
                f"the checkpoint's data state is for job {payload.get('job_id')!r}, this run streams "
                f"{self.job_id!r}; use the job id of the run you resume"
            )
        if int(payload["dp_group"]) != self.dp_rank or int(payload["num_workers"]) != self.num_workers:
            raise MixteraError(
                f"the checkpoint's data state is for dp_group {payload['dp_group']} with "
                f"{payload['num_workers']} stream(s), this rank is dp_group {self.dp_rank} with {self.num_workers}"
            )
        if JOB_STATE_KEY in state_dict and self.client is not None and self.session.rank == 0:
            self.client.restore(self.job_id, json.loads(state_dict[JOB_STATE_KEY]))
        if self.session.dynamic and self.session.world_size > 1:
            import torch.distributed as dist

            dist.barrier()  # nobody reads a chunk before rank 0 has restored the mixture log
        self._drop_streams()
        self._pending = {w: {**st, "node": self.node} for w, st in enumerate(payload["streams"])}
        self._next_worker = int(payload["next_worker"]) % self.num_workers
        self._batches = int(payload.get("batches", 0))
