"""Devices in a district server's world: telemetry moves the entities it owns, and a device new
to the world is adopted by the server whose region it reports from.

A retained directory (`agent/{id}/state` with `status: device`) names the server that owns each
device, so two servers never adopt the same one; telemetry that is out of the world or too big
goes to the dead-letter topic, reported by one server only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bus import Message
from bus.payloads import AgentState, Telemetry
from world.payloads import EntityColumns

if TYPE_CHECKING:
    from components.district.component import DistrictServer

__all__ = ["Devices"]


class Devices:
    """The devices side of one district server."""

    def __init__(self, server: DistrictServer) -> None:
        self.server = server
        self.directory: dict[str, str] = {}  # device -> the district that says it owns it
        self.last: dict[str, tuple[float, float, float]] = {}  # last telemetry: t, x, y
        self.announce: set[str] = set()  # devices whose directory entry we must publish

    def heard(self, agent: str, state: AgentState) -> None:
        """A directory entry (retained agent state) arrived."""
        if state.status == "device" and isinstance(state.data.get("district"), str):
            self.directory[agent] = state.data["district"]

    def taken(self, ids: list[str]) -> None:
        """Entities taken in by hand-off: devices among them are ours now."""
        table = self.server.district.table
        self.announce.update(e for e in ids if e in self.last and e in table)

    async def telemetry(self, msg: Message[Any], telemetry: Telemetry) -> None:
        """A device's position: update the entity we own, or adopt a device new to the world
        whose position is in one of our regions."""
        server = self.server
        d = server.district
        agent = msg.params["agent"]
        bounds = d.world_bounds
        if bounds is None:
            return
        limit = server.settings.district_telemetry_max_bytes
        first = min((r.district for r in d.map.regions), default="") if d.map else ""
        if len(msg.raw) > limit or not bounds.contains(telemetry.x, telemetry.y):
            if first == server.id:  # one district reports it, not every one
                reason = (
                    f"oversized: {len(msg.raw)} bytes; at most {limit}"
                    if len(msg.raw) > limit
                    else f"out of bounds: ({telemetry.x:g}, {telemetry.y:g}) is outside the "
                    f"world {bounds.as_tuple()}"
                )
                await server.bus.dead_letter(msg, reason)
            return
        now = time.time()
        row = d.table.index.get(agent)
        last = self.last.get(agent)
        if row is not None:
            vx = vy = 0.0
            if last is not None and 0 < now - last[0] < 5.0:
                vx = (telemetry.x - last[1]) / (now - last[0])
                vy = (telemetry.y - last[2]) / (now - last[0])
            d.table.pos[row] = (telemetry.x, telemetry.y)
            d.table.vel[row] = (vx, vy)
            self.last[agent] = (now, telemetry.x, telemetry.y)
            return
        region = d.index.region_at(telemetry.x, telemetry.y)
        mine = region is not None and region.district == server.id
        unclaimed = self.directory.get(agent, server.id) == server.id
        if mine and unclaimed and agent not in d.ledger.seen:
            entities = EntityColumns(
                id=[agent], x=[telemetry.x], y=[telemetry.y], vx=[0.0], vy=[0.0], swarm=[""]
            )
            if d.spawn(entities):
                self.last[agent] = (now, telemetry.x, telemetry.y)
                self.directory[agent] = server.id
                self.announce.add(agent)

    async def publish(self) -> None:
        """Say, retained, which devices we own now (after the journal made it durable)."""
        server = self.server
        announce, self.announce = self.announce, set()
        for agent in announce:
            row = server.district.table.index.get(agent)
            if row is None:
                continue
            x, y = server.district.table.pos[row].tolist()
            region = server.district.index.region_at(x, y)
            state = AgentState(
                status="device",
                data={"district": server.id, "region": region.id if region else "", "x": x, "y": y},
            )
            await server.bus.publish(server.topics["agent.state"].build(agent=agent), state)
