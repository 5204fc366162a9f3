"""The grid of a ladder: every (design, size, tokens-per-parameter, seed) point, one run each.

**N is the non-embedding parameter count** (``costs.params − costs.embedding_params``: token
and position embeddings excluded, the LM head too when it is tied). **D is the number of
tokens trained**, whole steps. At one size step every design trains on the same tokens,
``tokens_per_param × N(baseline)`` rounded to whole steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.costs import costs
from nas.ladder.designs import Design, resolve_designs
from search_spaces.scaling import scale_spec
from search_spaces.spec import ArchSpec

if TYPE_CHECKING:  # the config validates itself with grid(): no import at run time
    from nas.ladder.config import LadderConfig, SizeStep

MIN_STEPS = 8  # a run shorter than this is warm-up and noise, not a point on a curve


def non_embedding_params(spec: ArchSpec) -> int:
    c = costs(spec)
    return c.params - c.embedding_params


@dataclass(frozen=True, kw_only=True)
class Point:
    """One run of the ladder: a design at a size, for a token budget, with a seed."""

    design: str
    baseline: bool
    design_id: int
    size: str
    d_model: int
    repeats: int
    tokens_per_param: float  # nominal: tokens / N(baseline at this size)
    seed: int
    tokens: int  # whole steps of batch_size × seq_len
    params: int  # all trainable parameters
    params_nonembedding: int  # N
    spec_json: str
    lr: float | None = None  # a learning-rate sweep's value; None: the budget's lr (no sweep)

    @property
    def key(self) -> tuple:
        """(design_id, d_model, repeats, tokens_per_param, seed), and the lr in a sweep."""
        base = (self.design_id, self.d_model, self.repeats, self.tokens_per_param, self.seed)
        return base if self.lr is None else (*base, self.lr)

    @property
    def label(self) -> str:
        lr = "" if self.lr is None else f" lr={self.lr:g}"
        return f"{self.design} {self.size} tpp={self.tokens_per_param:g} seed={self.seed}{lr}"

    @property
    def params_dict(self) -> dict[str, Any]:
        """The point's Optuna parameters (``lr`` only in a sweep, so older ladders keep theirs)."""
        params = {"design_id": self.design_id, "d_model": self.d_model, "repeats": self.repeats,
                  "tokens_per_param": self.tokens_per_param, "seed": self.seed}
        return params if self.lr is None else {**params, "lr": self.lr}

    @property
    def compute(self) -> float:
        return 6.0 * self.params_nonembedding * self.tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def grid(config: LadderConfig, designs: list[Design] | None = None) -> list[Point]:
    """Every (design, size, budget, seed) point, largest compute first (so that the long runs
    start early and short ones fill the gaps at the end)."""
    designs = designs if designs is not None else resolve_designs(config)
    _check_context(config, designs)
    per_step = config.budget.batch_size * (config.budget.seq_len or designs[0].spec.context)
    lrs: tuple[float | None, ...] = config.lr_sweep.values if config.lr_sweep is not None else (None,)
    points = []
    for size in config.sizes:
        scaled = {d.name: _scaled(d, size) for d in designs}
        base_n = non_embedding_params(scaled[designs[0].name])
        for tpp in config.tokens_per_param:
            steps = round(tpp * base_n / per_step)
            if steps < MIN_STEPS:
                raise ValueError(
                    f"tokens_per_param: {tpp:g} × N={base_n} at size {size.label} is {steps} steps of "
                    f"{per_step} tokens; a run needs at least {MIN_STEPS}: raise the ratio or the smallest size, "
                    "or lower budget.batch_size"
                )
            for d in designs:
                for seed in config.seeds:
                    for lr in lrs:
                        points.append(_point(d, size, scaled[d.name], tpp, seed, steps * per_step, lr))
    if config.lr_sweep is not None:  # the sweep's cheapest fidelity first: its small runs report early
        return sorted(points, key=lambda p: (p.compute, p.design, p.seed, p.lr or 0.0))
    return sorted(points, key=lambda p: (-p.compute, p.design, p.seed))


def _scaled(design: Design, size: SizeStep) -> ArchSpec:
    try:
        return scale_spec(design.spec, d_model=size.d_model, repeats=size.repeats)
    except ValueError as err:
        raise ValueError(f"sizes: design {design.name!r} at {size.label}: {err}") from None


def _point(design: Design, size: SizeStep, spec: ArchSpec, tpp: float, seed: int, tokens: int,
           lr: float | None) -> Point:
    c = costs(spec)
    return Point(design=design.name, baseline=design.baseline, design_id=design.design_id, size=size.label,
                 d_model=size.d_model, repeats=size.repeats, tokens_per_param=tpp, seed=seed, tokens=tokens,
                 params=c.params, params_nonembedding=c.params - c.embedding_params, spec_json=spec.to_json(), lr=lr)


def _check_context(config: LadderConfig, designs: list[Design]) -> None:
    contexts = {d.spec.context for d in designs}
    if len(contexts) > 1:
        raise ValueError(f"designs: their contexts differ ({sorted(contexts)}); a ladder compares designs on the "
                         "same windows: give specs with one context")
    if config.budget.seq_len is not None and config.budget.seq_len > min(contexts):
        raise ValueError(f"budget.seq_len={config.budget.seq_len} exceeds the designs' context {min(contexts)}; lower it")
