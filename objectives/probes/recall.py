"""Causal probes of in-context lookup: MQAR, induction head, k-hop induction.

Each needs a query token to attend to *another* token chosen by content (the key it matches,
or the token after an earlier copy of itself); a symmetric score K·Kᵀ prefers the query's own
position, which is what these probes are meant to expose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from objectives.probes.base import MAX_DRAW_ROUNDS, ProbeSplit, SampledProbe, check_int


def _distinct(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """(n, k) ints in [0, population), distinct within each row."""
    return np.argsort(rng.random((n, population)), axis=1)[:, :k]


@dataclass(frozen=True, kw_only=True)
class MQAR(SampledProbe):
    """Multi-query associative recall (Zoology, Arora et al. 2023).

    ``k1 v1 k2 v2 … kN vN`` then, in the rest of the sequence, every key once more in a random
    order at random 2-token slots, each followed by its value; gaps hold PAD (token 0). Keys
    come from the lower half of the vocabulary, values from the upper half. Queried: each
    repeated key, whose answer is its value (the next token).
    """

    vocab_size: int = 64
    length: int = 32
    n_pairs: int = 4

    name: ClassVar[str] = "mqar"
    description: ClassVar[str] = "recall the value bound to each key seen earlier in the sequence"
    minimum: ClassVar[dict[str, int]] = {"vocab_size": 4}
    PAD: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_pairs", self.n_pairs, 1, self.vocab_size // 2 - 1)
        if self.length < 4 * self.n_pairs:
            raise ValueError(
                f"length={self.length} is too short for n_pairs={self.n_pairs}: the pairs and the queries "
                f"need at least 4*n_pairs = {4 * self.n_pairs} tokens"
            )

    def sample(self, rng: np.random.Generator, n: int) -> ProbeSplit:
        N, T, half = self.n_pairs, self.length, self.vocab_size // 2
        keys = _distinct(rng, n, half - 1, N) + 1  # (n, N) in [1, half)
        values = _distinct(rng, n, self.vocab_size - half, N) + half  # (n, N) in [half, V)
        x = np.full((n, T), self.PAD, dtype=np.int64)
        x[:, 0:2 * N:2], x[:, 1:2 * N:2] = keys, values
        n_slots = (T - 2 * N) // 2
        slots = np.sort(_distinct(rng, n, n_slots, N), axis=1)  # (n, N) query slots, in order
        order = np.argsort(rng.random((n, N)), axis=1)  # which pair each slot asks about
        rows = np.arange(n)[:, None]
        where = 2 * N + 2 * slots  # (n, N) position of each query key
        x[rows, where], x[rows, where + 1] = keys[rows, order], values[rows, order]
        mask = np.zeros((n, T), dtype=bool)
        mask[rows, where] = True
        targets = np.zeros_like(x)
        targets[:, :-1] = x[:, 1:]  # the value follows its key
        return ProbeSplit(inputs=x, targets=targets, mask=mask)


@dataclass(frozen=True, kw_only=True)
class Induction(SampledProbe):
    """A random sequence whose last token appeared exactly once before: predict the token that
    followed that earlier occurrence. Queried: the last position only."""

    vocab_size: int = 32
    length: int = 32

    name: ClassVar[str] = "induction"
    description: ClassVar[str] = "at the end, predict what followed the earlier copy of the last token"
    minimum: ClassVar[dict[str, int]] = {"vocab_size": 3, "length": 3}

    def sample(self, rng: np.random.Generator, n: int) -> ProbeSplit:
        T = self.length
        trigger = rng.integers(0, self.vocab_size, size=(n, 1))  # (n, 1)
        # Fill from the vocabulary minus the trigger, so the trigger's earlier copy is unique.
        x = rng.integers(0, self.vocab_size - 1, size=(n, T), dtype=np.int64)
        x += x >= trigger
        rows = np.arange(n)
        where = rng.integers(0, T - 2, size=n)  # earlier copy; its follower is at where+1 <= T-2
        x[rows, where] = trigger[:, 0]
        x[:, -1] = trigger[:, 0]
        targets = np.zeros_like(x)
        targets[:, -1] = x[rows, where + 1]
        mask = np.zeros((n, T), dtype=bool)
        mask[:, -1] = True
        return ProbeSplit(inputs=x, targets=targets, mask=mask)


def hop_positions(x: np.ndarray, k: int) -> np.ndarray:
    """find_k of Sanford, Hsu & Telgarsky (2024) for every position; -1 where undefined.

    prev(i) = 1 + (latest j < i with x_j = x_i); find_0(i) = i; find_k = prev(find_{k-1}).
    """
    n, T = x.shape
    rows = np.arange(n)
    last = np.full((n, int(x.max()) + 1), -1)  # latest position of each symbol so far
    prev = np.full((n, T), -1)
    for t in range(T):
        seen = last[rows, x[:, t]]
        prev[:, t] = np.where(seen >= 0, seen + 1, -1)
        last[rows, x[:, t]] = t
    find = np.broadcast_to(np.arange(T), (n, T)).copy()
    for _ in range(k):
        find = np.where(find >= 0, prev[rows[:, None], np.maximum(find, 0)], -1)
    return find


@dataclass(frozen=True, kw_only=True)
class KHop(SampledProbe):
    """k-hop induction: from each position, k times jump to the token after the latest earlier
    occurrence of the current token; predict the token reached. Queried: every position where
    all k hops exist. k=1 is the induction head at every position."""

    n_symbols: int = 4
    length: int = 32
    k: int = 2

    name: ClassVar[str] = "khop"
    description: ClassVar[str] = "follow k chained induction lookups from every position"
    minimum: ClassVar[dict[str, int]] = {"n_symbols": 2, "length": 2, "k": 0}

    @property
    def vocab_size(self) -> int:
        return self.n_symbols

    def sample(self, rng: np.random.Generator, n: int) -> ProbeSplit:
        x = self._draw_askable(rng, n)
        find = hop_positions(x, self.k)
        targets = np.take_along_axis(x, np.maximum(find, 0), axis=1)
        return ProbeSplit(inputs=x, targets=targets, mask=find >= 0)

    def _draw_askable(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, T) sequences, each with at least one position where all k hops exist (a row
        without one asks nothing, so it is redrawn)."""
        parts: list[np.ndarray] = []
        have = 0
        for _ in range(MAX_DRAW_ROUNDS):
            x = rng.integers(0, self.n_symbols, size=(n - have, self.length), dtype=np.int64)
            x = x[(hop_positions(x, self.k) >= 0).any(axis=1)]
            parts.append(x)
            have += len(x)
            if have == n:
                return np.concatenate(parts)
        raise ValueError(
            f"khop with length={self.length}, n_symbols={self.n_symbols}, k={self.k} rarely has a position "
            "where all k hops exist; use a longer length or fewer symbols"
        )
