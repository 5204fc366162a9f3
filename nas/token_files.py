"""Data that is token ids already: Parquet/Arrow shards, and nanoGPT's ``train.bin``/``val.bin``.

Shards: one integer column of ids (a stream), or a list<int> column of documents, which are
joined with an end-of-document id between them (and between shards): the shard metadata's
``qkvnas.eos_id``, else the ``data.tokenizer``'s, else a new id after the vocabulary. A shard's
Parquet/Arrow key-value metadata ``qkvnas.bytes_per_token`` (bytes of text per token id, as
its tokenizer wrote them) makes ``bits_per_byte`` known; so does a ``data.tokenizer`` the ids
were encoded with, by decoding the validation ids.

``.bin``: nanoGPT's format, a flat array of uint16 ids memory-mapped (``train.bin`` and
``val.bin`` side by side). Its vocabulary is ``data.vocab_size``, else ``vocab_size`` in a
``meta.pkl`` (as nanoGPT's prepare.py writes it) or ``meta.json`` beside it, else the largest id + 1;
a meta with ``itos`` (a character-level vocabulary) gives the bytes per token too.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.corpus import VAL_FRACTION, Corpus, DataSource, check_top, id_dtype, joined, split_parts, tail_split

TOKEN_COLUMNS = ("tokens", "input_ids")  # preferred column names in token shards
BPT_KEY = "qkvnas.bytes_per_token"
EOS_KEY = "qkvnas.eos_id"
BIN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass(frozen=True, kw_only=True, eq=False)
class Shard:
    path: Path
    ids: np.ndarray  # every token id of the shard, in order
    starts: np.ndarray | None  # where each (non-empty) document begins: a list column; None: one stream
    bytes_per_token: float | None  # qkvnas.bytes_per_token of its metadata
    eos_id: int | None  # qkvnas.eos_id of its metadata

    @property
    def size(self) -> int:
        return int(self.ids.size)

    @property
    def documents(self) -> int:
        return 1 if self.starts is None else len(self.starts)

    def stream(self, eos: int | None, dtype: type) -> np.ndarray:
        """The ids with ``eos`` between its documents (inserted in one vectorised pass)."""
        if eos is None or self.starts is None or len(self.starts) < 2:
            return self.ids
        return np.insert(self.ids.astype(dtype, copy=False), self.starts[1:], eos)


# ---- shards -----------------------------------------------------------------------------------
def load_shards(root: Path, files: list[Path], source: DataSource) -> Corpus:
    """Integer token ids from Parquet/Arrow shards. Several shards: split by shard; one: tail."""
    _no_bpe(root, "token shards are", source)
    shards = [s for s in (read_shard(f) for f in files) if s.size]
    if not shards:
        raise ValueError(f"{root}: the token shards hold no tokens; give shards with at least one row")
    top = max(int(s.ids.max()) for s in shards)
    check_top(root.name, top, source.vocab_size)
    tok = _tokenizer(source)
    eos = _eos(root, shards, top, source, tok)
    vocab = max(source.vocab_size or top + 1, 0 if eos is None else eos + 1,
                0 if tok is None else tok.get_vocab_size(with_added_tokens=True))
    dtype = id_dtype(vocab)
    if len(shards) == 1:
        train, val = tail_split(shards[0].stream(eos, dtype), root)
        val_parts: tuple[str, ...] = (f"last {VAL_FRACTION:.0%} of {shards[0].path.name}",)
        val_shards = shards
    else:
        by_file = {s.path: s for s in shards}
        train_files, val_files = split_parts(root, list(by_file), [s.size for s in shards])
        val_shards = [by_file[f] for f in val_files]
        train = joined([by_file[f].stream(eos, dtype) for f in train_files], eos, dtype)
        val = joined([s.stream(eos, dtype) for s in val_shards], eos, dtype)
        val_parts = tuple(str(f.relative_to(root)) for f in val_files)
    return Corpus(name=root.name, train=train, val=val, vocab_size=vocab, val_parts=val_parts,
                  bytes_per_token=_shard_bytes_per_token(val_shards, eos, val, tok), tokenizer=source.tokenizer,
                  eos_id=eos)


def _eos(root: Path, shards: list[Shard], top: int, source: DataSource, tok: Any) -> int | None:
    """The id between documents: None when no shard holds documents (a list column)."""
    if all(s.starts is None for s in shards):
        return None
    stated = sorted({s.eos_id for s in shards if s.eos_id is not None})
    if len(stated) > 1:
        raise ValueError(f"{root}: the shards state different {EOS_KEY} values {stated}; write one end-of-document "
                         "id in every shard")
    if stated:
        return stated[0]
    if tok is not None:
        from nas.tokenize import eos_id

        return eos_id(tok)
    return source.vocab_size if source.vocab_size is not None else top + 1  # a new id after every id in the data


def _shard_bytes_per_token(val_shards: list[Shard], eos: int | None, val: np.ndarray, tok: Any) -> float | None:
    """Bytes of text over the tokens of the validation stream, its end-of-document ids counted
    as tokens of no text: from the shards' metadata, else by decoding with the tokenizer."""
    stated = [s.bytes_per_token for s in val_shards if s.bytes_per_token is not None]
    if len(stated) == len(val_shards):
        documents = sum(s.documents for s in val_shards)
        length = sum(s.size for s in val_shards) + (documents - 1 if eos is not None else 0)  # the joined stream
        return sum(b * s.size for b, s in zip(stated, val_shards)) / length
    return None if tok is None else _decoded(tok, val, eos)


def _decoded(tok: Any, val: np.ndarray, eos: int | None) -> float:
    from nas.tokenize import decoded_bytes

    text = val if eos is None else val[val != eos]
    return decoded_bytes(tok, text) / val.size


def read_shard(path: Path) -> Shard:
    """One shard's token column (zero-copy from the memory map where the layout allows)."""
    import pyarrow as pa

    table = _read_table(path)
    name = _token_column(path, table.schema)
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"{path}: column {name!r} has {column.null_count} null token ids; remove or fill them")
    documents = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    metadata = table.schema.metadata or {}
    ids, starts = _ids(path, name, column, documents)
    return Shard(path=path, ids=ids, starts=starts, bytes_per_token=_bytes_per_token(path, metadata),
                 eos_id=_eos_id(path, metadata))


def _ids(path: Path, name: str, column: Any, documents: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A flat column's ids; a list column's ids end to end and where each non-empty document starts."""
    if column.num_chunks == 0:
        return np.zeros(0, dtype=np.int64), None
    array = column.combine_chunks()
    if not documents:
        return array.to_numpy(zero_copy_only=False), None
    flat = array.flatten()
    if flat.null_count:
        raise ValueError(f"{path}: column {name!r} has {flat.null_count} null token ids; remove or fill them")
    offsets = np.asarray(array.offsets)
    offsets = offsets - offsets[0]
    return flat.to_numpy(zero_copy_only=False), offsets[:-1][np.diff(offsets) > 0]


def _bytes_per_token(path: Path, metadata: dict[bytes, bytes]) -> float | None:
    raw = metadata.get(BPT_KEY.encode())
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{path}: metadata {BPT_KEY}={raw.decode(errors='replace')!r} must be a positive number of "
                         "bytes of text per token, e.g. b'4.2'")
    return value


def _eos_id(path: Path, metadata: dict[bytes, bytes]) -> int | None:
    raw = metadata.get(EOS_KEY.encode())
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise ValueError(f"{path}: metadata {EOS_KEY}={raw.decode(errors='replace')!r} must be a non-negative integer id")
    return int(raw)


def _no_bpe(where: Path, what: str, source: DataSource) -> None:
    if source.tokenizer is not None and not source.tokenizer.endswith(".json"):
        raise ValueError(f"{where}: {what} token ids already, and a BPE ({source.tokenizer!r}) is trained on text: "
                         "drop data.tokenizer, or give the tokenizer.json the ids were made with")


def _read_table(path: Path) -> Any:  # a pyarrow.Table
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
        raise ValueError(f"{path}: not a readable {path.suffix} file of token ids ({str(err).split('. ')[0]}); "
                         "write it again (pyarrow), or give text files") from None


def _token_column(path: Path, schema: Any) -> str:  # schema: pyarrow.Schema
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


def _tokenizer(source: DataSource) -> Any:
    if source.tokenizer is None:
        return None
    from nas.tokenize import read_tokenizer

    return read_tokenizer(Path(source.tokenizer).expanduser())


# ---- nanoGPT's .bin ---------------------------------------------------------------------------
def bin_files(path: Path) -> tuple[Path, Path] | None:
    """``(train.bin, val.bin)`` when ``path`` is their folder or train.bin; None otherwise (any
    other file is read, and sniffed, as text)."""
    train = path / "train.bin" if path.is_dir() else path
    if train.name == "val.bin":
        raise ValueError(f"{path}: give train.bin or their folder; val.bin is read from beside it")
    if train.name != "train.bin" or not train.is_file():
        return None
    val = train.with_name("val.bin")
    if not val.is_file():
        raise ValueError(f"{train}: no val.bin beside it; write the validation ids to {val} as nanoGPT's prepare.py "
                         "does, or give the ids as Parquet/Arrow shards")
    return train, val


def load_bin(train_path: Path, val_path: Path, source: DataSource) -> Corpus:
    _no_bpe(train_path, ".bin files hold", source)
    meta = _bin_meta(train_path.parent)
    dtype = BIN_DTYPES.get(str(meta.get("dtype", "uint16")))
    if dtype is None:
        raise ValueError(f"{train_path.parent}: meta dtype={meta['dtype']!r}; use one of {sorted(BIN_DTYPES)}")
    train, val = (_memmap(p, dtype) for p in (train_path, val_path))
    tok = _tokenizer(source)
    vocab = source.vocab_size or _meta_vocab(train_path.parent, meta) or (
        tok.get_vocab_size(with_added_tokens=True) if tok is not None else 0)  # 0: the largest id + 1
    if meta.get("bytes_per_token") is not None:
        bpt: float | None = _positive(train_path.parent, "bytes_per_token", meta["bytes_per_token"])
    elif isinstance(meta.get("itos"), dict):
        bpt = _itos_bytes_per_token(train_path.parent, meta["itos"], val)
    else:
        bpt = None if tok is None else _decoded(tok, val, None)
    return Corpus(name=train_path.parent.name, train=train, val=val, vocab_size=vocab, bytes_per_token=bpt,
                  val_parts=(val_path.name,), tokenizer=source.tokenizer)


def _positive(folder: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{folder}: meta {key}={value!r} must be a positive number")
    return float(value)


def _memmap(path: Path, dtype: type) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {np.dtype(dtype).name} token ids; write it "
                         f"again (np.array(ids, dtype=np.{np.dtype(dtype).name}).tofile(path))")
    return np.memmap(path, dtype=dtype, mode="r")


class _PlainData(pickle.Unpickler):
    """nanoGPT's meta.pkl is a dict of numbers, strings and dicts: nothing that needs a class,
    so none is loaded (a pickle that names one could run code)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def _bin_meta(folder: Path) -> dict[str, Any]:
    if (folder / "meta.json").is_file():
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / 'meta.json'} is not JSON ({err}); write it again") from None
    elif (folder / "meta.pkl").is_file():
        try:
            meta = _PlainData(io.BytesIO((folder / "meta.pkl").read_bytes())).load()
        except Exception as err:
            raise ValueError(f"{folder / 'meta.pkl'} is not a pickle of plain data ({err}); write a meta.json "
                             "{\"vocab_size\": N} instead") from None
    else:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"{folder}: the meta file holds a {type(meta).__name__}, not a table with vocab_size")
    return meta


def _meta_vocab(folder: Path, meta: dict[str, Any]) -> int | None:
    vocab = meta.get("vocab_size")
    if vocab is None:
        return None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"{folder}: meta vocab_size={vocab!r} must be a positive integer")
    return vocab


def _itos_bytes_per_token(folder: Path, itos: dict[Any, Any], val: np.ndarray) -> float:
    """A character-level vocabulary: the mean UTF-8 length of the validation ids' strings."""
    lengths = np.zeros(max(int(k) for k in itos) + 1, dtype=np.int64)
    for key, text in itos.items():
        lengths[int(key)] = len(str(text).encode("utf-8"))
    if int(val.max()) >= lengths.size:
        raise ValueError(f"{folder}: val.bin holds id {int(val.max())}, which meta itos does not name")
    return float(lengths[val].sum() / val.size)
