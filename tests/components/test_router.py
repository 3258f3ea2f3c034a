"""The event router on real brokers (amqtt, Mosquitto, NATS): events in, batched deliveries by
pattern in seq order, replay from the ring, its bound and depth metric, bad input to the DLQ,
requests, stats, and `EventClient` (including across a router restart).

The router runs in process (`component.run()` as a task), as `mapleverse component router`
would run it; every other party is a plain `Bus` of a fresh broker user, under the test's root.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from brokers import BrokerHandle
from helpers import next_matching
from prometheus_client import REGISTRY

from bus import Bus, BusSettings, Message, Subscription, load_settings
from bus.errors import TopicError
from bus.payloads import Batch, DeadLetter, RpcRequest, Status
from bus.settings import SettingsError
from bus.topics import matches
from components.router import Event, EventClient, EventRouter, RouterError, RouterSettings

TIMEOUT = 10.0
FAST = {"reconnect_min": 0.01, "reconnect_max": 0.2}


@dataclass
class World:
    handle: BrokerHandle
    root: str
    stack: contextlib.AsyncExitStack
    tasks: dict[EventRouter, asyncio.Task[None]] = field(default_factory=dict)

    def settings(self, model: type[Any] = BusSettings, **values: Any) -> Any:
        username, password = self.handle.user("component")
        return model(
            host=self.handle.host, port=self.handle.port, username=username, password=password,
            root=self.root, **FAST, **values,
        )  # fmt: skip

    async def bus(self) -> Bus:
        bus = Bus(self.settings(clean_session=True))
        await bus.start()
        self.stack.push_async_callback(bus.close)
        return bus

    async def router(self, **values: Any) -> EventRouter:
        """A router (id: the test's root) in this loop, ready; stopped after the test."""
        settings = self.settings(RouterSettings, id=self.root, heartbeat_interval=0.5, **values)
        router = EventRouter(settings)
        task = asyncio.create_task(router.run(), name="test-router")
        ready = asyncio.create_task(router.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            task.cancel()
            raise AssertionError(f"the router did not become ready: {done}")

        self.tasks[router] = task
        self.stack.push_async_callback(self.stop, router)
        return router

    async def stop(self, router: EventRouter) -> None:
        router.stop()
        await asyncio.wait_for(self.tasks[router], TIMEOUT)


@pytest.fixture
async def world(broker: BrokerHandle, root: str) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        yield World(broker, root, stack)


# -- helpers ----------------------------------------------------------------------------------


async def call(bus: Bus, method: str, **args: Any) -> dict[str, Any]:
    reply = await bus.request(
        bus.topics["rpc.request"].build(service="events", method=method),
        RpcRequest(args=args),
        timeout=TIMEOUT,
    )
    assert reply.payload.ok, reply.payload.error
    result: dict[str, Any] = reply.payload.result
    return result


async def refused(bus: Bus, method: str, **args: Any) -> str:
    reply = await bus.request(
        bus.topics["rpc.request"].build(service="events", method=method),
        RpcRequest(args=args),
        timeout=TIMEOUT,
    )
    assert not reply.payload.ok
    return reply.payload.error or ""


async def publish(bus: Bus, events: list[tuple[Any, Any]], source: str = "test") -> None:
    batch = Batch(
        n=len(events), columns={"topic": [t for t, _ in events], "data": [d for _, d in events]}
    )
    await bus.publish(bus.topics["events.publish"].build(source=source), batch)


async def delivery(bus: Bus, subscriber: str) -> Subscription:
    return await bus.subscribe(bus.topics["events.delivery"].build(subscriber=subscriber))


async def collect(sub: Subscription, count: int) -> tuple[list[Event], list[Message[Batch]]]:
    """Events delivered on `sub` until `count` have arrived; and the messages they came in."""
    events: list[Event] = []
    messages: list[Message[Batch]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(events) < count:
            msg = await sub.get()
            messages.append(msg)
            cols = msg.payload.columns
            events += map(Event, cols["seq"], cols["topic"], cols["data"])
    return events, messages


def sample(name: str, router: EventRouter) -> float | None:
    return REGISTRY.get_sample_value(name, {"router": router.id})


# -- delivery ---------------------------------------------------------------------------------


async def test_events_reach_matching_subscribers_batched_and_in_seq_order(world: World) -> None:
    router = await world.router()
    bus, pub = await world.bus(), await world.bus()
    handoffs, everything = await delivery(bus, "handoffs"), await delivery(bus, "everything")
    result = await call(bus, "subscribe", subscriber="handoffs", patterns=["world/+/handoff"])
    assert result["patterns"] == ["world/+/handoff"]
    assert result["topic"] == f"{world.root}/events/out/handoffs"
    await call(bus, "subscribe", subscriber="everything", patterns=["world/#", "realm/+"])

    names = ["world/main/handoff", "world/main/tick", "realm/r1", "world/east/handoff", "other/x"]
    sent = [(names[i % len(names)], {"i": i}) for i in range(120)]
    for start in range(0, 120, 40):
        await publish(pub, sent[start : start + 40])

    want_all = [(t, d) for t, d in sent if t != "other/x"]
    got_all, all_msgs = await collect(everything, len(want_all))
    assert [(e.topic, e.data) for e in got_all] == want_all
    assert [e.seq for e in got_all] == sorted(e.seq for e in got_all)
    assert len({e.seq for e in got_all}) == len(got_all)
    assert len(all_msgs) < len(got_all) / 10  # batched, not one message per event

    want = [(t, d) for t, d in sent if matches("world/+/handoff", t)]
    got, _ = await collect(handoffs, len(want))
    assert [(e.topic, e.data) for e in got] == want
    # seq is router-wide: the same event has the same seq for every subscriber
    by_data = {e.data["i"]: e.seq for e in got_all}
    assert all(by_data[e.data["i"]] == e.seq for e in got)
    assert got_all[-1].seq - got_all[0].seq == 118  # 120 accepted events, numbered one by one
    assert router.events_in == 120


async def test_subscribing_twice_delivers_each_event_once(world: World) -> None:
    await world.router()
    bus = await world.bus()
    sub = await delivery(bus, "twice")
    first = await call(bus, "subscribe", subscriber="twice", patterns=["a/#", "a/+"])
    again = await call(bus, "subscribe", subscriber="twice", patterns=["a/+", "a/#"])
    assert (first["added"], again["added"]) == (["a/#", "a/+"], [])
    assert again["patterns"] == ["a/#", "a/+"]
    await publish(bus, [("a/b", 1), ("a/c", 2)])
    await publish(bus, [("z", 0), ("a/d", 3)])
    events, _ = await collect(sub, 3)
    assert [e.data for e in events] == [1, 2, 3]
    marker = await delivery(bus, "marker")  # nothing more for `twice` once `marker` has its event
    await call(bus, "subscribe", subscriber="marker", patterns=["end"])
    await publish(bus, [("end", None)])
    await collect(marker, 1)
    assert sub.queue.empty()


async def test_unsubscribed_patterns_deliver_nothing_more(world: World) -> None:
    await world.router()
    bus = await world.bus()
    sub = await delivery(bus, "fickle")
    await call(bus, "subscribe", subscriber="fickle", patterns=["keep/#", "drop/#"])
    await publish(bus, [("drop/1", 1), ("keep/1", 2)])
    assert [e.data for e in (await collect(sub, 2))[0]] == [1, 2]
    result = await call(bus, "unsubscribe", subscriber="fickle", patterns=["drop/#", "never/had"])
    assert (result["removed"], result["patterns"]) == (["drop/#"], ["keep/#"])
    await publish(bus, [("drop/2", 3), ("keep/2", 4)])
    assert [e.data for e in (await collect(sub, 1))[0]] == [4]  # in seq order: drop/2 skipped
    assert (await call(bus, "unsubscribe", subscriber="fickle", all=True))["patterns"] == []
    stats = await call(bus, "stats")
    assert "fickle" not in stats["subscribers"]


# -- the ring ---------------------------------------------------------------------------------


async def test_replay_pages_through_the_ring_by_pattern(world: World) -> None:
    await world.router()
    bus = await world.bus()
    witness = await delivery(bus, "witness")
    await call(bus, "subscribe", subscriber="witness", patterns=["#"])
    await publish(bus, [(f"zone/{i % 3}/ping", i) for i in range(30)])
    await collect(witness, 30)  # the router holds them all now

    page = await call(bus, "replay", from_seq=0, limit=4, patterns=["zone/1/+"])
    cols = page["columns"]
    assert page["n"] == 4 and cols["data"] == [1, 4, 7, 10]
    assert cols["topic"] == ["zone/1/ping"] * 4
    assert page["oldest"] == cols["seq"][0] - 1 and page["newest"] == page["oldest"] + 29
    rest = await call(bus, "replay", from_seq=page["next_seq"], patterns=["zone/1/+"])
    assert rest["columns"]["data"] == [13, 16, 19, 22, 25, 28]
    assert rest["next_seq"] == rest["newest"] + 1  # read to the end
    everything = await call(bus, "replay", from_seq=rest["oldest"] + 25)
    assert everything["columns"]["data"] == [25, 26, 27, 28, 29]


async def test_a_replay_page_fits_in_one_message(world: World) -> None:
    await world.router()
    bus = await world.bus()
    witness = await delivery(bus, "witness")
    await call(bus, "subscribe", subscriber="witness", patterns=["#"])
    for start in range(0, 200, 40):  # 200 events of 1 KB: three times a 64 KiB packet
        await publish(bus, [("big", {"i": i, "pad": "x" * 1000}) for i in range(start, start + 40)])
    await collect(witness, 200)
    got: list[int] = []
    page = await call(bus, "replay")
    pages = 1
    while True:
        assert 0 < page["n"] < 200
        got += [d["i"] for d in page["columns"]["data"]]
        if page["next_seq"] > page["newest"]:
            break
        page = await call(bus, "replay", from_seq=page["next_seq"])
        pages += 1
    assert got == list(range(200))  # nothing skipped, nothing twice
    assert pages >= 3


async def test_subscribe_with_replay_from_gets_the_buffer_first_then_live_events(
    world: World,
) -> None:
    await world.router()
    bus = await world.bus()
    witness = await delivery(bus, "witness")
    await call(bus, "subscribe", subscriber="witness", patterns=["#"])
    await publish(bus, [(f"w/{i % 2}", i) for i in range(20)])
    seen, _ = await collect(witness, 20)
    late = await delivery(bus, "late")
    result = await call(
        bus, "subscribe", subscriber="late", patterns=["w/0"], replay_from=seen[10].seq
    )
    assert result["replayed"] == 5  # 10, 12, ..., 18
    await publish(bus, [("w/0", 20), ("w/1", 21), ("w/0", 22)])
    events, _ = await collect(late, 7)
    assert [e.data for e in events] == [10, 12, 14, 16, 18, 20, 22]
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def test_the_ring_is_bounded_and_its_depth_is_the_gauge(world: World) -> None:
    router = await world.router(events_ring_size=50)
    bus = await world.bus()
    witness = await delivery(bus, "witness")
    await call(bus, "subscribe", subscriber="witness", patterns=["#"])
    for start in range(0, 120, 30):
        await publish(bus, [(f"t/{i}", i) for i in range(start, start + 30)])
    seen, _ = await collect(witness, 120)
    stats = await call(bus, "stats")
    assert (stats["depth"], stats["capacity"]) == (50, 50)
    assert (stats["oldest"], stats["newest"]) == (seen[70].seq, seen[119].seq)
    assert sample("mapleverse_event_queue_depth", router) == 50
    assert sample("mapleverse_events_in_total", router) == 120
    assert sample("mapleverse_events_out_total", router) == 120
    page = await call(bus, "replay", from_seq=0)
    assert page["columns"]["data"] == list(range(70, 120))  # the oldest 70 fell out


# -- bad input --------------------------------------------------------------------------------


async def test_bad_input_is_dead_lettered_and_the_router_goes_on(world: World) -> None:
    router = await world.router()
    bus = await world.bus()
    letters = await bus.subscribe(bus.topics.dlq(kind="router"))
    witness = await delivery(bus, "witness")
    await call(bus, "subscribe", subscriber="witness", patterns=["#"])
    inbox = bus.topics["events.publish"].build(source="bad")

    await bus.publish(inbox, Batch(n=2, columns={"topic": ["a", "b"]}))
    letter: DeadLetter = (await letters.get(TIMEOUT)).payload
    assert "missing column" in letter.reason and "'data'" in letter.reason
    assert letter.topic == str(inbox) and '"topic"' in letter.payload

    await bus.publish(inbox, Batch(n=3, columns={"topic": ["a", "b"], "data": [1, 2]}))
    assert "n is 3" in (await letters.get(TIMEOUT)).payload.reason

    await publish(bus, [("ok/1", 1), (5, 2), ("a/+/b", 3), ("", 4), ("ok/2", 5)], "bad")
    reason = (await letters.get(TIMEOUT)).payload.reason
    assert reason.startswith("3 of 5 events rejected")
    assert "row 1" in reason and "row 2" in reason and "row 3" in reason

    await publish(bus, [("huge", "x" * 64_600), ("small", 1)], "bad")  # fits in, not out
    reason = (await letters.get(TIMEOUT)).payload.reason
    assert reason.startswith("1 of 2 events rejected: row 0: event of 64") and "bytes" in reason

    await bus.publish_bytes(str(inbox), b"\xffnot json", 1, False)  # the bus rejects it
    assert "not JSON" in (await letters.get(TIMEOUT)).payload.reason

    await publish(bus, [("ok/3", 6)])
    events, _ = await collect(witness, 4)
    assert [(e.topic, e.data) for e in events] == [
        ("ok/1", 1), ("ok/2", 5), ("small", 1), ("ok/3", 6),
    ]  # fmt: skip
    assert [e.seq - events[0].seq for e in events] == [0, 1, 2, 3]  # rejected rows get no seq
    assert router.events_rejected == 2 + 2 + 3 + 1  # the rows there were, whatever `n` said
    assert sample("mapleverse_events_rejected_total", router) == 8
    assert (await call(bus, "stats"))["events_rejected"] == 8


async def test_bad_requests_are_answered_with_the_reason(world: World) -> None:
    router = await world.router()
    bus = await world.bus()
    assert "a/#/b" in await refused(bus, "subscribe", subscriber="x", patterns=["a/#/b"])
    assert "subscriber" in await refused(bus, "subscribe", subscriber="Bad/Id", patterns=["a"])
    assert "patterns" in await refused(bus, "subscribe", subscriber="x", patterns="a")
    assert "replay_from" in await refused(
        bus, "subscribe", subscriber="x", patterns=["a"], replay_from=-1
    )
    assert "limit" in await refused(bus, "replay", limit=0)
    assert "all" in await refused(bus, "unsubscribe", subscriber="x")
    assert "unknown method 'nope'" in await refused(bus, "nope")
    assert len(router.subscriptions) == 0  # none of it changed anything
    assert (await call(bus, "stats"))["subscriber_count"] == 0


# -- stats and the birth ----------------------------------------------------------------------


async def test_stats_describe_the_ring_the_rates_and_the_subscribers(world: World) -> None:
    router = await world.router(events_ring_size=1000)
    bus = await world.bus()
    status = await bus.subscribe(bus.topics.component.status(kind="router", id=router.id))
    birth: Status = (await status.get(TIMEOUT)).payload
    assert f"{world.root}/events/in/+" in birth.topics
    assert f"{world.root}/rpc/events/+" in birth.topics

    sub = await delivery(bus, "b")
    await call(bus, "subscribe", subscriber="b", patterns=["x/#", "y"])
    await call(bus, "subscribe", subscriber="a", patterns=["y"])
    await publish(bus, [("x/1", 1), ("y", 2), ("z", 3)])
    await collect(sub, 2)
    stats = await call(bus, "stats")
    assert stats["subscribers"] == {"a": ["y"], "b": ["x/#", "y"]}
    assert (stats["depth"], stats["capacity"], stats["next_seq"]) == (3, 1000, 4)
    assert (stats["oldest"], stats["newest"]) == (1, 3)
    assert (stats["events_in"], stats["events_out"], stats["events_rejected"]) == (3, 3, 0)
    assert stats["in_per_second"] > 0 and stats["out_per_second"] > 0
    assert stats["router"] == router.id and stats["epoch"] == router.epoch


def test_settings_come_from_mapleverse_events_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAPLEVERSE_EVENTS_RING_SIZE", "500")
    monkeypatch.setenv("MAPLEVERSE_EVENTS_FLUSH_DELAY", "0.01")
    settings = load_settings(RouterSettings)
    assert (settings.events_ring_size, settings.events_flush_delay) == (500, 0.01)
    monkeypatch.setenv("MAPLEVERSE_EVENTS_RING_SIZE", "0")
    with pytest.raises(SettingsError, match="MAPLEVERSE_EVENTS_RING_SIZE"):
        load_settings(RouterSettings)
    assert all(f.description for f in RouterSettings.model_fields.values())


# -- EventClient ------------------------------------------------------------------------------


async def test_event_client_publishes_subscribes_and_replays(world: World) -> None:
    router = await world.router()
    async with (
        EventClient(await world.bus(), "watcher", router=router.id) as watcher,
        EventClient(await world.bus(), "district-a", router=router.id) as district,
    ):
        result = await watcher.subscribe(["world/+/handoff"])
        assert result["patterns"] == ["world/+/handoff"]
        district.publish("world/main/handoff", {"entity": 7})
        district.publish("world/main/tick", {"tick": 1})
        district.publish("world/east/handoff", {"entity": 8})
        got = [await watcher.get(TIMEOUT), await watcher.get(TIMEOUT)]
        assert [(e.topic, e.data) for e in got] == [
            ("world/main/handoff", {"entity": 7}),
            ("world/east/handoff", {"entity": 8}),
        ]
        assert got[1].seq == got[0].seq + 2
        events, next_seq = await district.replay(from_seq=0, patterns=["world/main/#"])
        assert [e.data for e in events] == [{"entity": 7}, {"tick": 1}]
        assert next_seq == got[1].seq + 1
        assert (await district.stats())["subscribers"] == {"watcher": ["world/+/handoff"]}
        with pytest.raises(TopicError):
            district.publish("world/#", 1)
        with pytest.raises(RouterError):
            await watcher.subscribe(["a/#/b"])


async def test_event_client_iterates_events_in_seq_order(world: World) -> None:
    router = await world.router()
    async with EventClient(await world.bus(), "reader", router=router.id) as events:
        await events.subscribe(["n/#"])
        events.publish_many([f"n/{i % 4}" for i in range(300)], list(range(300)))
        await events.flush()
        seen: list[Event] = []
        async with asyncio.timeout(TIMEOUT):
            async for event in events:
                seen.append(event)
                if len(seen) == 300:
                    break
    assert [e.data for e in seen] == list(range(300))
    assert [e.seq for e in seen] == list(range(seen[0].seq, seen[0].seq + 300))


async def test_event_client_subscribes_again_when_the_router_restarts(world: World) -> None:
    first = await world.router()
    bus = await world.bus()
    requests = await bus.subscribe(
        bus.topics["rpc.request"].build(service="events", method="subscribe")
    )
    async with EventClient(await world.bus(), "loyal", router=first.id) as events:
        await events.subscribe(["w/#"])
        await requests.get(TIMEOUT)
        await world.stop(first)
        second = await world.router()  # a new process: nothing in memory
        assert second.epoch != events.router_epoch
        # its birth makes the client send its patterns again; then the router holds them
        await next_matching(requests, lambda m: m.payload.args.get("subscriber") == "loyal")
        assert (await call(bus, "stats"))["subscribers"] == {"loyal": ["w/#"]}
        events.publish("w/1", "after the restart")
        event = await events.get(TIMEOUT)
        assert (event.seq, event.topic, event.data) == (1, "w/1", "after the restart")


# -- throughput -------------------------------------------------------------------------------


async def test_throughput_through_the_router(world: World) -> None:
    """Not a benchmark (benchmarks/ has those): a sanity figure, printed with -s."""
    await world.router()
    total, chunk = 20_000, 1000
    async with (
        EventClient(await world.bus(), "sink") as sink,
        EventClient(await world.bus(), "source") as source,
    ):
        await sink.subscribe(["world/+/pos"])
        names = [f"world/{i % 8}/pos" for i in range(chunk)]
        started = time.perf_counter()
        for start in range(0, total, chunk):
            source.publish_many(names, list(range(start, start + chunk)))
            await source.wait_sent()
        async with asyncio.timeout(TIMEOUT * 3):
            for seq in range(1, total + 1):
                assert (await sink.get()).seq == seq
        elapsed = time.perf_counter() - started
    print(f"\n{world.handle.kind}: {total} events in {elapsed:.3f}s = {total / elapsed:,.0f}/s")
