"""A custom behaviour as a plugin: swarms may then use `--behaviour orbit`.

    PYTHONPATH=docs/examples MAPLEVERSE_BEHAVIOUR_PLUGINS=behaviour_plugin:register make run
    .venv/bin/mapleverse swarm create moths --behaviour orbit --size 200 \\
        --param center='[200, 200]' --param speed=15

Give every district server and the swarm coordinator the same MAPLEVERSE_BEHAVIOUR_PLUGINS.
Run alone, it steps 100 entities once and prints what ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from world.behaviours import Behaviour, BehaviourRegistry, Group, View, default_registry


def orbit(view: View, params: Mapping[str, Any], dt: float) -> None:
    """Circle round params["center"] at params["speed"] units per second."""
    offset = view.pos - np.asarray(params["center"], dtype=np.float64)
    tangent = np.column_stack((-offset[:, 1], offset[:, 0]))
    length = np.linalg.norm(tangent, axis=1, keepdims=True)
    view.vel[:] = np.divide(tangent, length, out=np.zeros_like(tangent), where=length > 0)
    view.vel *= float(params["speed"])
    view.pos += view.vel * dt


def register(registry: BehaviourRegistry) -> None:
    """The plugin's entry point: MAPLEVERSE_BEHAVIOUR_PLUGINS=behaviour_plugin:register."""
    registry.register(
        Behaviour(id="orbit", action=orbit, defaults={"center": (500, 500), "speed": 5.0})
    )


if __name__ == "__main__":
    registry = default_registry()  # flocking, formation, tasks, drift, hold
    register(registry)
    pos, vel = np.random.default_rng(0).uniform(0, 1000, (100, 2)), np.zeros((100, 2))
    result = registry.step(pos, vel, np.zeros(100, np.int32), [Group("orbit")], tick=1, dt=0.05)
    print(result.stepped, result.errors, result.by_behaviour)
