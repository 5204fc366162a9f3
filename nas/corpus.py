"""What a study trains on: where its data is (``DataSource``), the token streams it becomes
(``Corpus``), and how data is split into train and validation parts.

Every loader (nas/data.py, nas/token_files.py, nas/tokenize.py) splits by document (work, file or
shard) wherever there is more than one, so validation text is never trained on, and checks the
ids against the vocabulary in one place (``finish``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VAL_FRACTION = 0.10  # share of the data held out when a split has to be chosen by size
BPE_NAME = re.compile(r"^bpe:(\d+)$")
MIN_BPE_VOCAB = 257  # the 256 bytes and the end-of-document token
MAX_VOCAB = 1 << 24

# A file or folder whose name says "val"/"valid"/"validation" is the validation part.
_VAL_NAME = re.compile(r"(^|[/_.\-])(val|valid|validation)([/_.\-]|\d|$)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """The ``[data]`` table of a study file (``data = "PATH"`` is ``[data] path = "PATH"``).

    ``path``: None (the shipped Shakespeare corpus), a text file or folder, Parquet/Arrow token
    shards, or a folder (or ``train.bin``) of nanoGPT's ``train.bin``/``val.bin`` token files.
    ``tokenizer``: None (text is read as bytes, 256 ids), ``"bpe:<vocab>"`` (a byte-level BPE
    trained on the training split, cached beside the data) or the path of a Hugging Face
    ``tokenizer.json``. ``vocab_size``: the vocabulary of token files (default: read from their
    metadata, else the largest id + 1)."""

    path: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            check_tokenizer_name(self.tokenizer)
        if self.vocab_size is not None and not 1 <= self.vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size={self.vocab_size} must be a positive number of token ids, at most {MAX_VOCAB}")

    @property
    def plain(self) -> bool:
        """Only a path: stored as the plain string ``data = "PATH"`` that studies always had."""
        return self.tokenizer is None and self.vocab_size is None


def check_tokenizer_name(name: str) -> None:
    match = BPE_NAME.match(name)
    if match:
        if not MIN_BPE_VOCAB <= int(match.group(1)) <= MAX_VOCAB:
            raise ValueError(f"tokenizer={name!r}: a byte-level BPE needs a vocabulary of {MIN_BPE_VOCAB} to {MAX_VOCAB} "
                             "ids (the 256 bytes, the end-of-document token and the merges), e.g. \"bpe:8192\"")
        return
    if name.startswith("bpe") or not name.endswith(".json"):
        raise ValueError(f"tokenizer={name!r} is not a tokenizer; use \"bpe:<vocab size>\" (e.g. \"bpe:8192\": trained "
                         "on the training text) or the path of a Hugging Face tokenizer.json")


@dataclass(frozen=True, kw_only=True, eq=False)
class Corpus:
    """Train and validation token streams. Arrays are read-only; ids are in ``[0, vocab_size)``."""

    name: str
    train: np.ndarray  # (N_train,) integer token ids
    val: np.ndarray  # (N_val,)
    vocab_size: int
    bytes_per_token: float | None  # bytes of text per token of val; None when unknown
    val_parts: tuple[str, ...] = ()  # the works/files/shards held out, or a note on a tail split
    tokenizer: str | None = None  # the tokenizer file the text was encoded with
    eos_id: int | None = None  # the id between documents, where documents were joined with one

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
            "vocab_size": self.vocab_size,
            "bytes_per_token": self.bytes_per_token,
            "val_parts": list(self.val_parts),
            "tokenizer": self.tokenizer,
            "eos_id": self.eos_id,
        }


@dataclass(frozen=True, kw_only=True)
class Documents:
    """Text before tokenizing: the training and the validation documents (works, files, or one
    file's head and tail)."""

    name: str
    train: list[bytes]
    val: list[bytes]
    val_parts: tuple[str, ...]


def finish(corpus: Corpus, vocab_size: int | None = None) -> Corpus:
    """Check ids against the vocabulary (``vocab_size`` if given, else the loader's, else the
    largest id + 1) and freeze the arrays."""
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"vocab_size={vocab_size!r} must be a positive integer or None")
    for part, ids in (("train", corpus.train), ("val", corpus.val)):
        if ids.size and ids.min() < 0:
            raise ValueError(f"{corpus.name}: {part} holds a negative token id ({int(ids.min())}); ids must be >= 0")
    top = max(int(corpus.train.max()), int(corpus.val.max()))
    limit = vocab_size if vocab_size is not None else (corpus.vocab_size or None)  # 0: not known yet
    check_top(corpus.name, top, limit)
    vocab = limit or top + 1
    for ids in (corpus.train, corpus.val):
        ids.flags.writeable = False  # shared between trials (and possibly memory-mapped)
    return Corpus(name=corpus.name, train=corpus.train, val=corpus.val, vocab_size=vocab,
                  bytes_per_token=corpus.bytes_per_token, val_parts=corpus.val_parts, tokenizer=corpus.tokenizer,
                  eos_id=corpus.eos_id)


def check_top(name: str, top: int, vocab_size: int | None, what: str = "vocab_size") -> None:
    if vocab_size is not None and top >= vocab_size:
        raise ValueError(f"{name}: token id {top} is >= {what}={vocab_size}; raise vocab_size to at least {top + 1} "
                         "or fix the data")


# ---- splitting -----------------------------------------------------------------------------
def data_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in a fixed (sorted) order. Hidden folders (the
    tokenizer cache, .qkvnas-cache) are not data."""
    files = sorted(
        f for f in folder.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no files; put text files or Parquet/Arrow shards in it")
    return files


def split_parts(root: Path, files: list[Path], sizes: list[int]) -> tuple[list[Path], list[Path]]:
    """Files whose path names them validation (``val``, ``valid``, ``validation``) are held out;
    otherwise the last files in sorted order, as few as hold at least 10% of the data, keeping
    at least one file for training."""
    named = [f for f in files if _VAL_NAME.search(str(f.relative_to(root)))]
    if named and len(named) < len(files):
        return [f for f in files if f not in named], named
    total, held, n_val = sum(sizes), 0, 0
    while n_val < len(files) - 1 and held < VAL_FRACTION * total:
        n_val += 1
        held += sizes[-n_val]
    return files[:-n_val], files[-n_val:]


def tail_cut(size: int, where: Path) -> int:
    """Where one stream of ``size`` tokens (or bytes) is cut: its last 10% is validation."""
    if size < 20:
        raise ValueError(f"{where}: only {size} tokens; give more data (at least a few sequences' worth)")
    return int(round(size * (1 - VAL_FRACTION)))


def tail_split(ids: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray]:
    cut = tail_cut(ids.size, where)
    return ids[:cut], ids[cut:]


def joined(parts: list[np.ndarray], sep: int | None, dtype: type) -> np.ndarray:
    """``parts`` end to end, with ``sep`` between each two when given (an end-of-document id)."""
    if sep is None:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    out: np.ndarray = np.empty(sum(p.size for p in parts) + len(parts) - 1, dtype=dtype)
    at = 0
    for i, part in enumerate(parts):
        if i:
            out[at] = sep
            at += 1
        out[at:at + part.size] = part
        at += part.size
    return out


def id_dtype(vocab_size: int) -> type:
    """The smallest unsigned type of every id below ``vocab_size`` (never uint8: torch would
    read a uint8 index tensor as a boolean mask)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32
