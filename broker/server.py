"""amqtt's Broker with the fixes the embedded broker needs (amqtt 0.12.x).

amqtt 0.12 decides authentication only after it has already acted on a CONNECT: a clean-session
CONNECT deletes the session of that client id, a persistent one overwrites its username and
Will, and a second connection takes over the first, all before the password is checked. It also
re-sends retained messages for *every* subscription in the broker, whoever made it, to each
client that connects. `GuardedBroker` overrides those steps (private amqtt methods, hence the
pin `amqtt>=0.12,<0.13`; tests/broker covers each fix):

* `Guard.admit()` runs right after the CONNECT is parsed; a refused client gets its CONNACK
  code and the socket is closed before any session is touched;
* a client id that is connected already is taken over cleanly: the old connection is closed
  without its Will (as Mosquitto does) and the new one waits until it is gone;
* retained messages go only to the subscription just made, never again on a reconnect, and
  only those the subscriber may read;
* packets larger than `max_packet_size` disconnect the client before their body is read
  (Mosquitto's `max_packet_size`);
* listeners bind the port asked for or, with `port_fallback`, the next free one, and the bound
  ports are recorded (`bound_ports`);
* with a `state_file`, retained messages and persistent sessions (subscriptions, unacknowledged
  QoS 1/2 messages) are saved on `shutdown()` and restored on `start()` (broker.persistence):
  shutdown first refuses new clients, drops every connection (Wills are sent, as before; one
  whose amqtt handler hangs is cancelled after a second), routes the PUBLISHes already
  acknowledged and lets the broadcast queue drain, so what a publisher got a PUBACK for is
  saved; messages sent to a subscriber without its PUBACK yet are saved too (and resent);
* a PUBLISH that amqtt's message loop takes while it sees the disconnect is put back in the
  session's queue instead of being dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from broker.errors import BrokerStartError
from broker.guard import CONNACK_ACCEPTED, Guard
from broker.persistence import BrokerState, Message, SessionState, load_state, save_state
from bus.topics import matches

__all__ = ["GuardedBroker", "PacketTooLargeError"]

log = logging.getLogger("broker.server")

_FALLBACK_TRIES = 100
_TAKEOVER_TIMEOUT = 5.0
_DRAIN_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 1.0


# The end of the connection being served by the current task (one task per connection).
_CONNECTION_DONE: contextvars.ContextVar[asyncio.Event] = contextvars.ContextVar("connection_done")


class PacketTooLargeError(AMQTTError):  # type: ignore[misc]  # amqtt ships no types
    """A client sent a packet larger than the limit; its connection is closed."""


class _LimitedReader(ReaderAdapter):  # type: ignore[misc]
    """Frames the MQTT byte stream and refuses a packet whose size exceeds `limit`."""

    def __init__(self, inner: ReaderAdapter, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._header = bytearray()
        self._body_left = 0

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self._inner.read(n)
        self._track(data)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def _track(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - i)
                self._body_left -= step
                i += step
                continue
            self._header.append(data[i])
            i += 1
            if len(self._header) >= 2 and not self._header[-1] & 0x80:
                remaining = sum((b & 0x7F) << (7 * k) for k, b in enumerate(self._header[1:]))
                size = len(self._header) + remaining
                self._header.clear()
                if size > self._limit:
                    raise PacketTooLargeError(
                        f"packet of {size} bytes exceeds max_packet_size {self._limit}"
                    )
                self._body_left = remaining
            elif len(self._header) > 5:
                raise PacketTooLargeError("malformed remaining length")


def _abort(handler: BrokerProtocolHandler) -> None:
    """Drop a connection's socket: amqtt's reader task may survive its cancellation and keep
    reading (and acknowledging) PUBLISHes while the broker stops."""
    writer = handler.writer
    inner = getattr(writer, "_writer", None) or getattr(writer, "_protocol", None)
    transport = getattr(inner, "transport", None)
    if isinstance(transport, asyncio.BaseTransport) and hasattr(transport, "abort"):
        transport.abort()


class _InflightRecorder(OrderedDict[int, Any]):
    """A session's `inflight_out` that remembers every message put in it (for the shutdown)."""

    def __init__(self, current: OrderedDict[int, Any]) -> None:
        self.seen: list[Any] = []
        super().__init__()
        for key, value in current.items():
            self[key] = value

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value)
        self.seen.append(value)

    def unacknowledged(self) -> list[Message]:
        """QoS 1 messages without PUBACK and QoS 2 ones without PUBREC, in order, once each."""
        found: dict[int, Message] = {}
        for m in self.seen:
            ack = m.puback_packet if m.qos == 1 else m.pubrec_packet
            if m.qos in (1, 2) and ack is None and id(m) not in found:
                found[id(m)] = Message(m.topic, bytes(m.data), int(m.qos))
        return list(found.values())


class _Snapshots(dict[str, list[tuple[Any, int]]]):
    """A dict whose iteration (keys, items) walks a copy taken when it starts."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[tuple[Any, int]]]]:  # type: ignore[override]
        return list(super().items())


class GuardedBroker(Broker):  # type: ignore[misc]  # amqtt ships no types
    """amqtt's Broker with authentication first, clean takeovers and port fallback."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        guard: Guard,
        max_packet_size: int = 0,
        port_fallback: bool = False,
        state_file: Path | None = None,
    ) -> None:
        super().__init__(config)
        # amqtt 0.12 walks this dict with awaits in between (its broadcast loop awaits the ACL
        # check per subscriber), so a SUBSCRIBE meanwhile raised "dictionary changed size during
        # iteration" and the message being broadcast was lost. Walk snapshots instead.
        self._subscriptions = _Snapshots(self._subscriptions)  # type: ignore[has-type]
        self.state_file = state_file
        self._restore: BrokerState | None = None
        self._stopping = False
        self.guard = guard
        self.max_packet_size = max_packet_size
        self.port_fallback = port_fallback
        self.bound_ports: dict[str, int] = {}
        self._replaying: set[int] = set()  # id() of sessions (amqtt's Session is unhashable)
        self._connection_done: dict[str, asyncio.Event] = {}
        self._connection_tasks: dict[str, asyncio.Task[Any]] = {}
        self._taken: dict[int, list[Any]] = {}  # id(session): messages its loop took, unhandled

    async def start(self) -> None:
        # Read the state before amqtt starts: a corrupt file is a BrokerStartError naming it.
        self._restore = load_state(self.state_file) if self.state_file is not None else None
        self._stopping = False
        await super().start()

    async def _start_listeners(self) -> None:
        # amqtt's start() has cleared its tables by now and no client can connect yet.
        if self._restore is not None:
            self._apply_state(self._restore)
            self._restore = None
        await super()._start_listeners()

    async def shutdown(self) -> None:
        if self.state_file is not None:
            self._stopping = True
            recorders = await self._close_connections()
            await self._drain_broadcasts()
            state = self._capture_state(recorders)
            save_state(self.state_file, state)
            log.info(
                "saved %d retained message(s) and %d session(s) to %s",
                len(state.retained), len(state.sessions), self.state_file,
            )  # fmt: skip
        await super().shutdown()

    def _apply_state(self, state: BrokerState) -> None:
        for m in state.retained:
            self._retained_messages[m.topic] = RetainedApplicationMessage(
                None, m.topic, m.payload, m.qos
            )
        for saved in state.sessions:
            handler, session = self.create_offline_session(saved.client_id)
            session.clean_session = False
            session.username = saved.username
            self._sessions[saved.client_id] = (session, handler)
            for topic_filter, qos in saved.subscriptions:
                self._subscriptions.setdefault(topic_filter, []).append((session, qos))
            for m in saved.queued:
                session.retained_messages.put_nowait(
                    RetainedApplicationMessage(None, m.topic, m.payload, m.qos)
                )
        log.info(
            "restored %d retained message(s) and %d session(s) from %s",
            len(state.retained), len(state.sessions), self.state_file,
        )  # fmt: skip

    async def _close_connections(self) -> dict[str, _InflightRecorder]:
        """Close every live connection; returns, per client, a record of its outgoing flows."""
        recorders: dict[str, _InflightRecorder] = {}
        closing: list[asyncio.Event] = []
        for client_id, (session, handler) in list(self._sessions.items()):
            if not session.transitions.is_connected():
                continue
            # amqtt drops a message from inflight_out when its flow is cancelled (the handler
            # stops): record every message that enters it from now on, acknowledged or not.
            recorders[client_id] = session.inflight_out = _InflightRecorder(session.inflight_out)
            _abort(handler)
            await handler.handle_connection_closed()
            if (done := self._connection_done.get(client_id)) is not None:
                closing.append(done)
        if closing:
            waits = [asyncio.ensure_future(done.wait()) for done in closing]
            _, pending = await asyncio.wait(waits, timeout=_CLOSE_TIMEOUT)
            for waiter in pending:
                waiter.cancel()
            if pending:  # amqtt's handler can hang on a cancelled reader: end those connections
                stuck = [
                    task
                    for client_id in recorders
                    if (task := self._connection_tasks.get(client_id)) is not None
                    and not task.done()
                ]
                log.info("cancelling %d connection(s) that did not close", len(stuck))
                for task in stuck:
                    task.cancel()
                if stuck:
                    await asyncio.wait(stuck, timeout=_CLOSE_TIMEOUT)
        # A PUBLISH read (and acknowledged) after the disconnect was signalled waits in the
        # session's delivery queue, which amqtt's message loop no longer reads: route it now.
        loop = asyncio.get_running_loop()
        for client_id in recorders:
            session, handler = self._sessions.get(client_id, (None, None))
            while session is not None and not session.delivered_message_queue.empty():
                delivered: asyncio.Future[Any] = loop.create_future()
                delivered.set_result(session.delivered_message_queue.get_nowait())
                await self._handle_message_delivery(session, handler, delivered)
        return recorders

    async def _drain_broadcasts(self) -> None:
        """Wait until amqtt has routed every message it accepted (to the offline queues)."""
        loop = asyncio.get_running_loop()
        deadline, idle = loop.time() + _DRAIN_TIMEOUT, 0
        while idle < 3 and loop.time() < deadline:
            idle = idle + 1 if self._broadcast_queue.empty() else 0
            await asyncio.sleep(0.01)

    def _capture_state(self, recorders: dict[str, _InflightRecorder]) -> BrokerState:
        retained = [
            Message(topic, bytes(r.data), int(r.qos or 0))
            for topic, r in self._retained_messages.items()
        ]
        sessions: list[SessionState] = []
        for client_id, (session, _) in self._sessions.items():
            if session.clean_session is not False or session.is_anonymous:
                continue
            subscriptions = [
                (topic_filter, int(qos))
                for topic_filter, subscribers in self._subscriptions.items()
                for s, qos in subscribers
                if s is session
            ]
            queue = session.retained_messages
            queued = [queue.get_nowait() for _ in range(queue.qsize())]
            for m in queued:
                queue.put_nowait(m)
            recorder = recorders.get(client_id)
            unacked = recorder.unacknowledged() if recorder is not None else []
            messages = unacked + [Message(m.topic, bytes(m.data), int(m.qos or 0)) for m in queued]
            sessions.append(SessionState(client_id, session.username, subscriptions, messages))
        return BrokerState(retained, sessions)

    async def _create_server_instance(
        self, listener_name: str, listener_type: Any, address: str | None, port: int, ssl: Any
    ) -> Any:
        host = address.strip("[]") if address else address
        tries = _FALLBACK_TRIES if self.port_fallback and port else 1
        for candidate in range(port, port + tries):
            try:
                server = await super()._create_server_instance(
                    listener_name, listener_type, host, candidate, ssl
                )
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and candidate + 1 < port + tries:
                    continue
                raise BrokerStartError(
                    exc.strerror or str(exc), host=host or "", port=candidate
                ) from exc
            bound = int(server.sockets[0].getsockname()[1])
            if candidate != port:
                log.warning("port %d is in use; using %d", port, bound)
            self.bound_ports[listener_name] = bound
            return server
        raise BrokerStartError("no free port", host=host or "", port=port)  # pragma: no cover

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        done = asyncio.Event()
        _CONNECTION_DONE.set(done)
        if self.max_packet_size:
            reader = _LimitedReader(reader, self.max_packet_size)
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            done.set()

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        peer = f"{remote_address}:{remote_port}"
        if self._stopping:
            await writer.close()
            raise AMQTTError(f"connection from {peer} refused: the broker is stopping")
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except MQTTError as exc:
            log.info("invalid CONNECT from %s: %s", peer, exc)
            await writer.close()
            raise
        except (AMQTTError, NoDataError) as exc:
            log.info("no CONNECT from %s: %s", peer, exc)
            await writer.close()
            raise AMQTTError(exc) from exc
        code = self.guard.admit(session)
        if code != CONNACK_ACCEPTED:
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise MQTTError(f"CONNECT from {peer} refused with code {code}")
        await self._take_over(session.client_id)
        self._connection_done[session.client_id] = _CONNECTION_DONE.get()
        if (task := asyncio.current_task()) is not None:
            self._connection_tasks[session.client_id] = task
        return handler, await self._attach_session(session)

    async def _take_over(self, client_id: str) -> None:
        """Close a live connection of the same client id, without its Will."""
        old_session, old_handler = self._sessions.get(client_id, (None, None))
        if old_session is None or not old_session.transitions.is_connected():
            return
        log.info("client %r connected again; closing its old connection", client_id)
        old_session.will_flag = False
        await old_handler.handle_connection_closed()
        old_done = self._connection_done.get(client_id)
        if old_done is not None:
            try:
                await asyncio.wait_for(old_done.wait(), _TAKEOVER_TIMEOUT)
            except TimeoutError:
                log.warning("the old connection of %r did not close in time", client_id)

    async def _attach_session(self, session: Session) -> Session:
        """amqtt's session lookup: a clean session starts afresh, a persistent one resumes."""
        client_id = session.client_id
        if session.clean_session:
            await self._delete_session(client_id)
            session.parent = 0
        elif client_id in self._sessions:
            existing: Session = self._sessions[client_id][0]
            for attr in (
                "will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                "keep_alive", "username", "password",
            ):  # fmt: skip
                setattr(existing, attr, getattr(session, attr))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return session

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Runs once per connection, right before amqtt re-sends retained messages for every
        # subscription in the broker; that pass is skipped until the message loop starts.
        self._replaying.add(id(session))
        await super()._publish_session_retained_messages(session)

    async def _client_message_loop(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> None:
        self._replaying.discard(id(client_session))
        # amqtt's loop drops a PUBLISH (already acknowledged) that its delivery waiter takes
        # after the disconnect was seen; put such a message back in the session's queue.
        taken: list[Any] = []
        next_message = handler.mqtt_deliver_next_message

        async def deliver_next() -> Any:
            message = await next_message()
            if message is not None:
                taken.append(message)
            return message

        handler.mqtt_deliver_next_message = deliver_next
        self._taken[id(client_session)] = taken
        try:
            await super()._client_message_loop(client_session, handler)
        finally:
            if self._taken.get(id(client_session)) is taken:
                del self._taken[id(client_session)]
            for message in taken:
                client_session.delivered_message_queue.put_nowait(message)

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: Any
    ) -> bool:
        taken = self._taken.get(id(client_session), [])
        message = wait_deliver.result()
        taken[:] = [m for m in taken if m is not message]
        result: bool = await super()._handle_message_delivery(client_session, handler, wait_deliver)
        return result

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        if id(session) in self._replaying:
            return
        # amqtt's own loop skips the receive check: filter retained messages by the read ACL.
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = [
            asyncio.ensure_future(
                handler.mqtt_publish(
                    retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                )
            )
            for topic, retained in list(self._retained_messages.items())
            if matches(topic_filter, topic) and self.guard.may(session.username, "receive", topic)
        ]
        if sends:
            await asyncio.wait(sends)
