"""Lightning integration: exact resume from a Lightning checkpoint, feedback, DDP ranks, the plugin."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mixtera_integrations.lightning import MixteraDataModule, MixteraFeedbackCallback  # noqa: E402
from test_streaming import WEIGHTS, corpus  # noqa: E402, F401  (module fixture reused)

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.mixture import DynamicMixture  # noqa: E402
from mixtera_core.plugins import PluginManager  # noqa: E402
from mixtera_core.streaming import JobStream  # noqa: E402

VOCAB, SEQ = 1000, 24


@pytest.fixture(scope="module")
def lclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("lightning") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


class TinyLM(L.LightningModule):
    """An embedding + linear language model; exposes per-token losses both ways."""

    def __init__(self, via_attribute: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.out = torch.nn.Linear(16, VOCAB)
        self.via_attribute = via_attribute

    def training_step(self, batch, batch_idx):
        logits = self.out(self.emb(batch["input_ids"]))
        token_loss = F.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), reduction="none"
        ).view_as(batch["labels"])
        if self.via_attribute:
            self.mixtera_token_loss = token_loss
            return token_loss.mean()
        return {"loss": token_loss.mean(), "token_loss": token_loss}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.seen: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert set(batch) == {"input_ids", "labels", "key_ids", "chunk_index"}
        self.seen[trainer.global_step] = batch["input_ids"].clone()


def trainer(tmp_path, max_steps, callbacks, devices=1, **kw):
    return L.Trainer(
        default_root_dir=str(tmp_path),
        max_steps=max_steps,
        accelerator="cpu",
        devices=devices,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kw,
    )


def datamodule(client, job_id, bpe, mixture=WEIGHTS, **options):
    options = {"chunk_size": 12, "seed": 3, "on_exhausted": "repeat", "num_workers": 2, **options}
    return MixteraDataModule(
        client,
        query=Query.for_job(job_id),
        mixture=mixture,
        tokenizer=("hf", str(bpe)),
        seq_len=SEQ,
        batch_size=3,
        **options,
    )


@pytest.mark.parametrize("num_workers", [1, 2])
def test_resume_from_lightning_checkpoint_yields_the_same_batches(lclient, small_bpe, tmp_path, num_workers):
    job_id = f"l-resume-w{num_workers}"
    full = Recorder()
    trainer(tmp_path / "full", 10, [full]).fit(
        TinyLM(), datamodule=datamodule(lclient, job_id, small_bpe, num_workers=num_workers)
    )
    assert sorted(full.seen) == list(range(10))

    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1, save_last=False
    )
    first = Recorder()
    trainer(tmp_path / "a", 5, [first, ckpt]).fit(
        TinyLM(), datamodule=datamodule(lclient, job_id, small_bpe, num_workers=num_workers)
    )
    path = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    saved = torch.load(path, weights_only=False)["MixteraDataModule"]
    assert saved["streams"]["0/0"]["batches"] == 3 and json.loads(json.dumps(saved))  # trained, not fetched
    second = Recorder()
    trainer(tmp_path / "b", 10, [second]).fit(
        TinyLM(),
        datamodule=datamodule(lclient, job_id, small_bpe, num_workers=num_workers),
        ckpt_path=str(path),
    )
    assert sorted(second.seen) == list(range(3, 10))
    for step in range(10):
        got = first.seen[step] if step < 3 else second.seen[step]
        assert torch.equal(got, full.seen[step]), step


def test_feedback_reaches_the_mixing_algorithm(lclient, small_bpe, tmp_path):
    for via_attribute in (False, True):
        job_id = f"l-feedback-{via_attribute}"
        mixture = DynamicMixture(WEIGHTS, "loss_weighted", update_every=2)
        dm = datamodule(lclient, job_id, small_bpe, mixture=mixture, num_workers=1)
        cb = MixteraFeedbackCallback()
        trainer(tmp_path / job_id, 8, [cb]).fit(TinyLM(via_attribute), datamodule=dm)
        assert cb.sent == 8
        assert lclient.job(job_id).changes, "the mixing algorithm never changed the weights"
        assert lclient.checkpoint(job_id)["algorithm"] is not None


def test_existing_job_and_the_trainer_adapter_plugin(lclient, small_bpe, tmp_path):
    job_id = lclient.execute(
        Query.for_job("l-attach"), WEIGHTS, tokenizer=("hf", str(small_bpe)), seq_len=SEQ, chunk_size=12
    )
    pm = PluginManager(load_entrypoints=False)
    pm.register(importlib.import_module("mixtera_integrations.lightning.plugin"))
    assert "lightning" in pm.names("trainer_adapter")
    dm = pm.trainer_adapter("lightning").build_data(lclient, job_id, batch_size=2)
    assert isinstance(dm, MixteraDataModule)
    rec = Recorder()
    trainer(tmp_path, 4, [rec]).fit(TinyLM(), datamodule=dm)
    stream = iter(JobStream(lclient.job(job_id)))
    expected = [torch.from_numpy(next(stream).tokens[:-1].copy()) for _ in range(8)]
    assert all(torch.equal(rec.seen[i][j], expected[2 * i + j]) for i in range(4) for j in range(2))


def test_world_size_must_match_dp_groups(lclient, small_bpe, tmp_path):
    dm = datamodule(lclient, "l-dp2", small_bpe, dp_groups=2, num_workers=1)
    with pytest.raises(Exception, match="world size 1 .*dp_groups=2"):
        trainer(tmp_path, 2, []).fit(TinyLM(), datamodule=dm)


def test_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "lightning_train.py"
    res = subprocess.run(
        [sys.executable, str(script), "--steps", "6", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "static: step 6" in res.stdout and "dynamic: step 6" in res.stdout


class RankRecorder(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += batch["input_ids"].tolist()

    def on_train_end(self, trainer, pl_module):
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump(self.seen, fh)


def test_ddp_ranks_get_their_dp_group_and_the_checkpoint_holds_both(lclient, small_bpe, tmp_path):
    job_id = lclient.execute(
        Query.for_job("l-ddp"),
        WEIGHTS,
        tokenizer=("hf", str(small_bpe)),
        seq_len=SEQ,
        chunk_size=12,
        dp_groups=2,
        on_exhausted="repeat",
    )
    job = lclient.job(job_id)
    dm = MixteraDataModule(job, batch_size=2)  # a Job pickles into the spawned ranks, a client does not
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4)
    trainer(tmp_path, 4, [RankRecorder(str(tmp_path)), ckpt], strategy="ddp_spawn", devices=2).fit(
        TinyLM(), datamodule=dm
    )
    seen = []
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        stream = iter(JobStream(job, rank))
        assert got == [next(stream).tokens[:-1].tolist() for _ in range(8)]
        seen.append(got)
    assert seen[0] != seen[1]
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)["MixteraDataModule"]
    assert {k: v["batches"] for k, v in saved["streams"].items()} == {"0/0": 4, "1/0": 4}
