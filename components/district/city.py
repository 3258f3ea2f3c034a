"""The city in a district server: the buildings of the regions it owns, retained, and claims.

Buildings are laid out from a region's bounds (world/city.py); claims are persisted per
building, so whichever server owns a region later publishes them with their claims.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from store import StoreError
from world.city import building_key, city_layout
from world.payloads import Building

if TYPE_CHECKING:
    from components.district.component import DistrictServer

__all__ = ["City"]


class City:
    """The buildings one district server owns."""

    def __init__(self, server: DistrictServer) -> None:
        self.server = server
        self.buildings: dict[str, Building] = {}  # of the regions we own, by key

    def _topic(self, building: Building) -> str:
        return str(
            self.server.topics["city.building"].build(
                world=self.server.world,
                district=building.district,
                neighbourhood=building.neighbourhood,
                building=building.building,
            )
        )

    async def adopt(self) -> None:
        """Publish (retained) the buildings of the regions we now own, with their claims; clear
        those of regions that no longer exist (split or merged away)."""
        server = self.server
        d = server.district
        own = {r.id: r for r in d.own}
        mapped = {r.id for r in d.map.regions} if d.map else set()
        for key in [k for k, b in self.buildings.items() if b.district not in own]:
            building = self.buildings.pop(key)
            if building.district not in mapped:
                await server.bus.clear_retained(self._topic(building))
        fresh = [
            b for r in own.values() for b in city_layout(r) if building_key(b) not in self.buildings
        ]
        if not fresh:
            return
        claims = {}
        if server.store is not None:
            with contextlib.suppress(StoreError):
                for snap in await server.store.store.list_snapshots("building"):
                    claims[snap.owner_id] = snap.payload
        for building in fresh:
            key = building_key(building)
            claim = claims.get(f"{server.world}/{key}")
            if claim:
                building = building.model_copy(
                    update={"claimed_by": claim["agent"], "claimed_at": claim["at"]}
                )
            self.buildings[key] = building
            await self.publish(building)

    async def publish(self, building: Building) -> None:
        await self.server.bus.publish(self._topic(building), building)

    async def claim(self, key: str, agent: str) -> None:
        """An agent claims a building of ours: first come, first served; persisted first."""
        server = self.server
        building = self.buildings.get(key)
        if building is None or building.claimed_by not in (None, agent):
            why = "not ours" if building is None else f"held by {building.claimed_by}"
            server.log.info("claim of %s by %s refused (%s)", key, agent, why)
            return
        now = time.time()
        assert server.store is not None
        try:
            await server.store.store.put_snapshot(
                "building", f"{server.world}/{key}", "claim", {"agent": agent, "at": now}
            )
        except StoreError as exc:
            server.log.error("claim of %s not persisted: %s", key, exc)
            return
        building = building.model_copy(update={"claimed_by": agent, "claimed_at": now})
        self.buildings[key] = building
        await self.publish(building)
