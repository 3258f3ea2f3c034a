"""`Bus`: the connection every component and Python agent uses.

    async with Bus(settings, kind="health") as bus:
        async for msg in bus.subscribe(bus.topics.component.heartbeat(kind="+", id="+")):
            ...
        await bus.publish(bus.topics.health(), summary)

The bus keeps one MQTT connection alive: it reconnects with jittered exponential backoff,
resubscribes when the broker lost the session, and resends every QoS 1 message the broker had
not acknowledged. Incoming messages wait in a bounded buffer; when it is full the bus stops
reading the socket (the broker holds the rest) instead of dropping anything it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from bus import codecs, payloads
from bus.batching import BatchPublisher
from bus.errors import (
    BusError,
    ConnectionFailed,
    NotConnected,
    PacketTooLarge,
    PayloadError,
    TopicError,
)
from bus.inflight import Inflight
from bus.metrics import ClientMetrics
from bus.settings import BusSettings
from bus.subscription import Message, Subscription
from bus.topics import Topic, TopicSpec, TopicTree, load, matches, validate_filter, validate_topic
from bus.transport import packets
from bus.transport.base import Connection, ConnectParams, Incoming, Transport, Will
from bus.transport.mqtt import MqttTransport

log = logging.getLogger("mapleverse.bus")

M = TypeVar("M", bound=BaseModel)
WillFactory = Callable[[], tuple[Topic, BaseModel] | None]
ConnectHook = Callable[[bool], Awaitable[None]]

_DLQ_PREVIEW = 2048


class Bus:
    """A live, self-healing connection to the broker with typed topics and payloads."""

    def __init__(
        self,
        settings: BusSettings | None = None,
        *,
        kind: str = "client",
        transport: Transport | None = None,
        topics: TopicTree | None = None,
        will: WillFactory | None = None,
        on_connect: ConnectHook | None = None,
    ) -> None:
        self.settings = settings or BusSettings()
        s = self.settings
        self.kind = kind
        self.client_id = s.client_id or s.username or f"{kind}-{random.getrandbits(40):010x}"
        self.metrics = ClientMetrics(self.client_id)
        self.topics = (
            (topics or load()).with_root(s.root)
            if (topics is None or topics.root != s.root)
            else topics
        )
        self.transport = transport or MqttTransport()
        self._will = will
        self._on_connect = on_connect
        self._encoder = codecs.Encoder(self.client_id)
        self._ids = self._encoder.ids
        self._topic_cache: dict[str, bytes] = {}
        self._conn: Connection | None = None
        self._generation = 0
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._first_error: BaseException | None = None
        self._first_attempt = asyncio.Event()
        # outgoing QoS 1, by packet id, in send order
        self._inflight = Inflight(s.max_inflight, self.metrics.publish_latency)
        # incoming
        self._incoming: deque[Incoming] = deque()
        self._incoming_ready = asyncio.Event()
        self._subs: list[Subscription] = []
        self._route_cache: dict[str, tuple[tuple[Subscription, ...], TopicSpec | None]] = {}
        self._closed_filters: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()
        # Messages no subscription wanted yet (a persistent session's backlog arrives as soon
        # as the connection is up, before the application has subscribed again): handed to the
        # first matching subscription. Bounded; the oldest goes first when full (counted).
        self._unclaimed: deque[Message[Any]] = deque()
        self._filter_refs: dict[str, int] = {}
        self._pending: dict[str, asyncio.Future[Message[Any]]] = {}
        self._reply_sub: Subscription | None = None
        self._confirmed: set[str] = set()  # filters the broker's session holds for us
        self._reply_to = str(self.topics["rpc.reply"].build(client=self.client_id))
        self._hook: asyncio.Task[None] | None = None
        self._routing = False  # the dispatcher holds a message it is placing
        self._paused_for: set[str] = set()  # why reading is paused: "incoming", "unclaimed"
        self.connections = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Connect. With `wait`, return once connected, or raise the first attempt's error."""
        self._dispatcher = asyncio.create_task(
            self._dispatch(), name=f"bus-dispatch-{self.client_id}"
        )
        self._runner = asyncio.create_task(self._run(), name=f"bus-connect-{self.client_id}")
        if wait:
            await self._first_attempt.wait()
            if self._first_error is not None and not self.connected.is_set():
                err = self._first_error
                await self.close()
                raise err

    async def close(self, *, flush_timeout: float = 2.0) -> None:
        """Wait (bounded) for QoS 1 acknowledgements, then disconnect cleanly (no Will)."""
        if self._closing:
            return
        if self._inflight and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await self.flush(flush_timeout)
        self._closing = True
        for task in (self._runner, self._dispatcher):
            if task is not None:
                task.cancel()
        for task in (self._runner, self._dispatcher):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        self.connected.clear()
        for sub in self._subs:
            sub._fail(NotConnected("bus closed"))
        self._inflight.fail_all(NotConnected("bus closed before the broker acknowledged"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NotConnected("bus closed"))

    def abort(self) -> None:
        """Drop the connection as a crash would (the broker publishes the Will); it reconnects."""
        if self._conn is not None:
            self._conn.abort()

    @property
    def connection(self) -> Connection | None:
        return self._conn

    async def _run(self) -> None:
        s = self.settings
        delay = s.reconnect_min
        stable_after = max(float(s.keepalive), 5.0)
        while not self._closing:
            try:
                await self._connect_once()
            except Exception as exc:
                if not isinstance(exc, ConnectionFailed):
                    log.exception("%s: connection attempt failed", self.client_id)
                if not self._first_attempt.is_set():
                    self._first_error = exc
                    self._first_attempt.set()
                if isinstance(exc, ConnectionFailed) and exc.code in (4, 5):
                    log.error(
                        "%s: %s", self.client_id, exc
                    )  # credentials: retrying won't help soon
                else:
                    log.warning("%s: %s; retrying in %.2fs", self.client_id, exc, delay)
                await asyncio.sleep(random.uniform(delay / 2, delay))  # jittered backoff
                delay = min(delay * 2, s.reconnect_max)
                continue
            self._first_attempt.set()
            up_since = time.monotonic()
            await self._lost.wait()
            self._lost.clear()
            self.connected.clear()
            if self._hook is not None:
                self._hook.cancel()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.abort()  # make sure the old connection is gone before the next one
            if self._closing:
                return
            self.metrics.reconnects.inc()
            # A connection that did not last (e.g. two processes taking one client id over from
            # each other) keeps backing off; one that was stable starts again from the minimum.
            delay = s.reconnect_min if time.monotonic() - up_since > stable_after else delay
            log.warning("%s: connection lost; reconnecting in %.2fs", self.client_id, delay)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, s.reconnect_max)

    async def _connect_once(self) -> None:
        s = self.settings
        will = None
        if self._will is not None:
            made = self._will()
            if made is not None:
                topic, model = made
                will = Will(str(topic), self.encode(model), int(topic.spec.qos), topic.spec.retain)
        self._generation += 1
        self._lost.clear()
        generation = self._generation
        params = ConnectParams(
            host=s.host,
            port=s.port,
            client_id=self.client_id,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            clean_session=s.clean_session,
            keepalive=s.keepalive,
            will=will,
            connect_timeout=s.connect_timeout,
        )
        conn = await self.transport.connect(params, _Sink(self, generation))
        if generation != self._generation or self._lost.is_set():
            conn.abort()
            raise ConnectionFailed("lost during the handshake", host=s.host, port=s.port)
        if not conn.session_present or s.clean_session:
            self._confirmed = set()  # the broker kept nothing of ours
        self.connections += 1
        self._paused_for.discard("incoming")
        try:
            # Subscriptions first (one made while we were away must see what follows), and
            # nothing is written by anyone else meanwhile: `_conn` is not set yet.
            await self._sync_subscriptions(conn)
        except NotConnected:
            return  # lost again at once; _run goes round
        self._conn = conn
        if self._paused_for:
            conn.pause_reading()
        # Then what the broker has not acknowledged, in order (publishes made while we were
        # away included), before any new publish can be written.
        for pid, out in list(self._inflight.items()):
            conn.write_publish(out.topic, out.payload, 1, out.retain, pid, True)
        try:
            await self._sync_subscriptions(conn)  # any made during the first round
        except NotConnected:
            return
        self.connected.set()
        if self._on_connect is not None:
            # Its own task: a hook that publishes must not hold up the reconnect loop.
            self._hook = asyncio.create_task(self._run_hook(self.connections > 1))

    async def _run_hook(self, reconnected: bool) -> None:
        assert self._on_connect is not None
        try:
            await self._on_connect(reconnected)
        except BusError as exc:
            log.warning("%s: on-connect hook failed: %s", self.client_id, exc)

    async def _sync_subscriptions(self, conn: Connection) -> None:
        """Make the broker's session hold exactly the filters subscribed here."""
        wanted = set(self._filter_refs)
        missing = sorted(wanted - self._confirmed)
        extra = sorted(self._confirmed - wanted)
        if missing:
            qos = {f: max(sub.qos for sub in self._subs if sub.filter == f) for f in missing}
            granted = await conn.subscribe([(f, qos[f]) for f in missing])
            for f, g in zip(missing, granted, strict=False):
                if g == 0x80:
                    log.error("%s: broker refused subscription to %s", self.client_id, f)
                else:
                    self._confirmed.add(f)
        if extra:
            await conn.unsubscribe(extra)
            self._confirmed.difference_update(extra)

    def _on_lost(self, generation: int, exc: BaseException | None) -> None:
        if generation == self._generation:
            self.connected.clear()
            self._lost.set()

    # -- publishing -------------------------------------------------------------------------------
    def encode(
        self,
        model: BaseModel | dict[str, Any],
        *,
        corr: str | None = None,
        reply: str | None = None,
        trace: str | None = None,
    ) -> bytes:
        """`model` in an envelope from this client."""
        return self._encoder(model, corr, reply, trace)

    def _spec_of(self, topic: str) -> TopicSpec:
        spec = topic.spec if isinstance(topic, Topic) else self.topics.resolve(topic)
        if spec is None:
            raise TopicError(f"{topic!r} is not declared in topics.yaml", topic=topic)
        if spec.root != self.topics.root:
            raise TopicError(
                f"{topic!r} is outside this bus's root {self.topics.root!r}", topic=topic
            )
        return spec

    async def publish(
        self,
        topic: Topic | str,
        payload: BaseModel,
        *,
        corr: str | None = None,
        reply: str | None = None,
        trace: str | None = None,
        wait: bool = False,
    ) -> None:
        """Publish with the QoS and retain declared for the topic.

        QoS 1 returns once the message is in the in-flight window (the bus resends it until the
        broker acknowledges it, across reconnects); `wait=True` waits for the acknowledgement.
        """
        spec = self._spec_of(topic)
        if isinstance(topic, Topic) and topic.is_filter:
            raise TopicError(f"cannot publish to the filter {topic!r}", topic=topic)
        if not isinstance(payload, spec.payload):
            raise TopicError(
                f"{spec.name} carries {spec.payload.__name__}, not {type(payload).__name__}",
                topic=topic,
            )
        data = self.encode(payload, corr=corr, reply=reply, trace=trace)
        await self.publish_bytes(str(topic), data, int(spec.qos), spec.retain, wait=wait)

    async def clear_retained(self, topic: Topic | str) -> None:
        """Remove the retained message of a topic (an empty retained publish)."""
        spec = self._spec_of(topic)
        await self.publish_bytes(str(topic), b"", int(spec.qos), True)

    async def publish_bytes(
        self, topic: str, data: bytes, qos: int, retain: bool, *, wait: bool = False
    ) -> None:
        """Publish an already encoded payload (the batching publisher and the DLQ use this)."""
        btopic = self._wire_topic(topic, data, qos)
        if self._closing:
            raise NotConnected("bus closed")
        if qos == 0:
            conn = self._conn
            if conn is None:
                raise NotConnected(f"{self.client_id} is not connected; QoS 0 message dropped")
            while conn.write_paused:  # another writer may have filled it again first
                await conn.drain()
            conn.write_publish(btopic, data, 0, retain, 0, False)
            self.metrics.published.inc()
            return
        await self._inflight.reserve()
        done = asyncio.get_running_loop().create_future() if wait else None
        pid = self._inflight.add(btopic, data, retain, done)
        conn = self._conn
        if conn is not None:
            while conn.write_paused:  # another writer may have filled it again first
                await conn.drain()
            conn.write_publish(btopic, data, 1, retain, pid, False)
        self.metrics.published.inc()
        if done is not None:
            await done

    def publish_now(self, topic: str, data: bytes, retain: bool = False) -> bool:
        """Write an encoded QoS 0 message to the connection at once, when that needs no wait:
        connected, and the connection not pushing back. False when it would have to wait; the
        caller queues it (the batching publisher streams its chunks this way, each on the wire
        as soon as it is encoded)."""
        btopic = self._wire_topic(topic, data, 0)
        conn = self._conn
        if self._closing or conn is None or conn.write_paused:
            return False
        conn.write_publish(btopic, data, 0, retain, 0, False)
        self.metrics.published.inc()
        return True

    def _wire_topic(self, topic: str, data: bytes, qos: int) -> bytes:
        """The topic's bytes (validated once, cached), and the message checked to fit the
        broker's packet limit."""
        btopic = self._topic_cache.get(topic)
        if btopic is None:
            validate_topic(topic)
            btopic = topic.encode()
            if len(self._topic_cache) > 4096:
                self._topic_cache.clear()
            self._topic_cache[topic] = btopic
        # a PUBLISH's size on the wire: header (<= 5), topic length (2), topic, packet id (2)
        if len(data) + len(btopic) + 9 > self.settings.max_packet_size:
            size = packets.publish_size(btopic, data, qos)
            if size > self.settings.max_packet_size:
                raise PacketTooLarge(size, self.settings.max_packet_size, topic=topic)
        return btopic

    def _on_acked(self, pid: int) -> None:
        self._inflight.ack(pid)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker acknowledged every QoS 1 message sent so far."""
        await self._inflight.wait_all(timeout)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- subscribing -------------------------------------------------------------------------------
    def subscribe(self, topic_filter: Topic | str, *, maxsize: int | None = None) -> Subscription:
        """Messages matching `topic_filter`; payloads validated against the declared model."""
        validate_filter(str(topic_filter))
        spec = topic_filter.spec if isinstance(topic_filter, Topic) else None
        if spec is not None and spec.root != self.topics.root:
            raise TopicError(f"{topic_filter!r} is outside this bus's root", topic=topic_filter)
        qos = int(spec.qos) if spec else 1
        size = maxsize or self.settings.queue_size
        return Subscription(self, str(topic_filter), spec, qos, size)

    async def _add_subscription(self, sub: Subscription) -> None:
        sub.active = True
        self._subs.append(sub)
        self._route_cache.clear()
        self._closed_filters.discard(sub.filter)
        if self._unclaimed:
            keep: deque[Message[Any]] = deque()
            for msg in self._unclaimed:
                if matches(sub.filter, msg.topic) and not sub.queue.full():
                    sub.queue.put_nowait(msg)
                else:
                    keep.append(msg)
            self._unclaimed = keep
            if len(keep) < self.settings.queue_size:
                self._set_paused(unclaimed=False)
        self._filter_refs[sub.filter] = self._filter_refs.get(sub.filter, 0) + 1
        conn = self._conn
        if conn is None:
            return  # sent on the next connection (_sync_subscriptions)
        try:
            granted = await conn.subscribe([(sub.filter, sub.qos)])
        except NotConnected:
            return  # the next connection sends it
        if granted and granted[0] != 0x80:
            self._confirmed.add(sub.filter)
        if granted and granted[0] == 0x80:
            await self._remove_subscription(sub)
            raise TopicError(
                f"the broker refused the subscription to {sub.filter}", topic=sub.filter
            )

    async def _remove_subscription(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.remove(sub)
        self._route_cache.clear()
        self._closed_filters.add(sub.filter)
        refs = self._filter_refs.get(sub.filter, 0) - 1
        if refs > 0:
            self._filter_refs[sub.filter] = refs
            return
        self._filter_refs.pop(sub.filter, None)
        conn = self._conn
        if conn is not None and not self._closing and sub.filter in self._confirmed:
            with contextlib.suppress(NotConnected):  # else the next connection unsubscribes
                await conn.unsubscribe([sub.filter])
                self._confirmed.discard(sub.filter)

    def _set_paused(self, *, incoming: bool | None = None, unclaimed: bool | None = None) -> None:
        """Stop reading the socket while any buffer is full; read again when none is."""
        before = bool(self._paused_for)
        for reason, on in (("incoming", incoming), ("unclaimed", unclaimed)):
            if on is True:
                self._paused_for.add(reason)
            elif on is False:
                self._paused_for.discard(reason)
        after = bool(self._paused_for)
        conn = self._conn
        if conn is not None and before != after:
            if after:
                conn.pause_reading()
            else:
                conn.resume_reading()

    def _deliver(self, message: Incoming) -> None:
        # Fast path: nothing waiting before it (nor being placed) and room in every queue it
        # goes to: route it now, without a hop through the dispatcher (one loop turn less).
        if not self._incoming and not self._routing and self._route_now(message):
            return
        self._incoming.append(message)
        if len(self._incoming) >= self.settings.queue_size:
            self._set_paused(incoming=True)
        self._incoming_ready.set()

    async def _dispatch(self) -> None:
        incoming = self._incoming
        low_water = max(1, self.settings.queue_size // 2)
        received = self.metrics.received
        while True:
            if not incoming:
                self._incoming_ready.clear()
                self.metrics.queue_depth.set(0)
                await self._incoming_ready.wait()
                continue
            count = 0
            self.metrics.queue_depth.set(len(incoming))
            while incoming:
                item = incoming.popleft()
                count += 1
                if "incoming" in self._paused_for and len(incoming) <= low_water:
                    self._set_paused(incoming=False)
                self._routing = True
                try:
                    await self._route(item)
                finally:
                    self._routing = False
            received.inc(count)

    def _targets(self, topic: str) -> tuple[tuple[Subscription, ...], TopicSpec | None]:
        """The subscriptions a topic goes to and its declaration (cached per topic)."""
        hit = self._route_cache.get(topic)
        if hit is not None:
            return hit
        targets = tuple(s for s in self._subs if matches(s.filter, topic))
        spec: TopicSpec | None = None
        for sub in targets:
            # a filter built from a declaration matches only topics of that declaration
            if sub.spec is not None:
                spec = sub.spec
                break
        else:
            spec = self.topics.resolve(topic)
        if len(self._route_cache) > 8192:
            self._route_cache.clear()
        self._route_cache[topic] = (targets, spec)
        return targets, spec

    def _open(self, item: Incoming, spec: TopicSpec | None) -> Message[Any] | PayloadError:
        """Decode and validate; a reply is handed to the request waiting for it."""
        try:
            env, payload = codecs.decode(item.payload, spec.payload if spec else None)
        except PayloadError as exc:
            return exc
        msg: Message[Any] = Message(
            item.topic, payload, env, spec, item.qos, item.retain, item.payload
        )
        if env.corr is not None and self._pending and item.topic == self._reply_to:
            fut = self._pending.pop(env.corr, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        return msg

    def _route_now(self, item: Incoming) -> bool:
        """Route synchronously if no queue is full; False leaves it to the dispatcher."""
        targets, spec = self._targets(item.topic)
        if not targets:
            return False  # the stash and the reply path live on the slow path
        for sub in targets:
            if len(sub.queue._items) >= sub.queue.maxsize:
                return False
        if not item.payload:
            return True  # a cleared retained message carries nothing
        self.metrics.received.inc()
        msg = self._open(item, spec)
        if isinstance(msg, PayloadError):
            task = asyncio.ensure_future(self._reject(item, msg.reason))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return True
        for sub in targets:
            if sub is not self._reply_sub and not sub.closed:
                sub.queue.put_nowait(msg)
        return True

    async def _route(self, item: Incoming) -> None:
        targets, spec = self._targets(item.topic)
        if not item.payload:
            return  # a cleared retained message carries nothing
        msg = self._open(item, spec)
        if isinstance(msg, PayloadError):
            await self._reject(item, msg.reason)
            return
        delivered = False
        for sub in targets:
            if sub is self._reply_sub:
                delivered = True  # handed to its request above, or a late reply: dropped
            elif not sub.closed:
                delivered = True
                queue = sub.queue
                if len(queue._items) < queue.maxsize:
                    queue.put_nowait(msg)
                else:
                    await queue.put(msg)
        if not delivered:
            self._stash(msg, item)

    def _stash(self, msg: Message[Any], item: Incoming) -> None:
        # Only a persistent session's backlog waits for its subscription: a retained message is
        # sent again on subscribe, and messages for a filter the application closed are done.
        if item.retain or any(matches(f, msg.topic) for f in self._closed_filters):
            return
        self._unclaimed.append(msg)
        if len(self._unclaimed) >= self.settings.queue_size:
            # Nothing acknowledged is dropped: stop reading until a subscription claims these.
            if "unclaimed" not in self._paused_for:
                log.warning(
                    "%s: %d messages wait for a subscription (e.g. to %s); reading paused",
                    self.client_id,
                    len(self._unclaimed),
                    msg.topic,
                )
            self._set_paused(unclaimed=True)

    async def _reject(self, item: Incoming, reason: str) -> None:
        self.metrics.rejected.inc()
        log.warning("%s: rejected payload on %s: %s", self.client_id, item.topic, reason)
        dlq = self.topics.dlq
        if dlq.parse(item.topic) is not None:
            return  # never dead-letter a dead letter
        letter = payloads.DeadLetter(
            component=self.client_id,
            topic=item.topic,
            reason=reason,
            payload=item.payload[:_DLQ_PREVIEW].decode("utf-8", "replace"),
            size=len(item.payload),
        )
        try:
            await self.publish(dlq(kind=self.kind), letter)
            self.metrics.dead_lettered.inc()
        except BusError as exc:
            log.error("%s: cannot dead-letter: %s", self.client_id, exc)

    async def dead_letter(self, msg: Message[Any], reason: str) -> None:
        """Reject a message that validated but makes no sense (out of bounds, impossible):
        count it and report it on the dead-letter topic with `reason`, like a bad payload."""
        await self._reject(Incoming(msg.topic, msg.raw, msg.qos, msg.retain, False), reason)

    def batcher(self, topic: Topic, fields: Sequence[str], **options: Any) -> BatchPublisher:
        """A batching publisher for a high-rate stream topic (see bus.batching)."""
        return BatchPublisher(self, topic, fields, **options)

    # -- request / reply -------------------------------------------------------------------------
    @property
    def reply_topic(self) -> Topic:
        return self.topics["rpc.reply"].build(client=self.client_id)

    async def request(
        self, topic: Topic | str, payload: BaseModel, *, timeout: float | None = None
    ) -> Message[payloads.RpcReply]:
        """Send a request and wait for the reply (RequestTimeout after `timeout` seconds)."""
        from bus.errors import RequestTimeout

        if self._reply_sub is None:  # set before the await: concurrent requests share it
            self._reply_sub = self.subscribe(self.reply_topic)
            await self._reply_sub.start()
        elif not self._reply_sub.active:
            await self._reply_sub.start()
        corr = self._ids()
        fut: asyncio.Future[Message[Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        limit = timeout or self.settings.request_timeout
        try:
            await self.publish(topic, payload, corr=corr, reply=str(self.reply_topic))
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise RequestTimeout(str(topic), limit) from None
        finally:
            self._pending.pop(corr, None)

    async def reply(self, request: Message[Any], payload: payloads.RpcReply) -> None:
        """Answer a request on the reply topic it named.

        The reply's correlation id is the request's `corr`, or its `id` when it has none.
        """
        target = request.envelope.reply
        if not target:
            raise BusError(f"the request on {request.topic} named no reply topic")
        spec = self.topics.rpc.reply
        if spec.parse(target) is None:
            raise TopicError(f"reply topic {target!r} is not an rpc.reply topic", topic=target)
        env = request.envelope
        data = self.encode(payload, corr=env.corr or env.id, trace=env.trace)
        await self.publish_bytes(target, data, int(spec.qos), spec.retain)


class _Sink:
    """Connection events for one generation of the connection (older ones are ignored)."""

    __slots__ = ("bus", "generation")

    def __init__(self, bus: Bus, generation: int) -> None:
        self.bus = bus
        self.generation = generation

    def deliver(self, message: Incoming) -> None:
        if self.generation == self.bus._generation:
            self.bus._deliver(message)

    def acked(self, pid: int) -> None:
        self.bus._on_acked(pid)

    def lost(self, exc: BaseException | None) -> None:
        self.bus._on_lost(self.generation, exc)
