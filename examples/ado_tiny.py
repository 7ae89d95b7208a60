"""Train a tiny GPT-2 on the demo corpus with a static and with a dynamic (ADO) mixture.

Everything runs on the CPU in about a minute and nothing is downloaded: the corpus comes from
Python's own sources (``mixtera_core.demo``), the tokenizer is a small byte-level BPE trained
on it, and the model is a 2-layer GPT-2 with random initialisation. Both runs start from the
same model and the same uniform mixture over three domains (Python, C, English), so they train
on the same data, with the same losses, until the dynamic run's first mixture change lands.

The dynamic run sends each step's per-token losses as per-domain feedback
(:class:`~mixtera_core.feedback.FeedbackReporter`, with the batch's ``chunk_index`` as the
consumed position). Chunks are sized in tokens (``chunk_tokens`` = one step's tokens; a chunk
holds at least one document, so here it lasts one to two steps), and a change lands
``feedback_delay`` chunks after the position its feedback names. ADO warms up, fits a scaling
law per domain, refits periodically and moves the weights; its options below are sized for a
run of a few hundred steps (ADO's own defaults suit runs of tens of thousands).

The weights recorded for a step are the job's own truth: ``client.mixture_weights(job,
chunk=c)`` with ``c`` the highest ``chunk_index`` in the step's batch, i.e. the mixture that
planned the data the step trained on. Writes ``<out>/ado_tiny.csv`` (per run and step: that
chunk, and per domain the weight in force, the mean training loss (empty where the domain has
no token in the batch) and the tokens trained on) and ``<out>/ado_tiny.png`` (weights and
smoothed losses of both runs).

    python examples/ado_tiny.py [--steps 300] [--warmup 60] [--refit-every 30] [--out ado_out]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from mixtera_core import MixteraClient, Query
from mixtera_core.demo import build_demo_corpus
from mixtera_core.feedback import FeedbackReporter
from mixtera_core.mixture import DynamicMixture, Mixture, StaticMixture
from mixtera_core.torch import MixteraDataLoader, MixteraDataset

DOMAINS = ["language=python", "language=c", "language=en"]
RUNS = ("static", "dynamic")

Row = dict[str, Any]


def train_tokenizer(client: MixteraClient, path: str, vocab: int) -> str:
    """A byte-level BPE trained on (the first 2000 samples of each domain of) the corpus."""
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


def make_mixture(run: str, args: argparse.Namespace) -> Mixture:
    uniform = {d: 1 / len(DOMAINS) for d in DOMAINS}
    if run == "static":
        return StaticMixture(uniform)
    options: dict[str, Any] = {}
    if args.algorithm == "ado":
        options = {
            "warmup": args.warmup,  # steps on the initial mixture before the first fit
            "refit_every": args.refit_every,  # steps between refits of the scaling laws
            "subsample": 5,  # steps per fitted point (bins of 5 steps)
            "savgol_window": 25,  # steps of loss smoothing before a fit
            "count_normalizer": args.seq_len,  # n in sequences, as the official code counts
        }
    return DynamicMixture(uniform, args.algorithm, **options)


def train(client: MixteraClient, run: str, tokenizer: str, args: argparse.Namespace) -> list[Row]:
    """One training run; a row per step with the weights in force and the per-domain losses."""
    torch.manual_seed(args.seed)  # both runs start from the same model
    mixture = make_mixture(run, args)
    job_id = client.execute(
        Query.for_job(f"ado-tiny-{run}"),
        mixture,
        tokenizer=("hf", tokenizer),
        seq_len=args.seq_len,
        # a chunk of about one step's tokens (at least one document: here one to two steps)
        chunk_tokens=args.batch_size * args.seq_len,
        # a change lands this many chunks after the consumed position its feedback names, and
        # the streams plan at most that far ahead. With chunks of one or two documents, the
        # default (4 chunks) can hold fewer tokens than one batch; the stream would then wait
        # for feedback that only the batch it is assembling can send.
        feedback_delay=args.feedback_delay,
        seed=args.seed,
        on_exhausted="repeat",
    )
    job = client.job(job_id)
    keys: list[str] = job.key_names  # key id -> mixture key
    loader = MixteraDataLoader(MixteraDataset(job), batch_size=args.batch_size)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=args.vocab,
            n_positions=args.seq_len,
            n_embd=64,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,  # no dropout: the model underfits, and trains faster without
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    reporter = FeedbackReporter(client, job_id, len(keys)) if isinstance(mixture, DynamicMixture) else None
    rows: list[Row] = []
    for step, batch in enumerate(loader, start=1):
        logits = model(batch["input_ids"]).logits  # targets are already shifted
        token_loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
        token_loss = token_loss.view_as(batch["targets"])
        token_loss.mean().backward()
        opt.step()
        opt.zero_grad()
        if reporter is not None:
            reporter.step(step, token_loss, batch["key_ids"], batch["chunk_index"])
        # the mixture that planned this batch: the weights in force at its highest chunk
        chunk = int(batch["chunk_index"].max())
        weights = client.mixture_weights(job_id, chunk=chunk)
        row: Row = {"run": run, "step": step, "chunk": chunk}
        detached = token_loss.detach()
        for k, key in enumerate(keys):
            mine = batch["key_ids"] == k
            tokens = int(mine.sum())
            row[f"w_{key}"] = weights[key]
            # a domain absent from this batch has no loss (documents are often longer than a step)
            row[f"loss_{key}"] = float(detached[mine].mean()) if tokens else math.nan
            row[f"tokens_{key}"] = tokens
        rows.append(row)
        if step % 50 == 0:
            print(f"{run}: step {step}/{args.steps}", flush=True)
        if step >= args.steps:
            break
    if reporter is not None:
        history = client.mixture_history(job_id)  # [(first chunk, weights), ...]
        where = f" at chunks {history[1][0]}..{history[-1][0]}" if len(history) > 1 else ""
        print(f"{run}: {len(history) - 1} mixture changes{where}")
    return rows


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` steps, ignoring the steps without a value (NaN)."""
    out = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(seen) / len(seen) if seen else math.nan)
    return out


def plot(rows: list[Row], path: str, warmup: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(DOMAINS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for run, style in zip(RUNS, ("--", "-"), strict=True):
        mine = [r for r in rows if r["run"] == run]
        steps = [r["step"] for r in mine]
        for d in DOMAINS:
            label = f"{run} {d.split('=')[1]}"
            axes[0].plot(steps, [r[f"w_{d}"] for r in mine], style, color=colors[d], label=label)
            axes[1].plot(
                steps, smooth([r[f"loss_{d}"] for r in mine], 20), style, color=colors[d], label=label
            )
    for ax in axes:
        ax.axvline(warmup, color="grey", lw=0.8, ls=":")
    axes[0].set(title="mixture weight in force per domain (job log)", xlabel="step", ylabel="weight")
    axes[1].set(title="training loss per domain (20-step mean)", xlabel="step", ylabel="loss (nats)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows
        )


def summarize(rows: list[Row]) -> None:
    for run in RUNS:
        mine = [r for r in rows if r["run"] == run]
        window = mine[-max(1, len(mine) // 5) :]
        first = ", ".join(f"{d.split('=')[1]} {mine[0][f'w_{d}']:.2f}" for d in DOMAINS)
        last = ", ".join(f"{d.split('=')[1]} {mine[-1][f'w_{d}']:.2f}" for d in DOMAINS)
        losses = ", ".join(
            f"{d.split('=')[1]} {_nanmean([r[f'loss_{d}'] for r in window]):.3f}" for d in DOMAINS
        )
        print(
            f"{run:>8}: weights at step 1: {first}; at step {mine[-1]['step']}: {last} | "
            f"mean loss over the last {len(window)} steps: {losses}"
        )


def _nanmean(values: list[float]) -> float:
    seen = [v for v in values if not math.isnan(v)]
    return sum(seen) / len(seen) if seen else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--algorithm", default="ado", help="the dynamic run's mixing algorithm")
    ap.add_argument("--warmup", type=int, default=60, help="ado: steps before it moves the weights")
    ap.add_argument("--refit-every", type=int, default=30, help="ado: steps between scaling-law refits")
    ap.add_argument(
        "--feedback-delay", type=int, default=12, help="chunks from a feedback's position to its change"
    )
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="ado_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # the model is tiny: one thread trains it about as fast as several, and leaves the other
    # cores to Mixtera's reading and tokenizing threads (and to whatever else runs)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    corpus = build_demo_corpus(os.path.join(args.out, "corpus"))
    # a fresh catalog each time: the jobs (and the dynamic job's mixture log) start from scratch
    with tempfile.TemporaryDirectory() as db, MixteraClient.local(db) as client:
        for ds in corpus.datasets.values():
            client.register_dataset(ds.name, ds.location, format=ds.format, parser_options=ds.parser_options)
        tokenizer = train_tokenizer(client, os.path.join(args.out, "tokenizer.json"), args.vocab)
        rows = [row for run in RUNS for row in train(client, run, tokenizer, args)]
    csv_path = os.path.join(args.out, "ado_tiny.csv")
    write_csv(rows, csv_path)
    png = os.path.join(args.out, "ado_tiny.png")
    plot(rows, png, args.warmup if args.algorithm == "ado" else 0)
    summarize(rows)
    print(f"wrote {csv_path} and {png} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
