"""Attention design spaces: the spec of one design, and the spaces that sample specs."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from search_spaces import plugins
from search_spaces.base import BaseDims, FixedChoices, SearchSpace, Trial, enumerate_designs
from search_spaces.check import check_space
from search_spaces.full import FullSpace
from search_spaces.paper import PaperSpace
from search_spaces.per_layer import PerLayerSpace
from search_spaces.spec import ArchSpec, LayerSpec, uniform
from search_spaces.variants import variant

BUILTIN_SPACES: Mapping[str, type] = MappingProxyType({"paper": PaperSpace, "per_layer": PerLayerSpace,
                                                       "full": FullSpace})
# A space added here at run time exists in this process only (plugins.runtime_only): a user's
# space is named by import path or entry point instead (search_spaces/plugins.py).
SPACES: dict[str, type] = dict(BUILTIN_SPACES)


def get_space(name: str, **options: Any) -> SearchSpace:
    """A space by name (built-in, ``"package.module:Class"`` or an installed entry point of
    ``qkvnas.spaces``); ``options`` are its fields, with ``base`` a dict of ``BaseDims`` fields."""
    cls = BUILTIN_SPACES.get(name)
    if cls is None or SPACES.get(name) is not cls:  # a user's space (or one replaced at run time)
        return _user_space(name, options)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"space {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    opts = dict(options)
    base = opts.pop("base", {}) or {}
    if not isinstance(base, dict):
        raise ValueError(f"space {name!r} option base={base!r} must be a table of model dimensions, e.g. "
                         "{context = 128, d_model = 64}")
    base_known = {f.name for f in dataclasses.fields(BaseDims)}
    if set(base) - base_known:
        raise ValueError(f"space {name!r}: unknown base option(s) {sorted(set(base) - base_known)}; known: {sorted(base_known)}")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    space = cls(base=BaseDims(**base), **opts)
    check_space(space)  # every option against what the space can build, before any trial runs
    return space


def _user_space(name: str, options: dict[str, Any]) -> SearchSpace:
    factory = SPACES[name] if name in SPACES else plugins.plugin(name, plugins.SPACE_GROUP, "space")
    if factory is None:
        installed = plugins.installed_names(plugins.SPACE_GROUP)
        raise ValueError(f"search space {name!r} is not known; use one of {sorted(BUILTIN_SPACES)}"
                         f"{', an installed one ' + str(installed) if installed else ''} or an import path "
                         "'package.module:SpaceClass'")
    return plugins.make_plugin_space(name, factory, options)


__all__ = [
    "BUILTIN_SPACES", "ArchSpec", "BaseDims", "FixedChoices", "FullSpace", "LayerSpec", "PaperSpace", "PerLayerSpace", "SPACES",
    "SearchSpace", "Trial", "enumerate_designs", "get_space", "uniform", "variant",
]
