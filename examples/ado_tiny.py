"""Train a tiny GPT-2 on the demo corpus with a static and with a dynamic (ADO) mixture.

Everything runs on the CPU in a few minutes and nothing is downloaded: the corpus comes
from Python's own sources (``mixtera_core.demo``), the tokenizer is a small byte-level BPE
trained on it, and the model is a 2-layer GPT-2 with random initialisation. Per-token
losses become per-domain feedback (``mixtera_core.feedback``); with the dynamic mixture the
algorithm moves the weights. Writes ``<out>/ado_tiny.csv`` (step, run, per-domain weight
and loss) and ``<out>/ado_tiny.png`` (weights and loss curves of both runs).

    python examples/ado_tiny.py [--steps 300] [--algorithm ado] [--out ado_out]
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from mixtera_core import MixteraClient, Query
from mixtera_core.demo import build_demo_corpus
from mixtera_core.feedback import FeedbackReporter
from mixtera_core.mixture import DynamicMixture, StaticMixture
from mixtera_core.torch import MixteraDataLoader, MixteraDataset

DOMAINS = ["language=python", "language=c", "language=en"]


def train_tokenizer(corpus_texts: list[str], path: str, vocab: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(corpus_texts, trainer)
    tok.save(path)
    return path


def run(client: MixteraClient, name: str, mixture, tokenizer: str, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    job = client.execute(
        Query.for_job(f"ado-tiny-{name}"),
        mixture,
        chunk_size=256,
        seed=0,
        on_exhausted="repeat",
        tokenizer=("hf", tokenizer),
        seq_len=args.seq_len,
    )
    loader = MixteraDataLoader(MixteraDataset(client.job(job)), batch_size=args.batch_size)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=args.vocab, n_positions=args.seq_len, n_embd=64, n_layer=2, n_head=2)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reporter = FeedbackReporter(client, job, len(DOMAINS)) if isinstance(mixture, DynamicMixture) else None
    rows = []
    j = client.job(job)
    for step, batch in enumerate(loader, start=1):
        logits = model(batch["input_ids"]).logits
        token_loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
        token_loss = token_loss.view_as(batch["labels"])
        token_loss.mean().backward()
        opt.step()
        opt.zero_grad()
        keys = batch["key_ids"]
        detached = token_loss.detach()
        # documents are often longer than a batch: a domain absent from this step gets NaN
        per_domain = [
            float(detached[keys == k].mean()) if bool((keys == k).any()) else float("nan") for k in range(3)
        ]
        if reporter is not None:
            reporter.step(step, token_loss, keys, batch["chunk_index"])
        weights = j.log.at(int(batch["chunk_index"].max()))  # the mixture this batch was drawn with
        kw = [float(weights[j.resolved.component_key == k].sum()) for k in range(3)]
        rows.append(
            {
                "run": name,
                "step": step,
                **{f"w_{d}": w for d, w in zip(DOMAINS, kw, strict=True)},
                **{f"loss_{d}": x for d, x in zip(DOMAINS, per_domain, strict=True)},
            }
        )
        if step >= args.steps:
            break
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("static", "--"), ("dynamic", "-")):
        mine = [r for r in rows if r["run"] == name]
        steps = [r["step"] for r in mine]
        for d in DOMAINS:
            axes[0].plot(steps, [r[f"w_{d}"] for r in mine], style, label=f"{name} {d}")
            axes[1].plot(steps, [r[f"loss_{d}"] for r in mine], style, label=f"{name} {d}")
    axes[0].set(title="mixture weight per domain", xlabel="step")
    axes[1].set(title="training loss per domain", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--algorithm", default="ado")
    ap.add_argument("--warmup", type=int, default=50, help="steps before the algorithm moves the weights")
    ap.add_argument("--refit-every", type=int, default=50)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--out", default="ado_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    corpus = build_demo_corpus(os.path.join(args.out, "corpus"))
    client = MixteraClient.local(os.path.join(args.out, "db"))
    for ds in corpus.datasets.values():
        client.register_dataset(
            ds.name, ds.location, format=ds.format, parser_options=ds.parser_options, replace=True
        )
    texts = [
        s.data for s in client.peek(Query.for_job("tok"), n=2000, properties=["language"]) for s in [_Text(s)]
    ]
    tokenizer = train_tokenizer(texts, os.path.join(args.out, "tokenizer.json"), args.vocab)
    uniform = {d: 1 / 3 for d in DOMAINS}
    options = {"warmup": args.warmup, "refit_every": args.refit_every} if args.algorithm == "ado" else {}
    rows = run(client, "static", StaticMixture(uniform), tokenizer, args)
    rows += run(client, "dynamic", DynamicMixture(uniform, args.algorithm, **options), tokenizer, args)
    client.close()
    csv_path = os.path.join(args.out, "ado_tiny.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    png = os.path.join(args.out, "ado_tiny.png")
    plot(rows, png)
    for name in ("static", "dynamic"):
        mine = [r for r in rows if r["run"] == name]
        window = mine[-max(1, len(mine) // 5) :]
        ws = ", ".join(f"{d.split('=')[1]} {mine[-1][f'w_{d}']:.2f}" for d in DOMAINS)
        ls = ", ".join(f"{d.split('=')[1]} {_nanmean([r[f'loss_{d}'] for r in window]):.2f}" for d in DOMAINS)
        print(
            f"{name:>8}: step {mine[-1]['step']}: weights {ws} | mean loss over the last {len(window)} steps {ls}"
        )
    print(f"wrote {csv_path} and {png} in {time.perf_counter() - t0:.0f}s")


def _nanmean(values: list[float]) -> float:
    seen = [v for v in values if v == v]
    return sum(seen) / len(seen) if seen else float("nan")


class _Text:
    """A peeked record's text (jsonl/parquet ``text``, webdataset ``txt``)."""

    def __init__(self, peeked: tuple[str, object]) -> None:
        record = peeked[1]
        value = record.get("text") or record.get("txt") if isinstance(record, dict) else None
        self.data = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


if __name__ == "__main__":
    main()
