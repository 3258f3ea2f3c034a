"""The event router: events in, batched; each to every subscriber whose patterns match.

Wiring (the logic lives in `components.router.ring`):

* `mv/events/in/{source}` (`Batch`, columns `topic`, `data`): every accepted event gets the next
  router-wide `seq`, goes into the ring buffer and to each subscriber with a matching pattern;
* `mv/events/out/{subscriber}` (`Batch`, columns `seq`, `topic`, `data`): what a subscriber
  gets, batched per subscriber (one message per burst of input, or a few events coalesced for
  `MAPLEVERSE_EVENTS_FLUSH_DELAY` seconds), in seq order;
* `mv/rpc/events/{subscribe,unsubscribe,replay,stats}`: requests, answered on their reply topic;
* `mv/sys/dlq/router`: rows and messages that are not events, with the reason.

Input is taken a burst at a time (every message waiting). While a subscriber's delivery backlog
exceeds `MAPLEVERSE_EVENTS_MAX_BACKLOG` batches the router stops taking input: QoS 1 input waits
at the broker instead of piling up here. Subscriptions and the ring live in memory: after a
restart `seq` starts again at 1 and subscribers subscribe again (idempotent; `EventClient` does
it by itself when it sees the router's new birth).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from prometheus_client import Counter, Gauge

from bus import BatchPublisher, Bus, BusError, Message, PacketTooLarge, Subscription
from bus.payloads import Batch, DeadLetter, RpcReply, RpcRequest
from bus.topics import matches
from components.router.ring import (
    InvalidRequest,
    Rate,
    Ring,
    Subscriptions,
    check_patterns,
    check_rows,
    check_subscriber,
)
from components.router.settings import RouterSettings
from components.runtime.component import Component

__all__ = ["EventRouter"]

QUEUE_DEPTH = Gauge(
    "mapleverse_event_queue_depth", "Events held in the router's ring buffer", ["router"]
)
EVENTS_IN = Counter("mapleverse_events_in", "Events the router accepted", ["router"])
EVENTS_OUT = Counter(
    "mapleverse_events_out",
    "Events delivered (an event that goes to two subscribers counts twice)",
    ["router"],
)
EVENTS_REJECTED = Counter(
    "mapleverse_events_rejected",
    "Events (rows, or every row of a bad message) rejected to the dead-letter topic",
    ["router"],
)

FIELDS = ("seq", "topic", "data")
METHODS = ("replay", "stats", "subscribe", "unsubscribe")
_BURST = 64  # input messages taken at once: bounds how long one take() holds the loop
_COLUMNAR = 32  # at least this many events for one subscriber in a burst: one add_columns
_NAMED_ROWS = 5  # bad rows a dead letter names
_DLQ_PREVIEW = 2048
# Bytes kept free around an event: the delivery's envelope, topic and seq, or a reply's.
_EVENT_MARGIN = 1024
_REPLY_MARGIN = 512


class EventRouter(Component):
    """`mapleverse component router`: the event router (see the module docstring)."""

    kind: ClassVar[str] = "router"
    settings_model: ClassVar[type[RouterSettings]] = RouterSettings
    settings: RouterSettings

    def __init__(self, settings: RouterSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = settings
        self.ring = Ring(s.events_ring_size)
        self.subscriptions = Subscriptions(
            cache_size=s.events_route_cache,
            max_subscribers=s.events_max_subscribers,
            max_patterns=s.events_max_patterns,
        )
        self.events_in = 0
        self.events_out = 0
        self.events_rejected = 0
        now = time.monotonic()
        self._rate_in = Rate(s.events_rate_window, now)
        self._rate_out = Rate(s.events_rate_window, now)
        self._depth = QUEUE_DEPTH.labels(self.id)
        self._depth.set(0)
        self._in = EVENTS_IN.labels(self.id)
        self._out = EVENTS_OUT.labels(self.id)
        self._rejected = EVENTS_REJECTED.labels(self.id)
        self._batchers: dict[str, BatchPublisher] = {}
        self._max_event_bytes = s.max_packet_size - _EVENT_MARGIN
        self._inbox = self.topics["events.publish"].build()
        self._requests = self.topics["rpc.request"].build(service="events")
        self._dlq = self.topics["dlq"].build(kind=self.kind)
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "replay": self.replay,
            "stats": self.stats,
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
        }

    def serves(self) -> list[str]:
        return [*super().serves(), str(self._inbox), str(self._requests)]

    async def main(self, bus: Bus) -> None:
        inbox = await bus.subscribe(self._inbox)
        requests = await bus.subscribe(self._requests)
        self.serving()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ingest(inbox), name="router-ingest")
                tg.create_task(self._serve(bus, requests), name="router-requests")
        finally:  # on stop: what is buffered goes to the bus, which flushes it as it closes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # not forever with the broker away
                    await self.drain()

    async def drain(self) -> None:
        for batcher in list(self._batchers.values()):
            with contextlib.suppress(BusError):
                await batcher.flush()

    # -- events in ----------------------------------------------------------------------------
    async def _ingest(self, inbox: Subscription) -> None:
        backlog = self.settings.events_max_backlog
        async for burst in inbox.batches(_BURST):
            try:
                letters, touched = self.take(burst)
            except Exception:  # a bug, not bad input (that is dead-lettered): log, go on
                self.log.exception("a burst of %d messages was lost", len(burst))
                continue
            for letter in letters:
                await self._dead_letter(letter)
            for subscriber in touched:  # backpressure: input waits at the broker meanwhile
                batcher = self._batchers.get(subscriber)
                if batcher is not None:
                    await batcher.wait_sent(backlog)

    def take(self, burst: list[Message[Any]]) -> tuple[list[DeadLetter], list[str]]:
        """Accept the events of a burst of messages and hand them to their subscribers;
        returns (dead letters for what was rejected, the subscribers delivered to)."""
        topics: list[str] = []
        data: list[Any] = []
        letters: list[DeadLetter] = []
        for msg in burst:
            got_topics, got_data, letter = self._rows(msg)
            topics += got_topics
            data += got_data
            if letter is not None:
                letters.append(letter)
        touched: list[str] = []
        if topics:
            first = self.ring.extend(topics, data)
            touched = self._deliver(first, topics, data)
            self.events_in += len(topics)
            self._in.inc(len(topics))
            self._rate_in.add(len(topics), time.monotonic())
            self._depth.set(self.ring.depth)
        return letters, touched

    def _rows(self, msg: Message[Any]) -> tuple[list[str], list[Any], DeadLetter | None]:
        batch = msg.payload
        assert isinstance(batch, Batch)  # the bus validated it against topics.yaml
        columns = batch.columns
        rows = len(next(iter(columns.values()))) if columns else 0
        if rows == 0 and batch.n == 0:
            return [], [], None  # nothing in it, nothing wrong with it
        missing = [c for c in ("topic", "data") if c not in columns]
        if missing or rows != batch.n:
            count = rows  # the rows there are (`n` may be the very thing that is wrong)
            if missing:
                reason = f"missing column(s) {missing}: events need 'topic' and 'data'"
            else:
                reason = f"n is {batch.n} but the columns hold {rows} rows"
            return [], [], self._reject(msg, count, f"{count} events rejected: {reason}")
        big = self._max_event_bytes if len(msg.raw) > self._max_event_bytes else None
        topics, data, bad = check_rows(
            columns["topic"], columns["data"], self.subscriptions, max_bytes=big
        )
        if not bad:
            return topics, data, None
        named = "; ".join(f"row {i}: {why}" for i, why in bad[:_NAMED_ROWS])
        more = f"; and {len(bad) - _NAMED_ROWS} more" if len(bad) > _NAMED_ROWS else ""
        reason = f"{len(bad)} of {rows} events rejected: {named}{more}"
        return topics, data, self._reject(msg, len(bad), reason)

    def _reject(self, msg: Message[Any], count: int, reason: str) -> DeadLetter:
        self.events_rejected += count
        self._rejected.inc(count)
        self.log.warning("rejected on %s: %s", msg.topic, reason)
        return DeadLetter(
            component=self.bus.client_id,
            topic=msg.topic,
            reason=reason,
            payload=msg.raw[:_DLQ_PREVIEW].decode("utf-8", "replace"),
            size=len(msg.raw),
        )

    async def _dead_letter(self, letter: DeadLetter) -> None:
        try:
            await self.bus.publish(self._dlq, letter)
            self.bus.metrics.dead_lettered.inc()
        except BusError as exc:
            self.log.error("cannot dead-letter: %s", exc)

    # -- events out ---------------------------------------------------------------------------
    def _deliver(self, first: int, topics: list[str], data: list[Any]) -> list[str]:
        n = len(topics)
        delivered = 0
        routes = self.subscriptions.fan_out(topics)
        for subscriber, picked in routes.items():
            if len(picked) == n:
                self._send(subscriber, list(range(first, first + n)), topics, data)
            else:
                self._send(
                    subscriber,
                    [first + i for i in picked],
                    [topics[i] for i in picked],
                    [data[i] for i in picked],
                )
            delivered += len(picked)
        self._count_out(delivered)
        return list(routes)

    def _count_out(self, delivered: int) -> None:
        if delivered:
            self.events_out += delivered
            self._out.inc(delivered)
            self._rate_out.add(delivered, time.monotonic())

    def _batcher(self, subscriber: str) -> BatchPublisher:
        batcher = self._batchers.get(subscriber)
        if batcher is None:
            topic = self.topics["events.delivery"].build(subscriber=subscriber)
            batcher = self.bus.batcher(topic, FIELDS, max_delay=self.settings.events_flush_delay)
            self._batchers[subscriber] = batcher
        return batcher

    def _send(self, subscriber: str, seqs: list[int], topics: list[str], data: list[Any]) -> None:
        """Hand events to the subscriber's batcher: columns at once when there are many, else
        row by row, coalesced with what follows within the flush delay."""
        batcher = self._batcher(subscriber)
        for _ in range(2):  # an earlier batch's error is raised (and cleared) by the next add
            try:
                if len(seqs) >= _COLUMNAR:
                    batcher.add_columns({"seq": seqs, "topic": topics, "data": data})
                else:
                    for record in zip(seqs, topics, data, strict=True):
                        batcher.add(record)
                return
            except PacketTooLarge as exc:  # cannot happen for events check_rows let in
                self.log.error("delivery to %s: %s", subscriber, exc)
                return
            except BusError as exc:
                self.log.warning("delivery to %s: an earlier batch failed: %s", subscriber, exc)

    # -- requests -----------------------------------------------------------------------------
    async def _serve(self, bus: Bus, requests: Subscription) -> None:
        async for msg in requests:
            method = msg.params.get("method", "")
            request = msg.payload
            assert isinstance(request, RpcRequest)
            reply = self.answer(method, request.args)
            if msg.envelope.reply:
                try:
                    await bus.reply(msg, reply)
                except BusError as exc:
                    self.log.warning("cannot reply to %s on %s: %s", method, msg.topic, exc)
            elif not reply.ok:  # nobody to tell: the dead-letter topic is
                await self._dead_letter(
                    DeadLetter(
                        component=bus.client_id,
                        topic=msg.topic,
                        reason=reply.error or "",
                        payload=msg.raw[:_DLQ_PREVIEW].decode("utf-8", "replace"),
                        size=len(msg.raw),
                    )
                )
            if method == "unsubscribe" and reply.ok:
                await self._retire(reply.result["subscriber"])

    def answer(self, method: str, args: dict[str, Any]) -> RpcReply:
        """The reply to a request (never raises: a bad request gets ok=false and the reason)."""
        handler = self._handlers.get(method)
        try:
            if handler is None:
                raise InvalidRequest(f"unknown method {method!r}; the methods are {list(METHODS)}")
            return RpcReply(ok=True, result=handler(args))
        except InvalidRequest as exc:
            return RpcReply(ok=False, error=f"{method}: {exc}")
        except Exception as exc:  # a bug must not take the router down; it is logged
            self.log.exception("%s failed", method)
            return RpcReply(ok=False, error=f"{method}: internal error: {exc!r}")

    async def _retire(self, subscriber: str) -> None:
        """Drop the batcher of a subscriber that has no pattern left, once it is flushed."""
        batcher = self._batchers.get(subscriber)
        if batcher is None or subscriber in self.subscriptions:
            return
        with contextlib.suppress(BusError):
            await batcher.flush()
        if subscriber not in self.subscriptions and self._batchers.get(subscriber) is batcher:
            del self._batchers[subscriber]

    def subscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add patterns (idempotent); with `replay_from`, first the buffered events from it."""
        subscriber = check_subscriber(args.get("subscriber"))
        patterns = check_patterns(args.get("patterns"))
        replay_from = _optional_int(args, "replay_from")
        added = self.subscriptions.subscribe(subscriber, patterns)
        replayed = 0 if replay_from is None else self._replay_to(subscriber, replay_from)
        return {
            "subscriber": subscriber,
            "patterns": self.subscriptions.patterns(subscriber),
            "added": added,
            "topic": str(self.topics["events.delivery"].build(subscriber=subscriber)),
            "replayed": replayed,
            "next_seq": self.ring.next_seq,
            "oldest": self.ring.oldest,
            "epoch": self.epoch,
        }

    def _replay_to(self, subscriber: str, from_seq: int) -> int:
        # Synchronous, like take(): no event comes in between, so what follows is in seq order.
        route = self.subscriptions.route
        seqs, topics, data, _ = self.ring.select(from_seq, match=lambda t: subscriber in route(t))
        if seqs:
            self._send(subscriber, seqs, topics, data)
            self._count_out(len(seqs))
        return len(seqs)

    def unsubscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove some patterns, or all of them (`"all": true`)."""
        subscriber = check_subscriber(args.get("subscriber"))
        if args.get("all") is True:
            removed = self.subscriptions.unsubscribe(subscriber)
        elif "patterns" in args:
            removed = self.subscriptions.unsubscribe(subscriber, check_patterns(args["patterns"]))
        else:
            raise InvalidRequest('give "patterns", or "all": true')
        return {
            "subscriber": subscriber,
            "removed": removed,
            "patterns": self.subscriptions.patterns(subscriber),
        }

    def replay(self, args: dict[str, Any]) -> dict[str, Any]:
        """Buffered events from `from_seq` (default: the oldest) matching `patterns` (default:
        every event), at most `limit`, as columns; `next_seq` is where the next page starts."""
        limit_max = self.settings.events_replay_limit
        from_seq = _int(args, "from_seq", 0)
        limit = min(_int(args, "limit", limit_max), limit_max)
        if limit < 1:
            raise InvalidRequest(f"limit must be at least 1, got {limit}")
        match = None
        if "patterns" in args:
            match = functools.partial(_matches_any, check_patterns(args["patterns"]))
        seqs, topics, data, next_seq = self.ring.select(from_seq, limit, match)
        while True:
            result = {
                "n": len(seqs),
                "columns": {"seq": seqs, "topic": topics, "data": data},
                "next_seq": next_seq,
                "oldest": self.ring.oldest,
                "newest": self.ring.newest,
            }
            size = len(orjson.dumps(result))
            budget = self.settings.max_packet_size - _REPLY_MARGIN
            if size <= budget or len(seqs) <= 1:
                return result
            keep = max(1, min(len(seqs) - 1, int(len(seqs) * budget * 0.9 / size)))
            next_seq = seqs[keep]
            seqs, topics, data = seqs[:keep], topics[:keep], data[:keep]

    def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ring, the counters and rates, and every subscriber with its patterns."""
        now = time.monotonic()
        table = self.subscriptions.table()
        result: dict[str, Any] = {
            "router": self.id,
            "epoch": self.epoch,
            "depth": self.ring.depth,
            "capacity": self.ring.capacity,
            "oldest": self.ring.oldest,
            "newest": self.ring.newest,
            "next_seq": self.ring.next_seq,
            "events_in": self.events_in,
            "events_out": self.events_out,
            "events_rejected": self.events_rejected,
            "in_per_second": round(self._rate_in.per_second(now), 3),
            "out_per_second": round(self._rate_out.per_second(now), 3),
            "subscriber_count": len(table),
            "subscribers": table,
        }
        budget = self.settings.max_packet_size - _REPLY_MARGIN
        names = list(table)
        while len(orjson.dumps(result)) > budget and names:  # too many to list: the first ones
            names = names[: len(names) // 2]
            result["subscribers"] = {n: table[n] for n in names}
            result["truncated"] = True
        return result


def _matches_any(patterns: list[str], topic: str) -> bool:
    return any(matches(p, topic) for p in patterns)


def _int(args: dict[str, Any], name: str, default: int) -> int:
    """An integer argument >= 0 (`default` when absent), or InvalidRequest."""
    value = _optional_int(args, name)
    return default if value is None else value


def _optional_int(args: dict[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InvalidRequest(f"{name} must be an integer >= 0, got {value!r}")
    return value
