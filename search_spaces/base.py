"""The search-space interface: a space turns an Optuna trial into an `ArchSpec`.

Spaces are define-by-run: they call `trial.suggest_*` and may ask conditional questions.
They only need the trial's `suggest_categorical` / `suggest_int`, so this package does not
import Optuna. A parameter name always has the same choices, whatever was sampled before,
as Optuna's samplers require.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from search_spaces.spec import PROJ_MODES, ArchSpec, LayerSpec, ModelDims


class Trial(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


@dataclass(frozen=True, kw_only=True)
class BaseDims(ModelDims):
    """The model the designs are placed in; a space varies the attention, not these (except
    `full`). Smaller than ``ArchSpec``'s defaults: a search trains many of them."""

    context: int = 128
    d_model: int = 64
    ffn_dim: int = 256
    n_layers: int = 2

    def spec(self, layers: list[Any], **changes: Any) -> ArchSpec:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "n_layers"}
        fields.update(changes)
        return ArchSpec(**fields, layers=tuple(layers))


class SearchSpace(Protocol):
    name: str

    def sample(self, trial: Trial) -> ArchSpec: ...

    def grid(self) -> list[dict[str, Any]]:
        """Every choice of parameters, as a sampler would make them; a space that is not
        finite raises ValueError saying so."""
        ...

    @property
    def options(self) -> dict[str, Any]: ...


def kv_heads_for(n_heads: int, choice: str) -> int:
    """K/V heads for 'mha', 'mqa' or 'gqa<G>' (G K/V heads). G equal to the query heads (the full
    space samples the head count) gives half of them, as every study has done so far."""
    if choice == "mha":
        return n_heads
    if choice == "mqa":
        return 1
    if choice.startswith("gqa") and choice[3:].isdigit() and int(choice[3:]) >= 1:
        groups = int(choice[3:])  # a space checks that G divides its head counts (search_spaces/check.py)
        return groups if n_heads % groups == 0 and groups < n_heads else max(1, n_heads // 2)
    raise ValueError(f"kv sharing {choice!r} is not known; use 'mha', 'gqa<G>' (G >= 1) or 'mqa'")


class FixedChoices:
    """A trial whose answers are given: ``space.sample(FixedChoices(params))`` is the design a
    sampler that chose ``params`` gets (how a finite space lists its designs)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self.params[name]
        if value not in list(choices):
            raise ValueError(f"parameter {name}={value!r} is not one of the space's choices {list(choices)}")
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = int(self.params[name])
        if not low <= value <= high:
            raise ValueError(f"parameter {name}={value} is outside the space's range [{low}, {high}]")
        return value


def enumerate_designs(space: SearchSpace) -> list[tuple[dict[str, Any], ArchSpec]]:
    """Every distinct design of a finite space, with the first parameters that give it, in the
    order of ``space.grid()``. Two parameter choices that build the same model (e.g. gqa2 and
    mha with two heads) are one design."""
    if not callable(getattr(space, "grid", None)):  # a user's space may leave it out (search_spaces/plugins.py)
        raise ValueError(f"space {getattr(space, 'name', type(space).__name__)!r} has no grid() listing its choices; "
                         "add one to tabulate it")
    seen: set[str] = set()
    out = []
    for params in space.grid():
        spec = space.sample(FixedChoices(params))
        if spec.hash not in seen:
            seen.add(spec.hash)
            out.append((params, spec))
    return out


@dataclass(frozen=True, kw_only=True)
class ProjKVSpace:
    """The paper's two choices, a projection mode and a K/V sharing, over a base model; spaces
    differ in how many times they make them (once for all layers, or per layer)."""

    base: BaseDims = field(default_factory=BaseDims)
    projs: tuple[str, ...] = PROJ_MODES
    kv_sharing: tuple[str, ...] = ("mha", "gqa2", "mqa")

    def sample_layer(self, trial: Trial, suffix: str = "") -> LayerSpec:
        proj = trial.suggest_categorical(f"proj{suffix}", list(self.projs))
        kv = trial.suggest_categorical(f"kv_sharing{suffix}", list(self.kv_sharing))
        return LayerSpec(proj=proj, n_kv_heads=kv_heads_for(self.base.n_heads, kv))

    def layer_choices(self, suffix: str = "") -> list[dict[str, Any]]:
        return [{f"proj{suffix}": p, f"kv_sharing{suffix}": k} for p in self.projs for k in self.kv_sharing]

    @property
    def options(self) -> dict[str, Any]:
        return {"base": dataclasses.asdict(self.base), "projs": list(self.projs), "kv_sharing": list(self.kv_sharing)}
