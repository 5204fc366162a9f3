"""Attention design spaces: the spec of one design, and the spaces that sample specs."""
from __future__ import annotations

import dataclasses
from typing import Any

from search_spaces.base import BaseDims, FixedChoices, SearchSpace, Trial, enumerate_designs
from search_spaces.full import FullSpace
from search_spaces.paper import PaperSpace
from search_spaces.per_layer import PerLayerSpace
from search_spaces.spec import ArchSpec, LayerSpec, uniform
from search_spaces.variants import variant

SPACES: dict[str, type] = {"paper": PaperSpace, "per_layer": PerLayerSpace, "full": FullSpace}


def get_space(name: str, **options: Any) -> SearchSpace:
    """A space by name; `options` are its fields, with `base` a dict of `BaseDims` fields."""
    if name not in SPACES:
        raise ValueError(f"search space {name!r} is not known; use one of {sorted(SPACES)}")
    cls = SPACES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"space {name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    opts = dict(options)
    base = opts.pop("base", {}) or {}
    base_known = {f.name for f in dataclasses.fields(BaseDims)}
    if set(base) - base_known:
        raise ValueError(f"space {name!r}: unknown base option(s) {sorted(set(base) - base_known)}; known: {sorted(base_known)}")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    space = cls(base=BaseDims(**base), **opts)
    _check_base(space)
    return space


def _check_base(space: Any) -> None:
    """Build one spec from the base dims now, so a bad base fails before any trial runs."""
    base = space.base
    try:
        base.spec([LayerSpec()] * base.n_layers)
    except ValueError as err:
        raise ValueError(f"space {space.name!r} base: {err}") from None


__all__ = [
    "ArchSpec", "BaseDims", "FixedChoices", "FullSpace", "LayerSpec", "PaperSpace", "PerLayerSpace", "SPACES",
    "SearchSpace", "Trial", "enumerate_designs", "get_space", "uniform", "variant",
]
