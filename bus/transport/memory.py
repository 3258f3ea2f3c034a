"""An in-process MQTT broker for unit tests, honouring the semantics components rely on.

Wildcard subscriptions (through `bus.topics.matches`, the one matcher), retained messages
(an empty retained payload clears), the Will on an unclean disconnect and on a client-id
takeover, persistent sessions (clean session off) that queue QoS 1 messages while the client
is away and redeliver what was in flight when a connection dropped, QoS downgrade to the
subscription's QoS, and optional authentication and authorisation hooks. Delivery is
asynchronous (scheduled on the loop), as over a network.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bus.errors import ConnectionFailed
from bus.topics import matches
from bus.transport.base import Connection, ConnectParams, Incoming, Sink, Transport, Will

Authenticator = Callable[[str, str | None, str | None], bool]
Authorizer = Callable[[str | None, str, str], bool]  # (username, "publish"|"subscribe", topic)


@dataclass
class _Session:
    client_id: str
    username: str | None
    persistent: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    queued: deque[Incoming] = field(default_factory=deque)
    connection: MemoryConnection | None = None


class MemoryBroker:
    """The broker; `transport()` gives a Transport for a Bus."""

    def __init__(
        self,
        *,
        authenticate: Authenticator | None = None,
        authorize: Authorizer | None = None,
        username_as_client_id: bool = False,
        max_queued: int = 100_000,
    ) -> None:
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.sessions: dict[str, _Session] = {}
        self.authenticate = authenticate
        self.authorize = authorize
        self.username_as_client_id = username_as_client_id
        self.max_queued = max_queued
        self.running = True
        self.published = 0

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """The broker goes away: every connection drops, no Will is sent (as in a crash)."""
        self.running = False
        for session in list(self.sessions.values()):
            if session.connection is not None:
                session.connection._drop(fire_will=False)

    def start(self) -> None:
        """Back up with its persistent sessions and retained messages (persistence on)."""
        self.running = True

    def connected(self) -> list[str]:
        return [s.client_id for s in self.sessions.values() if s.connection is not None]

    # -- routing ----------------------------------------------------------------------------
    def route(self, sender: str | None, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.authorize is not None and not self.authorize(sender, "publish", topic):
            return  # like Mosquitto: a denied publish is acknowledged and dropped
        self.published += 1
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        for session in self.sessions.values():
            granted = -1
            for topic_filter, sub_qos in session.subscriptions.items():
                if sub_qos > granted and matches(topic_filter, topic):
                    granted = sub_qos
            if granted < 0:
                continue
            # MQTT 3.3.1.9: retain is cleared on delivery to established subscriptions.
            self._deliver(session, Incoming(topic, payload, min(qos, granted), False, False))

    def _deliver(self, session: _Session, message: Incoming) -> None:
        conn = session.connection
        if conn is not None:
            conn._enqueue(message)
        elif session.persistent and message.qos == 1 and len(session.queued) < self.max_queued:
            session.queued.append(message)


class MemoryConnection(Connection):
    def __init__(self, broker: MemoryBroker, session: _Session, sink: Sink, will: Will | None):
        self.broker = broker
        self.session = session
        self.sink = sink
        self.will = will
        self.loop = asyncio.get_running_loop()
        self.inflight: deque[Incoming] = deque()
        self.paused = False
        self.closed = False
        self.scheduled = False

    def _enqueue(self, message: Incoming) -> None:
        self.inflight.append(message)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and not self.paused and not self.closed:
            self.scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self.scheduled = False
        while self.inflight and not self.paused and not self.closed:
            self.sink.deliver(self.inflight.popleft())

    def _drop(self, *, fire_will: bool, reason: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        session = self.session
        session.connection = None
        if session.persistent:  # what was in flight is redelivered on the next connection
            session.queued.extendleft(reversed([m for m in self.inflight if m.qos == 1]))
        else:
            self.broker.sessions.pop(session.client_id, None)
        self.inflight.clear()
        if fire_will and self.will is not None:
            w = self.will
            self.broker.route(session.username, w.topic, w.payload, w.qos, w.retain)
        self.loop.call_soon(self.sink.lost, reason or ConnectionResetError("connection lost"))

    # -- Connection ---------------------------------------------------------------------------
    def write_publish(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool
    ) -> None:
        if self.closed:
            return
        self.broker.route(self.session.username, topic.decode(), payload, qos, retain)
        if qos:
            self.loop.call_soon(self._ack, pid)

    def _ack(self, pid: int) -> None:
        if not self.closed:
            self.sink.acked(pid)

    @property
    def write_paused(self) -> bool:
        return False

    async def drain(self) -> None:
        return None

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        granted = []
        for topic_filter, qos in filters:
            auth = self.broker.authorize
            if auth is not None and not auth(self.session.username, "subscribe", topic_filter):
                granted.append(0x80)
                continue
            self.session.subscriptions[topic_filter] = qos
            granted.append(qos)
            for topic, (payload, rqos) in list(self.broker.retained.items()):
                if matches(topic_filter, topic):
                    self._enqueue(Incoming(topic, payload, min(rqos, qos), True, False))
        await asyncio.sleep(0)
        return granted

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        for topic_filter in filters:
            self.session.subscriptions.pop(topic_filter, None)
        await asyncio.sleep(0)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self._schedule()

    async def close(self) -> None:
        self._drop(fire_will=False, reason=None)
        await asyncio.sleep(0)

    def abort(self) -> None:
        self._drop(fire_will=True)


class MemoryTransport(Transport):
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def connect(self, params: ConnectParams, sink: Sink) -> Connection:
        broker = self.broker
        await asyncio.sleep(0)
        if not broker.running:
            raise ConnectionFailed("connection refused", host=params.host, port=params.port)
        if broker.authenticate is not None and not broker.authenticate(
            params.client_id, params.username, params.password
        ):
            raise ConnectionFailed(
                "bad user name or password", host=params.host, port=params.port, code=4
            )
        client_id = params.client_id
        if broker.username_as_client_id and params.username:
            client_id = params.username
        session = broker.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection._drop(fire_will=True)  # takeover: the old connection goes
        if params.clean_session or session is None:
            present = session is not None and not params.clean_session
            session = _Session(client_id, params.username, not params.clean_session)
            broker.sessions[client_id] = session
        else:
            present = True
        conn = MemoryConnection(broker, session, sink, params.will)
        conn.session_present = present
        session.connection = conn
        while session.queued:
            conn._enqueue(session.queued.popleft())
        return conn
