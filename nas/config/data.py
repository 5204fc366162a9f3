"""The ``data`` field that studies, ladders and tables share: a path (``data = "corpus/"``) or a
``[data]`` table of path, tokenizer and vocab_size (``nas.corpus.DataSource``).

A path alone is stored as the plain string it always was, so configs stored before the table
(and the digests taken of them) are unchanged."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from nas.corpus import DataSource


def as_source(value: Any) -> Any:
    if isinstance(value, str):
        return {"path": value}
    if value is not None and not isinstance(value, (dict, DataSource)):
        raise ValueError(f"{value!r} is no data; give a path (data = \"corpus/\") or a [data] table of path, "
                         "tokenizer and vocab_size")
    return value


def as_stored(data: DataSource | None) -> str | dict[str, Any] | None:
    if data is None or data.plain:
        return None if data is None else data.path
    return {k: v for k, v in dataclasses.asdict(data).items() if v is not None}


# None → the shipped Shakespeare corpus.
DataField = Annotated[DataSource | None, BeforeValidator(as_source), PlainSerializer(as_stored)]


def data_text(data: DataSource | None) -> str:
    """'corpus/ (tokenizer bpe:4096)' for a report; the shipped corpus when None."""
    if data is None:
        return "shipped Shakespeare corpus (byte-level)"
    extra = []
    if data.tokenizer:
        extra.append(f"tokenizer {data.tokenizer}")
    if data.vocab_size:
        extra.append(f"vocab {data.vocab_size}")
    return f"{data.path or 'shipped Shakespeare corpus'}" + (f" ({', '.join(extra)})" if extra else "")
