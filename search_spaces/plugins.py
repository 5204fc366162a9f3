"""A user's own search space, named in a study file the way every process can find it again.

``space.name`` is a built-in name (``paper``, ``per_layer``, ``full``), an import path
``"my_pkg.spaces:MySpace"``, or the name of an entry point an installed package declares in the
group ``qkvnas.spaces`` (``[project.entry-points."qkvnas.spaces"] mine = "my_pkg.spaces:MySpace"``).
Every process resolves the name again from the stored config string (a Ray worker imports the
module itself), so nothing depends on what one process put in ``search_spaces.SPACES``: a
space added there at run time exists in that process only, and ``runtime_only`` says so before
a Ray run starts.

The object named is a class (or any callable) called with the study's ``space.options``
(``base`` becomes a ``BaseDims`` when it takes one); what it returns must have
``sample(trial) -> ArchSpec``, which is called once at load with the first choice of every
question, so that a broken space fails before any trial runs. ``grid()`` (a finite space's every
choice) is needed only by ``qkvnas tabulate``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from search_spaces.base import BaseDims, SearchSpace
from search_spaces.spec import ArchSpec

SPACE_GROUP = "qkvnas.spaces"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
WORKERS_NOTE = "every Ray worker imports it too: install its package or put its folder on PYTHONPATH"


# ---- import paths and entry points (shared with objectives/plugins.py) ---------------------
def is_import_path(name: str) -> bool:
    return ":" in name


def import_object(path: str, kind: str) -> Any:
    """The object ``"package.module:attr"`` names; a ValueError of one line says what to fix."""
    module_name, _, attr = path.partition(":")
    if not _MODULE.match(module_name) or not _ATTR.match(attr):
        raise ValueError(f"{kind} {path!r} is not an import path; write it as 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{kind} {path!r}: module {module_name!r} does not import ({err}); {WORKERS_NOTE}") from None
    except Exception as err:  # the user's module raised while being imported
        raise ValueError(f"{kind} {path!r}: importing {module_name!r} raised {type(err).__name__}: {err}; "
                         "fix the module") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{kind} {path!r}: module {module_name!r} has no {attr!r}; check the name after ':'")
        obj = getattr(obj, part)
    return obj


@functools.lru_cache(maxsize=8)
def entry_points(group: str) -> Mapping[str, importlib.metadata.EntryPoint]:
    """The entry points installed packages declare in ``group``, by name (read once per process)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def load_entry_point(group: str, name: str, kind: str) -> Any:
    ep = entry_points(group)[name]
    try:
        return ep.load()
    except Exception as err:
        raise ValueError(f"{kind} {name!r} (entry point {ep.value!r} in group {group!r}) does not load "
                         f"({type(err).__name__}: {err}); reinstall the package that declares it") from None


def plugin(name: str, group: str, kind: str) -> Any | None:
    """What ``name`` names as an import path or an entry point of ``group``; None if neither."""
    if is_import_path(name):
        return import_object(name, kind)
    if name in entry_points(group):
        return load_entry_point(group, name, kind)
    return None


def import_roots(names: Iterable[str]) -> list[str]:
    """The folders the import paths among ``names`` are imported from, outside site-packages (an
    installed package is found by every worker anyway): a local Ray's workers need them too."""
    roots = []
    for name in names:
        if not is_import_path(name):
            continue
        spec = importlib.util.find_spec(name.partition(":")[0].split(".")[0])
        if spec is None:
            continue
        origin = next(iter(spec.submodule_search_locations or []), None) or spec.origin
        if origin and not any(part in ("site-packages", "dist-packages") for part in Path(origin).parts):
            roots.append(str(Path(origin).parent))
    return list(dict.fromkeys(roots))


def installed_names(group: str) -> list[str]:
    return sorted(entry_points(group))


def runtime_only(name: str, registry: Mapping[str, Any], builtin: Mapping[str, Any], *, kind: str, where: str,
                 group: str) -> None:
    """Refuse a name that only this process's ``registry`` knows (added at run time): a Ray worker
    imports qkvnas afresh and would fail every trial with it."""
    if name in registry and registry[name] is not builtin.get(name):
        raise ValueError(f"{kind} {name!r} was added to {where} in this process, which Ray workers do not see; "
                         f"name it by import path ('my_pkg.module:Name') or declare an entry point in group {group!r}")


# ---- a user's space ---------------------------------------------------------------------------
class FirstChoices:
    """A trial that answers every question with its first choice (or its lower bound): one
    design a space must be able to build."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return list(choices)[0]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        return low


def make_plugin_space(name: str, factory: Any, options: dict[str, Any]) -> SearchSpace:
    """``factory(**options)``, checked: the options it takes, and one design it samples."""
    if not callable(factory):
        raise ValueError(f"space {name!r} names an object of type {type(factory).__name__}, not a space class; point "
                         "it at a class with sample(trial) -> ArchSpec (see search_spaces.base.SearchSpace)")
    opts = _checked_options(name, factory, options)
    try:
        space = factory(**opts)
    except (TypeError, ValueError) as err:
        raise ValueError(f"space {name!r}: {_label(factory)}(**space.options) raised {type(err).__name__}: {err}") from None
    check_plugin_space(name, space)
    return space


def check_plugin_space(name: str, space: Any) -> None:
    """The protocol of ``search_spaces.base.SearchSpace`` a study uses: sample(trial) -> ArchSpec."""
    if not callable(getattr(space, "sample", None)):
        raise ValueError(f"space {name!r}: {type(space).__name__} has no sample(trial) method; a space needs "
                         "sample(trial) -> ArchSpec (see search_spaces.base.SearchSpace)")
    try:
        spec = space.sample(FirstChoices())
    except Exception as err:
        raise ValueError(f"space {name!r}: sample(trial) raised {type(err).__name__}: {err} for the first choice "
                         "of every question; fix the space or its options") from None
    if not isinstance(spec, ArchSpec):
        raise ValueError(f"space {name!r}: sample(trial) returned a {type(spec).__name__}, not a "
                         "search_spaces.ArchSpec; return the design as an ArchSpec")


def _checked_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """Unknown options are errors naming the known ones; ``base`` becomes a BaseDims."""
    known = _parameters(factory)
    if known is not None:
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"space {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}  # as the built-in spaces take them
    base = options.get("base")
    if isinstance(base, dict):
        base_known = {f.name for f in dataclasses.fields(BaseDims)}
        if set(base) - base_known:
            raise ValueError(f"space {name!r}: unknown base option(s) {sorted(set(base) - base_known)}; "
                             f"known: {sorted(base_known)}")
        try:
            opts["base"] = BaseDims(**base)
        except (TypeError, ValueError) as err:
            raise ValueError(f"space {name!r} base: {err}") from None
    return opts


def _parameters(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``factory`` takes; None when it takes any (``**kwargs``)."""
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return {f.name for f in dataclasses.fields(factory) if f.init}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _label(factory: Any) -> str:
    return getattr(factory, "__qualname__", type(factory).__name__)
