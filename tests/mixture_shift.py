"""Shared by the Lightning and HF end-to-end tests: does the *trained data* follow the feedback?

A dynamic mixture (``loss_weighted``, no smoothing, power 4) is driven through a trainer's
own adapter (MixteraFeedbackCallback / MixteraCallback) by the real per-token losses
of a 1-layer GPT-2, in which the tokens of the favoured key count 10x (the model itself
trains on the plain loss). The tests record what every step trained on and check that

- the favoured key's token share is low in the first steps (the starting weights: no change
  can land before ``feedback_delay`` chunks) and high in the last ones;
- every trained batch is exactly the next batch of its stream worker under the job's final
  mixture log: DataLoader workers (forked, following the job directory) and DDP ranks other
  than 0 (following rank 0's log) planned every chunk with the weights the log holds;
- under DDP, each feedback was sent once, by rank 0, and holds the sums of both ranks'
  batches (all-reduce) at the highest chunk either rank trained on.

The corpus is :func:`conftest.hetero_corpus` (jsonl.zst, parquet, jsonl.gz; documents of a few
dozen to ~16k tokens). Not a test module: pytest does not collect it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import hetero_corpus, register_corpus

from mixtera_core import MixteraClient
from mixtera_core.job import Job
from mixtera_core.mixture import DynamicMixture
from mixtera_core.streaming import JobStream

KEYS = ("lang=c", "lang=python", "lang=uk")
FAVOURED = "lang=uk"
START = {"lang=c": 0.45, "lang=python": 0.45, "lang=uk": 0.1}
SEQ, BATCH, STEPS = 64, 8, 60
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def shifting_mixture() -> DynamicMixture:
    return DynamicMixture(START, "loss_weighted", ema=0.0, power=4.0, prior_mix=0.0, min_weight=0.02)


def shift_options(dp_groups: int, num_workers: int) -> dict[str, Any]:
    """Token mode with chunks of about one rank-batch of tokens, so that a change lands within
    a few steps of its chunk.

    ``feedback_delay`` is 12 chunks per stream, not the default 4: chunks are sized by the
    *mean* tokens per document, and with these lengths most chunks hold far fewer, so a batch
    can need more than 4 of its stream's chunks past the last reported position; the stream
    would then wait at a seal that only the feedback of that very batch can move.
    """
    return dict(
        seq_len=SEQ,
        chunk_tokens=SEQ * BATCH,
        feedback_delay=12 * dp_groups * num_workers,
        seed=5,
        on_exhausted="repeat",
        dp_groups=dp_groups,
        num_workers=num_workers,
    )


def gpt2() -> Any:
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=SEQ,
        n_embd=32,
        n_layer=1,
        n_head=2,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )  # no dropout: a resumed run computes the same losses
    return transformers.GPT2LMHeadModel(config)


def feedback_losses(token_loss: Any, key_ids: Any, favoured: int) -> Any:
    """What the tests feed back: the real per-token losses, the favoured key's x10."""
    import torch

    return token_loss.detach() * torch.where(key_ids == favoured, 10.0, 1.0)


def step_record(feedback: Any, key_ids: Any, chunk_index: Any, input_ids: Any) -> dict[str, Any]:
    """One trained batch: tokens and fed-back loss sums per key, highest chunk, the input ids."""
    import torch

    valid = key_ids >= 0
    keys = key_ids[valid]
    return {
        "tokens": torch.bincount(keys, minlength=len(KEYS)).tolist(),
        "losses": torch.zeros(len(KEYS), dtype=torch.float64)
        .index_add_(0, keys, feedback[valid].double())
        .tolist(),
        "chunk": int(chunk_index.max()),
        "input_ids": input_ids.tolist(),
    }


def favoured_share(trained: list[dict], job_keys: list[str]) -> list[float]:
    k = job_keys.index(FAVOURED)
    return [t["tokens"][k] / max(1, sum(t["tokens"])) for t in trained]


def assert_shifted(trained: list[dict], job_keys: list[str]) -> None:
    """The favoured key's token share: low in the first 6 steps, high in the last 20."""
    shares = favoured_share(trained, job_keys)
    early, late = sum(shares[:6]) / 6, sum(shares[-20:]) / 20
    assert early < 0.35 and late > 0.65 and late - early > 0.4, (
        round(early, 2),
        round(late, 2),
        [round(s, 2) for s in shares],
    )


def assert_replays(job: Job, dp_group: int, num_workers: int, trained: list[dict]) -> None:
    """Every trained batch is the next one of its stream worker under ``job``'s mixture log."""
    streams = [iter(JobStream(job, dp_group, 0, w)) for w in range(num_workers)]
    try:
        for step, t in enumerate(trained):
            want = [next(streams[step % num_workers]).tokens[:-1].tolist() for _ in range(BATCH)]
            assert t["input_ids"] == want, (
                f"dp_group {dp_group}: step {step} is not what the mixture log says"
            )
    finally:
        for it in streams:
            it.close()


def logged_history(job: Job) -> list[list[Any]]:
    """``client.mixture_history`` of ``job``, as the ranks write it (JSON)."""
    return [[int(i), job.key_weights(w)] for i, w in job.log.entries]


def make_hetero_db(root: Path) -> Path:
    """A catalog of the heterogeneous corpus under ``root``, closed again (a DDP run's rank 0 opens it)."""
    docs = hetero_corpus(root / "corpus")
    with MixteraClient.local(root / "db", rank=0) as c:
        register_corpus(c, docs)
    return root / "db"


def two_ranks(
    script: Path, *args: Any, launcher: str = "torchrun", timeout: float = 280
) -> subprocess.CompletedProcess:
    """Run ``script args...`` as 2 ranks: ``python -m torch.distributed.run --standalone
    --nproc-per-node 2`` (``launcher="torchrun"``), or plain ``python`` for a script whose
    Lightning Trainer starts the second rank itself (``"lightning"``). tests/ and the
    repository are on the path; no rank of an outer launcher is in the environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    cmd = [sys.executable]
    if launcher == "torchrun":
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(script), *(str(a) for a in args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_ddp_feedback_combined_and_applied(job: Job, ranks: list[dict]) -> None:
    """``ranks``: what each rank wrote (``owner``, ``trained``, ``sent``, ``history``); ``job``: the
    job as rank 0 saved it after training. One feedback per step, sent by rank 0 only, summing
    both ranks' batches at the highest chunk either trained on; both ranks ended with the job's
    mixture history; each rank trained exactly its dp_group's batches under it, and the favoured
    key's share rose on both."""
    assert [r["owner"] for r in ranks] == [True, False]  # rank 1 never opened the catalog
    sent, r0, r1 = ranks[0]["sent"], ranks[0]["trained"], ranks[1]["trained"]
    assert ranks[1]["sent"] == [] and len(sent) == len(r0) == len(r1) == STEPS
    for s, a, b in zip(sent, r0, r1, strict=True):
        assert s["counts"] == [x + y for x, y in zip(a["tokens"], b["tokens"], strict=True)]
        assert s["losses"] == pytest.approx([x + y for x, y in zip(a["losses"], b["losses"], strict=True)])
        assert s["position"] == max(a["chunk"], b["chunk"])
    history = logged_history(job)
    assert ranks[0]["history"] == ranks[1]["history"] == history and len(history) > 1
    assert job.key_weights(job.log.last[1])[FAVOURED] > 0.9
    for rank, trained in enumerate((r0, r1)):
        assert_shifted(trained, job.key_names)
        assert_replays(job, rank, 2, trained)


def assert_resumed(ranks: list[dict], resume_at: int) -> None:
    """The run resumed from its step-``resume_at`` checkpoint trained exactly the batches of the
    steps after it again, and ended with the same mixture on both ranks. (A checkpoint holds
    only the mixture history streams can still need, so the history itself may be shorter.)"""
    data = ("tokens", "chunk", "input_ids")
    for r in ranks:
        assert len(r["resumed"]) == STEPS - resume_at
        for step, (a, b) in enumerate(zip(r["trained"][resume_at:], r["resumed"], strict=True)):
            assert [a[k] for k in data] == [b[k] for k in data], f"resumed step {resume_at + step} differs"
        assert r["history_after_resume"][-1][1] == r["history"][-1][1]
    assert ranks[0]["history_after_resume"] == ranks[1]["history_after_resume"]


RECORD_FEEDBACK = """
import shutil
sent = []
if client.owner:  # record what rank 0 sends
    _feedback = client.feedback
    def _recording(job_id, step, losses, counts, position=None):
        sent.append({"step": step, "losses": list(losses), "counts": list(counts), "position": position})
        return _feedback(job_id, step, losses, counts, position=position)
    client.feedback = _recording


def keep_job(job_id):  # (rank 0) the job directory as training left it, before a resume changes it
    if client.owner:
        shutil.copytree(client.job(job_id).home, f"{out}/trained-job")
"""
