"""The district server: owns the entities of its regions, steps them on every tick, hands them off.

Subscribes to                                   Publishes
  world/{w}/regions      (who owns what)          world/{w}/region/{r}/updates   every tick
  world/{w}/clock        (ticks)                  world/{w}/region/{r}/halo      every tick
  swarm/+/config         (behaviours)             world/{w}/region/{r}/snapshot  every N ticks
  world/{w}/district/{me}/control (spawn...)      world/{w}/district/{me}/step   every tick
  world/{w}/district/{me}/handoff (offers...)     world/{w}/district/{d}/handoff to neighbours
  world/{w}/region/{r}/halo of neighbours

Everything arriving between ticks waits in one inbox and is applied at the start of the next
tick (or every `district_idle_interval` while the clock is paused), so a tick never sees the
world change under it. Ownership changes are journalled before they are announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any, ClassVar

import numpy as np

from bus import Bus, Message
from bus.batching import BatchPublisher
from bus.payloads import AgentState, Telemetry
from bus.topics import Topic
from components.district.city import City
from components.district.devices import Devices
from components.district.handoff import Outbound
from components.district.model import District
from components.district.settings import DistrictSettings
from components.district.store import DistrictStore
from components.runtime.component import Component
from store import StoreError, StoreSettings, open_store
from world import flocking, metrics
from world.geometry import halo_regions
from world.payloads import (
    DistrictControl,
    Handoff,
    RegionMap,
    StepReport,
    SwarmSpec,
    Tick,
)
from world.plugins import load_registry

__all__ = ["DistrictServer"]

UPDATE_FIELDS = ("id", "x", "y", "vx", "vy", "swarm")
SNAPSHOT_PART = 500  # entities per retained snapshot part: ~40 KiB, under the packet limit
MAX_SNAPSHOT_PARTS = 8  # after a restart: stale parts up to this many are cleared
HALO_FIELDS = ("x", "y", "vx", "vy")


class DistrictServer(Component):
    kind: ClassVar[str] = "district"
    settings_model: ClassVar[type[DistrictSettings]] = DistrictSettings
    settings: DistrictSettings

    def __init__(self, settings: DistrictSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.world = settings.world
        self.district = District(self.id, load_registry(settings.behaviour_plugins))
        self.store: DistrictStore | None = None
        self.inbox: list[tuple[str, Any]] = []
        self.accepts: list[tuple[str, str, list[str]]] = []  # (to, batch, ids) to send
        self.publishers: dict[str, tuple[BatchPublisher, BatchPublisher]] = {}
        self.halo_subs: dict[str, asyncio.Task[None]] = {}
        # parts of each region's last snapshot; a smaller one clears the parts left over
        self.snapshot_parts: dict[str, int] = defaultdict(lambda: MAX_SNAPSHOT_PARTS)
        self.city = City(self)
        self._persisting: asyncio.Task[None] | None = None
        self._persisted = time.monotonic()
        self.devices = Devices(self)
        self.loaded = asyncio.Event()
        t = self.topics
        self.step_topic = t["world.step"].build(world=self.world, district=self.id)
        self.control_topic = t["world.control"].build(world=self.world, district=self.id)
        self.handoff_topic = t["world.handoff"].build(world=self.world, district=self.id)
        self._tick_metric = metrics.TICK_DURATION.labels(self.world, "district")
        self._errors_metric = metrics.BEHAVIOUR_ERRORS.labels(self.world, self.id)
        self._out_metric = metrics.HANDOFFS.labels(self.world, self.id, "out")
        self._in_metric = metrics.HANDOFFS.labels(self.world, self.id, "in")
        self._latency_metric = metrics.HANDOFF_LATENCY.labels(self.world, self.id)
        self._count_metric = metrics.AGENTS_PER_DISTRICT.labels(self.world, self.id)

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.control_topic), str(self.handoff_topic)]

    # -- wiring ------------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        s = self.settings
        flocking.warm_up()  # the boids kernel compiled (or loaded) now, not in the first tick
        db = await open_store(StoreSettings(url=s.store_url))
        journal = db
        try:
            if s.journal_url() != s.store_url:
                journal = await open_store(StoreSettings(url=s.journal_url()))
            self.store = DistrictStore(db, self.world, self.id, journal)
            if await self.store.load(self.district):
                self.log.info(
                    "resumed at tick %d with %d entities, %d in flight",
                    self.district.tick,
                    len(self.district.table),
                    len(self.district.ledger),
                )
            self.loaded.set()
            t = self.topics
            subs = {
                "map": bus.subscribe(t["world.regions"].build(world=self.world)),
                "swarm": bus.subscribe(t["swarm.config"].build(swarm="+")),
                "control": bus.subscribe(self.control_topic),
                "handoff": bus.subscribe(self.handoff_topic),
                "telemetry": bus.subscribe(t["agent.telemetry"].build(agent="+"), maxsize=100_000),
                "directory": bus.subscribe(t["agent.state"].build(agent="+"), maxsize=100_000),
            }
            clock = bus.subscribe(t["world.clock"].build(world=self.world), maxsize=100_000)
            for sub in (*subs.values(), clock):
                await sub.start()
            self.serving()
            async with asyncio.TaskGroup() as tg:
                for name, sub in subs.items():
                    tg.create_task(self._collect(name, sub), name=f"district-{name}")
                tg.create_task(self._loop(clock), name="district-ticks")
        finally:
            for task in self.halo_subs.values():
                task.cancel()
            if self.store is not None and self.loaded.is_set():  # a clean stop: all of it
                state = self.district.dump()
                state["journal"] = self.store.last_index
                with contextlib.suppress(StoreError):
                    await self.store.snapshot(state)
            if self.store is not None:
                self.store.close()
            if journal is not db:
                await journal.close()
            await db.close()

    async def _collect(self, name: str, sub: Any) -> None:
        async for msg in sub:
            self.inbox.append((name, msg))

    async def _loop(self, clock: Any) -> None:
        idle = self.settings.district_idle_interval
        while True:
            try:
                msg = await clock.get(timeout=idle)
            except TimeoutError:
                await self.process(None)
                continue
            tick = msg.payload
            if isinstance(tick, Tick) and tick.tick > self.district.tick:
                await self.process(tick)

    # -- one tick ----------------------------------------------------------------------------
    async def process(self, tick: Tick | None) -> None:
        """Apply the inbox, step (on a tick), persist what changed owner, then announce it."""
        started = time.perf_counter()
        d = self.district
        inbox, self.inbox = self.inbox, []
        for name, msg in inbox:
            await self._apply(name, msg)
        errors = stepped = 0
        handoffs_in = d.handoffs_in
        if tick is not None:
            outcome = d.step(tick.tick, tick.dt)
            errors, stepped = outcome.errors, outcome.stepped
            if errors:
                self._errors_metric.inc(errors)
        elif inbox or d.ledger.outbound:
            d.borders(time.time())
        journal = d.take_journal()
        changed = bool(journal)
        if journal:
            try:
                assert self.store is not None
                await self.store.journal(journal)
            except StoreError as exc:  # announce nothing we could not make durable
                self.log.error("journal not persisted, retrying next tick: %s", exc)
                self._restore_journal(journal)
                return
            self._out_metric.inc(sum(len(b.entities) for b in journal.given))
            self._in_metric.inc(d.handoffs_in - handoffs_in)
        await self._announce()
        if self.devices.announce:
            await self.devices.publish()
        if tick is not None:
            await self._publish_tick(tick, started, errors, stepped)
        elif changed:  # paused, yet owners changed: say so (drains and scales wait on it)
            await self._report(d.tick, started)

    def _restore_journal(self, journal: Any) -> None:
        d = self.district
        pending = d.take_journal()
        journal.taken += pending.taken
        journal.given += pending.given
        journal.accepted += pending.accepted
        journal.removed += pending.removed
        d.journal = journal

    async def _apply(self, name: str, msg: Message[Any]) -> None:
        payload = msg.payload
        d = self.district
        if name == "map" and isinstance(payload, RegionMap):
            if d.set_map(payload):
                self._follow_halo()
                await self.city.adopt()
                for region in list(self.publishers):
                    if region not in {r.id for r in d.own}:
                        del self.publishers[region]
        elif name == "swarm" and isinstance(payload, SwarmSpec):
            d.set_swarm(payload)
        elif name == "control" and isinstance(payload, DistrictControl):
            if payload.op == "spawn" and payload.entities is not None:
                d.spawn(payload.entities)
            elif payload.op == "despawn":
                if payload.ids:
                    d.despawn_ids(payload.ids)
                if payload.swarm:
                    d.despawn(payload.swarm, payload.count)
            elif payload.op == "steer" and payload.entities is not None:
                d.steer(payload.entities)
            elif payload.op == "claim":
                await self.city.claim(payload.building, payload.agent)
        elif name == "telemetry" and isinstance(payload, Telemetry):
            await self.devices.telemetry(msg, payload)
        elif name == "directory" and isinstance(payload, AgentState):
            self.devices.heard(msg.params["agent"], payload)
        elif name == "handoff" and isinstance(payload, Handoff):
            if payload.op == "offer" and payload.entities is not None:
                ids = d.offer_received(payload.entities)
                self.accepts.append((payload.sender, payload.batch, ids))
                self.devices.taken(ids)
            elif payload.op == "accept":
                done = d.accept_received(payload.batch)
                if done is not None and done.sent:
                    self._latency_metric.observe(max(0.0, time.time() - done.sent))

    async def _announce(self) -> None:
        bus = self.bus
        accepts, self.accepts = self.accepts, []
        for to, batch_id, ids in accepts:
            topic = self.topics["world.handoff"].build(world=self.world, district=to)
            accept = Handoff(op="accept", batch=batch_id, sender=self.id, ids=ids, sent=time.time())
            await bus.publish(topic, accept)
        now = time.time()
        for batch in self.district.ledger.due(now, self.settings.district_handoff_retry):
            await self._offer(batch, now)

    async def _offer(self, batch: Outbound, now: float) -> None:
        topic = self.topics["world.handoff"].build(world=self.world, district=batch.to)
        if batch.sent == 0.0:
            batch.sent = now
        batch.tries += 1
        await self.bus.publish(
            topic,
            Handoff(
                op="offer", batch=batch.batch, sender=self.id, entities=batch.entities, sent=now
            ),
        )

    async def _publish_tick(
        self, tick: Tick, started: float, errors: int = 0, stepped: int = 0
    ) -> None:
        d = self.district
        rows = d.region_rows()
        snapshot_due = tick.tick % self.settings.district_snapshot_every == 0
        table = d.table
        pos = np.round(table.pos, 3)
        vel = np.round(table.vel, 3)
        for region in d.own:
            r = rows[region.id]
            updates, halo = self._publishers(region.id)
            meta = {"tick": tick.tick, "region": region.id}  # and `sent`, per message
            if not len(r):  # an empty region says so too: nobody is left there
                updates.add_empty(meta, stamp="sent")
            else:  # each message says when it was made (`sent`): it leaves as it is made
                updates.add_columns(
                    {
                        "id": table.ids_of(r),
                        "x": pos[r, 0],
                        "y": pos[r, 1],
                        "vx": vel[r, 0],
                        "vy": vel[r, 1],
                        "swarm": table.swarms_of(r),
                    },
                    meta,
                    stamp="sent",
                )
            margin = self.settings.district_halo
            if margin > 0:
                near = d.halo_rows(region, margin, r)
                columns = {
                    "x": pos[near, 0],
                    "y": pos[near, 1],
                    "vx": vel[near, 0],
                    "vy": vel[near, 1],
                }
                if len(near):
                    halo.add_columns(columns, meta, stamp="sent")
                else:  # an empty halo still says "nobody near the border at this tick"
                    halo.add_empty(meta, stamp="sent")
            if snapshot_due:
                await self._snapshot_region(region.id, r, tick)
        self._maybe_persist()
        for updates, halo in self.publishers.values():
            updates._flush_now()
            halo._flush_now()
        await self._report(tick.tick, started, rows, tick.sent, errors, stepped)

    async def _report(
        self,
        tick: int,
        started: float,
        rows: dict[str, Any] | None = None,
        sent: float = 0.0,
        errors: int = 0,
        stepped: int = 0,
    ) -> None:
        d = self.district
        table = d.table
        if rows is None:
            rows = d.region_rows()
        speed = np.linalg.norm(table.vel, axis=1)
        unit = table.vel / np.where(speed > 0, speed, 1.0)[:, None]
        k = len(table.swarms)
        sums = np.column_stack(
            (
                np.bincount(table.group, weights=unit[:, 0], minlength=k),
                np.bincount(table.group, weights=unit[:, 1], minlength=k),
            )
        )
        report = StepReport(
            district=self.id,
            tick=tick,
            duration=time.perf_counter() - started,
            entities=len(table),
            stepped=stepped,
            regions={k: len(v) for k, v in rows.items()},
            swarms=table.count_by_swarm(),
            handoffs_out=d.handoffs_out,
            handoffs_in=d.handoffs_in,
            pending=len(d.ledger),
            tick_sent=sent,
            errors=errors,
            map_version=d.map.version if d.map is not None else 0,
            in_flight=d.in_flight(),
            draining={region: len(batches) for region, batches in d.draining.items()},
            headings={
                name: [round(float(x), 4), round(float(y), 4)]
                for name, (x, y) in zip(table.swarms, sums.tolist(), strict=True)
                if name
            },
        )
        self._tick_metric.observe(report.duration)
        self._count_metric.set(len(table))
        await self.bus.publish(self.step_topic, report)

    def _maybe_persist(self) -> None:
        """Every `district_persist_interval` seconds, write the whole state in the background
        (the tick does not wait for it; the journal already holds every change of owner)."""
        now = time.monotonic()
        busy = self._persisting is not None and not self._persisting.done()
        if (
            busy
            or self.store is None
            or now - self._persisted < self.settings.district_persist_interval
        ):
            return
        self._persisted = now
        state = self.district.dump()
        state["journal"] = self.store.last_index  # every journal entry so far is in `state`
        self._persisting = asyncio.get_running_loop().create_task(self._persist(state))

    async def _persist(self, state: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            await self.store.snapshot(state)
        except StoreError as exc:
            self.log.error("district state not persisted (the journal has its changes): %s", exc)

    def _publishers(self, region: str) -> tuple[BatchPublisher, BatchPublisher]:
        pair = self.publishers.get(region)
        if pair is None:
            t = self.topics
            pair = (
                self.bus.batcher(
                    t["region.updates"].build(world=self.world, region=region),
                    UPDATE_FIELDS,
                    max_delay=0.001,
                ),
                self.bus.batcher(
                    t["region.halo"].build(world=self.world, region=region),
                    HALO_FIELDS,
                    max_delay=0.001,
                ),
            )
            self.publishers[region] = pair
        return pair

    async def _snapshot_region(self, region_id: str, rows: Any, tick: Tick | int) -> None:
        """Publish a region's retained snapshot in parts of `SNAPSHOT_PART` entities.

        Hot path (every N ticks, every entity): the parts are built as plain dicts over numpy
        columns and encoded by orjson, not through `RegionSnapshot` (3x slower at 10k); the
        tests validate what arrives against the model."""
        d = self.district
        table = d.table
        number = tick.tick if isinstance(tick, Tick) else tick
        region = next(r for r in d.own if r.id == region_id)
        now = time.time()
        chunk = SNAPSHOT_PART
        rows = np.asarray(rows, dtype=np.intp)
        parts = max(1, -(-len(rows) // chunk))
        topic = self.topics["region.snapshot"]
        qos = int(topic.qos)
        # one contiguous array per column: orjson encodes only C-contiguous numpy arrays
        x, y = np.round(table.pos[rows], 3).T.copy()
        vx, vy = np.round(table.vel[rows], 3).T.copy()
        ov = table.ov[rows]
        ids = table.ids_of(rows)
        swarms = table.swarms_of(rows)
        head = {
            "world": self.world,
            "region": region_id,
            "district": self.id,
            "bounds": region.bounds.model_dump(),
            "tick": number,
            "version": number,
            "synced": now,
            "parts": parts,
            "total": len(rows),
        }
        for part in range(parts):
            cut = slice(part * chunk, (part + 1) * chunk)
            entities = {
                "id": ids[cut],
                "x": x[cut],
                "y": y[cut],
                "vx": vx[cut],
                "vy": vy[cut],
                "swarm": swarms[cut],
                "ov": ov[cut],
            }
            data = self.bus.encode({**head, "part": part, "entities": entities})
            await self.bus.publish_bytes(
                str(topic.build(world=self.world, region=region_id, part=str(part))),
                data,
                qos,
                True,
            )
        for stale in range(parts, self.snapshot_parts.get(region_id, 0)):
            await self.bus.clear_retained(
                topic.build(world=self.world, region=region_id, part=str(stale))
            )
        self.snapshot_parts[region_id] = parts
        if isinstance(tick, Tick):
            metrics.REGION_SYNC_LAG.labels(self.world, region_id).set(max(0.0, now - tick.sent))

    # -- halo ----------------------------------------------------------------------------------
    def _follow_halo(self) -> None:
        """Subscribe to the halo streams of the neighbouring regions other servers own."""
        d = self.district
        margin = self.settings.district_halo
        wanted: set[str] = set()
        if margin > 0 and d.map is not None:
            for region in d.own:
                for other in halo_regions(region, d.map, margin):
                    if other.district != self.id:
                        wanted.add(other.id)
        for gone in set(self.halo_subs) - wanted:
            self.halo_subs.pop(gone).cancel()
            d.halo.pop(gone, None)
        for new in wanted - set(self.halo_subs):
            self.halo_subs[new] = asyncio.get_running_loop().create_task(
                self._halo(new), name=f"district-halo-{new}"
            )

    async def _halo(self, region: str) -> None:
        topic: Topic = self.topics["region.halo"].build(world=self.world, region=region)
        parts: dict[int, list[Any]] = defaultdict(list)
        async for msg in self.bus.subscribe(topic):
            batch = msg.payload
            tick = int(batch.meta.get("tick", 0))
            parts[tick].append(batch.columns)
            for old in [t for t in parts if t < tick]:  # a newer tick: the older one is whole
                cols = parts.pop(old)
                pos = np.empty((sum(len(c["x"]) for c in cols), 2), dtype=np.float64)
                vel = np.empty_like(pos)
                pos[:, 0] = np.concatenate([c["x"] for c in cols])
                pos[:, 1] = np.concatenate([c["y"] for c in cols])
                vel[:, 0] = np.concatenate([c["vx"] for c in cols])
                vel[:, 1] = np.concatenate([c["vy"] for c in cols])
                self.district.halo[region] = (pos, vel)

    async def republish(self, bus: Bus) -> None:
        for building in self.city.buildings.values():
            await self.city.publish(building)
        for region in self.district.own:
            rows = self.district.region_rows().get(region.id)
            if rows is not None:
                await self._snapshot_region(region.id, rows, self.district.tick)
