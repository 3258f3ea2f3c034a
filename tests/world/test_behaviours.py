"""The behaviour registry: batching by group, priorities, cooldowns, errors, the built-ins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from world.behaviours import (
    Behaviour,
    BehaviourRegistry,
    Group,
    View,
    default_registry,
)
from world.flocking import FlockParams, flock_step

BOUNDS = (0.0, 0.0, 100.0, 100.0)


def _world(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)) * 100, rng.uniform(-1, 1, (n, 2))


def _go_home(view: View, params: Mapping[str, Any], dt: float) -> None:
    view.pos[:] = params["home"]
    view.vel[:] = 0.0


def _low_battery(view: View) -> np.ndarray:
    low: np.ndarray = view.extra["battery"] < 0.2
    return low


def _nudge(view: View, params: Mapping[str, Any], dt: float) -> None:
    view.pos += 1.0


def _explode(view: View, params: Mapping[str, Any], dt: float) -> None:
    view.pos += 5.0  # changes made before raising must not stick
    raise RuntimeError("boom")


def test_register_get_and_ids() -> None:
    registry = default_registry()
    assert registry.ids() == ["flocking", "formation", "tasks", "drift", "hold"]
    registry.register(Behaviour(id="nudge", action=_nudge))
    assert registry.get("nudge").action is _nudge
    assert "nudge" in registry
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Behaviour(id="hold", action=_nudge))
    with pytest.raises(KeyError, match="nudge"):
        registry.get("missing")


def test_groups_run_their_own_behaviour_and_paused_or_ungrouped_rows_stay() -> None:
    registry = default_registry()
    pos, vel = _world(60)
    group_index = np.repeat(np.array([0, 1, 2, -1], dtype=np.int32), 15)
    rng = np.random.default_rng(1)
    group_index = group_index[rng.permutation(60)]
    groups = [
        Group("flocking", {"speed": 2.0, "vision": 30.0}, bounds=BOUNDS),
        Group("hold"),
        Group("flocking", {}, paused=True),
    ]
    expect_pos, expect_vel = pos.copy(), vel.copy()
    flocking = np.flatnonzero(group_index == 0)
    fp, fv = pos[flocking], vel[flocking]
    flock_step(fp, fv, FlockParams(speed=2.0 * 0.5, vision=30.0), bounds=BOUNDS)
    expect_pos[flocking], expect_vel[flocking] = fp, fv
    expect_vel[group_index == 1] = 0.0

    result = registry.step(pos, vel, group_index, groups, tick=1, dt=0.5)

    np.testing.assert_array_equal(pos, expect_pos)
    np.testing.assert_array_equal(vel, expect_vel)
    assert result.stepped == 30 and result.errors == 0
    assert result.by_behaviour == {"flocking": 15, "hold": 15}


def test_an_override_with_higher_priority_takes_the_rows_its_condition_picks() -> None:
    registry = default_registry()
    registry.register(
        Behaviour(
            id="return-home",
            action=_go_home,
            condition=_low_battery,
            priority=10,
            applies_to_all=True,
            defaults={"home": (1.0, 2.0)},
        )
    )
    pos, vel = _world(10)
    battery = np.linspace(0.0, 0.9, 10)  # rows 0 and 1 are low
    before = pos.copy()
    result = registry.step(
        pos,
        vel,
        np.zeros(10, np.int32),
        [Group("hold")],
        tick=0,
        dt=1.0,
        extra={"battery": battery},
    )
    np.testing.assert_array_equal(pos[:2], [[1.0, 2.0], [1.0, 2.0]])
    np.testing.assert_array_equal(pos[2:], before[2:])
    assert result.by_behaviour == {"return-home": 2, "hold": 8}


def test_a_lower_priority_override_loses_to_the_groups_behaviour() -> None:
    registry = default_registry()
    registry.register(Behaviour(id="nudge", action=_nudge, priority=-1, applies_to_all=True))
    pos, vel = _world(5)
    result = registry.step(pos, vel, np.zeros(5, np.int32), [Group("hold")], tick=0, dt=1.0)
    assert result.by_behaviour == {"hold": 5}


def test_cooldown_follows_the_entity_not_the_row() -> None:
    registry = default_registry()
    registry.register(
        Behaviour(
            id="nudge",
            action=_nudge,
            condition=lambda view: view.extra["want"],
            priority=1,
            cooldown=2,
            applies_to_all=True,
        )
    )
    pos, vel = _world(4)
    ids = ["a", "b", "c", "d"]
    groups = [Group("hold")]
    index = np.zeros(4, np.int32)
    ran, moved = [], []
    for tick in range(5):
        want = np.array([tick > 0 or i == "a" for i in ids])  # only "a" wants it at first
        if tick == 2:
            order = [3, 2, 1, 0]  # the table was compacted: rows move, ids with them
            pos, vel, ids = pos[order], vel[order], [ids[i] for i in order]
        before = pos.copy()
        result = registry.step(
            pos, vel, index, groups, ids=ids, tick=tick, dt=1.0, extra={"want": want}
        )
        ran.append(result.by_behaviour.get("nudge", 0))
        moved.append(sorted(ids[i] for i in np.flatnonzero((pos != before).any(axis=1))))
    # "a" ran at 0, the others at 1: each is skipped for the next two ticks, then runs again.
    assert ran == [1, 3, 0, 1, 3]
    assert moved == [["a"], ["b", "c", "d"], [], ["a"], ["b", "c", "d"]]
    with pytest.raises(ValueError, match="ids"):
        registry.step(pos, vel, index, groups, tick=9, dt=1.0)


def test_a_failing_action_is_counted_and_its_rows_keep_their_state() -> None:
    registry = default_registry()
    registry.register(Behaviour(id="explode", action=_explode))
    registry.register(Behaviour(id="nan", action=lambda v, p, dt: v.pos.fill(np.nan)))
    pos, vel = _world(9)
    group_index = np.array([0, 1, 2, 0, 1, 2, 3, 3, 3], dtype=np.int32)
    groups = [Group("explode"), Group("nudge-that-is-not-registered"), Group("nan"), Group("drift")]
    before = pos.copy()
    result = registry.step(pos, vel, group_index, groups, tick=0, dt=1.0)
    np.testing.assert_array_equal(pos[:6], before[:6])
    assert not np.array_equal(pos[6:], before[6:])  # the healthy group still moved
    assert result.errors == 6 and result.stepped == 3
    assert result.errors_by_behaviour == {
        "explode": 2,
        "nudge-that-is-not-registered": 2,
        "nan": 2,
    }
    failure = result.failures[0]
    assert failure.behaviour == "explode" and "boom" in failure.reason
    assert isinstance(failure.__cause__, RuntimeError)


def test_a_failing_condition_counts_as_false() -> None:
    registry = default_registry()

    def broken(view: View) -> np.ndarray:
        raise KeyError("battery")

    registry.register(
        Behaviour(id="go", action=_nudge, condition=broken, priority=5, applies_to_all=True)
    )
    pos, vel = _world(3)
    result = registry.step(pos, vel, np.zeros(3, np.int32), [Group("hold")], tick=0, dt=1.0)
    assert result.by_behaviour == {"hold": 3}
    assert result.errors_by_behaviour == {"go": 3}


def test_flocking_counts_the_halo() -> None:
    registry = default_registry()
    pos = np.array([[50.0, 50.0]])
    vel = np.array([[1.0, 0.0]])
    halo_pos, halo_vel = np.array([[50.0, 55.0]]), np.array([[0.0, 1.0]])
    registry.step(
        pos,
        vel,
        np.zeros(1, np.int32),
        [Group("flocking")],
        tick=0,
        dt=1.0,
        halo_pos=halo_pos,
        halo_vel=halo_vel,
    )
    assert vel[0, 1] > 0


def test_formation_gathers_the_group_into_its_slots() -> None:
    registry = default_registry()
    pos, vel = _world(20, seed=3)
    params = {"shape": "grid", "spacing": 4.0, "center": (50.0, 50.0), "max_speed": 10.0}
    for tick in range(40):
        registry.step(
            pos, vel, np.zeros(20, np.int32), [Group("formation", params)], tick=tick, dt=1.0
        )
    assert pdist(pos).min() >= 4.0 * 0.99
    np.testing.assert_allclose(pos.mean(axis=0), [50.0, 50.0], atol=1e-6)
    np.testing.assert_allclose(vel, 0.0, atol=1e-6)  # arrived


def test_tasks_send_one_agent_to_each_task() -> None:
    registry = default_registry()
    pos, vel = _world(8, seed=4)
    tasks = [[10.0, 10.0], [90.0, 90.0], [10.0, 90.0]]
    group = Group("tasks", {"tasks": tasks, "policy": "auction", "max_speed": 5.0})
    for tick in range(40):
        registry.step(pos, vel, np.zeros(8, np.int32), [group], tick=tick, dt=1.0)
    for task in tasks:
        assert (np.hypot(*(pos - task).T) < 1e-9).sum() == 1


def test_drift_goes_straight_at_its_speed_and_bounces_off_the_bounds() -> None:
    registry = default_registry()
    pos = np.array([[50.0, 50.0], [99.0, 50.0]])
    vel = np.array([[0.0, 3.0], [3.0, 4.0]])
    group = Group("drift", {"speed": 2.0}, bounds=BOUNDS)
    registry.step(pos, vel, np.zeros(2, np.int32), [group], tick=0, dt=1.0)
    np.testing.assert_allclose(pos[0], [50.0, 52.0])
    assert pos[1, 0] < 100.0 and vel[1, 0] < 0  # reflected at the east wall
    np.testing.assert_allclose(np.hypot(*vel.T), 2.0)


def test_a_registry_without_behaviours_only_reports() -> None:
    registry = BehaviourRegistry()
    pos, vel = _world(3)
    result = registry.step(pos, vel, np.zeros(3, np.int32), [Group("flocking")], tick=0, dt=1.0)
    assert result.errors == 3 and result.stepped == 0
    empty = registry.step(
        np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int32), [], tick=0, dt=1
    )
    assert empty.stepped == 0 and empty.errors == 0
