"""The mesh under fire, against real brokers (Mosquitto and the embedded amqtt).

Three managers run as their own processes sharing one SQLite store; the test is a worker that
keeps writing state updates, one after another, and counts the ones the mesh acknowledged.
In each scenario something bad happens to the managers, and at the end the mesh's state holds
exactly the acknowledged updates: nothing committed is lost, nothing is applied twice.

* kill -9 of the leader;
* SIGSTOP of the leader, then SIGCONT: it comes back deposed, and the fenced store never takes
  a write of its term again;
* the leader cut off from the broker by a fault-injecting proxy, then let back;
* every manager killed with -9 and restarted: the state comes back from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from brokers import BrokerHandle, start_broker
from faults import FaultProxy
from helpers import reap, spawn_component

from bus import Bus, BusError, BusSettings, Subscription
from components.mesh_manager.store import FencedStore
from components.mesh_worker import MeshClient
from mesh.payloads import MeshLeader, WorkerBeat
from store import StoreSettings, open_store

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

MANAGERS = ("m1", "m2", "m3")
TIMEOUT = 30.0
PAUSE = float(os.environ.get("MAPLEVERSE_CHAOS_PAUSE", "15"))  # the 15 s SIGSTOP


@pytest.fixture(params=["mosquitto", "amqtt"])
def real_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerHandle]:
    if request.param == "mosquitto":
        request.applymarker(pytest.mark.mosquitto)
    handle = start_broker(request.param, tmp_path)
    yield handle
    handle.close()


class Mesh:
    """Three manager processes, a writer, and what the retained leader record says."""

    def __init__(self, broker: BrokerHandle, root: str, tmp_path: Path, bus: Bus) -> None:
        self.broker = broker
        self.root = root
        self.tmp_path = tmp_path
        self.bus = bus
        self.url = f"sqlite+aiosqlite:///{tmp_path}/mesh.db"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.leaders: list[MeshLeader] = []
        self.client = MeshClient(bus, "chaos", "writer", attempt_timeout=0.5, deadline=TIMEOUT)
        self.version = 0
        self.acked = 0

    def spawn(self, node: str) -> None:
        env = {
            "MAPLEVERSE_MESH": "chaos",
            "MAPLEVERSE_MESH_MANAGERS": ",".join(MANAGERS),
            "MAPLEVERSE_MESH_HEARTBEAT": "0.1",
            "MAPLEVERSE_STORE_URL": self.url,
        }
        if node in self.ports:
            env["MAPLEVERSE_PORT"] = str(self.ports[node])
        self.procs[node] = spawn_component(
            self.broker, "mesh-manager", root=self.root, id=node, log_dir=self.tmp_path,
            heartbeat_interval=0.5, reconnect_min=0.05, reconnect_max=0.3, env=env,
        )  # fmt: skip

    async def beat(self) -> None:
        """The writer is a worker of the mesh: it beats, or the leader removes it as failed."""
        topic = self.bus.topics["mesh.worker.heartbeat"].build(mesh="chaos", worker="writer")
        seq = 0
        while True:
            beat = WorkerBeat(
                mesh="chaos", worker="writer", seq=seq, sent=time.time(), interval=0.1
            )
            with contextlib.suppress(BusError):
                await self.bus.publish(topic, beat)
            seq += 1
            await asyncio.sleep(0.1)

    async def follow(self, sub: Subscription) -> None:
        async for msg in sub:
            self.leaders.append(msg.payload)

    async def leader(self, above: int = 0) -> MeshLeader:
        """The leader of the highest term seen, once it is above `above`."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.leaders and self.leaders[-1].term > above:
                return max(self.leaders, key=lambda r: r.term)
            await asyncio.sleep(0.02)
        raise AssertionError(f"no leader above term {above}; seen {self.leaders}")

    async def write(self, n: int) -> None:
        """`n` updates, each acknowledged before the next is sent."""
        for _ in range(n):
            result = await self.client.call(
                "update", agent="counter", base=self.version, patch={"n": self.acked + 1}
            )
            assert result["ok"], result
            self.version = result["version"]
            self.acked += 1

    async def check(self) -> None:
        """The mesh holds every acknowledged update, each once."""
        found = (await self.client.call("agents", agent="counter"))["agents"]
        assert found["counter"]["version"] == self.acked + 1, found
        assert found["counter"]["state"] == {"n": self.acked}, found


@pytest.fixture
async def mesh(real_broker: BrokerHandle, root: str, tmp_path: Path) -> AsyncIterator[Mesh]:
    username, password = real_broker.user("component")
    settings = BusSettings(
        host=real_broker.host, port=real_broker.port, username=username, password=password,
        root=root, reconnect_min=0.05, reconnect_max=0.3,
    )  # fmt: skip
    async with Bus(settings, kind="test") as bus:
        m = Mesh(real_broker, root, tmp_path, bus)
        sub = await bus.subscribe(bus.topics["mesh.leader"].build(mesh="chaos"))
        follower = asyncio.create_task(m.follow(sub))
        beats = asyncio.create_task(m.beat())
        try:
            yield m
        finally:
            follower.cancel()
            beats.cancel()
            await m.client.close()
            for proc in m.procs.values():
                reap(proc)


async def start(m: Mesh) -> MeshLeader:
    for node in MANAGERS:
        m.spawn(node)
    leader = await m.leader()
    assert (await m.client.call("join"))["ok"]
    result = await m.client.call("add-agent", agent="counter", state={})
    assert result["ok"], result
    m.version = 1
    await m.write(20)
    return leader


async def test_kill_9_of_the_leader_loses_nothing(mesh: Mesh) -> None:
    old = await start(mesh)
    mesh.procs[old.leader].send_signal(signal.SIGKILL)
    writing = asyncio.create_task(mesh.write(30))  # goes on through the election
    new = await mesh.leader(above=old.term)
    await asyncio.wait_for(writing, TIMEOUT)
    assert new.leader != old.leader
    mesh.spawn(old.leader)  # back from its store, as a follower
    await mesh.write(10)
    await mesh.check()


async def test_a_paused_leader_comes_back_deposed_and_writes_nothing(mesh: Mesh) -> None:
    old = await start(mesh)
    db = await open_store(StoreSettings(url=mesh.url))
    fenced = FencedStore(db)
    try:
        mesh.procs[old.leader].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        new = await mesh.leader(above=old.term)
        await mesh.write(20)
        deadline = time.monotonic() + TIMEOUT
        while await fenced.highest_token("chaos") < new.term:
            assert time.monotonic() < deadline, "the new leader never wrote its state"
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, PAUSE - (time.monotonic() - stopped)))
        # What a leader publishes, from now on: the woken one must publish none of it.
        t = mesh.bus.topics
        seen: list[tuple[str, int]] = []
        subs = [
            await mesh.bus.subscribe(t[name].build(mesh="chaos"))
            for name in ("mesh.status", "mesh.topology", "mesh.leader", "mesh.agent.health")
        ]

        async def collect(sub: Subscription) -> None:
            async for msg in sub:
                seen.append((msg.topic, msg.payload.term))

        collectors = [asyncio.create_task(collect(sub)) for sub in subs]
        mesh.procs[old.leader].send_signal(signal.SIGCONT)
        # it wakes up thinking it leads, with 15 s of beats missed, until it reads the new term;
        # meanwhile the mesh works on, and a second of its output is watched
        await mesh.write(5)
        await asyncio.sleep(1.0)
        for task in collectors:
            task.cancel()
        assert seen, "nothing retained was seen at all"
        stale = [(topic, term) for topic, term in seen if term < new.term]
        assert not stale, f"the deposed leader published {stale}"
        record = await fenced.read("chaos", "state")
        assert record is not None and record.token >= new.term
        await mesh.check()
        log = (mesh.tmp_path / f"mesh-manager-{old.leader}.log").read_text()
        assert f"leader of mesh chaos in term {old.term}" in log
    finally:
        await db.close()


async def test_a_leader_cut_off_from_the_broker_is_replaced_and_rejoins(mesh: Mesh) -> None:
    proxies: dict[str, FaultProxy] = {}
    for node in MANAGERS:
        proxies[node] = FaultProxy(mesh.broker.host, mesh.broker.port)
        await proxies[node].start()
        mesh.ports[node] = proxies[node].port
    try:
        old = await start(mesh)
        proxies[old.leader].cut()
        writing = asyncio.create_task(mesh.write(20))
        new = await mesh.leader(above=old.term)
        await asyncio.wait_for(writing, TIMEOUT)
        assert new.leader != old.leader
        proxies[old.leader].heal()
        await mesh.write(10)
        await mesh.check()
        deadline = time.monotonic() + TIMEOUT
        while proxies[old.leader].connections < 2:  # it does reconnect
            assert time.monotonic() < deadline, "the cut-off manager never reconnected"
            await asyncio.sleep(0.05)
    finally:
        for proxy in proxies.values():
            await proxy.close()


async def test_every_manager_killed_and_restarted_recovers_from_storage(mesh: Mesh) -> None:
    old = await start(mesh)
    for proc in mesh.procs.values():
        proc.send_signal(signal.SIGKILL)
    for proc in mesh.procs.values():
        await asyncio.to_thread(proc.wait, 10)
    for node in MANAGERS:
        mesh.spawn(node)
    await mesh.leader(above=old.term)
    await mesh.check()  # the 20 acknowledged updates, from the managers' stores
    await mesh.write(5)
    await mesh.check()
