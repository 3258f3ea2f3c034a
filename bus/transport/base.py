"""The transport seam: what the bus needs from a connection to a broker.

The bus talks to brokers through a `Transport` given to its constructor: `MqttTransport` (real
MQTT 3.1.1 over TCP) in production, `MemoryTransport` (an in-process broker honouring MQTT
semantics) in unit tests. One `Connection` is one MQTT network connection; reconnecting,
resubscribing and resending unacknowledged QoS 1 messages are the bus's job, above this seam.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class Will:
    """The MQTT Last Will: published by the broker when the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ConnectParams:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    clean_session: bool = False
    keepalive: int = 30
    will: Will | None = None
    connect_timeout: float = 5.0


class Incoming(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


class Sink(Protocol):
    """What a connection reports to (the bus)."""

    def deliver(self, message: Incoming) -> None:
        """A PUBLISH arrived. The connection acknowledges QoS 1 after this returns."""

    def acked(self, pid: int) -> None:
        """The broker acknowledged our QoS 1 PUBLISH `pid`."""

    def lost(self, exc: BaseException | None) -> None:
        """The connection is gone (None: closed by us)."""


class Connection(abc.ABC):
    """One live MQTT connection."""

    session_present: bool = False

    @abc.abstractmethod
    def write_publish(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, pid: int, dup: bool
    ) -> None:
        """Queue a PUBLISH for sending (never blocks)."""

    @property
    @abc.abstractmethod
    def write_paused(self) -> bool:
        """Whether the outgoing buffer is above its high-water mark."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the outgoing buffer is below its low-water mark."""

    @abc.abstractmethod
    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """Subscribe; returns the granted QoS per filter (0x80 = refused)."""

    @abc.abstractmethod
    async def unsubscribe(self, filters: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def pause_reading(self) -> None: ...

    @abc.abstractmethod
    def resume_reading(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect cleanly: the broker discards the Will."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the Will."""

    def nodelay(self) -> bool | None:
        """Whether TCP_NODELAY is set on the socket (None: not a TCP connection)."""
        return None


class Transport(abc.ABC):
    """Opens connections to a broker."""

    @abc.abstractmethod
    async def connect(self, params: ConnectParams, sink: Sink) -> Connection:
        """Open one connection; raises bus.errors.ConnectionFailed."""
