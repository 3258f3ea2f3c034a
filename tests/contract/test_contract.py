"""The broker contract: what the platform needs of a broker, checked on every broker it claims.

Each test runs on the in-memory broker, the embedded amqtt, Mosquitto and NATS (conftest.py),
through `bus.Bus` and the real components, each under its own topic root with fresh users.
What a broker cannot do is skipped with its reason (`handle.require(Cap.X)`). Waits are on
messages with timeouts; where a test must show that something did *not* arrive, a message sent
after it on the same path is the barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from brokers import BrokerHandle, Cap
from helpers import next_matching, reap, spawn_component
from prometheus_client import REGISTRY

from bus import Bus, BusSettings, ConnectionFailed, Message, RequestTimeout, Subscription
from bus.errors import TopicError
from bus.payloads import (
    Action,
    AgentState,
    DeadLetter,
    Observation,
    Probe,
    RpcReply,
    RpcRequest,
    Status,
)
from bus.transport.base import Transport
from components.echo import EchoService
from components.runtime import Component

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # the longest a single wait may take before the test fails
FAST = {"reconnect_min": 0.02, "reconnect_max": 0.2}

C = TypeVar("C", bound=Component)


# -- the site: one broker seen from one test ---------------------------------------------------


@dataclass
class Site:
    """A broker under this test's own root: fresh users, and cleanup of what the test started."""

    handle: BrokerHandle
    root: str
    tmp: Path
    stack: contextlib.AsyncExitStack

    @property
    def kind(self) -> str:
        return self.handle.kind

    @property
    def in_memory(self) -> bool:
        return callable(getattr(self.handle, "transport", None))

    def transport(self) -> Transport | None:
        """The in-memory broker's transport; None (real MQTT over TCP) for the others."""
        return self.handle.transport() if self.in_memory else None  # type: ignore[attr-defined]

    def settings(
        self, role: str = "component", model: type[Any] = BusSettings, **values: Any
    ) -> Any:
        """Settings of a fresh user of `role` under this test's root."""
        username, password = self.handle.user(role)
        base: dict[str, Any] = {
            "host": self.handle.host,
            "port": self.handle.port or 1883,
            "username": username,
            "password": password,
            "root": self.root,
            **FAST,
        }
        return model(**{**base, **values})

    async def bus(self, role: str = "component", *, kind: str = "client", **values: Any) -> Bus:
        """A connected Bus of a fresh user of `role`; closed after the test."""
        bus = Bus(self.settings(role, **values), kind=kind, transport=self.transport())
        await bus.start()
        self.stack.push_async_callback(bus.close)
        return bus

    async def component(
        self, cls: type[C], *, id: str, heartbeat_interval: float = 0.3, **values: Any
    ) -> C:
        """An in-process component (`component.run()` as a task), ready; stopped after the test."""
        settings = self.settings(
            "component", cls.settings_model, id=id, heartbeat_interval=heartbeat_interval, **values
        )
        component = cls(settings, transport=self.transport())
        task = asyncio.create_task(component.run(), name=f"contract-{cls.kind}-{id}")
        ready = asyncio.create_task(component.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise AssertionError(f"{cls.kind}/{id} on {self.kind} did not become ready: {done}")

        self.stack.push_async_callback(_stop, component, task)
        return component

    def spawn(
        self, name: str, *, id: str, heartbeat_interval: float = 0.3
    ) -> subprocess.Popen[bytes]:
        """`python -m components component NAME` as a process of its own; ended after the test."""
        proc = spawn_component(
            self.handle, name, root=self.root, id=id, log_dir=self.tmp,
            heartbeat_interval=heartbeat_interval, reconnect_min=FAST["reconnect_min"],
            reconnect_max=FAST["reconnect_max"],
        )  # fmt: skip
        self.stack.callback(reap, proc)
        return proc

    async def restart_broker(self) -> None:
        """Stop and start the broker (same port, same data) while this loop keeps running."""
        if self.in_memory:
            self.handle.restart()  # synchronous and on this loop's thread, as it must be
        else:
            await asyncio.to_thread(self.handle.restart)


async def _stop(component: Component, task: asyncio.Task[None]) -> None:
    """Stop an in-process component; cancel it if it does not end in time (the tests here are
    not about stopping: test_chaos.py has the one that is)."""
    component.stop()
    for _ in range(5):
        done, _ = await asyncio.wait({task}, timeout=3.0)
        if done:
            break
        task.cancel()
    if task.done() and not task.cancelled():
        task.result()


@contextlib.asynccontextmanager
async def _open(handle: BrokerHandle, root: str, tmp: Path) -> AsyncIterator[Site]:
    async with contextlib.AsyncExitStack() as stack:
        yield Site(handle, root, tmp, stack)


@pytest.fixture
async def site(broker: BrokerHandle, root: str, tmp_path: Path) -> AsyncIterator[Site]:
    """The session broker of the kind, seen from this test."""
    async with _open(broker, root, tmp_path) as opened:
        yield opened


@pytest.fixture
async def private_site(
    private_broker: BrokerHandle, root: str, tmp_path: Path
) -> AsyncIterator[Site]:
    """A broker of the kind for this test alone (to restart), seen from this test."""
    async with _open(private_broker, root, tmp_path) as opened:
        yield opened


# -- waiting and counting ----------------------------------------------------------------------


async def waiting(sub: Subscription) -> list[Message[Any]]:
    """What already waits on `sub`, taken without waiting for more."""
    out: list[Message[Any]] = []
    while True:
        try:
            out.append(await sub.get(timeout=0))
        except TimeoutError:
            return out


def received(bus: Bus) -> float:
    """How many messages the bus has taken off its connection (its Prometheus counter)."""
    value = REGISTRY.get_sample_value("mapleverse_bus_received_total", {"client": bus.client_id})
    return value or 0.0


def is_state(state: str, epoch: int | None = None) -> Callable[[Message[Any]], bool]:
    def check(msg: Message[Any]) -> bool:
        status = msg.payload
        return (
            isinstance(status, Status)
            and status.state == state
            and (epoch is None or status.epoch == epoch)
        )

    return check


# -- 1. publish / subscribe ----------------------------------------------------------------------


async def test_wildcard_subscriptions_get_what_matches_and_nothing_else(site: Site) -> None:
    reader = await site.bus("component")
    writer = await site.bus("component")
    t = reader.topics
    probes = await reader.subscribe(t.probe.echo(id="+"))
    states = await reader.subscribe(t.agent.state(agent="+"))
    before = received(reader)

    await writer.publish(t.agent.obs(agent="ann"), Observation(tick=1))  # matches neither filter
    await writer.publish(t.probe.echo(id="p1"), Probe(seq=1))
    await writer.publish(t.probe.echo(id="p2"), Probe(seq=2))
    await writer.publish(t.agent.state(agent="ann"), AgentState(status="busy"))

    got = [await probes.get(TIMEOUT), await probes.get(TIMEOUT)]
    assert [(m.topic, m.payload.seq) for m in got] == [
        (f"{site.root}/sys/probe/p1/echo", 1),
        (f"{site.root}/sys/probe/p2/echo", 2),
    ]
    assert [m.params for m in got] == [{"id": "p1"}, {"id": "p2"}]
    state = await states.get(TIMEOUT)
    assert (state.topic, state.payload.status) == (f"{site.root}/agent/ann/state", "busy")
    assert state.envelope.sender == writer.client_id
    # the observation went out first on the same connection: had it come, it would be counted
    assert received(reader) - before == 3
    assert await waiting(probes) == [] and await waiting(states) == []
    await writer.clear_retained(t.agent.state(agent="ann"))


# -- 2. retained state -----------------------------------------------------------------------------


async def test_a_late_joiner_gets_the_retained_state_until_it_is_cleared(site: Site) -> None:
    owner = await site.bus("component")
    topic = owner.topics.agent.state(agent="scout")
    await owner.publish(topic, AgentState(status="exploring"), wait=True)

    late = await site.bus("operator")
    first = await (await late.subscribe(topic)).get(TIMEOUT)
    assert first.retain is True
    assert (first.payload.status, first.envelope.sender) == ("exploring", owner.client_id)

    await owner.clear_retained(topic)
    await owner.flush(TIMEOUT)
    later = await site.bus("operator")
    before = received(later)
    states = await later.subscribe(topic)
    barrier = await later.subscribe(later.topics.probe.echo(id="barrier"))
    # retained messages go out on SUBSCRIBE, before anything published after the SUBACK
    await owner.publish(owner.topics.probe.echo(id="barrier"), Probe(seq=1))
    assert (await barrier.get(TIMEOUT)).payload.seq == 1
    assert await waiting(states) == []
    assert received(later) - before == 1  # not even an empty retained message


# -- 3. the Will -----------------------------------------------------------------------------------


async def test_a_killed_component_leaves_a_retained_death_with_its_birth_epoch(
    site: Site,
) -> None:
    """kill -9 of `mapleverse component echo`; on the in-memory broker, `bus.abort()`."""
    observer = await site.bus("operator")
    status_topic = observer.topics.component.status(kind="echo", id="doomed")
    status = await observer.subscribe(status_topic)
    if site.in_memory:
        echo = await site.component(EchoService, id="doomed")
        pid = os.getpid()

        def kill() -> None:
            site.handle.refuse(echo.settings.username)  # type: ignore[attr-defined]
            echo.bus.abort()  # the process is "dead": it does not connect again

    else:
        proc = site.spawn("echo", id="doomed")
        pid = proc.pid

        def kill() -> None:
            os.kill(proc.pid, signal.SIGKILL)

    birth = await next_matching(status, is_state("online"))
    assert (birth.payload.kind, birth.payload.id, birth.payload.pid) == ("echo", "doomed", pid)
    kill()
    death = await next_matching(status, is_state("offline"))
    assert death.payload.epoch == birth.payload.epoch
    assert death.payload.pid == pid

    late = await site.bus("operator")
    retained = await (await late.subscribe(status_topic)).get(TIMEOUT)
    assert retained.retain is True
    assert (retained.payload.state, retained.payload.epoch) == ("offline", birth.payload.epoch)


# -- 4. QoS 1 across a broker restart ----------------------------------------------------------

# Not a Mapleverse bug, so neither fixed here nor a strict xfail: it shows in most runs, not all
# (only when a publish lands in the ~10 ms window), and only seqs sent during the stop may be
# missing for it to count; any other loss fails the test.
NATS_SHUTDOWN_LOSS = (
    "BUG (nats-server 2.9.10): a QoS 1 PUBLISH arriving while the server shuts down on SIGTERM "
    "is PUBACKed and then lost; the subscriber's persistent session never gets it"
)


async def test_no_qos1_message_is_lost_across_a_broker_restart(private_site: Site) -> None:
    site = private_site
    site.handle.require(Cap.PERSISTENCE)
    reader = await site.bus("component")  # persistent session, client id = username
    assert reader.settings.clean_session is False
    assert reader.client_id == reader.settings.username
    topic = reader.topics.probe.echo(id="flow")
    probes = await reader.subscribe(topic)
    writer = await site.bus("component")
    total, half = 300, 100

    for seq in range(half):
        await writer.publish(topic, Probe(seq=seq))
    await writer.flush(TIMEOUT)
    restart = asyncio.create_task(site.restart_broker())
    seq, restarted_at = half, total
    while seq < total:
        await writer.publish(topic, Probe(seq=seq))  # queued while the broker is away
        seq += 1
        if not restart.done():
            await asyncio.sleep(0.001)  # the pace of the stream while the broker restarts
        elif restarted_at == total:
            restarted_at = seq
    await restart
    await writer.publish(topic, Probe(seq=total, text="end"), wait=True)
    seen: set[int] = set()

    async def until(done: Callable[[], bool]) -> None:
        while not done():
            seen.add((await probes.get()).payload.seq)

    await asyncio.wait_for(until(lambda: total in seen), TIMEOUT)
    with contextlib.suppress(TimeoutError):  # redelivered ones may come after the end
        await asyncio.wait_for(until(lambda: seen >= set(range(total))), 2.0)
    missing = sorted(set(range(total)) - seen)
    if site.kind == "nats" and missing and set(missing) <= set(range(half, restarted_at)):
        pytest.xfail(f"{NATS_SHUTDOWN_LOSS}; lost seqs {missing}")
    assert missing == []
    assert reader.connections >= 2 and writer.connections >= 2  # both lost the broker


# -- 5. request / reply ------------------------------------------------------------------------


async def test_the_echo_service_answers_requests(site: Site) -> None:
    echo = await site.component(EchoService, id="rr")  # ready: born, so it listens
    client = await site.bus("operator")
    topic = client.topics.rpc.request
    first = await client.request(topic(service="echo", method="ping"), RpcRequest(args={"n": 1}))
    assert first.payload == RpcReply(ok=True, result={"method": "ping", "args": {"n": 1}})
    assert first.envelope.sender == echo.bus.client_id
    replies = await asyncio.gather(
        *(
            client.request(topic(service="echo", method=f"m{i}"), RpcRequest(args={"i": i}))
            for i in range(5)
        )
    )
    assert [r.payload.result for r in replies] == [
        {"method": f"m{i}", "args": {"i": i}} for i in range(5)
    ]


async def test_a_request_nobody_serves_times_out(site: Site) -> None:
    client = await site.bus("operator")
    topic = client.topics.rpc.request(service="nobody", method="ping")
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        await client.request(topic, RpcRequest(), timeout=0.3)
    assert caught.value.topic == str(topic)
    assert 0.3 <= time.monotonic() - started < 3.0


# -- 6. garbage goes to the dead-letter topic ------------------------------------------------------


async def test_garbage_sent_to_a_component_is_dead_lettered_and_it_still_answers(
    site: Site,
) -> None:
    echo = await site.component(EchoService, id="dl")
    client = await site.bus("operator")
    letters = await client.subscribe(client.topics.dlq(kind="echo"))
    target = client.topics.rpc.request(service="echo", method="ping")

    await client.publish_bytes(str(target), b"\xffnot json {", 1, False)
    await client.publish_bytes(str(target), b'{"args": ["not", "a", "mapping"]}', 1, False)

    got = [await letters.get(TIMEOUT), await letters.get(TIMEOUT)]
    assert all(isinstance(m.payload, DeadLetter) for m in got)
    assert [(m.payload.topic, m.payload.component) for m in got] == [
        (str(target), echo.bus.client_id)
    ] * 2
    assert "not JSON" in got[0].payload.reason
    assert "RpcRequest.args" in got[1].payload.reason
    assert got[1].payload.payload == '{"args": ["not", "a", "mapping"]}'
    reply = await client.request(target, RpcRequest(args={"still": "here"}), timeout=TIMEOUT)
    assert reply.payload.result == {"method": "ping", "args": {"still": "here"}}


async def test_garbage_sent_to_a_subscriber_is_dead_lettered_and_it_keeps_receiving(
    site: Site,
) -> None:
    consumer = await site.bus("component", kind="tracker")
    feed = consumer.topics.probe.echo(id="feed")
    probes = await consumer.subscribe(feed)
    watcher = await site.bus("operator")
    letters = await watcher.subscribe(watcher.topics.dlq(kind="tracker"))
    sender = await site.bus("component")

    await sender.publish_bytes(str(feed), b"[1, 2, 3]", 1, False)
    await sender.publish_bytes(str(feed), b'{"seq": "seven"}', 1, False)
    await sender.publish(feed, Probe(seq=7))

    msg = await probes.get(TIMEOUT)
    assert msg.payload == Probe(seq=7)  # the garbage never reached the application
    got = [await letters.get(TIMEOUT), await letters.get(TIMEOUT)]
    assert [m.payload.topic for m in got] == [str(feed)] * 2
    assert "expected a JSON object" in got[0].payload.reason
    assert "Probe.seq" in got[1].payload.reason
    assert got[0].payload.component == consumer.client_id


# -- 7. access control ---------------------------------------------------------------------------


async def test_an_agent_cannot_act_for_another_agent(site: Site) -> None:
    site.handle.require(Cap.ACL)
    world = await site.bus("component")
    acts = await world.subscribe(world.topics.agent.act(agent="+"))
    alice = await site.bus("agent")
    bob, _ = site.handle.user("agent")

    await alice.publish(alice.topics.agent.act(agent=bob), Action(action="spoof"))
    await alice.publish(alice.topics.agent.act(agent=alice.client_id), Action(action="mine"))

    first = await acts.get(TIMEOUT)  # the spoof went out first: had it passed, it came first
    assert (first.params["agent"], first.payload.action) == (alice.client_id, "mine")
    assert first.envelope.sender == alice.client_id
    assert await waiting(acts) == []


async def test_an_agent_cannot_overwrite_another_agents_retained_state(site: Site) -> None:
    site.handle.require(Cap.ACL)
    world = await site.bus("component")
    alice = await site.bus("agent")
    bob, _ = site.handle.user("agent")
    state = world.topics.agent.state
    await world.publish(state(agent=bob), AgentState(status="true state"), wait=True)

    await alice.publish(state(agent=bob), AgentState(status="overwritten"))
    await alice.publish(state(agent=alice.client_id), AgentState(status="alice"), wait=True)

    watcher = await site.bus("operator")
    own = await (await watcher.subscribe(state(agent=alice.client_id))).get(TIMEOUT)
    assert own.payload.status == "alice"
    theirs = await (await watcher.subscribe(state(agent=bob))).get(TIMEOUT)
    assert (theirs.payload.status, theirs.retain) == ("true state", True)
    assert theirs.envelope.sender == world.client_id


async def test_an_agent_subscribing_to_everything_gets_only_its_own(site: Site) -> None:
    """The broker refuses `<root>/#` (TopicError) or grants it and filters: both pass."""
    site.handle.require(Cap.ACL)
    world = await site.bus("component")
    alice = await site.bus("agent")
    bob, _ = site.handle.user("agent")
    before = received(alice)
    everything = alice.subscribe(f"{site.root}/#")
    try:
        await everything
    except TopicError:
        refused = True
    else:
        refused = False
    if Cap.SUBACK_REFUSAL in site.handle.capabilities:
        assert refused
    own = await alice.subscribe(alice.topics.agent.obs(agent=alice.client_id))
    obs = world.topics.agent.obs

    await world.publish(obs(agent=bob), Observation(tick=1))
    await world.publish(world.topics.agent.state(agent=bob), AgentState(status="secret"))
    await world.publish(obs(agent=alice.client_id), Observation(tick=2))

    mine = await own.get(TIMEOUT)
    assert (mine.params["agent"], mine.payload.tick) == (alice.client_id, 2)
    if refused:
        assert received(alice) - before == 1  # nothing else came at all
    else:  # whatever the broker let through reached `everything`: only alice's own
        got = {m.topic for m in await waiting(everything)}  # a copy per overlapping subscription
        assert got <= {mine.topic}, got
    await world.clear_retained(world.topics.agent.state(agent=bob))


# -- 8. client-id takeover --------------------------------------------------------------------


async def test_another_user_cannot_take_over_a_client_id(site: Site) -> None:
    site.handle.require(Cap.TAKEOVER_REFUSED)
    world = await site.bus("component")
    alice = await site.bus("agent")
    inbox = await alice.subscribe(alice.topics.agent.obs(agent=alice.client_id))

    thief = Bus(
        site.settings("agent", client_id=alice.client_id, reconnect_min=1.0, reconnect_max=1.0),
        transport=site.transport(),
    )
    try:
        await thief.start()  # amqtt refuses it; Mosquitto makes it the thief's own client id
    except ConnectionFailed:
        pass
    else:
        site.stack.push_async_callback(thief.close)

    await world.publish(world.topics.agent.obs(agent=alice.client_id), Observation(tick=7))
    msg = await inbox.get(TIMEOUT)
    assert msg.payload.tick == 7
    assert alice.connected.is_set() and alice.connections == 1  # never lost its connection


# -- 9. the real transport -------------------------------------------------------------------


async def test_tcp_nodelay_is_on(site: Site) -> None:
    if site.in_memory:
        pytest.skip("memory broker: no TCP connection")
    bus = await site.bus("component")
    assert bus.connection is not None
    assert bus.connection.nodelay() is True
