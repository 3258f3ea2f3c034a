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
  ports are recorded (`bound_ports`).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from broker.errors import BrokerStartError
from broker.guard import CONNACK_ACCEPTED, Guard
from bus.topics import matches

__all__ = ["GuardedBroker", "PacketTooLargeError"]

log = logging.getLogger("broker.server")

_FALLBACK_TRIES = 100
_TAKEOVER_TIMEOUT = 5.0


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


class GuardedBroker(Broker):  # type: ignore[misc]  # amqtt ships no types
    """amqtt's Broker with authentication first, clean takeovers and port fallback."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        guard: Guard,
        max_packet_size: int = 0,
        port_fallback: bool = False,
    ) -> None:
        super().__init__(config)
        self.guard = guard
        self.max_packet_size = max_packet_size
        self.port_fallback = port_fallback
        self.bound_ports: dict[str, int] = {}
        self._replaying: set[int] = set()  # id() of sessions (amqtt's Session is unhashable)
        self._connection_done: dict[str, asyncio.Event] = {}

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
        await super()._client_message_loop(client_session, handler)

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
