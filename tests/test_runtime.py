"""The central planner gives every stream the same chunks as a planner replica would."""

from __future__ import annotations

import pytest
from test_streaming import WEIGHTS, corpus, mclient, take  # noqa: F401

from mixtera_core import Query
from mixtera_core.runtime import ChunkUnavailableError, JobRuntime, RuntimeChunkSource
from mixtera_core.streaming import JobStream


def test_runtime_streams_equal_replica_streams(mclient):  # noqa: F811
    job_id = mclient.execute(
        Query.for_job("rt"), WEIGHTS, chunk_size=23, dp_groups=2, num_workers=2, on_exhausted="redistribute"
    )
    job = mclient.job(job_id)
    runtime = JobRuntime(job, cache_chunks=4)
    for g in range(2):
        for w in range(2):
            central = take(JobStream(job, g, 0, w, chunk_source=RuntimeChunkSource(runtime)))
            assert central == take(mclient.stream(job_id, g, 0, w))


def test_evicted_chunk_needs_the_snapshot(mclient):  # noqa: F811
    job = mclient.job(mclient.execute(Query.for_job("ev"), WEIGHTS, chunk_size=10, on_exhausted="repeat"))
    runtime = JobRuntime(job, cache_chunks=2)
    runtime.max_checkpoints = 1  # only the state before chunk 0 is kept
    first, before0 = runtime.chunk(0)
    chunk5, before5 = runtime.chunk(5)
    assert runtime.chunk(1)[1]["next_index"] == 1  # regenerated from the start checkpoint
    runtime._checkpoints.clear()
    with pytest.raises(ChunkUnavailableError, match="no longer cached"):
        runtime.chunk(1)
    again, snap = runtime.chunk(0, before0)
    assert again.starts.tolist() == first.starts.tolist() and snap == before0
    assert runtime.chunk(5)[0] is chunk5  # cached
    assert runtime.horizon == 6


def test_runtime_reports_the_end(mclient):  # noqa: F811
    job = mclient.job(mclient.execute(Query.for_job("end"), WEIGHTS, chunk_size=500, on_exhausted="stop"))
    runtime = JobRuntime(job)
    n = 0
    while runtime.chunk(n)[0] is not None:
        n += 1
    assert n >= 1 and runtime.chunk(n + 3)[0] is None
