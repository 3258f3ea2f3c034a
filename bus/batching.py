"""A batching publisher for high-rate streams: many records per MQTT message, columnar.

    async with bus.batcher(bus.topics.probe.stream(id="drones"), fields=("id", "x", "y")) as b:
        b.add(("d1", 1.0, 2.0))          # never blocks; flushes by size or latency bound
        await b.add_async(record)        # same, but waits while the bus applies backpressure
        b.add_columns({"id": ids, "x": xs, "y": ys})   # many records at once: the fast path
        b.add_empty({"tick": 7})         # "nothing now", in order behind what came before
        await b.wait_sent()              # backpressure for the columnar path

A batch is flushed when the next record would take the encoded message past the broker's
packet limit (the size is tracked as records are added, so no message is ever refused), when it
holds `max_records`, or `max_delay` seconds after its first record: whichever comes first.
On the wire a batch is the `Batch` payload: `{"n": 3, "columns": {"id": [...], "x": [...]}}`.
On a QoS 0 topic each batch is written to the socket as soon as it is made, unless earlier
ones still wait for it (the connection pushing back): then it queues behind them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from bus.errors import BusError, PacketTooLarge, TopicError
from bus.transport import packets

if TYPE_CHECKING:
    from bus.client import Bus
    from bus.topics import Topic

__all__ = ["BatchPublisher"]

_ENVELOPE_ALLOWANCE = 160  # id, sender, ts, v and the JSON punctuation around the columns


class BatchPublisher:
    """Accumulates records and publishes them as columnar batches."""

    def __init__(
        self,
        bus: Bus,
        topic: Topic,
        fields: Sequence[str],
        *,
        max_delay: float = 0.005,
        max_records: int = 100_000,
        max_bytes: int | None = None,
    ) -> None:
        if topic.spec.payload.__name__ != "Batch":
            raise TopicError(f"{topic.spec.name} does not carry Batch payloads", topic=topic)
        if topic.is_filter:
            raise TopicError(f"cannot publish to the filter {topic!r}", topic=topic)
        self.bus = bus
        self.topic = topic
        self._topic = str(topic)
        self._retain = topic.spec.retain
        # QoS 0: a batch goes on the wire as soon as it is encoded, when nothing waits before it
        self._now = int(topic.spec.qos) == 0
        self.fields = tuple(fields)
        self.max_delay = max_delay
        self.max_records = max_records
        limit = bus.settings.max_packet_size
        overhead = packets.publish_size(str(topic).encode(), b"", int(topic.spec.qos))
        self.max_bytes = min(max_bytes or limit, limit) - overhead - _ENVELOPE_ALLOWANCE
        self.max_bytes -= len(bus.client_id) + sum(len(f) + 6 for f in self.fields)
        if self.max_bytes < 64:
            raise PacketTooLarge(limit - self.max_bytes, limit, topic=topic)
        self._columns: list[list[Any]] = [[] for _ in self.fields]
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._outbox: collections.deque[bytes] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._chunk = 256  # records per message on the columnar path, adapted as it goes
        self._error: BaseException | None = None
        self.batches = 0
        self.records = 0

    def _record_size(self, record: Sequence[Any]) -> int:
        # bytes the record adds to the JSON columns: each value plus its comma
        return len(orjson.dumps(record)) - 2 + 1

    def add(self, record: Sequence[Any]) -> None:
        """Add one record (a tuple in `fields` order)."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if len(record) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} values {self.fields}, got {len(record)}")
        size = self._record_size(record)
        if size > self.max_bytes:
            raise PacketTooLarge(size, self.max_bytes, topic=self.topic)
        if self._size + size > self.max_bytes:
            self._flush_now()
        for column, value in zip(self._columns, record, strict=True):
            column.append(value)
        self._size += size
        n = len(self._columns[0])
        if n >= self.max_records:
            self._flush_now()
        elif n == 1 and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self._flush_now)

    def add_columns(
        self,
        columns: Mapping[str, Sequence[Any]],
        meta: Mapping[str, Any] | None = None,
        *,
        stamp: str | None = None,
    ) -> None:
        """Add many records at once, already columnar (the fast path for a producer that
        holds arrays): `{"id": [...], "x": [...], ...}` with every field of `fields`.

        Split into messages under the packet limit by encoding whole chunks (sized from the
        previous chunk's bytes per record), never record by record. `meta` (values shared by
        every record, such as a tick) goes into each of those messages; `stamp` names a field
        of it set to the time (`time.time()`) each message is made. Columns may be numpy
        arrays.
        """
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        try:
            cols = [columns[f] for f in self.fields]
        except KeyError as exc:
            raise ValueError(f"missing column {exc.args[0]!r}; expected {self.fields}") from None
        n = len(cols[0])
        if any(len(c) != n for c in cols):
            raise ValueError("columns have different lengths")
        self._flush_now()  # rows added before these go first
        start = 0
        while start < n:
            k = min(n - start, self.max_records, self._chunk)
            body: dict[str, Any] = {
                "n": k,
                "columns": {
                    f: c[start : start + k] for f, c in zip(self.fields, cols, strict=True)
                },
            }
            if meta or stamp:
                body["meta"] = _meta(meta, stamp)
            data = self.bus.encode(body)
            budget = self.max_bytes + _ENVELOPE_ALLOWANCE
            if len(data) > budget:
                if k == 1:
                    raise PacketTooLarge(len(data), budget, topic=self.topic)
                self._chunk = max(1, int(k * budget * 0.95 / len(data)))
                continue
            self._emit(data)
            self.batches += 1
            self.records += k
            start += k
            if len(data) < budget * 0.8 and k == self._chunk:
                self._chunk = max(k + 1, int(k * budget * 0.9 / len(data)))

    def add_empty(self, meta: Mapping[str, Any] | None = None, *, stamp: str | None = None) -> None:
        """One message of no records (`n` 0), behind every batch before it: a stream that is
        empty now says so (a region nobody is left in). `meta` and `stamp` as in
        `add_columns`."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        self._flush_now()
        body: dict[str, Any] = {"n": 0, "columns": {f: [] for f in self.fields}}
        if meta or stamp:
            body["meta"] = _meta(meta, stamp)
        self._emit(self.bus.encode(body))
        self.batches += 1

    def add_many(self, records: Sequence[Sequence[Any]]) -> None:
        for record in records:
            self.add(record)

    async def add_async(self, record: Sequence[Any]) -> None:
        """Add a record, waiting while earlier batches are still being handed to the bus."""
        self.add(record)
        if len(self._outbox) > 4 and self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)  # the sender drains the outbox, then ends

    def _take(self) -> bytes | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        n = len(self._columns[0])
        if n == 0:
            return None
        body = {"n": n, "columns": dict(zip(self.fields, self._columns, strict=True))}
        data = self.bus.encode(body)
        self._columns = [[] for _ in self.fields]
        self._size = 0
        self.batches += 1
        self.records += n
        return data

    def _flush_now(self) -> None:
        data = self._take()
        if data is not None:
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        """Hand an encoded batch on, behind any still queued: to the socket at once where it
        can go without waiting (QoS 0, nothing queued), else to the one sender."""
        if not self._outbox and self._now:
            try:
                if self.bus.publish_now(self._topic, data, self._retain):
                    return
            except BusError as exc:  # raised by the next add, as the sender's errors are
                self._error = exc
                return
        self._outbox.append(data)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        # One sender, so batches reach the bus in the order they were made.
        spec = self.topic.spec
        topic = str(self.topic)
        while self._outbox:
            data = self._outbox[0]
            try:
                await self.bus.publish_bytes(topic, data, int(spec.qos), spec.retain)
            except BusError as exc:
                self._error = exc
            self._outbox.popleft()

    async def wait_sent(self, backlog: int = 4) -> None:
        """Wait while more than `backlog` batches are waiting to be handed to the bus."""
        if len(self._outbox) > backlog and self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def flush(self) -> None:
        """Publish what is buffered and wait until every batch was handed to the bus."""
        self._flush_now()
        while self._sender is not None and not self._sender.done():
            await self._sender
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    async def __aenter__(self) -> BatchPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(BusError):
            await self.flush()


def _meta(meta: Mapping[str, Any] | None, stamp: str | None) -> Mapping[str, Any]:
    """A message's `meta`: the shared values, and the time it is made under `stamp`."""
    if stamp is None:
        return meta or {}
    return {**(meta or {}), stamp: time.time()}


def rows(message_payload: Any) -> list[tuple[Any, ...]]:
    """The records of a received Batch payload, as tuples in column order."""
    columns = message_payload.columns
    return list(zip(*columns.values(), strict=True)) if columns else []
