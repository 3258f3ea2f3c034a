"""`EventClient`: publish events to the router and receive the ones subscribed, without batches.

    async with EventClient(bus, subscriber="district-a") as events:
        await events.subscribe(["world/+/handoff"])
        events.publish("world/main/handoff", {"entity": 7})   # batched, never blocks
        async for seq, topic, data in events:
            ...

Publishing goes through a `BatchPublisher` on `mv/events/in/{source}` (several events per
message, flushed within `max_delay` seconds). Deliveries on `mv/events/out/{subscriber}` are
unpacked into `Event(seq, topic, data)` tuples, in the order the router numbered them.

The router keeps subscriptions in memory only, so the client keeps the patterns it subscribed
and sends them again whenever the router announces a new birth (a restart or a reconnection:
re-subscribing is idempotent). Leaving the `async with` block does not unsubscribe at the
router: call `unsubscribe()` for that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from bus import BatchPublisher, Bus, BusError, Subscription
from bus.payloads import Batch, RpcRequest, Status
from bus.topics import validate_topic
from components.router.ring import Event, RouterError, check_patterns, check_subscriber

__all__ = ["EventClient"]

log = logging.getLogger("mapleverse.router.client")


class EventClient:
    """The router's client for one subscriber (and publisher) on an open `Bus`."""

    def __init__(
        self,
        bus: Bus,
        subscriber: str | None = None,
        *,
        source: str | None = None,
        router: str = "main",
        max_delay: float = 0.005,
        timeout: float | None = None,
    ) -> None:
        self.bus = bus
        self.subscriber = check_subscriber(subscriber or bus.client_id)
        self.source = check_subscriber(source or self.subscriber)
        self.router = router
        self.timeout = timeout
        self.patterns: list[str] = []  # what the router should hold for us
        self.router_epoch: int | None = None  # the router's epoch in its last subscribe reply
        topics = bus.topics
        self._requests = {
            m: topics["rpc.request"].build(service="events", method=m)
            for m in ("replay", "stats", "subscribe", "unsubscribe")
        }
        self._delivery = topics["events.delivery"].build(subscriber=self.subscriber)
        self._status = topics["component.status"].build(kind="router", id=router)
        inbox = topics["events.publish"].build(source=self.source)
        self._publisher: BatchPublisher = bus.batcher(inbox, ("topic", "data"), max_delay=max_delay)
        self._deliveries: Subscription | None = None
        self._births: Subscription | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: collections.deque[Event] = collections.deque()
        self._subscribing = asyncio.Lock()  # one subscribe at a time: ours or the watcher's

    async def __aenter__(self) -> EventClient:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush what was published, stop listening (the router keeps the subscription)."""
        with contextlib.suppress(BusError):
            await self._publisher.flush()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for sub in (self._deliveries, self._births):
            if sub is not None:
                await sub.close()
        self._deliveries = self._births = None

    async def _listen(self) -> None:
        """Deliveries first (nothing the router sends is missed), then the router's births."""
        if self._deliveries is None:
            self._deliveries = await self.bus.subscribe(self._delivery)
        if self._births is None:
            self._births = await self.bus.subscribe(self._status)
            self._watcher = asyncio.create_task(
                self._watch(self._births), name=f"events-watch-{self.subscriber}"
            )

    # -- requests -----------------------------------------------------------------------------
    async def _call(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        reply = await self.bus.request(
            self._requests[method], RpcRequest(args=args), timeout=self.timeout
        )
        if not reply.payload.ok:
            raise RouterError(reply.payload.error or "refused", method=method)
        result: dict[str, Any] = reply.payload.result
        return result

    async def subscribe(
        self, patterns: Sequence[str], *, replay_from: int | None = None
    ) -> dict[str, Any]:
        """Add patterns (MQTT filters over event names); with `replay_from`, the buffered events
        with seq >= it come first. Returns the router's answer (`patterns`, `next_seq`, ...)."""
        wanted = check_patterns(list(patterns))
        await self._listen()
        # Kept before asking: should the router be away, its next birth brings them over.
        self.patterns = list(dict.fromkeys([*self.patterns, *wanted]))
        args: dict[str, Any] = {"subscriber": self.subscriber, "patterns": wanted}
        if replay_from is not None:
            args["replay_from"] = replay_from
        async with self._subscribing:
            result = await self._call("subscribe", args)
            self.router_epoch = result.get("epoch")
        return result

    async def unsubscribe(self, patterns: Sequence[str] | None = None) -> dict[str, Any]:
        """Remove some patterns, or every one (None)."""
        if patterns is None:
            self.patterns = []
            args: dict[str, Any] = {"subscriber": self.subscriber, "all": True}
        else:
            gone = check_patterns(list(patterns))
            self.patterns = [p for p in self.patterns if p not in gone]
            args = {"subscriber": self.subscriber, "patterns": gone}
        return await self._call("unsubscribe", args)

    async def replay(
        self, from_seq: int = 0, limit: int | None = None, patterns: Sequence[str] | None = None
    ) -> tuple[list[Event], int]:
        """Buffered events from `from_seq` (at most `limit`, matching `patterns`), and the seq
        to ask from for the next page."""
        args: dict[str, Any] = {"from_seq": from_seq}
        if limit is not None:
            args["limit"] = limit
        if patterns is not None:
            args["patterns"] = list(patterns)
        result = await self._call("replay", args)
        cols = result["columns"]
        events = [Event(*e) for e in zip(cols["seq"], cols["topic"], cols["data"], strict=True)]
        return events, int(result["next_seq"])

    async def stats(self) -> dict[str, Any]:
        return await self._call("stats", {})

    async def _watch(self, births: Subscription) -> None:
        async for msg in births:
            status = msg.payload
            if not isinstance(status, Status) or status.state != "online":
                continue
            async with self._subscribing:  # a subscribe in flight says which epoch it reached
                if not self.patterns or status.epoch == self.router_epoch:
                    continue  # the birth of the router that answered our last subscribe
                args = {"subscriber": self.subscriber, "patterns": list(self.patterns)}
                try:
                    result = await self._call("subscribe", args)
                except (BusError, RouterError) as exc:
                    log.warning("%s: cannot subscribe again: %s", self.subscriber, exc)
                    continue
                self.router_epoch = result.get("epoch")
                log.info("%s: subscribed again to router %s", self.subscriber, self.router)

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, topic: str, data: Any) -> None:
        """Queue one event (batched with others, sent within `max_delay`; never blocks)."""
        validate_topic(topic)
        self._publisher.add((topic, data))

    def publish_many(self, topics: Sequence[str], data: Sequence[Any]) -> None:
        """Queue many events at once, as columns (the fast path)."""
        for topic in topics:
            validate_topic(topic)
        self._publisher.add_columns({"topic": topics, "data": data})

    async def flush(self) -> None:
        """Wait until every event queued was handed to the bus."""
        await self._publisher.flush()

    async def wait_sent(self, backlog: int = 4) -> None:
        """Backpressure for a fast producer: wait while more than `backlog` batches wait."""
        await self._publisher.wait_sent(backlog)

    # -- receiving ----------------------------------------------------------------------------
    def __aiter__(self) -> EventClient:
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    async def get(self, timeout: float | None = None) -> Event:
        """The next event delivered (TimeoutError after `timeout` seconds)."""
        if not self._pending:
            await self._listen()
            assert self._deliveries is not None
            async with asyncio.timeout(timeout):
                while not self._pending:
                    for msg in await self._deliveries.get_many():
                        self._unpack(msg.payload)
        return self._pending.popleft()

    def _unpack(self, batch: Any) -> None:
        if not isinstance(batch, Batch) or not all(f in batch.columns for f in ("seq", "topic")):
            log.warning("%s: a delivery without seq/topic columns: skipped", self.subscriber)
            return
        columns = batch.columns
        seqs, topics = columns["seq"], columns["topic"]
        data = columns.get("data", [None] * len(seqs))
        self._pending.extend(map(Event, seqs, topics, data))
