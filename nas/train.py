"""Short training of one design: ``train(spec, corpus, budget) -> TrainResult``.

AdamW (β = 0.9, 0.95 unless ``beta2`` says otherwise; weight decay on matrices only), linear warm-up then cosine decay to
``min_lr_frac · lr``, gradient clipping, bf16 autocast on CUDA. Seeded: on CPU the same seed
gives the same losses. Validation runs every ``eval_every`` steps on fixed windows, so designs
are compared on the same text; its time is kept out of ``train_tokens_per_s``.

A run diverges when the loss or the gradient norm is not finite, or the gradient norm exceeds
``DIVERGENCE_GRAD_NORM``: training stops, and the result says so (``diverged``, ``reason``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nas.data import Corpus, check_vocab, sample_batch, val_batches
from nas.device import resolve_device
from nas.model import build_model
from search_spaces.spec import ArchSpec

# Pre-clip gradient norm above which a run counts as diverged. Healthy runs of small byte-level
# LMs here show norms of about 0.5-2, and even lr=10 stays near 50; 1e4 is a runaway (lr=1e3
# reaches ~4e9 on its second step), not a spike that clipping at 1.0 absorbs.
DIVERGENCE_GRAD_NORM = 1e4
EVALS_PER_RUN = 8  # eval_every=0: about this many validation points per run
CUDA_READBACK_EVERY = 16  # on CUDA, read losses back every this many steps (a host sync)
BETAS = (0.9, 0.95)


@dataclass(frozen=True, kw_only=True)
class Optimizer:
    """The optimiser and its schedule, shared by every budget (``TrainBudget``, the ladder's,
    ``ProbeBudget``): peak ``lr``, linear warm-up over ``warmup_frac`` of the steps, cosine
    decay to ``min_lr_frac · lr``, AdamW ``weight_decay`` and gradient-norm clipping. A budget
    inherits these fields, so its stored form stays flat (``[budget] lr = 3e-3``)."""

    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Adam's β₂ (β₁ is 0.9). Left out of a stored config at its default, so older configs keep their digest.
    beta2: Annotated[float, Field(exclude_if=lambda v: v == BETAS[1])] = BETAS[1]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"min_lr_frac={self.min_lr_frac!r} must be in [0, 1]")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac={self.warmup_frac!r} must be in [0, 1)")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2={self.beta2!r} must be in (0, 1), e.g. 0.999 (Adam's default) or 0.95")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be > 0 (use float('inf') for no clipping)")


def check_int(owner: object, name: str, low: int) -> None:
    """``owner.name`` must be an integer (not a bool) of at least ``low``."""
    value = getattr(owner, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


@dataclass(frozen=True, kw_only=True)
class TrainSettings(Optimizer):
    """How to train, whatever the length: a ``TrainBudget`` without its ``tokens`` and ``seed``
    (a ladder gives those per grid point). ``seq_len=None`` trains on windows of ``spec.context``."""

    batch_size: int = 16
    seq_len: int | None = None
    eval_every: int = 0  # steps; 0 → about EVALS_PER_RUN evaluations
    eval_batches: int = 8
    device: str = "auto"  # "auto" → cuda when available, else cpu
    # torch.compile the model; its compile time is TrainResult.compile_s, not in the throughput.
    # Left out of a stored config while false, so studies stored before it continue unchanged.
    compile: Annotated[bool, Field(exclude_if=lambda on: on is False)] = False

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("eval_every", 0), ("eval_batches", 1)):
            check_int(self, name, low)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile={self.compile!r} must be true or false")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 1):
            raise ValueError(f"seq_len={self.seq_len!r} must be a positive integer, or None for the spec's context")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class TrainBudget(TrainSettings):
    """How much and how to train: ``tokens`` (whole steps) from ``seed``, with the settings and
    the optimiser of the classes above."""

    tokens: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self, "tokens", 1)
        check_int(self, "seed", 0)
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    val_loss: float  # nats/token on the fixed validation windows; nan if diverged
    bits_per_byte: float | None  # None when the corpus has no bytes-per-token figure
    tokens_seen: int
    steps: int
    wall_s: float  # the whole call: build, training, evaluation
    train_tokens_per_s: float  # training steps only (first step and evaluation excluded)
    curve: tuple[dict[str, Any], ...]  # step, tokens, train_loss, val_loss, grad_norm, lr
    grad_norms: tuple[float, ...]  # per step, before clipping
    train_losses: tuple[float, ...]  # per step
    diverged: bool
    reason: str | None
    device: str
    # compile=true: the first step's time beyond an ordinary step's (torch.compile's work); None otherwise
    compile_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("curve", "grad_norms", "train_losses"):
            out[key] = list(out[key])
        return out


# ---- pieces -----------------------------------------------------------------------------
def lr_at(step: int, steps: int, budget: Optimizer) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine down to ``min_lr_frac · lr``."""
    warmup = round(budget.warmup_frac * steps)
    if step < warmup:
        return budget.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup - 1))
    floor = budget.min_lr_frac * budget.lr
    return floor + 0.5 * (budget.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, budget: Optimizer, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decay on matrices (and embeddings) only: norms' gains and biases are not shrunk."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": budget.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=budget.lr, betas=(BETAS[0], budget.beta2), fused=device.type == "cuda")


def autocast_for(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def seeded_model(spec: ArchSpec, seed: int) -> nn.Module:
    """The model's initial weights depend on ``seed`` only, and the caller's RNG is left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast: Callable) -> float:
    """Mean next-token loss (nats/token) over fixed, equal-sized batches."""
    model.eval()
    total = torch.zeros((), device=batches[0][0].device)
    for x, y in batches:
        with autocast():
            logits = model(x)  # (B, T, vocab)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    model.train()
    return float(total) / len(batches)


def _divergence(loss: float, grad_norm: float, step: int) -> str | None:
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss}) at step {step}"
    if not math.isfinite(grad_norm):
        return f"non-finite gradient norm ({grad_norm}) at step {step}"
    if grad_norm > DIVERGENCE_GRAD_NORM:
        return f"gradient norm {grad_norm:.3g} > {DIVERGENCE_GRAD_NORM:g} at step {step}"
    return None


def _readback_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else CUDA_READBACK_EVERY


class _Records:
    """Per-step loss and gradient norm. They stay on the device and are read back in blocks, so a
    GPU step never waits for the host; on CPU each step is read back at once (it costs nothing)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.buf = torch.zeros(steps, 2, device=device)  # (steps, [loss, grad_norm])
        self.every = _readback_every(device)
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def put(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.buf[step, 0] = loss.detach()
        self.buf[step, 1] = grad_norm

    def read(self, done: int) -> str | None:
        """Read back steps up to ``done``; on divergence keep the records up to the bad step."""
        for loss, grad_norm in self.buf[len(self.losses):done].tolist():
            self.losses.append(loss)
            self.grad_norms.append(grad_norm)
            reason = _divergence(loss, grad_norm, len(self.losses))
            if reason:
                return reason
        return None


class _StepClock:
    """Wall time spent in training steps: paused around evaluation, synchronised on CUDA. The
    first step (optimiser state allocation, kernel selection) is timed apart and only used when
    it is the only step."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds, self.steps = 0.0, 0
        self.first_step_s: float | None = None
        self._t0: float | None = None
        self._from = 0

    def start(self, done: int) -> None:
        self.sync()
        self._t0, self._from = time.perf_counter(), done

    def stop(self, done: int) -> None:
        if self._t0 is None:
            return
        self.sync()
        elapsed = time.perf_counter() - self._t0
        self._t0 = None
        if self._from == 0 and self.first_step_s is None:
            self.first_step_s = elapsed
        else:
            self.seconds += elapsed
            self.steps += done - self._from

    def compile_s(self) -> float | None:
        """The first step's time beyond an ordinary step's: compilation, when the model compiles."""
        if self.first_step_s is None or not self.steps:
            return self.first_step_s
        return max(0.0, self.first_step_s - self.seconds / self.steps)

    def tokens_per_s(self, tokens_per_step: int) -> float:
        if self.steps:
            return self.steps * tokens_per_step / self.seconds
        return tokens_per_step / self.first_step_s if self.first_step_s else math.nan


def _plan(spec: ArchSpec, corpus: Corpus, budget: TrainBudget) -> tuple[int, int]:
    """(seq_len, steps) for this spec and budget, with input errors raised before any work."""
    check_vocab(spec, corpus)
    if not spec.causal:
        raise ValueError("train() trains causal language models; this spec has causal=false (an encoder for probe tasks)")
    seq_len = budget.seq_len or spec.context
    if seq_len > spec.context:
        raise ValueError(f"seq_len={seq_len} exceeds the spec's context={spec.context}; lower seq_len or raise context")
    per_step = budget.batch_size * seq_len
    if budget.tokens < per_step:
        raise ValueError(
            f"tokens={budget.tokens} is less than one step (batch_size × seq_len = {per_step}); "
            f"give tokens >= {per_step}"
        )
    return seq_len, budget.tokens // per_step


# ---- the run ------------------------------------------------------------------------------
def train(
    spec: ArchSpec,
    corpus: Corpus,
    budget: TrainBudget,
    *,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_trained: Callable[[nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``spec`` on ``corpus`` for ``budget.tokens`` tokens (whole steps) and validate it.

    ``on_eval`` receives each learning-curve point as it is made; an exception it raises (e.g.
    to prune the trial) propagates. ``on_trained`` receives the trained model (to save it).
    Divergence never raises: see ``TrainResult.diverged``.
    """
    t0 = time.perf_counter()
    seq_len, steps = _plan(spec, corpus, budget)
    device = resolve_device(budget.device)
    model = seeded_model(spec, budget.seed).to(device)
    if budget.compile:  # compiled at the first step, which the clock times apart
        model = cast(nn.Module, torch.compile(model))
    run = _Run(model, corpus, budget, device, seq_len, steps)
    with _progress_bar(progress, steps, spec) as bar:
        reason = run.loop(bar, on_eval)
    done = len(run.records.losses)
    if on_trained is not None:
        on_trained(getattr(model, "_orig_mod", model))  # the module itself, not torch.compile's wrapper
    final = run.curve[-1]["val_loss"] if run.curve and reason is None else math.nan
    bits = final / math.log(2) / corpus.bytes_per_token if corpus.bytes_per_token else None
    return TrainResult(
        val_loss=final,
        bits_per_byte=bits,
        tokens_seen=done * budget.batch_size * seq_len,
        steps=done,
        wall_s=time.perf_counter() - t0,
        train_tokens_per_s=run.clock.tokens_per_s(budget.batch_size * seq_len),
        curve=tuple(run.curve),
        grad_norms=tuple(run.records.grad_norms),
        train_losses=tuple(run.records.losses),
        diverged=reason is not None,
        reason=reason,
        device=str(device),
        compile_s=run.clock.compile_s() if budget.compile else None,
    )


class _Run:
    """The state of one training run: model, optimiser, data, records, learning curve."""

    def __init__(self, model: nn.Module, corpus: Corpus, budget: TrainBudget, device: torch.device,
                 seq_len: int, steps: int) -> None:
        self.model, self.corpus, self.budget, self.device = model, corpus, budget, device
        self.seq_len, self.steps = seq_len, steps
        self.opt = make_optimizer(model, budget, device)
        self.autocast = autocast_for(device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rng = np.random.default_rng(budget.seed)
        self.val = [(x.to(device), y.to(device)) for x, y in
                    val_batches(corpus.val, budget.eval_batches, budget.batch_size, seq_len)]
        self.eval_every = budget.eval_every or max(1, steps // EVALS_PER_RUN)
        self.records = _Records(steps, device)
        self.clock = _StepClock(device)
        self.curve: list[dict[str, Any]] = []

    def step(self, step: int) -> None:
        lr = lr_at(step, self.steps, self.budget)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = sample_batch(self.corpus.train, self.budget.batch_size, self.seq_len, self.rng)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)  # (B, T)
        with self.autocast():
            logits = self.model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.budget.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.records.put(step, loss, grad_norm)

    def loop(self, bar: Any, on_eval: Callable[[dict[str, Any]], None] | None) -> str | None:
        """All steps with evaluation in between; returns the divergence reason, if any."""
        reason = None
        self.clock.start(0)
        for step in range(self.steps):
            self.step(step)
            done = step + 1
            if done == 1:  # the first step is timed apart
                self.clock.stop(1)
                self.clock.start(1)
            bar.update()
            evaluate_now = done % self.eval_every == 0 or done == self.steps
            if evaluate_now or done % self.records.every == 0:
                reason = self.records.read(done)
                if reason:
                    break
            if evaluate_now:
                reason = self._evaluate(done, bar, on_eval)
                if reason:
                    break
        self.clock.stop(step + 1)
        if reason:
            self._record_divergence()
        return reason

    def _evaluate(self, done: int, bar: Any, on_eval: Callable[[dict[str, Any]], None] | None) -> str | None:
        self.clock.stop(done)
        val_loss = evaluate(self.model, self.val, self.autocast)
        self.clock.start(done)
        point = self._point(done, val_loss)
        self.curve.append(point)
        bar.set_postfix(train=f"{point['train_loss']:.3f}", val=f"{val_loss:.3f}")
        if on_eval is not None:
            on_eval(dict(point))
        return None if math.isfinite(val_loss) else f"non-finite validation loss ({val_loss}) at step {done}"

    def _point(self, done: int, val_loss: float | None) -> dict[str, Any]:
        since = self.curve[-1]["step"] if self.curve else 0
        losses = self.records.losses[since:done]
        return {
            "step": done,
            "tokens": done * self.budget.batch_size * self.seq_len,
            "train_loss": sum(losses) / len(losses),
            "val_loss": val_loss,
            "grad_norm": self.records.grad_norms[done - 1],
            "lr": lr_at(done - 1, self.steps, self.budget),
        }

    def _record_divergence(self) -> None:
        """The curve ends at the bad step, with no validation loss."""
        done = len(self.records.losses)
        if not self.curve or self.curve[-1]["step"] != done:
            self.curve.append(self._point(done, None))


def _progress_bar(enabled: bool, steps: int, spec: ArchSpec) -> Any:
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"train {spec.hash}", unit="step", disable=not enabled, file=sys.stderr, leave=False)
