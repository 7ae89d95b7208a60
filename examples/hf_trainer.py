"""Train a tiny GPT-2 with the Hugging Face Trainer on the demo corpus, static and dynamic mixture.

Runs on the CPU in well under a minute and downloads nothing (corpus from Python's own
sources, a small BPE trained on it, a 2-layer GPT-2 with random initialisation). A plain
``transformers.Trainer`` gets its training and eval data from a :class:`MixteraCallback`: 5% of
every domain is held out (:func:`~mixtera_core.holdout.execute_split`) and evaluated per domain;
the model computes its own loss from unshifted labels, the callback sends per-domain feedback to
the mixing algorithm (dynamic run), adds per-domain losses and the mixture weights to the logs
and keeps the data position in every checkpoint. The dynamic run stops half-way and resumes
from its checkpoint with ``train(resume_from_checkpoint=True)``: the data continues exactly
where it stopped.

    python examples/hf_trainer.py [--steps 40] [--algorithm loss_weighted] [--out hf_out]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from mixtera_integrations.hf import MixteraCallback
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from mixtera_core import MixteraClient, Query
from mixtera_core.client import LocalMixteraClient
from mixtera_core.demo import build_demo_corpus
from mixtera_core.holdout import Holdout, execute_split
from mixtera_core.mixture import DynamicMixture, Mixture, StaticMixture

DOMAINS = ["language=python", "language=c", "language=en"]


def train_tokenizer(client: MixteraClient, path: str, vocab: int) -> str:
    texts = []
    for _, record in client.peek(Query.for_job("tok"), n=2000, properties=["language"]):
        value = (record.get("text") or record.get("txt")) if isinstance(record, dict) else None
        texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or ""))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return path


def make_trainer(
    client: MixteraClient, job_ids: tuple[str, str], args: argparse.Namespace, out: str, steps: int
) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=args.vocab, n_positions=args.seq_len, n_embd=64, n_layer=2, n_head=2)
    )
    model.loss_type = "ForCausalLM"  # (GPT-2's class name names no loss; see README, Trainer integrations)
    training_args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="steps",
        save_steps=max(1, args.steps // 2),
        eval_strategy="steps",
        eval_steps=max(1, args.steps // 2),
        logging_steps=max(1, args.steps // 4),
        disable_tqdm=True,
    )
    mixtera = MixteraCallback(client, job_ids[0], eval_job=job_ids[1], eval_sequences=32)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=mixtera.train_dataset,
        eval_dataset=mixtera.eval_dataset,
        data_collator=mixtera.collator,
        callbacks=[mixtera],
    )
    mixtera.attach(trainer)
    return trainer


def run(
    client: LocalMixteraClient, name: str, mixture: Mixture, tokenizer: str, args: argparse.Namespace
) -> None:
    job_ids = execute_split(
        client,
        Query.for_job(f"hf-{name}"),
        mixture,
        Holdout(0.05, seed=0),
        tokenizer=("hf", tokenizer),
        seq_len=args.seq_len,
        chunk_size=256,
        seed=0,
        on_exhausted="repeat",
    )
    out = os.path.join(args.out, name)
    if name == "dynamic":  # stop half-way, then resume from the checkpoint in a new trainer
        make_trainer(client, job_ids, args, out, args.steps // 2).train()
        trainer = make_trainer(client, job_ids, args, out, args.steps)
        result = trainer.train(resume_from_checkpoint=True)
    else:
        trainer = make_trainer(client, job_ids, args, out, args.steps)
        result = trainer.train()
    weights = client.mixture_weights(job_ids[0])
    shown = ", ".join(f"{k.split('=')[-1]} {w:.2f}" for k, w in weights.items())
    evaluation = [r for r in trainer.state.log_history if "eval_loss" in r][-1]
    held_out = ", ".join(
        f"{k.split('=')[-1]} {v:.2f}" for k, v in evaluation.items() if k.startswith("eval_loss/")
    )
    print(
        f"{name:>8}: step {result.global_step}: weights {shown} | mixture changes "
        f"{len(client.job(job_ids[0]).changes)} | mean training loss {result.training_loss:.2f} | "
        f"held-out loss per domain {held_out}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--algorithm", default="loss_weighted", help="mixing algorithm of the dynamic run")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--out", default="hf_out")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    corpus = build_demo_corpus(os.path.join(args.out, "corpus"))
    client = MixteraClient.local(os.path.join(args.out, "db"))
    for ds in corpus.datasets.values():
        client.register_dataset(
            ds.name, ds.location, format=ds.format, parser_options=ds.parser_options, replace=True
        )
    tokenizer = train_tokenizer(client, os.path.join(args.out, "tokenizer.json"), args.vocab)
    uniform = {d: 1 / 3 for d in DOMAINS}
    run(client, "static", StaticMixture(uniform), tokenizer, args)
    run(client, "dynamic", DynamicMixture(uniform, args.algorithm), tokenizer, args)
    client.close()
    print(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
