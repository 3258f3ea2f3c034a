"""What the bus hands to the application: `Message`, and `Subscription`, the async iterator.

A subscription's queue is bounded (`queue_size`, or `maxsize=` per subscription). When it is
full the bus stops routing and, once its own incoming buffer is full too, stops reading the
socket: the broker holds the rest. Nothing the bus acknowledged to the broker is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import BaseModel

from bus import codecs
from bus.topics import TopicSpec

if TYPE_CHECKING:
    from bus.client import Bus

__all__ = ["Message", "Subscription"]

M = TypeVar("M", bound=BaseModel)


class Message(Generic[M]):
    """A received message: the validated payload, its envelope and where it came from."""

    __slots__ = ("envelope", "payload", "qos", "raw", "retain", "spec", "topic")

    def __init__(
        self,
        topic: str,
        payload: M,
        envelope: codecs.Envelope,
        spec: TopicSpec | None,
        qos: int,
        retain: bool,
        raw: bytes,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.envelope = envelope
        self.spec = spec
        self.qos = qos
        self.retain = retain
        self.raw = raw

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {self.payload!r}, retain={self.retain})"

    @property
    def params(self) -> dict[str, str]:
        """The topic's parameters, e.g. {'kind': 'health', 'id': 'main'}."""
        return (self.spec.parse(self.topic) if self.spec else None) or {}


class _MessageQueue:
    """A bounded FIFO for one consumer and one producer: asyncio.Queue's interface, less cost."""

    __slots__ = ("_getter", "_items", "_loop", "_putter", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[Any] = deque()
        self.maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: Any) -> None:
        if len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def put(self, item: Any) -> None:
        while len(self._items) >= self.maxsize:
            self._putter = self._loop.create_future()
            await self._putter
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        putter = self._putter
        if putter is not None and not putter.done():
            putter.set_result(None)
        return item

    async def get(self) -> Any:
        while not self._items:
            self._getter = self._loop.create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self.get_nowait()


class Subscription:
    """Messages on one filter: `async for msg in sub`, or `await` it to be sure it is active."""

    def __init__(
        self, bus: Bus, topic_filter: str, spec: TopicSpec | None, qos: int, maxsize: int
    ) -> None:
        self.bus = bus
        self.filter = topic_filter
        self.spec = spec
        self.qos = qos
        self.queue = _MessageQueue(maxsize)
        self.active = False
        self.closed = False
        self.error: BaseException | None = None

    async def start(self) -> Subscription:
        if not self.active:
            await self.bus._add_subscription(self)
        return self

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self.start().__await__()

    def __aiter__(self) -> AsyncIterator[Message[Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message[Any]]:
        await self.start()
        try:
            while True:
                yield await self.get()
        finally:
            await self.close()

    async def get(self, timeout: float | None = None) -> Message[Any]:
        """The next message (TimeoutError after `timeout` seconds)."""
        if not self.active:
            await self.start()
        queue = self.queue
        if queue._items:
            item = queue.get_nowait()
        else:
            if self.error is not None:
                raise self.error
            if timeout is None:
                item = await queue.get()
            else:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(timeout):
                    item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        return cast("Message[Any]", item)

    async def get_many(self, limit: int = 1024) -> list[Message[Any]]:
        """Every message waiting (at most `limit`), waiting for the first: for a consumer of a
        high-rate topic, one wake-up per burst instead of one per message."""
        first = await self.get()
        batch = [first]
        items = self.queue._items
        while items and len(batch) < limit:
            item = items[0]
            if isinstance(item, BaseException):
                break  # raised by the next get()
            batch.append(self.queue.get_nowait())
        return batch

    def batches(self, limit: int = 1024) -> AsyncIterator[list[Message[Any]]]:
        """`async for batch in sub.batches()`: lists of the messages waiting, in order."""
        return self._iterate_batches(limit)

    async def _iterate_batches(self, limit: int) -> AsyncIterator[list[Message[Any]]]:
        await self.start()
        try:
            while True:
                yield await self.get_many(limit)
        finally:
            await self.close()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: get() raises once drained
            self.queue.put_nowait(error)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            while not self.queue.empty():  # frees a dispatcher blocked on put() into this queue
                self.queue.get_nowait()
            await self.bus._remove_subscription(self)

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
