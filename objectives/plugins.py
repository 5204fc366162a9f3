"""A user's own objective, named in a study file the way every process can find it again.

An objective name is a built-in (``val_loss``, ``probe:mqar``, ...), an import path
``"my_pkg.objectives:attention_share"`` naming an ``objectives.Objective``, or the name of an
entry point an installed package declares in the group ``qkvnas.objectives``. Each process (a
Ray worker too) imports it again from the stored config string; an objective put into
``objectives.OBJECTIVES`` at run time exists in that process only. Import paths and entry points
are read as for search spaces (search_spaces/plugins.py).
"""
from __future__ import annotations

from objectives.base import Objective
from search_spaces.plugins import installed_names, plugin

OBJECTIVE_GROUP = "qkvnas.objectives"
EXAMPLE = ("Objective(name=..., direction='minimize', needs=frozenset({'costs'}), unit=..., description=..., "
           "read=lambda record: ...)")


def plugin_objective(name: str) -> Objective | None:
    """The objective an import path or an installed entry point names; None if ``name`` is neither."""
    obj = plugin(name, OBJECTIVE_GROUP, "objective")
    if obj is None:
        return None
    if not isinstance(obj, Objective):
        raise ValueError(f"objective {name!r} names an object of type {type(obj).__name__}, not an objectives.Objective; "
                         f"make it one: {EXAMPLE}")
    return obj


def installed_objectives() -> list[str]:
    return installed_names(OBJECTIVE_GROUP)
