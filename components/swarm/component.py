"""The swarm coordinator: creates swarms, scales them, pauses and resumes them, reports on them.

A swarm's definition is retained on `swarm/{s}/config`; the district servers step its members
by it. Members live where they are in the world: the coordinator spawns them by sending
`spawn` orders to the district servers that own their spots, and learns the counts from the
districts' step reports. It answers `rpc/swarm/{method}`:

  create {name, behaviour, bounds?, size, max_size, params, world}   scale {name, target, rate}
  pause {name?}   resume {name?}   status {name}   list

and publishes the retained `swarm/{s}/status` every `swarm_status_interval` and
`swarm/{s}/progress` while a scale runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from typing import Any, ClassVar

from bus import Bus
from components.runtime.component import Component
from components.swarm.scaling import coupling, despawn_plan, spawn_plan
from components.swarm.settings import SwarmSettings
from store import Store, StoreError, StoreSettings, open_store
from world import metrics
from world.payloads import (
    Bounds,
    DistrictControl,
    RegionMap,
    ScaleProgress,
    StepReport,
    SwarmSpec,
    SwarmStatus,
    WorldSnapshot,
)
from world.plugins import load_registry

__all__ = ["SwarmCoordinator", "SwarmError"]


# Parameters a swarm gets when it is created without any: sized for a world of hundreds of
# units at tens of ticks per second (Mesa's flocking defaults move one unit per second).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flocking": {"speed": 12.0, "vision": 25.0, "separation": 4.0},
    "drift": {"speed": 5.0},
    "formation": {"shape": "circle", "spacing": 4.0, "max_speed": 8.0},
    "tasks": {"policy": "nearest", "max_speed": 8.0},
}


class SwarmError(ValueError):
    """A swarm request that cannot be done (unknown swarm, bad size, ...)."""


class SwarmCoordinator(Component):
    kind: ClassVar[str] = "swarm"
    settings_model: ClassVar[type[SwarmSettings]] = SwarmSettings
    settings: SwarmSettings

    def __init__(self, settings: SwarmSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.specs: dict[str, SwarmSpec] = {}
        self.spawned: dict[str, int] = {}  # members ever issued (the next member index)
        self.removed: dict[str, int] = {}  # members ever ordered removed
        self.maps: dict[str, RegionMap] = {}
        self.worlds: dict[str, WorldSnapshot] = {}
        self.reports: dict[str, dict[str, StepReport]] = {}  # world -> district -> report
        self.seen: dict[tuple[str, str], float] = {}  # (world, district) -> receive time
        self.rates: dict[tuple[str, str], tuple[int, float, float]] = {}  # tick, time, rate
        self.scales: dict[str, asyncio.Task[None]] = {}
        self.scaling: dict[str, ScaleProgress] = {}
        self.reported = asyncio.Event()
        self.behaviours = set(load_registry(settings.behaviour_plugins).ids())
        self.db: Store | None = None
        self._requests = itertools.count(1)
        self.rpc_topic = self.topics["rpc.request"].build(service="swarm")

    def serves(self) -> list[str]:
        return [*super().serves(), str(self.rpc_topic)]

    # -- wiring ------------------------------------------------------------------------------
    async def main(self, bus: Bus) -> None:
        self.db = await open_store(StoreSettings(url=self.settings.store_url))
        try:
            await self._load()
            t = self.topics
            subs = [
                bus.subscribe(t["world.regions"].build(world="+")),
                bus.subscribe(t["world.snapshot"].build(world="+")),
                bus.subscribe(t["world.step"].build(world="+", district="+"), maxsize=100_000),
            ]
            requests = bus.subscribe(self.rpc_topic)
            for sub in (*subs, requests):
                await sub.start()
            for spec in self.specs.values():
                await self._publish_spec(spec)
            self.serving()
            async with asyncio.TaskGroup() as tg:
                for sub in subs:
                    tg.create_task(self._watch(sub), name="swarm-watch")
                tg.create_task(self.answer_requests(requests, self.handle), name="swarm-rpc")
                tg.create_task(self._status_loop(), name="swarm-status")
                tg.create_task(self._initial(), name="swarm-initial")
        finally:
            for task in self.scales.values():
                task.cancel()
            await self.db.close()

    async def _load(self) -> None:
        assert self.db is not None
        for snap in await self.db.list_snapshots("swarm"):
            spec = SwarmSpec.model_validate(snap.payload["spec"])
            self.specs[spec.name] = spec
            self.spawned[spec.name] = int(snap.payload.get("spawned", 0))
            self.removed[spec.name] = int(snap.payload.get("removed", 0))
        if self.specs:
            self.log.info("resumed %d swarms: %s", len(self.specs), sorted(self.specs))

    async def _save(self, spec: SwarmSpec) -> None:
        assert self.db is not None
        try:
            await self.db.put_snapshot(
                "swarm",
                spec.name,
                "spec",
                {
                    "spec": spec.model_dump(),
                    "spawned": self.spawned.get(spec.name, 0),
                    "removed": self.removed.get(spec.name, 0),
                },
            )
        except StoreError as exc:
            self.log.error("swarm %s not persisted: %s", spec.name, exc)

    async def _initial(self) -> None:
        """Create the swarms of `swarm_initial` that do not exist yet, once the world is up."""
        wanted = [item.split(":") for item in filter(None, self.settings.swarm_initial.split(","))]
        while wanted and self.settings.world not in self.maps:
            await self.reported.wait()  # set by every batch of world messages
        for name, behaviour, size in wanted:
            if name not in self.specs:
                try:
                    await self.create({"name": name, "behaviour": behaviour, "size": int(size)})
                    self.log.info("created swarm %s (%s, %s members)", name, behaviour, size)
                except (SwarmError, ValueError) as exc:
                    self.log.error("MAPLEVERSE_SWARM_INITIAL: swarm %s: %s", name, exc)

    async def _publish_spec(self, spec: SwarmSpec) -> None:
        await self.bus.publish(self.topics["swarm.config"].build(swarm=spec.name), spec)

    async def _watch(self, sub: Any) -> None:
        async for batch in sub.batches():
            now = time.time()
            for msg in batch:
                p = msg.payload
                if isinstance(p, RegionMap):
                    self.maps[p.world] = p
                elif isinstance(p, WorldSnapshot):
                    self.worlds[p.world] = p
                elif isinstance(p, StepReport):
                    world = msg.params["world"]
                    key = (world, p.district)
                    last = self.rates.get(key)
                    if last is not None and p.tick > last[0] and now > last[1]:
                        rate = (p.tick - last[0]) / (now - last[1])
                        self.rates[key] = (p.tick, now, 0.8 * last[2] + 0.2 * rate)
                    elif last is None:
                        self.rates[key] = (p.tick, now, 0.0)
                    self.reports.setdefault(world, {})[p.district] = p
                    self.seen[key] = now
            self.reported.set()
            self.reported = asyncio.Event()

    # -- counts ------------------------------------------------------------------------------
    def by_district(self, name: str) -> dict[str, int]:
        spec = self.specs[name]
        return {
            d: r.swarms.get(name, 0)
            for d, r in self.reports.get(spec.world, {}).items()
            if r.swarms.get(name, 0)
        }

    def count(self, name: str) -> int:
        """Members the districts hold, including those in flight between two of them (so a
        member can be counted twice for the moment its new owner has it and the old one has
        not heard so yet; never more than `in_flight`)."""
        return sum(self.by_district(name).values()) + self.in_flight(name)

    def in_flight(self, name: str) -> int:
        spec = self.specs[name]
        return sum(r.in_flight.get(name, 0) for r in self.reports.get(spec.world, {}).values())

    def status(self, name: str) -> SwarmStatus:
        spec = self.specs[name]
        reports = self.reports.get(spec.world, {})
        districts = self.by_district(name)
        now = time.time()
        world = self.worlds.get(spec.world)
        paused_world = world.paused if world is not None else False
        ages = [now - self.seen.get((spec.world, d), 0.0) for d in districts]
        if spec.paused or paused_world or not ages or max(ages) < 2.0:
            health = "ok"
        elif max(ages) < 5.0:
            health = "degraded"
        else:
            health = "stalled"
        ups = sum(
            n * self.rates.get((spec.world, d), (0, 0.0, 0.0))[2] for d, n in districts.items()
        )
        latencies = [
            max(0.0, self.seen.get((spec.world, d), 0.0) - reports[d].tick_sent) * 1000
            for d in districts
            if reports[d].tick_sent
        ]
        state = "scaling" if name in self.scales else ("paused" if spec.paused else "running")
        agents = self.count(name)
        return SwarmStatus(
            name=name,
            behaviour=spec.behaviour,
            state=state,
            agents=agents,
            target=spec.size,
            max_size=spec.max_size,
            health=health,
            updates_per_second=0.0 if spec.paused or paused_world else round(ups, 1),
            mean_latency_ms=round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
            coupling=round(coupling(name, {d: reports[d] for d in districts}), 4),
            districts=districts,
            updated=now,
        )

    async def _status_loop(self) -> None:
        while True:
            for name in list(self.specs):
                status = self.status(name)
                metrics.SWARM_AGENT_COUNT.labels(name).set(status.agents)
                await self.bus.publish(self.topics["swarm.status"].build(swarm=name), status)
            await asyncio.sleep(self.settings.swarm_status_interval)

    # -- requests ------------------------------------------------------------------------------
    def _spec(self, args: dict[str, Any]) -> SwarmSpec:
        name = args.get("name")
        if not name:
            raise SwarmError("name the swarm (name)")
        spec = self.specs.get(str(name))
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none yet"
            raise SwarmError(f"unknown swarm {name!r}; swarms: {known}")
        return spec

    async def handle(self, method: str, args: dict[str, Any]) -> Any:
        if method == "create":
            return await self.create(args)
        if method == "scale":
            spec = self._spec(args)
            if "target" not in args:
                raise SwarmError("scale needs a target size")
            return await self.scale(spec, int(args["target"]), float(args.get("rate", 0) or 0))
        if method in ("pause", "resume"):
            names = [self._spec(args).name] if args.get("name") else sorted(self.specs)
            for name in names:
                spec = self.specs[name].model_copy(
                    update={"paused": method == "pause", "version": self.specs[name].version + 1}
                )
                self.specs[name] = spec
                await self._publish_spec(spec)
                await self._save(spec)
            return {"swarms": names, "paused": method == "pause"}
        if method == "status":
            return self.status(self._spec(args).name).model_dump()
        if method == "list":
            return [self.status(name).model_dump() for name in sorted(self.specs)]
        raise SwarmError(
            f"unknown method {method!r}; methods: create, scale, pause, resume, status, list"
        )

    async def create(self, args: dict[str, Any]) -> dict[str, Any]:
        name = str(args.get("name", ""))
        if name in self.specs:
            raise SwarmError(f"swarm {name!r} already exists")
        world = str(args.get("world", self.settings.world))
        region_map = self.maps.get(world)
        if region_map is None:
            raise SwarmError(f"world {world!r} has no region map yet (is its orchestrator up?)")
        behaviour = str(args.get("behaviour", "flocking"))
        if behaviour not in self.behaviours:
            raise SwarmError(
                f"unknown behaviour {behaviour!r}; behaviours: {', '.join(sorted(self.behaviours))}"
            )
        bounds = args.get("bounds")
        if bounds is None:
            bounds_model = region_map.bounds
        elif isinstance(bounds, list | tuple) and len(bounds) == 4:
            bounds_model = Bounds(x0=bounds[0], y0=bounds[1], x1=bounds[2], y1=bounds[3])
        else:
            bounds_model = Bounds.model_validate(bounds)
        size = int(args.get("size", 0))
        spec = SwarmSpec(
            name=name,
            world=world,
            behaviour=behaviour,
            params=dict(args.get("params") or DEFAULT_PARAMS.get(behaviour, {})),
            bounds=bounds_model,
            size=0,
            max_size=int(args.get("max_size", 100_000)),
            created=time.time(),
        )
        if size > spec.max_size:
            raise SwarmError(f"size {size} is over max_size {spec.max_size}")
        self.specs[name] = spec
        self.spawned[name] = 0
        self.removed[name] = 0
        await self._publish_spec(spec)
        await self._save(spec)
        progress = await self.scale(spec, size, 0.0) if size else None
        return {"swarm": spec.model_dump(), "scale": progress}

    async def scale(self, spec: SwarmSpec, target: int, rate: float) -> dict[str, Any]:
        """Start moving the swarm to `target` members (`rate` per second, 0: at once)."""
        if target < 0:
            raise SwarmError("target must be 0 or more")
        if target > spec.max_size:
            raise SwarmError(
                f"target {target} is over swarm {spec.name!r}'s max_size {spec.max_size}"
            )
        if spec.world not in self.maps:
            raise SwarmError(f"world {spec.world!r} has no region map yet")
        running = self.scales.pop(spec.name, None)
        if running is not None:
            running.cancel()
        spec = spec.model_copy(update={"size": target, "version": spec.version + 1})
        self.specs[spec.name] = spec
        await self._publish_spec(spec)
        await self._save(spec)
        request = f"{spec.name}-{next(self._requests)}-{int(time.time() * 1000):x}"
        start = self.count(spec.name)
        progress = ScaleProgress(
            name=spec.name, request=request, start=start, target=target, current=start
        )
        self.scaling[spec.name] = progress
        task = asyncio.get_running_loop().create_task(self._scale(spec, progress, rate))
        self.scales[spec.name] = task
        task.add_done_callback(functools.partial(self._scale_done, spec.name))
        return progress.model_dump()

    def _scale_done(self, name: str, task: asyncio.Task[None]) -> None:  # a done callback
        if self.scales.get(name) is task:
            del self.scales[name]

    async def _scale(self, spec: SwarmSpec, progress: ScaleProgress, rate: float) -> None:
        """Spawn or despawn towards the target, then wait until the districts report it.

        `expected` (members issued minus members removed) moves at once; the reported count
        follows as districts apply the orders. When the two disagree after a quiet second
        (a district had fewer members than it was asked to remove), `expected` is re-read
        from the reports and the difference ordered again.
        """
        name = spec.name
        topic = self.topics["swarm.progress"].build(swarm=name)
        loop = asyncio.get_running_loop()
        started = last_order = loop.time()
        deadline = started + self.settings.swarm_scale_timeout
        target = progress.target
        issued_at_start = self.spawned.get(name, 0)
        last_publish = 0.0
        while True:
            now = loop.time()
            current = self.count(name)
            expected = self.spawned.get(name, 0) - self.removed.get(name, 0)
            if expected < target:
                want = target - expected
                if rate > 0:
                    allowed = int(rate * (now - started)) + 1
                    want = min(want, allowed - (self.spawned.get(name, 0) - issued_at_start))
                if want > 0:
                    await self._spawn(spec, want)
                    last_order = now
            elif expected > target:
                await self._despawn(spec, expected - target)
                last_order = now
            elif abs(current - target) > self.in_flight(name) and now - last_order > 1.0:
                self.removed[name] = self.spawned.get(name, 0) - current  # re-read, act again
                last_order = now
                continue
            done = expected == target and abs(current - target) <= self.in_flight(name)
            if done:  # what is left is members in flight between districts: counted once
                current = target
            if done or now - last_publish > 0.1:
                last_publish = now
                await self.bus.publish(
                    topic, progress.model_copy(update={"current": current, "finished": done})
                )
            if done:
                return
            if now > deadline:
                error = "timed out; is every district server of the world up?"
                await self.bus.publish(
                    topic,
                    progress.model_copy(
                        update={"current": current, "finished": True, "error": error}
                    ),
                )
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self.reported.wait()

    async def _spawn(self, spec: SwarmSpec, count: int) -> None:
        first = self.spawned.get(spec.name, 0)
        plan = spawn_plan(
            spec, first, count, self.maps[spec.world], self.settings.swarm_spawn_chunk
        )
        self.spawned[spec.name] = first + count
        await self._save(spec)  # ids are never reused, even after a crash mid-spawn
        for district, chunks in plan.items():
            topic = self.topics["world.control"].build(world=spec.world, district=district)
            for entities in chunks:
                await self.bus.publish(topic, DistrictControl(op="spawn", entities=entities))

    async def _despawn(self, spec: SwarmSpec, count: int) -> None:
        self.removed[spec.name] = self.removed.get(spec.name, 0) + count
        await self._save(spec)
        for district, n in despawn_plan(self.by_district(spec.name), count).items():
            topic = self.topics["world.control"].build(world=spec.world, district=district)
            await self.bus.publish(topic, DistrictControl(op="despawn", swarm=spec.name, count=n))
