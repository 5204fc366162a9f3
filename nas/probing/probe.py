"""Train a fresh copy of a design on a probe task and score it: ``run_probe(spec, task)``.

The spec is adapted to the probe (its vocabulary, its sequence length as the context, causal
or not) and keeps its per-layer design. Training uses the same AdamW and warm-up + cosine
schedule as ``nas.train``, with the loss on the probe's queried positions only; the score is
the probe's own metric on its held-out test set.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas.device import resolve_device
from nas.train import Optimizer, autocast_for, lr_at, make_optimizer, seeded_model
from objectives.probes import Probe, ProbeSplit, get_probe
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class ProbeBudget(Optimizer):
    """How long to train on a probe. The optimiser fields are ``nas.train.Optimizer``'s (the
    same optimiser and schedule as ``nas.train`` are used)."""

    steps: int = 250  # used when epochs is None
    batch_size: int = 32
    n_train: int | None = None  # None → steps × batch_size: every step sees fresh examples
    n_test: int = 512
    eval_batch_size: int = 256
    # A fixed training set of n_train examples, iterated `epochs` times (each example once per
    # epoch, in a seeded order): the paper's recipe. It replaces `steps`. Left out of a stored
    # config while unset, so older configs keep their digest.
    epochs: Annotated[int | None, Field(exclude_if=lambda v: v is None)] = None
    # Also score the test set after these epochs (each < epochs): accuracy against budget along
    # one run's schedule (a 1-epoch point here is not a run with its own 1-epoch cosine).
    eval_epochs: Annotated[tuple[int, ...], Field(exclude_if=lambda v: not v)] = ()

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_test", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < 1):
            raise ValueError(f"n_train={self.n_train!r} must be a positive integer, or None for steps × batch_size")
        self._check_epochs()
        super().__post_init__()

    def _check_epochs(self) -> None:
        object.__setattr__(self, "eval_epochs", tuple(self.eval_epochs))
        if self.epochs is None:
            if self.eval_epochs:
                raise ValueError("eval_epochs needs epochs (and n_train): set epochs = 4, n_train = 10000")
            return
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be a positive integer")
        if self.n_train is None:
            raise ValueError("epochs needs a fixed training set: set n_train (e.g. n_train = 10000)")
        bad = [e for e in self.eval_epochs if not isinstance(e, int) or not 1 <= e < self.epochs]
        if bad or len(set(self.eval_epochs)) != len(self.eval_epochs):
            raise ValueError(f"eval_epochs={list(self.eval_epochs)} must be distinct epochs in [1, {self.epochs - 1}]")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_examples / self.batch_size)

    @property
    def total_steps(self) -> int:
        """The optimiser steps of a run: ``epochs`` passes over the fixed set, or ``steps``."""
        return self.steps if self.epochs is None else self.epochs * self.steps_per_epoch

    @property
    def train_examples(self) -> int:
        return self.n_train if self.n_train is not None else self.steps * self.batch_size


def adapt_spec(spec: ArchSpec, probe: Probe) -> ArchSpec:
    """The design with the probe's vocabulary, length and direction; the layers are unchanged."""
    try:
        return dataclasses.replace(spec, vocab_size=probe.vocab_size, context=probe.length, causal=probe.causal)
    except ValueError as err:
        kind = "a causal model" if probe.causal else "a bidirectional encoder (causal=false)"
        raise ValueError(f"probe {probe.name!r} needs {kind}, and this design cannot be one: {err}") from None


def run_probe(
    spec: ArchSpec,
    task: str,
    *,
    seed: int = 0,
    budget: ProbeBudget | None = None,
    device: str = "auto",
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a fresh copy of ``spec`` on probe ``task`` (size ``params``) and score it on the
    test set. Keys: accuracy, task, seed, train_steps, wall_s, and details of the run."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    budget = budget or ProbeBudget()
    probe = get_probe(task, **dict(params or {}))
    model_spec = adapt_spec(spec, probe)
    train_set, test_set = probe.split(seed=seed, n_train=budget.train_examples, n_test=budget.n_test)
    dev = resolve_device(device)
    model = seeded_model(model_spec, seed).to(dev)
    predict = lambda inputs: _predict(model, inputs, budget.eval_batch_size, dev)  # noqa: E731
    checkpoints = {budget.steps_per_epoch * e: e for e in budget.eval_epochs}
    by_epoch: dict[int, float] = {}

    def checkpoint(step: int) -> None:
        if step in checkpoints:
            by_epoch[checkpoints[step]] = probe.score(test_set, predict)

    losses, reason = _fit(model, train_set, budget, dev, seed, on_step=checkpoint)
    accuracy = probe.score(test_set, predict)
    if budget.epochs is not None and reason is None:
        by_epoch[budget.epochs] = accuracy
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "task": task,
        "seed": seed,
        "accuracy": accuracy,
        "accuracy_by_epoch": {str(e): by_epoch[e] for e in sorted(by_epoch)},  # str keys: JSON-stored
        "mode_baseline": mode_baseline(test_set),
        "train_steps": len(losses),
        "train_tokens": len(losses) * budget.batch_size * probe.length,
        "final_train_loss": float(np.mean(tail)) if losses else math.nan,
        "diverged": reason is not None,
        "reason": reason,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,  # all threads; on one thread, the wall time of an idle machine
        "params": probe.params(),
        "n_train": len(train_set),
        "n_test": len(test_set),
        "spec_hash": model_spec.hash,
        "device": str(dev),
    }


def mode_baseline(split: ProbeSplit) -> float:
    """Accuracy of answering every queried position with its sequence's most frequent input
    token: the plateau that REVERSE, SWAP and SORT runs sit on before they learn the routing."""
    inputs = split.inputs
    counts = np.apply_along_axis(np.bincount, 1, inputs, minlength=int(inputs.max()) + 1)  # (N, vocab)
    guess = counts.argmax(1)[:, None]  # (N, 1)
    return float(((split.targets == guess) & split.mask).sum() / split.mask.sum())


def _fit(model: nn.Module, data: ProbeSplit, budget: ProbeBudget, device: torch.device, seed: int,
         on_step: Callable[[int], None] | None = None) -> tuple[list[float], str | None]:
    """Train on the queried positions; returns per-step losses and why it stopped early, if it
    did. ``on_step(n)`` runs after the n-th step (1-based), e.g. to score a checkpoint."""
    x_all = torch.from_numpy(data.inputs).to(device)  # (N, T)
    y_all = torch.from_numpy(data.targets).to(device)  # (N, T)
    m_all = torch.from_numpy(data.mask).to(device)  # (N, T) bool
    opt = make_optimizer(model, budget, device)
    autocast = autocast_for(device)
    order = batch_order(len(data), budget, seed)
    model.train()
    losses: list[float] = []
    for step, rows in enumerate(order):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, len(order), budget)
        idx = torch.from_numpy(rows).to(device)
        x, y, m = x_all[idx], y_all[idx], m_all[idx]
        with autocast():
            logits = model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits[m].float(), y[m])  # queried positions only
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), budget.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not (math.isfinite(losses[-1]) and math.isfinite(float(grad_norm))):
            return losses, f"non-finite loss or gradient at step {step + 1}"
        if on_step is not None:
            on_step(step + 1)
    return losses, None


def batch_order(n: int, budget: ProbeBudget, seed: int) -> list[np.ndarray]:
    """Row indices per step. With ``epochs``: each epoch is a seeded permutation of the n rows cut
    into batches (the last one smaller), so every example is seen once per epoch. Otherwise
    ``steps`` batches from back-to-back permutations, no row twice in a pass."""
    rng = np.random.default_rng(seed)
    size = budget.batch_size
    if budget.epochs is not None:
        return [perm[i:i + size] for perm in (rng.permutation(n) for _ in range(budget.epochs))
                for i in range(0, n, size)]
    passes = math.ceil(budget.steps * size / n)
    flat = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return [flat[i * size:(i + 1) * size] for i in range(budget.steps)]


@torch.no_grad()
def _predict(model: nn.Module, inputs: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """(N, T) token ids -> (N, T) argmax predictions, in evaluation mode."""
    model.eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start:start + batch_size]).to(device)
        out.append(model(x).argmax(-1).cpu().numpy())  # (b, T)
    model.train()
    return np.concatenate(out)
