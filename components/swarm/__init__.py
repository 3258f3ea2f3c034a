"""The swarm coordinator: swarms' definitions, scaling, pause and resume, and live status."""

from components.swarm.component import SwarmCoordinator, SwarmError
from components.swarm.scaling import coupling, despawn_plan, spawn_plan
from components.swarm.settings import SwarmSettings

__all__ = [
    "SwarmCoordinator",
    "SwarmError",
    "SwarmSettings",
    "coupling",
    "despawn_plan",
    "spawn_plan",
]
