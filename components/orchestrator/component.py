"""The orchestrator: the world clock, the region map and the world's control service.

Each tick: send the tick (`world/{w}/clock`), the district servers step and report
(`world/{w}/district/+/step`), the reports are reconciled into counts, and the retained world
snapshot is refreshed every `world_snapshot_interval`. It owns the region map
(`world/{w}/regions`, retained) and answers `rpc/world-{w}/{method}`:

  pause, resume, tick-rate {rate}, status, region-show {region}, region-drain {region, target}

Its state (tick, rate, paused, region map) is persisted, so a restart resumes the same world.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from bus import Bus
from components.orchestrator.clock import Clock
from components.orchestrator.regions import RegionError, drain, rebalance
from components.orchestrator.settings import OrchestratorSettings
from components.runtime.component import Component
from store import Store, StoreError, StoreSettings, open_store
from world import metrics
from world.geometry import grid_layout
from world.payloads import Bounds, RegionMap, StepReport, Tick, WorldSnapshot

__all__ = ["Orchestrator"]

STALE_SNAPSHOT_PARTS = 64  # parts of a vanished region's snapshot cleared (32,000 entities)


class Orchestrator(Component):
    kind: ClassVar[str] = "orchestrator"
    settings_model: ClassVar[type[OrchestratorSettings]] = OrchestratorSettings
    settings: OrchestratorSettings

    def __init__(self, settings: OrchestratorSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.world = settings.world
        self.clock = Clock(settings.world_rate, settings.world_dilation_floor)
        self.clock.paused = settings.world_paused
        self.map = self._initial_map()
        self.reports: dict[str, StepReport] = {}
        self.db: Store | None = None
        self.changed = asyncio.Event()  # the map or the clock changed: snapshot now
        self.service = f"world-{self.world}"
        t = self.topics
        self.clock_topic = t["world.clock"].build(world=self.world)
        self.map_topic = t["world.regions"].build(world=self.world)
        self.snapshot_topic = t["world.snapshot"].build(world=self.world)
        self.rpc_topic = t["rpc.request"].build(service=self.service)
        self._tick_metric = metrics.TICK_DURATION.labels(self.world, "orchestrator")
        self._dilation_metric = metrics.DILATION.labels(self.world)
        self._rate_metric = metrics.TICK_RATE.labels(self.world)
        self._tick_started: float | None = None

    def _initial_map(self) -> RegionMap:
        s = self.settings
        x0, y0, x1, y1 = s.bounds_tuple()
        bounds = Bounds(x0=x0, y0=y0, x1=x1, y1=y1)
        cols, rows = (int(v) for v in s.world_layout.split("x"))
        regions = grid_layout(bounds, cols, rows, s.district_ids(), s.region_names())
        return RegionMap(world=self.world, version=1, bounds=bounds, regions=regions)

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.rpc_topic)]

    # -- wiring ------------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        self.db = await open_store(StoreSettings(url=self.settings.store_url))
        try:
            await self._load()
            reports = bus.subscribe(
                self.topics["world.step"].build(world=self.world, district="+"), maxsize=100_000
            )
            requests = bus.subscribe(self.rpc_topic)
            await reports.start()
            await requests.start()
            await bus.publish(self.map_topic, self.map)
            self.serving()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._reports(reports), name="orchestrator-reports")
                tg.create_task(self.answer_requests(requests, self.handle), name="orchestrator-rpc")
                tg.create_task(self._snapshots(), name="orchestrator-snapshots")
                tg.create_task(self._ticks(), name="orchestrator-clock")
        finally:
            await self.db.close()

    async def _load(self) -> None:
        assert self.db is not None
        snap = await self.db.get_snapshot("world", self.world, "state")
        if snap is None:
            return
        state = snap.payload
        self.map = RegionMap.model_validate(state["map"])
        self.clock.tick = int(state.get("tick", 0))
        self.clock.set_rate(float(state.get("rate", self.clock.rate)))
        self.clock.paused = bool(state.get("paused", self.clock.paused))
        self.log.info("resumed world %s at tick %d", self.world, self.clock.tick)

    async def _persist(self) -> None:
        assert self.db is not None
        state = {
            "map": self.map.model_dump(),
            "tick": self.clock.tick,
            "rate": self.clock.rate,
            "paused": self.clock.paused,
        }
        try:
            await self.db.put_snapshot("world", self.world, "state", state)
        except StoreError as exc:
            self.log.error("world state not persisted: %s", exc)

    # -- the clock -----------------------------------------------------------------------------
    def districts(self) -> set[str]:
        return {r.district for r in self.map.regions}

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        wake = self._wake = asyncio.Event()
        while True:
            now = loop.time()
            if clock.paused:
                await wake.wait()
                wake.clear()
                continue
            if not clock.ready(now):
                # the budget's end, or (districts still busy) their reports or the floor
                delay = clock.next_at() - now
                with contextlib.suppress(TimeoutError):  # not wait_for: it can eat a cancel
                    async with asyncio.timeout(max(0.0, delay)):
                        await wake.wait()
                wake.clear()
                continue
            if self._tick_started is not None:  # the whole previous tick: send to all reports
                self._tick_metric.observe(now - self._tick_started)
            self._tick_started = now
            number = clock.start_tick(now, self.districts())
            await self.bus.publish(
                self.clock_topic,
                Tick(
                    world=self.world,
                    tick=number,
                    sent=time.time(),
                    dt=clock.dt,
                    rate=clock.rate,
                    dilation=clock.dilation,
                ),
            )
            self._dilation_metric.set(clock.dilation)
            self._rate_metric.set(clock.achieved)

    async def _reports(self, sub: Any) -> None:
        async for batch in sub.batches():
            for msg in batch:
                report = msg.payload
                if isinstance(report, StepReport):
                    self.reports[report.district] = report
                    self.clock.reported(report.district, report.tick)
            if not self.clock.waiting:
                self._wake.set()

    async def _snapshots(self) -> None:
        interval = self.settings.world_snapshot_interval
        while True:
            await self._rebalance()
            await self.bus.publish(self.snapshot_topic, self.snapshot())
            await self._persist()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.changed.wait()
            self.changed.clear()

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for report in self.reports.values():
            for region, n in report.regions.items():
                counts[region] = counts.get(region, 0) + n
        return counts

    def snapshot(self) -> WorldSnapshot:
        counts = self.counts()
        clock = self.clock
        return WorldSnapshot(
            world=self.world,
            tick=clock.tick,
            rate=max(clock.achieved, 1e-9) if not clock.paused else clock.rate,
            target_rate=clock.rate,
            dilation=clock.dilation,
            dilation_floor=clock.floor,
            paused=clock.paused,
            entities=sum(r.entities for r in self.reports.values()),
            version=self.map.version,
            regions=[
                r.model_copy(update={"entities": counts.get(r.id, 0), "version": self.map.version})
                for r in self.map.regions
            ],
            districts={d: r.entities for d, r in sorted(self.reports.items())},
            updated=time.time(),
        )

    async def _set_map(self, region_map: RegionMap) -> None:
        gone = {r.id for r in self.map.regions} - {r.id for r in region_map.regions}
        self.map = region_map
        await self.bus.publish(self.map_topic, region_map)
        snapshot = self.topics["region.snapshot"]
        for region in sorted(gone):  # a split or merged region's retained snapshot is history
            for part in range(STALE_SNAPSHOT_PARTS):
                await self.bus.clear_retained(
                    snapshot.build(world=self.world, region=region, part=str(part))
                )
        await self._persist()
        self.changed.set()

    async def _rebalance(self) -> None:
        s = self.settings
        if not (s.world_split_above or s.world_merge_below):
            return
        moved = rebalance(
            self.map,
            self.counts(),
            split_above=s.world_split_above,
            merge_below=s.world_merge_below,
            districts=sorted(self.districts() | set(s.district_ids())),
        )
        if moved is not None:
            self.log.info("rebalanced regions: %s", [r.id for r in moved.regions])
            await self._set_map(moved)

    # -- the control service ---------------------------------------------------------------------
    async def handle(self, method: str, args: dict[str, Any]) -> Any:
        clock = self.clock
        if method == "pause":
            clock.paused = True
            self.changed.set()
            await self._persist()
            return {"paused": True, "tick": clock.tick}
        if method == "resume":
            clock.resume()
            self._wake.set()
            self.changed.set()
            await self._persist()
            return {"paused": False, "tick": clock.tick}
        if method == "tick-rate":
            if "rate" not in args:
                raise ValueError("tick-rate needs a rate (ticks per second)")
            clock.set_rate(float(args["rate"]))
            self._wake.set()
            self.changed.set()
            await self._persist()
            return {"rate": clock.rate}
        if method == "status":
            return self.snapshot().model_dump()
        if method == "region-show":
            return self._region(str(args.get("region", "")))
        if method == "region-drain":
            return await self._drain(str(args.get("region", "")), str(args.get("target", "")))
        raise ValueError(
            f"unknown method {method!r}; methods: pause, resume, tick-rate, status, "
            "region-show, region-drain"
        )

    def _region(self, region: str) -> dict[str, Any]:
        for info in self.snapshot().regions:
            if info.id == region:
                return info.model_dump()
        known = ", ".join(sorted(r.id for r in self.map.regions))
        raise RegionError(f"unknown region {region!r}; regions: {known}")

    async def _drain(self, region: str, target: str, timeout: float = 30.0) -> dict[str, Any]:
        before = self._region(region)
        source = before["district"]
        await self._set_map(drain(self.map, region, target))
        version = self.map.version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:  # done when the old owner holds nothing of it any more
            report = self.reports.get(source)
            if (
                report is not None
                and report.map_version >= version
                and region not in report.regions
                and not report.draining.get(region, 0)
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise ValueError(f"drain of {region!r} did not finish within {timeout:.0f} s")
        return {
            "region": region,
            "from": source,
            "to": self.map.regions[[r.id for r in self.map.regions].index(region)].district,
            "moved": before["entities"],
            "version": version,
        }
