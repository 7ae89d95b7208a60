"""The token index (mixtera_core.token_index): tokenize once, read the tokens memory-mapped.

Real components throughout: a mixed-format corpus (jsonl.zst, parquet, jsonl.gz) registered in
a DuckDB catalog, a byte-level BPE trained on the fly, tiktoken's cl100k_base for a vocabulary
beyond uint16, the ``mixtera`` CLI in process and a ``mixtera-server`` process on loopback.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import hetero_corpus, register_corpus, stdlib_text, write_jsonl

from mixtera_core import MixteraClient
from mixtera_core.cli import main
from mixtera_core.errors import (
    TokenIndexError,
    TokenIndexManifestError,
    TokenIndexStaleError,
    UnknownDatasetError,
)
from mixtera_core.interfaces import FieldRef
from mixtera_core.job import JobError, TokenizerSpec
from mixtera_core.plugins import get_plugin_manager
from mixtera_core.streaming import document_specials, record_text
from mixtera_core.token_index import (
    MANIFEST,
    TokenIndex,
    TokenizeProgress,
    _directory_lock,
    index_dir,
    tokenizer_fingerprint,
)

pytest.importorskip("tokenizers")

DATASETS = ["python", "c", "uk"]
ALL = 1 << 40


def train_bpe(path: Path, vocab_size: int, text_bytes: int = 60_000) -> Path:
    """Another small byte-level BPE (same special tokens as conftest's small_bpe)."""
    import tokenizers as tk

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = stdlib_text(text_bytes)
    tok.train_from_iterator((text[i : i + 4096] for i in range(0, len(text), 4096)), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def skip_corpus(root: Path) -> Path:
    """A jsonl file with malformed lines (skipped at registration: sample indices with gaps),
    empty and non-ASCII texts, and one more after the last gap."""
    lines = []
    for i in range(40):
        if i in (3, 17, 18, 39):
            lines.append("{not json")
        elif i == 5:
            lines.append(json.dumps({"text": "", "lang": "mixed"}))
        else:
            lines.append(json.dumps({"text": f"doc {i}: ünïcödé ✓ " * (1 + i % 5), "lang": "mixed"}))
    return write_jsonl(root / "mixed" / "m.jsonl", lines)


def register_all(client, corpus, mixed: Path) -> None:
    register_corpus(client, corpus)
    client.register_dataset("mixed", mixed, parser_options={"lang": "lang"}, on_error="skip")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokidx")
    data = hetero_corpus(root / "corpus", per_key=200)
    data["mixed"] = skip_corpus(root / "corpus")
    return data


@pytest.fixture(scope="module")
def cat(tmp_path_factory, corpus):
    """A local client with the corpus registered (its files are never changed)."""
    c = MixteraClient.local(tmp_path_factory.mktemp("catdb") / "db")
    register_all(c, corpus, corpus["mixed"])
    yield c
    c.close()


def expected_tokens(client, spec: TokenizerSpec, add_bos: bool, add_eos: bool, text_field: str = "text"):
    """file_id -> {sample_index: ids} as a token-mode stream tokenizes, read through the formats."""
    plugins = get_plugin_manager()
    tok = plugins.tokenizer_factory(spec.name).load(spec.source, **spec.options)
    bos, eos = document_specials(tok, add_bos, add_eos)
    ref = FieldRef.parse(text_field)
    out = {}
    for fid, info in client.catalog.files().items():
        fmt = plugins.format(info.format)
        records = list(fmt.read(info.path, [(0, ALL)], client.catalog.read_index(fid)))
        texts = [record_text(r, ref, (info.path, i)) for i, r in records]
        ids = tok.encode_batch(texts)
        out[fid] = {i: bos + t + eos for (i, _), t in zip(records, ids, strict=True)}
    return out


def index_files(client) -> dict[int, str]:
    return {fid: f.path for fid, f in client.catalog.files().items()}


def assert_index_matches(index: TokenIndex, expected: dict[int, dict[int, list[int]]]) -> None:
    for fid, samples in expected.items():
        got = list(index.read(fid, [(0, ALL)]))
        assert [i for i, _ in got] == sorted(samples), fid
        for i, ids in got:
            assert ids.dtype == index.dtype
            assert ids.tolist() == samples[i], (fid, i)
        counts = index.sample_tokens(fid)
        assert counts.dtype == np.int64 and len(counts) == max(samples) + 1
        assert all(counts[i] == len(samples.get(i, ())) for i in range(len(counts)))


def snapshot(directory: str) -> dict[str, bytes]:
    """The index's arrays (the .json records hold the run's catalog version and mtimes)."""
    return {
        name: Path(directory, name).read_bytes()
        for name in sorted(os.listdir(directory))
        if name.endswith((".tokens", ".offsets", ".present"))
    }


# ---------------------------------------------------------------------- what the index holds


@pytest.mark.parametrize("add_bos,add_eos", [(False, True), (True, True), (True, False), (False, False)])
def test_index_holds_what_a_stream_tokenizes(cat, small_bpe, add_bos, add_eos):
    spec = TokenizerSpec("hf", str(small_bpe))
    seen: list[TokenizeProgress] = []
    report = cat.tokenize(
        [*DATASETS, "mixed"], ("hf", str(small_bpe)), add_bos=add_bos, add_eos=add_eos, progress=seen.append
    )
    assert report.fingerprint == tokenizer_fingerprint(spec, add_bos, add_eos)
    assert report.dtype == "uint16" and report.vocab_size == 1000
    assert report.files == 6 and report.files_tokenized + report.files_skipped == 6
    assert seen[-1].files_done == seen[-1].files_total == 6
    assert seen[-1].samples_done == seen[-1].samples_total == report.samples == 3 * 200 + 36
    assert [p.samples_done for p in seen] == sorted(p.samples_done for p in seen)
    index = TokenIndex.open(cat.db_dir, report.fingerprint)
    assert index is not None and index.dtype == np.dtype("<u2") and index.vocab_size == 1000
    files = index_files(cat)
    assert index.covers(files)
    index.check(files)
    expected = expected_tokens(cat, spec, add_bos, add_eos)
    assert_index_matches(index, expected)
    assert report.tokens == sum(len(t) for f in expected.values() for t in f.values())

    # skipped samples are not yielded, and have no tokens; the empty text has only its specials
    mixed = next(fid for fid, f in cat.catalog.files().items() if f.dataset == "mixed")
    got = dict(index.read(mixed, [(0, 7), (15, 20), (38, 45)]))
    assert sorted(got) == [0, 1, 2, 4, 5, 6, 15, 16, 19, 38]
    assert got[5].tolist() == ([1] if add_bos else []) + ([0] if add_eos else [])
    assert index.sample_tokens(mixed)[[3, 17, 18]].tolist() == [0, 0, 0]
    assert len(index.sample_tokens(mixed)) == 39  # the last line (index 39) was skipped


def test_settings_give_their_own_fingerprints(cat, small_bpe, tmp_path):
    spec = TokenizerSpec("hf", str(small_bpe))
    prints = {tokenizer_fingerprint(spec, b, e) for b in (False, True) for e in (False, True)}
    prints.add(tokenizer_fingerprint(spec, False, True, "body"))
    prints.add(tokenizer_fingerprint(TokenizerSpec("hf", str(small_bpe), {"eos_token": "<s>"}), False, True))
    assert len(prints) == 6
    # the same file elsewhere: the same fingerprint; another tokenizer file at that path: another
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    shutil.copy(small_bpe, path)
    same = tokenizer_fingerprint(TokenizerSpec("hf", str(path)), False, True)
    assert same == tokenizer_fingerprint(spec, False, True)
    train_bpe(path, 600)
    other_spec = TokenizerSpec("hf", str(path))
    other = tokenizer_fingerprint(other_spec, False, True)
    assert other != same
    report = cat.tokenize("uk", ("hf", str(path)), workers=1)
    assert report.fingerprint == other and report.files == 1 and report.vocab_size == 600
    index = TokenIndex.open(cat.db_dir, other)
    assert index is not None
    uk = {fid for fid, f in cat.catalog.files().items() if f.dataset == "uk"}
    expected = expected_tokens(cat, other_spec, False, True)
    assert_index_matches(index, {k: v for k, v in expected.items() if k in uk})
    assert not index.covers(index_files(cat))  # only uk is in this one
    assert TokenIndex.open(cat.db_dir, "0123456789abcdef") is None


def test_vocab_beyond_uint16_is_stored_as_uint32(cat):
    from mixtera_plugins.tokenizers import TokenizerLoadError

    try:
        get_plugin_manager().tokenizer_factory("tiktoken").load("cl100k_base")
    except TokenizerLoadError as e:
        pytest.skip(f"no offline cl100k_base: {e}")
    spec = TokenizerSpec("tiktoken", "cl100k_base")
    report = cat.tokenize(["uk", "c"], spec)
    assert report.dtype == "uint32" and report.vocab_size > 65536
    index = TokenIndex.open(cat.db_dir, report.fingerprint)
    assert index is not None and index.dtype == np.dtype("<u4")
    wanted = {fid for fid, f in cat.catalog.files().items() if f.dataset in ("uk", "c")}
    expected = {k: v for k, v in expected_tokens(cat, spec, False, True).items() if k in wanted}
    assert_index_matches(index, expected)
    top = max(int(ids.max()) for fid in wanted for _, ids in index.read(fid, [(0, ALL)]))
    assert top > 65535  # EOS (100257) and more: uint16 would have wrapped


def test_reader_is_picklable_and_reopens_after_fork(cat, small_bpe):
    report = cat.tokenize(DATASETS, ("hf", str(small_bpe)))
    index = TokenIndex.open(cat.db_dir, report.fingerprint)
    assert index is not None
    fid = min(index_files(cat))
    first = [(i, t.tolist()) for i, t in index.read(fid, [(0, 50)])]
    copy = pickle.loads(pickle.dumps(index))
    assert [(i, t.tolist()) for i, t in copy.read(fid, [(0, 50)])] == first
    index._pid = -1  # as in a forked child: the maps are opened again
    assert [(i, t.tolist()) for i, t in index.read(fid, [(0, 50)])] == first
    n = len(index.sample_tokens(fid))
    assert [i for i, _ in index.read(fid, [(10, 12), (48, 10**9), (-5, 1)])] == [10, 11, *range(48, n), 0]
    with pytest.raises(TokenIndexError, match="not in the token index"):
        index.sample_tokens(10**6)


# ---------------------------------------------------------------------- resuming and refusing


def test_interrupted_run_resumes_and_equals_a_clean_build(tmp_path, corpus, small_bpe):
    clean = MixteraClient.local(tmp_path / "clean")
    register_all(clean, corpus, corpus["mixed"])
    clean_report = clean.tokenize([*DATASETS, "mixed"], ("hf", str(small_bpe)), add_bos=True)
    clean.close()

    c = MixteraClient.local(tmp_path / "db")
    register_all(c, corpus, corpus["mixed"])

    def crash(p: TokenizeProgress) -> None:
        if p.files_done >= 1:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        c.tokenize([*DATASETS, "mixed"], ("hf", str(small_bpe)), add_bos=True, workers=1, progress=crash)
    directory = index_dir(c.db_dir, clean_report.fingerprint)
    complete = sorted(int(n[:-5]) for n in os.listdir(directory) if n.endswith(".json") and n != MANIFEST)
    # the first file, and whatever the worker finished before it saw the stop: not all of them
    assert complete[0] == 1 and complete == list(range(1, len(complete) + 1)) and len(complete) < 6
    # what a crash in the middle of a file leaves behind: temporaries (overwritten next time)
    nxt = len(complete) + 1
    Path(directory, f"{nxt}.tokens.tmp").write_bytes(b"\xff" * 1001)
    Path(directory, f"{nxt}.offsets.tmp").write_bytes(b"garbage")
    index = TokenIndex.open(c.db_dir, clean_report.fingerprint)
    assert index is not None and not index.covers(index_files(c))
    done_mtimes = {
        n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in ("1.json", "1.tokens", "1.offsets")
    }

    report = c.tokenize([*DATASETS, "mixed"], ("hf", str(small_bpe)), add_bos=True)
    assert (report.files_skipped, report.files_tokenized) == (len(complete), 6 - len(complete))
    assert (report.samples, report.tokens) == (clean_report.samples, clean_report.tokens)
    assert {n: os.stat(os.path.join(directory, n)).st_mtime_ns for n in done_mtimes} == done_mtimes
    assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
    assert snapshot(directory) == snapshot(clean_report.directory)
    again = c.tokenize([*DATASETS, "mixed"], ("hf", str(small_bpe)), add_bos=True)
    assert (again.files_skipped, again.files_tokenized, again.tokens) == (6, 0, clean_report.tokens)
    assert "6 already done" in str(again)
    c.close()


def test_changed_files_are_refused(tmp_path, small_bpe):
    data = tmp_path / "data"
    a = write_jsonl(data / "a.jsonl", [{"text": f"alpha {i}", "lang": "x"} for i in range(30)])
    b = write_jsonl(data / "b.jsonl", [{"text": f"beta {i}", "lang": "x"} for i in range(30)])
    c = MixteraClient.local(tmp_path / "db")
    c.register_dataset("d", data, parser_options={"lang": "lang"})
    tok = ("hf", str(small_bpe))

    # a file grown after registration: refused before anything is tokenized
    with open(b, "a") as fh:
        fh.write(json.dumps({"text": "late", "lang": "x"}) + "\n")
    with pytest.raises(TokenIndexStaleError) as info:
        c.tokenize("d", tok)
    assert str(b) in str(info.value) and "re-register" in str(info.value) and "'d'" in str(info.value)

    c.register_dataset("d", data, parser_options={"lang": "lang"}, replace=True)
    report = c.tokenize("d", tok)
    index = TokenIndex.open(c.db_dir, report.fingerprint)
    assert index is not None
    files = index_files(c)
    index.check(files)

    # the same size, another mtime (rewritten in place): refused at every later use
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(TokenIndexStaleError) as info:
        index.check(files)
    assert str(a) in str(info.value) and "re-register" in str(info.value)
    with pytest.raises(TokenIndexStaleError, match="changed since it was tokenized"):
        c.tokenize("d", tok)
    # re-registered: tokenized again, and usable
    c.register_dataset("d", data, parser_options={"lang": "lang"}, replace=True)
    again = c.tokenize("d", tok)
    assert again.files_tokenized >= 1 and again.samples == 61
    index = TokenIndex.open(c.db_dir, report.fingerprint)
    assert index is not None
    files = index_files(c)
    assert index.covers(files)
    index.check(files)

    os.remove(b)
    with pytest.raises(TokenIndexStaleError, match="no longer exists"):
        index.check(files)
    with pytest.raises(UnknownDatasetError, match="'nope'"):
        c.tokenize(["d", "nope"], tok)
    c.close()


def test_mismatched_or_corrupt_manifest_is_refused(tmp_path, corpus, small_bpe):
    c = MixteraClient.local(tmp_path / "db")
    register_corpus(c, corpus)
    report = c.tokenize("uk", ("hf", str(small_bpe)))
    path = Path(report.directory, MANIFEST)
    original = path.read_text()
    manifest = json.loads(original)

    for why, edit in (
        ("add_eos", lambda m: {**m, "add_eos": False}),
        ("do not hash", lambda m: {**m, "identity": {**m["identity"], "add_eos": False}}),
        ("dtype", lambda m: {**m, "dtype": "uint32"}),
        ("does not describe", lambda m: {**m, "fingerprint": "0" * 16}),
    ):
        path.write_text(json.dumps(edit(manifest)))
        with pytest.raises(TokenIndexManifestError, match=why) as info:
            TokenIndex.open(c.db_dir, report.fingerprint)
        assert report.directory in str(info.value) and "delete" in str(info.value)
        with pytest.raises(TokenIndexManifestError, match=why):
            c.tokenize("uk", ("hf", str(small_bpe)))
    path.write_text("{ truncated")
    with pytest.raises(TokenIndexManifestError, match="unreadable"):
        c.tokenize("uk", ("hf", str(small_bpe)))
    path.write_text(original)
    assert c.tokenize("uk", ("hf", str(small_bpe))).files_skipped == 1

    # one run per directory at a time
    with _directory_lock(report.directory), pytest.raises(TokenIndexError, match="another tokenize"):
        c.tokenize("uk", ("hf", str(small_bpe)))
    c.close()

    with pytest.raises(JobError, match="rank 0"):
        MixteraClient.local(tmp_path / "db", rank=1).tokenize("uk", ("hf", str(small_bpe)))


# ---------------------------------------------------------------------- CLI and server


def test_cli_tokenize(tmp_path, corpus, small_bpe, capsys):
    db = str(tmp_path / "db")
    c = MixteraClient.local(db)
    register_corpus(c, corpus)
    c.close()
    args = ["--db", db, "tokenize", "python", "c", "--tokenizer", f"hf:{small_bpe}", "--add-bos", "--no-eos"]
    assert main([*args, "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert "tokenized python, c: 4 files, 400 samples" in out and "uint16" in out
    assert "tokenize" in err and "4/4 files" in err  # the progress bar
    fingerprint = tokenizer_fingerprint(TokenizerSpec("hf", str(small_bpe)), True, False)
    assert fingerprint in out
    assert main([*args, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "(4 already done)" in out and err == ""
    c = MixteraClient.local(db)
    index = TokenIndex.open(db, fingerprint)
    assert index is not None
    wanted = {fid for fid, f in c.catalog.files().items() if f.dataset in ("python", "c")}
    expected = expected_tokens(c, TokenizerSpec("hf", str(small_bpe)), True, False)
    assert_index_matches(index, {k: v for k, v in expected.items() if k in wanted})
    c.close()

    assert main(["--db", db, "tokenize", "nope", "--tokenizer", f"hf:{small_bpe}"]) == 1
    assert "UnknownDatasetError: no dataset named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="PLUGIN:SOURCE"):
        main(["--db", db, "tokenize", "python", "--tokenizer", str(small_bpe)])


def test_remote_tokenize_against_a_server_process(tmp_path, corpus, small_bpe):
    from test_server import Server

    from mixtera_core.remote import PermissionDeniedError, RemoteMixteraClient

    root = tmp_path / "corpus"
    shutil.copytree(corpus["root"], root)
    copy = {
        "root": root,
        "register": [
            (n, loc.replace(str(corpus["root"]), str(root)), f, o) for n, loc, f, o in corpus["register"]
        ],
    }
    elsewhere = train_bpe(tmp_path / "outside" / "tokenizer.json", 500, 20_000)
    srv = Server(
        tmp_path / "srvdb",
        "--allowed-root",
        str(root),
        "--allowed-root",
        str(small_bpe.parent),
        cwd=tmp_path,
    )
    try:
        rc = RemoteMixteraClient("127.0.0.1", srv.port)
        register_corpus(rc, copy)
        seen: list[TokenizeProgress] = []
        report = rc.tokenize(DATASETS, ("hf", str(small_bpe)), add_bos=True, progress=seen.append)
        assert report.files == 5 and report.files_tokenized == 5 and report.dtype == "uint16"
        assert report.fingerprint == tokenizer_fingerprint(TokenizerSpec("hf", str(small_bpe)), True, True)
        assert seen and seen[-1].files_done == 5 and seen[-1].samples_done == report.samples == 600
        again = rc.tokenize(DATASETS, TokenizerSpec("hf", str(small_bpe)), add_bos=True)
        assert (again.files_skipped, again.tokens) == (5, report.tokens)

        with pytest.raises(PermissionDeniedError, match="allowed roots"):
            rc.tokenize("uk", ("hf", str(elsewhere)))
        with pytest.raises(UnknownDatasetError, match="'nope'"):
            rc.tokenize("nope", ("hf", str(small_bpe)))
        # the same tokens as a local build of the same corpus
        local = MixteraClient.local(tmp_path / "localdb")
        register_corpus(local, copy)
        mine = local.tokenize(DATASETS, ("hf", str(small_bpe)), add_bos=True)
        assert snapshot(report.directory) == snapshot(mine.directory)
        local.close()
        # a changed file: the server's refusal arrives as the same error class
        grown = root / "uk" / "a.jsonl.gz"
        grown.write_bytes(grown.read_bytes() + b"\x00")
        with pytest.raises(TokenIndexStaleError, match="a.jsonl.gz"):
            rc.tokenize("uk", ("hf", str(small_bpe)), add_bos=True)
        rc.close()
    finally:
        assert srv.stop() == 0
