"""The agent scheduler: observations to agents at their cadence, their answers into the world.

Subscribes to                               Publishes
  world/{w}/clock, world/{w}/regions          agent/{a}/obs    (an observation, QoS 1)
  world/{w}/region/+/updates (positions)      agent/{a}/error  (why an answer was not applied)
  agent/+/state   (an agent says ready/offline)  agent/{h}/act (answers of its hosted agents)
  agent/+/act     (answers)                   world/{w}/district/{d}/control (spawn, steer)
  sys/dlq/scheduler (its own rejects: malformed answers)

An external agent joins by publishing `{"status": "ready"}` retained on its state topic, and
leaves with `offline` (its Will). Each agent is an entity of the world (swarm ""), owned by
the district its position is in; a `move` steers that entity.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any, ClassVar

from bus import Bus, Message
from bus.payloads import Action, AgentState, DeadLetter
from components.runtime.component import Component
from components.scheduler.agents import (
    DEFAULT_ACTION,
    AgentRecord,
    Effect,
    Rejected,
    check,
    observe,
)
from components.scheduler.hosted import HOSTED, HostedAgent
from components.scheduler.settings import SchedulerSettings
from components.scheduler.view import WorldView
from store import Store, StoreError, StoreSettings, open_store
from world import metrics
from world.city import building_key
from world.geometry import RegionIndex
from world.payloads import (
    AgentError,
    Building,
    DistrictControl,
    EntityColumns,
    RegionMap,
    Tick,
)

CLAIM_REACH = 2.0  # how near a building an agent must stand to claim it
PLACE_AGAIN_AFTER = 3.0  # seconds before an agent not seen in the world is placed again

__all__ = ["AgentScheduler"]


class AgentScheduler(Component):
    kind: ClassVar[str] = "scheduler"
    settings_model: ClassVar[type[SchedulerSettings]] = SchedulerSettings
    settings: SchedulerSettings

    def __init__(self, settings: SchedulerSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.world = settings.world
        self.view = WorldView()
        self.agents: dict[str, AgentRecord] = {}
        self.hosted: dict[str, HostedAgent] = {}
        self.map: RegionMap | None = None
        self.index = RegionIndex(())
        self.tick = 0
        self.steers: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        self.buildings: dict[str, Building] = {}
        self.claims: list[tuple[str, str, str]] = []  # (region, building, agent) to send
        self._placed: dict[str, float] = {}  # agents placed, not yet seen in the world: when
        self._last_check = 0.0
        self.db: Store | None = None
        self._outcomes = {
            outcome: metrics.AGENT_ANSWERS.labels(self.world, outcome)
            for outcome in ("answered", "late", "impossible", "malformed")
        }
        self._observations = metrics.AGENT_OBSERVATIONS.labels(self.world)

    # -- wiring ------------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        self.db = await open_store(StoreSettings(url=self.settings.store_url))
        try:
            await self._load()
            t = self.topics
            subs = {
                "map": bus.subscribe(t["world.regions"].build(world=self.world)),
                "updates": bus.subscribe(
                    t["region.updates"].build(world=self.world, region="+"), maxsize=100_000
                ),
                "state": bus.subscribe(t["agent.state"].build(agent="+")),
                "act": bus.subscribe(t["agent.act"].build(agent="+"), maxsize=100_000),
                "dlq": bus.subscribe(t["dlq"].build(kind=self.kind)),
                "clock": bus.subscribe(t["world.clock"].build(world=self.world)),
                "city": bus.subscribe(t["city.building"].build(world=self.world)),
            }
            for sub in subs.values():
                await sub.start()
            self.serving()
            async with asyncio.TaskGroup() as tg:
                for name, sub in subs.items():
                    tg.create_task(self._consume(name, sub), name=f"scheduler-{name}")
                tg.create_task(self._deadlines(), name="scheduler-deadlines")
        finally:
            await self.db.close()

    async def _load(self) -> None:
        assert self.db is not None
        for snap in await self.db.list_snapshots("agent"):
            data = snap.payload
            record = self._record(snap.owner_id, str(data.get("hosted", "")))
            record.notes = dict(data.get("notes", {}))
            record.home = str(data.get("home", ""))
        for spec in filter(None, self.settings.scheduler_hosted.split(",")):
            kind, _, count = spec.strip().partition(":")
            if kind not in HOSTED:
                raise ValueError(f"MAPLEVERSE_SCHEDULER_HOSTED: unknown hosted agent {kind!r}; "
                                 f"choose from {sorted(HOSTED)}")  # fmt: skip
            for i in range(1, int(count or 1) + 1):
                self._record(f"{kind}-{i}", kind)

    def _record(self, agent: str, hosted: str = "") -> AgentRecord:
        record = self.agents.get(agent)
        if record is None:
            cadence = self.settings.scheduler_cadence
            phase = random.Random(agent).randrange(cadence)
            record = self.agents[agent] = AgentRecord(agent, hosted, cadence=cadence, phase=phase)
            if hosted:
                self.hosted[agent] = HOSTED[hosted](agent)
        return record

    async def _save(self, record: AgentRecord) -> None:
        assert self.db is not None
        try:
            await self.db.put_snapshot(
                "agent",
                record.id,
                "record",
                {"hosted": record.hosted, "notes": record.notes, "home": record.home},
            )
        except StoreError as exc:
            self.log.error("agent %s not persisted: %s", record.id, exc)

    async def _consume(self, name: str, sub: Any) -> None:
        async for batch in sub.batches():
            for msg in batch:
                await self._handle(name, msg)
            await self._flush_steers()

    async def _handle(self, name: str, msg: Message[Any]) -> None:
        p = msg.payload
        if name == "updates":
            self.view.update(msg.params["region"], int(p.meta.get("tick", 0)), p.columns)
        elif name == "clock" and isinstance(p, Tick):
            await self._on_tick(p)
        elif name == "act" and isinstance(p, Action):
            await self._on_act(msg.params["agent"], p)
        elif name == "state" and isinstance(p, AgentState):
            await self._on_state(msg.params["agent"], p)
        elif name == "dlq" and isinstance(p, DeadLetter):
            parsed = self.topics["agent.act"].parse(p.topic)
            if parsed is not None and parsed["agent"] in self.agents:
                self._outcomes["malformed"].inc()
                await self._fail(self.agents[parsed["agent"]], "malformed", p.reason)
        elif name == "city" and isinstance(p, Building):
            self.buildings[building_key(p)] = p
        elif name == "map" and isinstance(p, RegionMap):
            first = self.map is None
            self.map = p
            self.index = RegionIndex(p.regions)
            if first:
                for record in list(self.agents.values()):
                    await self._place(record)

    # -- agents joining and leaving ------------------------------------------------------------
    async def _on_state(self, agent: str, state: AgentState) -> None:
        record = self.agents.get(agent)
        if state.status == "offline" and record is not None and not record.hosted:
            del self.agents[agent]
            await self._despawn(agent)
            self.log.info("agent %s left", agent)
        elif state.status == "ready" and record is None:
            record = self._record(agent)
            await self._save(record)
            await self._place(record)
            self.log.info("agent %s joined", agent)

    async def _place(self, record: AgentRecord) -> None:
        """Make the agent's entity exist, at a spot of its own (seeded by its id)."""
        if self.map is None:
            return
        b = self.map.bounds
        rng = random.Random(record.id)
        x = rng.uniform(b.x0 + (b.x1 - b.x0) * 0.1, b.x1 - (b.x1 - b.x0) * 0.1)
        y = rng.uniform(b.y0 + (b.y1 - b.y0) * 0.1, b.y1 - (b.y1 - b.y0) * 0.1)
        region = self.index.region_at(x, y)
        if region is None:
            return
        if not record.home:
            record.home = region.id
            await self._save(record)
        entities = EntityColumns(id=[record.id], x=[x], y=[y], vx=[0.0], vy=[0.0], swarm=[""])
        self._placed[record.id] = time.time()
        await self.bus.publish(
            self.topics["world.control"].build(world=self.world, district=region.district),
            DistrictControl(op="spawn", entities=entities),
        )

    async def _replace_missing(self, now: float) -> None:
        """An agent whose entity the world has not shown within a few seconds of placing it is
        placed again (a spawn sent before its district server was listening is lost; a second
        one is harmless: districts ignore ids they have seen)."""
        if self.map is None or now - self._last_check < PLACE_AGAIN_AFTER:
            return
        self._last_check = now
        for record in list(self.agents.values()):
            placed = self._placed.get(record.id)
            if placed is not None and now - placed >= PLACE_AGAIN_AFTER:
                if self.view.where(record.id) is None:
                    await self._place(record)
                else:
                    del self._placed[record.id]

    async def _despawn(self, agent: str) -> None:
        if self.map is None:
            return
        for district in sorted({r.district for r in self.map.regions}):
            await self.bus.publish(
                self.topics["world.control"].build(world=self.world, district=district),
                DistrictControl(op="despawn", ids=[agent]),
            )

    # -- observations --------------------------------------------------------------------------
    async def _on_tick(self, tick: Tick) -> None:
        self.tick = tick.tick
        s = self.settings
        now = time.time()
        environment = {
            "world": self.world,
            "tick_rate": tick.rate,
            "dilation": tick.dilation,
            "bounds": self.map.bounds.model_dump() if self.map else None,
            "max_speed": s.scheduler_max_speed,
        }
        buildings = list(self.buildings.values())
        for record in list(self.agents.values()):
            if not record.due(tick.tick) or record.pending_tick is not None:
                continue
            here = self.view.where(record.id)
            region = self.index.region_at(*here) if here is not None else None
            obs = observe(
                record, tick.tick, self.view,
                sight=s.scheduler_sight, visible_max=s.scheduler_visible_max,
                deadline=s.scheduler_deadline,
                region=region.id if region else "", district=region.district if region else "",
                environment={**environment, "buildings": self._buildings_near(here, buildings)},
            )  # fmt: skip
            record.pending_tick = tick.tick
            record.deadline = now + s.scheduler_deadline
            self._observations.inc()
            await self.bus.publish(self.topics["agent.obs"].build(agent=record.id), obs)
            hosted = self.hosted.get(record.id)
            if hosted is not None:
                await self.bus.publish(
                    self.topics["agent.act"].build(agent=record.id), hosted.decide(obs)
                )

    def _buildings_near(
        self, here: tuple[float, float] | None, buildings: list[Building]
    ) -> list[dict[str, Any]]:
        if here is None:
            return []
        sight = self.settings.scheduler_sight
        near = []
        for b in buildings:
            cx = (b.bounds.x0 + b.bounds.x1) / 2
            cy = (b.bounds.y0 + b.bounds.y1) / 2
            if abs(cx - here[0]) <= sight and abs(cy - here[1]) <= sight:
                near.append(
                    {"building": building_key(b), "x": round(cx, 2), "y": round(cy, 2),
                     "claimed_by": b.claimed_by}
                )  # fmt: skip
        return near[:10]

    async def _deadlines(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.time()
            await self._replace_missing(now)
            for record in list(self.agents.values()):
                if record.pending_tick is not None and now > record.deadline:
                    self._outcomes["late"].inc()
                    await self._fail(
                        record,
                        "late",
                        f"no answer to the observation of tick {record.pending_tick} within "
                        f"{self.settings.scheduler_deadline:g} s",
                    )
            await self._flush_steers()

    # -- answers --------------------------------------------------------------------------------
    async def _on_act(self, agent: str, action: Action) -> None:
        record = self.agents.get(agent)
        if record is None:
            error = AgentError(
                tick=self.tick, code="unknown-agent", applied="none",
                reason="announce yourself first: publish {\"status\": \"ready\"} retained on "
                "your state topic",
            )  # fmt: skip
            await self.bus.publish(self.topics["agent.error"].build(agent=agent), error)
            return
        pending = record.pending_tick
        if pending is None or (action.tick is not None and action.tick != pending):
            self._outcomes["late"].inc()
            asked = f"tick {action.tick}" if action.tick is not None else "an observation"
            error = AgentError(
                tick=self.tick, code="late", applied="none",
                reason=f"the answer to {asked} came after its deadline (or none was asked)",
            )  # fmt: skip
            await self.bus.publish(self.topics["agent.error"].build(agent=agent), error)
            return
        result = check(action, max_speed=self.settings.scheduler_max_speed)
        if isinstance(result, Effect) and result.action == "claim":
            result = self._claimable(record, result)
        if isinstance(result, Rejected):
            self._outcomes["impossible"].inc()
            await self._fail(record, result.code, result.reason)
            return
        record.pending_tick = None
        record.answered += 1
        self._outcomes["answered"].inc()
        record.memory.append({"tick": pending, "action": action.action, "ok": True})
        remember = action.params.get("remember")
        if isinstance(remember, dict):
            record.notes.update(remember)
            await self._save(record)
        self._apply(record, result, pending)

    def _claimable(self, record: AgentRecord, effect: Effect) -> Effect | Rejected:
        building = self.buildings.get(effect.building)
        if building is None:
            return Rejected("impossible", f"no building {effect.building!r} in this city")
        if building.claimed_by not in (None, record.id):
            return Rejected("impossible", f"{effect.building} is claimed by {building.claimed_by}")
        here = self.view.where(record.id)
        bb = building.bounds
        if here is None or not (
            bb.x0 - CLAIM_REACH <= here[0] <= bb.x1 + CLAIM_REACH
            and bb.y0 - CLAIM_REACH <= here[1] <= bb.y1 + CLAIM_REACH
        ):
            return Rejected("impossible", f"stand at {effect.building} to claim it")
        # taken at once here, so a second claimant in the same moment is refused
        self.buildings[effect.building] = building.model_copy(update={"claimed_by": record.id})
        return effect

    def _apply(self, record: AgentRecord, effect: Effect, tick: int) -> None:
        if effect.action == "claim":
            building = self.buildings[effect.building]
            self.claims.append((building.district, effect.building, record.id))
            self._steer(record.id, 0.0, 0.0)
        elif effect.action in ("move", "wait"):
            self._steer(record.id, effect.vx, effect.vy)
        elif effect.say:
            here = self.view.where(record.id)
            if here is None:
                return
            for seen in self.view.near(here[0], here[1], self.settings.scheduler_sight, 1000,
                                       exclude=record.id):  # fmt: skip
                listener = self.agents.get(seen.id)
                if listener is not None and len(listener.inbox) < 50:
                    listener.inbox.append({"from": record.id, "text": effect.say, "tick": tick})

    async def _fail(self, record: AgentRecord, code: str, reason: str) -> None:
        """Tell the agent why, and apply the default action for the pending observation."""
        tick = record.pending_tick if record.pending_tick is not None else self.tick
        record.errors += 1
        applied = DEFAULT_ACTION if record.pending_tick is not None else "none"
        if record.pending_tick is not None:
            record.memory.append(
                {"tick": tick, "action": DEFAULT_ACTION, "ok": False, "error": code}
            )
            record.pending_tick = None
            self._steer(record.id, 0.0, 0.0)
        error = AgentError.model_validate(
            {"tick": tick, "code": code, "reason": reason, "applied": applied}
        )
        await self.bus.publish(self.topics["agent.error"].build(agent=record.id), error)

    def _steer(self, agent: str, vx: float, vy: float) -> None:
        here = self.view.where(agent)
        region = self.index.region_at(*here) if here is not None else None
        if region is not None:
            self.steers[region.district].append((agent, vx, vy))
        elif self.map is not None:
            for district in {r.district for r in self.map.regions}:
                self.steers[district].append((agent, vx, vy))

    async def _flush_steers(self) -> None:
        claims, self.claims = self.claims, []
        for region, building, agent in claims:
            if self.map is None or region not in self.index.position:
                continue
            await self.bus.publish(
                self.topics["world.control"].build(
                    world=self.world, district=self.index.district_of(region)
                ),
                DistrictControl(op="claim", building=building, agent=agent),
            )
        if not self.steers:
            return
        steers, self.steers = self.steers, defaultdict(list)
        for district, all_rows in steers.items():
            for start in range(0, len(all_rows), 500):  # each order fits one packet
                await self._steer_batch(district, all_rows[start : start + 500])

    async def _steer_batch(self, district: str, rows: list[tuple[str, float, float]]) -> None:
        n = len(rows)
        entities = EntityColumns(
            id=[r[0] for r in rows], x=[0.0] * n, y=[0.0] * n,
            vx=[r[1] for r in rows], vy=[r[2] for r in rows], swarm=[""] * n,
        )  # fmt: skip
        await self.bus.publish(
            self.topics["world.control"].build(world=self.world, district=district),
            DistrictControl(op="steer", entities=entities),
        )
