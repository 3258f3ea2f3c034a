"""Every component by name: `mapleverse component NAME` runs one of these."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.runtime.component import Component

__all__ = ["COMPONENTS", "DEFAULT_UP", "instance", "resolve"]

COMPONENTS: dict[str, str] = {
    "district": "components.district:DistrictServer",
    "echo": "components.echo:EchoService",
    "health": "components.health:HealthMonitor",
    "mesh-manager": "components.mesh_manager:MeshManager",
    "mesh-worker": "components.mesh_worker:MeshWorker",
    "orchestrator": "components.orchestrator:Orchestrator",
    "router": "components.router:EventRouter",
    "scheduler": "components.scheduler:AgentScheduler",
    "swarm": "components.swarm:SwarmCoordinator",
}

# What `mapleverse up` starts around the embedded broker: NAME, or NAME:ID for one of several
# instances (each district server of the default world is one).
DEFAULT_UP: tuple[str, ...] = (
    "health",
    "echo",
    "orchestrator",
    "district:d1",
    "district:d2",
    "swarm",
    "scheduler",
    "router",
    "mesh-manager:m1",
    "mesh-manager:m2",
    "mesh-manager:m3",
    "mesh-worker:w1",
)


def instance(spec: str) -> tuple[str, str]:
    """`NAME` or `NAME:ID` as (name, id); the id defaults to `main`."""
    name, _, ident = spec.partition(":")
    return name, ident or "main"


def resolve(name: str) -> type[Component]:
    """The component class registered under `name`; KeyError names the choices."""
    try:
        target = COMPONENTS[name]
    except KeyError:
        raise KeyError(f"unknown component {name!r}; choose one of {sorted(COMPONENTS)}") from None
    module, _, attr = target.partition(":")
    cls: type[Component] = getattr(importlib.import_module(module), attr)
    return cls
