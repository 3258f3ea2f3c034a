"""`Bus` over the in-memory broker: what a component or agent notices of the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bus import (
    Bus,
    BusSettings,
    MemoryBroker,
    Message,
    NotConnected,
    PacketTooLarge,
    RequestTimeout,
    Subscription,
    TopicError,
    load,
)
from bus.payloads import AgentState, DeadLetter, Probe, RpcReply, RpcRequest, Status

MakeBus = Callable[..., Awaitable[Bus]]
TIMEOUT = 2.0


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def make_bus(broker: MemoryBroker, root: str) -> AsyncIterator[MakeBus]:
    """Started buses on this test's broker and root (`root` from conftest), closed at the end."""
    buses: list[Bus] = []

    async def make(
        name: str,
        *,
        kind: str = "client",
        will: Callable[[], Any] | None = None,
        **options: Any,
    ) -> Bus:
        settings = BusSettings(
            root=root,
            client_id=f"{root}-{name}",
            reconnect_min=0.01,
            reconnect_max=0.05,
            **options,
        )
        bus = Bus(settings, kind=kind, transport=broker.transport(), will=will)
        buses.append(bus)
        await bus.start()
        return bus

    yield make
    for bus in reversed(buses):
        await bus.close()


async def seqs(sub: Subscription, count: int, timeout: float = TIMEOUT) -> list[int]:
    return [(await sub.get(timeout)).payload.seq for _ in range(count)]


# -- publish / subscribe -----------------------------------------------------------------------


async def test_pub_sub_with_wildcards_and_typed_payloads(make_bus: MakeBus, root: str) -> None:
    sub_bus = await make_bus("sub")
    pub = await make_bus("pub")
    t = sub_bus.topics
    every = await sub_bus.subscribe(t.probe.echo())  # mv/sys/probe/+/echo
    only_x = await sub_bus.subscribe(t.probe.echo(id="x"))
    raw_tree = await sub_bus.subscribe(f"{root}/sys/#")  # a hand-written filter

    await pub.publish(pub.topics.probe.echo(id="x"), Probe(seq=1, text="to x"))
    await pub.publish(pub.topics.probe.echo(id="y"), Probe(seq=2))
    await pub.publish(pub.topics.probe.echo(id="x"), Probe(seq=3))

    msg: Message[Probe] = await every.get(TIMEOUT)
    assert msg.topic == f"{root}/sys/probe/x/echo"
    assert msg.payload == Probe(seq=1, text="to x")
    assert msg.params == {"id": "x"}
    assert msg.spec is not None and msg.spec.name == "probe.echo"
    assert msg.envelope.sender == pub.client_id
    assert (msg.qos, msg.retain) == (1, False)
    assert await seqs(every, 2) == [2, 3]
    assert await seqs(only_x, 2) == [1, 3]  # y never reaches it
    # a plain string filter is typed through the declaration too
    assert [m.payload for m in [await raw_tree.get(TIMEOUT) for _ in range(3)]] == [
        Probe(seq=1, text="to x"),
        Probe(seq=2),
        Probe(seq=3),
    ]


async def test_async_iteration_and_unsubscribe(make_bus: MakeBus) -> None:
    bus = await make_bus("iter")
    topic = bus.topics.probe.echo(id="it")
    got: list[int] = []
    subscribed = asyncio.Event()

    async def consume() -> None:
        sub = bus.subscribe(topic)
        await sub
        subscribed.set()
        async for msg in sub:
            got.append(msg.payload.seq)
            if len(got) == 3:
                break

    task = asyncio.create_task(consume())
    await asyncio.wait_for(subscribed.wait(), TIMEOUT)
    for i in range(3):
        await bus.publish(topic, Probe(seq=i))
    await asyncio.wait_for(task, TIMEOUT)
    assert got == [0, 1, 2]
    # leaving the loop closed the subscription: a new one sees only what comes next
    again = await bus.subscribe(topic)
    await bus.publish(topic, Probe(seq=9))
    assert await seqs(again, 1) == [9]


async def test_publish_refuses_the_wrong_model_filters_and_undeclared_topics(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    bus = await make_bus("strict")
    t = bus.topics
    before = broker.published
    status = Status(state="online", kind="x", id="y", epoch=1)
    with pytest.raises(TopicError, match=r"probe\.echo carries Probe, not Status"):
        await bus.publish(t.probe.echo(id="x"), status)
    with pytest.raises(TopicError, match="filter"):
        await bus.publish(t.probe.echo(), Probe())
    with pytest.raises(TopicError, match="not declared"):
        await bus.publish(f"{t.root}/no/such/topic", Probe())
    with pytest.raises(TopicError, match="outside this bus's root"):
        await bus.publish(load().probe.echo(id="x"), Probe())
    with pytest.raises(TopicError):
        bus.subscribe("a/#/b")
    assert broker.published == before


async def test_a_string_topic_is_resolved_to_its_declaration(make_bus: MakeBus) -> None:
    bus = await make_bus("str")
    sub = await bus.subscribe(bus.topics.probe.echo(id="s"))
    await bus.publish(f"{bus.topics.root}/sys/probe/s/echo", Probe(seq=5))
    assert await seqs(sub, 1) == [5]
    with pytest.raises(TopicError, match="carries Probe"):
        await bus.publish(f"{bus.topics.root}/sys/probe/s/echo", AgentState())


# -- retained state ----------------------------------------------------------------------------


async def test_retained_state_reaches_a_late_joiner_and_can_be_cleared(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    owner = await make_bus("owner")
    bob = owner.topics.agent.state(agent="bob")
    await owner.publish(bob, AgentState(status="busy"), wait=True)

    late = await make_bus("late")
    sub = await late.subscribe(late.topics.agent.state())
    msg = await sub.get(TIMEOUT)
    assert msg.topic == bob
    assert msg.payload == AgentState(status="busy")
    assert msg.retain is True

    # a live update reaches the established subscriber without the retain flag
    await owner.publish(bob, AgentState(status="idle"))
    live = await sub.get(TIMEOUT)
    assert (live.payload.status, live.retain) == ("idle", False)

    await owner.clear_retained(bob)
    await owner.flush(TIMEOUT)
    assert str(bob) not in broker.retained
    # the clearing (empty) publish is not handed to subscribers as a message, and a later
    # joiner finds nothing for bob: the first thing either sees is carol's state
    later = await make_bus("later")
    later_sub = await later.subscribe(later.topics.agent.state())
    await owner.publish(owner.topics.agent.state(agent="carol"), AgentState(status="new"))
    for s in (sub, later_sub):
        first = await s.get(TIMEOUT)
        assert first.params == {"agent": "carol"}


# -- the Will ----------------------------------------------------------------------------------


def _will_of(bus_topics: Any, id: str) -> Callable[[], tuple[Any, Status]]:
    topic = bus_topics.component.status(kind="probe", id=id)
    return lambda: (topic, Status(state="offline", kind="probe", id=id, epoch=1))


async def test_the_will_fires_on_abort_and_the_bus_reconnects(
    make_bus: MakeBus, broker: MemoryBroker, root: str
) -> None:
    watcher = await make_bus("watcher")
    statuses = await watcher.subscribe(watcher.topics.component.status(kind="probe"))
    crasher = await make_bus("crasher", will=_will_of(watcher.topics, "w1"))
    assert crasher.connections == 1

    crasher.abort()
    death = await statuses.get(TIMEOUT)
    assert death.topic == f"{root}/sys/component/probe/w1/status"
    assert death.payload == Status(state="offline", kind="probe", id="w1", epoch=1)
    assert death.envelope.sender == crasher.client_id
    assert str(death.topic) in broker.retained  # the Will is retained as declared

    # it reconnects by itself: a round trip through the broker works again
    sub = await crasher.subscribe(crasher.topics.probe.echo(id="after"))
    await crasher.publish(crasher.topics.probe.echo(id="after"), Probe(seq=1))
    assert await seqs(sub, 1) == [1]
    assert crasher.connections == 2


async def test_the_will_does_not_fire_on_a_clean_close(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    watcher = await make_bus("watcher")
    statuses = await watcher.subscribe(watcher.topics.component.status(kind="probe"))
    leaver = await make_bus("leaver", will=_will_of(watcher.topics, "w2"))
    await leaver.close()

    # a barrier: the first status the watcher sees after the close is this one
    barrier = Status(state="online", kind="probe", id="barrier", epoch=1)
    await watcher.publish(watcher.topics.component.status(kind="probe", id="barrier"), barrier)
    first = await statuses.get(TIMEOUT)
    assert first.payload == barrier
    assert not any(topic.endswith("/w2/status") for topic in broker.retained)


# -- sessions and restarts ---------------------------------------------------------------------


async def test_qos1_messages_wait_for_a_disconnected_persistent_subscriber(
    make_bus: MakeBus, broker: MemoryBroker, root: str
) -> None:
    away = await make_bus("away")  # clean_session is off by default: a persistent session
    topic = away.topics.probe.echo(id="q")
    await away.subscribe(topic)
    await away.close()

    pub = await make_bus("pub")
    for i in range(20):
        await pub.publish(topic, Probe(seq=i))
    await pub.flush(TIMEOUT)

    back = await make_bus("away")  # same client id
    assert back.connection is not None and back.connection.session_present
    sub = await back.subscribe(topic)
    assert await seqs(sub, 20) == list(range(20))


async def test_queued_messages_are_not_lost_when_the_app_subscribes_a_moment_later(
    make_bus: MakeBus,
) -> None:
    away = await make_bus("away2")
    topic = away.topics.probe.echo(id="q2")
    await away.subscribe(topic)
    await away.close()
    pub = await make_bus("pub2")
    for i in range(3):
        await pub.publish(topic, Probe(seq=i))
    await pub.flush(TIMEOUT)

    back = await make_bus("away2")
    await back.subscribe(back.topics.health())  # anything awaited first
    sub = await back.subscribe(topic)
    assert await seqs(sub, 3) == [0, 1, 2]


async def test_broker_restart_loses_nothing_and_keeps_order_and_subscriptions(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    sub_bus = await make_bus("sub")
    fresh = await make_bus("fresh", clean_session=True)  # resubscribes on reconnection
    pub = await make_bus("pub")
    topic = pub.topics.probe.echo(id="r")
    sub = await sub_bus.subscribe(topic)
    fresh_sub = await fresh.subscribe(topic)
    for i in range(5):
        await pub.publish(topic, Probe(seq=i))
    assert await seqs(sub, 5) == list(range(5))
    assert await seqs(fresh_sub, 5) == list(range(5))

    broker.stop()
    for i in range(5, 25):  # QoS 1 while the broker is down: held by the bus
        await pub.publish(topic, Probe(seq=i))
    assert pub.inflight == 20
    broker.start()

    assert await seqs(sub, 20) == list(range(5, 25))
    await pub.flush(TIMEOUT)
    assert pub.inflight == 0

    # subscriptions survived on both kinds of session
    await asyncio.wait_for(fresh.connected.wait(), TIMEOUT)  # set once it has resubscribed
    assert fresh.connections == 2
    await pub.publish(topic, Probe(seq=100))
    assert await seqs(sub, 1) == [100]
    while (await fresh_sub.get(TIMEOUT)).payload.seq != 100:
        pass  # it may or may not have been back in time for 5..24; it must get 100


async def test_a_steady_producer_across_a_broker_restart_keeps_its_order(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    sub_bus = await make_bus("sub")
    # a clean session (or a broker that lost the session) makes the bus resubscribe
    pub = await make_bus("pub", clean_session=True)
    topic = pub.topics.probe.echo(id="steady")
    sub = await sub_bus.subscribe(topic)
    await pub.subscribe(pub.topics.probe.echo(id="control"))  # the producer listens too
    reached = {50: asyncio.Event(), 100: asyncio.Event()}

    async def produce(total: int) -> None:
        for i in range(total):
            await pub.publish(topic, Probe(seq=i))
            if i in reached:
                reached[i].set()
            await asyncio.sleep(0)  # one message per event-loop turn

    producer = asyncio.create_task(produce(300))
    await asyncio.wait_for(reached[50].wait(), TIMEOUT)
    broker.stop()
    await asyncio.wait_for(reached[100].wait(), TIMEOUT)
    broker.start()
    await asyncio.wait_for(producer, TIMEOUT)
    await pub.flush(TIMEOUT)
    got: list[int] = []
    while len(set(got)) < 300:
        got.append((await sub.get(TIMEOUT)).payload.seq)
    # QoS 1 is at least once: a message whose acknowledgement the restart swallowed comes
    # again. But nothing is lost, and nothing arrives before a message published earlier.
    assert list(dict.fromkeys(got)) == list(range(300))


async def test_a_new_subscription_gets_nothing_meant_for_a_closed_one(make_bus: MakeBus) -> None:
    bus = await make_bus("resub")
    pub = await make_bus("resub-pub")
    topic = bus.topics.probe.echo(id="resub")
    barrier = await bus.subscribe(bus.topics.probe.echo(id="barrier"))
    sub = await bus.subscribe(topic)
    for i in range(3):
        await pub.publish(topic, Probe(seq=i))
    await sub.close()  # while those three are still on their way
    await pub.publish(pub.topics.probe.echo(id="barrier"), Probe(seq=-1))
    assert await seqs(barrier, 1) == [-1]  # everything sent before it has been handled

    again = await bus.subscribe(topic)
    await pub.publish(topic, Probe(seq=100))
    assert await seqs(again, 1) == [100]


async def test_resubscribing_gives_the_retained_state_once(make_bus: MakeBus) -> None:
    owner = await make_bus("owner")
    await owner.publish(owner.topics.agent.state(agent="bob"), AgentState(status="s1"), wait=True)
    bus = await make_bus("reader")
    barrier = await bus.subscribe(bus.topics.probe.echo(id="barrier"))
    first = await bus.subscribe(bus.topics.agent.state())
    await first.close()  # e.g. a short-lived look at the current state
    await owner.publish(owner.topics.probe.echo(id="barrier"), Probe(seq=-1))
    assert await seqs(barrier, 1) == [-1]

    again = await bus.subscribe(bus.topics.agent.state())
    await owner.publish(owner.topics.agent.state(agent="carol"), AgentState(status="c1"))
    got = [(await again.get(TIMEOUT)).params["agent"] for _ in range(2)]
    assert got == ["bob", "carol"]  # bob's retained state once, then carol's live one


async def test_close_ends_a_publish_waiting_for_its_acknowledgement(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    bus = await make_bus("closing")
    broker.stop()  # nothing will acknowledge it
    waiting = asyncio.create_task(
        bus.publish(bus.topics.probe.echo(id="w"), Probe(), wait=True), name="waiting"
    )
    await asyncio.sleep(0)  # let it reach the in-flight window
    assert bus.inflight == 1
    await bus.close(flush_timeout=0.05)
    try:
        with pytest.raises(NotConnected):
            await asyncio.wait_for(waiting, 0.5)
    finally:
        waiting.cancel()


# -- request / reply ---------------------------------------------------------------------------


async def test_request_reply_matches_each_reply_to_its_request(make_bus: MakeBus) -> None:
    server = await make_bus("calc", kind="calc")
    client = await make_bus("cli")
    requests = await server.subscribe(server.topics.rpc.request(service="calc"))

    async def serve() -> None:
        async for msg in requests:
            a, b = msg.payload.args["a"], msg.payload.args["b"]
            result = a + b if msg.params["method"] == "add" else a * b
            await server.reply(msg, RpcReply(ok=True, result=result))

    task = asyncio.create_task(serve())
    try:
        add = client.topics.rpc.request(service="calc", method="add")
        mul = client.topics.rpc.request(service="calc", method="mul")
        replies = await asyncio.gather(
            client.request(add, RpcRequest(args={"a": 2, "b": 3}), timeout=TIMEOUT),
            client.request(mul, RpcRequest(args={"a": 2, "b": 3}), timeout=TIMEOUT),
            client.request(add, RpcRequest(args={"a": 10, "b": 1}), timeout=TIMEOUT),
        )
        assert [r.payload.result for r in replies] == [5, 6, 11]
        assert all(isinstance(r.payload, RpcReply) and r.payload.ok for r in replies)
        assert replies[0].topic == client.reply_topic
        assert replies[0].envelope.sender == server.client_id
        assert len({r.envelope.corr for r in replies}) == 3
    finally:
        task.cancel()


async def test_request_times_out_when_nobody_answers(make_bus: MakeBus) -> None:
    client = await make_bus("lonely")
    topic = client.topics.rpc.request(service="nobody", method="hello")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout) as info:
        await client.request(topic, RpcRequest(), timeout=0.1)
    assert loop.time() - started < 1.0
    assert info.value.topic == topic
    assert info.value.timeout == 0.1
    assert "no reply" in str(info.value)


# -- bad input ---------------------------------------------------------------------------------


def _rejected(client_id: str) -> float:
    value = REGISTRY.get_sample_value("mapleverse_bus_rejected_total", {"client": client_id})
    return value or 0.0


async def test_a_bad_payload_goes_to_the_dead_letter_topic_and_the_subscriber_goes_on(
    make_bus: MakeBus, root: str
) -> None:
    victim = await make_bus("victim", kind="worker")
    operator = await make_bus("operator")
    topic = victim.topics.probe.echo(id="dl")
    sub = await victim.subscribe(topic)
    letters = await operator.subscribe(operator.topics.dlq())
    before = _rejected(victim.client_id)

    await operator.publish_bytes(str(topic), b"\xffnot json at all", 1, False)
    await operator.publish_bytes(str(topic), b'{"seq": "twelve"}', 1, False)
    await operator.publish(topic, Probe(seq=7))

    assert await seqs(sub, 1) == [7]  # the good message still arrives, and only it
    first: Message[DeadLetter] = await letters.get(TIMEOUT)
    assert first.topic == f"{root}/sys/dlq/worker"
    assert first.payload.topic == topic
    assert first.payload.component == victim.client_id
    assert "not JSON" in first.payload.reason
    assert first.payload.payload.endswith("not json at all")
    assert first.payload.size == len(b"\xffnot json at all")
    second: Message[DeadLetter] = await letters.get(TIMEOUT)
    assert second.payload.reason.startswith("Probe.seq:")
    assert second.payload.payload == '{"seq": "twelve"}'
    assert _rejected(victim.client_id) == before + 2

    await operator.publish(topic, Probe(seq=8))
    assert await seqs(sub, 1) == [8]


async def test_an_oversized_payload_raises_packet_too_large(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    bus = await make_bus("big", max_packet_size=1024)
    before = broker.published
    with pytest.raises(PacketTooLarge) as info:
        await bus.publish(bus.topics.probe.echo(id="big"), Probe(text="x" * 2000))
    assert info.value.limit == 1024
    assert info.value.size > 2000
    assert info.value.topic == bus.topics.probe.echo(id="big")
    assert broker.published == before
    await bus.publish(bus.topics.probe.echo(id="big"), Probe(text="x" * 800))  # fits
    await bus.flush(TIMEOUT)
    assert broker.published == before + 1


# -- backpressure ------------------------------------------------------------------------------


async def test_a_slow_subscriber_pauses_reading_and_loses_nothing(
    make_bus: MakeBus, broker: MemoryBroker
) -> None:
    slow = await make_bus("slow", queue_size=8)
    pub = await make_bus("pub")
    topic = slow.topics.probe.echo(id="bp")
    sub = await slow.subscribe(topic, maxsize=2)
    for i in range(200):
        await pub.publish(topic, Probe(seq=i))
    await pub.flush(TIMEOUT)

    connection = broker.sessions[slow.client_id].connection
    assert connection is not None
    assert connection.paused  # the bus stopped reading ...
    held = len(connection.inflight)
    assert held >= 200 - 8 - 2 - 1  # ... and the broker holds the rest

    assert await seqs(sub, 200) == list(range(200))
    assert not connection.paused
    assert len(connection.inflight) == 0


async def test_closing_a_full_subscription_does_not_stall_the_bus(make_bus: MakeBus) -> None:
    bus = await make_bus("stall")
    pub = await make_bus("stall-pub")
    full = await bus.subscribe(bus.topics.probe.echo(id="full"), maxsize=1)
    other = await bus.subscribe(bus.topics.probe.echo(id="other"))
    for i in range(3):
        await pub.publish(pub.topics.probe.echo(id="full"), Probe(seq=i))
    assert await seqs(full, 1) == [0]
    await full.close()  # e.g. `break` out of `async for`
    await pub.publish(pub.topics.probe.echo(id="other"), Probe(seq=42))
    assert await seqs(other, 1) == [42]


# -- authorisation -----------------------------------------------------------------------------


async def test_a_refused_subscription_raises_topic_error(root: str) -> None:
    def authorize(username: str | None, action: str, topic: str) -> bool:
        return not (action == "subscribe" and topic.startswith(f"{root}/sys/component/"))

    broker = MemoryBroker(authorize=authorize)
    settings = BusSettings(root=root, client_id=f"{root}-nosy")
    async with Bus(settings, transport=broker.transport()) as bus:
        with pytest.raises(TopicError, match="refused") as info:
            await bus.subscribe(bus.topics.component.status())
        assert info.value.topic == bus.topics.component.status()
        # the bus is fine and other subscriptions work
        sub = await bus.subscribe(bus.topics.probe.echo(id="ok"))
        await bus.publish(bus.topics.probe.echo(id="ok"), Probe(seq=1))
        assert await seqs(sub, 1) == [1]


async def test_batches_hand_over_every_waiting_message_in_order(make_bus: MakeBus) -> None:
    """`sub.batches()`: one wake-up per burst, nothing lost or reordered."""
    bus = await make_bus("batches")
    topic = bus.topics.probe.echo(id="burst")
    sub = await bus.subscribe(topic)
    for seq in range(50):
        await bus.publish(topic, Probe(seq=seq))
    got: list[int] = []
    sizes: list[int] = []
    async with asyncio.timeout(TIMEOUT):
        async for batch in sub.batches(limit=16):
            sizes.append(len(batch))
            got += [m.payload.seq for m in batch]
            if len(got) >= 50:
                break
    assert got == list(range(50))
    assert max(sizes) == 16 and len(sizes) < 50  # bursts, bounded by the limit
