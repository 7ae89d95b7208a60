"""Lightning integration: exact resume from a Lightning checkpoint, feedback, DDP ranks, the plugin."""

from __future__ import annotations

import collections
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import lightning as L  # noqa: E402
import mixture_shift as shift  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mixtera_integrations.lightning import MixteraDataModule, MixteraFeedbackCallback  # noqa: E402
from test_streaming import WEIGHTS, corpus  # noqa: E402, F401  (module fixture reused)

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.job import Job  # noqa: E402
from mixtera_core.mixture import DynamicMixture, ScheduleMixture  # noqa: E402
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
            logits.flatten(0, 1), batch["targets"].flatten(), reduction="none"
        ).view_as(batch["targets"])
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
        assert set(batch) == {"input_ids", "targets", "key_ids", "chunk_index"}
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


class EvalLM(TinyLM):
    """TinyLM that also validates, and records every batch it trains or validates on with its
    per-token losses (for checking the logged metrics independently)."""

    def __init__(self) -> None:
        super().__init__()
        self.trained: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # step, losses, keys, chunk
        self.validated: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def token_loss(self, batch):
        logits = self.out(self.emb(batch["input_ids"]))
        targets = batch["targets"]
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def training_step(self, batch, batch_idx):
        token_loss = self.token_loss(batch)
        step = self.trainer.global_step + 1  # the optimizer step this batch belongs to
        self.trained.append((step, token_loss.detach(), batch["key_ids"], int(batch["chunk_index"].max())))
        return {"loss": token_loss.mean(), "token_loss": token_loss}

    def validation_step(self, batch, batch_idx):
        token_loss = self.token_loss(batch)
        self.validated.append((self.trainer.global_step, token_loss, batch["key_ids"], batch["input_ids"]))
        return {"token_loss": token_loss}


def csv_rows(logger) -> list[dict[str, str]]:
    import csv

    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def domain_means(batches, names) -> dict[str, float]:
    """Per-key mean token loss of (losses, key ids) pairs, computed here."""
    sums, counts = collections.Counter(), collections.Counter()
    for losses, keys in batches:
        for loss, key in zip(losses.flatten().tolist(), keys.flatten().tolist(), strict=True):
            if key >= 0:
                sums[names[key]] += loss
                counts[names[key]] += 1
    return {k: sums[k] / counts[k] for k in counts}


def test_held_out_validation_and_metrics_in_the_csv_logger(lclient, small_bpe, tmp_path):
    """A holdout splits the query: the training job excludes the held-out samples, the eval job is
    them. The CSVLogger's file holds the mixture weights and per-domain training losses every 2
    steps, and the per-domain validation loss after each validation, each equal to what the
    recorded batches give when computed here; validation sees the same eval sequences each time."""
    from lightning.pytorch.loggers import CSVLogger

    from mixtera_core.holdout import Holdout
    from mixtera_core.torch import MixteraEvalDataset

    holdout = Holdout(0.2, seed=5)
    dm = datamodule(
        lclient, "l-val", small_bpe, num_workers=1, holdout=holdout, val_sequences=10, val_batch_size=4
    )
    logger = CSVLogger(str(tmp_path), name="csv")
    module, cb = EvalLM(), MixteraFeedbackCallback()
    L.Trainer(
        default_root_dir=str(tmp_path), max_steps=8, accelerator="cpu", logger=logger, log_every_n_steps=2,
        val_check_interval=4, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[cb],
    ).fit(module, datamodule=dm)  # fmt: skip
    assert dm.job.spec.query["split"]["part"] == "train" and dm.eval_job.spec.query["split"]["part"] == "eval"
    assert dm.eval_job.spec.job_id == "l-val-eval" and dm.eval_job.key_names == dm.job.key_names
    names = dm.job.key_names
    rows = csv_rows(logger)
    weights = {int(r["step"]): r for r in rows if r.get("mixture_weight/language=c")}
    assert sorted(weights) == [2, 4, 6, 8]
    for step, row in weights.items():
        assert {k: float(row[f"mixture_weight/{k}"]) for k in names} == pytest.approx(WEIGHTS)
        window = [(loss, keys) for s, loss, keys, _ in module.trained if step - 2 < s <= step]
        assert len(window) == 2
        expected = domain_means(window, names)
        got = {k: float(row[f"train_loss/{k}"]) for k in names if row.get(f"train_loss/{k}")}
        assert got == pytest.approx(expected, rel=1e-5) and len(got) >= 2
    validations = [r for r in rows if r.get("val_loss/language=c")]
    assert len(validations) == 2  # after steps 4 and 8
    evals = [row for _, _, _, ids in module.validated for row in ids.tolist()]
    reference = [it["input_ids"].tolist() for it in MixteraEvalDataset(dm.eval_job, 10)]
    assert evals == reference + reference  # the same 10 held-out sequences both times
    for row, at in zip(validations, (4, 8), strict=True):
        batches = [(loss, keys) for s, loss, keys, _ in module.validated if s == at]
        assert {k: float(row[f"val_loss/{k}"]) for k in names} == pytest.approx(domain_means(batches, names))


def test_a_dynamic_mixture_s_weights_are_logged_as_they_change(lclient, small_bpe, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    mixture = DynamicMixture(WEIGHTS, "loss_weighted", update_every=1, ema=0.0, power=4.0, prior_mix=0.0)
    dm = datamodule(lclient, "l-dyn-log", small_bpe, mixture=mixture, num_workers=1, chunk_tokens=40)
    logger = CSVLogger(str(tmp_path), name="csv")
    module = EvalLM()
    L.Trainer(
        default_root_dir=str(tmp_path), max_steps=12, accelerator="cpu", logger=logger, log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[MixteraFeedbackCallback()],
    ).fit(module, datamodule=dm)  # fmt: skip
    rows = [r for r in csv_rows(logger) if r.get("mixture_weight/language=c")]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    logged = [{k: float(r[f"mixture_weight/{k}"]) for k in dm.job.key_names} for r in rows]
    for step, got in enumerate(logged, start=1):  # the weights in force at the highest chunk trained on
        chunk = max(c for s, _, _, c in module.trained if s <= step)
        assert got == pytest.approx(lclient.mixture_weights("l-dyn-log", chunk=chunk))
    assert logged[0] == pytest.approx(WEIGHTS) and logged[-1] != pytest.approx(WEIGHTS)


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


@pytest.mark.slow
def test_example_runs(tmp_path):

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
        self.validated: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += batch["input_ids"].tolist()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.validated += batch["input_ids"].tolist()

    def on_train_end(self, trainer, pl_module):
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"trained": self.seen, "validated": self.validated}, fh)


class ValidatingLM(TinyLM):
    def validation_step(self, batch, batch_idx):
        return None


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
    eval_job = lclient.job(
        lclient.execute(
            Query.for_job("l-ddp-eval"), WEIGHTS, tokenizer=("hf", str(small_bpe)), seq_len=SEQ, chunk_size=12
        )
    )
    # a Job pickles into the spawned ranks, a client does not
    dm = MixteraDataModule(job, batch_size=2, eval_job=eval_job, val_sequences=6)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4)
    trainer(
        tmp_path, 4, [RankRecorder(str(tmp_path)), ckpt], strategy="ddp_spawn", devices=2, val_check_interval=4,
        num_sanity_val_steps=0,
    ).fit(ValidatingLM(), datamodule=dm)  # fmt: skip
    seen = []
    evals = [s.tokens[:-1].tolist() for _, s in zip(range(6), JobStream(eval_job), strict=False)]
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        stream = iter(JobStream(job, rank))
        assert got["trained"] == [next(stream).tokens[:-1].tolist() for _ in range(8)]
        seen.append(got["trained"])
        assert got["validated"] == evals[rank::2]  # each rank its share of the same eval set
    assert seen[0] != seen[1]
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)["MixteraDataModule"]
    assert {k: v["batches"] for k, v in saved["streams"].items()} == {"0/0": 4, "1/0": 4}


# ------------------------------------------------------------------ the trained data follows the feedback
# (scheme and checks: tests/mixture_shift.py)


class ShiftLM(L.LightningModule):
    """A 1-layer GPT-2 that returns its per-token losses (the favoured key's x10) as "token_loss"
    for MixteraFeedbackCallback and records every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.model = shift.gpt2()
        self.favoured = -1
        self.trained: list[dict] = []

    def on_fit_start(self) -> None:
        self.favoured = self.trainer.datamodule.job.key_names.index(shift.FAVOURED)

    def training_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"]).logits
        labels, keys = batch["targets"], batch["key_ids"]
        token_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        feedback = shift.feedback_losses(token_loss, keys, self.favoured)
        self.trained.append(shift.step_record(feedback, keys, batch["chunk_index"], batch["input_ids"]))
        return {"loss": token_loss.mean(), "token_loss": feedback}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def shift_datamodule(client, job_id: str, bpe, dp_groups: int, mixture=None) -> MixteraDataModule:
    return MixteraDataModule(
        client,
        query=Query.for_job(job_id),
        mixture=mixture or shift.shifting_mixture(),
        tokenizer=("hf", str(bpe)),
        batch_size=shift.BATCH,
        **shift.shift_options(dp_groups, 2),
    )


@pytest.fixture(scope="module")
def hetero_db(tmp_path_factory):
    return shift.make_hetero_db(tmp_path_factory.mktemp("lshift"))


@pytest.mark.slow
def test_feedback_shifts_the_trained_data_with_dataloader_workers(hetero_db, small_bpe, tmp_path):
    """One process, num_workers=2 (forked DataLoader workers follow the job's directory)."""
    with MixteraClient.local(hetero_db, rank=0) as client:
        module, cb = ShiftLM(), MixteraFeedbackCallback()
        dm = shift_datamodule(client, "l-shift-w2", small_bpe, 1)
        trainer(tmp_path, shift.STEPS, [cb]).fit(module, datamodule=dm)
        assert cb.sent == shift.STEPS and len(module.trained) == shift.STEPS
        shift.assert_shifted(module.trained, dm.job.key_names)
        assert client.mixture_weights("l-shift-w2")[shift.FAVOURED] > 0.9
        shift.assert_replays(client.job("l-shift-w2"), 0, 2, module.trained)


def test_a_schedule_switched_by_the_step_is_reported_and_lands(hetero_db, small_bpe, tmp_path):
    """A ScheduleMixture without samples_per_step is sealed like a dynamic one: the callback
    reports every step (rank 0, highest consumed chunk), else the streams would stop at the seal.
    Every sequence of a chunk before the switch's chunk is c/python; those after it are uk."""
    before = {"lang=c": 0.5, "lang=python": 0.5, "lang=uk": 0.0}
    after = {"lang=c": 0.0, "lang=python": 0.0, "lang=uk": 1.0}
    with MixteraClient.local(hetero_db, rank=0) as client:
        dm = shift_datamodule(client, "l-schedule", small_bpe, 1, ScheduleMixture([(0, before), (3, after)]))
        rec = SequenceRecorder()
        trainer(tmp_path, 40, [MixteraFeedbackCallback(), rec]).fit(TinyLM(), datamodule=dm)
        (change,) = client.checkpoint("l-schedule")["changes"]
        assert change["reason"] == "schedule switch at step 3"
        assert change["chunk"] >= change["position"] + 1 + dm.job.spec.delay  # (or the seal, if higher)
        uk = dm.job.key_names.index(shift.FAVOURED)
        old = [keys for chunk, keys in rec.sequences if chunk < change["chunk"]]
        new = [keys for chunk, keys in rec.sequences if chunk >= change["chunk"]]
        assert len(old) >= 48 and not any(uk in keys for keys in old)
        # (the first sequence a stream packs after the switch may end a document from before it)
        tokens = [k for keys in new for k in keys]
        assert len(new) >= 40 and tokens.count(uk) / len(tokens) > 0.95


class SequenceRecorder(L.Callback):
    """(chunk index, key id of every token) of every trained sequence."""

    def __init__(self) -> None:
        self.sequences: list[tuple[int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for chunk, keys in zip(batch["chunk_index"].tolist(), batch["key_ids"].tolist(), strict=True):
            self.sequences.append((chunk, keys))


def test_a_rank_other_than_0_follows_a_restored_mixture(hetero_db, monkeypatch):
    """Resuming, rank 0 restores the job's mixture state and the other ranks take the restored
    log: also when their copy had read nothing of the old log.jsonl (loaded after an earlier
    restore), which a follower alone would not notice (nor move its seal back)."""
    import mixtera_integrations._distributed as ranks

    with MixteraClient.local(hetero_db, rank=0) as owner:
        job_id = owner.execute(
            Query.for_job("l-restore"), shift.shifting_mixture(), chunk_size=4, on_exhausted="repeat"
        )
        checkpoints = {}
        for step in range(1, 7):
            owner.feedback(
                job_id, step, [3.0, 1.0, 1.0] if step % 2 else [1.0, 1.0, 3.0], [1.0] * 3, position=step
            )
            checkpoints[step] = owner.checkpoint(job_id)
        owner.restore(job_id, checkpoints[6])  # an earlier resume: job.json holds the log, no log.jsonl
        other = MixteraClient.local(hetero_db, rank=1)
        dm = MixteraDataModule(other, job_id=job_id)
        dm.setup("fit")
        assert dm.job.log.sealed == checkpoints[6]["sealed"]
        owner.restore(job_id, checkpoints[3])  # rank 0 resumes from an earlier checkpoint ...
        monkeypatch.setattr(ranks, "global_rank", lambda: 1)
        dm.load_state_dict(
            {"job_id": job_id, "streams": {}, "job": checkpoints[3]}
        )  # ... rank 1 after the barrier
        assert other.job(job_id) is dm.job and dm.job.log.sealed == checkpoints[3]["sealed"]
        owner.feedback(job_id, 4, [1.0, 5.0, 1.0], [1.0] * 3, position=4)  # the resumed run's next step
        dm.job.await_mixture(owner.job(job_id).log.sealed - 1, timeout=5)
        assert other.mixture_history(job_id) == owner.mixture_history(job_id)
        assert other.mixture_weights(job_id, 9) == owner.mixture_weights(job_id, 9)
        other.close()


RESUME_AT = 40
LIGHTNING_DDP_SCRIPT = (
    textwrap.dedent(
        """
    import json, sys
    import lightning as L
    import mixture_shift as shift
    from mixtera_core import MixteraClient
    from mixtera_integrations.lightning import MixteraFeedbackCallback
    from test_lightning import ShiftLM, shift_datamodule

    db, out, bpe, job_id = sys.argv[1:5]
    client = MixteraClient.local(db)  # on every rank: rank 0 owns the catalog, the others follow it
    """
    )
    + shift.RECORD_FEEDBACK
    + textwrap.dedent(
        """
    def fit(steps, callbacks=(), ckpt_path=None):
        module = ShiftLM()
        trainer = L.Trainer(
            max_steps=steps, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=bool(callbacks), default_root_dir=out,
            callbacks=[MixteraFeedbackCallback(), *callbacks],
        )
        trainer.fit(module, datamodule=shift_datamodule(client, job_id, bpe, 2), ckpt_path=ckpt_path)
        trainer.strategy.barrier()  # rank 0 has sent the last feedback
        return trainer.global_rank, module.trained

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=f"{out}/ckpt", every_n_train_steps=RESUME_AT, save_top_k=-1)
    rank, trained = fit(shift.STEPS, [ckpt])
    report = {"owner": client.owner, "trained": trained, "sent": list(sent),
              "history": client.mixture_history(job_id)}
    keep_job(job_id)
    # a restarted run: the same datamodule, resumed from the checkpoint (rank 0 restores the
    # mixture state, rank 1 follows the restored log)
    rank, report["resumed"] = fit(shift.STEPS, ckpt_path=f"{out}/ckpt/epoch=0-step={RESUME_AT}.ckpt")
    report["history_after_resume"] = client.mixture_history(job_id)
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(report, fh)
    client.close()
    """
    )
).replace("RESUME_AT", str(RESUME_AT))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["torchrun", "lightning"])
@pytest.mark.slow
def test_two_ddp_processes_on_a_local_catalog_shift_the_trained_data(
    hetero_db, small_bpe, tmp_path, launcher
):
    """Two ranks (gloo, CPU), each with ``MixteraClient.local(db)`` and a ``strategy="ddp"``
    Trainer, started by ``torchrun --nproc-per-node 2`` or by Lightning itself (``python
    train.py``: the Trainer starts rank 1); then the run resumes from its step-40 checkpoint."""
    script = tmp_path / "train.py"
    script.write_text(LIGHTNING_DDP_SCRIPT)
    res = shift.two_ranks(
        script, hetero_db, tmp_path, small_bpe, f"l-shift-ddp-{launcher}", launcher=launcher
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shift.assert_ddp_feedback_combined_and_applied(Job.load(str(tmp_path / "trained-job")), ranks)
    shift.assert_resumed(ranks, RESUME_AT)
