"""A space's options checked against what the space can build, when the space is made.

A study file whose space lists a projection mode that does not exist, a K/V sharing that does
not fit the heads, or a width the heads do not divide would otherwise load, start, and fail in
its trials (or, for a group size that does not divide the heads, quietly build another design).
Each error names the option and the values that would work.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from search_spaces.spec import ATTN_KINDS, PROJ_MODES, LayerSpec

GQA = re.compile(r"^gqa(\d+)$")


def check_space(space: Any) -> None:
    """Raise ValueError naming the first option of ``space`` that cannot be sampled or built."""
    _check_base(space)
    if hasattr(space, "d_models"):  # the full space: widths, depths and head counts are sampled too
        _check_full(space)
        heads: tuple[int, ...] = space.n_heads
    else:
        heads = (space.base.n_heads,)
    check_choices(space, "projs", space.projs, PROJ_MODES)
    _check_kv_sharing(space, space.kv_sharing, heads)


def check_choices(space: Any, option: str, values: object, known: Iterable[Any]) -> None:
    """``values`` is a non-empty list, without repeats, of items of ``known``."""
    known = list(known)
    where = f"space {space.name!r} option {option}"
    _non_empty_list(where, values, known)
    for value in values:  # type: ignore[attr-defined]
        if value not in known:
            raise ValueError(f"{where}: {value!r} is not known; use some of {known}")
    _no_repeats(where, values)


def _non_empty_list(where: str, values: object, known: list[Any]) -> None:
    if not isinstance(values, (tuple, list)) or not values:
        raise ValueError(f"{where}={values!r} must be a non-empty list of some of {known}")


def _no_repeats(where: str, values: Any) -> None:
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ValueError(f"{where} lists {repeated} more than once; list each choice once")


def _check_kv_sharing(space: Any, values: object, heads: tuple[int, ...]) -> None:
    """'mha', 'mqa' or 'gqa<G>' with G K/V heads, G a divisor of every head count the space uses
    (where G is the whole head count, `kv_heads_for` halves it: the full space samples heads)."""
    where = f"space {space.name!r} option kv_sharing"
    common = [g for g in range(2, min(*heads, 64) + 1) if all(h % g == 0 for h in heads) and g < max(heads)]
    valid = ["mha", "mqa"] + [f"gqa{g}" for g in common]
    _non_empty_list(where, values, valid)
    for value in values:  # type: ignore[attr-defined]
        match = GQA.match(value) if isinstance(value, str) else None
        if value in ("mha", "mqa"):
            continue
        if match is None:
            raise ValueError(f"{where}: {value!r} is not known; use 'mha', 'mqa' or 'gqa<G>' (G K/V heads), "
                             f"here some of {valid}")
        groups = int(match.group(1))
        if groups < 1 or any(h % groups for h in heads):
            heads_text = f"n_heads={heads[0]}" if len(heads) == 1 else f"every n_heads in {list(heads)}"
            raise ValueError(f"{where}: {value!r} asks for {groups} K/V heads, which does not divide {heads_text}; "
                             f"use some of {valid}")
    _no_repeats(where, values)


def _check_base(space: Any) -> None:
    """Build one spec from the base dims now, so that a bad base fails before any trial runs."""
    base = space.base
    n_layers = base.n_layers
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        raise ValueError(f"space {space.name!r} base: n_layers={n_layers!r} must be a positive integer")
    try:
        base.spec([LayerSpec()] * n_layers)
    except ValueError as err:
        raise ValueError(f"space {space.name!r} base: {err}") from None


def _positive_ints(space: Any, option: str, values: object) -> tuple[int, ...]:
    if (not isinstance(values, (tuple, list)) or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)):
        raise ValueError(f"space {space.name!r} option {option}={values!r} must be a non-empty list of positive integers")
    return tuple(values)


def _check_full(space: Any) -> None:
    """The full space's own options: every width with every head count builds, depths and ranks fit."""
    name = space.name
    widths = _positive_ints(space, "d_models", space.d_models)
    heads = _positive_ints(space, "n_heads", space.n_heads)
    depth = space.n_layers_range
    if (not isinstance(depth, (tuple, list)) or len(depth) != 2
            or _positive_ints(space, "n_layers_range", depth)[0] > depth[1]):
        raise ValueError(f"space {name!r} option n_layers_range={depth!r} must be [low, high] with 1 <= low <= high")
    _positive_ints(space, "windows", space.windows)
    check_choices(space, "mixers", space.mixers, ATTN_KINDS)
    fractions = space.rank_fractions
    if (not isinstance(fractions, (tuple, list)) or not fractions
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fractions)):
        raise ValueError(f"space {name!r} option rank_fractions={fractions!r} must be a non-empty list of fractions "
                         "of d_model strictly between 0 and 1, e.g. [0.25, 0.5]")
    for d in widths:
        for h in heads:
            try:
                space.base.spec([LayerSpec()], d_model=d, n_heads=h, ffn_dim=4 * d)
            except ValueError as err:
                raise ValueError(f"space {name!r} options d_models={list(widths)}, n_heads={list(heads)}: "
                                 f"d_model={d} with n_heads={h}: {err}") from None
    if min(widths) < 2:
        raise ValueError(f"space {name!r} option d_models: a width of 1 leaves no rank below it; use widths >= 2")
