"""Reading config files: a TOML path or a shipped preset, with ``--set key.path=value`` overrides.

Presets are the TOML files in ``nas/presets/``; each says what it is with its ``kind`` field
(``"study"``, ``"ladder"``, ``"probe_suite"`` or ``"table"``), and nothing else (not its name) decides which
command reads it.
"""
from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
Kind = Literal["study", "ladder", "probe_suite", "table"]
KIND_NOUNS: dict[str, str] = {"study": "study", "ladder": "ladder", "probe_suite": "probe suite", "table": "table"}


def presets(kind: Kind = "study") -> list[str]:
    """The names of the shipped presets of one kind: files in nas/presets/ that say ``kind = ...``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml") if preset_kind(p) == kind)


def preset_kind(path: Path) -> str | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, tomllib.TOMLDecodeError):
        return None


def config_path(path_or_preset: str | Path, kind: Kind) -> Path:
    """A config file as given, or the preset of that name and kind."""
    path = Path(path_or_preset)
    if path.is_file():
        return path
    if str(path_or_preset) in presets(kind):
        return PRESET_DIR / f"{path_or_preset}.toml"
    noun = KIND_NOUNS[kind]
    raise ValueError(f"{str(path_or_preset)!r} is neither a {noun} file nor a {noun} preset; give a .toml path "
                     f"or one of the {noun} presets {presets(kind)}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not UTF-8); give a TOML config file") from None
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}; give a readable TOML file") from None


def load_raw(path_or_preset: str | Path, kind: Kind, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], Path]:
    """The parsed table of a config file or preset with its overrides applied, and its path."""
    path = config_path(path_or_preset, kind)
    raw = read_toml(path)
    for item in overrides:
        apply_override(raw, item)
    return raw, path


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``"budget.tokens=50000"`` sets raw["budget"]["tokens"]; the value is read as TOML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r} must look like key.path=value, e.g. --set budget.tokens=50000")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {item!r}: {'.'.join(parents[:i + 1])} is a value, not a section")
        node = child
    node[leaf] = parse_value(text.strip())


def parse_value(text: str) -> Any:
    """A TOML value (``40``, ``1e-3``, ``true``, ``[\"a\", \"b\"]``, ``\"x\"``); else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
