"""Train a tiny GPT-2 with PyTorch Lightning on the demo corpus, with a static and a dynamic mixture.

Runs on the CPU in well under a minute and downloads nothing: the corpus comes from
Python's own sources (``mixtera_core.demo``), the tokenizer is a small byte-level BPE
trained on it, the model a 2-layer GPT-2 with random initialisation. The data comes from
:class:`~mixtera_integrations.lightning.MixteraDataModule`; with the dynamic mixture
:class:`~mixtera_integrations.lightning.MixteraFeedbackCallback` sends per-domain losses
(the module returns ``{"loss", "token_loss"}`` from ``training_step``) and the mixing
algorithm moves the weights. 5% of every domain is held out (``holdout=Holdout(...)``) and
validated on per domain; the mixture weights and the per-domain training and validation losses
go to a ``CSVLogger`` (``<out>/<run>/lightning_logs/version_0/metrics.csv``). Checkpoints hold the
data position: ``Trainer.fit(..., ckpt_path=...)`` continues the stream exactly.

    python examples/lightning_train.py [--steps 40] [--algorithm loss_weighted] [--out lightning_out]
"""

from __future__ import annotations

import argparse
import os
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from mixtera_integrations.lightning import MixteraDataModule, MixteraFeedbackCallback
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from mixtera_core import MixteraClient, Query
from mixtera_core.client import LocalMixteraClient
from mixtera_core.demo import build_demo_corpus
from mixtera_core.holdout import Holdout
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


class TinyGPT(L.LightningModule):
    def __init__(self, vocab: int, seq_len: int) -> None:
        super().__init__()
        self.model = GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_positions=seq_len, n_embd=64, n_layer=2, n_head=2)
        )
        self.losses: list[float] = []

    def token_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"]).logits  # targets are already shifted
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none").view_as(
            batch["targets"]
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        token_loss = self.token_loss(batch)
        loss = token_loss.mean()
        self.losses.append(float(loss.detach()))
        return {"loss": loss, "token_loss": token_loss}  # token_loss feeds MixteraFeedbackCallback

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"token_loss": self.token_loss(batch)}  # per-domain validation loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def run(
    client: LocalMixteraClient, name: str, mixture: Mixture, tokenizer: str, args: argparse.Namespace
) -> None:
    torch.manual_seed(0)
    dm = MixteraDataModule(
        client,
        query=Query.for_job(f"lightning-{name}"),
        mixture=mixture,
        tokenizer=("hf", tokenizer),
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        chunk_size=256,
        seed=0,
        on_exhausted="repeat",
        holdout=Holdout(0.05, seed=0),
        val_sequences=32,
    )
    module = TinyGPT(args.vocab, args.seq_len)
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=os.path.join(args.out, name),
        logger=CSVLogger(os.path.join(args.out, name)),
        log_every_n_steps=max(1, args.steps // 4),
        val_check_interval=max(1, args.steps // 2),
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[MixteraFeedbackCallback()],
    )
    trainer.fit(module, datamodule=dm)
    assert dm.job is not None
    job = client.job(dm.job.spec.job_id)
    weights = job.log.at(job.log.entries[-1][0])
    per_key = [float(weights[job.resolved.component_key == k].sum()) for k in range(len(job.key_names))]
    shown = ", ".join(f"{k.split('=')[-1]} {w:.2f}" for k, w in zip(job.key_names, per_key, strict=True))
    tail = module.losses[-5:]
    held_out = ", ".join(
        f"{k.split('=')[-1]} {float(v):.2f}"
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val_loss/")
    )
    print(
        f"{name:>8}: step {trainer.global_step}: weights {shown} | mixture changes {len(job.changes)} | "
        f"mean loss over the last {len(tail)} steps {sum(tail) / len(tail):.2f} | held-out loss per domain "
        f"{held_out}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--algorithm", default="loss_weighted", help="mixing algorithm of the dynamic run")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--out", default="lightning_out")
    args = ap.parse_args()
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
