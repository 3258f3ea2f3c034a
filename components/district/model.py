"""A district server's world, without I/O: its entities, regions, swarms and the hand-off ledger.

`District.step()` advances one tick: run the behaviours over the owned entities (vectorised,
per swarm), keep them inside the world, and move every entity that left the regions this
server owns into the ledger as an outbound batch for the new owner. What changed ownership is
collected in `journal`, which the component persists before sending anything (handoff.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from components.district.handoff import HandoffLedger, Outbound
from world.behaviours import BehaviourRegistry, Group
from world.entities import EntityTable
from world.geometry import RegionIndex
from world.payloads import Bounds, EntityColumns, RegionInfo, RegionMap, SwarmSpec

__all__ = ["District", "Journal", "StepOutcome"]

# Free entities (telemetry devices, hosted agents) are not stepped by a swarm behaviour.
FREE = ""
DESPAWNED_OV = 1 << 40  # tombstone version of a despawned entity: nothing brings it back
HANDOFF_CHUNK = 400  # entities per offer: ~35 KiB, under the broker's packet limit


@dataclass(slots=True)
class Journal:
    """Ownership changes since the last persist: replayed on restart after the snapshot."""

    taken: list[EntityColumns] = field(default_factory=list)  # entered by offer or spawn
    given: list[Outbound] = field(default_factory=list)  # left for a neighbour
    accepted: list[str] = field(default_factory=list)  # outbound batches the neighbour took
    removed: list[str] = field(default_factory=list)  # despawned ids

    def __bool__(self) -> bool:
        return bool(self.taken or self.given or self.accepted or self.removed)

    def dump(self) -> dict[str, Any]:
        return {
            "taken": [c.model_dump() for c in self.taken],
            "given": [b.dump() for b in self.given],
            "accepted": self.accepted,
            "removed": self.removed,
        }


@dataclass(slots=True)
class StepOutcome:
    tick: int
    duration: float
    errors: int
    given: list[Outbound]
    stepped: int = 0  # entities the behaviours stepped (some may have left across a border)


class District:
    """The state one district server owns, and the rules to change it."""

    def __init__(self, district: str, registry: BehaviourRegistry) -> None:
        self.id = district
        self.registry = registry
        self.table = EntityTable()
        self.ledger = HandoffLedger(district)
        self.map: RegionMap | None = None
        self.index = RegionIndex(())
        self.own: list[RegionInfo] = []
        self.swarms: dict[str, SwarmSpec] = {}
        self.journal = Journal()
        self.tick = 0
        self.halo: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = {}
        self.handoffs_in = 0
        self.handoffs_out = 0
        self.draining: dict[str, set[str]] = {}  # lost region -> its batches not yet accepted

    # -- the world around --------------------------------------------------------------------
    def set_map(self, region_map: RegionMap) -> bool:
        """Adopt a newer region map; False when it is not newer than the one we have."""
        if self.map is not None and region_map.version <= self.map.version:
            return False
        before = {r.id for r in self.own}
        self.map = region_map
        self.index = RegionIndex(region_map.regions)
        self.own = [r for r in region_map.regions if r.district == self.id]
        lost = before - {r.id for r in self.own}
        if lost:  # hand the lost regions' entities over now; a drain waits for these batches
            batches = {b.batch for b in self.borders(time.time())}
            for region in lost:
                self.draining[region] = set(batches)
        return True

    @property
    def world_bounds(self) -> Bounds | None:
        return self.map.bounds if self.map is not None else None

    def set_swarm(self, spec: SwarmSpec) -> None:
        self.swarms[spec.name] = spec

    # -- ownership changes -------------------------------------------------------------------
    def spawn(self, entities: EntityColumns) -> int:
        """Add new entities (a swarm grows); ids seen before are ignored (idempotent)."""
        seen = self.ledger.seen
        rows = [
            i
            for i, (e, swarm) in enumerate(zip(entities.id, entities.swarm, strict=True))
            if e not in self.table
            # an agent that left may come back; a swarm member's id is never used twice
            and (e not in seen or (swarm == FREE and seen[e] == DESPAWNED_OV))
        ]
        if not rows:
            return 0
        fresh = entities.take(rows)
        for entity in fresh.id:
            seen.pop(entity, None)
        self.table.add(fresh)
        self.journal.taken.append(fresh)
        return len(rows)

    def despawn(self, swarm: str, count: int) -> list[str]:
        """Remove up to `count` members of `swarm` (the newest first)."""
        if swarm not in self.table.swarms or count <= 0:
            return []
        code = self.table.code(swarm)
        rows = np.flatnonzero(self.table.group == code)[::-1][:count]
        gone = self.table.remove(rows)
        self.ledger.forget(gone, DESPAWNED_OV)
        self.journal.removed.extend(gone.id)
        return gone.id

    def despawn_ids(self, ids: list[str]) -> list[str]:
        """Remove these entities (an agent leaves the world); ids we do not own are ignored."""
        gone = self.table.remove_ids(ids)
        self.ledger.forget(gone, DESPAWNED_OV)
        self.journal.removed.extend(gone.id)
        return gone.id

    def steer(self, entities: EntityColumns) -> int:
        """Set the velocity of the listed entities we own; returns how many."""
        n = 0
        for entity, vx, vy in zip(entities.id, entities.vx, entities.vy, strict=True):
            row = self.table.index.get(entity)
            if row is not None:
                self.table.vel[row] = (vx, vy)
                n += 1
        return n

    def offer_received(self, entities: EntityColumns) -> list[str]:
        """A neighbour's offer: take what is new; every offered id is to be accepted."""
        fresh = self.ledger.take_in(self.table, entities)
        if fresh.id:
            self.journal.taken.append(fresh)
            self.handoffs_in += len(fresh.id)
        return list(entities.id)

    def accept_received(self, batch: str) -> Outbound | None:
        done = self.ledger.accepted(batch)
        if done is not None:
            self.journal.accepted.append(batch)
        for region in list(self.draining):
            self.draining[region].discard(batch)
            if not self.draining[region]:
                del self.draining[region]
        return done

    def in_flight(self) -> dict[str, int]:
        """Per swarm, members in the ledger (offered to a neighbour, not yet accepted)."""
        counts: dict[str, int] = {}
        for batch in self.ledger.outbound.values():
            for swarm in batch.entities.swarm:
                if swarm:
                    counts[swarm] = counts.get(swarm, 0) + 1
        return counts

    def take_journal(self) -> Journal:
        journal, self.journal = self.journal, Journal()
        return journal

    # -- a tick ------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """The behaviour group of each swarm code: free entities (agents, devices) drift on
        their own velocity inside the world; members of a swarm not yet known wait."""
        out = []
        world = self.world_bounds.as_tuple() if self.world_bounds is not None else None
        for name in self.table.swarms:
            spec = self.swarms.get(name)
            if name == FREE:
                out.append(Group(behaviour="drift", params={}, bounds=world))
            elif spec is None:
                out.append(Group(behaviour="hold", params={}, paused=True))
            else:
                out.append(
                    Group(
                        behaviour=spec.behaviour,
                        params=spec.params,
                        paused=spec.paused,
                        bounds=spec.bounds.as_tuple(),
                    )
                )
        return out

    def step(self, tick: int, dt: float, *, move: bool = True) -> StepOutcome:
        """Advance to `tick`: behaviours (unless `move` is False), then borders."""
        started = time.perf_counter()
        errors = 0
        table = self.table
        stepped = len(table) if move else 0
        if move and len(table):
            halo_pos, halo_vel = self._halo()
            result = self.registry.step(
                table.pos,
                table.vel,
                table.group,
                self.groups(),
                ids=table.ids,
                tick=tick,
                dt=dt,
                halo_pos=halo_pos,
                halo_vel=halo_vel,
            )
            errors = result.errors
        self.tick = tick
        given = self.borders(time.time())
        return StepOutcome(tick, time.perf_counter() - started, errors, given, stepped)

    def borders(self, now: float) -> list[Outbound]:
        """Hand every entity outside our regions to the owner of the region it is in."""
        table = self.table
        bounds = self.world_bounds
        if bounds is None or not len(table):
            return []
        pos = table.pos
        np.clip(pos[:, 0], bounds.x0, np.nextafter(bounds.x1, bounds.x0), out=pos[:, 0])
        np.clip(pos[:, 1], bounds.y0, np.nextafter(bounds.y1, bounds.y0), out=pos[:, 1])
        where = self.index.locate(pos)
        theirs = np.array([r.district != self.id for r in self.index.regions] + [False])
        rows = np.flatnonzero(theirs[where])  # where == -1 (cannot happen after clip): ours
        if not len(rows):
            return []
        owners = np.array([r.district for r in self.index.regions], dtype=object)
        targets = owners[where[rows]]
        table.ov[rows] += 1
        given = []
        for target in sorted(set(targets.tolist())):
            picked = rows[targets == target]
            for start in range(0, len(picked), HANDOFF_CHUNK):  # each offer fits one packet
                entities = table.columns(picked[start : start + HANDOFF_CHUNK])
                given.append(self.ledger.give(str(target), entities, now))
        table.remove(rows)
        self.journal.given.extend(given)
        self.handoffs_out += sum(len(b.entities) for b in given)
        return given

    def _halo(
        self,
    ) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]:
        if not self.halo:
            return None, None
        pos = np.concatenate([p for p, _ in self.halo.values()])
        vel = np.concatenate([v for _, v in self.halo.values()])
        return pos, vel

    # -- views -------------------------------------------------------------------------------
    def region_rows(self) -> dict[str, npt.NDArray[np.intp]]:
        """Rows of the table per owned region."""
        where = self.index.locate(self.table.pos)
        out = {}
        for region in self.own:
            i = self.index.position[region.id]
            out[region.id] = np.flatnonzero(where == i)
        return out

    def halo_rows(
        self, region: RegionInfo, margin: float, rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.intp]:
        """The rows of `region` within `margin` of its border (its neighbours' halo)."""
        b = region.bounds
        p = self.table.pos[rows]
        near = (
            (p[:, 0] < b.x0 + margin)
            | (p[:, 0] >= b.x1 - margin)
            | (p[:, 1] < b.y0 + margin)
            | (p[:, 1] >= b.y1 - margin)
        )
        return rows[near]

    # -- persistence -------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "tick": self.tick,
            "entities": self.table.columns().model_dump(),
            "outbound": [b.dump() for b in self.ledger.outbound.values()],
            "seen": self.ledger.seen,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.tick = int(state.get("tick", 0))
        self.table = EntityTable()
        self.table.add(EntityColumns.model_validate(state["entities"]))
        self.ledger = HandoffLedger(self.id)
        self.ledger.seen.update({k: int(v) for k, v in state.get("seen", {}).items()})
        for data in state.get("outbound", []):
            self.ledger.restore(Outbound.load(data))

    def replay(self, entry: Mapping[str, Any]) -> None:
        """Apply one journal entry written after the snapshot that was loaded."""
        for data in entry.get("taken", []):
            entities = EntityColumns.model_validate(data)
            self.table.add(entities)
            for entity, ov in zip(entities.id, entities.ov or [0] * len(entities), strict=True):
                self.ledger.seen[entity] = ov  # taken at this version (a spawn: 0)
        for data in entry.get("given", []):
            batch = Outbound.load(data)
            self.table.remove_ids(batch.entities.id)
            self.ledger.restore(batch)
        for batch_id in entry.get("accepted", []):
            self.ledger.accepted(batch_id)
        removed = list(entry.get("removed", []))
        if removed:
            self.table.remove_ids(removed)
            self.ledger.forget(removed, DESPAWNED_OV)
