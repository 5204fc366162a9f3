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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.device import resolve_device
from nas.train import Optimizer, autocast_for, lr_at, make_optimizer, seeded_model
from objectives.probes import Probe, ProbeSplit, get_probe
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class ProbeBudget(Optimizer):
    """How long to train on a probe. The optimiser fields are ``nas.train.Optimizer``'s (the
    same optimiser and schedule as ``nas.train`` are used)."""

    steps: int = 250
    batch_size: int = 32
    n_train: int | None = None  # None → steps × batch_size: every step sees fresh examples
    n_test: int = 512
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_test", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < 1):
            raise ValueError(f"n_train={self.n_train!r} must be a positive integer, or None for steps × batch_size")
        super().__post_init__()

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
    losses, reason = _fit(model, train_set, budget, dev, seed)
    accuracy = probe.score(test_set, lambda inputs: _predict(model, inputs, budget.eval_batch_size, dev))
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "task": task,
        "seed": seed,
        "accuracy": accuracy,
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


def _fit(model: nn.Module, data: ProbeSplit, budget: ProbeBudget, device: torch.device,
         seed: int) -> tuple[list[float], str | None]:
    """Train on the queried positions; returns per-step losses and why it stopped early, if it did."""
    x_all = torch.from_numpy(data.inputs).to(device)  # (N, T)
    y_all = torch.from_numpy(data.targets).to(device)  # (N, T)
    m_all = torch.from_numpy(data.mask).to(device)  # (N, T) bool
    opt = make_optimizer(model, budget, device)
    autocast = autocast_for(device)
    order = _batch_order(len(data), budget, seed)
    model.train()
    losses: list[float] = []
    for step, rows in enumerate(order):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, budget.steps, budget)
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
    return losses, None


def _batch_order(n: int, budget: ProbeBudget, seed: int) -> list[np.ndarray]:
    """Row indices per step: passes over shuffled training examples, no row twice in a pass."""
    rng = np.random.default_rng(seed)
    passes = math.ceil(budget.steps * budget.batch_size / n)
    flat = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return [flat[i * budget.batch_size:(i + 1) * budget.batch_size] for i in range(budget.steps)]


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
