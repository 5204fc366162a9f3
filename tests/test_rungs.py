"""MO-ASHA's pieces against hand-worked cases: non-dominated sorting, the tie-breaks (with ties
and identical points), and promotion decisions on a scripted sequence of asynchronous reports."""
import math

import numpy as np
import pytest

from nas.engine.rungs import (
    RungScheduler, crowding_distance, epsnet_order, nondominated_fronts, promoted, rank_order,
)

# Minimised points. By hand: A=(1,5), B=(2,2), C=(5,1) trade off: none dominates another;
# D=(3,3) is dominated by B only; E=(2,2) is B again; F=(6,6) is dominated by everyone else.
A, B, C, D, E, F = (1, 5), (2, 2), (5, 1), (3, 3), (2, 2), (6, 6)
POINTS = np.array([A, B, C, D, E, F], dtype=float)


def test_fronts_by_hand() -> None:
    assert nondominated_fronts(POINTS) == [[0, 1, 2, 4], [3], [5]]  # identical B and E share front 0
    assert nondominated_fronts(np.array([[1.0, 1.0]])) == [[0]]
    assert nondominated_fronts(np.array([[1.0, 1.0], [1.0, 1.0]])) == [[0, 1]]


def test_crowding_by_hand() -> None:
    # Front {A, B, C}: A and C are boundaries (inf); B's neighbours in each objective are A and
    # C: (5-1)/(5-1) + (5-1)/(5-1) = 2. E, identical to B, adds no spread: 0.
    d = crowding_distance(POINTS[[0, 1, 2, 4]])
    assert d[0] == math.inf and d[2] == math.inf and d[1] == 2.0 and d[3] == 0.0
    assert list(crowding_distance(np.array([[1.0, 2.0], [2.0, 1.0]]))) == [math.inf, math.inf]


def test_rank_order_and_its_tie_breaks() -> None:
    # Front 0 by crowding: A, C (inf, arrival order), B (2), E (0); then D; then F.
    assert rank_order(POINTS, "crowding") == [0, 2, 1, 4, 3, 5]
    # ε-net on front 0 (normalised by its span 4 in both objectives): A first (best in the first
    # objective); farthest from A: C (Chebyshev 1.0, vs 0.75 for B/E); then B (0.75 from C,
    # 0.75 from A), then E (0 from B): A, C, B, E.
    assert epsnet_order(POINTS[[0, 1, 2, 4]]) == [0, 2, 1, 3]
    assert rank_order(POINTS, "epsnet") == [0, 2, 1, 4, 3, 5]


@pytest.mark.parametrize("index, expected", [(0, True), (2, True), (1, False), (5, False)])
def test_promotion_keeps_the_top_third(index: int, expected: bool) -> None:
    assert promoted(POINTS, index, eta=3) is expected  # 6 points, η=3: the best 2 (A, C) continue


def test_an_asynchronous_sequence_of_reports() -> None:
    """Reports arrive one at a time; nothing waits for a rung to fill."""
    s = RungScheduler(rungs=(100, 200), eta=2)
    # Rung 0 (100 tokens): the first report always continues (1 point, keep max(1, 0) = 1).
    first = s.report("t1", 100, (3.0, 3.0))
    assert first is not None and first.keep and (first.rank, first.population) == (0, 1)
    assert s.report("t1", 150, (2.9, 3.0)) is None  # between rungs: no decision
    # t2 is dominated by t1: 2 points, keep 1: t1 stays best, t2 stops.
    assert s.report("t2", 120, (4.0, 4.0)).keep is False  # first report past rung 0 decides there
    # t3 dominates t1: keep 1 of 3 → t3 continues (t1's earlier decision stands).
    assert s.report("t3", 100, (1.0, 1.0)).keep is True
    # t4 is identical to t3 and arrives later: 4 points, keep 2: t3 (crowding inf), then t1 or
    # t4? Front 0 = {t3, t4} identical → t4 gets crowding 0 but is in front 0: rank 1 → kept.
    d4 = s.report("t4", 100, (1.0, 1.0))
    assert d4.keep is True and d4.rank == 1
    # t1 reaches rung 1 first: alone there, it continues.
    assert s.report("t1", 200, (2.0, 3.0)).keep is True
    # A report that skips a rung decides at the lowest rung it has not been ranked at.
    d5 = s.report("t5", 250, (9.0, 9.0))
    assert d5.rung == 0 and d5.keep is False


def test_resume_restores_recorded_points() -> None:
    s = RungScheduler(rungs=(100,), eta=2)
    s.restore("old", 0, (1.0, 1.0))
    assert s.report("new", 100, (2.0, 2.0)).keep is False  # ranked against the restored point
    with pytest.raises(ValueError, match="ascending"):
        RungScheduler(rungs=(200, 100), eta=2)
