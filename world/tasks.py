"""Task assignment: which agent of a swarm takes which task.

`assign_tasks` gives each task the index of its agent, or -1; an agent takes at most one task
per call, busy agents none, so min(tasks, free agents) tasks are assigned by every policy:

- round_robin: the free agents in index order from `start` (wrapping round), first task first.
  Pass the next `start` on the following call to spread work across calls.
- nearest: task by task, in order, the nearest free agent not yet taken (greedy, fast).
- auction: every free agent bids its distance for every task, and the assignment with the
  lowest total of winning bids is taken: the optimum that Bertsekas' auction converges to as
  its bid increment goes to zero, computed exactly by `scipy.optimize.linear_sum_assignment`
  while tasks x free agents <= `AUCTION_EXACT_LIMIT`. Above it, bids are only the k nearest
  agents of each task, won greedily lowest bid first across all tasks, and the tasks left over
  go to `nearest`. Either way the result is kept only if its total distance is no more than
  `nearest`'s (otherwise `nearest`'s is returned), so an auction is never worse than nearest.
"""

from __future__ import annotations

from typing import Literal, get_args

# scipy (below) ships no type information: its imports are ignored, with `unused-ignore`
# in case a mypy override for scipy is added.
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped, unused-ignore]
from scipy.spatial import cKDTree  # type: ignore[import-untyped, unused-ignore]
from scipy.spatial.distance import cdist  # type: ignore[import-untyped, unused-ignore]

__all__ = ["AUCTION_EXACT_LIMIT", "POLICIES", "Policy", "assign_tasks", "total_distance"]

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

Policy = Literal["round_robin", "nearest", "auction"]
POLICIES: tuple[Policy, ...] = get_args(Policy)

AUCTION_EXACT_LIMIT = 1_000_000
"""Largest tasks x free agents solved exactly by the auction (about 0.1 s at 1000 x 1000)."""

_BIDS_PER_TASK = 8


def assign_tasks(
    agent_pos: FloatArray,
    task_pos: FloatArray,
    policy: Policy,
    *,
    busy: NDArray[np.bool_] | None = None,
    start: int = 0,
) -> IndexArray:
    """For each task (m,), the index of the agent assigned to it, or -1 if none is."""
    if agent_pos.ndim != 2 or agent_pos.shape[1] != 2 or task_pos.ndim != 2:
        raise ValueError("agent_pos must be (n, 2) and task_pos (m, 2)")
    if task_pos.shape[1] != 2:
        raise ValueError(f"task_pos must be (m, 2), got {task_pos.shape}")
    n = len(agent_pos)
    if busy is not None and busy.shape != (n,):
        raise ValueError(f"busy must be ({n},), got {busy.shape}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
    free = np.arange(n) if busy is None else np.flatnonzero(~busy)
    out = np.full(len(task_pos), -1, dtype=np.intp)
    if len(free) == 0 or len(task_pos) == 0:
        return out
    if policy == "round_robin":
        cycle = free[np.argsort((free - start) % n, kind="stable")]
        take = min(len(cycle), len(out))
        out[:take] = cycle[:take]
        return out
    nearest = _nearest(agent_pos[free], task_pos)
    if policy == "auction":
        won = _auction(agent_pos[free], task_pos)
        if total_distance(agent_pos[free], task_pos, won) <= total_distance(
            agent_pos[free], task_pos, nearest
        ):
            nearest = won
    assigned = nearest >= 0
    out[assigned] = free[nearest[assigned]]
    return out


def total_distance(agent_pos: FloatArray, task_pos: FloatArray, assignment: IndexArray) -> float:
    """The summed distance from each assigned task to its agent (-1 entries count nothing)."""
    done = np.flatnonzero(assignment >= 0)
    offsets = agent_pos[assignment[done]] - task_pos[done]
    return float(np.sqrt((offsets * offsets).sum(axis=1)).sum())


def _nearest(agent_pos: FloatArray, task_pos: FloatArray) -> IndexArray:
    """Task by task, the nearest agent not yet taken (indices into agent_pos)."""
    n, m = len(agent_pos), len(task_pos)
    out = np.full(m, -1, dtype=np.intp)
    taken = np.zeros(n, dtype=bool)
    tree = cKDTree(agent_pos)
    for task in range(min(m, n)):  # every task in turn gets an agent while any is left
        k = min(n, _BIDS_PER_TASK)
        while True:
            _, idx = tree.query(task_pos[task], k=k)
            idx = np.atleast_1d(idx)
            free = idx[~taken[idx]]
            if len(free):
                break
            k = min(n, k * 4)  # all k nearest are taken: look further
        out[task] = free[0]
        taken[free[0]] = True
    return out


def _auction(agent_pos: FloatArray, task_pos: FloatArray) -> IndexArray:
    """Tasks to agents with the lowest total distance (exact) or lowest bids first (large)."""
    n, m = len(agent_pos), len(task_pos)
    out = np.full(m, -1, dtype=np.intp)
    if n * m <= AUCTION_EXACT_LIMIT:
        tasks, agents = linear_sum_assignment(cdist(task_pos, agent_pos))
        out[tasks] = agents
        return out
    k = min(n, _BIDS_PER_TASK)
    dist, idx = cKDTree(agent_pos).query(task_pos, k=k)
    dist, idx = dist.reshape(m, k), idx.reshape(m, k)
    order = np.argsort(dist, axis=None, kind="stable")
    task_won = np.zeros(m, dtype=bool)
    agent_won = np.zeros(n, dtype=bool)
    for flat in order.tolist():
        task, agent = divmod(flat, k)
        agent = int(idx[task, agent])
        if not task_won[task] and not agent_won[agent]:
            out[task] = agent
            task_won[task] = agent_won[agent] = True
    left = np.flatnonzero(~task_won)
    spare = np.flatnonzero(~agent_won)
    if len(left) and len(spare):
        rest = _nearest(agent_pos[spare], task_pos[left])
        got = rest >= 0
        out[left[got]] = spare[rest[got]]
    return out
