"""Text as subword tokens: a byte-level BPE trained on the training split (``"bpe:<vocab>"``), or
the user's Hugging Face ``tokenizer.json``.

The BPE is trained on the training documents only, never on validation text, and cached beside
the data (``<folder>/.qkvnas-cache/bpe<V>-<key>.json``; the key hashes the training text and the
vocabulary size), so every trial and every Ray worker encodes with the same tokenizer and only
the first load trains it. Where the data's folder cannot be written (the shipped corpus, a
read-only mount) the cache is ``$QKVNAS_CACHE_DIR``, else ``~/.cache/qkvnas``.

Documents are encoded one by one and joined with an end-of-document id between them: the
tokenizer's own (``<|endoftext|>``, ``</s>``, ...) or a new id after its vocabulary.
``bytes_per_token`` is measured on the validation text: its UTF-8 bytes over its tokens.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from nas.common import atomic_write_text
from nas.corpus import BPE_NAME, Corpus, Documents, id_dtype, joined

EOS = "<|endoftext|>"  # the end-of-document token of the BPE trained here (id 0)
# Special tokens that end a document in common tokenizers, in the order they are looked for.
EOS_NAMES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")
RECIPE = "qkvnas-bpe-1"  # in the cache key: a change to how the BPE is trained must train anew
CACHE_FOLDER = ".qkvnas-cache"  # hidden: a folder of text files does not read it as data
MIN_FREQUENCY = 2  # a pair seen once is no pattern; the Hugging Face ByteLevelBPE default
INSTALL = "pip install tokenizers (or the extra: pip install 'qkvnas[tokenizers]')"


def tokenized_corpus(docs: Documents, tokenizer: str, data_folder: Path | None) -> Corpus:
    """``docs`` encoded with ``tokenizer`` ("bpe:<V>" or a tokenizer.json path)."""
    train_texts = [_text(d) for d in docs.train]
    val_texts = [_text(d) for d in docs.val]
    tok, source = load_tokenizer(tokenizer, train_texts, data_folder)
    eos = eos_id(tok)
    vocab = max(tok.get_vocab_size(with_added_tokens=True), eos + 1)
    dtype = id_dtype(vocab)
    train = joined(encode(tok, train_texts, dtype), eos, dtype)
    val = joined(encode(tok, val_texts, dtype), eos, dtype)
    val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    return Corpus(name=docs.name, train=train, val=val, vocab_size=vocab,
                  bytes_per_token=val_bytes / val.size if val.size else None, val_parts=docs.val_parts,
                  tokenizer=str(source), eos_id=eos)


def load_tokenizer(name: str, train_texts: list[str], data_folder: Path | None) -> tuple[Any, Path]:
    """The tokenizer ``name`` names and the file it is in (trained and cached for "bpe:<V>")."""
    match = BPE_NAME.match(name)
    if match:
        return cached_bpe(train_texts, int(match.group(1)), data_folder)
    return read_tokenizer(Path(name).expanduser()), Path(name)


def read_tokenizer(path: Path) -> Any:
    Tokenizer = _tokenizers().Tokenizer
    if not path.is_file():
        raise ValueError(f"data.tokenizer {str(path)!r} does not exist; give the path of a Hugging Face tokenizer.json "
                         "or \"bpe:<vocab size>\" to train one on the training text")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ValueError(f"data.tokenizer {str(path)!r} is not a tokenizer.json the tokenizers package reads "
                         f"({str(err).splitlines()[0][:200]}); save it with tokenizer.save(path)") from None


def cached_bpe(train_texts: list[str], vocab_size: int, data_folder: Path | None) -> tuple[Any, Path]:
    """The BPE of these training texts, from the cache if it was trained before."""
    name = f"bpe{vocab_size}-{cache_key(train_texts, vocab_size)[:16]}.json"
    for folder in cache_folders(data_folder):
        if (folder / name).is_file():
            return read_tokenizer(folder / name), folder / name
    tok = train_bpe(train_texts, vocab_size)
    text = tok.to_str()
    for folder in cache_folders(data_folder):
        try:
            return tok, atomic_write_text(folder / name, text)
        except OSError:  # a read-only data folder: the next folder
            continue
    raise ValueError(f"no folder to cache the tokenizer in ({', '.join(map(str, cache_folders(data_folder)))} "
                     "cannot be written); set QKVNAS_CACHE_DIR to a writable folder")


def train_bpe(train_texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2's pre-tokenizer) of ``vocab_size`` ids with ``EOS`` as id 0."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, special_tokens=[EOS],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_texts, trainer=trainer, length=len(train_texts))
    return tok


def cache_key(train_texts: list[str], vocab_size: int) -> str:
    digest = hashlib.sha256(f"{RECIPE}\0{vocab_size}\0{len(train_texts)}".encode())
    for text in train_texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_folders(data_folder: Path | None) -> list[Path]:
    """Beside the data first, then the user's cache."""
    user = os.environ.get("QKVNAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qkvnas")
    folders = [data_folder / CACHE_FOLDER] if data_folder is not None else []
    return folders + [Path(user) / "tokenizers"]


def eos_id(tok: Any) -> int:
    """The tokenizer's end-of-document token, else a new id after its vocabulary."""
    for name in EOS_NAMES:
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return int(tok.get_vocab_size(with_added_tokens=True))


def encode(tok: Any, texts: list[str], dtype: type) -> list[np.ndarray]:
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets: a third faster here.
    batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [np.asarray(e.ids, dtype=dtype) for e in batch(texts, add_special_tokens=False)]


def decoded_bytes(tok: Any, ids: np.ndarray) -> int:
    """The UTF-8 bytes of the text ``ids`` stand for (for token files encoded with ``tok``)."""
    return len(tok.decode(ids.tolist(), skip_special_tokens=True).encode("utf-8"))


def _text(data: bytes) -> str:
    # Tokenizers take str: bytes that are not UTF-8 become U+FFFD, and bytes_per_token counts the
    # text as encoded, so bits per byte stay bits per byte of what the model saw.
    return data.decode("utf-8", errors="replace")


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ValueError(f"data.tokenizer needs the Hugging Face tokenizers package; {INSTALL}") from None
    return tokenizers
