"""Per-key feedback from per-token losses: exact sums, all-reduce over ranks, one sender."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from mixtera_core.feedback import FeedbackReporter, domain_loss_sums  # noqa: E402


class Recorder:
    def __init__(self):
        self.calls = []

    def feedback(self, job_id, step, losses, counts, position=None):
        self.calls.append((job_id, step, losses, counts, position))


def test_domain_loss_sums_match_a_loop():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(4, 9, generator=g, requires_grad=True)
    keys = torch.randint(-1, 3, (4, 9), generator=g)
    sums, counts = domain_loss_sums(losses, keys, 3)
    for k in range(3):
        mask = keys == k
        assert counts[k].item() == mask.sum().item()
        assert sums[k].item() == pytest.approx(losses[mask].sum().item())
    with pytest.raises(ValueError, match="differ"):
        domain_loss_sums(losses, keys[:, :3], 3)
    with pytest.raises(ValueError, match="num_keys"):
        domain_loss_sums(losses, keys, 2)


def test_reporter_accumulates_windows():
    rec = Recorder()
    r = FeedbackReporter(rec, "job", 2, every=2)
    keys = torch.tensor([[0, 1, 1]])
    assert r.step(1, torch.tensor([[1.0, 2.0, 3.0]]), keys, torch.tensor([4, 6])) is None
    sent = r.step(2, torch.tensor([[1.0, 1.0, 1.0]]), keys, torch.tensor([5, 5]))
    # the position is the highest chunk index of the window
    assert sent == ([2.0, 7.0], [2.0, 4.0]) and rec.calls == [("job", 2, [2.0, 7.0], [2.0, 4.0], 6)]
    r.step(3, torch.tensor([[1.0, 1.0, 1.0]]), keys)
    r.step(4, torch.tensor([[1.0, 1.0, 1.0]]), keys)
    assert rec.calls[-1][-1] is None  # no chunk indices given: no position


def _rank_main(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rec = Recorder()
    r = FeedbackReporter(rec, "job", 2)
    losses = torch.tensor([[float(rank + 1), 10.0]])
    keys = torch.tensor([[0, 1]])
    r.step(5, losses, keys, torch.tensor([3 + 7 * rank]))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(rec.calls, fh)
    dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks_and_one_sender(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'init'}"
    mp.spawn(_rank_main, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    calls0 = json.loads((tmp_path / "rank0.json").read_text())
    calls1 = json.loads((tmp_path / "rank1.json").read_text())
    # sums over ranks, the highest position of any rank, sent by rank 0 only
    assert calls0 == [["job", 5, [3.0, 20.0], [2.0, 2.0], 10]] and calls1 == []
