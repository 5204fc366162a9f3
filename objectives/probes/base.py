"""What every probe shares: a split of examples, the train/test separation, the masked metric.

A probe is a seeded generator of fixed-length token sequences. Each example carries its
answer at every position and a mask of the *queried* positions: the only positions a model
is trained on and scored on. Pure numpy; the model side lives in ``nas/probing/probe.py``.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

# Maps inputs (N, T) int64 to the model's predicted token at every position (N, T) int64.
Predict = Callable[[np.ndarray], np.ndarray]

MAX_DRAW_ROUNDS = 50  # give up finding fresh examples after this many batches of duplicates


@dataclass(frozen=True, kw_only=True)
class ProbeSplit:
    """N examples of one probe. For causal probes ``targets[:, t]`` is what the model should
    predict at position t having seen ``inputs[:, :t+1]``."""

    inputs: np.ndarray  # (N, T) int64 token ids
    targets: np.ndarray  # (N, T) int64; meaningful only where mask is True
    mask: np.ndarray  # (N, T) bool; the queried positions

    def __post_init__(self) -> None:
        assert self.inputs.shape == self.targets.shape == self.mask.shape, "inputs, targets, mask differ in shape"
        assert self.inputs.ndim == 2 and self.mask.dtype == np.bool_
        assert self.mask.any(axis=1).all(), "every example needs at least one queried position"

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def take(self, rows: np.ndarray) -> ProbeSplit:
        return ProbeSplit(inputs=self.inputs[rows], targets=self.targets[rows], mask=self.mask[rows])


def concat(splits: list[ProbeSplit]) -> ProbeSplit:
    return ProbeSplit(
        inputs=np.concatenate([s.inputs for s in splits]),
        targets=np.concatenate([s.targets for s in splits]),
        mask=np.concatenate([s.mask for s in splits]),
    )


def masked_accuracy(preds: np.ndarray, split: ProbeSplit) -> float:
    """Fraction of queried positions where the prediction equals the answer."""
    assert preds.shape == split.targets.shape, f"predictions {preds.shape} vs targets {split.targets.shape}"
    return float((preds == split.targets)[split.mask].mean())


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}")


def check_split_sizes(n_train: Any, n_test: Any) -> None:
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)


class Probe(ABC):
    """A task: its size parameters are dataclass fields, validated in ``__post_init__``."""

    name: ClassVar[str]
    causal: ClassVar[bool] = True  # False: a bidirectional encoder task
    description: ClassVar[str]
    # The least value of each integer size parameter, checked when the probe is made.
    minimum: ClassVar[dict[str, int]] = {}
    if TYPE_CHECKING:  # declared for the type checker only: a dataclass would read a base
        # property as its fields' default. Every subclass provides these, as a field or a
        # property: a model for the probe needs this vocabulary and takes sequences of
        # exactly this length.
        @property
        def vocab_size(self) -> int: ...

        @property
        def length(self) -> int: ...

    def __post_init__(self) -> None:
        for name, low in self.minimum.items():
            check_int(name, getattr(self, name), low)

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @abstractmethod
    def split(self, *, seed: int, n_train: int, n_test: int) -> tuple[ProbeSplit, ProbeSplit]:
        """Train and test sets that share no example (see ``example_keys``), the same for the same seed."""

    def example_keys(self, split: ProbeSplit) -> list[bytes]:
        """Identity of each example for the no-overlap rule: the input sequence itself."""
        return [row.tobytes() for row in split.inputs]

    def score(self, split: ProbeSplit, predict: Predict) -> float:
        """Accuracy on the queried positions of ``split``."""
        return masked_accuracy(predict(split.inputs), split)


class SampledProbe(Probe):
    """A probe whose examples are independent draws: the test set is drawn first, and training
    draws that repeat a test example are redrawn."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> ProbeSplit:
        """n fresh examples (duplicates of another split are removed by ``split``)."""

    def split(self, *, seed: int, n_train: int, n_test: int) -> tuple[ProbeSplit, ProbeSplit]:
        check_split_sizes(n_train, n_test)
        test_rng, train_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        test = self.sample(test_rng, n_test)
        held_out = set(self.example_keys(test))
        return self._draw_excluding(train_rng, n_train, held_out), test

    def _draw_excluding(self, rng: np.random.Generator, n: int, held_out: set[bytes]) -> ProbeSplit:
        kept: list[ProbeSplit] = []
        have = 0
        for _ in range(MAX_DRAW_ROUNDS):
            batch = self.sample(rng, n - have)
            fresh = np.array([key not in held_out for key in self.example_keys(batch)])
            kept.append(batch.take(np.flatnonzero(fresh)))
            have += int(fresh.sum())
            if have == n:
                return concat(kept)
        raise ValueError(
            f"probe {self.name!r} with {self.params()} has too few distinct examples to keep "
            f"{n} training examples apart from the test set; make the sequences longer or the vocabulary larger"
        )
