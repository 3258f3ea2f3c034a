"""Task assignment policies on seeded random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from world import tasks as tasks_module
from world.tasks import POLICIES, Policy, assign_tasks, total_distance


def _inputs(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)) * 100, rng.random((m, 2)) * 100, rng.random(n) < 0.25


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("n", "m"), [(40, 25), (25, 40), (60, 60)])
def test_each_free_agent_takes_at_most_one_task(policy: Policy, n: int, m: int) -> None:
    agents, tasks, busy = _inputs(n, m, seed=n * m)
    out = assign_tasks(agents, tasks, policy, busy=busy)
    assert out.shape == (m,)
    assigned = out[out >= 0]
    assert len(assigned) == min(m, int((~busy).sum()))
    assert len(set(assigned.tolist())) == len(assigned)
    assert not busy[assigned].any()


def test_round_robin_starts_at_start_and_wraps_over_free_agents() -> None:
    agents = np.zeros((6, 2))
    tasks = np.zeros((5, 2))
    busy = np.array([False, True, False, False, True, False])
    out = assign_tasks(agents, tasks, "round_robin", busy=busy, start=3)
    assert out.tolist() == [3, 5, 0, 2, -1]


def test_nearest_gives_each_task_in_turn_the_nearest_free_agent() -> None:
    agents = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0]])
    tasks = np.array([[0.5, 0.0], [0.2, 0.0], [9.0, 0.0]])
    out = assign_tasks(agents, tasks, "nearest", busy=np.array([False, False, False]))
    assert out.tolist() == [0, 2, 1]  # task 1 finds agent 0 taken: agent 2 is next nearest
    only_one = assign_tasks(agents, tasks, "nearest", busy=np.array([True, False, True]))
    assert only_one.tolist() == [1, -1, -1]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "m"), [(30, 30), (50, 20), (20, 50)])
def test_auction_is_never_worse_than_nearest(seed: int, n: int, m: int) -> None:
    agents, tasks, busy = _inputs(n, m, seed)
    auction = assign_tasks(agents, tasks, "auction", busy=busy)
    nearest = assign_tasks(agents, tasks, "nearest", busy=busy)
    assert (auction >= 0).sum() == (nearest >= 0).sum()
    assert total_distance(agents, tasks, auction) <= total_distance(agents, tasks, nearest) + 1e-9


def test_auction_beats_greedy_nearest_where_greed_costs() -> None:
    # Task 0 grabs agent 0 (0.9 away); task 1 is then left with agent 1, 2.0 away. Better:
    # task 0 takes agent 1 (1.1), task 1 takes agent 0 (0.1): 1.2 instead of 2.9.
    agents = np.array([[0.0, 0.0], [2.0, 0.0]])
    tasks = np.array([[0.9, 0.0], [0.0, 0.1]])
    assert assign_tasks(agents, tasks, "nearest").tolist() == [0, 1]
    assert assign_tasks(agents, tasks, "auction").tolist() == [1, 0]


def test_large_auction_uses_lowest_bids_first_and_stays_no_worse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks_module, "AUCTION_EXACT_LIMIT", 0)  # the sparse greedy path
    agents, tasks, busy = _inputs(300, 200, seed=9)
    auction = assign_tasks(agents, tasks, "auction", busy=busy)
    nearest = assign_tasks(agents, tasks, "nearest", busy=busy)
    assigned = auction[auction >= 0]
    assert len(assigned) == 200 and len(set(assigned.tolist())) == 200
    assert not busy[assigned].any()
    assert total_distance(agents, tasks, auction) <= total_distance(agents, tasks, nearest)


def test_nothing_to_assign() -> None:
    agents, tasks, _ = _inputs(5, 3, seed=1)
    for policy in POLICIES:
        assert assign_tasks(agents, tasks, policy, busy=np.ones(5, dtype=bool)).tolist() == [-1] * 3
        assert assign_tasks(agents, np.zeros((0, 2)), policy).shape == (0,)
        assert assign_tasks(np.zeros((0, 2)), tasks, policy).tolist() == [-1] * 3
    with pytest.raises(ValueError, match="policy"):
        assign_tasks(agents, tasks, "lottery")  # type: ignore[arg-type]
