"""Samplers by name, and the seed each worker gives its own."""
from __future__ import annotations

import hashlib
import os
import socket
import warnings
from typing import Any

import optuna

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}


def make_sampler(name: str, seed: int | None, options: dict[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    """A multi-objective sampler by name. Constraints reach every sampler through the
    constraint values each trial sets (``Trial.set_constraint``, Optuna 5)."""
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


def worker_seed(seed: int | None, *, single_worker: bool) -> int | None:
    """The sampler seed of this worker. On SQLite (one worker) the study's seed, so a run is
    reproducible; on a storage that several workers share, each worker offsets it by its own
    identity, or they would all propose the same designs in the same order."""
    if seed is None or single_worker:
        return seed
    digest = hashlib.sha256(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
