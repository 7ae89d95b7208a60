"""HF Trainer integration: exact resume from a trainer checkpoint, feedback, the plugin."""

from __future__ import annotations

import importlib
import json
import os
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import mixture_shift as shift  # noqa: E402
import torch  # noqa: E402
from mixtera_integrations.hf import (  # noqa: E402
    MixteraDataCollator,
    MixteraTrainer,
    MixteraTrainerCallback,
    mixtera_dataset,
)
from test_streaming import WEIGHTS, corpus  # noqa: E402, F401  (module fixture reused)
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments  # noqa: E402

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.errors import MixteraError  # noqa: E402
from mixtera_core.job import Job  # noqa: E402
from mixtera_core.mixture import DynamicMixture, ScheduleMixture  # noqa: E402
from mixtera_core.plugins import PluginManager  # noqa: E402
from mixtera_core.torch import MixteraDataset  # noqa: E402

SEQ = 24
RESUME_AT = 40
#: TrainingArguments of a short run that saves nothing and logs nothing
SMALL = dict(
    per_device_train_batch_size=shift.BATCH,
    learning_rate=1e-3,
    save_strategy="no",
    logging_steps=1000,
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def hclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("hf") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def job(client, job_id, bpe, mixture=WEIGHTS, **options):
    options = {"chunk_size": 12, "seed": 3, "on_exhausted": "repeat", "num_workers": 2, **options}
    return client.execute(Query.for_job(job_id), mixture, tokenizer=("hf", str(bpe)), seq_len=SEQ, **options)


def model():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2))


class Recorder(TrainerCallback):
    """Records the input_ids each optimizer step trained on (through the trainer's compute_loss)."""

    def __init__(self) -> None:
        self.seen: dict[int, torch.Tensor] = {}


def make_trainer(client, job_id, out, max_steps, recorder, **args):
    arguments = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=3,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="steps",
        save_steps=3,
        logging_steps=100,
        disable_tqdm=True,
        **args,
    )
    trainer = MixteraTrainer(
        model=model(),
        args=arguments,
        train_dataset=mixtera_dataset(client, job_id),
        mixtera_client=client,
        callbacks=[recorder],
    )
    original = trainer.compute_loss

    def compute_loss(m, inputs, *a, **kw):
        recorder.seen[trainer.state.global_step] = inputs["input_ids"].clone()
        return original(m, inputs, *a, **kw)

    trainer.compute_loss = compute_loss  # type: ignore[method-assign]
    return trainer


@pytest.mark.parametrize("num_workers", [1, 2])
def test_resume_from_trainer_checkpoint_yields_the_same_batches(hclient, small_bpe, tmp_path, num_workers):
    job_id = job(hclient, f"h-resume-w{num_workers}", small_bpe, num_workers=num_workers)
    full = Recorder()
    make_trainer(hclient, job_id, tmp_path / "full", 8, full).train()
    assert sorted(full.seen) == list(range(8))

    first = Recorder()
    make_trainer(hclient, job_id, tmp_path / "run", 5, first).train()
    ckpt = tmp_path / "run" / "checkpoint-3"
    state = json.loads((ckpt / "mixtera_state.json").read_text())
    assert state["job_id"] == job_id and state["streams"]["0/0"]["batches"] == 3
    second = Recorder()
    make_trainer(hclient, job_id, tmp_path / "run", 8, second).train(resume_from_checkpoint=str(ckpt))
    assert sorted(second.seen) == list(range(3, 8))
    for step in range(8):
        got = first.seen[step] if step < 3 else second.seen[step]
        assert torch.equal(got, full.seen[step]), step


def test_feedback_reaches_the_mixing_algorithm(hclient, small_bpe, tmp_path):
    mixture = DynamicMixture(WEIGHTS, "loss_weighted", update_every=2)
    job_id = job(hclient, "h-feedback", small_bpe, mixture=mixture, num_workers=1)
    rec = Recorder()
    trainer = make_trainer(hclient, job_id, tmp_path, 6, rec, gradient_accumulation_steps=2)
    trainer.train()
    assert trainer.mixtera_callback.sent == 6  # once per optimizer step
    assert hclient.job(job_id).changes, "the mixing algorithm never changed the weights"
    saved = json.loads((tmp_path / "checkpoint-6" / "mixtera_state.json").read_text())
    assert saved["job"]["algorithm"] is not None and saved["streams"]["0/0"]["batches"] == 12


def test_collator_plugin_and_errors(hclient, small_bpe, tmp_path):
    job_id = job(hclient, "h-plugin", small_bpe, num_workers=1)
    pm = PluginManager(load_entrypoints=False)
    pm.register(importlib.import_module("mixtera_integrations.hf.plugin"))
    ds = pm.trainer_adapter("hf").build_data(hclient, job_id)
    assert isinstance(ds, MixteraDataset)
    items = [it for _, it in zip(range(4), ds, strict=False)]
    batch = MixteraDataCollator()(items)
    assert set(batch) == {"input_ids", "targets", "key_ids", "chunk_index"} and batch["input_ids"].shape == (
        4,
        SEQ,
    )
    assert batch["chunk_index"].shape == (4,)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[])
    with pytest.raises(MixteraError, match="MixteraDataset"):
        MixteraTrainer(model=model(), args=args, train_dataset=[1, 2])
    dyn = job(hclient, "h-dyn", small_bpe, mixture=DynamicMixture(WEIGHTS, "loss_weighted"), num_workers=1)
    with pytest.raises(MixteraError, match="mixtera_client"):
        MixteraTrainer(model=model(), args=args, train_dataset=mixtera_dataset(hclient, dyn))
    assert isinstance(MixteraTrainerCallback(), TrainerCallback)


@pytest.mark.slow
def test_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "hf_trainer.py"
    res = subprocess.run(
        [sys.executable, str(script), "--steps", "6", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "static: step 6" in res.stdout and "dynamic: step 6" in res.stdout
    assert (tmp_path / "dynamic" / "checkpoint-3" / "mixtera_state.json").exists()


# ---------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments
from mixtera_core.job import Job
from mixtera_core.torch import MixteraDataset
from mixtera_integrations.hf import MixteraTrainer

job_dir, out = sys.argv[1], sys.argv[2]
job = Job.load(job_dir)  # every rank loads the job from disk: no catalog is opened twice
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=24, n_embd=32, n_layer=1, n_head=2))
args = TrainingArguments(output_dir=out, max_steps=4, per_device_train_batch_size=2, use_cpu=True,
                         ddp_backend="gloo", report_to=[], save_strategy="no", disable_tqdm=True)
trainer = MixteraTrainer(model=model, args=args, train_dataset=MixteraDataset(job))
seen = []
original = trainer.compute_loss
def compute_loss(m, inputs, *a, **kw):
    seen.extend(inputs["input_ids"].tolist())
    return original(m, inputs, *a, **kw)
trainer.compute_loss = compute_loss
trainer.train()
with open(f"{out}/rank{trainer.args.process_index}.json", "w") as fh:
    json.dump({"world": trainer.args.world_size, "seen": seen}, fh)
"""


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_torchrun_ddp_ranks_train_on_their_dp_groups(hclient, small_bpe, tmp_path):
    """Two processes under torchrun (gloo): rank r trains on dp_group r's stream, exactly."""
    import socket
    import subprocess
    import sys

    from mixtera_core.streaming import JobStream

    job_id = job(hclient, "hf-ddp", small_bpe, dp_groups=2, num_workers=1)
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    cmd += [
        "--master_port",
        str(port),
        str(script),
        os.path.join(hclient.catalog.db_dir, "jobs", job_id),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=220)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = []
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        stream = iter(JobStream(hclient.job(job_id), rank))
        assert got["world"] == 2
        assert got["seen"] == [next(stream).tokens[:-1].tolist() for _ in range(8)]  # 4 steps x 2
        seen.append(got["seen"])
    assert seen[0] != seen[1]


# ------------------------------------------------------------------ the trained data follows the feedback
# (scheme and checks: tests/mixture_shift.py)


def shift_trainer(client, job_id: str, out, **args) -> MixteraTrainer:
    """A MixteraTrainer (1-layer GPT-2) whose feedback counts the favoured key's token losses x10;
    ``trainer.trained`` records every batch it trains on."""
    arguments = TrainingArguments(
        output_dir=str(out), max_steps=shift.STEPS, use_cpu=True, report_to=[], **{**SMALL, **args}
    )
    trainer = MixteraTrainer(
        model=shift.gpt2(),
        args=arguments,
        train_dataset=mixtera_dataset(client, job_id),
        mixtera_client=client,
    )
    favoured = trainer.mixtera_job.key_names.index(shift.FAVOURED)
    trained: list[dict] = []
    inputs: list[torch.Tensor] = []
    compute_loss, record = trainer.compute_loss, trainer.mixtera_callback.record

    def recording_compute_loss(model, batch, *a, **kw):
        inputs.append(batch["input_ids"])
        return compute_loss(model, batch, *a, **kw)

    def scaled_record(token_loss, key_ids, chunk_index=None):  # compute_loss hands its token losses here
        feedback = shift.feedback_losses(token_loss, key_ids, favoured)
        trained.append(shift.step_record(feedback, key_ids, chunk_index, inputs.pop()))
        record(feedback, key_ids, chunk_index)

    trainer.compute_loss = recording_compute_loss  # type: ignore[method-assign]
    trainer.mixtera_callback.record = scaled_record  # type: ignore[method-assign]
    trainer.trained = trained  # type: ignore[attr-defined]
    return trainer


def shift_job(client, job_id: str, bpe, dp_groups: int) -> str:
    return client.execute(
        Query.for_job(job_id),
        shift.shifting_mixture(),
        tokenizer=("hf", str(bpe)),
        **shift.shift_options(dp_groups, 2),
    )


@pytest.fixture(scope="module")
def hetero_db(tmp_path_factory):
    return shift.make_hetero_db(tmp_path_factory.mktemp("hshift"))


@pytest.mark.slow
def test_feedback_shifts_the_trained_data_with_dataloader_workers(hetero_db, small_bpe, tmp_path):
    """One process, num_workers=2 (forked DataLoader workers follow the job's directory)."""
    with MixteraClient.local(hetero_db, rank=0) as client:
        job_id = shift_job(client, "h-shift-w2", small_bpe, 1)
        trainer = shift_trainer(client, job_id, tmp_path)
        trainer.train()
        assert trainer.mixtera_callback.sent == shift.STEPS and len(trainer.trained) == shift.STEPS
        shift.assert_shifted(trainer.trained, client.job(job_id).key_names)
        assert client.mixture_weights(job_id)[shift.FAVOURED] > 0.9
        shift.assert_replays(client.job(job_id), 0, 2, trainer.trained)


HF_DDP_SHIFT_SCRIPT = (
    textwrap.dedent(
        """
    import json, sys
    import torch.distributed as dist
    import mixture_shift as shift
    from mixtera_core import MixteraClient
    from test_hf import shift_job, shift_trainer

    db, out, bpe = sys.argv[1:4]
    client = MixteraClient.local(db)  # on every rank: rank 0 owns the catalog, the others follow it
    job_id = shift_job(client, "h-shift-ddp", bpe, 2)  # rank 1 waits for rank 0's job
    """
    )
    + shift.RECORD_FEEDBACK
    + textwrap.dedent(
        """
    trainer = shift_trainer(client, job_id, out, ddp_backend="gloo", save_strategy="steps", save_steps=RESUME_AT)
    trainer.train()
    dist.barrier()  # rank 0 has sent the last feedback
    report = {"owner": client.owner, "trained": trainer.trained, "sent": list(sent),
              "history": client.mixture_history(job_id)}
    keep_job(job_id)
    # a restarted run resumes from the checkpoint: rank 0 restores the mixture state, rank 1
    # follows the restored log
    resumed = shift_trainer(client, job_id, out, ddp_backend="gloo")
    resumed.train(resume_from_checkpoint=f"{out}/checkpoint-RESUME_AT")
    dist.barrier()
    report["resumed"], report["history_after_resume"] = resumed.trained, client.mixture_history(job_id)
    with open(f"{out}/rank{trainer.args.process_index}.json", "w") as fh:
        json.dump(report, fh)
    client.close()
    """
    )
).replace("RESUME_AT", str(RESUME_AT))


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_torchrun_on_a_local_catalog_shifts_the_trained_data(hetero_db, small_bpe, tmp_path):
    """``python -m torch.distributed.run --standalone --nproc-per-node 2`` (gloo, CPU),
    ``MixteraClient.local(db)`` on both ranks; then the run resumes from its step-40 checkpoint."""
    script = tmp_path / "train.py"
    script.write_text(HF_DDP_SHIFT_SCRIPT)
    res = shift.two_ranks(script, hetero_db, tmp_path, small_bpe)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shift.assert_ddp_feedback_combined_and_applied(Job.load(str(tmp_path / "trained-job")), ranks)
    shift.assert_resumed(ranks, RESUME_AT)


@pytest.mark.slow
def test_a_schedule_switched_by_the_step_is_reported_and_lands(hetero_db, small_bpe, tmp_path):
    """A ScheduleMixture without samples_per_step is sealed like a dynamic one: the callback
    reports every optimizer step (rank 0, highest consumed chunk), else the streams would stop
    at the seal. Every sequence of a chunk before the switch's chunk is c/python; after it, uk."""
    before = {"lang=c": 0.5, "lang=python": 0.5, "lang=uk": 0.0}
    after = {"lang=c": 0.0, "lang=python": 0.0, "lang=uk": 1.0}
    with MixteraClient.local(hetero_db, rank=0) as client:
        job_id = client.execute(
            Query.for_job("h-schedule"),
            ScheduleMixture([(0, before), (3, after)]),
            tokenizer=("hf", str(small_bpe)),
            **shift.shift_options(1, 2),
        )
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, use_cpu=True, report_to=[], **SMALL)
        with pytest.raises(MixteraError, match="schedule switched by the training step"):
            MixteraTrainer(model=model(), args=args, train_dataset=mixtera_dataset(client, job_id))
        trainer = MixteraTrainer(
            model=shift.gpt2(),
            args=args,
            train_dataset=mixtera_dataset(client, job_id),
            mixtera_client=client,
        )
        sequences: list[tuple[int, list[int]]] = []
        compute_loss = trainer.compute_loss

        def recording(m, inputs, *a, **kw):
            sequences.extend(zip(inputs["chunk_index"].tolist(), inputs["key_ids"].tolist(), strict=True))
            return compute_loss(m, inputs, *a, **kw)

        trainer.compute_loss = recording  # type: ignore[method-assign]
        trainer.train()
        (change,) = client.checkpoint(job_id)["changes"]
        assert change["reason"] == "schedule switch at step 3"
        assert change["chunk"] >= change["position"] + 1 + client.job(job_id).spec.delay  # (or the seal)
        uk = client.job(job_id).key_names.index(shift.FAVOURED)
        old = [keys for chunk, keys in sequences if chunk < change["chunk"]]
        new = [keys for chunk, keys in sequences if chunk >= change["chunk"]]
        assert len(old) >= 48 and not any(uk in keys for keys in old)
        # (the first sequence a stream packs after the switch may end a document from before it)
        tokens = [k for keys in new for k in keys]
        assert len(new) >= 40 and tokens.count(uk) / len(tokens) > 0.95
