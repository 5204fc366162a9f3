"""Samplers by name, the seed each worker gives its own, and the wrapper that keeps a study's
sampler from proposing a design the study already has.

Samplers propose repeats: TPE and NSGA-II converge, a small space runs out, and a sampler
re-created with the same seed replays its first proposals. A repeat costs nothing to evaluate
(its result is copied) but takes a trial of the target. ``DistinctDesigns`` asks the sampler
again (up to ``RESAMPLE_LIMIT`` proposals), then draws an unevaluated design of a finite space
at random, and runs a repeat only when the space has none left (or is not finite); the trial
records why (``ATTR_PROPOSAL``), which the progress line shows.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import socket
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from nas.engine import compat
from nas.engine.record import ATTR_PROPOSAL, ATTR_RESAMPLED
from search_spaces.base import FixedChoices, SearchSpace, enumerate_designs

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}
RESAMPLE_LIMIT = 10  # proposals asked of the sampler before an unevaluated design is drawn at random
GRID_LIMIT = 100_000  # a space of at most this many parameter choices is listed to draw from
RANDOM_DRAWS = 200  # uniform draws from a space too large to list
Taken = Callable[[optuna.Study, FrozenTrial], set[str]]  # spec hashes a new trial must not repeat


def make_sampler(name: str, seed: int | None, options: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """A multi-objective sampler by name. Constraints reach every sampler through the
    constraint values each trial stores (``FrozenTrial.constraints``; nas/engine/compat.py)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler.name={name!r} is not known; use one of {list(SAMPLERS)}")
    options = dict(options or {})
    if name == "tpe":
        # Concurrent trials: treat running ones as bad results so TPE spreads its proposals.
        options.setdefault("constant_liar", True)
    try:
        with warnings.catch_warnings():  # NSGA-III, GP and constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SAMPLERS[name](seed=seed, **options)  # type: ignore[call-arg]
    except TypeError as err:
        raise ValueError(f"sampler.options for {name!r}: {err}; see the Optuna documentation of "
                         f"{SAMPLERS[name].__name__}") from None


def worker_seed(seed: int | None, *, single_worker: bool, trials: int = 0) -> int | None:
    """The sampler seed of this worker. On SQLite (one worker) the study's seed, so a run is
    reproducible; a resumed run (``trials`` already in the study) derives its seed from the
    study's and that count, so it continues the sampler's sequence instead of replaying its
    first proposals. On a storage that several workers share, each worker offsets the seed by its
    own identity, or they would all propose the same designs in the same order."""
    if seed is None:
        return None
    if single_worker:
        return seed if trials == 0 else _mix(f"{seed}:resumed:{trials}")
    return _mix(f"{seed}:{socket.gethostname()}:{os.getpid()}")


def _mix(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


# ---- proposing only designs the study does not have ------------------------------------------
class _Proposal:
    """A trial stand-in that a space samples a design from: each answer comes from the wrapped
    sampler (its relative proposal, else an independent draw), or from ``given``; nothing is stored."""

    def __init__(self, answer: Callable[[str, BaseDistribution], Any], given: dict[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}  # how many values each question allows
        self._answer, self._given = answer, given

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._ask(name, CategoricalDistribution(list(choices)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._ask(name, IntDistribution(low, high, step=step, log=log)))

    def _ask(self, name: str, dist: BaseDistribution) -> Any:
        if name not in self.params:
            self.params[name] = self._given[name] if self._given is not None else self._answer(name, dist)
            self.sizes[name] = (len(dist.choices) if isinstance(dist, CategoricalDistribution)
                                else (dist.high - dist.low) // dist.step + 1)  # type: ignore[attr-defined]
        return self.params[name]


def _uniform(rng: random.Random, name: str, dist: BaseDistribution) -> Any:
    """A value drawn uniformly from ``dist`` (categorical or integer)."""
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(list(dist.choices))
    return rng.randrange(dist.low, dist.high + 1, dist.step)  # type: ignore[attr-defined]


def _single_value(dist: BaseDistribution) -> Any:
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low  # type: ignore[attr-defined]


class DistinctDesigns(BaseSampler):
    """``base`` with one rule added: a new trial's design is not one of ``taken(study, trial)``
    while the space has others. The whole design is planned when the trial asks its first question
    (Optuna's ``sample_relative``), from the base sampler's own answers; each question then gets
    the planned answer. An enqueued trial (fixed parameters, a retry) is left as it is."""

    def __init__(self, base: BaseSampler, space: SearchSpace, *, taken: Taken | None = None, seed: int | None = None,
                 limit: int = RESAMPLE_LIMIT) -> None:
        self.base, self.space, self.limit = base, space, limit
        self._taken = taken or self._taken_by_params
        self._rng = random.Random(seed)
        self._plans: dict[int, dict[str, Any]] = {}  # trial number → its planned parameters
        self._grid: list[tuple[dict[str, Any], str]] | None = None
        self._hashes: dict[int, str] = {}  # finished trial number → spec hash (for the default ``taken``)

    # ---- Optuna's sampler contract, delegated ----
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        plan = self._plan(study, trial, search_space)
        return {name: value for name, value in plan.items() if name in search_space}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.get(trial.number)
        if plan is None:
            plan = self._plan(study, trial, {})
        if param_name in plan:
            return plan[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()

    # ---- the plan ----
    def _plan(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if compat.fixed_params(trial):
            self._plans[trial.number] = {}
            return {}
        taken = self._taken(study, trial)
        first: dict[str, Any] | None = None
        previous = None
        for attempt in range(self.limit):
            relative = self.base.sample_relative(study, trial, search_space) if search_space else {}
            proposal = _Proposal(functools.partial(self._answer, study, trial, relative, search_space))
            h = self.space.sample(proposal).hash
            if h not in taken:
                return self._keep(study, trial, proposal.params, resampled=attempt, note=None)
            first = first or proposal.params
            if h == previous:  # the sampler answers the same again (a deterministic acquisition): stop asking
                break
            previous = h
        assert first is not None
        tries = f"the sampler proposed only designs the study has ({attempt + 1} tries)"
        designs = self._designs(proposal.sizes)
        if designs is not None:  # a space small enough to list: an unevaluated design, if one is left
            fresh = [params for params, h in designs if h not in taken]
            if fresh:
                note = f"{tries}; this one was drawn at random from the {len(fresh)} not yet evaluated"
                return self._keep(study, trial, self._rng.choice(fresh), resampled=attempt + 1, note=note)
            note = f"{tries} and the space has no design left that is not evaluated: a repeat"
            return self._keep(study, trial, first, resampled=attempt + 1, note=note)
        for _ in range(RANDOM_DRAWS):  # too large to list: uniform draws
            drawn = _Proposal(functools.partial(_uniform, self._rng))
            if self.space.sample(drawn).hash not in taken:
                return self._keep(study, trial, drawn.params, resampled=attempt + 1,
                                  note=f"{tries}; this one was drawn at random")
        note = f"{tries} and {RANDOM_DRAWS} designs drawn at random were all evaluated: a repeat"
        return self._keep(study, trial, first, resampled=attempt + 1, note=note)

    def _answer(self, study: optuna.Study, trial: FrozenTrial, relative: dict[str, Any],
                search_space: dict[str, BaseDistribution], name: str, dist: BaseDistribution) -> Any:
        """What Optuna's trial would answer (``Trial._suggest``): single, relative, independent."""
        if dist.single():
            return _single_value(dist)
        if name in relative and name in search_space and dist._contains(dist.to_internal_repr(relative[name])):
            return relative[name]
        return self.base.sample_independent(study, trial, name, dist)

    def _keep(self, study: optuna.Study, trial: FrozenTrial, params: dict[str, Any], *, resampled: int,
              note: str | None) -> dict[str, Any]:
        self._plans[trial.number] = dict(params)
        if resampled:
            storage, trial_id = compat.storage_of(study), compat.trial_id_of(trial)
            storage.set_trial_user_attr(trial_id, ATTR_RESAMPLED, resampled)
            if note:
                storage.set_trial_user_attr(trial_id, ATTR_PROPOSAL, note)
        return self._plans[trial.number]

    def _designs(self, sizes: dict[str, int]) -> list[tuple[dict[str, Any], str]] | None:
        """Every design of the space (its first parameters and hash), or None when the space is
        not finite or too large to list (``sizes``: the choices of one design's questions)."""
        if self._grid is None:
            if math.prod(sizes.values()) > GRID_LIMIT:
                return None
            try:
                self._grid = [(params, spec.hash) for params, spec in enumerate_designs(self.space)]
            except ValueError:  # not finite
                return None
        return self._grid

    def _taken_by_params(self, study: optuna.Study, trial: FrozenTrial) -> set[str]:
        """By default: the designs of every other trial, from its parameters (enqueued: the fixed ones)."""
        out = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number:
                continue
            h = self._hashes.get(t.number)
            if h is None:
                params = compat.fixed_params(t) if t.state == TrialState.WAITING else t.params
                try:
                    h = self.space.sample(FixedChoices(params)).hash
                except (KeyError, ValueError):  # a trial still being sampled
                    continue
                if t.state.is_finished():
                    self._hashes[t.number] = h
            out.add(h)
        return out

