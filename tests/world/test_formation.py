"""Formation layouts, slot assignment and steering onto slots."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from world.formation import SHAPES, Shape, assign_slots, formation_targets, steer_to


def _total(pos: np.ndarray, targets: np.ndarray, slots: np.ndarray) -> float:
    return float(np.linalg.norm(targets[slots] - pos, axis=1).sum())


@pytest.mark.parametrize("shape", ["line", "grid", "wedge"])
@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_slots_are_spacing_apart_and_centred(shape: Shape, n: int) -> None:
    slots = formation_targets(shape, n, (10.0, -4.0), 3.0, heading=0.7)
    assert slots.shape == (n, 2)
    assert pdist(slots).min() >= 3.0 * 0.99
    np.testing.assert_allclose(slots.mean(axis=0), [10.0, -4.0], atol=1e-9)


@pytest.mark.parametrize("n", [2, 5, 40])
def test_circle_slots_lie_on_the_circle_spacing_apart(n: int) -> None:
    slots = formation_targets("circle", n, (5.0, 5.0), 2.0)
    radius = np.hypot(*(slots - [5.0, 5.0]).T)
    np.testing.assert_allclose(radius, radius[0])
    assert radius[0] > 0
    assert pdist(slots).min() == pytest.approx(2.0)


def test_heading_turns_the_formation() -> None:
    # A line abreast stands across the heading: along y for heading 0, along x for pi/2.
    east = formation_targets("line", 5, (0.0, 0.0), 1.0, heading=0.0)
    north = formation_targets("line", 5, (0.0, 0.0), 1.0, heading=math.pi / 2)
    np.testing.assert_allclose(east[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(north[:, 1], 0.0, atol=1e-12)
    # A wedge's leader is ahead of the others along the heading.
    wedge = formation_targets("wedge", 7, (0.0, 0.0), 1.0, heading=math.pi / 2)
    assert wedge[0, 1] > wedge[1:, 1].max()


def test_edge_cases_and_bad_input() -> None:
    for shape in SHAPES:
        assert formation_targets(shape, 0, (0.0, 0.0), 1.0).shape == (0, 2)
        np.testing.assert_allclose(formation_targets(shape, 1, (2.0, 3.0), 1.0), [[2.0, 3.0]])
    with pytest.raises(ValueError, match="shape"):
        formation_targets("blob", 3, (0.0, 0.0), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        formation_targets("line", 3, (0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match=r"both be \(n, 2\)"):
        assign_slots(np.zeros((3, 2)), np.zeros((4, 2)))


def test_exact_assignment_is_the_optimum() -> None:
    rng = np.random.default_rng(5)
    pos = rng.random((6, 2)) * 10
    targets = formation_targets("circle", 6, (5.0, 5.0), 2.0)
    slots = assign_slots(pos, targets)
    best = min(_total(pos, targets, np.array(p)) for p in itertools.permutations(range(6)))
    assert sorted(slots.tolist()) == list(range(6))
    assert _total(pos, targets, slots) == pytest.approx(best)


@pytest.mark.parametrize("shape", SHAPES)
def test_fallback_assignment_is_a_permutation_close_to_the_optimum(shape: Shape) -> None:
    rng = np.random.default_rng(6)
    n = 400
    targets = formation_targets(shape, n, (50.0, 50.0), 2.0, heading=0.4)
    scattered = rng.random((n, 2)) * 100
    nearby = targets[rng.permutation(n)] + rng.normal(0.0, 0.2, (n, 2))
    for pos, slack in ((scattered, 1.15), (nearby, 6.0)):
        fallback = assign_slots(pos, targets, exact_limit=0)
        assert sorted(fallback.tolist()) == list(range(n))
        exact = _total(pos, targets, assign_slots(pos, targets))
        assert _total(pos, targets, fallback) <= exact * slack
        assert _total(pos, targets, fallback) < _total(pos, targets, np.arange(n)) / 1.1


def test_steer_arrives_without_overshoot_and_respects_max_speed() -> None:
    pos = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]])
    vel = np.zeros((3, 2))
    targets = np.array([[3.0, 4.0], [10.0, 0.5], [5.0, 5.0]])
    steer_to(pos, vel, targets, max_speed=1.0, gain=2.0)
    np.testing.assert_allclose(pos, [[0.6, 0.8], [10.0, 0.5], [5.0, 5.0]])
    np.testing.assert_allclose(vel, [[0.6, 0.8], [0.0, 0.5], [0.0, 0.0]])
    for _ in range(10):
        steer_to(pos, vel, targets, max_speed=1.0, gain=2.0)
    np.testing.assert_allclose(pos, targets)
    np.testing.assert_allclose(vel, 0.0)


def test_steer_with_a_small_gain_slows_down_on_approach() -> None:
    pos = np.array([[0.0, 0.0]])
    vel = np.zeros((1, 2))
    target = np.array([[10.0, 0.0]])
    steps = []
    for _ in range(5):
        before = pos[0, 0]
        steer_to(pos, vel, target, max_speed=3.0, gain=0.5)
        steps.append(pos[0, 0] - before)
    assert steps[0] == pytest.approx(3.0)  # capped by max_speed far away
    assert steps == sorted(steps, reverse=True) and steps[-1] < 3.0
    assert (pos[:, 0] < 10.0).all()  # approaching, never past
