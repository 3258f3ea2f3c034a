"""bus.batching: many records per message, flushed by size or latency, never over the limit."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import WrappedConnection

from bus import BatchPublisher, Bus, BusSettings, MemoryBroker, Message, Subscription, rows
from bus.errors import PacketTooLarge, TopicError
from bus.payloads import Batch
from bus.transport import packets
from bus.transport.base import Connection, ConnectParams, Sink, Transport

TIMEOUT = 2.0
FIELDS = ("id", "x", "y", "note")


@pytest.fixture
async def buses(root: str) -> AsyncIterator[tuple[Bus, Bus]]:
    """(publisher with a 2 KiB packet limit, raw subscriber) on one in-memory broker."""
    broker = MemoryBroker()
    pub = Bus(
        BusSettings(root=root, client_id=f"{root}-pub", max_packet_size=2048),
        transport=broker.transport(),
    )
    sub = Bus(BusSettings(root=root, client_id=f"{root}-sub"), transport=broker.transport())
    async with pub, sub:
        yield pub, sub


async def _batches(sub: Subscription, records: int) -> list[Message[Batch]]:
    """Messages until `records` records have arrived."""
    got: list[Message[Batch]] = []
    while sum(m.payload.n for m in got) < records:
        got.append(await sub.get(TIMEOUT))
    return got


def _record(i: int, rng: random.Random) -> tuple[Any, ...]:
    note = "".join(rng.choice('abcdefé✓ "\\') for _ in range(rng.randrange(0, 40)))
    return (f"d{i}", rng.uniform(-1e6, 1e6), rng.randrange(-(10**12), 10**12), note)


async def test_records_are_flushed_by_the_latency_bound(buses: tuple[Bus, Bus]) -> None:
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="slowtrickle")
    sub = await sub_bus.subscribe(topic)
    loop = asyncio.get_running_loop()
    batcher = pub.batcher(topic, FIELDS, max_delay=0.05)
    started = loop.time()
    batcher.add(("a", 1.0, 2, ""))
    batcher.add(("b", 3.0, 4, "x"))
    msg = await sub.get(TIMEOUT)  # no flush() call: the timer sends it
    assert loop.time() - started >= 0.045  # not before the bound (timer granularity aside)
    assert msg.payload.n == 2
    assert rows(msg.payload) == [("a", 1.0, 2, ""), ("b", 3.0, 4, "x")]
    assert (batcher.batches, batcher.records) == (1, 2)


async def test_records_are_flushed_by_count_without_waiting_for_the_timer(
    buses: tuple[Bus, Bus],
) -> None:
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="bycount")
    sub = await sub_bus.subscribe(topic)
    batcher = pub.batcher(topic, ("i",), max_delay=3600, max_records=10)
    for i in range(25):
        batcher.add((i,))
    got = [await sub.get(TIMEOUT) for _ in range(2)]  # long before the hour is up
    assert [m.payload.n for m in got] == [10, 10]
    await batcher.flush()
    last = await sub.get(TIMEOUT)
    assert last.payload.n == 5
    assert [r[0] for m in [*got, last] for r in rows(m.payload)] == list(range(25))


async def test_records_are_flushed_by_size_and_no_message_exceeds_the_packet_limit(
    buses: tuple[Bus, Bus],
) -> None:
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="bysize")
    sub = await sub_bus.subscribe(topic)
    rng = random.Random(7)
    records = [_record(i, rng) for i in range(3000)]
    async with pub.batcher(topic, FIELDS, max_delay=3600) as batcher:
        for record in records:
            batcher.add(record)
    got = await _batches(sub, len(records))

    sizes = [packets.publish_size(topic.encode(), m.raw, int(topic.spec.qos)) for m in got]
    assert max(sizes) <= 2048
    assert len(got) >= 40  # 3000 records of ~60 bytes cannot fit in fewer 2 KiB messages
    assert sum(sizes) / len(sizes) > 2048 * 0.7  # batches are filled, not sent half empty
    received = [r for m in got for r in rows(m.payload)]
    assert len(received) == len(records)
    assert received == records  # every record once, in order, with its values intact
    assert (batcher.records, batcher.batches) == (3000, len(got))


async def test_rows_round_trip_preserves_order_across_batches(buses: tuple[Bus, Bus]) -> None:
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="order")
    sub = await sub_bus.subscribe(topic)
    batcher = pub.batcher(topic, ("i",), max_delay=3600, max_records=2)
    batcher.add_many([(0,), (1,), (2,)])  # one full batch of two, one record buffered
    await batcher.flush()
    got = await _batches(sub, 3)
    assert [r for m in got for r in rows(m.payload)] == [(0,), (1,), (2,)]


async def test_add_async_and_add_many_preserve_order(buses: tuple[Bus, Bus]) -> None:
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="asyncadd")
    sub = await sub_bus.subscribe(topic)
    batcher = pub.batcher(topic, ("i", "s"), max_delay=0.001)
    for i in range(500):
        await batcher.add_async((i, "v" * (i % 50)))
    batcher.add_many([(i, "") for i in range(500, 1000)])
    await batcher.flush()
    got = await _batches(sub, 1000)
    assert [r[0] for m in got for r in rows(m.payload)] == list(range(1000))


async def test_bad_records_and_topics_are_refused(buses: tuple[Bus, Bus]) -> None:
    pub, _ = buses
    topic = pub.topics.probe.stream(id="bad")
    batcher = pub.batcher(topic, ("a", "b"))
    with pytest.raises(ValueError, match="expected 2 values"):
        batcher.add((1,))
    with pytest.raises(PacketTooLarge):
        batcher.add((1, "x" * 5000))  # one record larger than any message may be
    with pytest.raises(TopicError, match="does not carry Batch"):
        BatchPublisher(pub, pub.topics.probe.echo(id="x"), ("a",))
    with pytest.raises(TopicError, match="filter"):
        pub.batcher(pub.topics.probe.stream(), ("a",))


def test_rows_of_an_empty_batch() -> None:
    assert rows(Batch(n=0, columns={})) == []
    assert rows(Batch(n=2, columns={"a": [1, 2], "b": ["x", "y"]})) == [(1, "x"), (2, "y")]


async def test_columns_are_split_under_the_packet_limit_in_order(buses: tuple[Bus, Bus]) -> None:
    """The columnar fast path: 5,000 records arrive complete, in order, every message fits."""
    pub, sub_bus = buses
    topic = pub.topics.probe.stream(id="columns")
    sub = await sub_bus.subscribe(topic, maxsize=100_000)
    rng = random.Random(7)
    records = [("a0", 0.5, 1, "first")] + [_record(i, rng) for i in range(1, 5000)]
    batcher = pub.batcher(topic, FIELDS)
    batcher.add(("before", 0.0, 0, ""))  # a row added first stays first
    batcher.add_columns({f: [r[i] for r in records] for i, f in enumerate(FIELDS)})
    await batcher.flush()
    got = await _batches(sub, len(records) + 1)
    assert [r for m in got for r in rows(m.payload)] == [("before", 0.0, 0, ""), *records]
    limit = pub.settings.max_packet_size
    assert all(packets.publish_size(topic.encode(), m.raw, 0) <= limit for m in got)
    assert len(got) > 10  # it really was split


async def test_columns_of_different_lengths_are_refused(buses: tuple[Bus, Bus]) -> None:
    pub, _ = buses
    batcher = pub.batcher(pub.topics.probe.stream(id="bad"), ("a", "b"))
    with pytest.raises(ValueError, match="different lengths"):
        batcher.add_columns({"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="missing column 'b'"):
        batcher.add_columns({"a": [1]})


class _PushingBack(WrappedConnection):
    """A connection whose socket takes `room` messages, then pushes back until drained."""

    def __init__(self, inner: Connection, room: int) -> None:
        super().__init__(inner)
        self.room, self.left = room, 0

    def write_publish(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool
    ) -> None:
        self.left -= 1
        self.inner.write_publish(topic, payload, qos, retain, pid, dup)

    @property
    def write_paused(self) -> bool:
        return self.left <= 0

    async def drain(self) -> None:
        await asyncio.sleep(0.001)
        self.left = self.room


class _PushingBackTransport(Transport):
    def __init__(self, inner: Transport, room: int) -> None:
        self.inner, self.room = inner, room

    async def connect(self, params: ConnectParams, sink: Sink) -> Connection:
        return _PushingBack(await self.inner.connect(params, sink), self.room)


async def test_batches_and_empty_messages_keep_their_order_while_the_socket_pushes_back(
    root: str,
) -> None:
    """A QoS 0 batch goes to the socket at once only when nothing waits before it: while the
    connection pushes back (here: room for 3 messages per drain), batches queue, and an empty
    message (a region nobody is left in) queues behind them instead of overtaking them."""
    broker = MemoryBroker()
    pub = Bus(
        BusSettings(root=root, client_id=f"{root}-pub", max_packet_size=2048),
        transport=_PushingBackTransport(broker.transport(), room=3),
    )
    sub_bus = Bus(BusSettings(root=root, client_id=f"{root}-sub"), transport=broker.transport())
    async with pub, sub_bus:
        topic = pub.topics.probe.stream(id="pushback")
        assert int(topic.spec.qos) == 0
        sub = await sub_bus.subscribe(topic)
        batcher = pub.batcher(topic, ("i",))
        batcher.add_columns({"i": list(range(6000))}, {"tick": 1}, stamp="sent")
        batcher.add_empty({"tick": 2}, stamp="sent")
        got: list[Message[Batch]] = []
        while not got or got[-1].payload.n:
            got.append(await sub.get(TIMEOUT))
    assert len(got) > 10  # many messages, most of them queued behind the push-back
    assert [r[0] for m in got for r in rows(m.payload)] == list(range(6000))
    assert [m.payload.meta["tick"] for m in got] == [1] * (len(got) - 1) + [2]
    sent = [m.payload.meta["sent"] for m in got]
    assert sent == sorted(sent)  # each stamped when it was made, in order
