"""Chaos on every real broker: kill -9, SIGSTOP, a broker restart and a cut connection.

An echo component runs as its own process (`python -m components component echo`) or in
process, a `HealthMonitor` runs in process, and an operator `Bus` watches the component's
retained status topic, its heartbeats and the health summary. Times are measured from the
disturbance to the message that shows it, on the test's own clock.

Connection cuts go through the component's transport (`Link`, given to its constructor): the
link can be held down so the Will is seen before the component comes back, or left half-open
so the bus reconnects over a connection the broker still holds (the broker then drops the old
Will, so the component publishes the old epoch's death itself before its rebirth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from brokers import BrokerHandle
from helpers import WrappedConnection, next_matching, reap, spawn_component

from bus import Bus, BusSettings, MemoryBroker, Message, MqttTransport, Subscription
from bus.payloads import HealthSummary, Heartbeat, Status
from bus.transport.base import Connection, ConnectParams, Incoming, Sink, Transport
from components.echo import EchoService
from components.health import HealthMonitor, HealthSettings
from components.runtime import Component

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # the longest a single wait may take before the test fails
INTERVAL = 0.3  # heartbeat interval of every component here
FAST = {"reconnect_min": 0.02, "reconnect_max": 0.2}

C = TypeVar("C", bound=Component)


@dataclass
class Rig:
    """A real broker under this test's own root: fresh users, cleanup of what was started."""

    handle: BrokerHandle
    root: str
    tmp: Path
    stack: contextlib.AsyncExitStack

    def settings(self, role: str, model: type[Any] = BusSettings, **values: Any) -> Any:
        username, password = self.handle.user(role)
        base = {
            "host": self.handle.host,
            "port": self.handle.port,
            "username": username,
            "password": password,
            "root": self.root,
            **FAST,
        }
        return model(**{**base, **values})

    async def bus(self, role: str = "operator") -> Bus:
        """A connected Bus of a fresh user; closed after the test."""
        bus = Bus(self.settings(role))
        await bus.start()
        self.stack.push_async_callback(bus.close)
        return bus

    async def component(
        self, cls: type[C], *, id: str, transport: Transport | None = None, **values: Any
    ) -> C:
        """An in-process component, ready; stopped after the test."""
        settings = self.settings(
            "component", cls.settings_model, id=id, heartbeat_interval=INTERVAL, **values
        )
        component = cls(settings, transport=transport)
        task = asyncio.create_task(component.run(), name=f"chaos-{cls.kind}-{id}")
        ready = asyncio.create_task(component.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise AssertionError(f"{cls.kind}/{id} did not become ready: {done}")

        self.stack.push_async_callback(_stop, component, task)
        return component

    def spawn(self, name: str, *, id: str) -> subprocess.Popen[bytes]:
        """`python -m components component NAME` as a process of its own; ended after the test."""
        proc = spawn_component(
            self.handle, name, root=self.root, id=id, log_dir=self.tmp,
            heartbeat_interval=INTERVAL, reconnect_min=FAST["reconnect_min"],
            reconnect_max=FAST["reconnect_max"],
        )  # fmt: skip
        self.stack.callback(reap, proc)
        return proc


async def _stop(component: Component, task: asyncio.Task[None]) -> bool:
    """Stop an in-process component; whether it ended by itself within 2 s is returned.

    One that does not (the last test here shows why a HealthMonitor may not) is ended by
    cancelling its tasks, found by the names the component gives them (`{kind}-...`), so that
    neither this test nor the event loop's shutdown waits on it forever.
    """
    component.stop()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if done:
        task.result()
        return True
    prefix = f"{component.kind}-"
    for _ in range(10):
        for other in asyncio.all_tasks():
            if other.get_name().startswith(prefix) and not other.done():
                other.cancel()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            break
    return False


@contextlib.asynccontextmanager
async def _open(handle: BrokerHandle, root: str, tmp: Path) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        yield Rig(handle, root, tmp, stack)


@pytest.fixture
async def rig(broker: BrokerHandle, root: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """The session broker of the kind, seen from this test."""
    async with _open(broker, root, tmp_path) as opened:
        yield opened


@pytest.fixture
async def private_rig(
    private_broker: BrokerHandle, root: str, tmp_path: Path
) -> AsyncIterator[Rig]:
    """A broker of the kind for this test alone (to restart), seen from this test."""
    async with _open(private_broker, root, tmp_path) as opened:
        yield opened


# -- cutting the link -------------------------------------------------------------------------


class Link(Transport):
    """The real MQTT transport with a switch: while `down()`, (re)connecting waits.

    `half_open()` makes the next `abort()` leave the socket open at the broker while the bus is
    told it is gone, so the bus reconnects over a connection the broker still holds.
    """

    def __init__(self) -> None:
        self._mqtt = MqttTransport()
        self._up = asyncio.Event()
        self._up.set()
        self._half_open = False
        self.orphans: list[Connection] = []

    def down(self) -> None:
        self._up.clear()

    def up(self) -> None:
        self._up.set()

    def half_open(self) -> None:
        self._half_open = True

    def close(self) -> None:
        """Drop the sockets left open by `half_open()` (the broker may have closed them)."""
        for orphan in self.orphans:
            orphan.abort()

    async def connect(self, params: ConnectParams, sink: Sink) -> Connection:
        await self._up.wait()
        relay = _Relay(sink)
        return _LinkConnection(self, await self._mqtt.connect(params, relay), relay)


class _Relay:
    """Passes connection events to the bus until it is cut off."""

    def __init__(self, sink: Sink) -> None:
        self.sink: Sink | None = sink

    def deliver(self, message: Incoming) -> None:
        if self.sink is not None:
            self.sink.deliver(message)

    def acked(self, pid: int) -> None:
        if self.sink is not None:
            self.sink.acked(pid)

    def lost(self, exc: BaseException | None) -> None:
        if self.sink is not None:
            self.sink.lost(exc)


class _LinkConnection(WrappedConnection):
    def __init__(self, link: Link, inner: Connection, relay: _Relay) -> None:
        super().__init__(inner)
        self._link, self._relay = link, relay

    def write_publish(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool
    ) -> None:
        if self._relay.sink is not None:
            self.inner.write_publish(topic, payload, qos, retain, pid, dup)

    def abort(self) -> None:
        if not self._link._half_open:
            self.inner.abort()
            return
        sink, self._relay.sink = self._relay.sink, None  # the bus hears nothing more from it
        self._link.orphans.append(self.inner)
        if sink is not None:
            asyncio.get_running_loop().call_soon(sink.lost, ConnectionResetError("half-open"))


# -- watching -----------------------------------------------------------------------------------


@dataclass
class Watch:
    """An operator's view of one echo component: its status, its heartbeats, the health table."""

    bus: Bus
    status: Subscription
    beats: Subscription
    health: Subscription


async def watch(rig: Rig, id: str) -> Watch:
    bus = await rig.bus("operator")
    t = bus.topics
    return Watch(
        bus,
        await bus.subscribe(t.component.status(kind="echo", id=id)),
        await bus.subscribe(t.component.heartbeat(kind="echo", id=id)),
        await bus.subscribe(t.health()),
    )


def status_is(state: str, epoch: Callable[[int], bool] = lambda e: True) -> Callable[..., bool]:
    def check(msg: Message[Any]) -> bool:
        s = msg.payload
        return isinstance(s, Status) and s.state == state and epoch(s.epoch)

    return check


def echo_health(
    id: str, state: str, epoch: Callable[[int], bool] = lambda e: True
) -> Callable[..., bool]:
    """The health summary lists echo/`id` in `state` (and an epoch satisfying `epoch`)."""

    def check(msg: Message[Any]) -> bool:
        summary = msg.payload
        assert isinstance(summary, HealthSummary)
        row = next((r for r in summary.components if (r.kind, r.id) == ("echo", id)), None)
        return row is not None and row.state == state and epoch(row.epoch)

    return check


def beat_of(epoch: int) -> Callable[..., bool]:
    return lambda msg: isinstance(msg.payload, Heartbeat) and msg.payload.epoch == epoch


# -- the tests -------------------------------------------------------------------------------------


async def test_a_component_killed_with_sigkill_is_seen_dead_within_a_second(rig: Rig) -> None:
    seen = await watch(rig, "k9")
    await rig.component(HealthMonitor, id="hm")
    proc = rig.spawn("echo", id="k9")
    birth = (await next_matching(seen.status, status_is("online"))).payload
    assert birth.pid == proc.pid
    await next_matching(seen.health, echo_health("k9", "online", lambda e: e == birth.epoch))

    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    death = await next_matching(seen.status, status_is("offline"))
    elapsed = time.monotonic() - killed
    assert death.payload.epoch == birth.epoch
    assert elapsed < 1.0, f"the death showed {elapsed:.3f}s after kill -9"
    await next_matching(seen.health, echo_health("k9", "offline", lambda e: e == birth.epoch))
    assert proc.wait(TIMEOUT) == -signal.SIGKILL


async def test_a_stopped_component_is_stale_within_three_beats_and_back_after_sigcont(
    rig: Rig,
) -> None:
    seen = await watch(rig, "frozen")
    await rig.component(HealthMonitor, id="hm")
    proc = rig.spawn("echo", id="frozen")
    birth = (await next_matching(seen.status, status_is("online"))).payload

    def same_epoch(epoch: int) -> bool:
        return epoch == birth.epoch

    await next_matching(seen.beats, beat_of(birth.epoch))  # it beats, the monitor has heard it
    await next_matching(seen.health, echo_health("frozen", "online", same_epoch))

    stopped = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await next_matching(seen.health, echo_health("frozen", "stale", same_epoch))
        elapsed = time.monotonic() - stopped
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert elapsed < 3 * INTERVAL, f"stale only {elapsed:.3f}s after SIGSTOP"

    await next_matching(seen.health, echo_health("frozen", "online", same_epoch))
    beat = await next_matching(seen.beats, beat_of(birth.epoch))
    assert beat.payload.seq > 0 and proc.poll() is None


async def test_after_a_broker_restart_a_component_is_reborn_and_beats_again(
    private_rig: Rig,
) -> None:
    rig = private_rig
    seen = await watch(rig, "phoenix")
    proc = rig.spawn("echo", id="phoenix")
    birth = (await next_matching(seen.status, status_is("online"))).payload
    await next_matching(seen.beats, beat_of(birth.epoch))

    await asyncio.to_thread(rig.handle.restart)
    reborn = await next_matching(seen.status, status_is("online", lambda e: e > birth.epoch))
    assert reborn.payload.pid == proc.pid  # the same process reconnected by itself
    first = await next_matching(seen.beats, beat_of(reborn.payload.epoch))
    second = await next_matching(seen.beats, beat_of(reborn.payload.epoch))
    assert second.payload.seq > first.payload.seq


async def test_a_cut_connection_is_a_death_then_a_rebirth(rig: Rig) -> None:
    """The link stays down until the death is seen (as a pulled cable would), then comes back."""
    seen = await watch(rig, "cut")
    await rig.component(HealthMonitor, id="hm")
    link = Link()
    echo = await rig.component(EchoService, id="cut", transport=link)
    birth = (await next_matching(seen.status, status_is("online"))).payload
    await next_matching(seen.health, echo_health("cut", "online", lambda e: e == birth.epoch))

    link.down()
    echo.bus.abort()  # the socket goes without DISCONNECT: the broker sends the Will
    death = await next_matching(seen.status, status_is("offline"))
    assert death.payload.epoch == birth.epoch
    await next_matching(seen.health, echo_health("cut", "offline", lambda e: e == birth.epoch))

    link.up()
    reborn = await next_matching(seen.status, status_is("online", lambda e: e > birth.epoch))
    assert reborn.payload.epoch == echo.epoch
    await next_matching(seen.beats, beat_of(echo.epoch))
    await next_matching(seen.health, echo_health("cut", "online", lambda e: e == echo.epoch))
    assert echo.bus.connections == 2


async def test_an_instant_reconnect_leaves_the_new_birth_retained(rig: Rig) -> None:
    """The bus reconnects at once; the old Will may land before or not at all, never after."""
    seen = await watch(rig, "blip")
    await rig.component(HealthMonitor, id="hm")
    echo = await rig.component(EchoService, id="blip")
    birth = (await next_matching(seen.status, status_is("online"))).payload

    echo.bus.abort()
    reborn = await next_matching(seen.status, status_is("online", lambda e: e > birth.epoch))
    await next_matching(seen.beats, beat_of(reborn.payload.epoch))
    await next_matching(seen.health, echo_health("blip", "online", lambda e: e == echo.epoch))
    late = await rig.bus("operator")
    status = late.topics.component.status(kind="echo", id="blip")
    retained = await (await late.subscribe(status)).get(TIMEOUT)
    assert retained.retain is True
    assert (retained.payload.state, retained.payload.epoch) == ("online", echo.epoch)


async def test_a_session_taken_over_by_its_own_reconnect_still_gets_its_death(rig: Rig) -> None:
    seen = await watch(rig, "halfopen")
    link = Link()
    rig.stack.callback(link.close)
    echo = await rig.component(EchoService, id="halfopen", transport=link)
    birth = (await next_matching(seen.status, status_is("online"))).payload

    link.half_open()  # the bus thinks the link died; the broker still holds the old socket
    echo.bus.abort()
    before: list[Status] = []

    def reborn(msg: Message[Any]) -> bool:
        before.append(msg.payload)
        return status_is("online", lambda e: e > birth.epoch)(msg)

    await next_matching(seen.status, reborn)
    # the takeover was done before the new CONNACK, so a death would have come before the birth
    assert [(s.state, s.epoch) for s in before if s.state == "offline"] == [
        ("offline", birth.epoch)
    ]


async def test_a_health_monitor_stops_when_told_to_while_beats_stream_in() -> None:
    """On the in-memory broker, where scheduling is deterministic, so is the race it shows."""
    for turns in range(8):  # loop turns between the last beat and stop()
        broker = MemoryBroker()
        root = f"t{uuid.uuid4().hex[:8]}"
        settings = HealthSettings(id="hm", root=root, heartbeat_interval=INTERVAL, **FAST)
        monitor = HealthMonitor(settings, transport=broker.transport())
        task = asyncio.create_task(monitor.run(), name="chaos-health-stop")
        await asyncio.wait_for(monitor.ready.wait(), TIMEOUT)
        async with Bus(BusSettings(root=root), transport=broker.transport()) as beater:
            beat = beater.topics.component.heartbeat(kind="echo", id="busy")
            for seq in range(20):
                await beater.publish(beat, Heartbeat(epoch=1, seq=seq, sent=time.time()))
                if seq == 10:
                    for _ in range(turns):
                        await asyncio.sleep(0)
                    stopped = asyncio.create_task(_stop(monitor, task))
            assert await stopped, f"still running 2 s after stop() ({turns} turns after a beat)"
