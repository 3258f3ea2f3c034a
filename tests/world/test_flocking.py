"""The boids kernel: against the O(n^2) reference, against Mesa's own Boid, and at the edges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from world.flocking import FlockParams, flock_step, flock_step_reference

Arrays = tuple[np.ndarray, np.ndarray]


def _boids(n: int, side: float, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)) * side, rng.uniform(-1, 1, (n, 2))


# Each case takes a different neighbour search: the cell list on a torus (neighbour cells
# wrapping around; three cells wide is the narrowest it takes), the periodic k-d tree (a torus
# under three cells wide), the cell list inside walls and in open space, and the k-d tree for
# sparse open space.
CASES = {
    "torus-grid": dict(side=60.0, bounds=(0.0, 0.0, 60.0, 60.0), torus=True),
    "torus-three-cells": dict(side=31.0, bounds=(0.0, 0.0, 31.0, 31.0), torus=True),
    "torus-offset": dict(side=60.0, bounds=(-30.0, 10.0, 30.0, 70.0), torus=True),
    "torus-tree": dict(side=25.0, bounds=(0.0, 0.0, 25.0, 25.0), torus=True),
    "walls": dict(side=60.0, bounds=(0.0, 0.0, 60.0, 60.0), torus=False),
    "open": dict(side=60.0, bounds=None, torus=False),
    "open-sparse-tree": dict(side=5000.0, bounds=None, torus=False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("halo", [False, True])
def test_kernel_matches_the_all_pairs_reference(case: str, halo: bool) -> None:
    spec: dict[str, Any] = CASES[case]
    side = spec["side"]
    pos, vel = _boids(300, side, seed=1)
    if spec["bounds"] is not None:
        pos += spec["bounds"][:2]
    kwargs: dict[str, Any] = dict(bounds=spec["bounds"], torus=spec["torus"])
    if halo:
        halo_pos, halo_vel = _boids(40, side * 1.5, seed=2)
        halo_pos -= side * 0.5  # some beyond the bounds, as across a district border
        if spec["bounds"] is not None:
            halo_pos += spec["bounds"][:2]
        kwargs.update(halo_pos=halo_pos, halo_vel=halo_vel)
    params = FlockParams(vision=10.0, separation=3.0, speed=1.5)
    fast = (pos.copy(), vel.copy())
    slow = (pos.copy(), vel.copy())
    for _ in range(8):
        flock_step(*fast, params, **kwargs)
        flock_step_reference(*slow, params, **kwargs)
    np.testing.assert_allclose(fast[0], slow[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast[1], slow[1], rtol=0, atol=1e-9)
    assert not np.allclose(fast[0], pos)  # they did move


def _load_mesa() -> Any:
    pytest.importorskip("mesa", reason="Mesa (the `bench` extra) is not installed")
    from benchmarks.flocking import load_boid_flockers

    return load_boid_flockers()


def _mesa_synchronous_step(agents: list[Any], space: Any) -> None:
    """Mesa's `Boid.step` for every boid from the same state (Mesa itself goes one by one)."""
    before_pos = space.agent_positions.copy()
    before_dir = [a.direction.copy() for a in agents]
    after = []
    for i, agent in enumerate(agents):
        agent.step()
        after.append((agent.position.copy(), agent.direction.copy()))
        space.agent_positions[i] = before_pos[i]
        agent.direction = before_dir[i].copy()
    for i, (agent, (p, d)) in enumerate(zip(agents, after, strict=True)):
        space.agent_positions[i] = p
        agent.direction = d


def test_kernel_takes_the_same_steps_as_mesas_boid() -> None:
    boid_flockers = _load_mesa()
    side = 40.0  # three cells of vision 10: the cell-list search with its torus ghosts
    model = boid_flockers(population_size=50, width=side, height=side, seed=11)
    agents = list(model.space.active_agents)
    pos = model.space.agent_positions.copy()
    vel = np.array([a.direction for a in agents], dtype=np.float64)
    for _ in range(5):
        _mesa_synchronous_step(agents, model.space)
        flock_step(pos, vel, FlockParams(), bounds=(0.0, 0.0, side, side), torus=True)
    mesa_pos = model.space.agent_positions
    mesa_dir = np.array([a.direction for a in agents])
    across_seam = (pos - mesa_pos + side / 2) % side - side / 2
    np.testing.assert_allclose(across_seam, 0.0, atol=1e-9)
    np.testing.assert_allclose(vel, mesa_dir, atol=1e-12)


def test_a_boid_alone_keeps_its_unnormalised_heading_as_mesa_does() -> None:
    pos = np.array([[10.0, 10.0], [50.0, 50.0]])
    vel = np.array([[0.3, 0.4], [-2.0, 0.0]])
    flock_step(pos, vel, FlockParams(speed=2.0))
    np.testing.assert_allclose(vel, [[0.3, 0.4], [-2.0, 0.0]])
    np.testing.assert_allclose(pos, [[10.6, 10.8], [46.0, 50.0]])


def test_two_close_boids_turn_apart_and_align_with_unit_headings() -> None:
    pos = np.array([[0.0, 0.0], [1.0, 0.0]])
    vel = np.array([[0.0, 1.0], [0.0, 1.0]])
    flock_step(pos, vel, FlockParams(separation=2.0, cohere=0.0, match=0.0, separate=1.0))
    assert vel[0, 0] < 0 < vel[1, 0]  # pushed away from each other along x
    np.testing.assert_allclose(np.hypot(vel[:, 0], vel[:, 1]), 1.0)


def test_neighbours_across_the_torus_seam_count() -> None:
    params = FlockParams(cohere=1.0, separate=0.0, match=0.0, separation=0.0, speed=0.0)
    pos = np.array([[0.5, 50.0], [99.5, 50.0]])
    vel = np.array([[0.0, 1.0], [0.0, 1.0]])
    flock_step(pos, vel, params, bounds=(0.0, 0.0, 100.0, 100.0), torus=True)
    assert vel[0, 0] < 0 < vel[1, 0]  # each turns toward the other, across the edge


def test_halo_boids_are_neighbours_but_do_not_move() -> None:
    pos = np.array([[10.0, 10.0]])
    vel = np.array([[1.0, 0.0]])
    halo_pos = np.array([[10.0, 15.0]])
    halo_vel = np.array([[0.0, 1.0]])
    flock_step(pos, vel, FlockParams(), halo_pos=halo_pos, halo_vel=halo_vel)
    assert vel[0, 1] > 0  # turned toward and along the halo boid
    np.testing.assert_array_equal(halo_pos, [[10.0, 15.0]])
    np.testing.assert_array_equal(halo_vel, [[0.0, 1.0]])


def test_torus_wraps_positions_into_the_bounds() -> None:
    pos = np.array([[99.5, 0.2], [-9.7, 20.0]])
    vel = np.array([[1.0, 0.0], [0.0, -1.0]])
    flock_step(pos, vel, FlockParams(), bounds=(-10.0, 0.0, 100.0, 100.0), torus=True)
    np.testing.assert_allclose(pos, [[-9.5, 0.2], [-9.7, 19.0]])


def test_walls_reflect_the_heading_and_keep_boids_inside() -> None:
    pos = np.array([[99.5, 50.0], [50.0, 0.5]])
    vel = np.array([[1.0, 0.0], [0.0, -1.0]])
    flock_step(pos, vel, FlockParams(), bounds=(0.0, 0.0, 100.0, 100.0))
    np.testing.assert_allclose(vel, [[-1.0, 0.0], [0.0, 1.0]])
    assert (pos >= 0).all() and (pos < 100).all()
    assert pos[0, 0] == pytest.approx(100.0) and pos[1, 1] == 0.0


def test_no_boids_is_a_no_op_even_with_a_halo() -> None:
    pos = np.zeros((0, 2))
    vel = np.zeros((0, 2))
    flock_step(pos, vel, FlockParams(), halo_pos=np.ones((3, 2)), halo_vel=np.ones((3, 2)))
    flock_step_reference(pos, vel, FlockParams())
    assert pos.shape == (0, 2)


def test_bad_input_is_refused() -> None:
    pos, vel = _boids(5, 10.0, seed=3)
    with pytest.raises(ValueError, match="torus needs bounds"):
        flock_step(pos, vel, FlockParams(), torus=True)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        flock_step(pos, vel[:4], FlockParams())
    with pytest.raises(ValueError, match="halo"):
        flock_step(pos, vel, FlockParams(), halo_pos=np.ones((2, 2)))
    with pytest.raises(ValueError, match="vision"):
        FlockParams(vision=0.0)
    nan = pos.copy()
    nan[2, 0] = np.nan  # on a torus of an even number of cells a NaN indexed outside them
    for torus in (True, False):
        with pytest.raises(ValueError, match="finite"):
            flock_step(nan, vel.copy(), FlockParams(vision=1.0), bounds=(0, 0, 10, 10), torus=torus)
