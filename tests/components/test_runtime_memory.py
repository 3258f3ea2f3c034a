"""The component runtime over the in-memory broker: birth, death, heartbeats, commands, health.

A `HealthMonitor` and an `EchoService` run as tasks, as `mapleverse component` would run them.
Crashes, refused reconnections and hung heartbeats are produced through the broker's public
hooks (authenticate, authorize), never by patching the components.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import next_matching

from bus import Bus, BusSettings, MemoryBroker, Message
from bus.payloads import (
    Command,
    ComponentHealth,
    HealthSummary,
    RpcReply,
    RpcRequest,
    Status,
)
from components.echo import EchoService
from components.health import HealthMonitor, HealthSettings
from components.runtime import Component, ComponentSettings

TIMEOUT = 3.0
INTERVAL = 0.05


@dataclass
class Gates:
    """What the broker refuses: connections of some clients, publishes on some topics."""

    refuse_clients: set[str] = field(default_factory=set)
    drop_topics: set[str] = field(default_factory=set)

    def authenticate(self, client_id: str, username: str | None, password: str | None) -> bool:
        return client_id not in self.refuse_clients

    def authorize(self, username: str | None, action: str, topic: str) -> bool:
        return not (action == "publish" and topic in self.drop_topics)


@dataclass
class Platform:
    root: str
    broker: MemoryBroker
    gates: Gates
    monitor: HealthMonitor
    echo: EchoService
    operator: Bus
    tasks: dict[str, asyncio.Task[None]]


def _fast(root: str) -> dict[str, Any]:
    return {"root": root, "reconnect_min": 0.01, "reconnect_max": 0.05}


async def _start(component: Component) -> asyncio.Task[None]:
    task = asyncio.create_task(component.run(), name=f"test-{component.kind}")
    ready = asyncio.create_task(component.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    if ready not in done:
        ready.cancel()
        task.cancel()
        raise AssertionError(f"{component.kind} did not become ready: {done}")
    return task


@pytest.fixture
async def platform(root: str) -> AsyncIterator[Platform]:
    gates = Gates()
    broker = MemoryBroker(authenticate=gates.authenticate, authorize=gates.authorize)
    monitor = HealthMonitor(
        HealthSettings(id="main", heartbeat_interval=INTERVAL, **_fast(root)),
        transport=broker.transport(),
    )
    echo = EchoService(
        ComponentSettings(id="e1", heartbeat_interval=INTERVAL, **_fast(root)),
        transport=broker.transport(),
    )
    tasks = {"monitor": await _start(monitor), "echo": await _start(echo)}
    operator = Bus(BusSettings(client_id=f"{root}-op", **_fast(root)), transport=broker.transport())
    async with operator:
        yield Platform(root, broker, gates, monitor, echo, operator, tasks)
        for component in (echo, monitor):
            component.stop()
        for task in tasks.values():
            await asyncio.wait_for(task, TIMEOUT)


def row(summary: HealthSummary, kind: str, id: str) -> ComponentHealth | None:
    return next((r for r in summary.components if (r.kind, r.id) == (kind, id)), None)


def echo_is(
    state: str, epoch: Callable[[int], bool] = lambda e: True
) -> Callable[[Message[Any]], bool]:
    def check(msg: Message[Any]) -> bool:
        r = row(msg.payload, "echo", "e1")
        return r is not None and r.state == state and epoch(r.epoch)

    return check


async def test_the_retained_health_summary_lists_both_components_online(
    platform: Platform,
) -> None:
    op = platform.operator
    health = await op.subscribe(op.topics.health())
    msg = await next_matching(
        health,
        lambda m: (
            {(r.kind, r.id, r.state) for r in m.payload.components}
            == {("health", "main", "online"), ("echo", "e1", "online")}
        ),
    )
    summary: HealthSummary = msg.payload
    assert (summary.monitor, summary.online, summary.stale, summary.offline) == ("main", 2, 0, 0)
    echo_row = row(summary, "echo", "e1")
    assert echo_row is not None and echo_row.version
    # a late joiner gets the summary at once, retained
    late = Bus(
        BusSettings(client_id=f"{platform.root}-late", root=platform.root),
        transport=platform.broker.transport(),
    )
    async with late:
        first = await (await late.subscribe(late.topics.health())).get(TIMEOUT)
        assert first.retain is True
        assert first.payload.online == 2


async def test_the_birth_is_retained_with_the_session_epoch_and_what_it_serves(
    platform: Platform,
) -> None:
    op = platform.operator
    echo = platform.echo
    status = await (await op.subscribe(op.topics.component.status(kind="echo", id="e1"))).get(
        TIMEOUT
    )
    assert status.retain is True
    birth: Status = status.payload
    assert (birth.state, birth.kind, birth.id, birth.epoch) == ("online", "echo", "e1", echo.epoch)
    assert birth.heartbeat_interval == INTERVAL
    assert f"{platform.root}/rpc/echo/+" in birth.topics
    assert str(echo.command_topic) in birth.topics
    beats = await op.subscribe(op.topics.component.heartbeat(kind="echo", id="e1"))
    first, second = (await beats.get(TIMEOUT)).payload, (await beats.get(TIMEOUT)).payload
    assert first.epoch == second.epoch == birth.epoch
    assert second.seq == first.seq + 1


async def test_a_crash_publishes_the_death_and_the_reconnection_a_newer_birth(
    platform: Platform,
) -> None:
    op, echo = platform.operator, platform.echo
    statuses = await op.subscribe(op.topics.component.status(kind="echo", id="e1"))
    health = await op.subscribe(op.topics.health())
    born = await statuses.get(TIMEOUT)
    epoch = born.payload.epoch
    await next_matching(health, echo_is("online", lambda e: e == epoch))

    platform.gates.refuse_clients.add(echo.bus.client_id)  # keep it down for a moment
    echo.bus.abort()  # the connection drops as in a crash
    death = await statuses.get(TIMEOUT)
    assert (death.payload.state, death.payload.epoch) == ("offline", epoch)
    seen = await next_matching(health, echo_is("offline"))
    assert row(seen.payload, "echo", "e1").epoch == epoch  # type: ignore[union-attr]

    platform.gates.refuse_clients.clear()
    reborn = await next_matching(statuses, lambda m: m.payload.state == "online")
    assert reborn.payload.epoch > epoch
    await next_matching(health, echo_is("online", lambda e: e > epoch))
    assert echo.bus.connections == 2


async def test_an_old_will_landing_after_the_birth_is_repaired(platform: Platform) -> None:
    op, echo = platform.operator, platform.echo
    statuses = await op.subscribe(op.topics.component.status(kind="echo", id="e1"))
    birth = (await statuses.get(TIMEOUT)).payload
    # the Will of an earlier session arrives late and sits there, retained
    old = Status(state="offline", kind="echo", id="e1", epoch=birth.epoch - 1)
    await op.publish(echo.status_topic, old)
    assert (await statuses.get(TIMEOUT)).payload == old
    repaired = await statuses.get(TIMEOUT)
    assert (repaired.payload.state, repaired.payload.epoch) == ("online", birth.epoch)
    await op.flush(TIMEOUT)
    late = Bus(
        BusSettings(client_id=f"{platform.root}-late", root=platform.root),
        transport=platform.broker.transport(),
    )
    async with late:
        retained = await (await late.subscribe(echo.status_topic)).get(TIMEOUT)
    assert (retained.payload.state, retained.payload.epoch) == ("online", birth.epoch)
    # the monitor ignored the older death: the current summary has it online in its epoch
    health = await op.subscribe(op.topics.health())
    await next_matching(health, echo_is("online", lambda e: e == birth.epoch))
    assert platform.monitor.table.entries["echo", "e1"].state == "online"


async def _hang_heartbeats(platform: Platform) -> Message[HealthSummary]:
    """Stop the echo's heartbeats reaching anyone; the first summary that shows it stale."""
    health = await platform.operator.subscribe(platform.operator.topics.health())
    await next_matching(health, echo_is("online"))
    # a hang: the connection stays up (no Will) but no heartbeat gets through any more
    platform.gates.drop_topics.add(str(platform.echo.heartbeat_topic))
    return await next_matching(health, echo_is("stale"))


async def test_a_component_whose_heartbeats_stop_is_marked_stale_then_revived(
    platform: Platform,
) -> None:
    stale = await _hang_heartbeats(platform)
    entry = row(stale.payload, "echo", "e1")
    assert entry is not None
    assert entry.epoch == platform.echo.epoch  # still the same session: stale, not offline
    assert stale.payload.stale == 1
    silent = stale.payload.generated - entry.last_seen
    assert silent >= platform.monitor.settings.health_missed_beats * INTERVAL  # not too early
    assert silent <= 3 * INTERVAL + 0.05  # nor late (+ the summary publisher's coalescing)

    health = await platform.operator.subscribe(platform.operator.topics.health())
    platform.gates.drop_topics.clear()  # it comes back to life
    await next_matching(health, echo_is("online"))


async def test_the_rebirth_command_republishes_the_birth(platform: Platform) -> None:
    op, echo = platform.operator, platform.echo
    statuses = await op.subscribe(op.topics.component.status(kind="echo", id="e1"))
    retained = await statuses.get(TIMEOUT)
    assert retained.retain is True
    await op.publish(echo.command_topic, Command(command="rebirth"))
    again = await statuses.get(TIMEOUT)
    assert again.retain is False  # a live publish, not the retained copy
    assert again.payload == retained.payload
    assert again.envelope.id != retained.envelope.id


async def test_the_stop_command_stops_it_and_leaves_a_retained_death(
    platform: Platform,
) -> None:
    op, echo = platform.operator, platform.echo
    health = await op.subscribe(op.topics.health())
    await next_matching(health, echo_is("online"))
    epoch = echo.epoch
    await op.publish(echo.command_topic, Command(command="stop"))
    await asyncio.wait_for(platform.tasks["echo"], TIMEOUT)
    assert not echo.bus.connected.is_set()

    late = Bus(
        BusSettings(client_id=f"{platform.root}-late", root=platform.root),
        transport=platform.broker.transport(),
    )
    async with late:
        status = await (await late.subscribe(late.topics.component.status(kind="echo"))).get(
            TIMEOUT
        )
    assert status.retain is True
    assert (status.payload.state, status.payload.epoch) == ("offline", epoch)
    await next_matching(health, echo_is("offline", lambda e: e == epoch))


async def test_echo_answers_a_request(platform: Platform) -> None:
    op = platform.operator
    reply: Message[RpcReply] = await op.request(
        op.topics.rpc.request(service="echo", method="ping"),
        RpcRequest(args={"n": 1, "text": "hello"}),
        timeout=TIMEOUT,
    )
    assert reply.payload == RpcReply(
        ok=True, result={"method": "ping", "args": {"n": 1, "text": "hello"}}
    )
    assert reply.envelope.sender == platform.echo.bus.client_id
