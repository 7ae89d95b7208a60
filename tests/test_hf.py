"""HF Trainer integration: exact resume from a trainer checkpoint, feedback, the plugin."""

from __future__ import annotations

import importlib
import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

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
from mixtera_core.mixture import DynamicMixture  # noqa: E402
from mixtera_core.plugins import PluginManager  # noqa: E402
from mixtera_core.torch import MixteraDataset  # noqa: E402

SEQ = 24


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
    assert set(batch) == {"input_ids", "labels", "key_ids", "chunk_index"} and batch["input_ids"].shape == (
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
