"""Real tokenizers and token files: a BPE trained on the training split only and cached, a user's
tokenizer.json, end-of-document ids between documents, bytes per token (so bits per byte) for
tokenized text, Parquet shards and nanoGPT's .bin files, and the errors of each."""
from __future__ import annotations

import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from nas import tokenize
from nas.config import StudyConfig, load_config
from nas.data import DataSource, load_corpus
from nas.train import TrainBudget, train
from search_spaces.spec import ArchSpec, LayerSpec

TRAIN_TEXT = "the cat sat on the mat and the dog ran in the fog. " * 120
VAL_TEXT = "qxqxqx zvzvzv qxqxqx zvzvzv. " * 120  # pairs that no training text has


@pytest.fixture(autouse=True)
def _user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("QKVNAS_CACHE_DIR", str(cache))  # never the real ~/.cache
    return cache


def text_folder(root: Path, val: str = VAL_TEXT) -> Path:
    folder = root / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(TRAIN_TEXT)
    (folder / "b.txt").write_text(TRAIN_TEXT.replace("cat", "bat"))
    (folder / "val.txt").write_text(val)
    return folder


def vocab_of(path: str) -> set[str]:
    return set(Tokenizer.from_file(path).get_vocab())


# ---- BPE trained on the training split ------------------------------------------------------------
def test_bpe_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    corpus = load_corpus(text_folder(tmp_path), tokenizer="bpe:320")
    vocab = vocab_of(corpus.tokenizer)
    assert {"Ġthe", "Ġcat", "Ġbat"} <= vocab  # merges of the training text
    assert not any("qx" in t or "zv" in t for t in vocab)  # nothing of the validation text
    # The same trainer given the validation text too learns its pairs: the check above can fail.
    leaky = tokenize.train_bpe([TRAIN_TEXT, VAL_TEXT], 320)
    assert any("qx" in t for t in leaky.get_vocab())
    assert corpus.val_parts == ("val.txt",) and corpus.eos_id == 0 and corpus.vocab_size == len(vocab)
    tok = Tokenizer.from_file(corpus.tokenizer)
    assert tok.decode(corpus.val.tolist()) == VAL_TEXT  # one validation document, encoded losslessly
    assert corpus.bytes_per_token == pytest.approx(len(VAL_TEXT.encode()) / corpus.val.size)
    assert corpus.bytes_per_token == 1.0  # no merge applies to the validation text: one byte a token
    # Training documents are joined with the end-of-document id between them, and only there.
    assert np.count_nonzero(corpus.train == 0) == 1
    first = int(np.flatnonzero(corpus.train == 0)[0])
    assert tok.decode(corpus.train[:first].tolist()) == TRAIN_TEXT


def test_the_bpe_is_cached_beside_the_data_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = text_folder(tmp_path)
    first = load_corpus(folder, tokenizer="bpe:320")
    cached = list((folder / ".qkvnas-cache").glob("bpe320-*.json"))
    assert [str(p) for p in cached] == [first.tokenizer]
    trained: list[int] = []
    real = tokenize.train_bpe
    monkeypatch.setattr(tokenize, "train_bpe", lambda texts, vocab: trained.append(vocab) or real(texts, vocab))
    again = load_corpus(folder, tokenizer="bpe:320")
    assert trained == [] and again.tokenizer == first.tokenizer
    assert np.array_equal(again.train, first.train) and np.array_equal(again.val, first.val)
    # The cache folder is hidden: the text folder does not read it as data.
    assert again.val_parts == first.val_parts and again.train.size == first.train.size
    # Another vocabulary, or other training text, is another tokenizer; validation text is no part of the key.
    load_corpus(folder, tokenizer="bpe:300")
    (folder / "val.txt").write_text(VAL_TEXT + " more")
    same_train = load_corpus(folder, tokenizer="bpe:320")
    (folder / "a.txt").write_text(TRAIN_TEXT + " more")
    load_corpus(folder, tokenizer="bpe:320")
    assert trained == [300, 320] and same_train.tokenizer == first.tokenizer
    assert len(list((folder / ".qkvnas-cache").glob("*.json"))) == 3


def test_a_single_file_is_cut_into_train_and_validation_before_the_bpe(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text(TRAIN_TEXT + VAL_TEXT[: len(TRAIN_TEXT) // 9])
    corpus = load_corpus(path, tokenizer="bpe:300")
    assert corpus.val_parts == ("last 10% of book.txt",)
    assert Path(corpus.tokenizer).parent == tmp_path / ".qkvnas-cache"
    assert not any("qx" in t for t in vocab_of(corpus.tokenizer))  # the tail, validation, was not trained on


# ---- a user's tokenizer.json -------------------------------------------------------------------------
def test_a_users_tokenizer_json_without_an_end_of_document_token(tmp_path: Path) -> None:
    from tokenizers import models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"the": 0, "cat": 1, "sat": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    folder = tmp_path / "text"
    folder.mkdir()
    for name, text in (("a.txt", "the cat sat " * 50), ("b.txt", "cat the " * 50), ("val.txt", "sat sat dog " * 20)):
        (folder / name).write_text(text)
    corpus = load_corpus(DataSource(path=str(folder), tokenizer=str(path)))
    assert corpus.eos_id == 4 and corpus.vocab_size == 5  # a new id after the tokenizer's vocabulary
    assert corpus.train.tolist() == [0, 1, 2] * 50 + [4] + [1, 0] * 50
    assert corpus.val.tolist() == [2, 2, 3] * 20  # "dog" is unknown to this tokenizer
    assert corpus.bytes_per_token == pytest.approx(len("sat sat dog " * 20) / 60)
    assert corpus.tokenizer == str(path)


def test_a_tokenizer_with_an_end_of_document_token_uses_it(tmp_path: Path) -> None:
    tok = tokenize.train_bpe([TRAIN_TEXT], 300)
    tok.add_special_tokens(["</s>"])  # after the BPE's own <|endoftext|> (id 0), which comes first
    path = tmp_path / "tok.json"
    tok.save(str(path))
    corpus = load_corpus(text_folder(tmp_path), tokenizer=str(path))
    assert corpus.eos_id == 0 and corpus.vocab_size == tok.get_vocab_size()


# ---- token shards: bytes per token, end-of-document ids -----------------------------------------------
def _shard(path: Path, column: list, metadata: dict[bytes, bytes] | None = None) -> None:
    table = pa.table({"tokens": column})
    pq.write_table(table.replace_schema_metadata(metadata) if metadata else table, path)


def test_bytes_per_token_in_parquet_metadata_gives_bits_per_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(5):
        _shard(tmp_path / f"s{i}.parquet", rng.integers(0, 40, 3000).tolist(), {b"qkvnas.bytes_per_token": b"3.5"})
    corpus = load_corpus(tmp_path)
    assert corpus.bytes_per_token == 3.5 and corpus.eos_id is None
    spec = ArchSpec(vocab_size=40, context=16, d_model=16, n_heads=2, ffn_dim=32, layers=(LayerSpec(),))
    result = train(spec, corpus, TrainBudget(tokens=4 * 16 * 4, batch_size=4, eval_batches=2, device="cpu"))
    assert result.bits_per_byte == pytest.approx(result.val_loss / math.log(2) / 3.5)
    (tmp_path / "s4.parquet").unlink()
    _shard(tmp_path / "s4.parquet", rng.integers(0, 40, 3000).tolist())  # the validation shard states none
    assert load_corpus(tmp_path).bytes_per_token is None


def test_documents_are_joined_with_an_end_of_document_id(tmp_path: Path) -> None:
    docs = [[5, 6, 7], [8, 9], [1, 2, 3, 4]]
    for i in range(4):
        _shard(tmp_path / f"d{i}.parquet", docs * 20, {b"qkvnas.bytes_per_token": b"4"})
    corpus = load_corpus(tmp_path)
    assert corpus.eos_id == 10 and corpus.vocab_size == 11  # a new id: the largest id + 1
    one_shard = [t for i, d in enumerate(docs * 20) for t in ([10] if i else []) + d]
    assert corpus.val.tolist() == one_shard  # d3, the last shard, holds out
    assert corpus.train.tolist() == (one_shard + [10]) * 2 + one_shard  # and between shards
    text_tokens = 9 * 20
    assert corpus.bytes_per_token == pytest.approx(4 * text_tokens / corpus.val.size)
    for i in range(4):  # the shards name their end-of-document id
        _shard(tmp_path / f"d{i}.parquet", docs * 20, {b"qkvnas.eos_id": b"0"})
    assert load_corpus(tmp_path).eos_id == 0 and load_corpus(tmp_path).val.tolist()[3] == 0
    _shard(tmp_path / "d0.parquet", docs * 20, {b"qkvnas.eos_id": b"11"})
    with pytest.raises(ValueError, match="different qkvnas.eos_id values"):
        load_corpus(tmp_path)


def test_shards_encoded_with_a_tokenizer_use_its_eos_and_measure_bytes(tmp_path: Path) -> None:
    tok = tokenize.train_bpe([TRAIN_TEXT], 300)
    path = tmp_path / "tok.json"
    tok.save(str(path))
    sentences = [s + "." for s in TRAIN_TEXT.split(".") if s.strip()][:40]
    docs = [tok.encode(s).ids for s in sentences]
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "train.parquet", docs[:30])
    _shard(shards / "val.parquet", docs[30:])
    corpus = load_corpus(shards, tokenizer=str(path))
    assert corpus.eos_id == 0 and corpus.vocab_size == tok.get_vocab_size()
    assert corpus.bytes_per_token == pytest.approx(len("".join(sentences[30:]).encode()) / corpus.val.size)


# ---- nanoGPT's .bin ------------------------------------------------------------------------------------
def test_a_nanogpt_bin_folder_round_trips(tmp_path: Path) -> None:
    text = "hello world, é! " * 200
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))
    ids[:cut].tofile(tmp_path / "train.bin")
    ids[cut:].tofile(tmp_path / "val.bin")
    (tmp_path / "input.txt").write_text(text)  # nanoGPT's folders keep their text and script beside the ids
    (tmp_path / "prepare.py").write_text("# prepare\n")
    with open(tmp_path / "meta.pkl", "wb") as fh:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, fh)
    for path in (tmp_path, tmp_path / "train.bin"):
        corpus = load_corpus(path)
        assert np.array_equal(corpus.train, ids[:cut]) and np.array_equal(corpus.val, ids[cut:])
        assert corpus.vocab_size == len(chars) and corpus.val_parts == ("val.bin",)
        assert isinstance(corpus.train, np.memmap) and not corpus.train.flags.writeable
        assert corpus.bytes_per_token == pytest.approx(len(text[cut:].encode()) / (len(ids) - cut))  # é is 2 bytes
    assert load_corpus(DataSource(path=str(tmp_path), vocab_size=64)).vocab_size == 64
    (tmp_path / "meta.pkl").unlink()
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 50, "bytes_per_token": 1.25}))
    corpus = load_corpus(tmp_path)
    assert corpus.vocab_size == 50 and corpus.bytes_per_token == 1.25


def test_bin_files_errors(tmp_path: Path) -> None:
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(ValueError, match="no val.bin beside it"):
        load_corpus(tmp_path)
    (tmp_path / "val.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not a whole number of uint16 token ids"):
        load_corpus(tmp_path)
    np.arange(30, dtype=np.uint16).tofile(tmp_path / "val.bin")
    with open(tmp_path / "meta.pkl", "wb") as fh:
        pickle.dump(OrderedDict(vocab_size=100), fh)  # names a class: not loaded
    with pytest.raises(ValueError, match="not a pickle of plain data.*meta.json"):
        load_corpus(tmp_path)
    (tmp_path / "meta.pkl").unlink()
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 50}))
    with pytest.raises(ValueError, match="token id 99 is >= vocab_size=50"):
        load_corpus(tmp_path)
    with pytest.raises(ValueError, match="hold token ids already.*drop data.tokenizer"):
        load_corpus(tmp_path, tokenizer="bpe:512")
    with pytest.raises(ValueError, match="give train.bin or their folder"):
        load_corpus(tmp_path / "val.bin")


# ---- errors and the study file ---------------------------------------------------------------------------
def test_tokenizer_errors(tmp_path: Path) -> None:
    folder = text_folder(tmp_path)
    with pytest.raises(ValueError, match="does not exist; give the path of a Hugging Face tokenizer.json"):
        load_corpus(folder, tokenizer=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="is not a tokenizer.json the tokenizers package reads"):
        load_corpus(folder, tokenizer=str(tmp_path / "bad.json"))
    _shard(tmp_path / "s.parquet", list(range(100)))
    with pytest.raises(ValueError, match="token shards are token ids already.*drop data.tokenizer"):
        load_corpus(tmp_path / "s.parquet", tokenizer="bpe:512")
    _shard(tmp_path / "m.parquet", list(range(100)), {b"qkvnas.bytes_per_token": b"lots"})
    with pytest.raises(ValueError, match="qkvnas.bytes_per_token='lots' must be a positive number"):
        load_corpus(tmp_path / "m.parquet")
    for bad, message in (("bpe:100", "needs a vocabulary of 257"), ("gpt2", "is not a tokenizer"),
                         ("bpe8192", "is not a tokenizer")):
        with pytest.raises(ValueError, match=message):
            DataSource(path=str(folder), tokenizer=bad)


def test_the_data_table_of_a_study_file(tmp_path: Path) -> None:
    from tests.conftest import tiny_study

    study = tiny_study(name="tok").replace('trials = 4', 'trials = 4\n[data]\npath = "corpus"\ntokenizer = "bpe:512"')
    (tmp_path / "s.toml").write_text(study)
    config = load_config(tmp_path / "s.toml")
    assert config.data == DataSource(path="corpus", tokenizer="bpe:512")
    assert config.to_dict()["data"] == {"path": "corpus", "tokenizer": "bpe:512"}
    assert StudyConfig.from_json(config.to_json()) == config
    plain = load_config(tmp_path / "s.toml", ['data="corpus"'])  # the form every stored study has
    assert plain.data == DataSource(path="corpus") and plain.to_dict()["data"] == "corpus"
    with pytest.raises(ValueError, match=r"data\.tokenizr: unknown key; known keys are \['path', 'tokenizer', "):
        load_config(tmp_path / "s.toml", ["data.tokenizr=1"])
    with pytest.raises(ValueError, match="needs a vocabulary of 257"):
        load_config(tmp_path / "s.toml", ['data.tokenizer="bpe:10"'])
