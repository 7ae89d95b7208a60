"""HF Trainer integration: an unmodified ``transformers.Trainer`` (and subclasses) with ``MixteraCallback``.

What the model trains on and what the trainer reports are checked against the job's streams
and against losses computed here from the model's own logits.
"""

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
import torch.nn.functional as F  # noqa: E402
from mixtera_integrations.hf import (  # noqa: E402
    MixteraCallback,
    MixteraCollator,
    MixteraTrainDataset,
    MixteraTrainer,
    mixtera_dataset,
)
from test_streaming import WEIGHTS, corpus  # noqa: E402, F401  (module fixture reused)
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.errors import MixteraError  # noqa: E402
from mixtera_core.holdout import Holdout, execute_split  # noqa: E402
from mixtera_core.job import Job  # noqa: E402
from mixtera_core.mixture import DynamicMixture, ScheduleMixture  # noqa: E402
from mixtera_core.plugins import PluginManager  # noqa: E402
from mixtera_core.streaming import JobStream  # noqa: E402
from mixtera_core.torch import MixteraEvalDataset  # noqa: E402

SEQ = 24
RESUME_AT = 40


@pytest.fixture(scope="module")
def hclient(corpus, tmp_path_factory):  # noqa: F811
    c = MixteraClient.local(tmp_path_factory.mktemp("hf") / "db")
    c.register_dataset("d", corpus, parser_options={"language": "meta.language", "license": "meta.license"})
    yield c
    c.close()


def job(client, job_id, bpe, mixture=WEIGHTS, **options):
    options = {"chunk_size": 12, "seed": 3, "on_exhausted": "repeat", "num_workers": 1, **options}
    return client.execute(Query.for_job(job_id), mixture, tokenizer=("hf", str(bpe)), seq_len=SEQ, **options)


def gpt2():
    """No dropout (a resumed run computes the same losses). ``loss_type`` set: transformers derives
    it from the class name, finds none in "GPT2LMHeadModel", and the Trainer then also counts
    position 0 of the labels, which is no target, reporting (seq_len - 1) / seq_len of the loss."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1000,
        n_positions=SEQ,
        n_embd=32,
        n_layer=1,
        n_head=2,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    return model


class Forwards:
    """Records every forward of a model (a forward hook registered before the callback's, so it
    sees the batch as the Trainer passed it): training or not, the inputs, the bookkeeping and the
    model's output."""

    def __init__(self, model) -> None:
        self.calls: list[dict] = []
        model.register_forward_pre_hook(self.before, with_kwargs=True)
        model.register_forward_hook(self.after, with_kwargs=True)

    def before(self, module, args, kwargs):
        info = kwargs.get("mixtera")
        self.calls.append(
            {
                "training": module.training,
                "input_ids": kwargs["input_ids"].clone(),
                "labels": kwargs["labels"].clone(),
                "key_ids": None if info is None else info["key_ids"].clone(),
                "chunk": None
                if info is None or "chunk_index" not in info
                else int(info["chunk_index"].max()),
            }
        )

    def after(self, module, args, kwargs, output):
        logits = output.logits.detach().float()
        ids = self.calls[-1]["input_ids"]
        self.calls[-1]["loss"] = float(output.loss)
        self.calls[-1]["aux_loss"] = (
            None if getattr(output, "aux_loss", None) is None else float(output.aux_loss)
        )
        # the next-token objective, computed here from the model's logits, and the wrong one (shifted twice)
        self.calls[-1]["next_token"] = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
        ).view(ids.shape[0], -1)
        self.calls[-1]["after_next"] = float(
            F.cross_entropy(logits[:, :-2].flatten(0, 1), ids[:, 2:].flatten())
        )

    def trained(self) -> list[dict]:
        return [c for c in self.calls if c["training"]]

    def evaluated(self) -> list[dict]:
        return [c for c in self.calls if not c["training"]]


def arguments(out, max_steps, **args) -> TrainingArguments:
    base = dict(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=3, per_device_eval_batch_size=4,
        learning_rate=3e-3, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    return TrainingArguments(**{**base, **args})


def plain_trainer(model, callback: MixteraCallback, args: TrainingArguments, cls=Trainer) -> Trainer:
    trainer = cls(
        model=model,
        args=args,
        train_dataset=callback.train_dataset,
        eval_dataset=callback.eval_dataset,
        data_collator=callback.collator,
        callbacks=[callback],
    )
    callback.attach(trainer)
    return trainer


def stream_inputs(job_obj: Job, n: int, dp_group: int = 0, workers: int = 1) -> list[list[int]]:
    """The first n input_ids rows a loader with `workers` workers yields (one batch of 3 per worker in turn)."""
    streams = [iter(JobStream(job_obj, dp_group, 0, w)) for w in range(workers)]
    out: list[list[int]] = []
    while len(out) < n:
        for it in streams:
            out += [next(it).tokens[:-1].tolist() for _ in range(3)]
    return out[:n]


def domain_means(calls: list[dict], names: list[str]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for c in calls:
        keys = c["key_ids"][:, 1:]
        for loss, key in zip(c["next_token"].flatten().tolist(), keys.flatten().tolist(), strict=True):
            sums[names[key]] = sums.get(names[key], 0.0) + loss
            counts[names[key]] = counts.get(names[key], 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


# ---------------------------------------------------------------------------------------------- objective


def test_the_trainer_trains_the_next_token_objective_on_the_delivered_tokens(hclient, small_bpe, tmp_path):
    """labels are unshifted and the model shifts them once: the loss the Trainer reports at every
    step equals the next-token cross entropy of the delivered tokens computed here from the
    model's logits (not the token-after-next loss, what shifted labels shifted again would train).
    The per-domain losses and weights in the logs are those of the same tokens."""
    job_id = job(hclient, "h-objective", small_bpe)
    model = gpt2()
    seen = Forwards(model)
    callback = MixteraCallback(hclient, job_id)
    trainer = plain_trainer(model, callback, arguments(tmp_path, 40))
    trainer.train()
    trained = seen.trained()
    assert len(trained) == 40
    assert [row for c in trained for row in c["input_ids"].tolist()] == stream_inputs(callback.job, 120)
    assert all(torch.equal(c["labels"], c["input_ids"]) for c in trained)
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["step"] for r in logs] == list(range(1, 41))
    for r, c in zip(logs, trained, strict=True):
        assert r["loss"] == pytest.approx(float(c["next_token"].mean()), rel=1e-5)
        names = callback.job.key_names
        assert {k: r[f"loss/{k}"] for k in names if f"loss/{k}" in r} == pytest.approx(
            domain_means([c], names)
        )
        assert {k: r[f"mixture_weight/{k}"] for k in names} == pytest.approx(WEIGHTS)
    # the equality singles out the next-token objective: the token after next gives other values
    assert sum(abs(r["loss"] - c["after_next"]) for r, c in zip(logs, trained, strict=True)) / 40 > 1e-2


def test_the_model_s_own_loss_terms_are_kept(hclient, small_bpe, tmp_path):
    """A mixture-of-experts model adds its router's auxiliary loss to the cross entropy: the Trainer
    reports (and trains on) exactly the model's loss, the callback's per-domain losses are the
    cross entropy alone."""
    transformers = pytest.importorskip("transformers")
    job_id = job(hclient, "h-moe", small_bpe)
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=SEQ,
        output_router_logits=True, router_aux_loss_coef=0.5,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(config)
    seen = Forwards(model)
    callback = MixteraCallback(hclient, job_id)
    trainer = plain_trainer(model, callback, arguments(tmp_path, 4))
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    for r, c in zip(logs, seen.trained(), strict=True):
        ce = float(c["next_token"].mean())
        assert c["aux_loss"] is not None and c["aux_loss"] > 0.1
        assert (
            r["loss"]
            == pytest.approx(c["loss"], rel=1e-5)
            == pytest.approx(ce + 0.5 * c["aux_loss"], rel=1e-5)
        )
        names = callback.job.key_names
        assert {k: r[f"loss/{k}"] for k in names if f"loss/{k}" in r} == pytest.approx(
            domain_means([c], names)
        )


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(("dynamic", "num_workers"), [(False, 1), (False, 2), (True, 1)])
def test_resume_from_a_trainer_checkpoint_trains_the_same_batches(
    hclient, small_bpe, tmp_path, dynamic, num_workers
):
    """An uninterrupted run against a run stopped after step 5 and resumed from its step-3
    checkpoint (model, optimizer, data position, and with a dynamic mixture the mixture state):
    the same batches at every step. Two jobs with the same spec, as the dynamic one's mixture log
    is moved by its run."""
    mixture = DynamicMixture(WEIGHTS, "loss_weighted", update_every=2) if dynamic else WEIGHTS
    # dynamic: chunks of about half a batch, so that changes land within the 8 steps
    small = {"chunk_tokens": 40, "feedback_delay": 6} if dynamic else {}
    ids = [
        job(
            hclient,
            f"h-resume-{dynamic}-{num_workers}-{r}",
            small_bpe,
            mixture,
            num_workers=num_workers,
            **small,
        )
        for r in "ab"
    ]
    args = dict(
        save_strategy="steps", save_steps=3, dataloader_num_workers=0 if num_workers == 1 else num_workers,
        lr_scheduler_type="constant",  # the learning rates do not depend on max_steps (5 or 8)
    )  # fmt: skip

    def run(job_id, out, steps, resume=None):
        model = gpt2()
        seen = Forwards(model)
        callback = MixteraCallback(hclient, job_id)
        trainer = plain_trainer(model, callback, arguments(out, steps, **args))
        trainer.train(resume_from_checkpoint=resume)
        trainer.chunks = [c["chunk"] for c in seen.trained()]  # type: ignore[attr-defined]
        return callback, [c["input_ids"] for c in seen.trained()], trainer

    full_cb, full, full_trainer = run(ids[0], tmp_path / "full", 8)
    _, first, _ = run(ids[1], tmp_path / "run", 5)
    ckpt = tmp_path / "run" / "checkpoint-3"
    saved = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]["mixtera"]
    assert saved["job_id"] == ids[1] and saved["streams"]["0/0"]["batches"] == 3
    assert (saved["job"] is not None) == dynamic
    cb, second, trainer = run(ids[1], tmp_path / "run", 8, resume=str(ckpt))
    assert trainer.state.global_step == 8 and len(second) == 5
    for step in range(8):
        got = first[step] if step < 3 else second[step - 3]
        assert torch.equal(got, full[step]), step
    if dynamic:
        assert full_cb.sent == 8 and cb.sent == 5
        assert hclient.job(ids[0]).changes and hclient.mixture_history(ids[0]) == hclient.mixture_history(
            ids[1]
        )


# ---------------------------------------------------------------------------------------------- evaluation


def test_held_out_evaluation_and_the_logs_in_tensorboard(hclient, small_bpe, tmp_path):
    """execute_split builds a training job without and an eval job with the held-out samples. The
    Trainer evaluates the same eval sequences every time; the per-domain eval losses computed here
    from the model's logits, and the training logs, are what TensorBoard's event files hold."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_id, eval_id = execute_split(
        hclient, Query.for_job("h-split"), WEIGHTS, Holdout(0.2, seed=11), tokenizer=("hf", str(small_bpe)),
        seq_len=SEQ, chunk_size=12, seed=3, on_exhausted="repeat",
    )  # fmt: skip
    assert hclient.job(eval_id).spec.query["split"]["part"] == "eval"
    model = gpt2()
    seen = Forwards(model)
    callback = MixteraCallback(hclient, train_id, eval_job=eval_id, eval_sequences=10)
    args = arguments(
        tmp_path, 6, logging_steps=2, eval_strategy="steps", eval_steps=3, report_to=["tensorboard"],
    )  # fmt: skip
    trainer = plain_trainer(model, callback, args)
    trainer.train()
    evaluated = seen.evaluated()
    reference = [it["input_ids"].tolist() for it in MixteraEvalDataset(hclient.job(eval_id), 10)]
    rows = [row for c in evaluated for row in c["input_ids"].tolist()]
    assert rows == reference + reference  # after steps 3 and 6: the same held-out sequences
    names = callback.job.key_names
    eval_logs = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert [r["step"] for r in eval_logs] == [3, 6]
    for r, calls in zip(eval_logs, (evaluated[:3], evaluated[3:]), strict=True):
        assert {k: r[f"eval_loss/{k}"] for k in names} == pytest.approx(domain_means(calls, names))
    train_logs = [r for r in trainer.state.log_history if "loss" in r]
    (event_file,) = tmp_path.glob("**/events.out.tfevents*")  # TensorBoardCallback's default directory
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in names:
        for tag, logs, name in (
            (f"train/mixture_weight/{key}", train_logs, f"mixture_weight/{key}"),
            (f"train/loss/{key}", train_logs, f"loss/{key}"),
            (f"eval/loss/{key}", eval_logs, f"eval_loss/{key}"),
        ):
            assert tag in tags, (tag, sorted(tags))
            written = {e.step: e.value for e in events.Scalars(tag)}
            expected = {r["step"]: r[name] for r in logs if name in r}
            assert written.keys() == expected.keys() and list(written.values()) == pytest.approx(
                list(expected.values())
            )


# ---------------------------------------------------------------------------------------------- subclasses


class LikeSFT(Trainer):
    """Overrides compute_loss the way TRL's SFTTrainer does: extra inputs, super().compute_loss with
    outputs, metrics from the logits and the (unshifted) labels, merged into the logs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.accuracy: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        with torch.no_grad():
            predicted, labels = outputs.logits[:, :-1].argmax(-1), inputs["labels"][:, 1:]
            self.accuracy.append(float((predicted == labels).float().mean()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.accuracy:
            logs["mean_token_accuracy"] = sum(self.accuracy) / len(self.accuracy)
            self.accuracy = []
        super().log(logs, *args, **kwargs)


def test_a_trainer_subclass_with_its_own_compute_loss_and_a_dynamic_mixture(hclient, small_bpe, tmp_path):
    mixture = DynamicMixture(WEIGHTS, "loss_weighted", update_every=2)
    job_id = job(hclient, "h-subclass", small_bpe, mixture, feedback_delay=8, chunk_tokens=40)
    model = gpt2()
    seen = Forwards(model)
    callback = MixteraCallback(hclient, job_id)
    trainer = plain_trainer(model, callback, arguments(tmp_path, 12, gradient_accumulation_steps=2), LikeSFT)
    model_kwargs: list[set[str]] = []
    model.register_forward_pre_hook(
        lambda m, a, kw: model_kwargs.append(set(kw)), with_kwargs=True
    )  # after the callback's
    trainer.train()
    assert callback.sent == 12  # once per optimizer step (2 micro-batches each)
    assert hclient.job(job_id).changes, "the mixing algorithm never changed the weights"
    assert all(k == {"input_ids", "labels", "use_cache", "num_items_in_batch"} for k in model_kwargs), (
        model_kwargs[0]
    )
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 12 and all(
        "mean_token_accuracy" in r and any(k.startswith("loss/") for k in r) for r in logs
    )
    final = hclient.job(job_id)  # every batch is the next one of the stream under the final mixture log
    assert [row for c in seen.trained() for row in c["input_ids"].tolist()] == stream_inputs(final, 72)
    logged = [{k: r[f"mixture_weight/{k}"] for k in final.key_names} for r in logs]
    for r, w in zip(logs, logged, strict=True):
        chunk = max(c["chunk"] for c in seen.trained()[: 2 * r["step"]])
        assert w == pytest.approx(hclient.mixture_weights(job_id, chunk=chunk))
    assert logged[0] != logged[-1]


# ---------------------------------------------------------------------------------------------- wiring


def test_collator_plugin_compat_and_errors(hclient, small_bpe, tmp_path):
    job_id = job(hclient, "h-plugin", small_bpe)
    pm = PluginManager(load_entrypoints=False)
    pm.register(importlib.import_module("mixtera_integrations.hf.plugin"))
    ds = pm.trainer_adapter("hf").build_data(hclient, job_id)
    assert isinstance(ds, MixteraTrainDataset)
    items = [it for _, it in zip(range(4), ds, strict=False)]
    assert not isinstance(items[0], dict)  # so that the Trainer's remove_unused_columns leaves it alone
    collator = MixteraCollator()
    plain = collator(items)  # no callback hooked a model: nothing but the model's inputs
    assert set(plain) == {"input_ids", "labels"} and plain["input_ids"].shape == (4, SEQ)
    assert [r for r in plain["input_ids"].tolist()] == stream_inputs(hclient.job(job_id), 4)
    collator.armed = True
    armed = collator(items)
    assert set(armed) == {"input_ids", "labels", "mixtera"}
    assert set(armed["mixtera"]) == {"key_ids", "chunk_index", "worker", "state"}
    assert [it["input_ids"].tolist() for _, it in zip(range(4), ds, strict=False)] == plain[
        "input_ids"
    ].tolist()
    with pytest.raises(MixteraError, match="pass client= too"):
        MixteraCallback(None, job_id)
    dyn = job(hclient, "h-dyn", small_bpe, mixture=DynamicMixture(WEIGHTS, "loss_weighted"))
    with pytest.raises(MixteraError, match="pass client="):
        MixteraCallback(None, hclient.job(dyn))
    samples = hclient.execute(Query.for_job("h-samples"), WEIGHTS, chunk_size=12)
    with pytest.raises(MixteraError, match="streams samples"):
        MixteraCallback(hclient, samples)
    # the earlier MixteraTrainer: a Trainer with the callback attached
    with pytest.raises(MixteraError, match="mixtera_dataset"):
        MixteraTrainer(model=gpt2(), args=arguments(tmp_path, 1), train_dataset=[1, 2])
    model = gpt2()
    seen = Forwards(model)
    compat = MixteraTrainer(
        model=model, args=arguments(tmp_path, 2), train_dataset=mixtera_dataset(hclient, job_id)
    )
    compat.train()
    assert isinstance(compat.mixtera_callback, MixteraCallback)
    assert [r for c in seen.trained() for r in c["input_ids"].tolist()] == stream_inputs(
        hclient.job(job_id), 6
    )


def test_a_checkpoint_of_the_earlier_mixtera_trainer_resumes(hclient, small_bpe, tmp_path):
    """The earlier MixteraTrainer kept the data state in mixtera_state.json next to the checkpoint
    (same layout); MixteraTrainer.train(resume_from_checkpoint=...) still continues from it."""
    job_id = job(hclient, "h-legacy", small_bpe)

    def run(out, steps, resume=None):
        model = gpt2()
        seen = Forwards(model)
        args = arguments(out, steps, save_strategy="steps", save_steps=3, lr_scheduler_type="constant")
        MixteraTrainer(model=model, args=args, train_dataset=mixtera_dataset(hclient, job_id)).train(resume)
        return [c["input_ids"] for c in seen.trained()]

    full = run(tmp_path / "full", 6)
    run(tmp_path / "run", 3)
    ckpt = tmp_path / "run" / "checkpoint-3"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "mixtera_state.json").write_text(json.dumps(state["stateful_callbacks"].pop("mixtera")))
    (ckpt / "trainer_state.json").write_text(json.dumps(state))  # as the earlier version left it
    resumed = run(tmp_path / "run", 6, str(ckpt))
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(resumed, full[3:], strict=True))


def test_a_finite_job_is_trained_once_and_the_trainer_stops(hclient, small_bpe, tmp_path):
    """on_exhausted="stop": every sequence of the job exactly once, then the Trainer stops (its next
    epoch continues after the streams' ends instead of starting them again)."""
    train_id, eval_id = execute_split(
        hclient, Query.for_job("h-finite").select(("language", "==", "c")), {"language=c": 1.0},
        Holdout(0.015, seed=1), tokenizer=("hf", str(small_bpe)), seq_len=SEQ, chunk_size=4, on_exhausted="stop",
    )  # fmt: skip
    expected = [s.tokens[:-1].tolist() for s in JobStream(hclient.job(eval_id))]
    # the split hashes file paths, and the corpus lies in a new temporary directory every run: the
    # eval set's size varies from run to run (14 to ~100 sequences seen); batches of 3 need a few
    assert 8 <= len(expected) < 300
    model = gpt2()
    seen = Forwards(model)
    trainer = plain_trainer(
        model, MixteraCallback(hclient, eval_id), arguments(tmp_path, 1000, logging_steps=1000)
    )
    trainer.train()
    trained = [row for c in seen.trained() for row in c["input_ids"].tolist()]
    assert trained == expected[: len(trained)] and len(expected) - len(trained) < 3  # (a last short batch)
    assert trainer.state.global_step == len(seen.trained()) < 1000


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
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "static: step 6" in res.stdout and "dynamic: step 6" in res.stdout
    state = json.loads((tmp_path / "dynamic" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["mixtera"]["streams"]


# ---------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from mixtera_core.job import Job
from mixtera_integrations.hf import MixteraCallback

job_dir, eval_dir, out = sys.argv[1:4]
args = TrainingArguments(output_dir=out, max_steps=4, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                         use_cpu=True, ddp_backend="gloo", report_to=[], save_strategy="steps", save_steps=4,
                         eval_strategy="steps", eval_steps=4, logging_steps=1, disable_tqdm=True)
# every rank loads the jobs from disk (no catalog is opened twice); a static mixture needs no client
mixtera = MixteraCallback(job=Job.load(job_dir), eval_job=Job.load(eval_dir), eval_sequences=8)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=24, n_embd=32, n_layer=1, n_head=2))
seen = {"train": [], "eval": []}
model.register_forward_pre_hook(
    lambda m, a, kw: seen["train" if m.training else "eval"].extend(kw["input_ids"].tolist()), with_kwargs=True)
trainer = Trainer(model=model, args=args, train_dataset=mixtera.train_dataset, eval_dataset=mixtera.eval_dataset,
                  data_collator=mixtera.collator, callbacks=[mixtera])
mixtera.attach(trainer)
trainer.train()
with open(f"{out}/rank{trainer.args.process_index}.json", "w") as fh:
    json.dump({"world": trainer.args.world_size, "seen": seen, "logs": trainer.state.log_history}, fh)
"""


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_torchrun_ddp_ranks_train_on_their_dp_groups(hclient, small_bpe, tmp_path):
    """Two processes under torchrun (gloo), a plain Trainer: rank r trains on dp_group r's stream,
    exactly; both evaluate their half of the same eval set and log the same per-domain eval loss;
    the checkpoint holds both ranks' positions."""
    job_id = job(hclient, "hf-ddp", small_bpe, dp_groups=2)
    eval_id = job(hclient, "hf-ddp-eval", small_bpe, on_exhausted="stop")
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    jobs = os.path.join(hclient.catalog.db_dir, "jobs")
    res = shift.two_ranks(
        script, os.path.join(jobs, job_id), os.path.join(jobs, eval_id), tmp_path, timeout=280
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    evals = [s.tokens[:-1].tolist() for _, s in zip(range(8), JobStream(hclient.job(eval_id)), strict=False)]
    for rank, got in enumerate(ranks):
        stream = iter(JobStream(hclient.job(job_id), rank))
        assert got["world"] == 2
        assert got["seen"]["train"] == [next(stream).tokens[:-1].tolist() for _ in range(8)]  # 4 steps x 2
    assert ranks[0]["seen"]["train"] != ranks[1]["seen"]["train"]
    assert sorted(ranks[0]["seen"]["eval"] + ranks[1]["seen"]["eval"]) == sorted(evals)
    eval_logs = [
        [{k: v for k, v in r.items() if "loss" in k} for r in got["logs"] if "eval_loss" in r]
        for got in ranks
    ]
    assert (
        eval_logs[0] == eval_logs[1] and "eval_loss/language=c" in eval_logs[0][0]
    )  # reduced over both ranks
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert {k: v["batches"] for k, v in state["stateful_callbacks"]["mixtera"]["streams"].items()} == {
        "0/0": 4,
        "1/0": 4,
    }


# ------------------------------------------------------------------ the trained data follows the feedback
# (scheme and checks: tests/mixture_shift.py)


class FavouringCallback(MixteraCallback):
    """Feeds back the real per-token losses with the favoured key's x10, and records every trained
    batch (tokens and fed-back losses per key, highest chunk, input ids)."""

    trained: list[dict]

    def token_losses(self, output, labels, info):
        losses = super().token_losses(output, labels, info)
        if self._model.training:  # position i predicts token i + 1, whose key is key_ids[:, i + 1]
            keys = info["key_ids"][:, 1:]
            losses = shift.feedback_losses(losses, keys, self.job.key_names.index(shift.FAVOURED))
            self.trained.append(shift.step_record(losses, keys, info["chunk_index"], labels))
        return losses


def shift_trainer(client, job_id: str, out, **args) -> Trainer:
    """A plain Trainer (1-layer GPT-2) with a FavouringCallback; ``trainer.trained`` records every batch."""
    base = dict(
        output_dir=str(out), max_steps=shift.STEPS, use_cpu=True, report_to=[], per_device_train_batch_size=shift.BATCH,
        learning_rate=1e-3, save_strategy="no", logging_steps=1000, disable_tqdm=True,
    )  # fmt: skip
    arguments = TrainingArguments(**{**base, **args})
    callback = FavouringCallback(client, job_id)
    callback.trained = []
    trainer = plain_trainer(shift.gpt2(), callback, arguments)
    trainer.trained = callback.trained  # type: ignore[attr-defined]
    trainer.mixtera = callback  # type: ignore[attr-defined]
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
        trainer = shift_trainer(client, job_id, tmp_path, dataloader_num_workers=2)
        trainer.train()
        assert trainer.mixtera.sent == shift.STEPS and len(trainer.trained) == shift.STEPS
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
    trainer = shift_trainer(client, job_id, out, ddp_backend="gloo", dataloader_num_workers=2,
                            save_strategy="steps", save_steps=RESUME_AT)
    trainer.train()
    dist.barrier()  # rank 0 has sent the last feedback
    report = {"owner": client.owner, "trained": trainer.trained, "sent": list(sent),
              "history": client.mixture_history(job_id)}
    keep_job(job_id)
    # a restarted run resumes from the checkpoint: rank 0 restores the mixture state, rank 1
    # follows the restored log
    resumed = shift_trainer(client, job_id, out, ddp_backend="gloo", dataloader_num_workers=2)
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
    ``MixteraClient.local(db)`` on both ranks, a plain Trainer; then the run resumes from its
    step-40 checkpoint."""
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
        with pytest.raises(MixteraError, match="pass client="):
            MixteraCallback(None, client.job(job_id))
        model = shift.gpt2()
        seen = Forwards(model)
        callback = MixteraCallback(client, job_id)
        args = arguments(tmp_path, 40, per_device_train_batch_size=shift.BATCH, dataloader_num_workers=2)
        trainer = plain_trainer(model, callback, args)
        trainer.train()
        (change,) = client.checkpoint(job_id)["changes"]
        assert change["reason"] == "schedule switch at step 3"
        assert change["chunk"] >= change["position"] + 1 + client.job(job_id).spec.delay  # (or the seal)
        uk = client.job(job_id).key_names.index(shift.FAVOURED)
        sequences = [
            (c["chunk"], keys) for c in seen.trained() for keys in c["key_ids"].tolist()
        ]  # (chunk: the batch's highest)
        old = [keys for chunk, keys in sequences if chunk < change["chunk"]]
        new = [keys for chunk, keys in sequences if chunk >= change["chunk"] + 2]
        assert len(old) >= 48 and not any(uk in keys for keys in old)
        tokens = [k for keys in new for k in keys]
        assert len(new) >= 40 and tokens.count(uk) / len(tokens) > 0.95
