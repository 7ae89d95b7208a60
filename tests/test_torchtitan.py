"""torchtitan integration: the [mixtera] section and spec file, rank mapping, batches per dp rank,
exact resume, per-domain losses, the plugin, and every command and file of docs/torchtitan.md.

The parts that need torchtitan (0.3.0: ConfigManager, MixteraDataLoader, MixteraCrossEntropyLoss)
are skipped without it; CI's `.[dev]` does not install it (torchtitan needs Python >= 3.11 and
pulls wandb, datasets<4.8 and tensorboard; on a CPU torch its trainer also needs triton).
Nothing here trains a model: torchtitan does not train on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
if sys.version_info < (3, 11):  # the spec files and sections here are TOML
    pytest.importorskip("tomli", reason="TOML files on Python 3.10 need tomli")

from conftest import write_jsonl  # noqa: E402
from mixtera_integrations.torchtitan.config import (  # noqa: E402
    MixteraConfig,
    SpecError,
    execute_options,
    load_spec,
    parse_spec,
)
from mixtera_integrations.torchtitan.data import (  # noqa: E402
    MixteraSession,
    TokenBatchLoader,
    connect,
    document_positions,
    map_ranks,
)
from mixtera_integrations.torchtitan.feedback import (  # noqa: E402
    StepFeedback,
    decode_labels,
    encode_labels,
    token_cross_entropy,
)

from mixtera_core import MixteraClient  # noqa: E402
from mixtera_core.feedback import FeedbackReporter  # noqa: E402
from mixtera_core.mixture import DynamicMixture, StaticMixture  # noqa: E402
from mixtera_core.streaming import JobStream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "torchtitan.md"
SETS = [
    "RedPajamaCommonCrawl",
    "RedPajamaC4",
    "RedPajamaGithub",
    "RedPajamaBook",
    "RedPajamaArXiv",
    "RedPajamaWikipedia",
    "RedPajamaStackExchange",
]
STATIC = """
[query]
where = ["redpajama_set_name != RedPajamaGithub"]
[mixture]
"redpajama_set_name=RedPajamaC4" = 0.5
"redpajama_set_name=RedPajamaWikipedia,RedPajamaBook" = 0.2
"redpajama_set_name=RedPajamaCommonCrawl;redpajama_set_name=RedPajamaCommonCrawl" = 0.3
[options]
on_exhausted = "repeat"
"""


def slimpajama_corpus(root: Path, docs_per_set: int = 40) -> Path:
    """SlimPajama's layout: chunk<i>/example_train_<j>.jsonl.zst, meta.redpajama_set_name per line."""
    rng = random.Random(0)
    for chunk in (1, 2):
        records = []
        for i in range(docs_per_set * len(SETS) // 2):
            name = SETS[i % len(SETS)]
            words = " ".join(
                f"{name[10:14].lower()}{rng.randint(0, 999)}" for _ in range(rng.randint(15, 60))
            )
            records.append({"text": f"{name} {chunk}-{i}: {words}", "meta": {"redpajama_set_name": name}})
        write_jsonl(root / f"chunk{chunk}" / f"example_train_{chunk - 1}.jsonl.zst", records, "zst")
    return root


@pytest.fixture(scope="module")
def hf_assets(tmp_path_factory, small_bpe):
    """A tokenizer directory as torchtitan's hf_assets_path holds one (tokenizer.json + its config)."""
    assets = tmp_path_factory.mktemp("hf_assets")
    (assets / "tokenizer.json").write_bytes(small_bpe.read_bytes())
    (assets / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "bos_token": "<s>"})
    )
    return assets


@pytest.fixture(scope="module")
def sp(tmp_path_factory, hf_assets):
    """A registered SlimPajama-style corpus, a client on it and the tokenizer directory."""
    root = tmp_path_factory.mktemp("tt")
    corpus = slimpajama_corpus(root / "corpus")
    client = MixteraClient.local(root / "db")
    client.register_dataset("slimpajama", corpus, parser="slimpajama")
    (root / "static.toml").write_text(STATIC)
    yield {"root": root, "client": client, "db": root / "db", "tok": hf_assets, "spec": root / "static.toml"}
    client.close()


def make_job(sp, job_id, *, dp_groups=2, seq_len=32, num_workers=1, spec=None, nodes_per_group=1):
    spec = spec or load_spec(sp["spec"])
    section = MixteraConfig(db=str(sp["db"]), job_id=job_id, spec=str(sp["spec"]), chunk_size=16, seed=5)
    section.num_workers = num_workers
    options = execute_options(
        section,
        spec,
        seq_len=seq_len,
        dp_groups=dp_groups,
        nodes_per_group=nodes_per_group,
        hf_assets_path=str(sp["tok"]),
    )
    return sp["client"].execute(spec.query(job_id), spec.mixture, **options)


def loader(sp, job_id, dp_rank, *, batch=3, node=0, **kw):
    job = sp["client"].job(job_id)
    session = MixteraSession(job, sp["client"], dp_rank=dp_rank, dp_world_size=job.spec.dp_groups, node=node)
    return TokenBatchLoader(session, local_batch_size=batch, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(
        torch.equal(x[1], y[1])
        and x[0].keys() == y[0].keys()
        and all(torch.equal(x[0][k], y[0][k]) for k in x[0])
        for x, y in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------------- spec file and section


def test_spec_files_in_toml_and_json(tmp_path):
    (tmp_path / "s.toml").write_text(STATIC)
    spec = load_spec(tmp_path / "s.toml")
    assert isinstance(spec.mixture, StaticMixture) and not spec.dynamic
    assert spec.options == {"on_exhausted": "repeat"}
    q = spec.query("run-1")
    assert q.job_id == "run-1"
    assert q.to_json()["selects"] == [["redpajama_set_name", "!=", "RedPajamaGithub"]]
    assert dict(zip(map(str, spec.mixture.keys), spec.mixture.key_weights, strict=True))[
        "redpajama_set_name=RedPajamaC4"
    ] == pytest.approx(0.5)

    dynamic = {
        "job_id": "ado-1",
        "query": {
            "where": [["redpajama_set_name", "in", ["RedPajamaC4", "RedPajamaBook"]]],
            "or_where": ["a==1 and b>2"],
        },
        "mixture": {
            "algorithm": "ado",
            "initial": {"redpajama_set_name=RedPajamaC4": 0.7, "redpajama_set_name=RedPajamaBook": 0.3},
            "options": {"warmup": 10},
        },
    }
    (tmp_path / "d.json").write_text(json.dumps(dynamic))
    d = load_spec(tmp_path / "d.json")
    assert isinstance(d.mixture, DynamicMixture) and d.dynamic
    assert d.mixture.algorithm == "ado" and d.mixture.options == {"warmup": 10}
    assert d.query().job_id == "ado-1"  # the spec's own job id when the section has none
    assert d.query().to_json()["selects"] == [
        ["redpajama_set_name", "in", ["RedPajamaBook", "RedPajamaC4"]],
        {"and": [["a", "==", "1"], ["b", ">", "2"]]},
    ]
    # any serialized mixture, and no mixture (natural proportions)
    ser = parse_spec({"mixture": DynamicMixture({"a=1": 1.0}, "loss_weighted").to_json()})
    assert isinstance(ser.mixture, DynamicMixture) and ser.mixture.algorithm == "loss_weighted"
    assert parse_spec({}).mixture is None and parse_spec({}).selects == []
    assert isinstance(parse_spec({"mixture": {"weights": {"a=1": 1.0}}}).mixture, StaticMixture)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mixtures": {}}, "unknown key.*mixtures"),
        ({"options": {"chunk_size": 5}}, "may not set chunk_size.*mixtera"),
        ({"options": {"epochs": 5}}, "unknown job option.*epochs"),
        ({"mixture": {"a=1": "half"}}, "weight of 'a=1' must be a number"),
        ({"mixture": {"a=1": 0.5}}, "sum"),
        ({"query": {"where": [5]}}, "a condition is a string"),
        ({"query": {"filter": []}}, "unknown key.*filter"),
        ({"mixture": {"algorithm": "ado", "initial": {"a=1": 1.0}, "warmup": 3}}, "unknown key.*warmup"),
    ],
)
def test_spec_errors_name_the_entry(data, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "spec.toml")


def test_section_from_toml_and_validation(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[mixtera]\nserver = "10.0.0.5:7878"\njob_id = "r"\nspec = "m.toml"\nchunk_size = 256\nseed = 3\n'
    )
    section = MixteraConfig.from_toml(tmp_path / "run.toml")
    assert (section.server, section.job_id, section.spec, section.chunk_size, section.seed) == (
        "10.0.0.5:7878",
        "r",
        "m.toml",
        256,
        3,
    )
    section.validate()
    assert section.address() == ("10.0.0.5", 7878)
    assert section.tokenizer_spec("/models/llama") == ("hf", "/models/llama")
    section.tokenizer = "tiktoken:cl100k_base"
    assert section.tokenizer_spec("/models/llama") == ("tiktoken", "cl100k_base")
    (tmp_path / "bad.toml").write_text('[mixtera]\nservr = "x"\n')
    with pytest.raises(SpecError, match="unknown key.*servr"):
        MixteraConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match="exactly one of server"):
        MixteraConfig(server="a:1", db="d", spec="s").validate()
    with pytest.raises(SpecError, match="host:port"):
        MixteraConfig(server="nohost", spec="s").validate()
    with pytest.raises(SpecError, match="needs spec"):
        MixteraConfig(db="d").validate()
    with pytest.raises(SpecError, match="plugin:source"):
        MixteraConfig(db="d", spec="s", tokenizer="tokenizer.json").validate()
    with pytest.raises(SpecError, match="differs from the trainer's seq_len"):
        execute_options(
            MixteraConfig(db="d", spec="s", seq_len=64),
            parse_spec({}),
            seq_len=128,
            dp_groups=1,
            nodes_per_group=1,
            hf_assets_path="t",
        )


def test_map_ranks_groups_tp_and_pp_peers_as_nodes():
    # 2 dp ranks x 2 tp ranks (tp innermost, as torchtitan's mesh): dp rank of global ranks 0..3
    assert map_ranks([0, 0, 1, 1], 2) == (2, [0, 1, 0, 1])
    # pp=2 outermost, dp=2: stage 0 holds global ranks 0,1; stage 1 holds 2,3
    assert map_ranks([0, 1, 0, 1], 2) == (2, [0, 0, 1, 1])
    # pure data parallelism: one node per group
    assert map_ranks([0, 1, 2, 3], 4) == (1, [0, 0, 0, 0])
    # pp=2 x dp=2 x tp=2
    assert map_ranks([0, 0, 1, 1, 0, 0, 1, 1], 2) == (4, [0, 1, 0, 1, 2, 3, 2, 3])
    with pytest.raises(Exception, match="not equally populated"):
        map_ranks([0, 0, 1], 2)
    with pytest.raises(Exception, match="do not cover"):
        map_ranks([0, 0, 2, 2], 3)


# ----------------------------------------------------------------------------- batches and state


def test_two_dp_ranks_get_disjoint_deterministic_batches(sp):
    job_id = make_job(sp, "tt-dp2")
    job = sp["client"].job(job_id)
    got = {r: take(iter(loader(sp, job_id, r)), 4) for r in (0, 1)}
    for r in (0, 1):
        inputs, labels = got[r][0]
        assert set(inputs) == {"input"} and inputs["input"].shape == (3, 32) and labels.shape == (3, 32)
        assert torch.equal(inputs["input"][:, 1:], labels[:, :-1])  # labels are the inputs shifted by one
        stream = iter(JobStream(job, r))  # the batches are the rank's Mixtera stream, in order
        expected = [torch.from_numpy(next(stream).tokens) for _ in range(12)]
        rows = [row for batch, _ in got[r] for row in batch["input"]]
        assert all(torch.equal(row, e[:-1]) for row, e in zip(rows, expected, strict=True))
    rows0 = {tuple(row.tolist()) for batch, _ in got[0] for row in batch["input"]}
    rows1 = {tuple(row.tolist()) for batch, _ in got[1] for row in batch["input"]}
    assert rows0.isdisjoint(rows1)
    assert same(got[0], take(iter(loader(sp, job_id, 0)), 4))  # a second run: the same batches
    # tensor/pipeline peers (nodes of one group) get the same data
    peer_job = make_job(sp, "tt-nodes", dp_groups=1, nodes_per_group=2)
    assert same(
        take(iter(loader(sp, peer_job, 0, node=0)), 3), take(iter(loader(sp, peer_job, 0, node=1)), 3)
    )


@pytest.mark.parametrize("num_workers", [1, 2])
def test_state_dict_round_trip_resumes_the_same_batches(sp, num_workers, tmp_path):
    job_id = make_job(sp, f"tt-resume-{num_workers}", num_workers=num_workers)
    full = take(iter(loader(sp, job_id, 1)), 9)

    first = loader(sp, job_id, 1, encode_key_ids=True)
    untouched = first.state_dict()
    it = iter(first)
    head = take(it, 4)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds: strings and ints
    assert set(state) == {"dp_rank_1", "world_size"} and state["world_size"] == 2
    payload = json.loads(state["dp_rank_1"])
    assert payload["batches"] == 4 and len(payload["streams"]) == num_workers
    assert all(st["node"] == 0 and st["dp_group"] == 1 for st in payload["streams"])
    assert same([(b, decode_labels(lab)[0]) for b, lab in head], full[:4])

    resumed = loader(sp, job_id, 1, encode_key_ids=True)
    resumed.load_state_dict(state)
    rest = take(iter(resumed), 5)
    assert same([(b, decode_labels(lab)[0]) for b, lab in rest], full[4:])
    # a state taken before iterating starts at the beginning; an empty one is a no-op
    fresh = loader(sp, job_id, 1)
    fresh.load_state_dict(json.loads(json.dumps(untouched)))
    fresh.load_state_dict({})
    assert same(take(iter(fresh), 2), full[:2])
    # through torch.distributed.checkpoint, the way torchtitan's checkpointer saves it
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    mid = loader(sp, job_id, 1)
    mid_it = iter(mid)
    take(mid_it, 3)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"dataloader": mid}, checkpoint_id=str(tmp_path / "ckpt"))
    take(mid_it, 1)  # read on: the checkpoint must not move
    back = loader(sp, job_id, 1)
    with pytest.warns(UserWarning, match="single process"):
        dcp.load({"dataloader": back}, checkpoint_id=str(tmp_path / "ckpt"))
    assert same(take(iter(back), 6), full[3:])


def test_state_of_another_rank_job_or_dp_degree_is_refused(sp):
    job_id = make_job(sp, "tt-refuse")
    state = loader(sp, job_id, 0).state_dict()
    other = loader(sp, job_id, 1)
    other.load_state_dict(
        state
    )  # no entry for dp_rank_1: torchtitan's behaviour, a warning and a fresh start
    with pytest.raises(Exception, match="dp degree 3"):
        loader(sp, job_id, 0).load_state_dict({**state, "world_size": 3})
    forged = {"dp_rank_0": json.dumps({**json.loads(state["dp_rank_0"]), "job_id": "nope"}), "world_size": 2}
    with pytest.raises(Exception, match="job 'nope'"):
        loader(sp, job_id, 0).load_state_dict(forged)


def test_document_positions_restart_after_eos(sp):
    assert document_positions(torch.tensor([[5, 0, 7, 8, 0, 0, 3]]), eos_id=0).tolist() == [
        [0, 1, 0, 1, 2, 0, 0]
    ]
    job_id = make_job(sp, "tt-positions", seq_len=128)
    batches = take(iter(loader(sp, job_id, 0, document_positions=True)), 3)
    eos = 0  # small_bpe's <|endoftext|>
    for inputs, _ in batches:
        assert inputs["positions"].shape == inputs["input"].shape
        assert torch.equal(inputs["positions"], document_positions(inputs["input"], eos))
    assert any(bool((inputs["input"] == eos).any()) for inputs, _ in batches)


# ----------------------------------------------------------------------------- per-domain losses


LOGITS = [
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
    [[0.0, 0.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
]
LABELS = [[0, 1, 2], [2, -100, 0]]
KEYS = [[0, 1, 1], [0, -1, 1]]
E = math.e
HAND = {  # -log softmax(logits)[label], by hand
    0: (math.log(3) + math.log(2 + E) - 1, 2),
    1: (math.log(E + 2) + math.log(2 + E**2) + math.log(3), 3),
}


class RecordingClient:
    def __init__(self):
        self.sent = []

    def feedback(self, job_id, step, losses, counts, position=None):
        self.sent.append((job_id, step, losses, counts, position))


def test_label_encoding_round_trips_and_keeps_padding():
    labels, keys = torch.tensor(LABELS), torch.tensor(KEYS)
    encoded = encode_labels(labels, keys)
    assert encoded[1, 1] == -100 and int(encoded[0, 1]) == 1 + (1 << 32)
    back, back_keys = decode_labels(encoded)
    assert torch.equal(back, labels) and torch.equal(back_keys, keys)
    big = torch.tensor([[128_255]]), torch.tensor([[70_000]])
    assert [t.tolist() for t in decode_labels(encode_labels(*big))] == [[[128_255]], [[70_000]]]


def test_per_domain_losses_match_a_hand_computation():
    logits, labels, keys = torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(KEYS)
    per_token = token_cross_entropy(logits, labels)
    assert per_token.shape == (2, 3) and per_token[1, 1] == 0
    assert float(per_token.sum()) == pytest.approx(HAND[0][0] + HAND[1][0], rel=1e-6)
    client = RecordingClient()
    feedback = StepFeedback(FeedbackReporter(client, "job", 2), 2)
    feedback.add(per_token, keys)  # not active: ignored
    feedback.begin()
    tokens, key_ids = decode_labels(encode_labels(labels, keys))
    feedback.add(token_cross_entropy(logits[:1], tokens[:1]), key_ids[:1])  # two microbatches of one step
    feedback.add(token_cross_entropy(logits[1:], tokens[1:]), key_ids[1:])
    losses, counts = feedback.end(7, position=12)
    assert losses == pytest.approx([HAND[0][0], HAND[1][0]], rel=1e-6) and counts == [2.0, 3.0]
    job, step, sent_losses, sent_counts, position = client.sent[0]
    assert (job, step, sent_counts) == ("job", 7, [2.0, 3.0]) and sent_losses == pytest.approx(losses)
    assert position in (None, 12)  # 12 with a Mixtera whose feedback takes the consumed chunk
    # a rank without the loss (an early pipeline stage) adds nothing but still reports
    idle = StepFeedback(FeedbackReporter(RecordingClient(), "job", 2), 2, contributes=False)
    idle.begin()
    idle.add(per_token, keys)
    assert idle.end(7) == ([0.0, 0.0], [0.0, 0.0])


# ----------------------------------------------------------------------------- plugin


def test_plugin_imports_without_torch_or_torchtitan():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["torchtitan"] = None
        import mixtera_integrations.torchtitan as tt
        from mixtera_integrations.torchtitan import plugin, MixteraConfig, load_spec
        print(plugin.mixtera_trainer_adapters()[0].name, MixteraConfig(db="d", spec="s").chunk_size)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["torchtitan", "1024"]


def test_trainer_adapter_plugin_builds_the_loader(sp):
    from mixtera_core.plugins import PluginManager

    pm = PluginManager()  # found through the package's entry point, like a third-party plugin
    assert "torchtitan" in pm.names("trainer_adapter")
    job_id = make_job(sp, "tt-plugin")
    built = pm.trainer_adapter("torchtitan").build_data(sp["client"], job_id, dp_rank=1, local_batch_size=3)
    assert isinstance(built, TokenBatchLoader)
    assert same(take(iter(built), 2), take(iter(loader(sp, job_id, 1)), 2))


# ----------------------------------------------------------------------------- torchtitan


def _titan():
    pytest.importorskip(
        "torchtitan", reason="torchtitan 0.3.0 is not installed (pip install 'mixtera[torchtitan]')"
    )
    return pytest.importorskip("mixtera_integrations.torchtitan.trainer")


def parse_titan_args(args, cwd):
    """What `torchrun ... -m torchtitan.train ARGS` does first: torchtitan's ConfigManager.parse_args."""
    from torchtitan.config import ConfigManager

    sys.path.insert(0, str(cwd))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return ConfigManager().parse_args(list(args))
    finally:
        os.chdir(old)
        sys.path.remove(str(cwd))


def build_loader(config, dp_rank, dp_world_size, cwd):
    """The dataloader as torchtitan's Trainer builds it (Configurable.build with the Trainer's kwargs)."""
    trainer = _titan()
    trainer.MixteraTrainer.prepare_config(config)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return config.dataloader.build(
            dp_world_size=dp_world_size,
            dp_rank=dp_rank,
            tokenizer=None,
            seq_len=config.training.seq_len,
            local_batch_size=config.training.local_batch_size,
            snapshot_every_n_steps=None,
        )
    finally:
        os.chdir(old)


def test_config_manager_parses_the_mixtera_section(sp):
    trainer = _titan()
    from torchtitan.components.loss import ChunkedLossWrapper

    args = [
        "--module",
        "mixtera_integrations.torchtitan",
        "--config",
        "llama3_debugmodel",
        "--hf_assets_path",
        str(sp["tok"]),
        "--mixtera.db",
        str(sp["db"]),
        "--mixtera.job_id",
        "tt-titan",
        "--mixtera.spec",
        str(sp["spec"]),
        "--mixtera.chunk_size",
        "16",
        "--mixtera.seed",
        "5",
        "--training.seq_len",
        "32",
        "--training.local_batch_size",
        "3",
    ]
    config = parse_titan_args(args, sp["root"])
    assert isinstance(config, trainer.MixteraTrainer.Config)
    assert config.mixtera == MixteraConfig(
        db=str(sp["db"]), job_id="tt-titan", spec=str(sp["spec"]), chunk_size=16, seed=5
    )
    assert isinstance(config.dataloader, trainer.MixteraDataLoader.Config)
    trainer.MixteraTrainer.prepare_config(config)
    assert isinstance(config.loss, ChunkedLossWrapper.Config)
    assert isinstance(config.loss.loss_fn, trainer.MixteraCrossEntropyLoss.Config)
    assert config.loss.loss_fn.global_vocab_size == 2048
    assert config.dataloader.mixtera is config.mixtera and config.dataloader.hf_assets_path == str(sp["tok"])
    # the dataloader torchtitan builds is the rank's Mixtera stream
    dl = build_loader(config, 1, 2, sp["root"])
    assert isinstance(dl, trainer.MixteraDataLoader) and dl.session.client is not None
    assert dl.job.spec.dp_groups == 2 and dl.job.spec.tokenizer.source == str(sp["tok"])
    assert same(take(iter(dl), 3), take(iter(loader(sp, "tt-titan", 1)), 3))
    with pytest.raises(Exception, match="no \\[mixtera\\] section"):
        trainer.MixteraDataLoader.Config().build(dp_world_size=1, dp_rank=0, seq_len=8, local_batch_size=1)
    registry = __import__("mixtera_integrations.torchtitan.config_registry", fromlist=["x"])
    assert isinstance(
        registry.qwen3_debugmodel(), trainer.MixteraTrainer.Config
    )  # any torchtitan model config
    with pytest.raises(AttributeError, match="none is named 'no_such_config'"):
        registry.no_such_config  # noqa: B018
    wrapped = trainer.with_mixtera(
        __import__("torchtitan.trainer").trainer.Trainer.Config(), MixteraConfig(db="x")
    )
    assert wrapped.mixtera.db == "x" and isinstance(wrapped.dataloader, trainer.MixteraDataLoader.Config)


def test_mixtera_loss_equals_torchtitans_and_reports_per_domain():
    trainer = _titan()
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss

    logits, labels, keys = torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(KEYS)
    gvt = torch.tensor(5.0)
    plain = CrossEntropyLoss.Config(global_vocab_size=3).build()
    ours = trainer.MixteraCrossEntropyLoss.Config(global_vocab_size=3).build()
    expected = (HAND[0][0] + HAND[1][0]) / 5
    assert float(plain(logits, labels, gvt)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(ours(logits, labels, gvt)[0]) == pytest.approx(
        expected, rel=1e-6
    )  # no feedback: torchtitan's
    ours.feedback = StepFeedback(None, 2)
    ours.feedback.begin()
    loss, _ = ours(logits, encode_labels(labels, keys), gvt)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    per_token, key_ids = ours.feedback.collected()
    sums = torch.zeros(2, dtype=torch.float64).index_add_(
        0, key_ids[key_ids >= 0], per_token[key_ids >= 0].double()
    )
    assert sums.tolist() == pytest.approx([HAND[0][0], HAND[1][0]], rel=1e-6)
    with pytest.raises(Exception, match="vocab"):
        ours(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))

    # inside torchtitan's ChunkedLossWrapper the key ids follow the labels chunk by chunk
    torch.manual_seed(0)
    hidden, head = torch.randn(2, 4, 8), torch.nn.Linear(8, 11, bias=False)
    tokens = torch.randint(0, 11, (2, 4))
    tokens[0, 2] = -100
    key4 = torch.tensor([[0, 1, -1, 1], [1, 0, 0, 1]])
    cfg = ChunkedLossWrapper.Config(num_chunks=2, loss_fn=CrossEntropyLoss.Config(global_vocab_size=11))
    stock = cfg.build()
    stock.set_lm_head(head)
    mixed = trainer._swap_loss(cfg).build()
    mixed.set_lm_head(head)
    mixed.loss_fn.feedback = StepFeedback(None, 2)
    mixed.loss_fn.feedback.begin()
    with torch.no_grad():
        a = stock(hidden, tokens, torch.tensor(7.0))[0]
        b = mixed(hidden, encode_labels(tokens, key4), torch.tensor(7.0))[0]
        direct = token_cross_entropy(head(hidden), tokens)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    per_token, key_ids = mixed.loss_fn.feedback.collected()
    for k in (0, 1):
        assert float(per_token[key_ids == k].sum()) == pytest.approx(float(direct[key4 == k].sum()), rel=1e-5)
    assert int((key_ids >= 0).sum()) == 7


class ForwardingClient(RecordingClient):
    """Records feedback messages and passes everything to a real client."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def feedback(self, job_id, step, losses, counts, position=None):
        super().feedback(job_id, step, losses, counts, position)
        self.client.feedback(job_id, step, losses, counts, position=position)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_trainer_glue_sends_one_feedback_per_step(sp, monkeypatch):
    """MixteraTrainer's own code around torchtitan's training step (the step itself is faked: no CPU training)."""
    trainer = _titan()
    from torchtitan.components.loss import CrossEntropyLoss
    from torchtitan.trainer import Trainer

    initial = {"redpajama_set_name=RedPajamaC4": 0.5, "redpajama_set_name=RedPajamaBook": 0.5}
    spec = parse_spec(
        {"mixture": {"algorithm": "loss_weighted", "initial": initial}, "options": {"on_exhausted": "repeat"}}
    )
    job_id = make_job(sp, "tt-glue", dp_groups=1, spec=spec)
    client = ForwardingClient(sp["client"])
    session = MixteraSession(sp["client"].job(job_id), client, dp_rank=0, dp_world_size=1)
    assert session.dynamic and not session.scheduled
    t = object.__new__(trainer.MixteraTrainer)  # Trainer.__init__ needs a GPU; set what the glue reads
    t.config = SimpleNamespace(mixtera=MixteraConfig(feedback_every=1))
    t.parallel_dims = SimpleNamespace(tp_enabled=False, pp_enabled=False)
    t.loss_fn = trainer._swap_loss(CrossEntropyLoss.Config(global_vocab_size=1000)).build()
    t.dataloader = TokenBatchLoader(session, local_batch_size=2)
    t._setup_feedback(session)
    assert t.dataloader.encode_key_ids and t.loss_fn.feedback is t.mixtera_feedback

    def fake_train_step(self, data_iterator):  # two gradient-accumulation microbatches through the loss
        for _ in range(2):
            _, labels = next(data_iterator)
            self.loss_fn(torch.zeros(*labels.shape, 1000), labels, torch.tensor(1.0))

    monkeypatch.setattr(Trainer, "train_step", fake_train_step)
    it = iter(t.dataloader)
    for step in (1, 2):
        t.step = step
        t.train_step(it)
    assert [m[1] for m in client.sent] == [1, 2]
    for _, _, losses, counts, position in client.sent:
        assert sum(counts) == 2 * 2 * 32  # 2 microbatches of 2 x 32 tokens
        assert losses == pytest.approx([c * math.log(1000) for c in counts], rel=1e-5)  # uniform logits
        assert position is None or position >= 0
    assert sp["client"].checkpoint(job_id)["algorithm"]["updates"] == 2
    assert not t.mixtera_feedback.active  # validation between steps is not counted
    plain, _ = t.loss_fn(torch.zeros(1, 3, 1000), torch.tensor([[1, 2, 3]]), torch.tensor(3.0))
    assert float(plain) == pytest.approx(math.log(1000))
    # tensor parallelism is refused with a dynamic mixture
    t.parallel_dims = SimpleNamespace(tp_enabled=True, pp_enabled=False)
    with pytest.raises(Exception, match="tensor parallelism"):
        t._setup_feedback(session)


# ----------------------------------------------------------------------------- the guide


BLOCK = re.compile(r"(?:<!-- guide:(\w+)(?: ([^ ]+))? -->\n)?```(\w+)\n(.*?)```", re.S)


def guide_blocks():
    return [(m.group(1), m.group(2), m.group(3), m.group(4)) for m in BLOCK.finditer(DOC.read_text())]


def commands(text):
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_guide_every_block_is_run_by_a_test():
    blocks = guide_blocks()
    untested = [text[:60] for kind, _, _, text in blocks if kind is None]
    assert not untested, f"docs/torchtitan.md has code blocks no test runs: {untested}"
    kinds = [kind for kind, *_ in blocks]
    for kind in ("install", "env", "run", "server", "file", "torchrun"):
        assert kind in kinds
    (install,) = [text for kind, _, _, text in blocks if kind == "install"]
    assert commands(install) == ["pip install 'mixtera[torchtitan]'"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^torchtitan = \[.*"torchtitan==0\.3\.0".*\]$', pyproject, re.M), "the torchtitan extra"


@pytest.fixture(scope="module")
def guide(tmp_path_factory, hf_assets):
    """The guide's steps 2-5 on a small SlimPajama-style corpus: its commands and files, a real server."""
    work = tmp_path_factory.mktemp("guide")
    blocks = guide_blocks()
    (env_block,) = [text for kind, _, _, text in blocks if kind == "env"]
    names = {
        m.group(1) for m in re.finditer(r"(\w+)=", "".join(c.split("#")[0] for c in commands(env_block)))
    }
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "CORPUS": str(slimpajama_corpus(work / "SlimPajama" / "train")),
        "MIXTERA_DB": str(work / "mixtera-db"),
        "MIXTERA_HOST": "127.0.0.1",  # loopback only here
        "MIXTERA_PORT": str(port),
        "HF_ASSETS": str(hf_assets),
        "DEBUG_ASSETS": str(hf_assets),
    }
    assert set(env) == names, "the test sets exactly the guide's variables"
    full_env = {**os.environ, **env}
    bin_dir = Path(sys.executable).parent
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"
    outputs = []
    for kind, _, _, text in blocks:
        if kind == "run":
            for cmd in commands(text):
                outputs.append((cmd, run_mixtera(cmd, env)))
    for kind, name, _, text in blocks:
        if kind == "file":
            # the guide's server address, replaced by this test's loopback server
            (work / name).write_text(text.replace("10.0.0.5:7878", f"127.0.0.1:{port}"))
    (server_block,) = [text for kind, _, _, text in blocks if kind == "server"]
    (server_cmd,) = commands(server_block)
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {server_cmd} --log-level WARNING"],
        cwd=work,
        env=full_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, line
    try:
        yield {"work": work, "env": env, "outputs": outputs, "port": port, "blocks": blocks, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    for kind, _, _, text in blocks:
        if kind == "after":  # commands the guide runs once the server is stopped
            for cmd in commands(text):
                assert "slimpajama-8b-static" in run_mixtera(cmd, env)


def run_mixtera(cmd, env):
    """A `mixtera ...` command line of the guide, run by the `mixtera` entry point in this process
    (the same function as the console script; a subprocess would only add seconds of imports)."""
    import contextlib
    import io

    from mixtera_core.cli import main

    argv = shlex.split(cmd)
    assert argv[0] == "mixtera", cmd
    argv = [_expand(a, env) for a in argv[1:]]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code in (0, None), f"{cmd} exited with {code}"
    return out.getvalue()


def _expand(arg, env):
    for key in sorted(env, key=len, reverse=True):
        arg = arg.replace(f"${key}", env[key])
    assert "$" not in arg, arg
    return arg


def test_guide_commands_and_files(guide):
    registered, properties, explained, budget = (out for _, out in guide["outputs"])
    assert "registered 'slimpajama': 2 files, 280 samples" in registered
    assert all(name in properties for name in SETS)
    assert all(name in explained for name in SETS)
    assert "epochs" in budget and "RedPajamaGithub" not in budget  # the query leaves code out
    assert sum(1 for line in budget.splitlines() if line.startswith("redpajama_set_name=")) == 6
    static = load_spec(guide["work"] / "mixture.toml")
    ado = load_spec(guide["work"] / "mixture_ado.toml")
    assert isinstance(static.mixture, StaticMixture) and static.options == {"on_exhausted": "repeat"}
    assert isinstance(ado.mixture, DynamicMixture) and ado.mixture.algorithm == "ado"
    assert ado.mixture.options == {"warmup": 1000, "refit_every": 1000, "count_normalizer": 8192}
    assert [str(k) for k in ado.mixture.initial.keys] == [str(k) for k in static.mixture.keys]
    section = MixteraConfig.from_toml(guide["work"] / "run.toml")
    assert section.server == f"127.0.0.1:{guide['port']}" and section.spec == "mixture.toml"
    # what rank 0 of the 8-GPU run does first (without torchtitan: llama3_8b's seq_len, 8 dp ranks)
    old = os.getcwd()
    os.chdir(guide["work"])
    try:
        session = connect(
            section, dp_rank=0, dp_world_size=8, seq_len=8192, hf_assets_path=guide["env"]["HF_ASSETS"]
        )
    finally:
        os.chdir(old)
    assert (session.job_id, session.job.spec.seed, session.job.spec.chunk_size) == (
        "slimpajama-8b-static",
        42,
        1024,
    )
    first = TokenBatchLoader(session, local_batch_size=1)
    inputs, labels = next(iter(first))
    assert inputs["input"].shape == (1, 8192) and labels.shape == (1, 8192)
    state = first.state_dict()
    first.close()  # closes the client connect() opened: it reports the delivered tokens (`mixtera report`)
    assert first.state_dict() == state  # the position survives closing


def torchrun_args(text, env):
    (cmd,) = commands(text)
    tokens = [_expand(t, env) for t in shlex.split(cmd)]
    assert tokens[0] == "torchrun" and tokens[3:5] == ["-m", "torchtitan.train"], tokens
    assert tokens[1] == "--nproc_per_node"
    return int(tokens[2]), tokens[5:]


def test_guide_torchrun_lines(guide):
    trainer = _titan()
    import torch.distributed.checkpoint as dcp

    runs = [text for kind, _, _, text in guide["blocks"] if kind == "torchrun"]
    assert len(runs) == 4
    work, env = guide["work"], guide["env"]
    parsed = [(n, parse_titan_args(args, work)) for n, args in (torchrun_args(t, env) for t in runs)]
    for _, config in parsed:
        assert isinstance(config, trainer.MixteraTrainer.Config)
        assert config.mixtera.server == f"127.0.0.1:{guide['port']}"
        assert config.hf_assets_path == env["HF_ASSETS"]

    # smoke run: llama3_debugmodel on one GPU
    nproc, debug = parsed[0]
    assert (nproc, debug.mixtera.job_id, debug.training.seq_len, debug.training.steps) == (
        1,
        "debug-static",
        512,
        20,
    )
    dl = build_loader(debug, 0, nproc, work)
    inputs, labels = next(iter(dl))
    assert inputs["input"].shape == (8, 512) and labels.shape == (8, 512) and int(labels.max()) < 1000

    # the 8B run: 8 data-parallel ranks (FSDP); two of them, disjoint
    nproc, big = parsed[1]
    assert (nproc, big.mixtera.job_id, big.training.seq_len, big.training.steps) == (
        8,
        "slimpajama-8b-static",
        8192,
        10_000,
    )
    rows = {}
    for rank in (0, 7):
        batch, _ = next(iter(build_loader(big, rank, nproc, work)))
        assert batch["input"].shape == (1, 8192)
        rows[rank] = batch["input"][0].tolist()
    assert rows[0] != rows[7]

    # ADO: a dynamic job; one step's per-domain losses reach the algorithm on the server
    _, dyn = parsed[2]
    assert dyn.mixtera.job_id == "slimpajama-8b-ado" and dyn.mixtera.spec == "mixture_ado.toml"
    dl = build_loader(dyn, 0, 8, work)
    assert dl.session.dynamic and len(dl.key_names) == 6
    client = dl.session.client
    before = client.checkpoint(dl.job_id)["algorithm"]
    loss = trainer.MixteraCrossEntropyLoss.Config().build()
    loss.feedback = StepFeedback(FeedbackReporter(client, dl.job_id, len(dl.key_names)), len(dl.key_names))
    dl.encode_key_ids = True
    inputs, labels = next(iter(dl))
    loss.feedback.begin()
    logits = torch.randn(*labels.shape, 1000)
    loss(logits, labels, torch.tensor(float(labels.numel())))
    losses, counts = loss.feedback.end(1, dl.consumed_chunk)
    assert sum(counts) == labels.numel() and all(x > 0 for x in losses if x)
    after = client.checkpoint(dl.job_id)["algorithm"]
    assert after != before and sum(after["cum"]) == pytest.approx(sum(before["cum"]) + labels.numel())

    # resume: the checkpointed data state (with the job's mixture state on rank 0) continues exactly
    _, resume = parsed[3]
    assert resume.checkpoint.enable and resume.checkpoint.interval == 500
    assert resume.mixtera.job_id == dyn.mixtera.job_id
    first = build_loader(resume, 0, 8, work)
    it = iter(first)
    take(it, 1)
    with pytest.warns(UserWarning):
        dcp.save({"dataloader": first}, checkpoint_id=str(work / "ckpt"))
    expected = take(it, 2)
    second = build_loader(resume, 0, 8, work)
    with pytest.warns(UserWarning):
        dcp.load({"dataloader": second}, checkpoint_id=str(work / "ckpt"))
    assert same(take(iter(second), 2), expected)


WORKER = """
import json, os, sys
import torch, torch.distributed as dist
from mixtera_core.feedback import FeedbackReporter
from mixtera_integrations.torchtitan.config import MixteraConfig
from mixtera_integrations.torchtitan.data import TokenBatchLoader, connect
from mixtera_integrations.torchtitan.feedback import StepFeedback

dist.init_process_group("gloo")
rank = dist.get_rank()
server, spec, tok, out = sys.argv[1:5]
result = {}
for name, dp_world, dp_rank in (("peers", 1, 0), ("dp", 2, rank)):
    section = MixteraConfig(server=server, job_id=f"mp-{name}", spec=spec, tokenizer="hf:" + tok, chunk_size=16)
    session = connect(section, dp_rank=dp_rank, dp_world_size=dp_world, seq_len=16)
    it = iter(TokenBatchLoader(session, local_batch_size=2))
    rows = [next(it)[0]["input"].tolist() for _ in range(2)]
    result[name] = {"node": session.node, "nodes": session.nodes_per_group, "rows": rows}
# feedback: each rank adds losses 1 (rank 0) and 2 (rank 1) for key 0; rank 0 sends the sum
feedback = StepFeedback(FeedbackReporter(session.client, session.job_id, 3), 3)
feedback.begin()
feedback.add(torch.full((2,), float(rank + 1)), torch.zeros(2, dtype=torch.long))
result["sent"] = feedback.end(1)
gathered = [None, None]
dist.all_gather_object(gathered, result)
if rank == 0:
    with open(out, "w") as fh:
        json.dump(gathered, fh)
dist.destroy_process_group()
"""


def test_two_processes_connect_map_ranks_and_reduce_feedback(guide, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    spec = {
        "query": {"where": ["redpajama_set_name in RedPajamaC4,RedPajamaBook,RedPajamaArXiv"]},
        "mixture": {
            "algorithm": "loss_weighted",
            "initial": {
                "redpajama_set_name=RedPajamaC4": 0.5,
                "redpajama_set_name=RedPajamaBook": 0.25,
                "redpajama_set_name=RedPajamaArXiv": 0.25,
            },
        },
        "options": {"on_exhausted": "repeat"},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "worker.py"),
            f"127.0.0.1:{guide['port']}",
            str(tmp_path / "spec.json"),
            guide["env"]["HF_ASSETS"],
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = json.loads(out.read_text())
    # one dp rank, two ranks: nodes 0 and 1 of one group, the same batches
    assert (r0["peers"]["nodes"], r0["peers"]["node"], r1["peers"]["node"]) == (2, 0, 1)
    assert r0["peers"]["rows"] == r1["peers"]["rows"]
    # two dp ranks: one node each, disjoint batches
    assert (r0["dp"]["nodes"], r0["dp"]["node"], r1["dp"]["node"]) == (1, 0, 0)
    assert r0["dp"]["rows"] != r1["dp"]["rows"]
    # the feedback is summed over both ranks and sent once, by rank 0
    assert r0["sent"] == [[2.0 + 4.0, 0.0, 0.0], [4.0, 0.0, 0.0]] and r1["sent"] is None
