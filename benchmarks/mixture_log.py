"""Dynamic mixtures: cost of the mixture log over a long run, and the lag of a mixture change.

**Part 1, the log stays cheap** (``--only log``). A real ``LocalMixteraClient`` job over a small
synthetic jsonl corpus of 3 keys (``domain=a|b|c``, built here in a temp dir), sample mode,
``chunk_size`` 8, one stream (so ``feedback_delay`` = 4 chunks), a ``DynamicMixture`` started
uniform. A trainer is emulated without streaming: step ``s`` consumes chunk ``s`` (one chunk
per step) and sends ``client.feedback(job, s, losses, counts, position=s)`` where

- ``counts``: 1024 tokens per step (8 sequences of 128) split by the key weights in force at
  chunk ``s`` (``job.log.at(s)``), i.e. the data the trainer got;
- ``losses``: per key a power law in the key's cumulative tokens, ``eps + beta * (n / 128) **
  -alpha`` (eps 1.8/2.2/2.6, beta 4/6/3, alpha 0.35/0.25/0.45), times ``exp(noise * N(0, 1))``
  (``--noise`` 0.02, seeded): the per-step noise of a small batch's loss.

A planner replica walks along (``skip()`` of chunk ``s`` before step ``s``'s feedback, only below
the seal). At steps 1,000, 10,000 and 100,000 (``--points``) it measures

- the checkpoint: ``len(json.dumps(client.checkpoint(job)))`` and its parts (``log``,
  ``changes``, ``algorithm``, the rest), the number of log entries, the bytes of ``log.jsonl``;
  (the client leaves out, and compacts away, the history below ``Job.history_floor``);
- planning a chunk near the position (the chunk after it): ``job.planner()`` + loading the
  planner state + ``next_chunk()`` (cold), ``load_state_dict`` + ``next_chunk()`` on a kept
  planner (warm), and ``job.log.at(chunk)`` alone; medians of many;
- one ``client.feedback`` call: p50 / p99 / max over the last 1,000 calls before the point;
- ``Job.load`` of the job directory (what another rank or a restart does: it replays ``log.jsonl``).

It prints each figure at every point and the ratio last/first point; the targets are <= 2x for
the checkpoint size and the planning time. Algorithms (``--algorithms``): ``ado`` with its
defaults (warm-up 1000, refit every 1000 steps, as in the paper) except ``n_starts=16`` (L-BFGS
from the 16 best of the 512 grid points instead of all: a refit takes ~0.5 s instead of ~2.5 s
on 2 cores; ``--ado-n-starts 0`` runs all 512) and ``count_normalizer=128`` (the tokens per
sequence, as its docstring asks when counts are tokens), over ``--ado-steps`` (20,000 by default:
a feedback call costs ~2-8 ms once its state holds ~``max_points`` bins, because the client
rewrites ``algorithm.json`` on every call, so 100,000 steps take ~9 minutes on 2 cores;
``--ado-steps 100000`` runs them); ``loss_weighted`` with its defaults;
``loss_weighted/100``: the same with ``update_every=100`` (refit every 100 steps).

The job directory lives on tmpfs (``/dev/shm``) when there is one, so that the loop measures
Mixtera's CPU cost and not the disk's: on the development machine's ext4 a feedback call costs
~0.4-3.5 ms more at the median and up to ~12 ms at p99 (the ``fsync`` of a logged change and two
small file replacements per call, the seal and ``algorithm.json``); ``--disk`` puts it in the
default temp dir instead.

**Part 2, the lag of a change** (``--only lag``). Real streams over the demo corpus that
``examples/ado_tiny.py`` trains on (``mixtera_core.demo``, keys ``language=python|c|en``),
its settings (batch 8, ``seq_len`` 128, a byte-level BPE of vocab 2048 trained here on the
corpus as the example does), a trainer loop taking one batch per step from one in-process
stream, or from 2 streams round-robin (``num_workers=2``, as torch's DataLoader does), sending
feedback every step with ``position`` = the highest ``chunk_index`` in the batch. The mixture is
``loss_weighted`` (``ema=0``, ``power=4``, ``prior_mix=0``, ``min_weight=0.02``) started uniform;
the feedback says "all keys equal" until a switch step, then "``language=python``
has 3x the loss", which moves its weight from 1/3 to ~0.96 in a single change (later feedback
repeats it and logs nothing). Reported: the step of that feedback, the chunk the change landed
at, the first step whose batch's max ``chunk_index`` reaches that chunk, the lag in steps, and
the number of steps still trained on the old weights, next to the documented bound
(``feedback_delay`` = 4 * num_workers chunks = 4 * num_workers steps when a chunk is one batch).
One run per switch step (``--switch-steps`` 20,45,70,95,120: in token mode the lag depends on
the lengths of the documents in the chunks in between). Cases: sample mode with ``chunk_size`` =
batch; token mode with ``chunk_tokens`` = batch * seq_len (what the example executes); and token
mode with ``chunk_size=256`` samples (what it executed before ``chunk_tokens``). A stream that cannot fill a batch because the chunks it
needs are past the seal waits ``--stall-timeout`` seconds and the case is reported as stalled,
then rerun with twice the ``feedback_delay``.

    python benchmarks/mixture_log.py [--steps 100000] [--ado-steps 20000] [--only log,lag]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

from mixtera_core import MixteraClient, Query
from mixtera_core.job import Job
from mixtera_core.mixture import DynamicMixture
from mixtera_core.mixture_log import LOG_FILE, MixtureUnknownError

KEYS = ("domain=a", "domain=b", "domain=c")
EPS = np.array([1.8, 2.2, 2.6])
BETA = np.array([4.0, 6.0, 3.0])
ALPHA = np.array([0.35, 0.25, 0.45])
BATCH, SEQ_LEN = 8, 128
TOKENS_PER_STEP = BATCH * SEQ_LEN


# --------------------------------------------------------------------------- helpers


def median_time(fn: Any, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def fmt_bytes(n: float) -> str:
    return f"{n:,.0f} B"


def fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


# --------------------------------------------------------------------------- part 1: the log


def synthetic_corpus(root: Path, per_key: int = 4000) -> None:
    rng = np.random.default_rng(0)
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "data",
        "mixture",
        "log",
        "chunk",
        "step",
        "key",
        "weight",
        "loss",
    ]
    for k in KEYS:
        name = k.split("=")[1]
        for shard in range(2):
            with open(root / f"{name}-{shard}.jsonl", "w") as fh:
                for i in range(per_key // 2):
                    text = " ".join(rng.choice(words, size=int(rng.integers(20, 80))))
                    fh.write(json.dumps({"text": text, "meta": {"domain": name}, "id": i}) + "\n")


def algorithm_options(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """(plugin, options, description) of an --algorithms entry."""
    if name == "ado":
        opts: dict[str, Any] = {"count_normalizer": float(SEQ_LEN)}
        if args.ado_n_starts:
            opts["n_starts"] = args.ado_n_starts
        if args.ado_max_points:
            opts["max_points"] = args.ado_max_points
        return (
            "ado",
            opts,
            "ado, defaults (warmup 1000, refit_every 1000) except "
            + ", ".join(f"{k}={v:g}" for k, v in opts.items()),
        )
    if name.startswith("loss_weighted"):
        every = int(name.split("/")[1]) if "/" in name else 1
        opts = {} if every == 1 else {"update_every": every}
        desc = "loss_weighted, defaults" + (f" except update_every={every}" if opts else "")
        return "loss_weighted", opts, desc
    raise SystemExit(f"unknown algorithm {name!r} (ado, loss_weighted, loss_weighted/K)")


def measure_point(
    client: Any, job_id: str, job: Job, planner: Any, step: int, fb_times: list[float], reps: int
) -> dict[str, Any]:
    """Every figure at ``step`` (after its feedback)."""
    ck = client.checkpoint(job_id)
    size = len(json.dumps(ck))
    parts = {k: len(json.dumps(v)) for k, v in ck.items()}
    directory = client._job_dir(job_id)  # type: ignore[attr-defined]
    log_path = os.path.join(directory, LOG_FILE)
    snapshot = planner.state_dict()
    assert snapshot["next_index"] == step + 1 < job.log.sealed
    want = step + 1

    def cold() -> None:
        p = job.planner()
        p.load_state_dict(snapshot)
        c = p.next_chunk()
        assert c is not None and c.index == want

    warm_planner = job.planner()

    def warm() -> None:
        warm_planner.load_state_dict(snapshot)
        warm_planner.next_chunk()

    cold()  # first use: imports, caches
    lookup = timeit.Timer(lambda: job.log.at(want)).repeat(5, 2000)
    window = fb_times[-1000:]
    return {
        "checkpoint": size,
        "log_bytes": parts["log"],
        "changes_bytes": parts["changes"],
        "algorithm_bytes": parts["algorithm"],
        "other_bytes": size - parts["log"] - parts["changes"] - parts["algorithm"],
        "entries": len(job.log.entries),
        "changes": len(job.changes),
        "log_jsonl": os.path.getsize(log_path) if os.path.exists(log_path) else 0,
        "plan_cold": median_time(cold, reps),
        "plan_warm": median_time(warm, reps * 5),
        "lookup": min(lookup) / 2000,
        "fb_p50": statistics.median(window),
        "fb_p99": float(np.percentile(window, 99)),
        "fb_max": max(window),
        "job_load": median_time(lambda: Job.load(directory), 5),
    }


ROWS = [
    # (label, key, kind, verdict target)
    ("checkpoint (json.dumps of client.checkpoint)", "checkpoint", "bytes", 2.0),
    ("  of which 'log'", "log_bytes", "bytes", None),
    ("  of which 'changes'", "changes_bytes", "bytes", None),
    ("  of which 'algorithm'", "algorithm_bytes", "bytes", None),
    ("  of which the rest (spec, ...)", "other_bytes", "bytes", None),
    ("log entries", "entries", "count", None),
    ("changes recorded", "changes", "count", None),
    ("log.jsonl on disk", "log_jsonl", "bytes", None),
    ("plan a chunk: planner() + load state + next_chunk", "plan_cold", "s", 2.0),
    ("plan a chunk, kept planner: load + next_chunk", "plan_warm", "s", 2.0),
    ("log lookup job.log.at(chunk)", "lookup", "s", None),
    ("feedback call p50 (last 1,000 calls)", "fb_p50", "s", None),
    ("feedback call p99 (last 1,000 calls)", "fb_p99", "s", None),
    ("feedback call max (last 1,000 calls)", "fb_max", "s", None),
    ("Job.load of the job directory", "job_load", "s", None),
]


def bench_log(client: Any, name: str, args: argparse.Namespace, points: list[int]) -> dict[str, Any]:
    plugin, options, desc = algorithm_options(name, args)
    job_id = client.execute(
        Query.for_job(f"log-{name.replace('/', '-')}"),
        DynamicMixture(dict.fromkeys(KEYS, 1 / 3), plugin, **options),
        chunk_size=BATCH,
        seed=0,
        on_exhausted="repeat",
    )
    job = client.job(job_id)
    algo = client._algorithms[job_id]  # type: ignore[attr-defined]
    ids = job.resolved.component_key
    planner = job.planner()
    rng = np.random.default_rng(args.seed)
    cum = np.zeros(len(KEYS))
    fb_times: list[float] = []
    refit_times: list[float] = []
    results: dict[int, dict[str, Any]] = {}
    steps = max(points)
    print(f"\n{desc}; {steps:,} steps, feedback_delay {job.spec.delay}, noise {args.noise}")
    t_start = time.perf_counter()
    for s in range(steps + 1):
        if s >= job.log.sealed:
            raise SystemExit(f"chunk {s} is not sealed ({job.log.sealed}): the feedback loop is broken")
        planner.skip()  # the trainer's stream plans chunk s
        w = job.log.at(s)
        key_w = np.array([w[ids == k].sum() for k in range(len(KEYS))])
        counts = np.round(key_w * TOKENS_PER_STEP)
        cum += counts
        mean = (EPS + BETA * np.maximum(cum / SEQ_LEN, 1.0) ** -ALPHA) * np.exp(
            args.noise * rng.standard_normal(len(KEYS))
        )
        fitted = getattr(algo, "last_fit", None)
        t0 = time.perf_counter()
        client.feedback(job_id, s, (mean * counts).tolist(), counts.tolist(), position=s)
        dt = time.perf_counter() - t0
        fb_times.append(dt)
        if getattr(algo, "last_fit", None) != fitted:
            refit_times.append(dt)
        if s in points:
            results[s] = measure_point(client, job_id, job, planner, s, fb_times, args.reps)
            print(
                f"  step {s:>7,}: {time.perf_counter() - t_start:6.1f} s, checkpoint "
                f"{results[s]['checkpoint']:,} B, {results[s]['entries']:,} log entries",
                flush=True,
            )
    loop = time.perf_counter() - t_start
    refits = f"{len(refit_times)} refits, {sum(refit_times):.1f} s in total" if refit_times else "no refits"
    print(f"  loop {loop:.0f} s (feedback calls {sum(fb_times):.0f} s, {refits})")
    first, last = points[0], points[-1]
    head = "".join(f"{'step ' + format(p, ','):>16}" for p in points)
    print(f"  {'':<52}{head}{'last/first':>12}")
    verdicts = {}
    for label, key, kind, target in ROWS:
        vals = [results[p][key] for p in points]
        cells = "".join(
            f"{fmt_s(v) if kind == 's' else fmt_bytes(v) if kind == 'bytes' else format(v, ','):>16}"
            for v in vals
        )
        ratio = vals[-1] / vals[0] if vals[0] else float("inf")
        line = f"  {label:<52}{cells}{ratio:>11.2f}x"
        if target is not None:
            ok = ratio <= target
            verdicts[key] = ok
            line += f"  target <= {target:g}x: {'met' if ok else 'NOT met'}"
        print(line)
    ck = client.checkpoint(job_id)
    grows = sorted(((k, len(json.dumps(v))) for k, v in ck.items()), key=lambda kv: kv[1], reverse=True)
    print("  checkpoint keys at the last point: " + ", ".join(f"{k} {n:,} B" for k, n in grows))
    if isinstance(ck.get("algorithm"), dict):
        algo_parts = sorted(
            ((k, len(json.dumps(v))) for k, v in ck["algorithm"].items()), key=lambda kv: -kv[1]
        )[:4]
        print("  largest algorithm state keys: " + ", ".join(f"{k} {n:,} B" for k, n in algo_parts))
    print(f"  final key weights: {client.mixture_weights(job_id)}")
    return {"name": name, "results": results, "first": first, "last": last, "verdicts": verdicts}


def part_log(args: argparse.Namespace) -> None:
    base = None
    if not args.disk and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = "/dev/shm"
    points = sorted(p for p in args.points if p <= args.steps)
    if args.steps not in points:
        points.append(args.steps)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        synthetic_corpus(root)
        print(
            f"\n== part 1: the mixture log over {args.steps:,} steps (job directory on {base or tempfile.gettempdir()})"
        )
        with MixteraClient.local(Path(tmp) / "db") as client:
            client.register_dataset("syn", str(root / "*.jsonl"), parser_options={"domain": "meta.domain"})
            for name in args.algorithms:
                steps = min(args.steps, args.ado_steps) if name == "ado" else args.steps
                mine = [p for p in points if p < steps] + [steps]
                bench_log(client, name, args, mine)


# --------------------------------------------------------------------------- part 2: the lag


def train_bpe(texts: list[str], path: Path, vocab: int) -> Path:
    """As examples/ado_tiny.py does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def _text(record: Any) -> str:
    value = (record.get("text") or record.get("txt")) if isinstance(record, dict) else None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def lag_case(
    client: Any,
    name: str,
    keys: list[str],
    favoured: str,
    options: dict[str, Any],
    workers: int,
    args: argparse.Namespace,
    switch: int,
    delay: int | None = None,
) -> dict[str, Any]:
    """One trainer run whose feedback switches the mixture at step ``switch``; ``delay``:
    feedback_delay (None: the default, 4 * num_workers)."""
    mixture = DynamicMixture(
        dict.fromkeys(keys, 1 / len(keys)),
        "loss_weighted",
        ema=0.0,
        power=4.0,
        prior_mix=0.0,
        min_weight=0.02,
    )
    job_id = client.execute(
        Query.for_job(f"lag-{name}-w{workers}-s{switch}-d{delay}"),
        mixture,
        seed=0,
        on_exhausted="repeat",
        num_workers=workers,
        feedback_delay=delay,
        **options,
    )
    job = client.job(job_id)
    names = job.key_names
    fav = names.index(favoured)
    streams = [client.stream(job_id, 0, 0, w, mixture_timeout=args.stall_timeout) for w in range(workers)]
    its = [iter(s) for s in streams]
    token_mode = job.spec.token_mode
    change_chunk: int | None = None
    first_new: int | None = None
    stalled: dict[str, Any] | None = None
    highest: int | None = None
    rows = []
    reported = -1
    t0 = time.perf_counter()
    try:
        for step in range(args.lag_max_steps):
            try:
                batch = [next(its[step % workers]) for _ in range(BATCH)]
            except MixtureUnknownError:
                stalled = {"step": step, "position": reported, "sealed": job.log.sealed}
                break
            chunks = [int(item.chunk) for item in batch]
            if token_mode:
                key_ids = np.concatenate([item.key_ids for item in batch])
                share = float((key_ids == fav).mean())
            else:
                share = sum(item.key_id == fav for item in batch) / len(batch)
            rows.append((step, min(chunks), max(chunks), share))
            if change_chunk is not None and first_new is None and max(chunks) >= change_chunk:
                first_new = step
            losses = [3.0 if (k == fav and step >= switch) else 1.0 for k in range(len(names))]
            before = len(job.changes)
            reported = max(reported, max(chunks))
            client.feedback(job_id, step, losses, [1.0] * len(names), position=max(chunks))
            if step == switch:
                highest = reported
                if len(job.changes) != before + 1:
                    raise SystemExit(f"{name}: the switching feedback logged no change")
                change_chunk = int(job.changes[-1]["chunk"])
            elif step > switch and len(job.changes) != before:
                raise SystemExit(f"{name}: feedback after the switch logged another change")
            if first_new is not None and step >= first_new + args.lag_tail:
                break
    finally:
        for it in its:
            it.close()  # type: ignore[attr-defined]
    wall = time.perf_counter() - t0
    position = next((r[2] for r in rows if r[0] == switch), None)
    if first_new is not None:  # every batch before it has only chunks planned with the old weights
        assert change_chunk is not None and all(r[2] < change_chunk for r in rows if r[0] < first_new)
    new_rows = [r[3] for r in rows if first_new is not None and r[0] > first_new]
    # training steps per chunk between the feedback's position and the change (~1: a chunk is one batch)
    per_chunk = float("nan")
    if first_new is not None and change_chunk is not None and highest is not None:
        per_chunk = (first_new - switch) / (change_chunk - highest)
    pre = [r for r in rows if r[0] <= switch]
    return {
        "name": name,
        "workers": workers,
        "delay": job.spec.delay,
        "switch": switch,
        "position": position,
        "highest": highest,
        "chunk": change_chunk,
        "first_new": first_new,
        "stalled": stalled,
        "steps_run": len(rows),
        "steps_per_chunk": per_chunk,
        "old_share": statistics.mean(r[3] for r in pre) if pre else float("nan"),
        "new_share": statistics.mean(new_rows) if new_rows else float("nan"),
        "first_new_share": next((r[3] for r in rows if r[0] == first_new), float("nan")),
        "wall": wall,
        "token_mode": token_mode,
    }


def print_trial(r: dict[str, Any]) -> None:
    if r["stalled"] is not None:
        st = r["stalled"]
        print(
            f"    switch at step {r['switch']}: STALLED at step {st['step']}: the stream needs a chunk at or past "
            f"the seal ({st['sealed']} = position {st['position']} + 1 + {r['delay']}) to fill the step's "
            f"batch, and only that step's feedback could move the seal (MixtureUnknownError)"
        )
        return
    first = r["first_new"]
    if first is None:
        print(
            f"    switch at step {r['switch']}: change at chunk {r['chunk']} not reached in {r['steps_run']} steps"
        )
        return
    print(
        f"    switch at step {r['switch']:>3}: position {r['position']:>3}"
        + (f" (highest so far {r['highest']})" if r["highest"] != r["position"] else "")
        + f" -> change at chunk {r['chunk']:>3}; "
        f"first step with a chunk >= it: {first:>3}; lag {first - r['switch']:>3}, old-weight steps "
        f"{first - r['switch'] - 1:>3} (~{r['steps_per_chunk']:.1f} steps per chunk); favoured share "
        f"{r['old_share']:.2f} before, {r['first_new_share']:.2f} in that batch, {r['new_share']:.2f} after"
    )


def part_lag(args: argparse.Namespace) -> None:
    from mixtera_core.demo import build_demo_corpus

    print(f"\n== part 2: lag of a mixture change (batch {BATCH}, seq_len {SEQ_LEN})")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        corpus = build_demo_corpus(os.path.join(tmp, "corpus"))
        with MixteraClient.local(Path(tmp) / "db") as client:
            for ds in corpus.datasets.values():
                client.register_dataset(
                    ds.name, ds.location, format=ds.format, parser_options=ds.parser_options
                )
            keys = sorted(f"language={v}" for v in client.properties()["language"])
            texts = [_text(r) for _, r in client.peek(Query.for_job("tok"), n=2000, properties=["language"])]
            tok = train_bpe(texts, Path(tmp) / "tokenizer.json", args.vocab)
            favoured = "language=python" if "language=python" in keys else keys[0]
            print(
                f"demo corpus, keys {', '.join(keys)}; BPE vocab {args.vocab} trained; "
                f"set-up {time.perf_counter() - t0:.0f} s; the switch favours {favoured}"
            )
            token = {"tokenizer": ("hf", str(tok)), "seq_len": SEQ_LEN}
            cases = [
                (
                    "sample mode, chunk_size 8 (= batch)",
                    "samples",
                    {"chunk_size": BATCH},
                    (1, 2),
                    args.switch_steps,
                ),
                (
                    f"token mode, chunk_tokens {TOKENS_PER_STEP} (= batch x seq_len)",
                    "tokens",
                    {**token, "chunk_tokens": TOKENS_PER_STEP},
                    (1, 2),
                    args.switch_steps,
                ),
                # sized in samples, long documents: a chunk lasts many steps
                (
                    "token mode, chunk_size 256 samples (no chunk_tokens; the example's setting until 2026-12-02)",
                    "samples256",
                    {**token, "chunk_size": 256},
                    (1,),
                    args.switch_steps[:1],
                ),
            ]
            for label, name, options, worker_counts, switches in cases:
                for workers in worker_counts:
                    delay: int | None = None
                    while True:
                        trials = []
                        head = f"\n{label}, {workers} stream(s)"
                        for switch in switches:
                            r = lag_case(client, name, keys, favoured, options, workers, args, switch, delay)
                            if not trials:
                                which = "default" if delay is None else "set"
                                print(f"{head}, feedback_delay {r['delay']} chunks ({which}):")
                            print_trial(r)
                            trials.append(r)
                        done = [r for r in trials if r["stalled"] is None and r["first_new"] is not None]
                        if done:
                            old = [r["first_new"] - r["switch"] - 1 for r in done]
                            bound = done[0]["delay"]
                            met = sum(o <= bound for o in old)
                            print(
                                f"  old-weight steps after the feedback step: min {min(old)}, median "
                                f"{statistics.median(old):g}, max {max(old)}; documented ~{bound} (4 x num_workers "
                                f"steps at one batch per chunk): within it in {met} of {len(old)} trials"
                            )
                        if len(done) == len(trials) or trials[0]["delay"] >= 64:
                            break
                        delay = 2 * trials[0]["delay"]  # stalled: again with twice the delay
                        print(f"  -> again with feedback_delay {delay}")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="log,lag", help="comma-separated parts: log, lag")
    ap.add_argument("--steps", type=int, default=100_000, help="feedback steps of part 1")
    ap.add_argument(
        "--points", type=lambda s: [int(x) for x in s.split(",")], default=[1_000, 10_000, 100_000]
    )
    ap.add_argument(
        "--algorithms",
        type=lambda s: s.split(","),
        default=["loss_weighted", "loss_weighted/100", "ado"],
        help="ado, loss_weighted, loss_weighted/K (update_every=K)",
    )
    ap.add_argument("--ado-steps", type=int, default=20_000, help="feedback steps of the ado run")
    ap.add_argument("--ado-n-starts", type=int, default=16, help="0: every grid point (ADO's default)")
    ap.add_argument("--ado-max-points", type=int, default=0, help="ADO's history bins (0: its default, 500)")
    ap.add_argument("--noise", type=float, default=0.02, help="per-step relative noise of the losses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=200, help="repeats of each planning timing")
    ap.add_argument("--disk", action="store_true", help="part 1 on the default temp dir instead of /dev/shm")
    ap.add_argument(
        "--switch-steps",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[20, 45, 70, 95, 120],
        help="steps whose feedback switches the mixture, one run each",
    )
    ap.add_argument("--lag-max-steps", type=int, default=3000)
    ap.add_argument("--lag-tail", type=int, default=10, help="steps streamed after the change took effect")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument(
        "--stall-timeout", type=float, default=10, help="seconds a stream waits for an undecided mixture"
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = time.time()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}"
    )
    if "log" in only:
        part_log(args)
    if "lag" in only:
        part_lag(args)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
