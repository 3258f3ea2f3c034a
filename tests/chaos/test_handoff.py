"""Hand-off under fire: 1,000 border crossings with a district server killed with -9 mid-way.

Orchestrator and two district servers run as their own processes on a Mosquitto started by the
test, sharing one SQLite store. 200 entities drift across the border between the two regions.
After about 400 crossings district d1 gets SIGKILL, is restarted from its persisted state, and
the crossings go on past 1,000. Checked, as a user would see it:

* at no tick does an entity appear in both districts' published updates (never owned twice);
* at the end every one of the 200 entities is owned by exactly one district and nothing is in
  flight, both in the districts' reports and in what they persisted (nothing lost).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import BrokerHandle, start_broker
from helpers import reap, spawn_component

from bus import Bus, BusSettings
from bus.payloads import RpcRequest
from components.district import District, DistrictSettings, DistrictStore
from store import StoreSettings, open_store
from world.behaviours import default_registry
from world.payloads import Bounds, DistrictControl, EntityColumns, StepReport, SwarmSpec

pytestmark = [pytest.mark.chaos, pytest.mark.mosquitto, pytest.mark.slow]

N = 200
CROSSINGS = 1000
KILL_AFTER = 400
TIMEOUT = 120.0


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[BrokerHandle]:
    handle = start_broker("mosquitto", tmp_path)
    yield handle
    handle.close()


class Watch:
    """What an operator sees: step reports, and who published which entity at which tick."""

    def __init__(self) -> None:
        self.reports: dict[str, StepReport] = {}
        self.out: dict[str, int] = defaultdict(int)  # district -> handoffs out, this life
        self.total_before_restart = 0
        self.owners: dict[int, dict[str, str]] = defaultdict(dict)  # tick -> entity -> district
        self.doubles: list[tuple[int, str, str, str]] = []
        self.changed = asyncio.Event()
        self.ticks_seen = 0

    def crossings(self) -> int:
        return self.total_before_restart + sum(r.handoffs_out for r in self.reports.values())

    def saw(self, district: str, tick: int, ids: list[str]) -> None:
        if tick not in self.owners:
            self.ticks_seen += 1
        owners = self.owners[tick]
        for entity in ids:
            other = owners.setdefault(entity, district)
            if other != district:
                self.doubles.append((tick, entity, other, district))
        for old in [t for t in self.owners if t < tick - 200]:
            del self.owners[old]


async def test_a_thousand_crossings_with_a_district_killed_lose_and_duplicate_nothing(
    mosquitto: BrokerHandle, root: str, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/world.db"
    world = {
        "MAPLEVERSE_STORE_URL": db,
        "MAPLEVERSE_WORLD_RATE": "50",
        "MAPLEVERSE_WORLD_LAYOUT": "2x1",
        "MAPLEVERSE_WORLD_BOUNDS": "0,0,100,20",
        "MAPLEVERSE_WORLD_DISTRICTS": "d1,d2",
        "MAPLEVERSE_WORLD_SNAPSHOT_INTERVAL": "0.2",
        "MAPLEVERSE_DISTRICT_SNAPSHOT_EVERY": "25",
        "MAPLEVERSE_DISTRICT_HALO": "0",
    }
    common: dict[str, Any] = dict(
        root=root, log_dir=tmp_path, heartbeat_interval=0.5, reconnect_min=0.02,
        reconnect_max=0.2, env=world,
    )  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    username, password = mosquitto.user("component")
    settings = BusSettings(
        host=mosquitto.host, port=mosquitto.port, username=username, password=password,
        root=root, reconnect_min=0.02, reconnect_max=0.2,
    )  # fmt: skip
    watch = Watch()
    try:
        async with Bus(settings, kind="test") as bus:
            t = bus.topics
            steps = await bus.subscribe(t["world.step"].build(world="main", district="+"))
            updates = await bus.subscribe(
                t["region.updates"].build(world="main", region="+"), maxsize=1_000_000
            )
            procs["orchestrator"] = spawn_component(mosquitto, "orchestrator", id="main", **common)
            for d in ("d1", "d2"):
                procs[d] = spawn_component(mosquitto, "district", id=d, **common)

            async def follow_steps() -> None:
                async for msg in steps:
                    watch.reports[msg.payload.district] = msg.payload
                    watch.changed.set()

            async def follow_updates() -> None:
                async for msg in updates:
                    batch = msg.payload
                    district = _district_of(msg.params["region"])
                    watch.saw(district, int(batch.meta["tick"]), batch.columns["id"])

            tasks = [asyncio.create_task(follow_steps()), asyncio.create_task(follow_updates())]
            await _until(watch, lambda: {"d1", "d2"} <= set(watch.reports), "both districts step")
            spec = SwarmSpec(
                name="drifters", behaviour="drift", params={"speed": 40.0},
                bounds=Bounds(x0=0, y0=0, x1=100, y1=20), size=N, max_size=N,
            )  # fmt: skip
            await bus.publish(t["swarm.config"].build(swarm="drifters"), spec)
            half = N // 2
            for district, first, x in (("d1", 0, 25.0), ("d2", half, 75.0)):
                ids = [f"e{k:04d}" for k in range(first, first + half)]
                entities = EntityColumns(
                    id=ids, x=[x] * half, y=[(k % 20) + 0.5 for k in range(half)],
                    vx=[1.0 if k % 2 else -1.0 for k in range(half)], vy=[0.3] * half,
                    swarm=["drifters"] * half,
                )  # fmt: skip
                await bus.publish(
                    t["world.control"].build(world="main", district=district),
                    DistrictControl(op="spawn", entities=entities),
                )
            await _until(watch, lambda: watch.crossings() >= KILL_AFTER, f"{KILL_AFTER} crossings")
            procs["d1"].send_signal(signal.SIGKILL)
            procs["d1"].wait()
            watch.total_before_restart = watch.crossings()
            del watch.reports["d1"]
            procs["d1"] = spawn_component(mosquitto, "district", id="d1", **common)
            await _until(watch, lambda: watch.crossings() >= CROSSINGS, f"{CROSSINGS} crossings")
            reply = await bus.request(
                t["rpc.request"].build(service="world-main", method="pause"),
                RpcRequest(),
            )
            assert reply.payload.ok
            await _until(
                watch,
                lambda: (
                    all(r.pending == 0 for r in watch.reports.values())
                    and sum(r.entities for r in watch.reports.values()) == N
                ),
                "quiet: nothing in flight, every entity owned",
            )
            for task in tasks:
                task.cancel()
        assert watch.ticks_seen > 200, "too few ticks observed for the check to mean anything"
        assert watch.doubles == [], f"published by two districts at one tick: {watch.doubles[:5]}"
    finally:
        for proc in procs.values():
            reap(proc)
    # What the districts persisted agrees: each entity in exactly one table, nothing in flight.
    store = await open_store(StoreSettings(url=db))
    try:
        owned: dict[str, list[str]] = defaultdict(list)
        for d in ("d1", "d2"):
            district = District(d, default_registry())
            journal_url = DistrictSettings(id=d, store_url=db).journal_url()
            journal = await open_store(StoreSettings(url=journal_url))
            try:
                assert await DistrictStore(store, "main", d, journal).load(district)
            finally:
                await journal.close()
            assert len(district.ledger) == 0, f"{d} still has entities in flight"
            for entity in district.table.ids:
                owned[entity].append(d)
    finally:
        await store.close()
    assert sorted(owned) == sorted(f"e{k:04d}" for k in range(N)), "entities lost"
    twice = {e: ds for e, ds in owned.items() if len(ds) > 1}
    assert not twice, f"entities owned twice: {twice}"


def _district_of(region: str) -> str:
    return {"r0-0": "d1", "r0-1": "d2"}[region]


async def _until(watch: Watch, condition: Any, what: str) -> None:
    async def wait() -> None:
        while not condition():
            watch.changed.clear()
            await watch.changed.wait()

    try:
        await asyncio.wait_for(wait(), TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}; reports {watch.reports}") from None
