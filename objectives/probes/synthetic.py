"""The QKV-variants paper's synthetic suite: bidirectional per-token classification over digits.

Input: a random list of digits 0-9 of a fixed length; output at each position is a digit of
the transformed list; every position is queried. REVERSE and SWAP need each position to read
one other, fixed position (i -> n-1-i, i -> i±n/2); SORT needs counting; SUB and COPY need
only the token itself, so they check that a design trains at all.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from objectives.probes.base import ProbeSplit, SampledProbe

N_DIGITS = 10


@dataclass(frozen=True, kw_only=True)
class DigitTask(SampledProbe):
    length: int = 16

    causal: ClassVar[bool] = False
    vocab_size: ClassVar[int] = N_DIGITS
    minimum: ClassVar[dict[str, int]] = {"length": 2}

    def sample(self, rng: np.random.Generator, n: int) -> ProbeSplit:
        x = rng.integers(0, N_DIGITS, size=(n, self.length), dtype=np.int64)  # (N, T)
        return ProbeSplit(inputs=x, targets=self.transform(x), mask=np.ones(x.shape, dtype=bool))

    @staticmethod
    @abstractmethod
    def transform(x: np.ndarray) -> np.ndarray:
        """(N, T) digits -> (N, T) answers."""


class Reverse(DigitTask):
    name = "reverse"
    description = "reverse the list of digits"

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        return x[:, ::-1].copy()


class Sort(DigitTask):
    name = "sort"
    description = "sort the digits ascending"

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=1)


class Sub(DigitTask):
    name = "sub"
    description = "replace each digit x by 9 - x"

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        return (N_DIGITS - 1) - x


class Swap(DigitTask):
    name = "swap"
    description = "exchange the two halves of the list"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length % 2:
            raise ValueError(f"length={self.length} must be even for swap (two equal halves); use {self.length + 1}")

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        half = x.shape[1] // 2
        return np.concatenate([x[:, half:], x[:, :half]], axis=1)


class Copy(DigitTask):
    name = "copy"
    description = "repeat the list unchanged"

    @staticmethod
    def transform(x: np.ndarray) -> np.ndarray:
        return x.copy()


SYNTHETIC_TASKS: tuple[type[DigitTask], ...] = (Reverse, Sort, Sub, Swap, Copy)
