"""Directed reachability on a random DAG (ALPINE, Wang et al. 2024).

One DAG per seed: nodes 0..n-1, an edge i -> j (i < j) with probability ``edge_prob``. An
example is ``s t s u1 … t`` then PAD: a source, a target, and a path from one to the other.
Every edge is a training pair (so the graph is observable); the other reachable pairs are
split, and the test pairs are never a training pair. The score is ALPINE's: from the prompt
``s t s`` the model writes a path greedily, and it counts when every step is an edge and the
path reaches t within the sequence length. The direction matters: i -> j does not give j -> i.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from objectives.probes.base import Predict, Probe, ProbeSplit, check_split_sizes

PROMPT = 3  # s t s: the path is written from position 2 on
MAX_WALK_TRIES = 8  # random walks longer than the sequence allows before taking a shortest path


@dataclass(frozen=True, kw_only=True)
class PathSplit(ProbeSplit):
    """A reachability split carries its graph: the score checks generated paths against it."""

    adjacency: np.ndarray  # (n, n) bool, adjacency[i, j]: edge i -> j

    def take(self, rows: np.ndarray) -> PathSplit:
        return PathSplit(inputs=self.inputs[rows], targets=self.targets[rows], mask=self.mask[rows],
                         adjacency=self.adjacency)


def random_dag(rng: np.random.Generator, n_nodes: int, edge_prob: float) -> np.ndarray:
    """(n, n) bool adjacency with edges only from lower to higher node ids."""
    return np.triu(rng.random((n_nodes, n_nodes)) < edge_prob, k=1)


def reachable(adjacency: np.ndarray) -> np.ndarray:
    """(n, n) bool: reach[i, j] when a path of one or more edges leads from i to j."""
    n = adjacency.shape[0]
    reach = adjacency.copy()
    for i in range(n - 1, -1, -1):  # successors have higher ids, so they are complete already
        for j in np.flatnonzero(adjacency[i]):
            reach[i] |= reach[j]
    return reach


def shortest_hops(adjacency: np.ndarray) -> np.ndarray:
    """(n, n) int: fewest edges from i to j (0 on the diagonal, a large number if unreachable)."""
    n = adjacency.shape[0]
    far = n + 1
    dist = np.where(adjacency, 1, far)
    np.fill_diagonal(dist, 0)
    for i in range(n - 1, -1, -1):
        for j in np.flatnonzero(adjacency[i]):
            dist[i] = np.minimum(dist[i], dist[j] + 1)
    return dist


@dataclass(frozen=True, kw_only=True)
class Reachability(Probe):
    n_nodes: int = 100  # ALPINE's size: enough held-out pairs (~400) for a stable score
    edge_prob: float = 0.1
    length: int = 16
    test_frac: float = 0.2

    name: ClassVar[str] = "reachability"
    description: ClassVar[str] = "write a path between two nodes of a random DAG, for source-target pairs never trained"
    minimum: ClassVar[dict[str, int]] = {"n_nodes": 3, "length": PROMPT + 1}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.edge_prob <= 1.0:
            raise ValueError(f"edge_prob={self.edge_prob!r} must be in (0, 1]")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac={self.test_frac!r} must be in (0, 1), e.g. 0.2")

    @property
    def vocab_size(self) -> int:
        return self.n_nodes + 1  # the nodes, then PAD

    @property
    def pad(self) -> int:
        return self.n_nodes

    @property
    def max_hops(self) -> int:
        return self.length - PROMPT  # s t s u1 .. t fills positions 0 .. 2+hops

    def example_keys(self, split: ProbeSplit) -> list[bytes]:
        return [row[:2].tobytes() for row in split.inputs]  # the (source, target) pair: held out

    def split(self, *, seed: int, n_train: int, n_test: int) -> tuple[PathSplit, PathSplit]:
        check_split_sizes(n_train, n_test)
        graph_rng, pair_rng, train_rng, test_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
        )
        adjacency = random_dag(graph_rng, self.n_nodes, self.edge_prob)
        train_pairs, test_pairs = self.pairs(adjacency, pair_rng)
        test_rows = test_rng.permutation(len(test_pairs))[:n_test]  # each held-out pair at most once
        test = self._paths(adjacency, test_pairs[test_rows], test_rng)
        train = self._paths(adjacency, train_pairs[train_rng.integers(0, len(train_pairs), n_train)], train_rng)
        return train, test

    def pairs(self, adjacency: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) arrays of (s, t) rows: every edge trains; other pairs are split."""
        dist = shortest_hops(adjacency)
        usable = (dist >= 1) & (dist <= self.max_hops)
        edges = np.argwhere(usable & adjacency)
        others = np.argwhere(usable & ~adjacency)
        others = others[rng.permutation(len(others))]
        n_test = int(round(self.test_frac * len(others)))
        if n_test == 0 or n_test == len(others):
            raise ValueError(
                f"the DAG (n_nodes={self.n_nodes}, edge_prob={self.edge_prob}) has {len(others)} reachable "
                "non-adjacent pairs within the length, too few to hold some out; raise n_nodes, edge_prob or length"
            )
        return np.concatenate([edges, others[n_test:]]), others[:n_test]

    def _paths(self, adjacency: np.ndarray, pairs: np.ndarray, rng: np.random.Generator) -> PathSplit:
        n, T = len(pairs), self.length
        reach = reachable(adjacency)
        dist = shortest_hops(adjacency)
        x = np.full((n, T), self.pad, dtype=np.int64)
        mask = np.zeros((n, T), dtype=bool)
        for row, (s, t) in enumerate(pairs):
            path = self._path(adjacency, reach, dist, int(s), int(t), rng)  # [s, u1, ..., t]
            x[row, :2] = s, t
            x[row, 2:2 + len(path)] = path
            mask[row, 2:1 + len(path)] = True  # from each path node, predict the next
        targets = np.full_like(x, self.pad)
        targets[:, :-1] = x[:, 1:]
        return PathSplit(inputs=x, targets=targets, mask=mask, adjacency=adjacency)

    def _path(self, adjacency: np.ndarray, reach: np.ndarray, dist: np.ndarray, s: int, t: int,
              rng: np.random.Generator) -> list[int]:
        """A random walk from s that stays able to reach t; a shortest path if walks run long."""
        for _ in range(MAX_WALK_TRIES):
            path = [s]
            while path[-1] != t and len(path) <= self.max_hops:
                u = path[-1]
                nxt = np.flatnonzero(adjacency[u] & (reach[:, t] | (np.arange(self.n_nodes) == t)))
                path.append(int(rng.choice(nxt)))
            if path[-1] == t:
                return path
        path = [s]
        while path[-1] != t:  # greedy descent along the shortest-hop distance to t
            u = path[-1]
            path.append(int(np.flatnonzero(adjacency[u] & (dist[:, t] == dist[u, t] - 1))[0]))
        return path

    def score(self, split: ProbeSplit, predict: Predict) -> float:
        """Fraction of pairs where the greedily written path is a valid path from s to t."""
        assert isinstance(split, PathSplit), "reachability is scored on the split it made"
        n, T = split.inputs.shape
        edge = np.zeros((self.vocab_size, self.vocab_size), dtype=bool)  # PAD is never an edge
        edge[:-1, :-1] = split.adjacency
        seq = split.inputs.copy()
        seq[:, PROMPT:] = self.pad
        source, target = seq[:, 0], seq[:, 1]
        current, walking, reached = source.copy(), np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        for p in range(PROMPT - 1, T - 1):
            step = predict(seq)[:, p]  # the node after position p
            ok = walking & edge[current, step]
            reached |= ok & (step == target)
            walking = ok & (step != target)
            if not walking.any():
                break
            seq[walking, p + 1] = step[walking]
            current = np.where(walking, step, current)
        return float(reached.mean())
