"""The one base of every config file's sections, and its one-line error messages.

A study, a ladder and a probe suite are each a tree of ``Section`` models (and the plain
dataclasses of the modules that use them, such as ``TrainBudget``). ``validate(Model, raw,
source)`` turns a parsed TOML table into that tree; every mistake in it is one ``ValueError``
line that names the key path and the fix, e.g. ``study.toml: budget.tokenz: unknown key; known
keys are [...]``, several problems separated by `` | ``.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound="Section")


class Section(BaseModel):
    """A table of a config file. Strict JSON-mode validation: no bool-as-int, no float-as-int,
    lists become tuples; an unknown key is an error, and a validated config is frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # What the file is called in messages ("add it to the study file"); set on root sections.
    file_noun: ClassVar[str] = "config"


def validate(model: type[M], raw: dict[str, Any], source: str) -> M:
    """``raw`` (a parsed TOML table or stored JSON) as ``model``; a ValueError of one line,
    starting with ``source``, if anything in it is wrong."""
    try:
        return model.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as err:
        raise ValueError(f"{source}: {format_errors(err, model)}") from None


def format_errors(err: ValidationError, root: type[BaseModel]) -> str:
    """All problems on one line: ``key.path: what is wrong; fix``, separated by ' | '."""
    return " | ".join(_one(e, root) for e in err.errors())


def _one(error: Any, root: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind, got = error["type"], error.get("input")
    message = error["msg"].removeprefix("Value error, ")
    if not path:  # a whole-config check: its message names the keys itself
        return message
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = known_keys(root, loc[:-1])
        return f"{path}: unknown key; known keys are {known}" if known else f"{path}: unknown key; remove it"
    if kind == "missing":
        return f"{path}: required; add it to the {getattr(root, 'file_noun', 'config')} file"
    if kind == "value_error":
        return f"{path}: {message}"
    if kind == "literal_error":
        return f"{path}: {got!r} is not allowed; {message.lower()}"
    return f"{path}: {message.lower()} (got {got!r})"


def known_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section at ``loc`` below ``root`` (a model or a dataclass), for 'unknown
    key' errors; [] when ``loc`` is no section. Items of lists of sections are looked through."""
    section: Any = root
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections (a ladder's sizes)
            continue
        annotation = _fields_of(section).get(part)
        if annotation is None:
            return []
        section = next((arg for arg in typing.get_args(annotation) or (annotation,) if _fields_of(arg)), None)
    return sorted(_fields_of(section))


def _fields_of(obj: Any) -> dict[str, Any]:
    """Key → annotation of a section (by the key a file uses: an alias when it has one)."""
    if isinstance(obj, type) and issubclass(obj, BaseModel):
        return {f.alias or name: f.annotation for name, f in obj.model_fields.items()}
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        hints = typing.get_type_hints(obj)
        return {f.name: hints.get(f.name) for f in dataclasses.fields(obj)}
    return {}


def run_folder(directory: str | None, name: str) -> Path:
    """Where a study, ladder or table keeps its files: ``directory``, else ``studies/<name>``."""
    return Path(directory) if directory else Path("studies") / name


def storage_or_sqlite(storage: str | None, folder: Path, db_file: str) -> str:
    """The storage URL as written, else the default SQLite file in the run's folder."""
    return storage or f"sqlite:///{(folder / db_file).resolve()}"
