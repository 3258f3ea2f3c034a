"""A mesh for tests: three managers as tasks on one broker (the in-memory one), an operator
bus, and helpers to start workers and find the leader.

Imported as `meshes` (pytest's pythonpath has tests/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from worlds import TIMEOUT, World

from bus import Bus, BusSettings, MemoryBroker
from components.mesh_manager import MeshManager, MeshManagerSettings
from components.mesh_worker import MeshWorker, MeshWorkerSettings
from mesh import Role

__all__ = ["MANAGERS", "leader_of", "manager", "mesh", "worker"]

MANAGERS = ("m1", "m2", "m3")


@asynccontextmanager
async def mesh(root: str, store_url: str, **settings: Any) -> AsyncIterator[World]:
    broker = MemoryBroker()
    common: dict[str, Any] = {
        "root": root,
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "heartbeat_interval": 0.5,
        "mesh": "alpha",
        "mesh_heartbeat": 0.05,
        **settings,
    }
    operator = Bus(
        BusSettings(client_id=f"{root}-op", root=root, reconnect_min=0.01, reconnect_max=0.05),
        transport=broker.transport(),
    )
    async with operator:
        w = World(root, broker, operator, {}, {}, common)
        for m in MANAGERS:
            await w.start(m, manager(w, m, store_url))
        yield w
        for name in list(w.components):
            await w.stop(name)


def manager(w: World, node: str, store_url: str) -> MeshManager:
    settings: dict[str, Any] = {
        "mesh_election_min": 0.15,
        "mesh_election_max": 0.3,
        "mesh_worker_grace": 0.3,
        "mesh_status_interval": 0.2,
        **w.common,  # a test's own settings (mesh(..., **settings)) win
    }
    return MeshManager(
        MeshManagerSettings(
            id=node, mesh_managers=",".join(MANAGERS), store_url=store_url, **settings
        ),
        transport=w.broker.transport(),
    )


def worker(w: World, worker_id: str, **settings: Any) -> MeshWorker:
    return MeshWorker(
        MeshWorkerSettings(id=worker_id, **{**w.common, **settings}),
        transport=w.broker.transport(),
    )


async def leader_of(w: World, *, not_: str | None = None) -> MeshManager:
    """The manager that leads, once exactly one does (waits for an election)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        leaders = [
            c
            for name, c in w.components.items()
            if isinstance(c, MeshManager) and c.role is Role.LEADER and name != not_
        ]
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no single leader within the timeout")
