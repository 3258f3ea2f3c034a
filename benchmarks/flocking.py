"""Boids on one core: `world.flocking.flock_step` against Mesa's `boid_flockers` example.

    .venv/bin/python benchmarks/flocking.py [--agents 10000] [--steps 100] [--mesa-steps 3]
                                            [--tune-malloc]

Mesa's `BoidFlockers` model (installed with the `bench` extra) is built with `agents` boids
in a torus square scaled so that the density is that of Mesa's default example (100 boids on
100 x 100), so each boid has the same number of neighbours: side = 100 * sqrt(agents / 100),
with Mesa's default factors (speed 1, vision 10, separation 2, cohere 0.03, separate 0.015,
match 0.05). Mesa is timed for `--mesa-steps` steps; then `flock_step` and the behaviour
registry (one flocking group) for `--steps` steps each from the same positions and headings.
Our time per step is the mean over all those steps (the flock clusters as it goes, which makes
later steps dearer for us and not for Mesa, so the ratio errs on our side).

BLAS/OpenMP pools are held to one thread (and the kernel uses none): one core. `--tune-malloc`
stops glibc from handing the kernel's large temporaries back to the system after every step
(mallopt), which saves the page faults of getting them again: a setting for the process that
runs the kernel, off by default. The last line is `key=value` pairs.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before numpy loads its thread pools
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import ctypes
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from world.behaviours import Group, default_registry  # noqa: E402 - needs REPO on the path
from world.flocking import FlockParams, flock_step, warm_up  # noqa: E402

MESA_DENSITY = 100 / (100 * 100)  # Mesa's example: 100 boids on a 100 x 100 torus


def load_boid_flockers() -> Any:
    """Mesa's `BoidFlockers` model class.

    `mesa.examples/__init__.py` imports every example, some of which need packages Mesa does
    not install (networkx); the two package levels above the example are therefore stood in
    for while it is imported.
    """
    import mesa

    examples = Path(mesa.__file__).parent / "examples"
    stand_ins = []
    for name, path in (("mesa.examples", examples), ("mesa.examples.basic", examples / "basic")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
            stand_ins.append(name)
    try:
        from mesa.examples.basic.boid_flockers.model import BoidFlockers
    finally:
        for name in stand_ins:
            del sys.modules[name]
    return BoidFlockers


def _tune_malloc() -> bool:
    """Keep freed memory in the process (glibc): no trim, no mmap below 32 MiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 1 << 25))


def _time_ours(pos: np.ndarray, vel: np.ndarray, side: float, steps: int) -> float:
    params = FlockParams()
    bounds = (0.0, 0.0, side, side)
    started = time.perf_counter()
    for _ in range(steps):
        flock_step(pos, vel, params, bounds=bounds, torus=True)
    return (time.perf_counter() - started) / steps


def _time_registry(pos: np.ndarray, vel: np.ndarray, side: float, steps: int) -> float:
    registry = default_registry()
    groups = [Group("flocking", {"torus": True}, bounds=(0.0, 0.0, side, side))]
    group_index = np.zeros(len(pos), dtype=np.int32)
    ids = [f"b{i}" for i in range(len(pos))]
    started = time.perf_counter()
    for tick in range(steps):
        result = registry.step(pos, vel, group_index, groups, ids=ids, tick=tick, dt=1.0)
        assert result.errors == 0, result.failures
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100, help="steps of ours to time")
    parser.add_argument("--mesa-steps", type=int, default=3, help="steps of Mesa to time")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tune-malloc", action="store_true", help="see the module docstring")
    args = parser.parse_args()
    tuned = _tune_malloc() if args.tune_malloc else False

    boid_flockers = load_boid_flockers()
    side = math.sqrt(args.agents / MESA_DENSITY)
    model = boid_flockers(population_size=args.agents, width=side, height=side, seed=args.seed)
    boids = list(model.space.active_agents)
    pos0 = model.space.agent_positions.copy()
    vel0 = np.array([b.direction for b in boids], dtype=np.float64)
    print(f"{args.agents} boids on a {side:.0f} x {side:.0f} torus (Mesa's density), one core")

    started = time.perf_counter()
    for _ in range(args.mesa_steps):
        model.step()
    mesa_step = (time.perf_counter() - started) / args.mesa_steps
    print(f"mesa       {mesa_step:10.4f} s/step  ({args.mesa_steps} steps)")

    warm_up()  # the kernel compiled (or loaded from numba's cache) before the clock starts
    ours_step = _time_ours(pos0.copy(), vel0.copy(), side, args.steps)
    print(f"flock_step {ours_step:10.6f} s/step  ({args.steps} steps)")
    registry_step = _time_registry(pos0.copy(), vel0.copy(), side, args.steps)
    overhead = registry_step - ours_step
    print(f"registry   {registry_step:10.6f} s/step  (one flocking group; {overhead:+.6f} s)")
    ratio = mesa_step / ours_step
    print(f"ratio      {ratio:10.0f} x" + ("  (malloc tuned)" if tuned else ""))
    print(
        f"agents={args.agents} mesa_step_s={mesa_step:.4f} ours_step_s={ours_step:.6f} "
        f"ratio={ratio:.0f} agent_ticks_per_s={args.agents / ours_step:.0f} "
        f"registry_step_s={registry_step:.6f} malloc_tuned={int(tuned)}"
    )


if __name__ == "__main__":
    main()
