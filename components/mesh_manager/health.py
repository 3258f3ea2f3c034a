"""Workers' health, as the mesh leader judges it from their beats.

Every manager follows every worker's beats (`mesh/{m}/worker/{w}/hb`), so a manager that
becomes leader has them already. The leader (with a lease: `MeshManager.has_lease`) marks a
worker `late` after one missed beat and `failed` after `MAPLEVERSE_MESH_WORKER_MISSES`,
removes it (a `leave` entry) after `MAPLEVERSE_MESH_WORKER_GRACE` more seconds, and publishes
each agent's health retained, stamped with its term.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bus import BusError, Subscription
from mesh.payloads import AgentHealth

if TYPE_CHECKING:
    from components.mesh_manager.component import MeshManager

__all__ = ["WorkerHealth"]

MAX_WORKERS = 10_000  # beats from more distinct worker names than this are not tracked


class WorkerHealth:
    """The beats of one mesh's workers and the health judged from them."""

    def __init__(self, manager: MeshManager) -> None:
        self.manager = manager
        self._beats: dict[str, tuple[float, float]] = {}  # worker -> (monotonic, interval)
        self._health: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}

    def of(self, worker: str) -> str:
        return self._health.get(worker, "ok")

    def grace(self, workers: Iterable[str]) -> None:
        """A new leader gives every worker it has not heard a full grace from now."""
        now = time.monotonic()
        for worker in workers:
            self._beats.setdefault(worker, (now, self.manager.settings.mesh_heartbeat))

    def reset(self) -> None:
        """Leadership changed: health is judged afresh (and republished by the next leader)."""
        self._health.clear()
        self._failed_at.clear()

    async def follow(self, sub: Subscription) -> None:
        """Every worker's beats (the worker is the topic's, not the payload's word)."""
        async for msg in sub:
            worker = msg.params["worker"]
            if len(self._beats) < MAX_WORKERS or worker in self._beats:
                self._beats[worker] = (time.monotonic(), msg.payload.interval)

    async def watch(self) -> None:
        """While leading with a lease: judge each worker, publish changes, remove the dead."""
        s = self.manager.settings
        while True:
            await asyncio.sleep(s.mesh_heartbeat)
            if not self.manager.has_lease():
                continue
            now = time.monotonic()
            for worker in list(self.manager.state.workers):
                last, interval = self._beats.get(worker, (now, s.mesh_heartbeat))
                missed = int((now - last) / interval)
                health = (
                    "ok" if missed < 1 else "late" if missed < s.mesh_worker_misses else "failed"
                )
                if health != self._health.get(worker):
                    self._health[worker] = health
                    await self._publish_health(worker, health, missed)
                if health != "failed":
                    self._failed_at.pop(worker, None)
                    continue
                since = self._failed_at.setdefault(worker, now)
                if now - since >= s.mesh_worker_grace:
                    self.manager.log.warning("worker %s missed its beats: removing it", worker)
                    agents = list(self.manager.state.workers.get(worker, []))
                    result = await self.manager.propose(
                        {"op": "leave", "worker": worker, "reason": "failed"}
                    )
                    if result.get("ok"):
                        self._failed_at.pop(worker, None)
                        self._health.pop(worker, None)
                        for agent in agents:
                            await self._agent_health(agent, worker, "removed", missed)

    async def _publish_health(self, worker: str, health: str, missed: int) -> None:
        for agent in self.manager.state.workers.get(worker, []):
            await self._agent_health(agent, worker, health, missed)
        self.manager.mark_dirty()

    async def _agent_health(self, agent: str, worker: str, health: str, missed: int) -> None:
        last = self._beats.get(worker)
        beat = time.time() - (time.monotonic() - last[0]) if last else None
        topic = self.manager.topics["mesh.agent.health"].build(mesh=self.manager.mesh, agent=agent)
        term = self.manager.node.term if self.manager.node is not None else 0
        payload = AgentHealth(
            mesh=self.manager.mesh,
            agent=agent,
            worker=worker,
            health=health,
            term=term,
            last_beat=beat,
            missed=missed,
        )
        with contextlib.suppress(BusError):
            await self.manager.bus.publish(topic, payload)
