"""A small world for tests: orchestrator, two district servers, swarm coordinator and
scheduler as tasks on one broker (the in-memory one by default), and an operator bus.

Imported as `worlds` (pytest's pythonpath has tests/).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from helpers import next_matching

from bus import Bus, BusSettings, MemoryBroker
from bus.payloads import RpcRequest
from components.district import DistrictServer, DistrictSettings
from components.orchestrator import Orchestrator, OrchestratorSettings
from components.runtime import Component
from components.scheduler import AgentScheduler, SchedulerSettings
from components.swarm import SwarmCoordinator, SwarmSettings
from world.payloads import WorldSnapshot

__all__ = ["TIMEOUT", "World", "small_world", "snapshot_where"]

TIMEOUT = 10.0


@dataclass
class World:
    root: str
    broker: MemoryBroker
    operator: Bus
    components: dict[str, Component]
    tasks: dict[str, asyncio.Task[None]]
    common: dict[str, Any]

    async def call(self, service: str, method: str, **args: Any) -> Any:
        topic = self.operator.topics["rpc.request"].build(service=service, method=method)
        reply = await self.operator.request(topic, RpcRequest(args=args), timeout=TIMEOUT)
        return reply.payload

    async def start(self, name: str, component: Component) -> None:
        self.components[name] = component
        task = asyncio.create_task(component.run(), name=f"test-{name}")
        ready = asyncio.create_task(component.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            task.cancel()
            raise AssertionError(f"{name} did not become ready: {done}")
        self.tasks[name] = task

    async def stop(self, name: str) -> None:
        self.components.pop(name).stop()
        task = self.tasks.pop(name)
        done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
        if not done:  # say where it is stuck, every task's stack, then fail
            for other in asyncio.all_tasks():
                other.print_stack(limit=8)
            raise AssertionError(f"{name} did not stop within {TIMEOUT} s")
        task.result()

    def district(self, district_id: str) -> DistrictServer:
        return DistrictServer(
            DistrictSettings(id=district_id, district_halo=20.0, **self.common),
            transport=self.broker.transport(),
        )


@asynccontextmanager
async def small_world(
    root: str,
    store_url: str,
    *,
    scheduler: bool = True,
    broker: MemoryBroker | None = None,
    **settings: Any,
) -> AsyncIterator[World]:
    """The world running until the block ends; then every component stops cleanly."""
    broker = broker or MemoryBroker()
    common: dict[str, Any] = {
        "root": root,
        "reconnect_min": 0.01,
        "reconnect_max": 0.05,
        "heartbeat_interval": 0.5,
        "store_url": store_url,
        **settings,
    }
    operator = Bus(
        BusSettings(
            client_id=f"{root}-op",
            **{k: common[k] for k in ("root", "reconnect_min", "reconnect_max")},
        ),
        transport=broker.transport(),
    )
    async with operator:
        w = World(root, broker, operator, {}, {}, common)
        await w.start(
            "orchestrator",
            Orchestrator(
                OrchestratorSettings(
                    world_rate=50,
                    world_layout="2x1",
                    world_bounds="0,0,200,100",
                    world_districts="d1,d2",
                    world_snapshot_interval=0.1,
                    **common,
                ),
                transport=broker.transport(),
            ),
        )
        await w.start("d1", w.district("d1"))
        await w.start("d2", w.district("d2"))
        await w.start(
            "swarm",
            SwarmCoordinator(SwarmSettings(**common), transport=broker.transport()),
        )
        if scheduler:
            await w.start(
                "scheduler",
                AgentScheduler(
                    SchedulerSettings(
                        scheduler_cadence=5,
                        scheduler_deadline=0.4,
                        scheduler_hosted="wanderer:2",
                        **common,
                    ),
                    transport=broker.transport(),
                ),
            )
        yield w
        for name in list(w.components):
            await w.stop(name)


async def snapshot_where(world: World, predicate: Any) -> WorldSnapshot:
    op = world.operator
    sub = await op.subscribe(op.topics["world.snapshot"].build(world="main"))
    try:
        msg = await next_matching(sub, lambda m: predicate(m.payload), TIMEOUT)
    finally:
        await sub.close()
    return msg.payload
