"""A mesh worker: joins a mesh, hosts agents whose state the mesh replicates, and beats.

Publishes                                   Requests (to the leader)
  mesh/{m}/worker/{me}/hb   QoS 1 beats        join (gets its agents' state back),
                            to every manager   add-agent, update (incremental, versioned)
  mesh/{m}/game/{g}/act/{bot}  the actions of the Mafia bots it hosts (players.py)

On start it joins; the answer carries the state of the agents the mesh already has for it, so
a worker that restarts or reconnects picks up where the mesh says it was. Each agent's state is
updated every `mesh_worker_update_interval` seconds (a counter, as a demonstration); an update
on a stale version is refused by the mesh, and the worker reloads its state and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bus import Bus, BusError
from components.mesh_worker.client import MeshClient, MeshRequestError
from components.mesh_worker.players import BotPlayers
from components.mesh_worker.settings import MeshWorkerSettings
from components.runtime.component import Component
from mesh.payloads import WorkerBeat

__all__ = ["MeshWorker"]


class MeshWorker(Component):
    kind = "mesh-worker"
    settings_model = MeshWorkerSettings
    settings: MeshWorkerSettings

    def __init__(self, settings: MeshWorkerSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.mesh = settings.mesh
        self.agents: dict[str, dict[str, Any]] = {}
        """Agent -> {"version", "state"}: what the mesh last confirmed."""
        self.joined = asyncio.Event()
        self.players = BotPlayers(self)
        self.stale_updates = 0

    async def main(self, bus: Bus) -> None:
        s = self.settings
        client = MeshClient(bus, self.mesh, self.id, attempt_timeout=s.mesh_request_timeout)
        self.serving()
        try:
            await self._work(client)
        finally:
            await client.close()

    async def _work(self, client: MeshClient) -> None:
        s = self.settings
        t = self.topics
        states = self.bus.subscribe(t["mafia.state"].build(mesh=self.mesh))
        views = self.bus.subscribe(t["mafia.player"].build(mesh=self.mesh))
        for sub in (states, views):
            await sub.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._beats(), name="mesh-worker-beats")
            tg.create_task(self.players.follow(states, views), name="mesh-worker-bots")
            await self._provision(client)
            self.joined.set()
            if s.mesh_worker_update_interval > 0:
                tg.create_task(self._updates(client), name="mesh-worker-updates")

    async def _provision(self, client: MeshClient) -> None:
        """Join, and add the agents this worker hosts that the mesh does not have (all of
        them the first time, or after the leader removed it as failed)."""
        await self._join(client)
        for n in range(1, self.settings.mesh_worker_agents + 1):
            agent = f"{self.id}-a{n}"
            if agent not in self.agents:
                result = await client.call("add-agent", agent=agent, state={"counter": 0})
                if result.get("ok") or "exists" in str(result.get("error")):
                    await self._join(client)  # the mesh's word on its version and state

    async def _join(self, client: MeshClient) -> None:
        result = await client.call("join")
        if not result.get("ok"):
            raise MeshRequestError("join", str(result.get("error")))
        self.agents = {a: dict(v) for a, v in result.get("agents", {}).items()}
        self.log.info("joined mesh %s with %d agents", self.mesh, len(self.agents))

    async def _beats(self) -> None:
        s = self.settings
        topic = self.topics["mesh.worker.heartbeat"].build(mesh=self.mesh, worker=self.id)
        seq = 0
        while True:
            if self.bus.connected.is_set():
                beat = WorkerBeat(
                    mesh=self.mesh,
                    worker=self.id,
                    seq=seq,
                    sent=time.time(),
                    interval=s.mesh_heartbeat,
                    versions={a: int(v["version"]) for a, v in self.agents.items()},
                )
                seq += 1
                with contextlib.suppress(BusError):
                    await self.bus.publish(topic, beat)
            await asyncio.sleep(s.mesh_heartbeat)

    async def update(self, client: MeshClient, agent: str, patch: dict[str, Any]) -> bool:
        """Send one incremental update of `agent`; False (and state reloaded) when stale."""
        known = self.agents[agent]
        result = await client.call("update", agent=agent, base=known["version"], patch=patch)
        if result.get("ok"):
            known["version"] = result["version"]
            for key, value in patch.items():  # as the mesh applies it: null removes a key
                if value is None:
                    known["state"].pop(key, None)
                else:
                    known["state"][key] = value
            return True
        self.stale_updates += 1
        self.log.warning("update of %s refused: %s", agent, result.get("error"))
        await self._provision(client)  # the mesh's state again (and our agents, if removed)
        return False

    async def _updates(self, client: MeshClient) -> None:
        interval = self.settings.mesh_worker_update_interval
        while True:
            await asyncio.sleep(interval)
            for agent in list(self.agents):
                counter = int(self.agents[agent]["state"].get("counter", 0))
                with contextlib.suppress(MeshRequestError):
                    await self.update(client, agent, {"counter": counter + 1, "at": time.time()})
